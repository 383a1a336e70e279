//! The platform's first hop: a blocking mTLS connection to the relay named in a session, up to
//! the relay's status frame. What follows on the stream is the splice to the gateway.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConnection, StreamOwned};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::api::SessionCredentials;
use crate::frame::{Frame, Status};
use crate::tls::relay::{platform_relay_client, RelayServerVerifier};
use crate::tls::{server_name, Identity, TlsError};

/// The spliced stream to a gateway, through the relay.
pub type RelayStream = StreamOwned<ClientConnection, TcpStream>;

/// Why the relay could not be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum DialError {
    /// The session's relay address or certificates are unusable.
    Session(String),
    /// The relay could not be reached.
    Unreachable(String),
    /// The TLS handshake with the relay failed.
    Tls(String),
    /// The relay or the gateway refused, saying why.
    Refused(Frame),
    /// The platform refused to issue session certificates (or could not be reached).
    Platform(super::client::ClientError),
}

impl fmt::Display for DialError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Session(m) => write!(f, "session credentials: {m}"),
            Self::Unreachable(m) => write!(f, "relay unreachable: {m}"),
            Self::Tls(m) => write!(f, "TLS with the relay failed: {m}"),
            Self::Refused(frame) => f.write_str(&refusal_message(frame)),
            Self::Platform(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DialError {}

/// What a person should read for a refusal frame.
fn refusal_message(frame: &Frame) -> String {
    let what = match frame.status {
        Status::NotConnected => "gateway not connected",
        Status::Revoked => "gateway revoked",
        Status::Busy => "relay busy",
        Status::GatewayUnreachable => "gateway not answering",
        Status::Stopping => "relay stopping",
        Status::NotPermitted => "target not permitted",
        Status::TargetUnreachable => "target refused",
        _ => "refused",
    };
    format!("{what}: {}", frame.message)
}

fn cert(pem_text: &str, what: &str) -> Result<CertificateDer<'static>, DialError> {
    pem::parse(pem_text)
        .map(|p| CertificateDer::from(p.into_contents()))
        .map_err(|e| DialError::Session(format!("{what}: {e}")))
}

fn tls_error(e: &std::io::Error) -> DialError {
    let inner = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .and_then(TlsError::from_rustls);
    match inner {
        Some(t @ TlsError::Expired { .. }) => DialError::Tls(format!("certificate expired: {t}")),
        Some(t) => DialError::Tls(t.to_string()),
        None => DialError::Tls(e.to_string()),
    }
}

/// Connects to the session's relay with its relay client certificate (whose private key is
/// `relay_key`), checks the relay against the session's relay PKI Server CA, and reads the
/// relay's status frame. Every phase is bounded by `timeout`.
pub fn dial_relay(
    session: &SessionCredentials,
    relay_key: PrivateKeyDer<'static>,
    timeout: Duration,
) -> Result<RelayStream, DialError> {
    let relay = &session.relay;
    let (host, _) = relay.tls_address.rsplit_once(':').ok_or_else(|| {
        DialError::Session(format!("relay address {:?} has no port", relay.tls_address))
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = server_name(host).map_err(|e| DialError::Session(e.to_string()))?;
    let identity = Identity {
        chain: vec![cert(
            &session.relay_client_certificate,
            "relay_client_certificate",
        )?],
        key: relay_key,
    };
    let verifier = RelayServerVerifier::new(cert(&session.relay_server_ca, "relay_server_ca")?)
        .map_err(|e| DialError::Session(e.to_string()))?;
    let config =
        platform_relay_client(identity, verifier).map_err(|e| DialError::Session(e.to_string()))?;
    let tcp = connect(&relay.tls_address, timeout)?;
    let conn = ClientConnection::new(Arc::clone(&config), name)
        .map_err(|e| DialError::Tls(e.to_string()))?;
    let mut stream = StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| tls_error(&e))?;
    }
    stream.flush().map_err(|e| tls_error(&e))?;
    let frame = Frame::read_from(&mut stream).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => DialError::Tls(format!("relay status frame: {e}")),
        _ => tls_error(&e),
    })?;
    if frame.status != Status::Connected {
        return Err(DialError::Refused(frame));
    }
    stream
        .sock
        .set_read_timeout(None)
        .map_err(|e| DialError::Unreachable(e.to_string()))?;
    stream
        .sock
        .set_write_timeout(None)
        .map_err(|e| DialError::Unreachable(e.to_string()))?;
    Ok(stream)
}

