//! One tunnelled connection: the end-to-end TLS 1.3 server, the permission check, and the
//! proxy to the target. Runs on its own small-stack thread; talks to the pump thread only
//! through two bounded queues, so a slow target slows its own channel and nothing else.
//!
//! After the handshake (client certificate checked against exactly the org Gateway Client CA,
//! for this gateway, and the mode taken from ALPN), the platform sends one
//! [`Status::Request`] frame naming the target; the gateway answers with one frame before any
//! target byte: `connected`, `not_permitted` (the certificate permits another target) or
//! `target_unreachable` (with the dial error). The session is cut, without a TLS close, when the
//! client certificate expires, so the platform sees an error and never a silent short stream.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::ServerConnection;

use super::proxy::dial;
use super::Shared;
use crate::frame::{Frame, Status};
use crate::tls::gateway::SessionGrant;
use crate::tls::Mode;

/// Bytes between the pump and a connection thread.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Channel data.
    Data(Vec<u8>),
    /// The sender will send no more (SSH EOF).
    Eof,
    /// Tear the channel down now.
    Abort,
}

/// Queue depth each way, in chunks of up to 32 KiB.
pub const QUEUE: usize = 16;
/// Deadline for the TLS handshake and the request frame.
pub const HANDSHAKE: Duration = Duration::from_secs(10);
/// Deadline for dialling the target.
pub const DIAL: Duration = Duration::from_secs(10);

/// The connection thread's ends of its queues, and how to wake the pump.
pub struct Pipe {
    /// From the pump.
    pub rx: Receiver<Chunk>,
    /// To the pump.
    pub tx: SyncSender<Chunk>,
    /// Wakes the pump after a send or a receive.
    pub wake: Arc<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for Pipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pipe")
    }
}

/// The receiving half as `Read`, with an optional deadline.
struct Inbound {
    rx: Receiver<Chunk>,
    wake: Arc<dyn Fn() + Send + Sync>,
    buf: Vec<u8>,
    pos: usize,
    deadline: Option<Instant>,
    ended: bool,
}

impl Inbound {
    /// Waits until unread bytes are buffered; false once the pump's side has ended.
    fn fill(&mut self) -> io::Result<bool> {
        while self.pos >= self.buf.len() {
            if self.ended {
                return Ok(false);
            }
            let chunk = match self.deadline {
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => self
                    .rx
                    .recv_timeout(d.saturating_duration_since(Instant::now())),
            };
            (self.wake)();
            match chunk {
                Ok(Chunk::Data(d)) => {
                    self.buf = d;
                    self.pos = 0;
                }
                Ok(Chunk::Eof | Chunk::Abort) | Err(RecvTimeoutError::Disconnected) => {
                    self.ended = true;
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "handshake deadline",
                    ))
                }
            }
        }
        Ok(true)
    }

    /// The unread bytes as they came from the pump, without copying; None at the end. An idle
    /// connection keeps no chunk.
    fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if !self.fill()? {
            return Ok(None);
        }
        let mut rest = std::mem::take(&mut self.buf);
        if self.pos > 0 {
            rest.drain(..self.pos);
        }
        self.pos = 0;
        Ok(Some(rest))
    }
}

impl Read for Inbound {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if !self.fill()? {
            return Ok(0);
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos == self.buf.len() {
            (self.buf, self.pos) = (Vec::new(), 0);
        }
        Ok(n)
    }
}

/// The sending half as `Write`.
#[derive(Clone)]
struct Outbound {
    tx: SyncSender<Chunk>,
    wake: Arc<dyn Fn() + Send + Sync>,
    /// Held while TLS records are drained and queued, to keep them in order.
    order: Arc<Mutex<()>>,
}

impl Outbound {
    fn send(&self, chunk: Chunk) -> io::Result<()> {
        let sent = self.tx.send(chunk);
        (self.wake)();
        sent.map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "tunnel channel closed"))
    }
}

