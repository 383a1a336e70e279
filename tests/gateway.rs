//! The real gateway with the real platform and relay: the whole path carries data, and each
//! wrong session certificate or request is refused with its own error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::gateway::{session, Session, TestGateway};
use common::platform::TestPlatform;
use common::relay::{tagged_echo, TestRelay};
use postern::frame::Status;
use postern::platform::client::ApiClient;
use postern::platform::dial::DialError;
use postern::tls::Mode;

struct World {
    p: TestPlatform,
    relay: TestRelay,
    gateway: TestGateway,
    alice: ApiClient,
    bob: ApiClient,
}

fn world() -> World {
    world_with(&[], &[])
}

fn world_with(serve_flags: &[&str], gateway_flags: &[&str]) -> World {
    let mut p = TestPlatform::init();
    p.ok(&["org", "create", "a"]);
    p.ok(&["org", "create", "b"]);
    let r0 = p.identity("relay", None, "r0", &[]);
    let mut flags = vec!["--heartbeat-secs", "1", "--max-session-secs", "600"];
    flags.extend(serve_flags);
    p.start(&flags);
    let relay = TestRelay::start(&p, &r0);
    let g1 = p.identity("gateway", Some("a"), "g1", &[]);
    let gateway = TestGateway::start_with(&p, &g1, gateway_flags);
    let alice = p.client(&p.identity("operator", Some("a"), "alice", &[]));
    let bob = p.client(&p.identity("operator", Some("b"), "bob", &[]));
    World {
        p,
        relay,
        gateway,
        alice,
        bob,
    }
}

fn echo(stream: &mut (impl Read + Write), payload: &[u8], tag: &str) {
    stream.write_all(payload).unwrap();
    stream.flush().unwrap();
    let mut got = vec![0u8; tag.len() + payload.len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got[..tag.len()], tag.as_bytes());
    assert!(got[tag.len()..] == *payload, "data corrupted on the way");
}

fn refusal(s: &Session, mode: Mode) -> (Status, String) {
    match s.open(mode) {
        Err(DialError::Refused(f)) => (f.status, f.message),
        Err(e) => panic!("expected a frame, got {e}"),
        Ok(_) => panic!("expected a refusal"),
    }
}

#[test]
fn full_path_carries_data_to_the_permitted_target() {
    let w = world();
    let target = format!("127.0.0.1:{}", tagged_echo("T:"));
    let s = session(&w.alice, "g1", &target, 300);
    let mut stream = s.open(Mode::Tcp).unwrap();
    let payload: Vec<u8> = (0..1_000_000u32)
        .map(|i| u8::try_from(i % 253).unwrap())
        .collect();
    echo(&mut stream, &payload, "T:");
    postern::platform::dial::finish(&mut stream).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "a clean close after the echo");
    assert!(w
        .gateway
        .get("/health")
        .contains("ok: gateway g1 of org a, tunnel up via relay r0"));
    assert!(w
        .gateway
        .get("/metrics")
        .contains("postern_gateway_connections_total 1"));
}

#[test]
fn reject_target_outside_the_permission() {
    let w = world();
    let permitted = format!("127.0.0.1:{}", tagged_echo("T:"));
    let mut s = session(&w.alice, "g1", &permitted, 300);
    s.creds.target = "127.0.0.1:22".into();
    let (status, message) = refusal(&s, Mode::Tcp);
    assert_eq!(status, Status::NotPermitted);
    assert_eq!(
        message,
        format!("target 127.0.0.1:22 is not permitted by this session certificate (it permits {permitted})")
    );
}

#[test]
fn target_that_refuses_is_reported_through_the_session() {
    let w = world();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = session(&w.alice, "g1", &format!("127.0.0.1:{closed}"), 300);
    let (status, message) = refusal(&s, Mode::Tcp);
    assert_eq!(status, Status::TargetUnreachable);
    assert!(
        message.contains(&format!("could not connect to 127.0.0.1:{closed}")),
        "{message}"
    );
}

