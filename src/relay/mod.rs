//! The relay: the one piece both sides can reach, so a good router and a useless target.
//!
//! ```text
//!  gateway ──SSH (user cert)──▶ [ssh] ─ tcpip-forward ─▶ registry[(org, gateway)]
//!                                                            │ newest tunnel first
//!  platform ──mTLS (relay client cert)──▶ [platform] ─ route ┘─▶ forwarded-tcpip channel
//!                                             │ status frame, then splice (inner TLS opaque)
//! ```
//! - [`ssh`]: certificate-only SSH server (russh); forwards become routing entries.
//! - `platform`: the mTLS listener; the (org, gateway) in the client certificate selects the
//!   tunnel, and the answer is a typed [`crate::frame::Frame`] before any spliced byte.
//! - [`registry`]: routing entries, revocations, per-tenant connection slots.
//! - [`agent`]: enrolment, renewal, heartbeats and revocation polling against the platform.
//! - [`metrics`]: Prometheus counters and the health/metrics listener.
//!
//! The relay never holds inner plaintext: it only ever sees the outer TLS (terminated here) and
//! the SSH channel; the inner TLS session between platform and gateway passes through opaque.

pub mod agent;
pub mod metrics;
mod platform;
pub mod registry;
mod ssh;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use russh::server::Handle;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::id::RelayId;
use crate::pki::Scope;
use crate::sshcert::GatewayCertPolicy;
use crate::tls::relay::RelayTlsServer;
use metrics::Metrics;
use registry::{Registry, TenantSlots};

/// Limits on the relay's listeners.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Deadline for a TLS handshake, or for SSH authentication.
    pub handshake_timeout: Duration,
    /// Handshakes (TLS and SSH together) in progress at once.
    pub max_handshakes: usize,
    /// Platform connections per organisation at once.
    pub connections_per_org: usize,
    /// Deadline for a gateway to accept a channel.
    pub channel_timeout: Duration,
    /// SSH channel window: sized so one stream over a 50 ms link is not capped by it. russh
    /// tops it up only once it falls below half, so 16 MiB keeps 8 to 16 MiB open (8 MiB / 50 ms
    /// = 160 MiB/s; OpenSSH's 2 MiB caps at ~37 MiB/s). It does not bound memory: russh grants
    /// on receipt, and `channel_buffer_size` bounds what a channel may queue.
    pub ssh_window: u32,
    /// Keepalive interval toward gateways; three missed keepalives close the session.
    pub keepalive: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 256,
            connections_per_org: 1024,
            channel_timeout: Duration::from_secs(10),
            ssh_window: 16 * 1024 * 1024,
            keepalive: Duration::from_secs(5),
        }
    }
}

/// What a relay currently presents and trusts; replaced whole on renewal.
pub struct Live {
    /// The SSH server configuration (host key and certificate).
    pub ssh: Arc<russh::server::Config>,
    /// The mTLS listener configuration and route check.
    pub tls: RelayTlsServer,
    /// The policy gateway certificates must meet.
    pub gateway_policy: GatewayCertPolicy,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// State shared by every task of one relay.
#[derive(Debug)]
pub struct Shared {
    /// The relay's name.
    pub name: RelayId,
    /// Instance relay, or one org's.
    pub scope: Scope,
    /// The routing table.
    pub registry: Registry<Handle>,
    /// Counters.
    pub metrics: Metrics,
    slots: Arc<TenantSlots>,
    handshakes: Arc<Semaphore>,
    limits: Limits,
    live: RwLock<Arc<Live>>,
    stopping: AtomicBool,
    stop: watch::Sender<bool>,
}

impl Shared {
    /// New shared state presenting `live`.
    pub fn new(name: RelayId, scope: Scope, live: Live, limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            name,
            scope,
            registry: Registry::default(),
            metrics: Metrics::default(),
            slots: TenantSlots::new(limits.connections_per_org),
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes)),
            limits,
            live: RwLock::new(Arc::new(live)),
            stopping: AtomicBool::new(false),
            stop: watch::channel(false).0,
        })
    }

    /// What the relay presents and trusts now.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in renewed certificates; connections already up keep theirs.
    pub fn replace(&self, live: Live) {
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Stops accepting, and disconnects every tunnel.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop.send(true);
        for tunnel in self.registry.drain() {
            disconnect(tunnel.handle, "relay stopping").await;
        }
    }

    /// Disconnects the tunnels of gateways newly on the revocation list.
    pub async fn apply_revocations(&self, revoked: std::collections::HashSet<registry::TunnelKey>) {
        for tunnel in self.registry.set_revoked(revoked) {
            log::warn!("dropping tunnel {}: its gateway is revoked", tunnel.id);
            disconnect(tunnel.handle, "gateway revoked").await;
        }
    }

    /// The health and metrics page.
    pub fn metrics_text(&self) -> String {
        self.metrics
            .render(self.registry.tunnels(), self.registry.gateways())
    }
}

/// Asks an SSH session to end.
pub(crate) async fn disconnect(handle: Handle, why: &str) {
    let _ = handle
        .disconnect(
            russh::Disconnect::ByApplication,
            why.to_owned(),
            "en".to_owned(),
        )
        .await;
}

