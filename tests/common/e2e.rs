//! Helpers for the end-to-end tests: `connect` as a process, and targets that check every byte.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use postern::platform::token::Enrolment;
use ring::digest::{Context, SHA256};

use super::platform::TestPlatform;

/// `postern-platform connect` as its own process.
pub(crate) struct Connect {
    child: Child,
    pub(crate) port: u16,
}

impl Drop for Connect {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Connect {
    /// The `connect` process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn start(
        p: &TestPlatform,
        operator: &Enrolment,
        gateway: &str,
        target: &str,
    ) -> Self {
        let mut child = Command::new(super::platform::bin())
            .args([
                "connect",
                "--gateway",
                gateway,
                "--target",
                target,
                "--listen",
                "127.0.0.1:0",
            ])
            .env("POSTERN_PLATFORM", &p.url)
            .env("POSTERN_TOKEN", operator.expose())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let line = super::first_line(&mut child);
        let port = line
            .split("listening on 127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .unwrap_or_else(|| panic!("connect did not start: {line:?}"))
            .parse()
            .unwrap();
        Self { child, port }
    }
}

/// A deterministic byte stream (xorshift), `len` bytes from `seed`.
pub(crate) fn pattern(seed: u64, len: usize, mut sink: impl FnMut(&[u8])) {
    let mut x = seed | 1;
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len());
        for chunk in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        sink(&buf[..n]);
        left -= n;
    }
}

pub(crate) fn digest_of_pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut ctx = Context::new(&SHA256);
    pattern(seed, len, |b| ctx.update(b));
    ctx.finish().as_ref().to_vec()
}

/// Reads to the end, returning (length, SHA-256).
pub(crate) fn drain_digest(r: &mut impl Read) -> std::io::Result<(usize, Vec<u8>)> {
    let mut ctx = Context::new(&SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok((total, ctx.finish().as_ref().to_vec()));
        }
        ctx.update(&buf[..n]);
        total += n;
    }
}

/// A target that, per connection, sends `len` pattern bytes seeded by the first 8 bytes it
/// receives, and reports the digest of everything it received.
pub(crate) fn exchange_target(len: usize) -> (String, mpsc::Receiver<(usize, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut reader = stream.try_clone().unwrap();
                let mut seed = [0u8; 8];
                reader.read_exact(&mut seed).unwrap();
                let mut writer = stream;
                let send = std::thread::spawn(move || {
                    pattern(u64::from_le_bytes(seed) ^ 0xdead, len, |b| {
                        let _ = writer.write_all(b);
                    });
                    let _ = writer.shutdown(Shutdown::Write);
                });
                let mut ctx = Context::new(&SHA256);
                ctx.update(&seed);
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 8;
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    ctx.update(&buf[..n]);
                    total += n;
                }
                send.join().unwrap();
                let _ = tx.send((total, ctx.finish().as_ref().to_vec()));
            });
        }
    });
    (addr, rx)
}

/// Sends `len` pattern bytes (the first 8 are the seed) and checks the target's reply digest.
pub(crate) fn run_exchange(port: u16, seed: u64, len: usize) -> (usize, Vec<u8>) {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let send = std::thread::spawn(move || {
        writer.write_all(&seed.to_le_bytes()).unwrap();
        pattern(seed, len - 8, |b| writer.write_all(b).unwrap());
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let got = drain_digest(&mut &stream).unwrap();
    send.join().unwrap();
    assert_eq!(
        got,
        (len, digest_of_pattern(seed ^ 0xdead, len)),
        "reply corrupted"
    );
    let mut ctx = Context::new(&SHA256);
    ctx.update(&seed.to_le_bytes());
    pattern(seed, len - 8, |b| ctx.update(b));
    (len, ctx.finish().as_ref().to_vec())
}