impl Write for Outbound {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(Chunk::Data(buf.to_vec()))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Why a connection ended early. Logged with the phase.
#[derive(Debug)]
pub enum ConnError {
    /// The TLS handshake failed or timed out (bad client certificate, no ALPN, …).
    Handshake(String),
    /// The certificate passed rustls but not the grant check.
    Grant(String),
    /// The request frame was missing or malformed.
    Request(String),
    /// Refused with a frame sent to the platform.
    Refused(Frame),
    /// The tunnel or target failed mid-session.
    Io(String),
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Handshake(m) => write!(f, "TLS handshake: {m}"),
            Self::Grant(m) => write!(f, "session certificate: {m}"),
            Self::Request(m) => write!(f, "request: {m}"),
            Self::Refused(frame) => write!(f, "refused: {}", frame.message),
            Self::Io(m) => write!(f, "{m}"),
        }
    }
}

fn io_err(e: io::Error) -> ConnError {
    ConnError::Io(e.to_string())
}

/// Serves one tunnelled connection to its end. `origin` names the peer for logs.
pub fn serve(pipe: Pipe, shared: &Shared, origin: &str) -> Result<(), ConnError> {
    let server = shared.tls();
    let mut conn =
        ServerConnection::new(server.config()).map_err(|e| ConnError::Handshake(e.to_string()))?;
    let mut inbound = Inbound {
        rx: pipe.rx,
        wake: pipe.wake.clone(),
        buf: Vec::new(),
        pos: 0,
        deadline: Some(Instant::now() + HANDSHAKE),
        ended: false,
    };
    let mut outbound = Outbound {
        tx: pipe.tx,
        wake: pipe.wake,
        order: Arc::new(Mutex::new(())),
    };
    let handshake = handshake(&mut conn, &mut inbound, &mut outbound);
    if let Err(e) = handshake {
        let _ = outbound.send(Chunk::Abort);
        return Err(e);
    }
    let (grant, mode) = server
        .accept(&conn, SystemTime::now())
        .map_err(|e| ConnError::Grant(e.to_string()))?;
    let request = {
        let mut duplex = Duplex::new(&mut inbound, &mut outbound);
        let mut stream = rustls::Stream::new(&mut conn, &mut duplex);
        Frame::read_from(&mut stream).map_err(|e| ConnError::Request(e.to_string()))?
    };
    inbound.deadline = None;
    if request.status != Status::Request {
        return Err(ConnError::Request(format!(
            "expected a request frame, found {}",
            request.status.as_str()
        )));
    }
    log::info!(
        "session {} from {origin}: {} asks for {} ({:?})",
        grant.session_id(),
        grant.actor(),
        request.message,
        mode
    );
    match mode {
        Mode::Tcp => forward(conn, inbound, outbound, &grant, &request.message),
        Mode::Ping => ping(conn, inbound, outbound),
        Mode::Health => {
            let message = shared.health_line();
            finish(
                conn,
                inbound,
                outbound,
                Frame::new(Status::Connected, message),
            )
        }
    }
}

/// Joins the two halves for `rustls::Stream` during the single-threaded phases. Writes are
/// gathered until `flush` (rustls flushes after each flight) and queued as one chunk, so a
/// handshake flight of several records crosses the tunnel as one SSH packet, not one each.
struct Duplex<'a> {
    inbound: &'a mut Inbound,
    outbound: &'a mut Outbound,
    gathered: Vec<u8>,
}

impl<'a> Duplex<'a> {
    fn new(inbound: &'a mut Inbound, outbound: &'a mut Outbound) -> Self {
        Self {
            inbound,
            outbound,
            gathered: Vec::new(),
        }
    }
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.flush()?;
        self.inbound.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.gathered.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if self.gathered.is_empty() {
            return Ok(());
        }
        self.outbound
            .send(Chunk::Data(std::mem::take(&mut self.gathered)))
    }
}

impl Drop for Duplex<'_> {
    /// rustls flushes after every write, so this finds nothing in practice; it keeps a stray
    /// record from being lost if that ever changes.
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

fn handshake(
    conn: &mut ServerConnection,
    inbound: &mut Inbound,
    outbound: &mut Outbound,
) -> Result<(), ConnError> {
    while conn.is_handshaking() {
        conn.complete_io(&mut Duplex::new(inbound, outbound))
            .map_err(|e| {
                let inner = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .and_then(crate::tls::TlsError::from_rustls)
                    .map(ToString::to_string);
                ConnError::Handshake(inner.unwrap_or_else(|| e.to_string()))
            })?;
    }
    Ok(())
}

