//! 256 MiB each way through the real binaries (platform, relay, gateway, `connect`), checked
//! with SHA-256 at both ends. Its own test binary so it never shares the machine with the
//! handshake-heavy tests (`POSTERN_E2E_MIB` sets the size).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::e2e::{exchange_target, run_exchange, Connect};
use common::gateway::TestGateway;
use common::platform::TestPlatform;
use common::relay::TestRelay;

fn mib() -> usize {
    std::env::var("POSTERN_E2E_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| common::scaled(256, 16, "MiB each way"))
}

#[test]
fn large_transfer_each_way_arrives_intact() {
    let mut p = TestPlatform::init();
    p.ok(&["org", "create", "a"]);
    let r0 = p.identity("relay", None, "r0", &[]);
    p.start(&[]);
    let _relay = TestRelay::start(&p, &r0);
    let _gateway = TestGateway::start(&p, &p.identity("gateway", Some("a"), "g1", &[]));
    let alice = p.identity("operator", Some("a"), "alice", &[]);
    let len = mib() * 1024 * 1024;
    let (target, received) = exchange_target(len);
    let connect = Connect::start(&p, &alice, "g1", &target);
    let sent = run_exchange(connect.port, 0x5eed, len);
    assert_eq!(
        received.recv_timeout(Duration::from_secs(60)).unwrap(),
        sent,
        "upload corrupted"
    );
}
