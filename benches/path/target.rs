//! The one target every scenario reaches, and the client operations run against it.
//!
//! A connection's first byte picks the mode: `u` (upload: read to end of stream, answer the byte
//! count as 8 bytes), `d` (download: read an 8-byte length, send that many bytes, close), `e`
//! (echo every byte as it arrives), `h` (hold: echo, for held-connection memory figures).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const CHUNK: usize = 256 * 1024;

/// Starts the target on 127.0.0.1 and returns its port; it serves until the process exits.
pub(crate) fn start() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind target");
    let port = listener.local_addr().expect("target address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let _ = serve(stream);
                })
                .ok();
        }
    });
    port
}

fn serve(mut s: TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    s.read_exact(&mut mode)?;
    match mode[0] {
        b'u' => {
            let total = count_to_end(&mut s)?;
            s.write_all(&total.to_le_bytes())?;
        }
        b'd' => {
            let mut len = [0u8; 8];
            s.read_exact(&mut len)?;
            send(&mut s, u64::from_le_bytes(len))?;
        }
        _ => {
            let mut buf = [0u8; 4096];
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                s.write_all(&buf[..n])?;
            }
        }
    }
    s.shutdown(Shutdown::Write)
}

/// Reads `s` to its end and returns how many bytes came.
fn count_to_end(s: &mut TcpStream) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

fn send(s: &mut TcpStream, mut left: u64) -> io::Result<()> {
    let buf = vec![0x5au8; CHUNK];
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn dial(port: u16) -> io::Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    Ok(s)
}

/// Sends `bytes` through `port` and returns the seconds until the target confirmed them all.
pub(crate) fn upload(port: u16, bytes: u64) -> io::Result<f64> {
    let start = Instant::now();
    let mut s = dial(port)?;
    s.write_all(b"u")?;
    send(&mut s, bytes)?;
    s.shutdown(Shutdown::Write)?;
    let mut got = [0u8; 8];
    s.read_exact(&mut got)?;
    let got = u64::from_le_bytes(got);
    if got != bytes {
        return Err(io::Error::other(format!(
            "target received {got} bytes, expected {bytes}"
        )));
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Fetches `bytes` through `port` and returns the seconds until the last arrived.
pub(crate) fn download(port: u16, bytes: u64) -> io::Result<f64> {
    let start = Instant::now();
    let mut s = dial(port)?;
    let mut request = vec![b'd'];
    request.extend_from_slice(&bytes.to_le_bytes());
    s.write_all(&request)?;
    let total = count_to_end(&mut s)?;
    if total != bytes {
        return Err(io::Error::other(format!(
            "received {total} bytes, expected {bytes}"
        )));
    }
    Ok(start.elapsed().as_secs_f64())
}

/// `streams` downloads of `bytes / streams` at once; returns the seconds until all finished.
pub(crate) fn parallel_download(port: u16, bytes: u64, streams: u64) -> io::Result<f64> {
    let start = Instant::now();
    let each = bytes / streams;
    let workers: Vec<_> = (0..streams)
        .map(|_| std::thread::spawn(move || download(port, each)))
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| io::Error::other("download thread panicked"))??;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// One connection that writes twice before reading: seconds from connect to the full echo.
pub(crate) fn setup_once(port: u16) -> io::Result<f64> {
    let start = Instant::now();
    let mut s = dial(port)?;
    write_twice_then_read(&mut s)?;
    Ok(start.elapsed().as_secs_f64())
}

/// The setup exchange: two 64-byte writes (echo mode, then payload) before any read, then the
/// 127-byte echo, checked.
pub(crate) fn write_twice_then_read(s: &mut (impl Read + Write)) -> io::Result<()> {
    let mut first = [0x41u8; 64];
    first[0] = b'e';
    s.write_all(&first)?;
    s.write_all(&[0x42u8; 64])?;
    let mut back = [0u8; 127];
    s.read_exact(&mut back)?;
    if back[..63] != [0x41u8; 63] || back[63..] != [0x42u8; 64] {
        return Err(io::Error::other("echo came back different"));
    }
    Ok(())
}

/// Median seconds of `count` one-byte round trips over one connection.
pub(crate) fn round_trip(port: u16, count: usize) -> io::Result<f64> {
    let mut s = dial(port)?;
    s.write_all(b"e")?;
    let mut times = Vec::with_capacity(count);
    let mut byte = [0u8; 1];
    for i in 0..count {
        let start = Instant::now();
        s.write_all(&[i as u8])?;
        s.read_exact(&mut byte)?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(crate::stats::median(&mut times))
}

/// Opens `count` connections and proves each reaches the target; they stay open until dropped.
/// They are opened in batches of 50, each batch confirmed before the next: this measures
/// memory held, not how a burst of a thousand simultaneous handshakes is absorbed.
pub(crate) fn hold(port: u16, count: usize) -> io::Result<Vec<TcpStream>> {
    let mut held: Vec<TcpStream> = Vec::with_capacity(count);
    while held.len() < count {
        let batch = (count - held.len()).min(50);
        let mut fresh = Vec::with_capacity(batch);
        for _ in 0..batch {
            let mut s = dial(port)?;
            s.write_all(b"hx")?;
            fresh.push(s);
        }
        let mut byte = [0u8; 1];
        for s in &mut fresh {
            s.read_exact(&mut byte)?;
            if byte[0] != b'x' {
                return Err(io::Error::other("held connection echoed the wrong byte"));
            }
        }
        held.extend(fresh);
    }
    Ok(held)
}
