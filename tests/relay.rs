//! The real relay against the real platform, with OpenSSH's `ssh` as the gateway: tunnels come
//! up exactly as far as certificates allow, and platform connections reach exactly the gateway
//! their certificate names.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant, SystemTime};

use common::platform::TestPlatform;
use common::relay::*;
use postern::frame::Status;
use postern::pki::Lifetime;
use postern::platform::client::ApiClient;
use postern::platform::dial::DialError;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Platform with orgs a and b, an instance relay, and operators for both orgs.
struct World {
    p: TestPlatform,
    relay: TestRelay,
    alice: ApiClient,
    bob: ApiClient,
    dir: tempfile::TempDir,
}

fn world() -> World {
    world_with(&[])
}

fn world_with(serve_flags: &[&str]) -> World {
    let mut p = TestPlatform::init();
    p.ok(&["org", "create", "a"]);
    p.ok(&["org", "create", "b"]);
    let r0 = p.identity("relay", None, "r0", &[]);
    let mut flags = vec!["--heartbeat-secs", "1"];
    flags.extend(serve_flags);
    p.start(&flags);
    let relay = TestRelay::start(&p, &r0);
    let alice = p.client(&p.identity("operator", Some("a"), "alice", &[]));
    let bob = p.client(&p.identity("operator", Some("b"), "bob", &[]));
    World {
        relay,
        alice,
        bob,
        dir: tempfile::tempdir().unwrap(),
        p,
    }
}

impl World {
    /// A gateway identity of `org`, registered with an OpenSSH key; its tunnel to a tagged echo.
    /// An OpenSSH key registered as gateway `name` of `org`, and its known_hosts file.
    fn openssh_credentials(&self, org: &str, name: &str) -> (PathBuf, PathBuf) {
        let client = self
            .p
            .client(&self.p.identity("gateway", Some(org), name, &[]));
        let key = ssh_keypair(self.dir.path(), &format!("{org}-{name}"));
        let known = register_openssh_gateway(&client, &key);
        (key, known)
    }

    fn openssh_gateway(&self, org: &str, name: &str, tag: &'static str) -> Kill {
        let (key, known) = self.openssh_credentials(org, name);
        Kill(openssh_tunnel(
            &key,
            &known,
            self.relay.ssh_port,
            name,
            tagged_echo(tag),
        ))
    }
}

fn exchange(stream: &mut impl ReadWrite, payload: &[u8], tag: &str) {
    stream.write_all(payload).unwrap();
    stream.flush().unwrap();
    let mut got = vec![0u8; tag.len() + payload.len()];
    stream.read_exact(&mut got).unwrap();
    assert_eq!(
        &got[..tag.len()],
        tag.as_bytes(),
        "reached the wrong target"
    );
    assert_eq!(&got[tag.len()..], payload);
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn refusal(r: Result<postern::platform::dial::RelayStream, DialError>) -> (Status, String) {
    match r {
        Err(DialError::Refused(f)) => (f.status, f.message),
        Err(other) => panic!("expected a status frame, got {other}"),
        Ok(_) => panic!("expected a refusal, got a splice"),
    }
}

#[test]
fn openssh_gateway_tunnel_carries_data_from_the_platform() {
    let w = world();
    let _ssh = w.openssh_gateway("a", "g1", "A1:");
    w.relay.wait_tunnels(1);
    let (creds, key) = session(&w.alice, "g1", "127.0.0.1:1");
    assert_eq!(creds.relay.name, "r0");
    let mut stream = dial(&creds, key).unwrap();
    let payload: Vec<u8> = (0..200_000u32)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();
    exchange(&mut stream, &payload, "A1:");
    exchange(&mut stream, b"again", "");
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.relay.metric("postern_relay_splices_active") != 0 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        w.relay
            .metric("postern_relay_bytes_total{direction=\"to_gateway\"}")
            >= 200_005
    );
    assert!(w.relay.metric("postern_relay_splices_total") >= 1);
    assert!(w.relay.get("/health").contains("ok: relay r0, 1 tunnels"));
}

