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

const CAP: usize = 256 * 1024;
const CHUNK: usize = 32 * 1024;
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

struct Pipe {
    local: TcpStream,
    tcp: TcpStream,
    outer: ClientConnection,
    inner: ClientConnection,
    up: Vec<u8>,
    down: Vec<u8>,
    local_eof: bool,
    remote_eof: bool,
    up_closed: bool,
    down_closed: bool,
    /// We sent the relay hop's close_notify.
    outer_closed: bool,
    /// The relay hop ended (its close_notify, or the socket's EOF).
    outer_eof: bool,
    copied: Copied,
}

impl Pipe {
    /// Local client → inner TLS → outer TLS → relay socket. True if anything moved.
    fn upward(&mut self) -> io::Result<bool> {
        let mut moved = false;
        let mut buf = [0u8; CHUNK];
        if !self.local_eof && self.up.len() < CAP {
            match attempt(self.local.read(&mut buf))? {
                Some(0) => (self.local_eof, moved) = (true, true),
                Some(n) => (moved, _) = (true, self.up.extend_from_slice(&buf[..n])),
                None => {}
            }
        }
        if !self.up.is_empty() {
            let n = self.inner.writer().write(&self.up)?;
            self.up.drain(..n);
            self.copied.up += u64::try_from(n).unwrap_or(0);
            moved |= n > 0;
        }
        if self.local_eof && self.up.is_empty() && !self.up_closed {
            self.inner.send_close_notify();
            self.up_closed = true;
            moved = true;
        }
        while self.inner.wants_write() {
            let n = self.inner.write_tls(&mut self.outer.writer())?;
            if n == 0 {
                break;
            }
            moved = true;
        }
        if self.up_closed && self.down_closed && !self.inner.wants_write() && !self.outer_closed {
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
        // `wants_read` is false while a layer's received plaintext is full: that is where
        // backpressure stops reading from the layer below.
        while !self.outer_eof && self.inner.wants_read() {
            match attempt(self.inner.read_tls(&mut self.outer.reader()))? {
                Some(0) => (self.outer_eof, moved) = (true, true),
                Some(_) => {
                    moved = true;
                    self.inner.process_new_packets().map_err(tls)?;
                }
                None => break,
            }
        }
        if !self.outer_eof && self.outer.wants_read() {
            match attempt(self.outer.read_tls(&mut self.tcp))? {
                Some(0) => {
                    moved = true;
                    self.outer_eof = true;
                    self.outer.process_new_packets().map_err(tls)?;
                }
                Some(_) => {
                    moved = true;
                    self.outer.process_new_packets().map_err(tls)?;
                }
                None => {}
            }
        }
        if self.outer_eof && !self.remote_eof {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the relay connection ended in the middle of the session",
            ));
        }
        let mut buf = [0u8; CHUNK];
        while !self.remote_eof && self.down.len() < CAP {
            match attempt(self.inner.reader().read(&mut buf))? {
                Some(0) => (self.remote_eof, moved) = (true, true),
                Some(n) => (moved, _) = (true, self.down.extend_from_slice(&buf[..n])),
                None => break,
            }
        }
        if !self.down.is_empty() {
            if let Some(n) = attempt(self.local.write(&self.down))? {
                self.down.drain(..n);
                self.copied.down += u64::try_from(n).unwrap_or(0);
                moved |= n > 0;
            }
        }
        if self.remote_eof && self.down.is_empty() && !self.down_closed {
            let _ = self.local.shutdown(Shutdown::Write);
            self.down_closed = true;
            moved = true;
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
        up: Vec::new(),
        down: Vec::new(),
        local_eof: false,
        remote_eof: false,
        up_closed: false,
        down_closed: false,
        outer_closed: false,
        outer_eof: false,
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
