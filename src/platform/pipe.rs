//! Copies between a local TCP connection and a [`GatewayStream`] on one thread, with mio.
//!
//! Both TLS layers (the relay hop and the inner session) are driven by hand rather than through
//! `rustls::Stream`, whose `read` first flushes pending writes: with both directions busy that
//! would stop the download while the upload waits for the network, and the whole path would
//! deadlock. Here each step moves whatever can move, in both directions, until nothing can.
//! Half-close is carried both ways; an error on either side ends both: the local connection is
//! reset (never closed as if complete) and the TLS sessions are dropped without a clean close,
//! so the far end sees an error too.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::io::AsRawFd;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use rustls::ClientConnection;

use super::dial::GatewayStream;

/// Most bytes buffered each way (and from the relay socket) before reading stops.
const CAP: usize = 256 * 1024;
/// One read from a socket or a TLS layer.
const CHUNK: usize = 64 * 1024;
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Bytes copied each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copied {
    /// Local client to target.
    pub up: u64,
    /// Target to local client.
    pub down: u64,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn tls(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Ok(None) for "would block".
fn attempt<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if would_block(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A byte queue read from the front without moving what is left: consumed bytes are reclaimed
/// when the queue empties, or when more room is needed at the back. Reads start at 4 KiB and
/// double, up to [`CHUNK`], each time one fills its space, so an idle connection holds a few
/// pages and a busy one reads in large pieces; storage grows (and is zeroed) only then.
struct Buf {
    data: Vec<u8>,
    start: usize,
    end: usize,
    read_size: usize,
}

impl Default for Buf {
    fn default() -> Self {
        Self {
            data: Vec::new(),
            start: 0,
            end: 0,
            read_size: 4 * 1024,
        }
    }
}

impl Buf {
    fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn has_room(&self) -> bool {
        self.end - self.start < CAP
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
    }

    /// Fills the back from `read`; Ok(None) if it would block.
    fn fill(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> io::Result<Option<usize>> {
        let want = self.read_size;
        if self.end + want > self.data.len() {
            let pending = self.end - self.start;
            if self.start >= pending {
                // Moving what is left costs no more than what was consumed since the last move.
                self.data.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, pending);
            }
        }
        if self.end + want > self.data.len() {
            if self.data.len() >= CAP + CHUNK {
                // Full until more is consumed.
                return Ok(None);
            }
            self.data.resize(self.end + want, 0);
        }
        let got = attempt(read(&mut self.data[self.end..self.end + want]))?;
        if let Some(n) = got {
            self.end += n;
            if n == want && want < CHUNK {
                self.read_size = want * 2;
            }
        }
        Ok(got)
    }
}

struct Pipe {
    local: TcpStream,
    tcp: TcpStream,
    outer: ClientConnection,
    inner: ClientConnection,
    /// Local bytes not yet taken by the inner session.
    up: Buf,
    /// Inner records not yet taken by the relay hop.
    sealed: Buf,
    /// Relay-socket bytes not yet taken by the relay hop's TLS.
    rx: Buf,
    /// Plaintext from the target not yet written to the local client.
    down: Buf,
    local_eof: bool,
    remote_eof: bool,
    up_closed: bool,
    down_closed: bool,
    /// We sent the relay hop's close_notify.
    outer_closed: bool,
    /// The relay hop ended (its close_notify, or the socket's EOF).
    outer_eof: bool,
    /// The relay socket reached end of stream.
    tcp_eof: bool,
    copied: Copied,
}

impl Pipe {
    /// Local client → inner TLS → outer TLS → relay socket. True if anything moved.
    fn upward(&mut self) -> io::Result<bool> {
        let mut moved = false;
        if !self.local_eof && self.up.has_room() {
            let local = &mut self.local;
            match self.up.fill(|b| local.read(b))? {
                Some(0) => (self.local_eof, moved) = (true, true),
                Some(_) => moved = true,
                None => {}
            }
        }
        if !self.up.is_empty() {
            let n = self.inner.writer().write(self.up.pending())?;
            self.up.consume(n);
            self.copied.up += u64::try_from(n).unwrap_or(0);
            moved |= n > 0;
        }
        if self.local_eof && self.up.is_empty() && !self.up_closed {
            self.inner.send_close_notify();
            self.up_closed = true;
            moved = true;
        }
        // Inner records are gathered first, so the relay hop seals them in full-size records.
        while self.inner.wants_write() && self.sealed.has_room() {
            let inner = &mut self.inner;
            match self.sealed.fill(|mut b| inner.write_tls(&mut b))? {
                Some(n) if n > 0 => moved = true,
                _ => break,
            }
        }
        if !self.sealed.is_empty() {
            let n = self.outer.writer().write(self.sealed.pending())?;
            self.sealed.consume(n);
            moved |= n > 0;
        }
        if self.up_closed
            && self.down_closed
            && !self.inner.wants_write()
            && self.sealed.is_empty()
            && !self.outer_closed
        {
            // Both inner directions are over: close the relay hop cleanly too, so the relay
            // finishes its splice instead of aborting it.
            self.outer.send_close_notify();
            self.outer_closed = true;
            moved = true;
        }
        while self.outer.wants_write() {
            match attempt(self.outer.write_tls(&mut self.tcp))? {
                Some(n) if n > 0 => moved = true,
                _ => break,
            }
        }
        Ok(moved)
    }

    /// Relay socket → outer TLS → inner TLS → local client. True if anything moved.
    fn downward(&mut self) -> io::Result<bool> {
        let mut moved = false;
        // One large read from the socket, then the relay hop's TLS takes it from memory
        // (rustls reads at most 4 KiB per call).
        if !self.tcp_eof && self.rx.has_room() {
            let tcp = &mut self.tcp;
            match self.rx.fill(|b| tcp.read(b))? {
                Some(0) => (self.tcp_eof, moved) = (true, true),
                Some(_) => moved = true,
                None => {}
            }
        }
        while !self.outer_eof && self.outer.wants_read() && !self.rx.is_empty() {
            let n = self.outer.read_tls(&mut self.rx.pending())?;
            self.rx.consume(n);
            moved = true;
            self.outer.process_new_packets().map_err(tls)?;
        }
        if self.tcp_eof && self.rx.is_empty() && !self.outer_eof && self.outer.wants_read() {
            // The socket ended and the relay hop's TLS has handed on all it decrypted: it learns
            // of the end too, and judges whether a close_notify came first (if not, reading
            // from it below is an error).
            self.outer_eof = true;
            moved = true;
            let _ = self.outer.read_tls(&mut io::empty())?;
            self.outer.process_new_packets().map_err(tls)?;
        }
        // `wants_read` is false while a layer's received plaintext is full: that is where
        // backpressure stops reading from the layer below.
        while self.inner.wants_read() {
            match attempt(self.inner.read_tls(&mut self.outer.reader()))? {
                Some(0) => {
                    self.outer_eof = true;
                    break;
                }
                Some(_) => {
                    moved = true;
                    self.inner.process_new_packets().map_err(tls)?;
                }
                None => break,
            }
        }
        if !self.outer_eof {
            // The relay's close_notify, once the inner session has taken everything before it.
            let state = self.outer.process_new_packets().map_err(tls)?;
            if state.peer_has_closed() && state.plaintext_bytes_to_read() == 0 {
                self.outer_eof = true;
                moved = true;
            }
        }
        while !self.remote_eof && self.down.has_room() {
            let inner = &mut self.inner;
            match self.down.fill(|b| inner.reader().read(b))? {
                Some(0) => (self.remote_eof, moved) = (true, true),
                Some(_) => moved = true,
                None => break,
            }
        }
        if !self.down.is_empty() {
            if let Some(n) = attempt(self.local.write(self.down.pending()))? {
                self.down.consume(n);
                self.copied.down += u64::try_from(n).unwrap_or(0);
                moved |= n > 0;
            }
        }
        if self.remote_eof && self.down.is_empty() && !self.down_closed {
            let _ = self.local.shutdown(Shutdown::Write);
            self.down_closed = true;
            moved = true;
        }
        // Judged only once nothing moves any more: until then the inner session may still
        // hold the close_notify that makes the end clean.
        if !moved && self.outer_eof && !self.remote_eof {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the relay connection ended in the middle of the session",
            ));
        }
        Ok(moved)
    }

    fn done(&self) -> bool {
        self.outer_closed && self.outer_eof && !self.outer.wants_write()
    }
}

/// Copies until both directions are closed, or an error.
pub fn pipe(local: TcpStream, remote: GatewayStream) -> io::Result<Copied> {
    let rustls::StreamOwned {
        conn: inner,
        sock: rustls::StreamOwned {
            conn: outer,
            sock: tcp,
        },
    } = remote;
    local.set_nonblocking(true)?;
    local.set_nodelay(true)?;
    tcp.set_nonblocking(true)?;
    let mut poll = Poll::new()?;
    let both = Interest::READABLE | Interest::WRITABLE;
    poll.registry()
        .register(&mut SourceFd(&local.as_raw_fd()), Token(0), both)?;
    poll.registry()
        .register(&mut SourceFd(&tcp.as_raw_fd()), Token(1), both)?;
    let mut p = Pipe {
        local,
        tcp,
        outer,
        inner,
        up: Buf::default(),
        sealed: Buf::default(),
        rx: Buf::default(),
        down: Buf::default(),
        local_eof: false,
        remote_eof: false,
        up_closed: false,
        down_closed: false,
        outer_closed: false,
        outer_eof: false,
        tcp_eof: false,
        copied: Copied::default(),
    };
    let mut events = Events::with_capacity(8);
    loop {
        let result = (|| {
            while p.upward()? | p.downward()? {}
            Ok::<_, io::Error>(())
        })();
        if let Err(e) = result {
            // Reset, not close: the local client must see an error, never a short stream
            // that looks complete.
            let _ = socket2::SockRef::from(&p.local).set_linger(Some(std::time::Duration::ZERO));
            return Err(e);
        }
        if p.done() {
            return Ok(p.copied);
        }
        // Once both directions are closed, the relay gets a bounded time to close its side.
        let wait = (p.outer_closed).then_some(CLOSE_WAIT);
        match poll.poll(&mut events, wait) {
            Ok(()) if wait.is_some() && events.is_empty() => return Ok(p.copied),
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
