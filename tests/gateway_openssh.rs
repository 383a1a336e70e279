//! The gateway's tunnel against OpenSSH's `sshd` standing in for a relay, configured with our
//! CAs (`TrustedUserCAKeys`, `HostCertificate`): the tunnel comes up and forwards; a relay host
//! certificate from another CA, an expired one, a user-type one, or a plain host key is
//! refused before the gateway sends any credential.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use common::relay::ssh_keypair;
use common::sshd::{current_user, start, Sshd};
use common::{gw, name, org, run, text, write};
use postern::gateway::tunnel::{open, TunnelError, TunnelSpec};
use postern::id::RelayId;
use postern::pki::{AuthorityKind, Lifetime, Scope, SshAuthority};
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

struct Cas {
    user: SshAuthority,
    host: SshAuthority,
}

fn cas() -> Cas {
    Cas {
        user: SshAuthority::create(name(Scope::Instance, AuthorityKind::RelaySshClient)).unwrap(),
        host: SshAuthority::create(name(Scope::Instance, AuthorityKind::RelaySshServer)).unwrap(),
    }
}

/// The sshd host key in `dir` (`host_ed25519`), made with ssh-keygen on first use.
fn host_key(dir: &Path) -> PublicKey {
    let mut host = dir.join("host_ed25519");
    if !host.exists() {
        host = ssh_keypair(dir, "host_ed25519");
    }
    PublicKey::from_openssh(&std::fs::read_to_string(host.with_extension("pub")).unwrap()).unwrap()
}

/// sshd in `dir` with its host key, presenting `host_cert` (a fresh one from `cas.host` when
/// `None`, none at all when empty), trusting `cas.user` for principal `g1`.
fn sshd(dir: &Path, cas: &Cas, host_cert: Option<String>) -> Sshd {
    let host_pub = host_key(dir);
    let host = dir.join("host_ed25519");
    write(
        &dir.join("user_ca.pub"),
        cas.user.public_key().to_openssh().unwrap().as_bytes(),
        0o644,
    );
    write(&dir.join("principals"), b"g1\n", 0o644);
    let mut settings = format!(
        "HostKey {host}\nTrustedUserCAKeys {dir}/user_ca.pub\nAuthorizedPrincipalsFile {dir}/principals\n\
         AuthorizedKeysFile none\nAllowTcpForwarding yes\nLogLevel DEBUG1\n",
        host = host.display(),
        dir = dir.display()
    );
    let cert = host_cert.unwrap_or_else(|| {
        cas.host
            .issue_relay_host(
                &host_pub,
                &RelayId::new("r1").unwrap(),
                &["127.0.0.1".into()],
                SystemTime::now(),
                Lifetime::days(1),
            )
            .unwrap()
            .to_openssh()
            .unwrap()
    });
    if !cert.is_empty() {
        let path = dir.join("host_ed25519-cert.pub");
        write(&path, cert.as_bytes(), 0o644);
        settings.push_str(&format!("HostCertificate {}\n", path.display()));
    }
    start(dir, &settings)
}

fn spec(cas: &Cas, port: u16) -> TunnelSpec {
    let key = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap();
    let cert = cas
        .user
        .issue_gateway_user(
            key.public_key(),
            &org("a"),
            &gw("g1"),
            SystemTime::now(),
            Lifetime::days(1),
        )
        .unwrap();
    TunnelSpec {
        relay: "r1".into(),
        address: format!("127.0.0.1:{port}"),
        // sshd maps the certificate's principal to a local account: the current user here.
        user: current_user(),
        certificate: cert.to_openssh().unwrap(),
        private_key: key.to_openssh(LineEnding::LF).unwrap().to_string(),
        relay_host_ca: cas.host.public_key().clone(),
        proxy: None,
        timeout: Duration::from_secs(10),
    }
}

