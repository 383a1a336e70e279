//! The platform API client, used by relays, gateways, `connect` and the tests.
//!
//! Trust bootstrap: [`ApiClient::enrol`] opens one TLS connection to the API, looks in the
//! chain it presents for the certificate whose SHA-256 is the pin in the enrolment string, and
//! checks that the API's leaf is issued by that certificate for the host in the URL. From then on
//! (and after a restart, from the stored CA: [`ApiClient::pinned`]) every request goes through
//! ureq trusting exactly that one CA. Nothing else is trusted at any point, and no request
//! carries the token before the pin has been checked.

use std::fmt;
use std::io::ErrorKind;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::api::*;
use super::token::{hex, sha256, Enrolment, Token};
use crate::tls::provider;

/// How long any one API call may take, connection included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reply accepted.
const MAX_REPLY: u64 = 1024 * 1024;

/// Why a call to the platform failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientError {
    /// The API URL is not `https://host[:port]`.
    Url(String),
    /// The API could not be reached or did not complete a TLS handshake.
    Unreachable(String),
    /// The API presented no certificate with the pinned fingerprint, or its leaf does not chain
    /// to it.
    Pin(String),
    /// The platform refused the request.
    Refused(ApiError),
    /// The reply was not what the API documents.
    Reply(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Url(m) => write!(f, "platform URL: {m}"),
            Self::Unreachable(m) => write!(f, "platform API unreachable: {m}"),
            Self::Pin(m) => write!(f, "platform API failed the pinned-CA check: {m}"),
            Self::Refused(e) => write!(f, "platform refused: {e}"),
            Self::Reply(m) => write!(f, "platform reply not understood: {m}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A client bound to one platform, one token and one pinned CA.
pub struct ApiClient {
    base: String,
    agent: ureq::Agent,
    token: Token,
    ca: CertificateDer<'static>,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// `https://host[:port]` split into the base URL, host and port.
fn split_url(url: &str) -> Result<(String, String, u16), ClientError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| ClientError::Url(format!("expected https://host[:port], found {url:?}")))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(ClientError::Url(format!(
            "expected https://host[:port] with no path, found {url:?}"
        )));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (h.starts_with('[') || !h.contains(':')) => {
            let port = p
                .parse()
                .map_err(|_| ClientError::Url(format!("port {p:?} is not a number")))?;
            (h, port)
        }
        _ => (authority, 443),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((format!("https://{authority}"), host, port))
}

impl ApiClient {
    /// Enrols: checks the API against the pin in `enrolment` and returns a client trusting the
    /// pinned CA only.
    pub fn enrol(url: &str, enrolment: &Enrolment) -> Result<Self, ClientError> {
        let (base, host, port) = split_url(url)?;
        let ca = discover(&host, port, enrolment.api_ca)?;
        Ok(Self::build(base, enrolment.token.clone(), ca))
    }

    /// A client trusting `ca` (stored at enrolment), with `token`.
    pub fn pinned(
        url: &str,
        token: Token,
        ca: CertificateDer<'static>,
    ) -> Result<Self, ClientError> {
        let (base, _, _) = split_url(url)?;
        Ok(Self::build(base, token, ca))
    }

    fn build(base: String, token: Token, ca: CertificateDer<'static>) -> Self {
        let roots = vec![ureq::tls::Certificate::from_der(&ca).to_owned()];
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
            .unversioned_rustls_crypto_provider(provider())
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(CALL_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Self {
            base,
            agent,
            token,
            ca,
        }
    }

    /// The pinned API CA certificate, to store for [`ApiClient::pinned`].
    pub fn api_ca(&self) -> &CertificateDer<'static> {
        &self.ca
    }

    fn finish<R: DeserializeOwned>(
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<R, ClientError> {
        let mut response = result.map_err(|e| ClientError::Unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_REPLY)
            .read_to_string()
            .map_err(|e| ClientError::Unreachable(format!("reading the reply: {e}")))?;
        if status == 200 {
            return serde_json::from_str(&text).map_err(|e| ClientError::Reply(e.to_string()));
        }
        #[derive(Deserialize)]
        struct Body {
            error: Inner,
        }
        #[derive(Deserialize)]
        struct Inner {
            field: Option<String>,
            problem: String,
        }
        let parsed: Body = serde_json::from_str(&text)
            .map_err(|_| ClientError::Reply(format!("status {status} with body {text:?}")))?;
        Err(ClientError::Refused(ApiError {
            status,
            field: parsed.error.field,
            problem: parsed.error.problem,
            retry_after: None,
        }))
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.token.expose())
    }

    /// POSTs `body` as JSON to `path` and reads the reply.
    pub fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R, ClientError> {
        let request = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", self.bearer());
        Self::finish(request.send_json(body))
    }

    /// GETs `path`.
    pub fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        let request = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", self.bearer());
        Self::finish(request.call())
    }

    /// Registers a relay.
    pub fn relay_register(&self, r: &RelayRegistration) -> Result<RelayCredentials, ClientError> {
        self.post("/v1/relay/register", r)
    }

    /// Renews a relay's certificates.
    pub fn relay_renew(&self, r: &RelayRegistration) -> Result<RelayCredentials, ClientError> {
        self.post("/v1/relay/renew", r)
    }

    /// Sends a relay heartbeat.
    pub fn relay_heartbeat(&self, h: &RelayHeartbeat) -> Result<HeartbeatReply, ClientError> {
        self.post("/v1/relay/heartbeat", h)
    }

    /// Fetches the revocation list.
    pub fn revocations(&self) -> Result<Revocations, ClientError> {
        self.get("/v1/revocations")
    }

    /// Registers a gateway.
    pub fn gateway_register(
        &self,
        r: &GatewayRegistration,
    ) -> Result<GatewayCredentials, ClientError> {
        self.post("/v1/gateway/register", r)
    }

    /// Renews a gateway's certificates (and possibly its relay assignment).
    pub fn gateway_renew(
        &self,
        r: &GatewayRegistration,
    ) -> Result<GatewayCredentials, ClientError> {
        self.post("/v1/gateway/renew", r)
    }

    /// Sends a gateway heartbeat.
    pub fn gateway_heartbeat(&self, h: &GatewayHeartbeat) -> Result<HeartbeatReply, ClientError> {
        self.post("/v1/gateway/heartbeat", h)
    }

    /// Asks for one session's certificates.
    pub fn session(&self, r: &SessionRequest) -> Result<SessionCredentials, ClientError> {
        self.post("/v1/session", r)
    }
}

