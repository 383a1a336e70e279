use std::os::unix::fs::PermissionsExt;

use super::*;

fn org(s: &str) -> OrgId {
    OrgId::new(s).unwrap()
}

fn identity(role: Role, org_name: Option<&str>, name: &str, token_id: &str) -> IdentityRecord {
    IdentityRecord {
        role,
        org: org_name.map(org),
        name: name.into(),
        token_id: token_id.into(),
        token_digest: vec![7; 32],
        expires_at: 2_000,
        created_at: 1_000,
        revoked_at: None,
        relay_pin: None,
    }
}

fn relay(name: &str, org_name: Option<&str>) -> RelayRecord {
    RelayRecord {
        name: RelayId::new(name).unwrap(),
        org: org_name.map(org),
        ssh_address: "127.0.0.1:2222".into(),
        tls_address: "127.0.0.1:4433".into(),
        hostnames: vec!["localhost".into(), "127.0.0.1".into()],
        registered_at: 10,
        cert_not_after: 20,
        last_heartbeat: None,
        tunnels: 0,
    }
}

#[test]
fn failed_org_creation_leaves_nothing_behind() {
    let s = SqliteStore::in_memory().unwrap();
    let err = s
        .create_org(&org("a"), 1, &mut || Err("disk full".into()))
        .unwrap_err();
    assert_eq!(err, StoreError::Backend("disk full".into()));
    assert!(!s.org_exists(&org("a")).unwrap());
    s.create_org(&org("a"), 1, &mut || Ok(())).unwrap();
    assert!(s.org_exists(&org("a")).unwrap());
}

#[test]
fn reject_second_org_of_same_name_without_touching_authorities() {
    let s = SqliteStore::in_memory().unwrap();
    s.create_org(&org("a"), 1, &mut || Ok(())).unwrap();
    let mut ran = false;
    let err = s
        .create_org(&org("a"), 2, &mut || {
            ran = true;
            Ok(())
        })
        .unwrap_err();
    assert!(matches!(err, StoreError::Exists(_)));
    assert!(!ran, "authorities must not be created for an existing org");
}

#[test]
fn identities_are_unique_per_role_org_and_name() {
    let s = SqliteStore::in_memory().unwrap();
    s.create_identity(&identity(Role::Gateway, Some("a"), "gw1", "t1"))
        .unwrap();
    let dup = s.create_identity(&identity(Role::Gateway, Some("a"), "gw1", "t2"));
    assert!(matches!(dup, Err(StoreError::Exists(_))));
    s.create_identity(&identity(Role::Gateway, Some("b"), "gw1", "t3"))
        .unwrap();
    s.create_identity(&identity(Role::Operator, Some("a"), "gw1", "t4"))
        .unwrap();
    s.create_identity(&identity(Role::Relay, None, "r1", "t5"))
        .unwrap();
    let got = s.identity_by_token("t5").unwrap().unwrap();
    assert_eq!(got.org, None);
    assert_eq!(got.role, Role::Relay);
    assert!(s.identity_by_token("nope").unwrap().is_none());
}

#[test]
fn revocation_keeps_the_first_time_and_blocks_rotation() {
    let s = SqliteStore::in_memory().unwrap();
    let gw = identity(Role::Gateway, Some("a"), "gw1", "t1");
    s.create_identity(&gw).unwrap();
    s.revoke(Role::Gateway, Some(&org("a")), "gw1", 50).unwrap();
    s.revoke(Role::Gateway, Some(&org("a")), "gw1", 60).unwrap();
    let got = s.identity_by_token("t1").unwrap().unwrap();
    assert_eq!(got.revoked_at, Some(50));
    assert!(matches!(
        s.rotate_identity(&gw),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        s.revoke(Role::Gateway, Some(&org("b")), "gw1", 1),
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.revoked(Role::Gateway, None).unwrap().len(), 1);
    assert_eq!(s.revoked(Role::Gateway, Some(&org("b"))).unwrap().len(), 0);
    assert_eq!(s.revoked(Role::Relay, None).unwrap().len(), 0);
}

#[test]
fn rotation_replaces_the_token() {
    let s = SqliteStore::in_memory().unwrap();
    s.create_identity(&identity(Role::Operator, Some("a"), "ops", "t1"))
        .unwrap();
    s.rotate_identity(&identity(Role::Operator, Some("a"), "ops", "t2"))
        .unwrap();
    assert!(s.identity_by_token("t1").unwrap().is_none());
    assert!(s.identity_by_token("t2").unwrap().is_some());
}

#[test]
fn relays_and_gateways_round_trip() {
    let s = SqliteStore::in_memory().unwrap();
    let r = relay("r1", Some("a"));
    s.put_relay(&r).unwrap();
    s.put_relay(&relay("r0", None)).unwrap();
    assert_eq!(s.relay(&r.name).unwrap().unwrap(), r);
    s.relay_heartbeat(&r.name, 99, 3).unwrap();
    let got = s.relay(&r.name).unwrap().unwrap();
    assert_eq!((got.last_heartbeat, got.tunnels), (Some(99), 3));
    assert_eq!(s.relays().unwrap().len(), 2);
    assert!(matches!(
        s.relay_heartbeat(&RelayId::new("r9").unwrap(), 1, 0),
        Err(StoreError::NotFound(_))
    ));

    let g = GatewayRecord {
        org: org("a"),
        name: GatewayId::new("gw1").unwrap(),
        assigned_relay: r.name.clone(),
        connected_relay: None,
        registered_at: 1,
        cert_not_after: 2,
        last_heartbeat: None,
    };
    s.put_gateway(&g).unwrap();
    s.gateway_heartbeat(&g.org, &g.name, Some(&r.name), 77)
        .unwrap();
    let got = s.gateway(&g.org, &g.name).unwrap().unwrap();
    assert_eq!(got.connected_relay, Some(r.name.clone()));
    assert_eq!(got.last_heartbeat, Some(77));
    assert!(s.gateway(&org("b"), &g.name).unwrap().is_none());
}

#[test]
fn database_file_is_private_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create_org(&org("a"), 1, &mut || Ok(())).unwrap();
    }
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let s = SqliteStore::open(&path).unwrap();
    assert!(s.org_exists(&org("a")).unwrap());
}

#[test]
fn reject_corrupt_identifier_in_database() {
    let s = SqliteStore::in_memory().unwrap();
    s.lock()
        .execute(
            "INSERT INTO orgs (name, created_at) VALUES ('Not A Label', 1)",
            [],
        )
        .unwrap();
    assert!(matches!(s.orgs(), Err(StoreError::Corrupt(_))));
}
