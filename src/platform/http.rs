//! A deliberately small HTTP/1.1 server over rustls for the platform API.
//!
//! One request per connection (`Connection: close`), bodies only with `Content-Length`, at most
//! [`MAX_HEAD`] bytes of request head and [`MAX_BODY`] bytes of body; a larger body is refused
//! with 413 before a byte of it is parsed. Every connection has one deadline ([`Limits::timeout`])
//! covering the TLS handshake, the request and the response, and at most
//! [`Limits::max_connections`] connections are served at once (the next ones are closed at
//! accept). Everything here faces the network: nothing panics on any input.

use std::io::{self, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ServerConfig, ServerConnection, StreamOwned};
use serde::Serialize;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// A too-large body up to this size is read and discarded so the client sees the 413.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    /// `GET` or `POST`.
    pub method: String,
    /// The path, without query string.
    pub path: String,
    /// The `Authorization: Bearer` credential, if any. Never log it.
    pub bearer: Option<String>,
    /// The body.
    pub body: Vec<u8>,
    /// The client's address, for rate limiting.
    pub peer: IpAddr,
}

/// A JSON response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Vec<u8>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl Response {
    /// `status` with `value` as JSON.
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        let body = serde_json::to_vec(value).unwrap_or_else(|e| {
            format!("{{\"error\":{{\"field\":null,\"problem\":\"encoding reply: {e}\"}}}}")
                .into_bytes()
        });
        Self {
            status,
            body,
            retry_after: None,
        }
    }

    /// The error shape every endpoint uses: `{"error": {"field": ..., "problem": ...}}`.
    pub fn error(status: u16, field: Option<&str>, problem: &str) -> Self {
        #[derive(Serialize)]
        struct Inner<'a> {
            field: Option<&'a str>,
            problem: &'a str,
        }
        #[derive(Serialize)]
        struct Outer<'a> {
            error: Inner<'a>,
        }
        Self::json(
            status,
            &Outer {
                error: Inner { field, problem },
            },
        )
    }
}

/// What serves requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: &Request) -> Response;
}

/// Connection limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deadline for one whole connection.
    pub timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            max_connections: 64,
        }
    }
}

/// The API listener's rustls configuration: TLS 1.3, no client certificates, and a leaf issued
/// (and re-issued before expiry) by the API CA.
pub fn api_tls_config(
    ca: &Arc<super::state::ApiCa>,
    now: std::time::SystemTime,
) -> Result<Arc<ServerConfig>, super::PlatformError> {
    let config = ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| super::PlatformError::State(format!("API TLS: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(ca.resolver(now)?));
    Ok(Arc::new(config))
}

/// Serves `listener` until `stop` is set (checked after each accepted connection, so whoever sets
/// it should then connect once to wake the listener), then waits up to `limits.timeout` for the
/// connections in flight to finish.
pub fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    handler: Arc<dyn Handler>,
    limits: Limits,
    stop: Arc<AtomicBool>,
) -> io::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            log::warn!(
                "refused a connection: {} already open",
                limits.max_connections
            );
            continue;
        }
        let (tls, handler, active2) = (tls.clone(), handler.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("api-conn".into())
            .spawn(move || {
                if let Err(e) = connection(stream, tls, handler.as_ref(), limits) {
                    log::debug!("API connection ended: {e}");
                }
                active2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            active.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let drained_by = Instant::now() + limits.timeout;
    while active.load(Ordering::SeqCst) > 0 && Instant::now() < drained_by {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A TCP stream whose reads and writes fail once a deadline passes.
struct Deadlined {
    tcp: TcpStream,
    deadline: Instant,
}

impl Deadlined {
    fn arm(&self) -> io::Result<()> {
        let left = self
            .deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "connection deadline"))?;
        self.tcp.set_read_timeout(Some(left))?;
        self.tcp.set_write_timeout(Some(left))
    }
}

impl Read for Deadlined {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.arm()?;
        self.tcp.read(buf)
    }
}

impl Write for Deadlined {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.arm()?;
        self.tcp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

fn connection(
    tcp: TcpStream,
    tls: Arc<ServerConfig>,
    handler: &dyn Handler,
    limits: Limits,
) -> io::Result<()> {
    tcp.set_nodelay(true)?;
    let peer = tcp.peer_addr()?.ip();
    let conn = ServerConnection::new(tls).map_err(io::Error::other)?;
    let io = Deadlined {
        tcp,
        deadline: Instant::now() + limits.timeout,
    };
    let mut stream = StreamOwned::new(conn, io);
    let response = match read_request(&mut stream, peer) {
        Ok(request) => handler.handle(&request),
        Err(Refusal::Reply(response)) => response,
        Err(Refusal::Io(e)) => return Err(e),
    };
    write_response(&mut stream, &response)?;
    stream.conn.send_close_notify();
    stream.flush()
}

/// Why no request came out of a connection.
#[derive(Debug)]
pub enum Refusal {
    /// The client sent something we answer with an error.
    Reply(Response),
    /// The connection failed (nothing to answer).
    Io(io::Error),
}

fn reply(status: u16, problem: &str) -> Refusal {
    Refusal::Reply(Response::error(status, None, problem))
}

/// Reads one request. Refuses oversized, chunked or malformed ones with the response to send.
pub fn read_request(r: &mut impl Read, peer: IpAddr) -> Result<Request, Refusal> {
    let (mut buf, head_len) = read_head(r)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(&buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(reply(400, "incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(reply(431, "more than 32 request headers"))
        }
        Err(e) => return Err(reply(400, &format!("malformed request: {e}"))),
    }
    let method = parsed.method.unwrap_or_default().to_owned();
    let path = parsed.path.unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default().to_owned();
    let mut length = None;
    let mut bearer = None;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(reply(
                411,
                "chunked bodies are not accepted; send Content-Length",
            ));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| reply(400, "Content-Length is not a number"))?;
            if length.replace(n).is_some_and(|old| old != n) {
                return Err(reply(400, "conflicting Content-Length headers"));
            }
        } else if h.name.eq_ignore_ascii_case("authorization") {
            bearer = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(|v| v.trim().to_owned());
        }
    }
    let length = length.unwrap_or(0);
    if length > MAX_BODY {
        drain(r, length - (buf.len() - head_len).min(length));
        return Err(reply(
            413,
            &format!("request body of {length} bytes is over the limit of {MAX_BODY} bytes"),
        ));
    }
    let mut body = buf.split_off(head_len);
    body.truncate(length);
    let have = body.len();
    body.resize(length, 0);
    r.read_exact(&mut body[have..]).map_err(Refusal::Io)?;
    Ok(Request {
        method,
        path,
        bearer,
        body,
        peer,
    })
}

