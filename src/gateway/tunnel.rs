//! Opening a tunnel: TCP (direct or through an HTTP CONNECT proxy), the SSH handshake with
//! host-key algorithms restricted to certificates and ciphers to AEADs ([`crate::cipher`]), the
//! relay's host certificate checked with [`crate::sshcert::RelayHostPolicy`] *before* any
//! credential is sent, authentication with the gateway's user certificate, and the reverse
//! forward. Every phase is bounded by a timeout and a failure names its phase.

use std::fmt;
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use ssh2::{MethodType, Session};

use super::proxy::{dial, Proxy};
use crate::sshcert::{parse_blob, RelayHostPolicy};

/// Host-key algorithms offered: certificates only.
pub const HOST_KEY_ALGORITHMS: &str = "ssh-ed25519-cert-v01@openssh.com";

/// What a tunnel needs.
#[derive(Clone)]
pub struct TunnelSpec {
    /// The relay's name (for logs).
    pub relay: String,
    /// `host:port` to dial; the host must be a principal of the relay's host certificate.
    pub address: String,
    /// SSH user name: the gateway id.
    pub user: String,
    /// The gateway's user certificate, OpenSSH one-line format.
    pub certificate: String,
    /// The gateway's private key, OpenSSH PEM. Never logged.
    pub private_key: String,
    /// The relay SSH Server CA.
    pub relay_host_ca: ssh_key::PublicKey,
    /// An egress proxy, if any.
    pub proxy: Option<Proxy>,
    /// Bound on each blocking phase.
    pub timeout: Duration,
}

impl fmt::Debug for TunnelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelSpec")
            .field("relay", &self.relay)
            .field("address", &self.address)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// An open tunnel: a non-blocking session and its forward.
pub struct Tunnel {
    /// The relay's name.
    pub relay: String,
    /// The session (non-blocking from here on).
    pub session: Session,
    /// Forwarded channels arrive here.
    pub listener: ssh2::Listener,
    /// The socket, for readiness.
    pub socket: TcpStream,
    /// The port the server reports for the forward (a relay binds nothing; OpenSSH's sshd does).
    pub bound_port: u16,
}

impl fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tunnel")
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

/// The phase a tunnel failed in.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TunnelError {
    /// TCP (or the proxy) failed.
    Connect(String),
    /// SSH key exchange failed (no certificate host key offered, timeout, …).
    Handshake(String),
    /// The relay's host certificate was refused; nothing was sent to it.
    RelayHost(String),
    /// The relay refused our certificate.
    Auth(String),
    /// The relay refused the reverse forward.
    Forward(String),
}

impl fmt::Display for TunnelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(m) => write!(f, "connect: {m}"),
            Self::Handshake(m) => write!(f, "SSH handshake: {m}"),
            Self::RelayHost(m) => write!(
                f,
                "relay host certificate refused (no credentials sent): {m}"
            ),
            Self::Auth(m) => write!(f, "authentication: {m}"),
            Self::Forward(m) => write!(f, "reverse forward: {m}"),
        }
    }
}

impl std::error::Error for TunnelError {}

fn host_of(address: &str) -> &str {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Held while a session is set up. libssh2's key exchange and key loading fill and walk
/// OpenSSL 3's provider method store, and doing that from two threads at once can crash
/// (openssl/openssl#27726: SIGSEGV in `ossl_method_store_do_all`, seen on armv7). The gateway
/// opens one tunnel at a time anyway; the lock holds library users and parallel tests to the
/// same rule. Established sessions only use what was fetched here and run unlocked.
static SESSION_SETUP: Mutex<()> = Mutex::new(());

/// Opens a tunnel as `spec` says.
pub fn open(spec: &TunnelSpec) -> Result<Tunnel, TunnelError> {
    let connect = |e: std::io::Error| TunnelError::Connect(format!("{}: {e}", spec.address));
    let socket = match &spec.proxy {
        Some(proxy) => proxy
            .connect(&spec.address, spec.timeout)
            .map_err(connect)?,
        None => dial(&spec.address, spec.timeout).map_err(connect)?,
    };
    // A poisoned lock guards no data: a panic elsewhere leaves nothing half-done here.
    let _setup = SESSION_SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let mut session = Session::new().map_err(|e| TunnelError::Handshake(e.to_string()))?;
    session.set_tcp_stream(socket.try_clone().map_err(connect)?);
    session.set_timeout(u32::try_from(spec.timeout.as_millis()).unwrap_or(u32::MAX));
    let ciphers = crate::cipher::SSH_CIPHERS;
    for (method, wanted) in [
        (MethodType::HostKey, HOST_KEY_ALGORITHMS),
        (MethodType::CryptCs, ciphers),
        (MethodType::CryptSc, ciphers),
    ] {
        session
            .method_pref(method, wanted)
            .map_err(|e| TunnelError::Handshake(format!("offering {wanted}: {e}")))?;
    }
    session
        .handshake()
        .map_err(|e| TunnelError::Handshake(e.to_string()))?;
    check_relay(&session, spec)?;
    session
        .userauth_pubkey_memory(&spec.user, Some(&spec.certificate), &spec.private_key, None)
        .map_err(|e| TunnelError::Auth(e.to_string()))?;
    if !session.authenticated() {
        return Err(TunnelError::Auth(
            "the relay did not accept the certificate".into(),
        ));
    }
    let (listener, bound_port) = session
        .channel_forward_listen(0, Some("127.0.0.1"), None)
        .map_err(|e| TunnelError::Forward(e.to_string()))?;
    session.set_keepalive(true, super::pump::KEEPALIVE_SECS);
    session.set_blocking(false);
    Ok(Tunnel {
        relay: spec.relay.clone(),
        session,
        listener,
        socket,
        bound_port,
    })
}

fn check_relay(session: &Session, spec: &TunnelSpec) -> Result<(), TunnelError> {
    let (blob, _) = session
        .host_key()
        .ok_or_else(|| TunnelError::RelayHost("the relay presented no host key".into()))?;
    let cert = parse_blob(blob).map_err(|e| TunnelError::RelayHost(e.to_string()))?;
    RelayHostPolicy::new(&spec.relay_host_ca)
        .verify(&cert, host_of(&spec.address), SystemTime::now())
        .map(drop)
        .map_err(|e| TunnelError::RelayHost(e.to_string()))
}