#[test]
fn reject_platform_certificate_for_a_gateway_that_is_not_connected() {
    let w = world();
    let _ssh = w.openssh_gateway("a", "g1", "A1:");
    w.relay.wait_tunnels(1);
    w.p.client(&w.p.identity("gateway", Some("a"), "g2", &[]))
        .gateway_register(&common::platform::gateway_registration())
        .unwrap();
    let (creds, key) = session(&w.alice, "g2", "127.0.0.1:1");
    let (status, message) = refusal(dial(&creds, key));
    assert_eq!(status, Status::NotConnected);
    assert_eq!(message, "gateway g2 of org a is not connected to relay r0");
    assert_eq!(
        w.relay
            .metric("postern_relay_refusals_total{reason=\"not_connected\"}"),
        1
    );
}

#[test]
fn org_certificates_reach_only_their_own_orgs_gateway() {
    let w = world();
    let _a = w.openssh_gateway("a", "g1", "A1:");
    let _b = w.openssh_gateway("b", "g1", "B1:");
    w.relay.wait_tunnels(2);
    let (creds, key) = session(&w.alice, "g1", "127.0.0.1:1");
    exchange(&mut dial(&creds, key).unwrap(), b"hello", "A1:");
    let (creds, key) = session(&w.bob, "g1", "127.0.0.1:1");
    exchange(&mut dial(&creds, key).unwrap(), b"hello", "B1:");
}

/// Points `creds` at another relay (trusting that relay's server CA, so that only the relay's
/// check of the client certificate can refuse) and expects the TLS refusal to be counted there.
fn expect_relay_refuses(
    creds: &mut postern::platform::api::SessionCredentials,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    relay: &TestRelay,
    server_ca: String,
) {
    creds.relay.tls_address = relay.tls.clone();
    creds.relay_server_ca = server_ca;
    match dial(creds, key) {
        Err(DialError::Tls(m)) => assert!(!m.is_empty()),
        other => panic!("expected a TLS refusal, got {:?}", other.map(|_| ())),
    }
    relay.wait_metric("postern_relay_refusals_total{reason=\"tls_handshake\"}", 1);
}

#[test]
fn reject_instance_relay_certificate_at_an_org_relay_and_the_reverse() {
    let w = world();
    let org_relay = TestRelay::start(&w.p, &w.p.identity("relay", Some("a"), "ra", &[]));
    for (org, name) in [("a", "g1"), ("b", "g1")] {
        w.p.client(&w.p.identity("gateway", Some(org), name, &[]))
            .gateway_register(&common::platform::gateway_registration())
            .unwrap();
    }
    let (a, inst) = (w.p.org_cas("a"), w.p.instance_cas());
    // Org b has no relay of its own: its certificate is for the instance relay.
    let (mut creds, key) = session(&w.bob, "g1", "127.0.0.1:1");
    assert_eq!(creds.relay.name, "r0");
    expect_relay_refuses(
        &mut creds,
        key,
        &org_relay,
        a.relay_pki_server.certificate_pem(),
    );
    // Org a's gateway uses org a's relay: its certificate is refused by the instance relay.
    let (mut creds, key) = session(&w.alice, "g1", "127.0.0.1:1");
    assert_eq!(creds.relay.name, "ra");
    expect_relay_refuses(
        &mut creds,
        key,
        &w.relay,
        inst.relay_pki_server.certificate_pem(),
    );
}

#[test]
fn revoked_gateway_is_dropped_within_one_poll() {
    let w = world();
    let mut ssh = w.openssh_gateway("a", "g1", "A1:");
    w.relay.wait_tunnels(1);
    let (creds, key) = session(&w.alice, "g1", "127.0.0.1:1");
    w.p.ok(&["gateway", "revoke", "--org", "a", "g1"]);
    w.relay.wait_tunnels(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ssh.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "ssh was not disconnected");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, message) = refusal(dial(&creds, key));
    assert_eq!(status, Status::Revoked, "{message}");
}

