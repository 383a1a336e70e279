//! The pump: the one thread that owns the `ssh2::Session`.
//!
//! libssh2 serialises every call on one session lock (a blocked read on one channel stalled an
//! unrelated channel for 3.2 s), so nothing else touches the session. The session is
//! non-blocking; the pump waits on its socket with mio (interest from
//! `Session::block_directions`), accepts forwarded channels, and moves bytes between each
//! channel and its connection's bounded queues. A full queue means the pump stops reading that
//! channel, so its SSH window closes: backpressure reaches the platform for that connection
//! only. Connection threads wake the pump through a `mio::Waker`. Each channel's window is a
//! `Window`: 8 MiB, growing to 16 MiB for a busy connection.
//!
//! Liveness: a keepalive every [`KEEPALIVE_SECS`] asks the relay for a reply; if nothing at all
//! arrives from the relay for [`DEAD_AFTER`], the tunnel is declared dead.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use ssh2::{BlockDirections, Channel};

use super::conn::{self, Chunk, Pipe, QUEUE};
use super::tunnel::Tunnel;
use super::Shared;

/// Seconds between keepalives.
pub const KEEPALIVE_SECS: u32 = 3;
/// Silence from the relay after which the tunnel is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(9);
/// How long a stopping gateway waits for connections to finish.
pub const DRAIN: Duration = Duration::from_secs(10);
/// SSH receive window each channel starts with, sized for 50 ms links: what the relay may have
/// in flight (and what libssh2 may hold for a connection that is not reading) at any time.
pub const WINDOW: u64 = 8 * 1024 * 1024;
/// The most a channel's window grows to (`Window`): for busy connections on links longer than
/// 50 ms. Only a connection that moves a whole window within [`GROW_WITHIN`] grows.
pub const MAX_WINDOW: u64 = 16 * 1024 * 1024;
/// A channel that reads its whole window within this long gets a window twice as large.
pub const GROW_WITHIN: Duration = Duration::from_millis(250);
/// The window libssh2 gives a forwarded channel (`LIBSSH2_CHANNEL_WINDOW_DEFAULT`). On its own
/// it only tops a channel back up to this, which held one stream over 50 ms to 1.5 MiB per
/// round trip; the pump grants the rest of [`WINDOW`] and gives back what it reads.
const LIBSSH2_WINDOW: u64 = 2 * 1024 * 1024;
/// Window consumed by reads is given back in steps of this much (one WINDOW_ADJUST each).
const REGRANT: u64 = 256 * 1024;

const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);
const READ_CHUNK: usize = 32 * 1024;

/// Why the pump returned.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Nothing arrived from the relay for [`DEAD_AFTER`].
    Dead,
    /// The session failed or the relay closed it.
    Closed(String),
    /// The gateway is stopping (connections drained or the drain timed out).
    Stopped,
    /// The supervisor asked for a new tunnel (relay reassigned).
    Replaced,
}

struct Conn {
    channel: Channel,
    to_conn: SyncSender<Chunk>,
    from_conn: Receiver<Chunk>,
    pending_in: Option<Chunk>,
    pending_out: Option<(Vec<u8>, usize)>,
    window: Window,
    eof_sent_to_conn: bool,
    eof_to_channel: bool,
    eof_on_channel: bool,
    conn_done: bool,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn ssh_would_block(e: &ssh2::Error) -> bool {
    e.code() == ssh2::ErrorCode::Session(-37)
}

/// Runs the tunnel until it ends. `stop` and `replace` are polled at least once a second.
pub fn run(tunnel: Tunnel, shared: &Arc<Shared>) -> End {
    match Pump::new(tunnel, shared.clone()) {
        Ok(mut p) => p.run(),
        Err(e) => End::Closed(format!("event loop: {e}")),
    }
}

struct Pump {
    tunnel: Tunnel,
    shared: Arc<Shared>,
    poll: Poll,
    waker: Arc<Waker>,
    conns: HashMap<u64, Conn>,
    next_id: u64,
    last_inbound: Instant,
    next_keepalive: Instant,
    interest: Interest,
    drain_deadline: Option<Instant>,
    /// Channel reads land here; each chunk queued is then exactly as long as what was read,
    /// so a connection holding a small chunk does not hold a whole read buffer with it.
    scratch: Vec<u8>,
}

impl Pump {
    fn new(tunnel: Tunnel, shared: Arc<Shared>) -> io::Result<Self> {
        let poll = Poll::new()?;
        let fd = tunnel.socket.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&fd), SOCKET, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        Ok(Self {
            tunnel,
            shared,
            poll,
            waker,
            conns: HashMap::new(),
            next_id: 1,
            last_inbound: Instant::now(),
            next_keepalive: Instant::now(),
            interest: Interest::READABLE,
            drain_deadline: None,
            scratch: vec![0; READ_CHUNK],
        })
    }

