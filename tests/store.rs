//! The authorities on disk: created once, sealed, 0600, loaded back intact, never overwritten.

// Test helpers panic on setup failure; that is the point of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::SystemTime;

use postern::id::OrgId;
use postern::pki::{AuthorityStore, Lifetime, PkiError, SealingKey};

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn sealing_pair() -> (SealingKey, SealingKey) {
    let key = SealingKey::generate().unwrap();
    let copy = SealingKey::from_hex(&key.to_hex()).unwrap();
    (key, copy)
}

#[test]
fn ten_authorities_round_trip_through_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (key, copy) = sealing_pair();
    let store = AuthorityStore::new(dir.path(), key);
    let now = SystemTime::now();
    let org = OrgId::new("acme").unwrap();
    let inst = store.create_instance(now, Lifetime::days(3650)).unwrap();
    let acme = store.create_org(&org, now, Lifetime::days(3650)).unwrap();

    let reloaded = AuthorityStore::new(dir.path(), copy);
    let inst2 = reloaded.load_instance().unwrap();
    let acme2 = reloaded.load_org(&org).unwrap();
    assert_eq!(
        inst.relay_pki_client.certificate(),
        inst2.relay_pki_client.certificate()
    );
    assert_eq!(
        inst.relay_ssh_server.fingerprint(),
        inst2.relay_ssh_server.fingerprint()
    );
    assert_eq!(
        acme.gateway_client.certificate(),
        acme2.gateway_client.certificate()
    );
    assert_eq!(
        acme.relay_ssh_client.fingerprint(),
        acme2.relay_ssh_client.fingerprint()
    );

    let mut keys = 0;
    for entry in walk(dir.path()) {
        let name = entry.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".key") {
            keys += 1;
            assert_eq!(mode(&entry), 0o600, "{name}");
            let text = fs::read_to_string(&entry).unwrap();
            assert!(
                text.starts_with("-----BEGIN POSTERN SEALED KEY-----"),
                "{name} is not sealed"
            );
        }
    }
    assert_eq!(keys, 10, "expected the ten authorities' keys");
    assert_eq!(mode(&dir.path().join("instance")), 0o700);
    assert_eq!(mode(&dir.path().join("org/acme")), 0o700);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn reject_creating_an_existing_authority() {
    let dir = tempfile::tempdir().unwrap();
    let store = AuthorityStore::new(dir.path(), SealingKey::generate().unwrap());
    let org = OrgId::new("acme").unwrap();
    store
        .create_org(&org, SystemTime::now(), Lifetime::days(10))
        .unwrap();
    let err = store
        .create_org(&org, SystemTime::now(), Lifetime::days(10))
        .unwrap_err();
    assert!(matches!(err, PkiError::AlreadyExists(_)), "{err}");
}

#[test]
fn reject_loading_with_another_sealing_key() {
    let dir = tempfile::tempdir().unwrap();
    AuthorityStore::new(dir.path(), SealingKey::generate().unwrap())
        .create_instance(SystemTime::now(), Lifetime::days(10))
        .unwrap();
    let err = AuthorityStore::new(dir.path(), SealingKey::generate().unwrap())
        .load_instance()
        .unwrap_err();
    assert!(matches!(err, PkiError::WrongSealingKey { .. }), "{err}");
}

#[test]
fn reject_certificate_swapped_between_slots() {
    let dir = tempfile::tempdir().unwrap();
    let (key, copy) = sealing_pair();
    let org = OrgId::new("acme").unwrap();
    AuthorityStore::new(dir.path(), key)
        .create_org(&org, SystemTime::now(), Lifetime::days(10))
        .unwrap();
    let d = dir.path().join("org/acme");
    fs::copy(
        d.join("gateway-server-ca.crt"),
        d.join("gateway-client-ca.crt"),
    )
    .unwrap();
    let err = AuthorityStore::new(dir.path(), copy)
        .load_org(&org)
        .unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
}