fn expect_ssh_refused(mut child: Child) -> String {
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success(), "ssh succeeded: {err}");
    err
}

#[test]
fn reject_wrong_gateway_certificates_from_openssh() {
    let w = world();
    let inst = w.p.instance_cas();
    let (key, known) = w.openssh_credentials("a", "g1");
    let cert_path = std::path::PathBuf::from(format!("{}-cert.pub", key.display()));
    let public = ssh_key::PublicKey::from_openssh(
        &std::fs::read_to_string(key.with_extension("pub")).unwrap(),
    )
    .unwrap();
    let (a, g1, g2) = (common::org("a"), common::gw("g1"), common::gw("g2"));
    let now = SystemTime::now();
    let other_ca = postern::pki::SshAuthority::create(common::name(
        postern::pki::Scope::Instance,
        postern::pki::AuthorityKind::RelaySshClient,
    ))
    .unwrap();
    let week_ago = now - Duration::from_secs(7 * 86_400);
    let bad = [
        (
            "another CA",
            other_ca
                .issue_gateway_user(&public, &a, &g1, now, Lifetime::days(1))
                .unwrap(),
        ),
        (
            "expired",
            inst.relay_ssh_client
                .issue_gateway_user(&public, &a, &g1, week_ago, Lifetime::days(1))
                .unwrap(),
        ),
        (
            "wrong principal",
            inst.relay_ssh_client
                .issue_gateway_user(&public, &a, &g2, now, Lifetime::days(1))
                .unwrap(),
        ),
        (
            "host type",
            inst.relay_ssh_server
                .issue_relay_host(
                    &public,
                    &postern::id::RelayId::new("g1").unwrap(),
                    &["g1".into()],
                    now,
                    Lifetime::days(1),
                )
                .unwrap(),
        ),
    ];
    let before = w
        .relay
        .metric("postern_relay_refusals_total{reason=\"ssh_auth\"}");
    for (what, cert) in &bad {
        std::fs::write(&cert_path, cert.to_openssh().unwrap()).unwrap();
        let err = expect_ssh_refused(openssh_tunnel(&key, &known, w.relay.ssh_port, "g1", 1));
        assert!(err.contains("Permission denied"), "{what}: {err}");
    }
    std::fs::remove_file(&cert_path).unwrap();
    let err = expect_ssh_refused(openssh_tunnel(&key, &known, w.relay.ssh_port, "g1", 1));
    assert!(err.contains("Permission denied"), "plain key: {err}");
    // ssh can report the last refusal before the relay has counted it (seen under qemu).
    w.relay.wait_metric(
        "postern_relay_refusals_total{reason=\"ssh_auth\"}",
        before + 5,
    );
    assert_eq!(w.relay.metric("postern_relay_tunnels"), 0);
}

#[test]
fn openssh_checks_the_relay_host_certificate_against_the_ca() {
    let w = world();
    let (key, known) = w.openssh_credentials("a", "g1");
    let target = tagged_echo("x");
    let _ok = Kill(openssh_tunnel(&key, &known, w.relay.ssh_port, "g1", target));
    w.relay.wait_tunnels(1);
    // The same client trusting another CA for host certificates refuses the relay.
    let other = w.p.org_cas("b");
    std::fs::write(
        &known,
        format!(
            "@cert-authority * {}\n",
            other.relay_ssh_server.public_key().to_openssh().unwrap()
        ),
    )
    .unwrap();
    let err = expect_ssh_refused(openssh_tunnel(&key, &known, w.relay.ssh_port, "g1", target));
    assert!(err.contains("Host key verification failed"), "{err}");
}

#[test]
fn relay_accepts_the_three_aeads_and_refuses_other_ssh_ciphers() {
    let w = world();
    let (key, known) = w.openssh_credentials("a", "g1");
    for cipher in [
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
    ] {
        let ssh = openssh_tunnel_with(&key, &known, w.relay.ssh_port, "g1", 1, &["-c", cipher]);
        let tunnel = Kill(ssh);
        w.relay.wait_tunnels(1);
        drop(tunnel);
        w.relay.wait_tunnels(0);
    }
    for cipher in ["aes128-ctr", "aes256-ctr", "aes256-cbc"] {
        let ssh = openssh_tunnel_with(&key, &known, w.relay.ssh_port, "g1", 1, &["-c", cipher]);
        let err = expect_ssh_refused(ssh);
        assert!(err.contains("no matching cipher"), "{cipher}: {err}");
    }
}