    fn run(&mut self) -> End {
        let mut events = Events::with_capacity(64);
        loop {
            if let Some(end) = self.step() {
                self.abort_all();
                return end;
            }
            if let Err(e) = self.wait(&mut events) {
                self.abort_all();
                return End::Closed(format!("poll: {e}"));
            }
        }
    }

    /// One pass over everything; `Some` when the tunnel is over.
    fn step(&mut self) -> Option<End> {
        if let Some(end) = self.control() {
            return Some(end);
        }
        if self.drain_deadline.is_none() {
            if let Err(e) = self.accept() {
                return Some(End::Closed(e));
            }
        }
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if let Err(e) = self.move_bytes(id) {
                return Some(End::Closed(e));
            }
        }
        if let Err(e) = self.keepalive() {
            return Some(End::Closed(e));
        }
        if self.last_inbound.elapsed() > DEAD_AFTER {
            return Some(End::Dead);
        }
        None
    }

    fn control(&mut self) -> Option<End> {
        if self.shared.replace_tunnel.swap(false, Ordering::SeqCst) {
            return Some(End::Replaced);
        }
        if self.shared.stopping.load(Ordering::SeqCst) {
            let deadline = *self
                .drain_deadline
                .get_or_insert_with(|| Instant::now() + DRAIN);
            if self.conns.is_empty() || Instant::now() >= deadline {
                return Some(End::Stopped);
            }
        }
        None
    }

    fn wait(&mut self, events: &mut Events) -> io::Result<()> {
        let wanted = match self.tunnel.session.block_directions() {
            BlockDirections::Outbound | BlockDirections::Both => {
                Interest::READABLE | Interest::WRITABLE
            }
            _ => Interest::READABLE,
        };
        if wanted != self.interest {
            let fd = self.tunnel.socket.as_raw_fd();
            self.poll
                .registry()
                .reregister(&mut SourceFd(&fd), SOCKET, wanted)?;
            self.interest = wanted;
        }
        let until_keepalive = self
            .next_keepalive
            .saturating_duration_since(Instant::now());
        let timeout = until_keepalive.min(Duration::from_secs(1));
        match self.poll.poll(events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        if events
            .iter()
            .any(|e| e.token() == SOCKET && (e.is_readable() || e.is_read_closed()))
        {
            self.last_inbound = Instant::now();
        }
        Ok(())
    }

    fn keepalive(&mut self) -> Result<(), String> {
        if Instant::now() < self.next_keepalive {
            return Ok(());
        }
        match self.tunnel.session.keepalive_send() {
            Ok(secs) => {
                self.next_keepalive = Instant::now() + Duration::from_secs(u64::from(secs.max(1)));
                Ok(())
            }
            Err(e) if ssh_would_block(&e) => Ok(()),
            Err(e) => Err(format!("keepalive: {e}")),
        }
    }

    fn accept(&mut self) -> Result<(), String> {
        loop {
            match self.tunnel.listener.accept() {
                Ok(channel) => self.start(channel),
                // libssh2 answers "channel not found" (-23) when it read packets but none was a
                // new forwarded channel: nothing to accept, like EAGAIN.
                Err(e) if ssh_would_block(&e) || e.code() == ssh2::ErrorCode::Session(-23) => {
                    return Ok(())
                }
                Err(e) => return Err(format!("accepting a channel: {e}")),
            }
        }
    }

    fn start(&mut self, mut channel: Channel) {
        let (to_conn, rx) = sync_channel(QUEUE);
        let (tx, from_conn) = sync_channel(QUEUE);
        let waker = self.waker.clone();
        let pipe = Pipe {
            rx,
            tx,
            wake: Arc::new(move || {
                let _ = waker.wake();
            }),
        };
        let id = self.next_id;
        self.next_id += 1;
        let shared = self.shared.clone();
        let relay = self.tunnel.relay.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("gw-conn-{id}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                shared.metrics.connection_started();
                let origin = format!("connection {id} via relay {relay}");
                if let Err(e) = conn::serve(pipe, &shared, &origin) {
                    shared.metrics.refused();
                    log::warn!("{origin}: {e}");
                }
                shared.metrics.connection_ended();
            });
        if spawned.is_err() {
            log::error!("could not start a connection thread; closing channel {id}");
            let _ = channel.close();
            return;
        }
        self.conns.insert(
            id,
            Conn {
                channel,
                to_conn,
                from_conn,
                pending_in: None,
                pending_out: None,
                window: Window::new(Instant::now()),
                eof_sent_to_conn: false,
                eof_to_channel: false,
                eof_on_channel: false,
                conn_done: false,
            },
        );
    }

    fn move_bytes(&mut self, id: u64) -> Result<(), String> {
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        let detail = |what: &str, e: io::Error| {
            let code = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<ssh2::Error>())
                .map(ssh2::Error::code);
            match code {
                Some(code) => format!("{what}: {e} (libssh2 {code:?})"),
                None => format!("{what}: {e}"),
            }
        };
        channel_to_conn(c, &mut self.scratch).map_err(|e| detail("channel read", e))?;
        let finished = conn_to_channel(c).map_err(|e| detail("channel write", e))?;
        if finished {
            if let Some(mut c) = self.conns.remove(&id) {
                let _ = c.channel.close();
            }
        }
        Ok(())
    }

    fn abort_all(&mut self) {
        for (_, mut c) in self.conns.drain() {
            let _ = c.to_conn.try_send(Chunk::Abort);
            let _ = c.channel.close();
        }
    }
}

