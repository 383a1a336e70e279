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
    let mut stream = relay_handshake(session, relay_key, timeout)?;
    stream.flush().map_err(|e| tls_error(&e))?;
    relay_answer(&mut stream)?;
    lift_timeouts(&stream.sock)?;
    Ok(stream)
}

/// TCP and the TLS handshake with the relay, up to the point where the platform's last
/// handshake flight (its certificate, signature and Finished) is ready but *not yet sent*: the
/// caller's first write goes out with it, in one segment.
pub(super) fn relay_handshake(
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
    handshake_unflushed(&mut stream).map_err(|e| tls_error(&e))?;
    Ok(stream)
}

/// Drives a client handshake until it is complete, leaving the client's final flight buffered.
fn handshake_unflushed<S: Read + Write>(
    stream: &mut StreamOwned<ClientConnection, S>,
) -> std::io::Result<()> {
    while stream.conn.is_handshaking() {
        if stream.conn.wants_write() {
            stream.conn.write_tls(&mut stream.sock)?;
            continue;
        }
        if stream.conn.read_tls(&mut stream.sock)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the peer closed the connection during the TLS handshake",
            ));
        }
        if let Err(e) = stream.conn.process_new_packets() {
            // Send the alert that says why, as complete_io would.
            let _ = stream.conn.write_tls(&mut stream.sock);
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e));
        }
    }
    Ok(())
}

/// Reads the relay's status frame: `Ok` for `connected`, its words for anything else.
fn relay_answer(stream: &mut RelayStream) -> Result<(), DialError> {
    let frame = Frame::read_from(stream).map_err(|e| match e.kind() {
        std::io::ErrorKind::InvalidData => DialError::Tls(format!("relay status frame: {e}")),
        _ => tls_error(&e),
    })?;
    if frame.status != Status::Connected {
        return Err(DialError::Refused(frame));
    }
    Ok(())
}

fn lift_timeouts(tcp: &TcpStream) -> Result<(), DialError> {
    let unreachable = |e: std::io::Error| DialError::Unreachable(e.to_string());
    tcp.set_read_timeout(None).map_err(unreachable)?;
    tcp.set_write_timeout(None).map_err(unreachable)
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

/// Opens the whole path for `session`: the relay hop, then the inner session through it, with
/// nothing waiting that need not (see `open_gateway`).
pub fn dial_gateway(
    session: &SessionCredentials,
    relay_key: PrivateKeyDer<'static>,
    gateway_key: PrivateKeyDer<'static>,
    mode: crate::tls::Mode,
    timeout: Duration,
) -> Result<GatewayStream, DialError> {
    let relay = relay_handshake(session, relay_key, timeout)?;
    open_gateway(relay, session, gateway_key, mode)
}

/// The inner TLS 1.3 session, pinned to the session's gateway (client key `gateway_key`), over a
/// relay hop whose handshake is done but whose status frame is still unread; then the request
/// for the session's target in `mode`, and the gateway's answer. Returns the stream after a
/// `connected` answer; the relay's or the gateway's refusal is [`DialError::Refused`] with
/// their words.
///
/// Nothing waits that need not: the inner ClientHello leaves with the platform's last relay
/// handshake flight, in one segment, and waits at the relay while it opens the channel to the
/// gateway; the request leaves with the inner Finished. From the relay's answer on, that is one
/// round trip to the gateway for the handshake and one for the request. Every read is bounded
/// by the relay socket's timeouts, lifted once the gateway has answered.
pub(super) fn open_gateway(
    mut relay: RelayStream,
    session: &SessionCredentials,
    gateway_key: PrivateKeyDer<'static>,
    mode: crate::tls::Mode,
) -> Result<GatewayStream, DialError> {
    let mut inner = inner_client(session, gateway_key, mode)?;
    let request = Frame::new(Status::Request, session.target.clone());
    // Buffered until the handshake completes, then sent with the Finished.
    inner
        .writer()
        .write_all(&request.encode())
        .map_err(|e| tls_error(&e))?;
    send_pending(&mut inner, &mut Batched(&mut relay)).map_err(|e| tls_error(&e))?;
    relay_answer(&mut relay)?;
    while inner.is_handshaking() {
        inner
            .complete_io(&mut Batched(&mut relay))
            .map_err(|e| tls_error(&e))?;
    }
    let mut stream = StreamOwned::new(inner, relay);
    let answer = Frame::read_from(&mut stream).map_err(|e| tls_error(&e))?;
    if answer.status != Status::Connected {
        return Err(DialError::Refused(answer));
    }
    lift_timeouts(&stream.sock.sock)?;
    Ok(stream)
}

/// The platform's end of the inner session, pinned to the session's gateway.
fn inner_client(
    session: &SessionCredentials,
    gateway_key: PrivateKeyDer<'static>,
    mode: crate::tls::Mode,
) -> Result<ClientConnection, DialError> {
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
    ClientConnection::new(config, name).map_err(|e| DialError::Tls(e.to_string()))
}

fn send_pending(inner: &mut ClientConnection, hop: &mut Batched<'_>) -> std::io::Result<()> {
    while inner.wants_write() {
        // The relay hop's send buffer is full (it takes 64 KiB): send it, then go on.
        if inner.write_tls(hop)? == 0 {
            hop.flush()?;
        }
    }
    hop.flush()
}

/// The relay hop as the inner session's transport, with writes batched: each write becomes a
/// relay TLS record, and `flush` sends everything pending (the relay handshake's last flight
/// too, the first time) in one system call.
struct Batched<'a>(&'a mut RelayStream);

impl Read for Batched<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Batched<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.conn.writer().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        while self.0.conn.wants_write() {
            self.0.conn.write_tls(&mut self.0.sock)?;
        }
        Ok(())
    }
}