/// Reads until the blank line ending the head; returns the bytes read and the head's length.
fn read_head(r: &mut impl Read) -> Result<(Vec<u8>, usize), Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find_blank_line(&buf) {
            return Ok((buf, end));
        }
        if buf.len() > MAX_HEAD {
            return Err(reply(431, &format!("request head over {MAX_HEAD} bytes")));
        }
        match r.read(&mut chunk) {
            Ok(0) if buf.is_empty() => {
                return Err(Refusal::Io(io::ErrorKind::UnexpectedEof.into()))
            }
            Ok(0) => return Err(reply(400, "connection closed inside the request head")),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) => return Err(Refusal::Io(e)),
        }
    }
}

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Reads and discards up to `n` bytes (bounded), so a client still writing its body reads our
/// refusal instead of a reset.
fn drain(r: &mut impl Read, n: usize) {
    let n = u64::try_from(n.min(DRAIN_LIMIT)).unwrap_or(0);
    let _ = io::copy(&mut r.take(n), &mut io::sink());
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Writes `response` with `Connection: close`.
pub fn write_response(w: &mut impl Write, response: &Response) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\nCache-Control: no-store\r\n",
        response.status,
        reason(response.status),
        response.body.len()
    );
    if let Some(secs) = response.retry_after {
        head.push_str(&format!("Retry-After: {secs}\r\n"));
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    w.write_all(&response.body)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn parse(raw: &[u8]) -> Result<Request, Refusal> {
        read_request(&mut &raw[..], PEER)
    }

    fn status(r: Result<Request, Refusal>) -> u16 {
        match r {
            Err(Refusal::Reply(resp)) => resp.status,
            Err(Refusal::Io(e)) => panic!("io error {e}"),
            Ok(req) => panic!("accepted {req:?}"),
        }
    }

    #[test]
    fn parses_post_with_body_and_bearer() {
        let req = parse(
            b"POST /v1/x?a=b HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer tok\r\n\
              Content-Length: 4\r\n\r\nbody",
        )
        .unwrap();
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/v1/x");
        assert_eq!(req.bearer.as_deref(), Some("tok"));
        assert_eq!(req.body, b"body");
    }

    #[test]
    fn reject_oversized_body_before_reading_it() {
        let raw = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(status(parse(raw.as_bytes())), 413);
    }

    #[test]
    fn reject_chunked_body() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(status(parse(raw)), 411);
    }

    #[test]
    fn reject_oversized_head_and_garbage() {
        let mut raw = b"GET / HTTP/1.1\r\nX: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        assert_eq!(status(parse(&raw)), 431);
        assert_eq!(status(parse(b"\x00\x01\x02\r\n\r\n")), 400);
        assert_eq!(status(parse(b"GET / HTTP/1.1\r\nHost")), 400);
        assert_eq!(
            status(parse(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n")),
            400
        );
        assert_eq!(
            status(parse(
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
            )),
            400
        );
    }

    #[test]
    fn short_body_is_an_io_error_not_a_request() {
        let r = parse(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
        assert!(matches!(r, Err(Refusal::Io(_))));
    }

    #[test]
    fn response_has_length_and_retry_after() {
        let mut out = Vec::new();
        let mut resp = Response::error(429, Some("token"), "slow down");
        resp.retry_after = Some(3);
        write_response(&mut out, &resp).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(text.contains("Retry-After: 3\r\n"));
        assert!(text.ends_with(r#"{"error":{"field":"token","problem":"slow down"}}"#));
    }
}
