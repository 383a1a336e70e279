//! A TCP proxy that holds every byte for half a round trip in each direction: a long link
//! between gateway and relay, on one machine. Bytes are timestamped as they arrive and written
//! once due, up to 256 MiB in flight each way (far more than any window measured here).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

const PIECE: usize = 64 * 1024;
const PIECES_IN_FLIGHT: usize = 256 * 1024 * 1024 / PIECE;

/// Starts a proxy to 127.0.0.1:`upstream` adding `rtt` of round-trip time; returns its port.
pub(crate) fn start(upstream: u16, rtt: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind delay proxy");
    let port = listener.local_addr().expect("proxy address").port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            for (from, to) in [(&client, &server), (&server, &client)] {
                let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                    continue;
                };
                let _ = from.set_nodelay(true);
                let (tx, rx) = sync_channel(PIECES_IN_FLIGHT);
                std::thread::spawn(move || read_side(from, tx));
                std::thread::spawn(move || write_side(to, rx, rtt / 2));
            }
        }
    });
    port
}

fn read_side(mut from: TcpStream, tx: SyncSender<(Instant, Vec<u8>)>) {
    let mut buf = vec![0u8; PIECE];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
}

fn write_side(mut to: TcpStream, rx: Receiver<(Instant, Vec<u8>)>, one_way: Duration) {
    while let Ok((arrived, piece)) = rx.recv() {
        let due = arrived + one_way;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if to.write_all(&piece).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