/// One TLS handshake with the API, keeping the chain certificate that matches `pin`.
fn discover(host: &str, port: u16, pin: [u8; 32]) -> Result<CertificateDer<'static>, ClientError> {
    let unreachable =
        |e: &dyn fmt::Display| ClientError::Unreachable(format!("{host}:{port}: {e}"));
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| unreachable(&e))?
        .next()
        .ok_or_else(|| unreachable(&"the name resolves to no address"))?;
    let mut tcp =
        TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| unreachable(&e))?;
    tcp.set_read_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| unreachable(&e))?;
    tcp.set_write_timeout(Some(CONNECT_TIMEOUT))
        .map_err(|e| unreachable(&e))?;
    tcp.set_nodelay(true).map_err(|e| unreachable(&e))?;
    let verifier = Arc::new(PinVerifier {
        pin,
        found: Mutex::new(None),
    });
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| unreachable(&e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned())
        .map_err(|_| ClientError::Url(format!("{host:?} is not a DNS name or IP address")))?;
    let mut conn = ClientConnection::new(Arc::new(config), name).map_err(|e| unreachable(&e))?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            let pin_failure = e.kind() == ErrorKind::InvalidData;
            let message = e.to_string();
            return Err(if pin_failure {
                ClientError::Pin(message)
            } else {
                unreachable(&message)
            });
        }
    }
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    let found = verifier
        .found
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    found.ok_or_else(|| ClientError::Pin("the handshake ended without a checked chain".into()))
}

#[derive(Debug)]
struct PinVerifier {
    pin: [u8; 32],
    found: Mutex<Option<CertificateDer<'static>>>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        leaf: &CertificateDer<'_>,
        chain: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = chain
            .iter()
            .find(|c| sha256(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "the API presented no certificate with the pinned SHA-256 {}",
                    hex(&self.pin)
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki.verify_server_cert(leaf, &[], name, ocsp, now)?;
        *self.found.lock().unwrap_or_else(|p| p.into_inner()) = Some(ca.clone().into_owned());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crate::tls::refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crate::tls::verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        crate::tls::schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_port() {
        let (base, host, port) = split_url("https://127.0.0.1:8443/").unwrap();
        assert_eq!(
            (base.as_str(), host.as_str(), port),
            ("https://127.0.0.1:8443", "127.0.0.1", 8443)
        );
        let (_, host, port) = split_url("https://[::1]:9").unwrap();
        assert_eq!((host.as_str(), port), ("::1", 9));
        let (_, host, port) = split_url("https://platform.example").unwrap();
        assert_eq!((host.as_str(), port), ("platform.example", 443));
    }

    #[test]
    fn reject_non_https_and_paths() {
        for bad in [
            "http://h:1",
            "h:1",
            "https://",
            "https://h:1/v1",
            "https://h:x",
        ] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }
}
