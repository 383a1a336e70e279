//! The platform side of a connection, for applications: [`Dialer::connect`] returns a blocking
//! `Read + Write` stream to one permitted target behind one gateway.
//!
//! The dialer asks the platform API for session certificates (generating their keys locally,
//! never sending them), reuses them while they have comfortably more than a quarter of their
//! life left (at least 30 s), and opens relay hop and inner TLS session for each connection.
//! Every failure is its own [`DialError`] with a message an operator understands.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use rcgen::KeyPair;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::api::{SessionCredentials, SessionRequest};
use super::client::ApiClient;
use super::dial::{open_gateway, relay_handshake, DialError, GatewayStream};
use crate::clock::unix_now;
use crate::tls::Mode;

/// One session's certificates and the keys that go with them.
struct Held {
    creds: SessionCredentials,
    relay_key: Vec<u8>,
    gateway_key: Vec<u8>,
    issued: u64,
}

/// Opens connections to one target behind one gateway.
pub struct Dialer {
    client: ApiClient,
    gateway: String,
    target: String,
    ttl_secs: u64,
    timeout: Duration,
    held: Mutex<Option<Held>>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("gateway", &self.gateway)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// What [`Dialer::ping`] measured.
#[derive(Debug, Clone)]
pub struct PingReport {
    /// The relay that answered.
    pub relay: String,
    /// Getting (or reusing) session certificates from the platform.
    pub session: Duration,
    /// TCP and the TLS handshake with the relay.
    pub relay_setup: Duration,
    /// From there to the gateway's answer: the relay opening its channel to the gateway (while
    /// the inner ClientHello is already on its way), the inner handshake and the request.
    pub inner_setup: Duration,
    /// One-byte round trips through the whole path.
    pub round_trips: Vec<Duration>,
}

fn pkcs8(der: &[u8]) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der.to_vec()))
}

impl Dialer {
    /// A dialer for `target` (`host:port`) behind `gateway`, with session certificates of
    /// `ttl_secs` (the platform caps it) and `timeout` on every phase.
    pub fn new(
        client: ApiClient,
        gateway: &str,
        target: &str,
        ttl_secs: u64,
        timeout: Duration,
    ) -> Self {
        Self {
            client,
            gateway: gateway.to_owned(),
            target: target.to_owned(),
            ttl_secs,
            timeout,
            held: Mutex::new(None),
        }
    }

    fn fresh(held: &Held, now: u64) -> bool {
        let life = held.creds.not_after.saturating_sub(held.issued);
        let margin = (life / 4).max(30);
        now.saturating_add(margin) < held.creds.not_after
    }

    /// The current session, asking the platform for a new one when needed.
    fn session(
        &self,
    ) -> Result<
        (
            SessionCredentials,
            PrivateKeyDer<'static>,
            PrivateKeyDer<'static>,
        ),
        DialError,
    > {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let now = unix_now(SystemTime::now());
        if let Some(h) = held.as_ref().filter(|h| Self::fresh(h, now)) {
            return Ok((h.creds.clone(), pkcs8(&h.relay_key), pkcs8(&h.gateway_key)));
        }
        let key = || {
            KeyPair::generate_for(&rcgen::PKCS_ED25519)
                .map_err(|e| DialError::Session(e.to_string()))
        };
        let (relay_key, gateway_key) = (key()?, key()?);
        let creds = self
            .client
            .session(&SessionRequest {
                gateway: self.gateway.clone(),
                target: self.target.clone(),
                ttl_secs: self.ttl_secs,
                relay_client_key: relay_key.public_key_pem(),
                gateway_client_key: gateway_key.public_key_pem(),
            })
            .map_err(DialError::Platform)?;
        let h = Held {
            creds,
            relay_key: relay_key.serialize_der(),
            gateway_key: gateway_key.serialize_der(),
            issued: now,
        };
        let out = (h.creds.clone(), pkcs8(&h.relay_key), pkcs8(&h.gateway_key));
        *held = Some(h);
        Ok(out)
    }

    /// Forgets the held session (after a refusal that new certificates might fix).
    fn forget(&self) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// A stream to the target, through relay and gateway, in TCP mode.
    pub fn connect(&self) -> Result<GatewayStream, DialError> {
        self.open(Mode::Tcp).map(|(stream, _)| stream)
    }

    fn open(&self, mode: Mode) -> Result<(GatewayStream, [Duration; 3]), DialError> {
        let t0 = Instant::now();
        let (creds, relay_key, gateway_key) = self.session()?;
        let t1 = Instant::now();
        // A TLS refusal (the relay's, which now arrives with its status frame, or the
        // gateway's) may be cured by new certificates: the next connection asks for them.
        let forget_on_tls = |e: &DialError| {
            if matches!(e, DialError::Tls(_)) {
                self.forget();
            }
        };
        let relay = relay_handshake(&creds, relay_key, self.timeout).inspect_err(forget_on_tls)?;
        let t2 = Instant::now();
        let stream = open_gateway(relay, &creds, gateway_key, mode).inspect_err(forget_on_tls)?;
        Ok((stream, [t1 - t0, t2 - t1, t2.elapsed()]))
    }

    /// Opens a ping session and measures each phase and `count` one-byte round trips.
    pub fn ping(&self, count: usize) -> Result<PingReport, DialError> {
        use std::io::{Read, Write};
        let (mut stream, [session, relay_setup, inner_setup]) = self.open(Mode::Ping)?;
        let io = |e: std::io::Error| DialError::Unreachable(format!("ping: {e}"));
        let mut round_trips = Vec::with_capacity(count);
        let mut byte = [0u8; 1];
        for i in 0..count {
            let start = Instant::now();
            stream
                .write_all(&[u8::try_from(i % 256).unwrap_or(0)])
                .map_err(io)?;
            stream.flush().map_err(io)?;
            stream.read_exact(&mut byte).map_err(io)?;
            round_trips.push(start.elapsed());
        }
        let relay = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|h| h.creds.relay.name.clone())
            .unwrap_or_default();
        Ok(PingReport {
            relay,
            session,
            relay_setup,
            inner_setup,
            round_trips,
        })
    }
}