#[test]
fn tunnel_comes_up_against_sshd_and_forwards() {
    let dir = tempfile::tempdir().unwrap();
    let cas = cas();
    let sshd = sshd(dir.path(), &cas, None);
    let mut tunnel = open(&spec(&cas, sshd.port)).unwrap();
    assert_ne!(tunnel.bound_port, 0, "sshd allocates the forwarded port");
    let mut client = TcpStream::connect(("127.0.0.1", tunnel.bound_port)).unwrap();
    client.write_all(b"through the tunnel").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut channel = loop {
        match tunnel.listener.accept() {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "no forwarded channel: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 18 {
        match channel.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline);
    }
    assert_eq!(got, b"through the tunnel");
    let log = sshd.log_text();
    assert!(log.contains("Accepted publickey"), "{log}");
    // The refusal tests rely on this line appearing only once credentials are on the way.
    assert!(log.contains("userauth-request"), "{log}");
    // The gateway's first cipher choice is the one negotiated, both ways.
    let fastest = postern::cipher::SSH_CIPHERS.split(',').next().unwrap();
    for way in ["client->server", "server->client"] {
        let kex = format!("kex: {way} cipher: {fastest} ");
        assert!(log.contains(&kex), "expected `{kex}` in: {log}");
    }
}

/// Opens a tunnel to `sshd`, which must fail, and checks sshd never saw an authentication
/// request (its DEBUG1 log names every `userauth-request`).
fn refused_before_credentials(sshd: &Sshd, cas: &Cas) -> TunnelError {
    let err = open(&spec(cas, sshd.port)).expect_err("the tunnel must not come up");
    std::thread::sleep(Duration::from_millis(200));
    let log = sshd.log_text();
    assert!(
        !log.contains("userauth-request"),
        "credentials were sent: {log}"
    );
    err
}

fn expect_refused_before_credentials(dir: &Path, cas: &Cas, cert: String) -> TunnelError {
    let sshd = sshd(dir, cas, Some(cert));
    refused_before_credentials(&sshd, cas)
}

#[test]
fn reject_relay_host_certificate_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let cas = cas();
    let other =
        SshAuthority::create(name(Scope::Org(org("b")), AuthorityKind::RelaySshServer)).unwrap();
    // Generate the host key first (sshd() makes it), then re-sign it with the other CA.
    let cert = other
        .issue_relay_host(
            &host_key(dir.path()),
            &RelayId::new("r1").unwrap(),
            &["127.0.0.1".into()],
            SystemTime::now(),
            Lifetime::days(1),
        )
        .unwrap();
    let err = expect_refused_before_credentials(dir.path(), &cas, cert.to_openssh().unwrap());
    assert!(
        matches!(&err, TunnelError::RelayHost(m) if m.contains("CA")),
        "{err}"
    );
}

#[test]
fn reject_expired_relay_host_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cas = cas();
    let week_ago = SystemTime::now() - Duration::from_secs(7 * 86_400);
    let cert = cas
        .host
        .issue_relay_host(
            &host_key(dir.path()),
            &RelayId::new("r1").unwrap(),
            &["127.0.0.1".into()],
            week_ago,
            Lifetime::days(1),
        )
        .unwrap();
    let err = expect_refused_before_credentials(dir.path(), &cas, cert.to_openssh().unwrap());
    assert!(
        matches!(&err, TunnelError::RelayHost(m) if m.contains("expired")),
        "{err}"
    );
}

#[test]
fn reject_user_type_certificate_as_relay_host() {
    let dir = tempfile::tempdir().unwrap();
    // The host CA's key made by ssh-keygen and loaded into postern, so ssh-keygen can also sign
    // with it: a user-type certificate from the right CA, as its key holder could make one.
    let ca_key = ssh_keypair(dir.path(), "host_ca");
    let host = SshAuthority::load(
        name(Scope::Instance, AuthorityKind::RelaySshServer),
        &std::fs::read_to_string(&ca_key).unwrap(),
    )
    .unwrap();
    let cas = Cas { host, ..cas() };
    host_key(dir.path());
    let out = run(
        "ssh-keygen",
        &[
            "-q",
            "-s",
            ca_key.to_str().unwrap(),
            "-I",
            "postern:v1:relay:r1",
            "-n",
            "127.0.0.1",
            "-V",
            "-5m:+1d",
            dir.path().join("host_ed25519.pub").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let cert = std::fs::read_to_string(dir.path().join("host_ed25519-cert.pub")).unwrap();
    let err = expect_refused_before_credentials(dir.path(), &cas, cert);
    assert!(
        matches!(&err, TunnelError::RelayHost(m) if m.to_lowercase().contains("user")),
        "{err}"
    );
}

#[test]
fn reject_plain_host_key() {
    let dir = tempfile::tempdir().unwrap();
    let cas = cas();
    let err = expect_refused_before_credentials(dir.path(), &cas, String::new());
    assert!(
        matches!(err, TunnelError::Handshake(_) | TunnelError::RelayHost(_)),
        "{err}"
    );
}
