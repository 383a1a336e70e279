//! SSH certificate policy, shared by the gateway (checking a relay's host certificate) and the
//! relay (checking a gateway's user certificate).
//!
//! `ssh-key`'s `validate_at` checks only the signature, one CA fingerprint and the window; this
//! module checks everything a postern peer must: the issuing CA is exactly the one configured, the
//! signature holds, the certificate type, the validity window at a `now` passed in, that no
//! critical option is present (postern enforces none, so any would be silently ignored), the
//! required extensions, the principals, and the identity in the key id. Success returns a proof
//! type only this module constructs; each failure is its own [`SshCertError`] variant.
//!
//! Input is attacker-controlled: parsing and checks never panic.

use std::fmt;
use std::time::SystemTime;

use ssh_key::certificate::{CertType, Certificate};
use ssh_key::{Fingerprint, HashAlg, PublicKey};

use crate::clock::{rfc3339, span, unix_now};
use crate::id::{GatewayId, OrgId, RelayId};
use crate::pki::{parse_gateway_key_id, parse_relay_key_id, Scope};

/// The extension a gateway certificate must carry.
pub const PERMIT_PORT_FORWARDING: &str = "permit-port-forwarding";

/// Why an SSH certificate was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SshCertError {
    /// The bytes are not an OpenSSH certificate.
    Parse(String),
    /// Signed by a CA other than the one trusted here.
    UntrustedCa {
        /// Fingerprint and name of the trusted CA.
        expected: String,
        /// Fingerprint of the CA that signed.
        arrived: String,
    },
    /// The signature does not verify under the (trusted) CA key: the certificate was altered.
    BadSignature,
    /// A user certificate where a host certificate was expected, or the reverse.
    WrongType {
        /// The type required here.
        expected: &'static str,
        /// The type presented.
        arrived: &'static str,
    },
    /// `now` is before the certificate's start.
    NotYetValid {
        /// Start of validity, Unix seconds.
        valid_after: u64,
        /// The time of the check, Unix seconds.
        now: u64,
    },
    /// `now` is at or after the certificate's end.
    Expired {
        /// End of validity, Unix seconds.
        valid_before: u64,
        /// The time of the check, Unix seconds.
        now: u64,
    },
    /// The certificate names no principal (OpenSSH would read that as "anyone").
    NoPrincipals,
    /// The principal required here is not the one the certificate names.
    WrongPrincipal {
        /// The principal required.
        expected: String,
        /// The principals presented.
        arrived: Vec<String>,
    },
    /// A critical option is present; postern enforces none, so it refuses them all.
    UnknownCriticalOption {
        /// The option's name.
        name: String,
    },
    /// A required extension is absent.
    MissingExtension {
        /// The extension's name.
        name: &'static str,
    },
    /// The key id is not postern's identity form.
    MalformedKeyId {
        /// The key id presented.
        key_id: String,
    },
    /// The certificate belongs to another organisation than this relay serves.
    WrongOrg {
        /// The organisation this relay serves.
        expected: OrgId,
        /// The organisation in the certificate.
        arrived: OrgId,
    },
}

fn type_name(t: CertType) -> &'static str {
    match t {
        CertType::User => "user",
        CertType::Host => "host",
    }
}

