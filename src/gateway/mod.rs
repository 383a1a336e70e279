//! The gateway: runs on the edge box, dials out to its relay, and is the far end of the
//! end-to-end TLS session.
//!
//! ```text
//!            one pump thread owns the ssh2 Session (non-blocking, mio)
//!  relay ◀──SSH── [pump] ──bounded queues──▶ [conn thread] ──TLS 1.3 server──▶ target
//!                   │ keepalives, accept,        per connection: client cert checked against
//!                   │ window 8 MiB               the org Gateway Client CA, permission → target
//! ```
//! - [`tunnel`]: dial (direct or [`proxy`]), verify the relay's host certificate before
//!   authenticating, authenticate with the gateway certificate, ask for the reverse forward.
//! - [`pump`]: the only thread that touches the SSH session.
//! - [`conn`]: one thread per tunnelled connection: TLS, permission, target, copy.
//! - [`supervisor`]: registration, renewal, heartbeats, reconnect with [`backoff`], health.
//!
//! Synchronous, thread-per-connection, no async runtime: what a small ARM box can afford.

pub mod backoff;
pub mod conn;
pub mod proxy;
pub mod pump;
pub mod supervisor;
pub mod tunnel;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::tls::gateway::GatewayTlsServer;

/// Counters the gateway exposes.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections being served.
    pub active: AtomicU64,
    /// Connections accepted from the tunnel.
    pub total: AtomicU64,
    /// Connections refused (handshake, certificate, request, permission, target).
    pub refused: AtomicU64,
    /// Tunnels opened.
    pub tunnels_opened: AtomicU64,
}

impl Metrics {
    fn connection_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }
    fn connection_ended(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
    fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
}

/// State shared by the gateway's threads.
#[derive(Debug)]
pub struct Shared {
    /// "gateway <name> of org <org>", for messages.
    pub who: String,
    tls: RwLock<Arc<GatewayTlsServer>>,
    /// Counters.
    pub metrics: Metrics,
    /// Set on SIGTERM: stop accepting, drain, exit.
    pub stopping: Arc<AtomicBool>,
    /// Set to make the pump give up its tunnel (relay reassigned).
    pub replace_tunnel: AtomicBool,
    /// The relay whose tunnel is up, if any.
    pub connected: Mutex<Option<String>>,
    /// The last tunnel failure, for the health page.
    pub last_error: Mutex<Option<String>>,
}

impl Shared {
    /// New state serving `tls`.
    pub fn new(who: String, tls: GatewayTlsServer, stopping: Arc<AtomicBool>) -> Arc<Self> {
        Arc::new(Self {
            who,
            tls: RwLock::new(Arc::new(tls)),
            metrics: Metrics::default(),
            stopping,
            replace_tunnel: AtomicBool::new(false),
            connected: Mutex::new(None),
            last_error: Mutex::new(None),
        })
    }

    /// The TLS server for new connections.
    pub fn tls(&self) -> Arc<GatewayTlsServer> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Swaps in a renewed TLS server; connections already up keep theirs.
    pub fn replace_tls(&self, tls: GatewayTlsServer) {
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tls);
    }

    /// The relay whose tunnel is up.
    pub fn connected_relay(&self) -> Option<String> {
        self.connected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_connected(&self, relay: Option<String>) {
        *self.connected.lock().unwrap_or_else(|p| p.into_inner()) = relay;
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
    }

    /// One line for the health mode and page.
    pub fn health_line(&self) -> String {
        let active = self.metrics.active.load(Ordering::Relaxed);
        match self.connected_relay() {
            Some(relay) => format!(
                "ok: {}, tunnel up via relay {relay}, {active} connections",
                self.who
            ),
            None => {
                let why = self
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                format!(
                    "down: {}, no tunnel ({})",
                    self.who,
                    why.unwrap_or_else(|| "starting".into())
                )
            }
        }
    }

    /// The Prometheus text exposition.
    pub fn metrics_text(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let m = &self.metrics;
        format!(
            "# TYPE postern_gateway_tunnel_up gauge\npostern_gateway_tunnel_up {}\n\
             # TYPE postern_gateway_connections_active gauge\npostern_gateway_connections_active {}\n\
             # TYPE postern_gateway_connections_total counter\npostern_gateway_connections_total {}\n\
             # TYPE postern_gateway_refusals_total counter\npostern_gateway_refusals_total {}\n\
             # TYPE postern_gateway_tunnels_opened_total counter\npostern_gateway_tunnels_opened_total {}\n",
            u8::from(self.connected_relay().is_some()),
            get(&m.active),
            get(&m.total),
            get(&m.refused),
            get(&m.tunnels_opened),
        )
    }
}