/// Sends `frame`, closes the TLS session cleanly, and ends.
fn finish(
    mut conn: ServerConnection,
    mut inbound: Inbound,
    mut outbound: Outbound,
    frame: Frame,
) -> Result<(), ConnError> {
    let refused = frame.status != Status::Connected;
    conn.writer().write_all(&frame.encode()).map_err(io_err)?;
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut outbound).map_err(io_err)?;
    }
    outbound.send(Chunk::Eof).map_err(io_err)?;
    // Let the platform read the frame before the channel closes.
    let mut sink = [0u8; 4096];
    inbound.deadline = Some(Instant::now() + Duration::from_secs(5));
    while matches!(inbound.read(&mut sink), Ok(n) if n > 0) {}
    if refused {
        return Err(ConnError::Refused(frame));
    }
    Ok(())
}

fn ping(
    mut conn: ServerConnection,
    mut inbound: Inbound,
    mut outbound: Outbound,
) -> Result<(), ConnError> {
    {
        let mut duplex = Duplex::new(&mut inbound, &mut outbound);
        let mut stream = rustls::Stream::new(&mut conn, &mut duplex);
        stream
            .write_all(&Frame::new(Status::Connected, "pong").encode())
            .map_err(io_err)?;
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => stream.write_all(&buf[..n]).map_err(io_err)?,
                Err(e) => return Err(io_err(e)),
            }
        }
    }
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut outbound).map_err(io_err)?;
    }
    outbound.send(Chunk::Eof).map_err(io_err)
}

fn forward(
    conn: ServerConnection,
    inbound: Inbound,
    outbound: Outbound,
    grant: &SessionGrant,
    wanted: &str,
) -> Result<(), ConnError> {
    let permitted = grant.target().to_string();
    if wanted != permitted {
        let frame = Frame::new(
            Status::NotPermitted,
            format!("target {wanted} is not permitted by this session certificate (it permits {permitted})"),
        );
        return finish(conn, inbound, outbound, frame);
    }
    let target = match dial(&permitted, DIAL) {
        Ok(t) => t,
        Err(e) => {
            let frame = Frame::new(
                Status::TargetUnreachable,
                format!("the gateway could not connect to {permitted}: {e}"),
            );
            return finish(conn, inbound, outbound, frame);
        }
    };
    let conn = Arc::new(Mutex::new(conn));
    {
        let mut c = lock(&conn);
        c.writer()
            .write_all(&Frame::new(Status::Connected, format!("connected to {permitted}")).encode())
            .map_err(io_err)?;
    }
    flush_tls(&conn, &outbound)?;
    splice(conn, inbound, outbound, target, grant.not_after())
}

fn lock(conn: &Mutex<ServerConnection>) -> MutexGuard<'_, ServerConnection> {
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sends whatever TLS records are pending, in order. The `Outbound`'s order lock is held from
/// draining the records until they are queued, so records of the two directions never swap;
/// the connection lock itself is released before the (possibly blocking) send, so the other
/// direction keeps moving while this one waits for the tunnel.
fn flush_tls(conn: &Mutex<ServerConnection>, outbound: &Outbound) -> Result<(), ConnError> {
    let _order = outbound.order.lock().unwrap_or_else(|p| p.into_inner());
    send_records(conn, outbound)
}

/// As [`flush_tls`], but gives up (leaving the records for the other direction's next flush)
/// when that direction is mid-send: the platform→target direction must never wait on the
/// target→platform one.
fn try_flush_tls(conn: &Mutex<ServerConnection>, outbound: &Outbound) -> Result<(), ConnError> {
    match outbound.order.try_lock() {
        Ok(_order) => send_records(conn, outbound),
        Err(_) => Ok(()),
    }
}

fn send_records(conn: &Mutex<ServerConnection>, outbound: &Outbound) -> Result<(), ConnError> {
    let mut records = Vec::new();
    {
        let mut c = lock(conn);
        while c.wants_write() {
            c.write_tls(&mut records).map_err(io_err)?;
        }
    }
    if !records.is_empty() {
        outbound.send(Chunk::Data(records)).map_err(io_err)?;
    }
    Ok(())
}

