//! Our relay TLS listener against `openssl s_client`: a client certificate from the relay's own
//! PKI Client CA is routed by its identity; one from another authority is refused with the
//! specific error; and s_client, trusting only the relay PKI Server CA, verifies our server
//! certificate (and fails to under another CA).

// Test helpers panic on setup failure; that is the point of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, SystemTime};

use common::{cert_pem, gw, name, openssl_ed25519_key, org, run, text};
use postern::id::RelayId;
use postern::pki::ext::GatewayIdentity;
use postern::pki::{AuthorityKind, Lifetime, Scope, SubjectKey, X509Authority};
use postern::tls::relay::{RelayClientVerifier, RelayTlsServer};
use postern::tls::{Identity, TlsError};
use rustls::{ServerConnection, StreamOwned};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

const HOST: &str = "relay.example.net";

fn ca(scope: Scope, kind: AuthorityKind) -> X509Authority {
    X509Authority::create(name(scope, kind), SystemTime::now(), Lifetime::days(30)).unwrap()
}

/// Serves one TLS connection; returns the route on success or the refusal.
fn serve_once(server: RelayTlsServer) -> (u16, thread::JoinHandle<Result<String, String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = thread::spawn(move || {
        let (sock, _) = listener.accept().map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let conn = ServerConnection::new(server.config()).unwrap();
        let mut tls = StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                let refusal = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .and_then(TlsError::from_rustls)
                    .map(|t| format!("{t:?}"));
                return Err(refusal.unwrap_or_else(|| e.to_string()));
            }
        }
        let route = server
            .route(&tls.conn, SystemTime::now())
            .map_err(|e| e.to_string())?;
        let line = format!("route {}/{}\n", route.org(), route.gateway());
        tls.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
        tls.conn.send_close_notify();
        tls.flush().map_err(|e| e.to_string())?;
        Ok(line)
    });
    (port, handle)
}

fn s_client(port: u16, ca: &Path, cert: &Path, key: &Path) -> Output {
    Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-servername",
            HOST,
            "-tls1_3",
        ])
        .args(["-verify_return_error", "-ign_eof", "-CAfile"])
        .arg(ca)
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client")
}

struct Setup {
    dir: tempfile::TempDir,
    server_ca: X509Authority,
    client_key: PathBuf,
    subject: SubjectKey,
}

fn setup() -> (Setup, RelayTlsServer) {
    let dir = tempfile::tempdir().unwrap();
    let client_key = dir.path().join("client.key");
    openssl_ed25519_key(&client_key);
    let public = run(
        "openssl",
        &["pkey", "-in", client_key.to_str().unwrap(), "-pubout"],
    );
    let subject = SubjectKey::from_spki_pem(&String::from_utf8(public.stdout).unwrap()).unwrap();

    let server_ca = ca(Scope::Instance, AuthorityKind::RelayPkiServer);
    let client_ca = ca(Scope::Instance, AuthorityKind::RelayPkiClient);
    let relay_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let relay_cert = server_ca
        .issue_relay_server(
            &SubjectKey::from_key_pair(&relay_key).unwrap(),
            &RelayId::new("r1").unwrap(),
            &[HOST.to_owned()],
            SystemTime::now(),
            Lifetime::days(1),
        )
        .unwrap();
    let identity = Identity {
        chain: vec![relay_cert],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(relay_key.serialize_der())),
    };
    let verifier =
        RelayClientVerifier::new(client_ca.certificate().clone(), Scope::Instance).unwrap();
    let server = RelayTlsServer::new(identity, verifier).unwrap();
    // Keep the client CA reachable for the accepting test through a leaf issued now.
    let leaf = client_ca
        .issue_relay_client(
            &subject,
            &GatewayIdentity {
                org: org("a"),
                gateway: gw("g1"),
            },
            SystemTime::now(),
            Lifetime::minutes(5),
        )
        .unwrap();
    cert_pem(&dir.path().join("good.pem"), &leaf);
    (
        Setup {
            dir,
            server_ca,
            client_key,
            subject,
        },
        server,
    )
}

#[test]
fn s_client_with_relay_client_cert_is_routed() {
    let (s, server) = setup();
    let ca_pem = cert_pem(
        &s.dir.path().join("server-ca.pem"),
        s.server_ca.certificate(),
    );
    let (port, handle) = serve_once(server);
    let out = s_client(port, &ca_pem, &s.dir.path().join("good.pem"), &s.client_key);
    let served = handle.join().unwrap();
    let t = text(&out);
    assert_eq!(served, Ok("route a/g1\n".to_owned()), "{t}");
    assert!(t.contains("route a/g1"), "{t}");
    assert!(t.contains("Verify return code: 0 (ok)"), "{t}");
    assert!(t.contains("TLSv1.3"), "{t}");
    // No ticket to resume with: every connection is checked by a full handshake.
    assert!(!t.contains("New Session Ticket"), "{t}");
}

#[test]
fn s_client_with_other_org_client_cert_is_refused() {
    let (s, server) = setup();
    let other = ca(Scope::Org(org("b")), AuthorityKind::RelayPkiClient);
    let leaf = other
        .issue_relay_client(
            &s.subject,
            &GatewayIdentity {
                org: org("b"),
                gateway: gw("g1"),
            },
            SystemTime::now(),
            Lifetime::minutes(5),
        )
        .unwrap();
    let cert = cert_pem(&s.dir.path().join("other.pem"), &leaf);
    let ca_pem = cert_pem(
        &s.dir.path().join("server-ca.pem"),
        s.server_ca.certificate(),
    );
    let (port, handle) = serve_once(server);
    let out = s_client(port, &ca_pem, &cert, &s.client_key);
    let served = handle.join().unwrap();
    let refusal = served.expect_err("relay accepted another org's client certificate");
    assert!(refusal.starts_with("UntrustedIssuer"), "{refusal}");
    assert!(!text(&out).contains("route "), "{}", text(&out));
}

#[test]
fn s_client_refuses_relay_under_another_ca() {
    let (s, server) = setup();
    let wrong = ca(Scope::Org(org("a")), AuthorityKind::RelayPkiServer);
    let ca_pem = cert_pem(&s.dir.path().join("wrong-ca.pem"), wrong.certificate());
    let (port, handle) = serve_once(server);
    let out = s_client(port, &ca_pem, &s.dir.path().join("good.pem"), &s.client_key);
    let served = handle.join().unwrap();
    assert!(
        !out.status.success(),
        "s_client trusted a relay under the wrong CA: {}",
        text(&out)
    );
    assert!(
        served.is_err(),
        "server completed a handshake the client refused: {served:?}"
    );
}
