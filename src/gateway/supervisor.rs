//! The gateway's main loop: register, keep a tunnel up, renew, heartbeat, serve health.
//!
//! - Registration and the platform client come from [`crate::enrol`] (keys generated on the
//!   device, API pinned at enrolment). If the platform is unreachable at start, registration is
//!   retried with backoff.
//! - The tunnel is reopened after any failure with capped exponential backoff and jitter
//!   (1 s doubling to 60 s), moving through the relays the platform listed; every third failed
//!   attempt the gateway renews to refresh that list.
//! - Heartbeats report the connected relay; when the platform answers with another relay, the
//!   gateway renews (getting certificates for the new relay's kind) and moves its tunnel.
//! - Certificates are renewed at two thirds of their life: the new TLS certificate serves new
//!   connections at once, the new SSH certificate is used by the next tunnel; nothing up drops.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::backoff::{random_unit, Backoff};
use super::proxy::Proxy;
use super::tunnel::{open, TunnelSpec};
use super::{pump, Shared};
use crate::clock::{rfc3339, unix_now};
use crate::enrol::{api_client, bad, der, EnrolError, Keys};
use crate::id::{GatewayId, OrgId};
use crate::platform::api::{GatewayCredentials, GatewayHeartbeat, GatewayRegistration};
use crate::platform::client::ApiClient;
use crate::platform::token::Enrolment;
use crate::tls::gateway::{GatewayClientVerifier, GatewayTlsServer};
use crate::tls::Identity;

/// Called once when the first tunnel is up, with the gateway's description and the relay.
pub type OnReady = Box<dyn FnOnce(&str, &str) + Send>;

type OnTunnel<'a> = Box<dyn FnOnce(&str) + Send + 'a>;

/// How the gateway runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// State directory (keys, pinned API CA).
    pub state: PathBuf,
    /// `https://host:port` of the platform API.
    pub platform_url: String,
    /// The enrolment string.
    pub enrolment: Enrolment,
    /// HTTP CONNECT proxy for the SSH connection.
    pub proxy: Option<Proxy>,
    /// Bound on each blocking phase of a tunnel.
    pub timeout: Duration,
}

fn tls_server(creds: &GatewayCredentials, keys: &Keys) -> Result<GatewayTlsServer, EnrolError> {
    let org = OrgId::new(&creds.org).map_err(|e| bad("org", e))?;
    let gw = GatewayId::new(&creds.gateway).map_err(|e| bad("gateway", e))?;
    let chain = creds
        .tls_chain
        .iter()
        .map(|p| der(p, "tls_chain"))
        .collect::<Result<Vec<_>, _>>()?;
    let verifier =
        GatewayClientVerifier::new(der(&creds.gateway_client_ca, "gateway_client_ca")?, org, gw)
            .map_err(|e| bad("gateway_client_ca", e))?;
    GatewayTlsServer::new(
        Identity {
            chain,
            key: keys.tls_private(),
        },
        verifier,
    )
    .map_err(|e| bad("tls_chain", e))
}

