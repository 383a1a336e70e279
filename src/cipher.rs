//! Which AEAD each link runs. Every endpoint accepts AES-128-GCM, AES-256-GCM and
//! ChaCha20-Poly1305 and nothing else; this only orders them, and in SSH and TLS alike the
//! dialling side's order decides. TLS puts AES-GCM first where the CPU has AES and carry-less
//! multiply instructions (x86_64 with AES-NI, ARMv8 with the crypto extensions) and
//! ChaCha20-Poly1305 first where it has not (armv7 boxes, ARM cores built without the
//! extensions), where software AES would be slow and not constant-time.

use rustls::crypto::ring::cipher_suite::{
    TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
};
use rustls::SupportedCipherSuite;

/// True when AES-GCM runs in hardware here.
pub fn hardware_aes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes")
            && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
            && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// OpenSSH names of the SSH ciphers the gateway offers, its choice first. ChaCha20-Poly1305
/// leads even where the CPU has AES: libssh2 runs AES-GCM one 16-byte block per OpenSSL call,
/// which cost the gateway 9 CPU-s/GiB against 5 for its own ChaCha20-Poly1305 on the path
/// benchmark (x86_64 with AES-NI), and the gateway is the smallest machine on the path.
pub const SSH_CIPHERS: &str =
    "chacha20-poly1305@openssh.com,aes128-gcm@openssh.com,aes256-gcm@openssh.com";

/// The TLS 1.3 suites offered, fastest here first.
pub fn tls13_suites(hardware_aes: bool) -> Vec<SupportedCipherSuite> {
    if hardware_aes {
        vec![
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
            TLS13_CHACHA20_POLY1305_SHA256,
        ]
    } else {
        vec![
            TLS13_CHACHA20_POLY1305_SHA256,
            TLS13_AES_128_GCM_SHA256,
            TLS13_AES_256_GCM_SHA384,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_tls_orders_offer_the_same_three_aeads() {
        let names = |aes| {
            let mut v: Vec<_> = tls13_suites(aes).iter().map(|s| s.suite()).collect();
            v.sort_by_key(|s| u16::from(*s));
            v
        };
        assert_eq!(names(true), names(false));
        assert_eq!(
            tls13_suites(false)[0].suite(),
            TLS13_CHACHA20_POLY1305_SHA256.suite()
        );
    }
}