/// Copies both ways until both sides are done: this thread carries platform→target, a second
/// one target→platform (and cuts the session when the certificate expires).
fn splice(
    conn: Arc<Mutex<ServerConnection>>,
    mut inbound: Inbound,
    outbound: Outbound,
    target: TcpStream,
    not_after: u64,
) -> Result<(), ConnError> {
    let reader = target.try_clone().map_err(io_err)?;
    let (conn2, out2) = (conn.clone(), outbound.clone());
    let upstream = std::thread::Builder::new()
        .name("gw-target".into())
        .stack_size(128 * 1024)
        .spawn(move || target_to_platform(&conn2, &out2, reader, not_after))
        .map_err(io_err)?;
    let down = platform_to_target(&conn, &mut inbound, &outbound, &target);
    if down.is_err() {
        reset(&target);
        let _ = outbound.send(Chunk::Abort);
    }
    let up = upstream
        .join()
        .unwrap_or_else(|_| Err(ConnError::Io("target thread panicked".into())));
    down.and(up)
}

/// Ends the target connection as an error: the socket will close with a reset (linger 0) once
/// the copy threads let go of it, and the reading thread is woken without sending a FIN, so the
/// target never mistakes an aborted session for a complete one.
fn reset(target: &TcpStream) {
    let _ = socket2::SockRef::from(target).set_linger(Some(Duration::ZERO));
    let _ = target.shutdown(Shutdown::Read);
}

/// Target reads start at 1 KiB and double, up to [`LARGEST_READ`], each time a read fills the
/// buffer: a busy connection reads in large pieces after five reads, an idle one holds 1 KiB.
const FIRST_READ: usize = 1024;
/// What a TLS 1.3 record adds to its plaintext: header, content type and AEAD tag.
const RECORD_OVERHEAD: usize = 5 + 1 + 16;
/// The most channel data libssh2 puts in one SSH packet (`_libssh2_channel_write` caps every
/// write at 32700 bytes, below the relay's 32 KiB).
const SSH_PACKET_DATA: usize = 32700;
/// The largest target read: as sealed (two records), it fills one SSH packet exactly. A full
/// 32 KiB read became a full packet and a 112-byte one, which the relay then forwarded to the
/// platform as a TLS record of its own.
const LARGEST_READ: usize = SSH_PACKET_DATA - 2 * RECORD_OVERHEAD;

fn grow_after(buf: &mut Vec<u8>, filled: usize) {
    if filled == buf.len() && buf.len() < LARGEST_READ {
        buf.resize((buf.len() * 2).min(LARGEST_READ), 0);
    }
}

fn platform_to_target(
    conn: &Mutex<ServerConnection>,
    inbound: &mut Inbound,
    outbound: &Outbound,
    mut target: &TcpStream,
) -> Result<(), ConnError> {
    let mut plain = Vec::new();
    let mut closed = false;
    loop {
        let Some(chunk) = inbound.next_chunk().map_err(io_err)? else {
            // The channel ended. After the platform's close_notify that is the normal end of
            // this direction (the target may still be sending: leave its read side alone);
            // without one it is an abort.
            if !closed {
                reset(target);
            }
            return Ok(());
        };
        plain.clear();
        {
            let mut c = lock(conn);
            let mut data = &chunk[..];
            while !data.is_empty() {
                c.read_tls(&mut data).map_err(io_err)?;
                c.process_new_packets()
                    .map_err(|e| ConnError::Io(format!("TLS from the platform: {e}")))?;
                if read_plain(&mut c, &mut plain)? && !closed {
                    closed = true;
                }
            }
        }
        try_flush_tls(conn, outbound)?;
        target.write_all(&plain).map_err(io_err)?;
        if closed {
            let _ = target.shutdown(Shutdown::Write);
        }
    }
}

/// Moves decrypted bytes out; true once the platform sent close_notify.
fn read_plain(c: &mut ServerConnection, plain: &mut Vec<u8>) -> Result<bool, ConnError> {
    // rustls' reader ends with Ok(0) at close_notify and WouldBlock when it has nothing more;
    // whatever it read before either stays in `plain`.
    match c.reader().read_to_end(plain) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(io_err(e)),
    }
}