/// Sleeps up to `d`, returning early (true) if the gateway is stopping.
fn sleep_or_stop(stopping: &AtomicBool, d: Duration) -> bool {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() {
        if stopping.load(Ordering::SeqCst) {
            return true;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    stopping.load(Ordering::SeqCst)
}

struct Gateway {
    settings: Settings,
    keys: Keys,
    client: ApiClient,
    registration: GatewayRegistration,
    creds: Mutex<GatewayCredentials>,
    shared: Arc<Shared>,
}

impl Gateway {
    fn creds(&self) -> GatewayCredentials {
        self.creds.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn spec(&self, attempt: usize) -> Result<TunnelSpec, EnrolError> {
        let creds = self.creds();
        let relay = creds
            .relays
            .get(attempt % creds.relays.len().max(1))
            .ok_or_else(|| bad("relays", "the platform assigned no relay"))?;
        Ok(TunnelSpec {
            relay: relay.name.clone(),
            address: relay.ssh_address.clone(),
            user: creds.gateway.clone(),
            certificate: creds.ssh_certificate.clone(),
            private_key: self.keys.ssh_private_openssh()?,
            relay_host_ca: ssh_key::PublicKey::from_openssh(&creds.relay_host_ca)
                .map_err(|e| bad("relay_host_ca", e))?,
            proxy: self.settings.proxy.clone(),
            timeout: self.settings.timeout,
        })
    }

    /// Renews; returns whether the assigned relay changed.
    fn renew(&self) -> Result<bool, EnrolError> {
        let fresh = self.client.gateway_renew(&self.registration)?;
        let tls = tls_server(&fresh, &self.keys)?;
        self.shared.replace_tls(tls);
        let mut creds = self.creds.lock().unwrap_or_else(|p| p.into_inner());
        let moved = creds.relays.first().map(|r| &r.name) != fresh.relays.first().map(|r| &r.name);
        log::info!(
            "renewed certificates (valid until {}); next renewal at {}",
            rfc3339(fresh.not_after),
            rfc3339(fresh.renew_after)
        );
        *creds = fresh;
        Ok(moved)
    }

    /// Heartbeats and renewal, until stopping.
    fn heartbeat_loop(&self) {
        loop {
            let interval = Duration::from_secs(self.creds().heartbeat_secs.clamp(1, 300));
            if sleep_or_stop(&self.shared.stopping, interval) {
                return;
            }
            let connected = self.shared.connected_relay();
            let assigned = match self.client.gateway_heartbeat(&GatewayHeartbeat {
                connected_relay: connected,
            }) {
                Ok(reply) => reply.assigned_relay,
                Err(e) => {
                    log::warn!("heartbeat to the platform failed: {e}");
                    None
                }
            };
            let creds = self.creds();
            let reassigned =
                assigned.is_some_and(|a| creds.relays.first().is_some_and(|r| r.name != a));
            if reassigned || unix_now(SystemTime::now()) >= creds.renew_after {
                match self.renew() {
                    Ok(true) => {
                        log::info!(
                            "the platform moved this gateway to another relay; reconnecting"
                        );
                        self.shared.replace_tunnel.store(true, Ordering::SeqCst);
                    }
                    Ok(false) => {}
                    Err(e) => log::warn!("renewal failed (will retry): {e}"),
                }
            }
        }
    }

    /// Keeps a tunnel up until stopping. `on_ready` runs once, when the first tunnel is up.
    fn tunnel_loop(&self, mut on_ready: Option<OnTunnel<'_>>) {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut attempt = 0usize;
        while !self.shared.stopping.load(Ordering::SeqCst) {
            let spec = match self.spec(attempt) {
                Ok(s) => s,
                Err(e) => {
                    log::error!("cannot build a tunnel: {e}");
                    if sleep_or_stop(&self.shared.stopping, backoff.next(random_unit())) {
                        return;
                    }
                    continue;
                }
            };
            match open(&spec) {
                Ok(tunnel) => {
                    backoff.reset();
                    self.shared
                        .metrics
                        .tunnels_opened
                        .fetch_add(1, Ordering::Relaxed);
                    self.shared.set_connected(Some(spec.relay.clone()));
                    self.shared.set_error(None);
                    log::info!("tunnel up to relay {} ({})", spec.relay, spec.address);
                    if let Some(ready) = on_ready.take() {
                        ready(&spec.relay);
                    }
                    let end = pump::run(tunnel, &self.shared);
                    self.shared.set_connected(None);
                    let why = format!(
                        "relay {} ({}): tunnel ended: {end:?}",
                        spec.relay, spec.address
                    );
                    if end != pump::End::Stopped {
                        log::warn!("{why}");
                    }
                    self.shared.set_error(Some(why));
                    if end == pump::End::Replaced {
                        attempt = 0;
                        continue;
                    }
                }
                Err(e) => {
                    let why = format!("relay {} ({}): {e}", spec.relay, spec.address);
                    log::warn!("{why}");
                    self.shared.set_error(Some(why));
                    attempt += 1;
                    if attempt % 3 == 0 {
                        // The relay may have moved (new address, or another relay assigned):
                        // ask the platform again.
                        if let Err(e) = self.renew() {
                            log::warn!("refreshing the relay list failed: {e}");
                        }
                    }
                }
            }
            if sleep_or_stop(&self.shared.stopping, backoff.next(random_unit())) {
                return;
            }
        }
    }
}

fn register(
    client: &ApiClient,
    registration: &GatewayRegistration,
    stopping: &AtomicBool,
) -> Result<GatewayCredentials, EnrolError> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        match client.gateway_register(registration) {
            Ok(creds) => return Ok(creds),
            Err(crate::platform::client::ClientError::Refused(e)) if e.status != 503 => {
                return Err(EnrolError::Platform(
                    crate::platform::client::ClientError::Refused(e),
                ))
            }
            Err(e) => log::warn!("registration failed (will retry): {e}"),
        }
        if sleep_or_stop(stopping, backoff.next(random_unit())) {
            return Err(EnrolError::State("stopped before registering".into()));
        }
    }
}

/// Serves `GET /health` (200 while a tunnel is up, else 503) and `GET /metrics`.
pub fn serve_health(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        let head = String::from_utf8_lossy(&buf[..n]);
        let path = head.split_whitespace().nth(1).unwrap_or("");
        let up = shared.connected_relay().is_some();
        let (status, body) = match path {
            "/health" if up => ("200 OK", shared.health_line() + "\n"),
            "/health" => ("503 Service Unavailable", shared.health_line() + "\n"),
            "/metrics" => ("200 OK", shared.metrics_text()),
            _ => ("404 Not Found", "try /health or /metrics\n".to_owned()),
        };
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

/// Runs the gateway until `stopping` is set; then drains connections (bounded) and returns.
/// `health` is served if given; `on_ready` runs once the first tunnel is up.
pub fn run(
    settings: Settings,
    stopping: Arc<AtomicBool>,
    health: Option<TcpListener>,
    on_ready: OnReady,
) -> Result<(), EnrolError> {
    let keys = Keys::load_or_create(&settings.state)?;
    let client = api_client(&settings.state, &settings.platform_url, &settings.enrolment)?;
    let registration = GatewayRegistration {
        ssh_public_key: keys.ssh_public()?,
        tls_public_key: keys.tls_public_pem(),
        org: None,
    };
    let creds = register(&client, &registration, &stopping)?;
    let who = format!("gateway {} of org {}", creds.gateway, creds.org);
    let shared = Shared::new(who.clone(), tls_server(&creds, &keys)?, stopping);
    if let Some(listener) = health {
        let s = shared.clone();
        let _ = std::thread::Builder::new()
            .name("gw-health".into())
            .spawn(move || serve_health(listener, s));
    }
    let gateway = Gateway {
        settings,
        keys,
        client,
        registration,
        creds: Mutex::new(creds),
        shared,
    };
    std::thread::scope(|scope| {
        scope.spawn(|| gateway.heartbeat_loop());
        let who = who.clone();
        gateway.tunnel_loop(Some(Box::new(move |relay: &str| on_ready(&who, relay))));
    });
    Ok(())
}