impl fmt::Display for SshCertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse(e) => write!(f, "not an OpenSSH certificate: {e}"),
            Self::UntrustedCa { expected, arrived } => write!(
                f,
                "SSH certificate signed by CA {arrived}; only {expected} is trusted here"
            ),
            Self::BadSignature => f.write_str(
                "SSH certificate signature does not verify under the trusted CA (altered)",
            ),
            Self::WrongType { expected, arrived } => {
                write!(
                    f,
                    "expected an SSH {expected} certificate, got a {arrived} certificate"
                )
            }
            Self::NotYetValid { valid_after, now } => write!(
                f,
                "SSH certificate is not valid until {}, {} from now",
                rfc3339(*valid_after),
                span(valid_after.saturating_sub(*now))
            ),
            Self::Expired { valid_before, now } => write!(
                f,
                "SSH certificate expired at {}, {} ago",
                rfc3339(*valid_before),
                span(now.saturating_sub(*valid_before))
            ),
            Self::NoPrincipals => {
                f.write_str("SSH certificate names no principal; postern requires exactly its own")
            }
            Self::WrongPrincipal { expected, arrived } => write!(
                f,
                "SSH certificate is for principals {arrived:?}; expected {expected:?}"
            ),
            Self::UnknownCriticalOption { name } => write!(
                f,
                "SSH certificate carries critical option {name:?}; postern accepts none"
            ),
            Self::MissingExtension { name } => {
                write!(f, "SSH certificate lacks the required extension {name:?}")
            }
            Self::MalformedKeyId { key_id } => write!(
                f,
                "SSH certificate key id {key_id:?} is not postern's identity form"
            ),
            Self::WrongOrg { expected, arrived } => write!(
                f,
                "SSH certificate belongs to org {arrived}; this relay serves only org {expected}"
            ),
        }
    }
}

impl std::error::Error for SshCertError {}

/// Parses an OpenSSH certificate line (`ssh-ed25519-cert-v01@openssh.com AAAA... comment`).
pub fn parse_openssh(text: &str) -> Result<Certificate, SshCertError> {
    Certificate::from_openssh(text.trim()).map_err(|e| SshCertError::Parse(e.to_string()))
}

/// Parses an OpenSSH certificate blob (what an SSH library returns as the peer's host key).
pub fn parse_blob(bytes: &[u8]) -> Result<Certificate, SshCertError> {
    Certificate::from_bytes(bytes).map_err(|e| SshCertError::Parse(e.to_string()))
}

/// One trusted SSH CA: its fingerprint and a name for messages.
#[derive(Debug, Clone)]
struct TrustedCa {
    fingerprint: Fingerprint,
    label: String,
}

impl TrustedCa {
    fn new(ca: &PublicKey) -> Self {
        let fingerprint = ca.fingerprint(HashAlg::Sha256);
        let label = match ca.comment() {
            "" => fingerprint.to_string(),
            name => format!("{fingerprint} ({name})"),
        };
        Self { fingerprint, label }
    }

    /// Checks CA, window, signature, type and critical options, in that order.
    fn check(&self, cert: &Certificate, want: CertType, now: u64) -> Result<(), SshCertError> {
        let arrived = cert.signature_key().fingerprint(HashAlg::Sha256);
        if arrived != self.fingerprint {
            return Err(SshCertError::UntrustedCa {
                expected: self.label.clone(),
                arrived: arrived.to_string(),
            });
        }
        if now < cert.valid_after() {
            return Err(SshCertError::NotYetValid {
                valid_after: cert.valid_after(),
                now,
            });
        }
        if now >= cert.valid_before() {
            return Err(SshCertError::Expired {
                valid_before: cert.valid_before(),
                now,
            });
        }
        // CA and window already hold, so a failure here is the signature.
        cert.validate_at(now, [&self.fingerprint])
            .map_err(|_| SshCertError::BadSignature)?;
        if cert.cert_type() != want {
            return Err(SshCertError::WrongType {
                expected: type_name(want),
                arrived: type_name(cert.cert_type()),
            });
        }
        if let Some((name, _)) = cert.critical_options().iter().next() {
            return Err(SshCertError::UnknownCriticalOption { name: name.clone() });
        }
        Ok(())
    }
}

/// Proof that a gateway's user certificate passed [`GatewayCertPolicy::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedGateway {
    org: OrgId,
    gateway: GatewayId,
    valid_before: u64,
}

impl VerifiedGateway {
    /// The certified organisation.
    pub fn org(&self) -> &OrgId {
        &self.org
    }
    /// The certified gateway.
    pub fn gateway(&self) -> &GatewayId {
        &self.gateway
    }
    /// When the certificate stops being valid, Unix seconds.
    pub fn valid_before(&self) -> u64 {
        self.valid_before
    }
}