fn target_to_platform(
    conn: &Mutex<ServerConnection>,
    outbound: &Outbound,
    mut target: TcpStream,
    not_after: u64,
) -> Result<(), ConnError> {
    let mut buf = vec![0u8; FIRST_READ];
    let mut timeout_set = None;
    loop {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now >= not_after {
            log::info!(
                "session certificate expired at {}; closing the session",
                crate::clock::rfc3339(not_after)
            );
            let _ = target.shutdown(Shutdown::Both);
            let _ = outbound.send(Chunk::Abort);
            return Ok(());
        }
        // The read wakes up by the expiry at the latest; the socket option is only changed when
        // the time left has moved by a second or more, not on every read.
        let left = Duration::from_secs(not_after - now).min(Duration::from_secs(3600));
        if timeout_set != Some(left) {
            target
                .set_read_timeout(Some(left.max(Duration::from_millis(100))))
                .map_err(io_err)?;
            timeout_set = Some(left);
        }
        match target.read(&mut buf) {
            Ok(0) => {
                lock(conn).send_close_notify();
                flush_tls(conn, outbound)?;
                return outbound.send(Chunk::Eof).map_err(io_err);
            }
            Ok(n) => {
                {
                    let mut c = lock(conn);
                    c.writer().write_all(&buf[..n]).map_err(io_err)?;
                }
                flush_tls(conn, outbound)?;
                grow_after(&mut buf, n);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                let _ = outbound.send(Chunk::Abort);
                return Err(io_err(e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    fn halves() -> (Inbound, Outbound, SyncSender<Chunk>, Receiver<Chunk>) {
        let (to_conn, rx) = sync_channel(QUEUE);
        let (tx, from_conn) = sync_channel(QUEUE);
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(|| {});
        let inbound = Inbound {
            rx,
            wake: wake.clone(),
            buf: Vec::new(),
            pos: 0,
            deadline: None,
            ended: false,
        };
        let outbound = Outbound {
            tx,
            wake,
            order: Arc::new(Mutex::new(())),
        };
        (inbound, outbound, to_conn, from_conn)
    }

    #[test]
    fn a_full_target_read_seals_into_one_ssh_packet() {
        let mut buf = vec![0u8; FIRST_READ];
        while buf.len() < LARGEST_READ {
            let len = buf.len();
            grow_after(&mut buf, len);
        }
        assert_eq!(buf.len(), LARGEST_READ);
        // rustls seals at most 16 KiB of plaintext per record.
        let records = LARGEST_READ.div_ceil(16 * 1024);
        assert_eq!(LARGEST_READ + records * RECORD_OVERHEAD, SSH_PACKET_DATA);
        let len = buf.len();
        grow_after(&mut buf, len);
        assert_eq!(buf.len(), LARGEST_READ, "grew past the largest read");
    }

    #[test]
    fn a_flight_of_records_is_queued_as_one_chunk() {
        let (mut inbound, mut outbound, to_conn, from_conn) = halves();
        to_conn.send(Chunk::Data(b"hello".to_vec())).unwrap();
        {
            let mut duplex = Duplex::new(&mut inbound, &mut outbound);
            duplex.write_all(b"server hello, ").unwrap();
            duplex.write_all(b"certificate").unwrap();
            assert!(from_conn.try_recv().is_err(), "sent before the flush");
            duplex.flush().unwrap();
            assert_eq!(
                from_conn.try_recv().unwrap(),
                Chunk::Data(b"server hello, certificate".to_vec())
            );
            duplex.flush().unwrap();
            assert!(from_conn.try_recv().is_err(), "an empty flush sent a chunk");
            // A read sends what was written before it, so a peer is never left waiting.
            duplex.write_all(b"alert").unwrap();
            let mut buf = [0u8; 5];
            duplex.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"hello");
            assert_eq!(
                from_conn.try_recv().unwrap(),
                Chunk::Data(b"alert".to_vec())
            );
            duplex.write_all(b"last").unwrap();
        }
        assert_eq!(
            from_conn.try_recv().unwrap(),
            Chunk::Data(b"last".to_vec()),
            "dropping the duplex lost a write"
        );
    }
}