/// Serves gateways on `listener` until stopped.
pub async fn serve_ssh(shared: Arc<Shared>, listener: TcpListener) {
    accept_loop(shared, listener, |shared, tcp, peer| {
        tokio::spawn(ssh_connection(shared, tcp, peer));
    })
    .await;
}

/// Serves platforms on `listener` until stopped.
pub async fn serve_platforms(shared: Arc<Shared>, listener: TcpListener) {
    accept_loop(shared, listener, |shared, tcp, peer| {
        tokio::spawn(platform::connection(shared, tcp, peer));
    })
    .await;
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    spawn: impl Fn(Arc<Shared>, tokio::net::TcpStream, SocketAddr),
) {
    let mut stop = shared.stop.subscribe();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => spawn(shared.clone(), tcp, peer),
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Socket read buffer under each gateway's SSH session.
const SSH_READ_BUFFER: usize = 64 * 1024;

async fn ssh_connection(shared: Arc<Shared>, tcp: tokio::net::TcpStream, peer: SocketAddr) {
    let Ok(permit) = shared.handshakes.clone().try_acquire_owned() else {
        shared.metrics.refuse(metrics::Refusal::Busy);
        log::warn!("refused SSH connection from {peer}: too many handshakes in progress");
        return;
    };
    let _ = tcp.set_nodelay(true);
    let authenticated = Arc::new(AtomicBool::new(false));
    let handler = ssh::SshConn::new(shared.clone(), peer, authenticated.clone());
    let config = shared.live().ssh.clone();
    // russh reads each packet's length and then its body with two reads; a buffer under it
    // makes that one system call for as many packets as have arrived.
    let tcp = tokio::io::BufReader::with_capacity(SSH_READ_BUFFER, tcp);
    let running = match russh::server::run_stream(config, tcp, handler).await {
        Ok(r) => r,
        Err(e) => {
            log::info!("SSH connection from {peer} failed before key exchange: {e}");
            return;
        }
    };
    let handle = running.handle();
    tokio::pin!(running);
    tokio::select! {
        result = &mut running => {
            if let Err(e) = result {
                log::info!("SSH connection from {peer} ended during authentication: {e}");
            }
            return;
        }
        () = tokio::time::sleep(shared.limits.handshake_timeout) => {}
    }
    if !authenticated.load(Ordering::SeqCst) {
        shared.metrics.refuse(metrics::Refusal::SshTimeout);
        log::warn!(
            "SSH client {peer} did not authenticate within {:?}",
            shared.limits.handshake_timeout
        );
        disconnect(handle, "authentication timeout").await;
        return;
    }
    drop(permit);
    if let Err(e) = running.await {
        log::info!("SSH session from {peer} ended: {e}");
    }
}

/// The SSH server configuration for a host key and its certificate.
pub fn ssh_config(
    host_key: russh::keys::PrivateKey,
    host_cert: russh::keys::Certificate,
    limits: &Limits,
) -> russh::server::Config {
    russh::server::Config {
        keys: vec![host_key],
        certificates: vec![host_cert],
        methods: russh::MethodSet::from(&[russh::MethodKind::PublicKey][..]),
        auth_rejection_time: Duration::from_millis(300),
        auth_rejection_time_initial: Some(Duration::ZERO),
        window_size: limits.ssh_window,
        channel_buffer_size: 512,
        max_auth_attempts: 6,
        inactivity_timeout: None,
        keepalive_interval: Some(limits.keepalive),
        keepalive_max: 3,
        nodelay: true,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(SSH_CIPHERS),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The SSH ciphers the relay accepts: the three AEADs of [`crate::cipher::SSH_CIPHERS`]
/// (gateways dial, so theirs is the order that decides).
const SSH_CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_128_GCM,
    russh::cipher::AES_256_GCM,
];

/// Serves `GET /health` and `GET /metrics` (Prometheus text) on `listener` until stopped.
pub async fn serve_metrics(shared: Arc<Shared>, listener: TcpListener) {
    accept_loop(shared, listener, |shared, tcp, _| {
        tokio::spawn(metrics_connection(shared, tcp));
    })
    .await;
}

async fn metrics_connection(shared: Arc<Shared>, mut tcp: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 2048];
    let mut used = 0;
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while used < buf.len() {
            match tcp.read(&mut buf[used..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => used += n,
            }
            if buf[..used].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    if read.is_err() {
        return;
    }
    let head = String::from_utf8_lossy(&buf[..used]);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/metrics" => ("200 OK", shared.metrics_text()),
        "/health" if shared.stopping() => ("503 Service Unavailable", "stopping\n".to_owned()),
        "/health" => (
            "200 OK",
            format!(
                "ok: relay {}, {} tunnels\n",
                shared.name,
                shared.registry.tunnels()
            ),
        ),
        _ => ("404 Not Found", "try /health or /metrics\n".to_owned()),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(reply.as_bytes()).await;
    let _ = tcp.shutdown().await;
}