fn connect(address: &str, timeout: Duration) -> Result<TcpStream, DialError> {
    let unreachable = |e: &dyn fmt::Display| DialError::Unreachable(format!("{address}: {e}"));
    let addr = address
        .to_socket_addrs()
        .map_err(|e| unreachable(&e))?
        .next()
        .ok_or_else(|| unreachable(&"resolves to no address"))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout).map_err(|e| unreachable(&e))?;
    tcp.set_nodelay(true).map_err(|e| unreachable(&e))?;
    tcp.set_read_timeout(Some(timeout))
        .map_err(|e| unreachable(&e))?;
    tcp.set_write_timeout(Some(timeout))
        .map_err(|e| unreachable(&e))?;
    Ok(tcp)
}

/// The end-to-end stream to a target: the inner TLS session, inside the relay splice.
pub type GatewayStream = StreamOwned<ClientConnection, RelayStream>;

/// Ends a session cleanly once the caller has written everything: closes the inner session and
/// the relay hop with close_notify, so the relay and the gateway finish delivering instead of
/// aborting. (Dropping a stream without this is an abort: the far end sees an error.) Reading
/// what the target still sends remains possible until it closes too.
pub fn finish(stream: &mut GatewayStream) -> std::io::Result<()> {
    stream.conn.send_close_notify();
    stream.flush()?;
    stream.sock.conn.send_close_notify();
    stream.sock.flush()
}

/// Opens the whole path for `session`: the relay hop ([`dial_relay`]), then [`open_gateway`].
pub fn dial_gateway(
    session: &SessionCredentials,
    relay_key: PrivateKeyDer<'static>,
    gateway_key: PrivateKeyDer<'static>,
    mode: crate::tls::Mode,
    timeout: Duration,
) -> Result<GatewayStream, DialError> {
    let relay = dial_relay(session, relay_key, timeout)?;
    open_gateway(relay, session, gateway_key, mode, timeout)
}

/// [`open_inner`] over a relay hop, every phase bounded by `timeout` (a read timeout on the
/// relay socket, lifted once the gateway has answered).
pub fn open_gateway(
    relay: RelayStream,
    session: &SessionCredentials,
    gateway_key: PrivateKeyDer<'static>,
    mode: crate::tls::Mode,
    timeout: Duration,
) -> Result<GatewayStream, DialError> {
    let unreachable = |e: std::io::Error| DialError::Unreachable(e.to_string());
    relay
        .sock
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    let stream = open_inner(relay, session, gateway_key, mode)?;
    stream
        .sock
        .sock
        .set_read_timeout(None)
        .map_err(unreachable)?;
    Ok(stream)
}

/// The inner TLS 1.3 session over `transport`, pinned to the session's gateway (client key
/// `gateway_key`), the request for the session's target in `mode`, and the gateway's answer.
/// Returns the stream after a `connected` answer; any other answer is [`DialError::Refused`]
/// with the gateway's words. The caller bounds the transport's blocking (read timeouts).
pub fn open_inner<S: Read + Write>(
    transport: S,
    session: &SessionCredentials,
    gateway_key: PrivateKeyDer<'static>,
    mode: crate::tls::Mode,
) -> Result<StreamOwned<ClientConnection, S>, DialError> {
    use crate::id::{GatewayId, OrgId};
    use crate::tls::gateway::{platform_gateway_client, GatewayServerVerifier};
    let org = OrgId::new(&session.org).map_err(|e| DialError::Session(e.to_string()))?;
    let gw = GatewayId::new(&session.gateway).map_err(|e| DialError::Session(e.to_string()))?;
    let verifier = GatewayServerVerifier::new(
        cert(&session.gateway_server_ca, "gateway_server_ca")?,
        org,
        gw,
    )
    .map_err(|e| DialError::Session(e.to_string()))?;
    let identity = Identity {
        chain: vec![cert(
            &session.gateway_client_certificate,
            "gateway_client_certificate",
        )?],
        key: gateway_key,
    };
    let (config, name) = platform_gateway_client(identity, verifier, mode)
        .map_err(|e| DialError::Session(e.to_string()))?;
    let conn = ClientConnection::new(config, name).map_err(|e| DialError::Tls(e.to_string()))?;
    let mut stream = StreamOwned::new(conn, transport);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| tls_error(&e))?;
    }
    let request = Frame::new(Status::Request, session.target.clone());
    stream
        .write_all(&request.encode())
        .map_err(|e| tls_error(&e))?;
    stream.flush().map_err(|e| tls_error(&e))?;
    let answer = Frame::read_from(&mut stream).map_err(|e| tls_error(&e))?;
    if answer.status != Status::Connected {
        return Err(DialError::Refused(answer));
    }
    Ok(stream)
}