/// The receive window the pump keeps open on one channel.
///
/// libssh2 sends a WINDOW_ADJUST it could not write whole later, when asked again, but the
/// amount it then credits itself is the one passed in the later call. So an adjustment that
/// would block is retried with the same amount before any other is made; otherwise libssh2's
/// idea of the window drifts from the relay's, and data the relay may send gets truncated.
///
/// The window starts at [`WINDOW`] and doubles, up to [`MAX_WINDOW`], each time the channel
/// reads a whole window within [`GROW_WITHIN`] (32 MiB/s at the start). A busy connection on a
/// long link, whose round trip is what the window holds back, gets the room it can use; a
/// connection that moves little keeps what libssh2 may hold for it, should it stop reading,
/// at [`WINDOW`].
struct Window {
    /// An adjustment libssh2 has built but not finished sending.
    sending: Option<u64>,
    /// Read since the last adjustment, plus any growth, not yet given to the relay.
    read: u64,
    /// The window this channel is kept at.
    size: u64,
    /// Read since `lap_start`.
    lap: u64,
    lap_start: Instant,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            sending: Some(WINDOW - LIBSSH2_WINDOW),
            read: 0,
            size: WINDOW,
            lap: 0,
            lap_start: now,
        }
    }

    fn consumed(&mut self, n: usize, now: Instant) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.read = self.read.saturating_add(n);
        self.lap = self.lap.saturating_add(n);
        if self.lap < self.size {
            return;
        }
        if now.saturating_duration_since(self.lap_start) < GROW_WITHIN && self.size < MAX_WINDOW {
            let grown = (self.size * 2).min(MAX_WINDOW);
            self.read += grown - self.size;
            self.size = grown;
        }
        self.lap = 0;
        self.lap_start = now;
    }

    /// Sends what is owed to the relay, if anything. False while an adjustment is still
    /// unsent (the socket is full): the channel must not be read then, or libssh2 may start
    /// an adjustment of its own under the one in flight.
    fn grant(&mut self, channel: &mut Channel) -> io::Result<bool> {
        loop {
            let amount = match self.sending {
                Some(amount) => amount,
                None if self.read >= REGRANT => std::mem::take(&mut self.read),
                None => return Ok(true),
            };
            self.sending = Some(amount);
            match channel.adjust_receive_window(amount, true) {
                Ok(_) => self.sending = None,
                Err(e) if ssh_would_block(&e) => return Ok(false),
                Err(e) => return Err(io::Error::other(format!("window adjust: {e}"))),
            }
        }
    }
}