/// How a relay checks gateways: exactly one relay SSH Client CA, and the org(s) it serves.
#[derive(Debug, Clone)]
pub struct GatewayCertPolicy {
    ca: TrustedCa,
    scope: Scope,
}

impl GatewayCertPolicy {
    /// Trust `ca` (the instance relay SSH Client CA for `Scope::Instance`, or the org's for
    /// `Scope::Org`, in which case certificates of any other org are refused as well).
    pub fn new(ca: &PublicKey, scope: Scope) -> Self {
        Self {
            ca: TrustedCa::new(ca),
            scope,
        }
    }

    /// Checks a gateway's user certificate presented for SSH user name `user` at `now`.
    pub fn verify(
        &self,
        cert: &Certificate,
        user: &str,
        now: SystemTime,
    ) -> Result<VerifiedGateway, SshCertError> {
        self.ca.check(cert, CertType::User, unix_now(now))?;
        if !cert.extensions().contains_key(PERMIT_PORT_FORWARDING) {
            return Err(SshCertError::MissingExtension {
                name: PERMIT_PORT_FORWARDING,
            });
        }
        let principals = cert.valid_principals();
        if principals.is_empty() {
            return Err(SshCertError::NoPrincipals);
        }
        if principals.len() != 1 || principals[0] != user {
            return Err(SshCertError::WrongPrincipal {
                expected: user.to_owned(),
                arrived: principals.to_vec(),
            });
        }
        let (org, gateway) = parse_gateway_key_id(cert.key_id())
            .filter(|(_, gw)| gw.as_str() == user)
            .ok_or_else(|| SshCertError::MalformedKeyId {
                key_id: cert.key_id().to_owned(),
            })?;
        if let Scope::Org(expected) = &self.scope {
            if *expected != org {
                return Err(SshCertError::WrongOrg {
                    expected: expected.clone(),
                    arrived: org,
                });
            }
        }
        Ok(VerifiedGateway {
            org,
            gateway,
            valid_before: cert.valid_before(),
        })
    }
}

/// Proof that a relay's host certificate passed [`RelayHostPolicy::verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRelay {
    relay: RelayId,
    hostname: String,
    valid_before: u64,
}

impl VerifiedRelay {
    /// The certified relay.
    pub fn relay(&self) -> &RelayId {
        &self.relay
    }
    /// The hostname that was dialled and is certified.
    pub fn hostname(&self) -> &str {
        &self.hostname
    }
    /// When the certificate stops being valid, Unix seconds.
    pub fn valid_before(&self) -> u64 {
        self.valid_before
    }
}

/// How a gateway checks its relay: exactly one relay SSH Server CA.
#[derive(Debug, Clone)]
pub struct RelayHostPolicy {
    ca: TrustedCa,
}

impl RelayHostPolicy {
    /// Trust `ca` (the relay SSH Server CA of the relay's kind).
    pub fn new(ca: &PublicKey) -> Self {
        Self {
            ca: TrustedCa::new(ca),
        }
    }

    /// Checks a relay's host certificate for the hostname the gateway dialled, at `now`.
    pub fn verify(
        &self,
        cert: &Certificate,
        hostname: &str,
        now: SystemTime,
    ) -> Result<VerifiedRelay, SshCertError> {
        self.ca.check(cert, CertType::Host, unix_now(now))?;
        let principals = cert.valid_principals();
        if principals.is_empty() {
            return Err(SshCertError::NoPrincipals);
        }
        if !principals.iter().any(|p| p == hostname) {
            return Err(SshCertError::WrongPrincipal {
                expected: hostname.to_owned(),
                arrived: principals.to_vec(),
            });
        }
        let relay =
            parse_relay_key_id(cert.key_id()).ok_or_else(|| SshCertError::MalformedKeyId {
                key_id: cert.key_id().to_owned(),
            })?;
        Ok(VerifiedRelay {
            relay,
            hostname: hostname.to_owned(),
            valid_before: cert.valid_before(),
        })
    }
}