#[test]
fn reject_session_certificate_of_another_org() {
    let w = world();
    w.p.client(&w.p.identity("gateway", Some("b"), "g1", &[]))
        .gateway_register(&common::platform::gateway_registration())
        .unwrap();
    let target = format!("127.0.0.1:{}", tagged_echo("T:"));
    let mut ours = session(&w.alice, "g1", &target, 300);
    let theirs = session(&w.bob, "g1", &target, 300);
    ours.creds.gateway_client_certificate = theirs.creds.gateway_client_certificate.clone();
    ours.gateway_key = theirs.gateway_key.clone_key();
    match ours.open(Mode::Tcp) {
        Err(DialError::Tls(_)) => {}
        Err(e) => panic!("expected the inner handshake to fail, got {e}"),
        Ok(_) => panic!("org b's certificate reached org a's gateway"),
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w.gateway.log().contains("TLS handshake") {
        assert!(
            Instant::now() < deadline,
            "no refusal logged: {}",
            w.gateway.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = w.gateway.log();
    assert!(log.contains("org b Gateway Client CA\"; only \"O=postern, CN=postern org a Gateway Client CA\" is trusted"), "{log}");
}

#[test]
fn reject_expired_session_certificate() {
    let w = world();
    let target = format!("127.0.0.1:{}", tagged_echo("T:"));
    let short = session(&w.alice, "g1", &target, 1);
    let mut s = session(&w.alice, "g1", &target, 300);
    s.creds.gateway_client_certificate = short.creds.gateway_client_certificate.clone();
    s.gateway_key = short.gateway_key.clone_key();
    std::thread::sleep(Duration::from_secs(2));
    assert!(matches!(s.open(Mode::Tcp), Err(DialError::Tls(_))));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !w.gateway.log().contains("expired") {
        assert!(
            Instant::now() < deadline,
            "no expiry logged: {}",
            w.gateway.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn session_is_cut_when_its_certificate_expires() {
    let w = world();
    let target = format!("127.0.0.1:{}", tagged_echo("T:"));
    let s = session(&w.alice, "g1", &target, 3);
    let mut stream = s.open(Mode::Tcp).unwrap();
    echo(&mut stream, b"before", "T:");
    std::thread::sleep(Duration::from_secs(4));
    let mut buf = [0u8; 16];
    let end = stream.read(&mut buf);
    assert!(end.is_err(), "expected an error, not a clean end: {end:?}");
    let fresh = session(&w.alice, "g1", &target, 300);
    echo(&mut fresh.open(Mode::Tcp).unwrap(), b"after", "T:");
}

#[test]
fn ping_and_health_modes_answer() {
    let w = world();
    let s = session(&w.alice, "g1", "127.0.0.1:1", 300);
    let mut ping = s.open(Mode::Ping).unwrap();
    echo(&mut ping, b"round trip", "");
    let s = session(&w.alice, "g1", "127.0.0.1:1", 300);
    let health = s.open(Mode::Health);
    assert!(health.is_ok(), "{:?}", health.err().map(|e| e.to_string()));
}

#[test]
fn one_connection_stays_correct_while_fifty_others_are_stalled() {
    let w = world();
    // A target that accepts and never reads: fifty uploads into it fill their windows.
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = format!("127.0.0.1:{}", sink.local_addr().unwrap().port());
    let held = std::thread::spawn(move || {
        (0..50)
            .map(|_| sink.accept().unwrap().0)
            .collect::<Vec<_>>()
    });
    let mut writers = Vec::new();
    for _ in 0..50 {
        let s = session(&w.alice, "g1", &sink_addr, 300);
        let mut stream = s.open(Mode::Tcp).unwrap();
        writers.push(std::thread::spawn(move || {
            let block = vec![1u8; 64 * 1024];
            for _ in 0..64 {
                if stream.write_all(&block).is_err() {
                    return;
                }
            }
        }));
    }
    let _held = held.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let target = format!("127.0.0.1:{}", tagged_echo("T:"));
    let s = session(&w.alice, "g1", &target, 300);
    let mut stream = s.open(Mode::Tcp).unwrap();
    for round in 0..20u8 {
        echo(
            &mut stream,
            &[round; 1000],
            if round == 0 { "T:" } else { "" },
        );
    }
    drop(writers);
}

#[test]
fn gateway_reconnects_after_the_relay_is_killed() {
    let mut w = world();
    let target = format!("127.0.0.1:{}", tagged_echo("T:"));
    let s = session(&w.alice, "g1", &target, 300);
    let mut stream = s.open(Mode::Tcp).unwrap();
    echo(&mut stream, b"before", "T:");
    w.relay.restart();
    let mut buf = [0u8; 16];
    assert!(
        stream.read(&mut buf).is_err(),
        "the killed relay must show as an error"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = session(&w.alice, "g1", &target, 300);
        match s.open(Mode::Tcp) {
            Ok(mut stream) => {
                echo(&mut stream, b"after", "T:");
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no reconnect: {e}\n{}",
                    w.gateway.log()
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what} did not happen within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

#[test]
fn gateway_renews_its_certificates_without_dropping_the_tunnel() {
    // Gateway certificates live 6 s; after 8 s the gateway's TLS certificate only verifies if
    // it was renewed, and the tunnel that was up must still be the one in use.
    let w = world_with(&["--gateway-cert-secs", "6"], &[]);
    let target = format!("127.0.0.1:{}", tagged_echo("T:"));
    std::thread::sleep(Duration::from_secs(8));
    let s = session(&w.alice, "g1", &target, 300);
    echo(&mut s.open(Mode::Tcp).unwrap(), b"after renewal", "T:");
    assert!(w
        .gateway
        .get("/metrics")
        .contains("postern_gateway_tunnels_opened_total 1\n"));
    assert!(
        w.gateway.log().contains("renewed certificates"),
        "{}",
        w.gateway.log()
    );
}

#[test]
fn stalled_relay_is_noticed_within_ten_seconds() {
    let w = world();
    assert!(w.gateway.get("/health").starts_with("HTTP/1.1 200"));
    let pid = w.relay.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    // The design bound is 10 s (keepalives every 3 s, dead after 9 s of silence); the wait
    // allows for a loaded machine and is a timeout, not a speed assertion.
    let took = wait_until("the gateway noticing the stalled relay", 20, || {
        w.gateway.get("/health").starts_with("HTTP/1.1 503")
    });
    let _ = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status();
    eprintln!("stalled relay noticed after {took:?}");
    assert!(w.gateway.log().contains("Dead"), "{}", w.gateway.log());
}

#[test]
fn gateway_stops_cleanly_on_sigterm() {
    let mut w = world();
    assert!(common::terminate(&mut w.gateway.child, "gateway").success());
    w.relay.wait_tunnels(0);
}

#[test]
fn tunnel_goes_through_an_http_connect_proxy() {
    let mut p = TestPlatform::init();
    p.ok(&["org", "create", "a"]);
    let r0 = p.identity("relay", None, "r0", &[]);
    p.start(&["--heartbeat-secs", "1"]);
    let relay = TestRelay::start(&p, &r0);
    let (proxy, seen) = connect_proxy();
    let g1 = p.identity("gateway", Some("a"), "g1", &[]);
    let _gateway = TestGateway::start_with(&p, &g1, &["--proxy", &proxy]);
    relay.wait_tunnels(1);
    let request = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        request.starts_with(&format!("CONNECT 127.0.0.1:{} HTTP/1.1", relay.ssh_port)),
        "{request}"
    );
}

/// A one-shot HTTP CONNECT proxy; reports the request head it saw.
fn connect_proxy() -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut client, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            client.read_exact(&mut byte).unwrap();
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let target = head.split_whitespace().nth(1).unwrap().to_owned();
        tx.send(head).unwrap();
        let upstream = std::net::TcpStream::connect(target).unwrap();
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .unwrap();
        let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        std::thread::spawn(move || std::io::copy(&mut u2, &mut c2));
        let (mut c, mut u) = (client, upstream);
        let _ = std::io::copy(&mut c, &mut u);
    });
    (addr, rx)
}

#[test]
fn gateway_tells_systemd_it_is_ready_only_once_the_tunnel_is_up() {
    let mut p = TestPlatform::init();
    p.ok(&["org", "create", "a"]);
    let r0 = p.identity("relay", None, "r0", &[]);
    p.start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify");
    let listener = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
    let g1 = p.identity("gateway", Some("a"), "g1", &[]);
    // No relay yet: the gateway keeps retrying its registration and must not claim readiness.
    let mut gateway = std::process::Command::new(env!("CARGO_BIN_EXE_postern-gateway"))
        .args(["run", "--health-listen", "127.0.0.1:0"])
        .env("POSTERN_STATE", dir.path().join("state"))
        .env("POSTERN_PLATFORM", &p.url)
        .env("POSTERN_TOKEN", g1.expose())
        .env("NOTIFY_SOCKET", &socket)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    listener
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let early = listener.recv(&mut buf);
    assert!(early.is_err(), "READY=1 before any tunnel: {early:?}");
    let _relay = TestRelay::start(&p, &r0);
    listener
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let n = listener
        .recv(&mut buf)
        .expect("READY=1 once the tunnel is up");
    assert_eq!(&buf[..n], b"READY=1");
    let _ = gateway.kill();
    let _ = gateway.wait();
}
