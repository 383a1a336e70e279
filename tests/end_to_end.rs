//! The whole path on the real binaries as separate processes: platform, relays of both kinds,
//! gateways, and `postern-platform connect`, all on 127.0.0.1 port 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::e2e::{drain_digest, exchange_target, run_exchange, Connect};
use common::gateway::{session, TestGateway};
use common::platform::TestPlatform;
use common::relay::{tagged_echo, TestRelay};
use postern::frame::Status;
use postern::platform::client::ClientError;
use postern::platform::dial::DialError;
use postern::platform::token::Enrolment;
use postern::tls::Mode;

struct World {
    p: TestPlatform,
    relay: TestRelay,
    _gateway: TestGateway,
    alice: Enrolment,
}

fn world() -> World {
    let mut p = TestPlatform::init();
    p.ok(&["org", "create", "a"]);
    p.ok(&["org", "create", "b"]);
    let r0 = p.identity("relay", None, "r0", &[]);
    p.start(&["--heartbeat-secs", "1"]);
    let relay = TestRelay::start(&p, &r0);
    let gateway = TestGateway::start(&p, &p.identity("gateway", Some("a"), "g1", &[]));
    let alice = p.identity("operator", Some("a"), "alice", &[]);
    World {
        p,
        relay,
        _gateway: gateway,
        alice,
    }
}

#[test]
fn two_hundred_concurrent_connections_are_all_correct() {
    let w = world();
    let len = 64 * 1024;
    let (target, received) = exchange_target(len);
    let connect = Connect::start(&w.p, &w.alice, "g1", &target);
    let port = connect.port;
    let n = common::scaled(200, 20, "concurrent connections");
    let clients: Vec<_> = (1..=n)
        .map(|i| std::thread::spawn(move || run_exchange(port, u64::try_from(i).unwrap(), len)))
        .collect();
    let mut sent: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let mut got: Vec<_> = (0..n)
        .map(|_| received.recv_timeout(Duration::from_secs(60)).unwrap())
        .collect();
    sent.sort();
    got.sort();
    assert_eq!(got, sent);
}

