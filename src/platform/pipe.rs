//! Copies between a local TCP connection and a [`GatewayStream`] on one thread, with mio:
//! both sockets non-blocking, every step driven until it would block, half-close both ways.
//! An error on either side ends both (the local side is shut down, the TLS side dropped without
//! a clean close, so the far end sees an error too).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::io::AsRawFd;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use super::dial::GatewayStream;

const CAP: usize = 256 * 1024;
const CHUNK: usize = 32 * 1024;

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

struct Pipe {
    local: TcpStream,
    remote: GatewayStream,
    up: Vec<u8>,
    down: Vec<u8>,
    local_eof: bool,
    remote_eof: bool,
    up_closed: bool,
    down_closed: bool,
    copied: Copied,
}

impl Pipe {
    /// One pass; true if anything moved.
    fn step(&mut self) -> io::Result<bool> {
        let mut moved = false;
        let mut buf = [0u8; CHUNK];
        if !self.local_eof && self.up.len() < CAP {
            match self.local.read(&mut buf) {
                Ok(0) => (self.local_eof, moved) = (true, true),
                Ok(n) => {
                    self.up.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if !self.up.is_empty() {
            match self.remote.write(&self.up) {
                Ok(n) => {
                    self.up.drain(..n);
                    self.copied.up += u64::try_from(n).unwrap_or(0);
                    moved |= n > 0;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        match self.remote.flush() {
            Ok(()) => {}
            Err(e) if would_block(&e) => {}
            Err(e) => return Err(e),
        }
        if self.local_eof && self.up.is_empty() && !self.up_closed {
            self.remote.conn.send_close_notify();
            self.up_closed = true;
            moved = true;
        }
        if !self.remote_eof && self.down.len() < CAP {
            match self.remote.read(&mut buf) {
                Ok(0) => (self.remote_eof, moved) = (true, true),
                Ok(n) => {
                    self.down.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
            }
        }
        if !self.down.is_empty() {
            match self.local.write(&self.down) {
                Ok(n) => {
                    self.down.drain(..n);
                    self.copied.down += u64::try_from(n).unwrap_or(0);
                    moved |= n > 0;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => return Err(e),
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
        self.up_closed && self.down_closed && !self.remote.conn.wants_write()
    }
}

/// Copies until both directions are closed, or an error.
pub fn pipe(local: TcpStream, remote: GatewayStream) -> io::Result<Copied> {
    local.set_nonblocking(true)?;
    local.set_nodelay(true)?;
    remote.sock.sock.set_nonblocking(true)?;
    let mut poll = Poll::new()?;
    let both = Interest::READABLE | Interest::WRITABLE;
    poll.registry()
        .register(&mut SourceFd(&local.as_raw_fd()), Token(0), both)?;
    poll.registry()
        .register(&mut SourceFd(&remote.sock.sock.as_raw_fd()), Token(1), both)?;
    let mut p = Pipe {
        local,
        remote,
        up: Vec::new(),
        down: Vec::new(),
        local_eof: false,
        remote_eof: false,
        up_closed: false,
        down_closed: false,
        copied: Copied::default(),
    };
    let mut events = Events::with_capacity(8);
    loop {
        let result = (|| {
            while p.step()? {}
            Ok::<_, io::Error>(())
        })();
        if let Err(e) = result {
            let _ = p.local.shutdown(Shutdown::Both);
            return Err(e);
        }
        if p.done() {
            return Ok(p.copied);
        }
        match poll.poll(&mut events, None) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