#[test]
fn reject_shell_exec_and_local_forwarding_for_an_authenticated_gateway() {
    let w = world();
    let (key, known) = w.openssh_credentials("a", "g1");
    let out = ssh_command(&key, &known, w.relay.ssh_port, "g1")
        .arg("echo hi")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hi"));
    let mut local = ssh_command(&key, &known, w.relay.ssh_port, "g1")
        .args(["-W", "127.0.0.1:22"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = local.wait().unwrap();
    assert!(!status.success(), "direct-tcpip must be refused");
    w.relay
        .wait_metric("postern_relay_refusals_total{reason=\"ssh_request\"}", 2);
}

#[test]
fn newest_tunnel_of_a_gateway_takes_new_connections() {
    let w = world();
    let (key, known) = w.openssh_credentials("a", "g1");
    let _old = Kill(openssh_tunnel(
        &key,
        &known,
        w.relay.ssh_port,
        "g1",
        tagged_echo("old:"),
    ));
    w.relay.wait_tunnels(1);
    let new = Kill(openssh_tunnel(
        &key,
        &known,
        w.relay.ssh_port,
        "g1",
        tagged_echo("new:"),
    ));
    w.relay.wait_tunnels(2);
    let (creds, key1) = session(&w.alice, "g1", "127.0.0.1:1");
    exchange(&mut dial(&creds, key1).unwrap(), b"x", "new:");
    drop(new);
    w.relay.wait_tunnels(1);
    let (creds, key2) = session(&w.alice, "g1", "127.0.0.1:1");
    exchange(&mut dial(&creds, key2).unwrap(), b"x", "old:");
}

#[test]
fn relay_renews_its_certificates_without_dropping_tunnels() {
    // Relay certificates live 6 s (renewed after 4 s); the TLS certificate the relay presents
    // after 8 s can only verify if it was renewed, and the tunnel must survive the swap.
    let w = world_with(&["--relay-cert-secs", "6"]);
    let mut ssh = w.openssh_gateway("a", "g1", "A1:");
    w.relay.wait_tunnels(1);
    std::thread::sleep(Duration::from_secs(8));
    assert!(
        ssh.0.try_wait().unwrap().is_none(),
        "the tunnel dropped during renewal"
    );
    assert_eq!(w.relay.metric("postern_relay_tunnels"), 1);
    let (creds, key) = session(&w.alice, "g1", "127.0.0.1:1");
    exchange(&mut dial(&creds, key).unwrap(), b"after renewal", "A1:");
}

#[test]
fn relay_stops_cleanly_on_sigterm_and_closes_tunnels() {
    let mut w = world();
    let mut ssh = w.openssh_gateway("a", "g1", "A1:");
    w.relay.wait_tunnels(1);
    let status = w.relay.terminate();
    assert!(status.success(), "{status}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while ssh.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the tunnel outlived the relay");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn half_close_reaches_the_target_and_the_reply_still_arrives() {
    let w = world();
    let _ssh = w.openssh_gateway("a", "g1", "A1:");
    w.relay.wait_tunnels(1);
    let (creds, key) = session(&w.alice, "g1", "127.0.0.1:1");
    let mut stream = dial(&creds, key).unwrap();
    let payload = vec![7u8; 100_000];
    stream.write_all(&payload).unwrap();
    stream.conn.send_close_notify();
    stream.flush().unwrap();
    let mut got = Vec::new();
    stream.read_to_end(&mut got).unwrap();
    assert_eq!(&got[..3], b"A1:");
    assert_eq!(
        &got[3..],
        &payload[..],
        "the reply after our half-close was cut short"
    );
}
