//! Our X.509 leaves against OpenSSL: `openssl verify -partial_chain -CAfile <issuing CA>` accepts
//! each leaf under the authority that issued it and refuses it under another org's (or the
//! instance's); keys and requests made by `openssl` are accepted for issuance (RSA refused).

// Test helpers panic on setup failure; that is the point of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use common::{cert_pem, gw, name, openssl_ed25519_key, org, run, text};
use postern::id::RelayId;
use postern::pki::ext::{GatewayIdentity, Permission, Target};
use postern::pki::{AuthorityKind, Lifetime, Scope, SubjectKey, X509Authority};
use rustls_pki_types::CertificateDer;

fn ca(scope: Scope, kind: AuthorityKind) -> X509Authority {
    X509Authority::create(name(scope, kind), SystemTime::now(), Lifetime::days(365)).unwrap()
}

fn pem_file(dir: &Path, stem: &str, der: &CertificateDer<'_>) -> PathBuf {
    cert_pem(&dir.join(format!("{stem}.pem")), der)
}

/// An Ed25519 key made by openssl; returns (private key path, SubjectKey from its CSR).
fn openssl_subject(dir: &Path) -> (PathBuf, SubjectKey) {
    let key = dir.join("subject.key");
    let csr = dir.join("subject.csr");
    openssl_ed25519_key(&key);
    let out = run(
        "openssl",
        &[
            "req",
            "-new",
            "-key",
            key.to_str().unwrap(),
            "-subj",
            "/CN=ignored",
            "-out",
            csr.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let subject = SubjectKey::from_csr_pem(&std::fs::read_to_string(&csr).unwrap()).unwrap();
    (key, subject)
}

fn verify(ca_pem: &Path, leaf_pem: &Path, purpose: &str) -> (bool, String) {
    let out = run(
        "openssl",
        &[
            "verify",
            "-partial_chain",
            "-purpose",
            purpose,
            "-CAfile",
            ca_pem.to_str().unwrap(),
            leaf_pem.to_str().unwrap(),
        ],
    );
    let t = text(&out);
    (out.status.success() && t.contains(": OK"), t)
}

#[test]
fn openssl_verifies_leaves_under_their_issuer_only() {
    let dir = tempfile::tempdir().unwrap();
    let (_, subject) = openssl_subject(dir.path());
    let now = SystemTime::now();
    let a = Scope::Org(org("a"));
    let b = Scope::Org(org("b"));
    let id = GatewayIdentity {
        org: org("a"),
        gateway: gw("g1"),
    };
    let perm = Permission::new(
        org("a"),
        gw("g1"),
        Target::parse("10.0.0.5:5432").unwrap(),
        "alice",
        "s-1",
    )
    .unwrap();
    let hosts = vec!["relay.example.net".to_owned()];
    let r1 = RelayId::new("r1").unwrap();

    let mut cases = Vec::new();
    for (label, kind, purpose) in [
        ("relay server", AuthorityKind::RelayPkiServer, "sslserver"),
        ("relay client", AuthorityKind::RelayPkiClient, "sslclient"),
        ("gateway server", AuthorityKind::GatewayServer, "sslserver"),
        ("gateway client", AuthorityKind::GatewayClient, "sslclient"),
    ] {
        let right = ca(a.clone(), kind);
        let other_org = ca(b.clone(), kind);
        let leaf = match kind {
            AuthorityKind::RelayPkiServer => {
                right.issue_relay_server(&subject, &r1, &hosts, now, Lifetime::days(1))
            }
            AuthorityKind::RelayPkiClient => {
                right.issue_relay_client(&subject, &id, now, Lifetime::minutes(5))
            }
            AuthorityKind::GatewayServer => {
                right.issue_gateway_server(&subject, &gw("g1"), now, Lifetime::days(1))
            }
            _ => right.issue_gateway_client(&subject, &perm, now, Lifetime::minutes(5)),
        }
        .unwrap();
        cases.push((label, purpose, right, other_org, leaf));
    }
    let instance = ca(Scope::Instance, AuthorityKind::RelayPkiClient);
    let instance_pem = pem_file(dir.path(), "instance-ca", instance.certificate());
    for (label, purpose, right, other_org, leaf) in &cases {
        let stem = label.replace(' ', "-");
        let leaf_pem = pem_file(dir.path(), &stem, leaf);
        let right_pem = pem_file(dir.path(), &format!("{stem}-ca"), right.certificate());
        let other_pem = pem_file(
            dir.path(),
            &format!("{stem}-other-ca"),
            other_org.certificate(),
        );
        let (ok, out) = verify(&right_pem, &leaf_pem, purpose);
        assert!(
            ok,
            "{label}: openssl refused our leaf under its issuer:\n{out}"
        );
        let (ok, out) = verify(&other_pem, &leaf_pem, purpose);
        assert!(
            !ok,
            "{label}: openssl accepted our leaf under another org's CA:\n{out}"
        );
        let (ok, out) = verify(&instance_pem, &leaf_pem, purpose);
        assert!(
            !ok,
            "{label}: openssl accepted our leaf under the instance CA:\n{out}"
        );
        let wrong_purpose = if *purpose == "sslclient" {
            "sslserver"
        } else {
            "sslclient"
        };
        let (ok, out) = verify(&right_pem, &leaf_pem, wrong_purpose);
        assert!(
            !ok,
            "{label}: openssl accepted our leaf for {wrong_purpose}:\n{out}"
        );
    }
    assert_eq!(cases.len(), 4);
}

#[test]
fn openssl_shows_postern_extensions_non_critical() {
    let dir = tempfile::tempdir().unwrap();
    let (_, subject) = openssl_subject(dir.path());
    let gc = ca(Scope::Org(org("a")), AuthorityKind::GatewayClient);
    let perm = Permission::new(
        org("a"),
        gw("g1"),
        Target::parse("db:5432").unwrap(),
        "alice",
        "s-1",
    )
    .unwrap();
    let leaf = gc
        .issue_gateway_client(&subject, &perm, SystemTime::now(), Lifetime::minutes(5))
        .unwrap();
    let path = pem_file(dir.path(), "session", &leaf);
    let out = run(
        "openssl",
        &["x509", "-noout", "-text", "-in", path.to_str().unwrap()],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let line = t
        .lines()
        .find(|l| l.contains("2.25.6354120900384192301.2"))
        .unwrap_or_else(|| panic!("no permission extension:\n{t}"));
    assert!(!line.contains("critical"), "{line}");
    assert!(t.contains("TLS Web Client Authentication"), "{t}");
    assert!(t.contains("ED25519"), "{t}");
    let cert = CertificateDer::from(leaf.to_vec());
    assert_eq!(Permission::from_certificate(&cert).unwrap(), perm);
}

#[test]
fn openssl_public_key_is_accepted_and_rsa_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = openssl_subject(dir.path());
    let out = run(
        "openssl",
        &["pkey", "-in", key.to_str().unwrap(), "-pubout"],
    );
    assert!(out.status.success(), "{}", text(&out));
    SubjectKey::from_spki_pem(&String::from_utf8(out.stdout).unwrap()).unwrap();

    let rsa = dir.path().join("rsa.key");
    let out = run(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "rsa",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            rsa.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = run(
        "openssl",
        &["pkey", "-in", rsa.to_str().unwrap(), "-pubout"],
    );
    let err = SubjectKey::from_spki_pem(&String::from_utf8(out.stdout).unwrap()).unwrap_err();
    assert!(err.to_string().contains("not accepted"), "{err}");
}

#[test]
fn reject_csr_with_tampered_signature() {
    let dir = tempfile::tempdir().unwrap();
    openssl_subject(dir.path());
    let text_pem = std::fs::read_to_string(dir.path().join("subject.csr")).unwrap();
    let parsed = pem::parse(&text_pem).unwrap();
    let mut der = parsed.contents().to_vec();
    let last = der.len() - 1;
    der[last] ^= 1;
    let err = SubjectKey::from_csr_der(&der).unwrap_err();
    assert!(err.to_string().contains("certificate request"), "{err}");
}