#[test]
fn relay_killed_mid_transfer_is_an_error_at_both_ends_and_the_path_recovers() {
    let mut w = world();
    let (target, _received) = exchange_target(1 << 30);
    let connect = Connect::start(&w.p, &w.alice, "g1", &target);
    let stream = TcpStream::connect(("127.0.0.1", connect.port)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    writer.write_all(&7u64.to_le_bytes()).unwrap();
    let mut reader = stream;
    let mut buf = vec![0u8; 1 << 20];
    reader.read_exact(&mut buf).unwrap();
    w.relay.restart();
    // The local client sees an error (a reset), never a stream that looks complete.
    let end = drain_digest(&mut reader);
    assert!(
        end.is_err(),
        "expected an error, got a clean end after {:?} bytes",
        end.map(|e| e.0)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let echo = format!("127.0.0.1:{}", tagged_echo("T:"));
    let operator = w.p.client(&w.alice);
    loop {
        let s = session(&operator, "g1", &echo, 300);
        match s.open(Mode::Tcp) {
            Ok(mut stream) => {
                stream.write_all(b"x").unwrap();
                let mut got = [0u8; 3];
                stream.read_exact(&mut got).unwrap();
                assert_eq!(&got, b"T:x");
                break;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "the path did not recover: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[test]
fn platform_restart_keeps_existing_tunnels_working() {
    let mut w = world();
    let echo = format!("127.0.0.1:{}", tagged_echo("T:"));
    let operator = w.p.client(&w.alice);
    let s = session(&operator, "g1", &echo, 300);
    w.p.stop();
    // With the platform down, certificates already issued still work end to end.
    let mut stream = s.open(Mode::Tcp).unwrap();
    stream.write_all(b"x").unwrap();
    let mut got = [0u8; 3];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"T:x");
    w.p.start(&["--heartbeat-secs", "1"]);
    assert_eq!(
        w.relay.metric("postern_relay_tunnels"),
        1,
        "the tunnel stayed up"
    );
}

#[test]
fn isolation_each_refused_with_its_own_error() {
    let w = world();
    let (target, received) = exchange_target(16);
    let bob = w.p.client(&w.p.identity("operator", Some("b"), "bob", &[]));
    // Org A's operator toward org B's gateway: the platform issues nothing.
    w.p.client(&w.p.identity("gateway", Some("b"), "g9", &[]))
        .gateway_register(&common::platform::gateway_registration())
        .unwrap();
    let alice = w.p.client(&w.alice);
    match alice.session(&postern::platform::api::SessionRequest {
        gateway: "g9".into(),
        target: target.clone(),
        ttl_secs: 60,
        relay_client_key: common::platform::fresh_keys().1,
        gateway_client_key: common::platform::fresh_keys().1,
    }) {
        Err(ClientError::Refused(e)) => assert_eq!(e.status, 404, "{e}"),
        other => panic!("expected 404, got {other:?}"),
    }
    // A session for gateway g2 (registered, not connected) never reaches g1.
    w.p.client(&w.p.identity("gateway", Some("a"), "g2", &[]))
        .gateway_register(&common::platform::gateway_registration())
        .unwrap();
    let s = session(&alice, "g2", &target, 60);
    match s.open(Mode::Tcp) {
        Err(DialError::Refused(f)) => assert_eq!(f.status, Status::NotConnected),
        other => panic!("expected not connected, got {:?}", other.map(|_| ())),
    }
    // Org B's session certificates are refused by org A's gateway even through the same relay.
    let mut ours = session(&alice, "g1", &target, 60);
    let theirs = session(&bob, "g9", &target, 60);
    ours.creds.gateway_client_certificate = theirs.creds.gateway_client_certificate.clone();
    ours.gateway_key = theirs.gateway_key.clone_key();
    assert!(matches!(ours.open(Mode::Tcp), Err(DialError::Tls(_))));
    // A revoked gateway: no session is issued, and one issued before is refused at the relay.
    let before = session(&alice, "g1", &target, 60);
    w.p.ok(&["gateway", "revoke", "--org", "a", "g1"]);
    w.relay.wait_tunnels(0);
    match before.open(Mode::Tcp) {
        Err(DialError::Refused(f)) => assert_eq!(f.status, Status::Revoked),
        other => panic!("expected revoked, got {:?}", other.map(|_| ())),
    }
    assert!(received.try_recv().is_err(), "nothing reached the target");
}

#[test]
fn org_relay_is_chosen_before_the_shared_instance_relay() {
    let w = world();
    let ra = w.p.identity("relay", Some("b"), "rb", &[]);
    let org_relay = TestRelay::start(&w.p, &ra);
    let gb = TestGateway::start(&w.p, &w.p.identity("gateway", Some("b"), "gb", &[]));
    org_relay.wait_tunnels(1);
    let bob = w.p.client(&w.p.identity("operator", Some("b"), "bob", &[]));
    let echo = format!("127.0.0.1:{}", tagged_echo("B:"));
    let s = session(&bob, "gb", &echo, 60);
    assert_eq!(s.creds.relay.name, "rb");
    let mut stream = s.open(Mode::Tcp).unwrap();
    stream.write_all(b"y").unwrap();
    let mut got = [0u8; 3];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"B:y");
    // Org a's gateway stays on the shared instance relay.
    assert_eq!(w.relay.metric("postern_relay_tunnels"), 1);
    drop(gb);
}

#[test]
fn ping_reports_relay_and_timings() {
    let w = world();
    let out = Command::new(common::platform::bin())
        .args(["ping", "--gateway", "g1", "--count", "3"])
        .env("POSTERN_PLATFORM", &w.p.url)
        .env("POSTERN_TOKEN", w.alice.expose())
        .output()
        .unwrap();
    let text = common::text(&out);
    assert!(out.status.success(), "{text}");
    for line in [
        "gateway g1 via relay r0",
        "relay TLS handshake:",
        "gateway answer:",
        "round trip (3):",
    ] {
        assert!(text.contains(line), "{line:?} missing from {text}");
    }
    // And the error a person reads for a gateway that is not connected.
    w.p.client(&w.p.identity("gateway", Some("a"), "g2", &[]))
        .gateway_register(&common::platform::gateway_registration())
        .unwrap();
    let out = Command::new(common::platform::bin())
        .args(["ping", "--gateway", "g2"])
        .env("POSTERN_PLATFORM", &w.p.url)
        .env("POSTERN_TOKEN", w.alice.expose())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        common::text(&out)
            .contains("gateway not connected: gateway g2 of org a is not connected to relay r0"),
        "{}",
        common::text(&out)
    );
}