/// Channel → connection, until the channel would block or the queue is full.
fn channel_to_conn(c: &mut Conn, scratch: &mut [u8]) -> io::Result<()> {
    if c.conn_done {
        return Ok(());
    }
    loop {
        if let Some(chunk) = c.pending_in.take() {
            match c.to_conn.try_send(chunk) {
                Ok(()) => {}
                Err(TrySendError::Full(chunk)) => {
                    c.pending_in = Some(chunk);
                    return Ok(());
                }
                Err(TrySendError::Disconnected(_)) => {
                    c.conn_done = true;
                    return Ok(());
                }
            }
        }
        if c.eof_sent_to_conn || !c.window.grant(&mut c.channel)? {
            return Ok(());
        }
        match c.channel.read(scratch) {
            Ok(0) if c.channel.eof() => {
                c.eof_sent_to_conn = true;
                c.pending_in = Some(Chunk::Eof);
            }
            Ok(0) => return Ok(()),
            Ok(n) => {
                c.window.consumed(n, Instant::now());
                c.pending_in = Some(Chunk::Data(scratch[..n].to_vec()));
            }
            Err(e) if would_block(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Connection → channel; true when the connection is over and the channel can be closed.
fn conn_to_channel(c: &mut Conn) -> io::Result<bool> {
    loop {
        if let Some((data, done)) = c.pending_out.as_mut() {
            while *done < data.len() {
                match c.channel.write(&data[*done..]) {
                    Ok(n) => *done += n,
                    Err(e) if would_block(&e) => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            c.pending_out = None;
        }
        if c.eof_to_channel && !c.eof_on_channel {
            match c.channel.send_eof() {
                Ok(()) => c.eof_on_channel = true,
                Err(e) if ssh_would_block(&e) => return Ok(false),
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        match c.from_conn.try_recv() {
            Ok(Chunk::Data(d)) => c.pending_out = Some((d, 0)),
            Ok(Chunk::Eof) => c.eof_to_channel = true,
            Ok(Chunk::Abort) => return Ok(true),
            Err(TryRecvError::Empty) => return Ok(false),
            Err(TryRecvError::Disconnected) => return Ok(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn read(w: &mut Window, bytes: u64, at: Instant) {
        w.consumed(usize::try_from(bytes).unwrap(), at);
    }

    #[test]
    fn a_window_read_quickly_doubles_up_to_the_cap_and_is_owed_to_the_relay() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        w.sending = None;
        read(&mut w, WINDOW - 1, t0 + Duration::from_millis(10));
        assert_eq!(
            (w.size, w.read),
            (WINDOW, WINDOW - 1),
            "grew before a whole window"
        );
        read(&mut w, 1, t0 + GROW_WITHIN / 2);
        assert_eq!(w.size, 2 * WINDOW);
        assert_eq!(w.read, 2 * WINDOW, "the growth is not owed to the relay");
        w.read = 0;
        let t1 = t0 + GROW_WITHIN / 2;
        read(&mut w, 2 * WINDOW, t1 + Duration::from_millis(1));
        assert_eq!(w.size, MAX_WINDOW, "grew past the cap");
        assert_eq!(w.read, 2 * WINDOW + MAX_WINDOW - 2 * WINDOW);
    }

    #[test]
    fn a_slow_connection_keeps_its_window() {
        let t0 = Instant::now();
        let mut w = Window::new(t0);
        w.sending = None;
        // A whole window, but over longer than GROW_WITHIN: no growth, and a new lap starts.
        read(&mut w, WINDOW, t0 + GROW_WITHIN);
        assert_eq!((w.size, w.read), (WINDOW, WINDOW));
        // Half a window in a hurry, then the rest slowly: still no growth.
        let t1 = t0 + GROW_WITHIN;
        read(&mut w, WINDOW / 2, t1 + Duration::from_millis(1));
        read(
            &mut w,
            WINDOW / 2,
            t1 + GROW_WITHIN + Duration::from_millis(1),
        );
        assert_eq!(w.size, WINDOW);
        read(&mut w, 4 * MIB, t1 + 3 * GROW_WITHIN);
        assert_eq!(w.size, WINDOW);
    }
}
