//! The platform API over real HTTPS on 127.0.0.1:0, driven through the real binary and the
//! library client: what registration and sessions issue, and everything they refuse.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::SystemTime;

use common::platform::{der, gateway_registration, relay_registration, TestPlatform};
use common::{gw, org};
use postern::pki::Scope;
use postern::platform::api::{GatewayHeartbeat, RelayHeartbeat, SessionRequest};
use postern::platform::client::{ApiClient, ClientError};
use postern::platform::token::Enrolment;
use postern::sshcert::{parse_openssh, GatewayCertPolicy, RelayHostPolicy};
use postern::tls::gateway::{GatewayClientVerifier, GatewayServerVerifier};
use postern::tls::relay::{RelayClientVerifier, RelayServerVerifier};
use postern::tls::server_name;
use serde_json::{json, Value};

fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, Option<String>, String) {
    match r {
        Err(ClientError::Refused(e)) => (e.status, e.field, e.problem),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A platform with orgs a and b, an instance relay r0 and an org-a relay ra (both registered).
struct World {
    p: TestPlatform,
    r0: ApiClient,
    ra: ApiClient,
}

fn world() -> World {
    let mut p = TestPlatform::init();
    p.ok(&["org", "create", "a"]);
    p.ok(&["org", "create", "b"]);
    let r0 = p.identity("relay", None, "r0", &[]);
    let ra = p.identity("relay", Some("a"), "ra", &[]);
    p.start(&[]);
    let (r0, ra) = (p.client(&r0), p.client(&ra));
    r0.relay_register(&relay_registration(2200)).unwrap();
    ra.relay_register(&relay_registration(2300)).unwrap();
    World { p, r0, ra }
}

fn session_request(gateway: &str, target: &str, ttl: u64) -> SessionRequest {
    let (_, k1) = common::platform::fresh_keys();
    let (_, k2) = common::platform::fresh_keys();
    SessionRequest {
        gateway: gateway.into(),
        target: target.into(),
        ttl_secs: ttl,
        relay_client_key: k1,
        gateway_client_key: k2,
    }
}

#[test]
fn relay_certificates_verify_under_their_own_authorities_only() {
    let w = world();
    let now = SystemTime::now();
    let (inst, a, b) = (w.p.instance_cas(), w.p.org_cas("a"), w.p.org_cas("b"));
    let creds = w.r0.relay_renew(&relay_registration(2200)).unwrap();
    assert_eq!((creds.relay.as_str(), creds.org.as_deref()), ("r0", None));
    let host = parse_openssh(&creds.ssh_host_certificate).unwrap();
    RelayHostPolicy::new(inst.relay_ssh_server.public_key())
        .verify(&host, "localhost", now)
        .unwrap();
    for other in [
        &a.relay_ssh_server,
        &inst.relay_ssh_client,
        &b.relay_ssh_server,
    ] {
        assert!(RelayHostPolicy::new(other.public_key())
            .verify(&host, "localhost", now)
            .is_err());
    }
    let leaf = der(&creds.tls_chain[0]);
    let name = server_name("127.0.0.1").unwrap();
    RelayServerVerifier::new(inst.relay_pki_server.certificate().clone())
        .unwrap()
        .verify(&leaf, &name, now)
        .unwrap();
    for other in [&a.relay_pki_server, &inst.relay_pki_client] {
        assert!(RelayServerVerifier::new(other.certificate().clone())
            .unwrap()
            .verify(&leaf, &name, now)
            .is_err());
    }
    assert_eq!(
        der(&creds.tls_chain[1]),
        *inst.relay_pki_server.certificate()
    );
    assert_eq!(
        der(&creds.tls_client_ca),
        *inst.relay_pki_client.certificate()
    );
    assert_eq!(
        creds.ssh_user_ca,
        inst.relay_ssh_client.public_key().to_openssh().unwrap()
    );

    let creds = w.ra.relay_renew(&relay_registration(2300)).unwrap();
    assert_eq!(creds.org.as_deref(), Some("a"));
    let host = parse_openssh(&creds.ssh_host_certificate).unwrap();
    RelayHostPolicy::new(a.relay_ssh_server.public_key())
        .verify(&host, "localhost", now)
        .unwrap();
    assert!(RelayHostPolicy::new(inst.relay_ssh_server.public_key())
        .verify(&host, "localhost", now)
        .is_err());
    assert_eq!(der(&creds.tls_client_ca), *a.relay_pki_client.certificate());
}

#[test]
fn gateway_certificates_follow_its_relay_kind_and_its_org() {
    let w = world();
    let now = SystemTime::now();
    let (inst, a, b) = (w.p.instance_cas(), w.p.org_cas("a"), w.p.org_cas("b"));

    // org a has its own live relay: it comes first; org b only has the instance relay.
    let ga = w.p.client(&w.p.identity("gateway", Some("a"), "g1", &[]));
    let creds = ga.gateway_register(&gateway_registration()).unwrap();
    assert_eq!(creds.relays[0].name, "ra");
    assert!(creds.relays.iter().all(|r| r.org.as_deref() == Some("a")));
    let ssh = parse_openssh(&creds.ssh_certificate).unwrap();
    let v = GatewayCertPolicy::new(a.relay_ssh_client.public_key(), Scope::Org(org("a")))
        .verify(&ssh, "g1", now)
        .unwrap();
    assert_eq!((v.org().as_str(), v.gateway().as_str()), ("a", "g1"));
    for (ca, scope) in [
        (&inst.relay_ssh_client, Scope::Instance),
        (&b.relay_ssh_client, Scope::Org(org("b"))),
        (&a.relay_ssh_server, Scope::Org(org("a"))),
    ] {
        assert!(GatewayCertPolicy::new(ca.public_key(), scope)
            .verify(&ssh, "g1", now)
            .is_err());
    }
    assert_eq!(
        creds.relay_host_ca,
        a.relay_ssh_server.public_key().to_openssh().unwrap()
    );
    let leaf = der(&creds.tls_chain[0]);
    GatewayServerVerifier::new(a.gateway_server.certificate().clone(), org("a"), gw("g1"))
        .unwrap()
        .verify(&leaf, now)
        .unwrap();
    assert!(
        GatewayServerVerifier::new(b.gateway_server.certificate().clone(), org("b"), gw("g1"))
            .unwrap()
            .verify(&leaf, now)
            .is_err()
    );
    assert!(
        GatewayServerVerifier::new(a.gateway_server.certificate().clone(), org("a"), gw("g2"))
            .unwrap()
            .verify(&leaf, now)
            .is_err()
    );
    assert_eq!(
        der(&creds.gateway_client_ca),
        *a.gateway_client.certificate()
    );

    let gb = w.p.client(&w.p.identity("gateway", Some("b"), "g1", &[]));
    let creds = gb.gateway_register(&gateway_registration()).unwrap();
    assert_eq!(creds.relays[0].name, "r0");
    let ssh = parse_openssh(&creds.ssh_certificate).unwrap();
    GatewayCertPolicy::new(inst.relay_ssh_client.public_key(), Scope::Instance)
        .verify(&ssh, "g1", now)
        .unwrap();
    assert!(
        GatewayCertPolicy::new(a.relay_ssh_client.public_key(), Scope::Org(org("a")))
            .verify(&ssh, "g1", now)
            .is_err()
    );
}

#[test]
fn session_certificates_carry_the_permission_for_one_gateway_of_one_org() {
    let w = world();
    let now = SystemTime::now();
    let (inst, a, b) = (w.p.instance_cas(), w.p.org_cas("a"), w.p.org_cas("b"));
    let g1 = w.p.client(&w.p.identity("gateway", Some("a"), "g1", &[]));
    g1.gateway_register(&gateway_registration()).unwrap();
    let ops =
        w.p.client(&w.p.identity("operator", Some("a"), "alice", &[]));
    let s = ops
        .session(&session_request("g1", "db.internal:5432", 300))
        .unwrap();
    assert_eq!(
        (s.relay.name.as_str(), s.gateway_pin.as_str()),
        ("ra", "g1.a.gateway.postern.internal")
    );
    assert!(s.not_after <= postern::clock::unix_now(now) + 301);

    let relay_leaf = der(&s.relay_client_certificate);
    let route = RelayClientVerifier::new(
        a.relay_pki_client.certificate().clone(),
        Scope::Org(org("a")),
    )
    .unwrap()
    .verify(&relay_leaf, now)
    .unwrap();
    assert_eq!(
        (route.org().as_str(), route.gateway().as_str()),
        ("a", "g1")
    );
    assert!(
        RelayClientVerifier::new(inst.relay_pki_client.certificate().clone(), Scope::Instance)
            .unwrap()
            .verify(&relay_leaf, now)
            .is_err()
    );

    let leaf = der(&s.gateway_client_certificate);
    let grant =
        GatewayClientVerifier::new(a.gateway_client.certificate().clone(), org("a"), gw("g1"))
            .unwrap()
            .verify(&leaf, now)
            .unwrap();
    assert_eq!(grant.target().to_string(), "db.internal:5432");
    assert_eq!(grant.actor(), "alice");
    assert_eq!(grant.session_id(), s.session_id);
    assert!(
        GatewayClientVerifier::new(a.gateway_client.certificate().clone(), org("a"), gw("g2"))
            .unwrap()
            .verify(&leaf, now)
            .is_err()
    );
    assert!(
        GatewayClientVerifier::new(b.gateway_client.certificate().clone(), org("b"), gw("g1"))
            .unwrap()
            .verify(&leaf, now)
            .is_err()
    );
    assert_eq!(der(&s.relay_server_ca), *a.relay_pki_server.certificate());
    assert_eq!(der(&s.gateway_server_ca), *a.gateway_server.certificate());
}

#[test]
fn reject_operator_of_another_org_and_out_of_range_sessions() {
    let w = world();
    w.p.client(&w.p.identity("gateway", Some("a"), "g1", &[]))
        .gateway_register(&gateway_registration())
        .unwrap();
    let bob = w.p.client(&w.p.identity("operator", Some("b"), "bob", &[]));
    let (status, field, problem) = refused(bob.session(&session_request("g1", "db:1", 60)));
    assert_eq!((status, field.as_deref()), (404, Some("gateway")));
    assert!(problem.contains("no gateway g1 in org b"), "{problem}");

    let alice =
        w.p.client(&w.p.identity("operator", Some("a"), "alice", &[]));
    let (status, field, _) = refused(alice.session(&session_request("g1", "db:1", 3601)));
    assert_eq!((status, field.as_deref()), (400, Some("ttl_secs")));
    let (_, field, _) = refused(alice.session(&session_request("g1", "db", 60)));
    assert_eq!(field.as_deref(), Some("target"));
    let (status, _, problem) = refused(alice.session(&session_request("g9", "db:1", 60)));
    assert_eq!(status, 404, "{problem}");
    w.p.identity("gateway", Some("a"), "g2", &[]);
    let (status, _, problem) = refused(alice.session(&session_request("g2", "db:1", 60)));
    assert_eq!(status, 409, "{problem}");
    assert!(problem.contains("has not registered"), "{problem}");
}

#[test]
fn reject_gateway_token_claiming_another_org() {
    let w = world();
    let ga = w.p.client(&w.p.identity("gateway", Some("a"), "g1", &[]));
    let mut reg = gateway_registration();
    reg.org = Some("b".into());
    let (status, field, problem) = refused(ga.gateway_register(&reg));
    assert_eq!((status, field.as_deref()), (403, Some("org")));
    assert!(problem.contains("org a"), "{problem}");
    reg.org = Some("a".into());
    assert_eq!(ga.gateway_register(&reg).unwrap().org, "a");
    let list = w.p.ok(&["gateway", "list", "--org", "b"]);
    assert_eq!(list.lines().count(), 1, "org b has no gateway: {list}");
}

#[test]
fn reject_tokens_of_the_wrong_role() {
    let w = world();
    let (status, _, problem) = refused(w.r0.gateway_register(&gateway_registration()));
    assert_eq!(status, 403);
    assert!(problem.contains("this is a relay token"), "{problem}");
    let ga = w.p.client(&w.p.identity("gateway", Some("a"), "g1", &[]));
    let (status, _, problem) = refused(ga.relay_register(&relay_registration(2400)));
    assert_eq!(status, 403);
    assert!(problem.contains("this is a gateway token"), "{problem}");
    let (status, _, _) = refused(ga.revocations());
    assert_eq!(status, 403);
    let (status, _, _) = refused(ga.session(&session_request("g1", "db:1", 60)));
    assert_eq!(status, 403);
}

#[test]
fn reject_revoked_gateway_renewal_and_sessions() {
    let w = world();
    let ga = w.p.client(&w.p.identity("gateway", Some("a"), "g1", &[]));
    let reg = gateway_registration();
    ga.gateway_register(&reg).unwrap();
    let alice =
        w.p.client(&w.p.identity("operator", Some("a"), "alice", &[]));
    alice.session(&session_request("g1", "db:1", 60)).unwrap();
    assert!(w.ra.revocations().unwrap().gateways.is_empty());

    w.p.ok(&["gateway", "revoke", "--org", "a", "g1"]);
    let (status, _, problem) = refused(ga.gateway_renew(&reg));
    assert_eq!(status, 403);
    assert!(problem.contains("revoked"), "{problem}");
    let (status, _, problem) = refused(alice.session(&session_request("g1", "db:1", 60)));
    assert_eq!(status, 403);
    assert!(
        problem.contains("gateway g1 in org a was revoked"),
        "{problem}"
    );
    let listed = w.ra.revocations().unwrap().gateways;
    assert_eq!(
        (listed[0].org.as_str(), listed[0].gateway.as_str()),
        ("a", "g1")
    );
    assert_eq!(
        w.r0.revocations().unwrap().gateways.len(),
        1,
        "instance relays see every org"
    );
    let list = w.p.ok(&["gateway", "list"]);
    assert!(
        list.lines().any(|l| l.starts_with("a\tg1\trevoked")),
        "{list}"
    );
}

#[test]
fn reject_revoked_relay_for_assignment() {
    let w = world();
    w.p.ok(&["relay", "revoke", "ra"]);
    let (status, _, _) = refused(w.ra.relay_heartbeat(&RelayHeartbeat { tunnels: 0 }));
    assert_eq!(status, 403);
    let ga = w.p.client(&w.p.identity("gateway", Some("a"), "g1", &[]));
    let creds = ga.gateway_register(&gateway_registration()).unwrap();
    assert_eq!(creds.relays[0].name, "r0", "a revoked org relay is skipped");
}

#[test]
fn reject_expired_unknown_and_tampered_tokens() {
    let w = world();
    let expired =
        w.p.identity("gateway", Some("a"), "old", &["--valid-days", "0"]);
    let (status, _, problem) = refused(
        w.p.client(&expired)
            .gateway_register(&gateway_registration()),
    );
    assert_eq!(status, 401);
    assert!(problem.contains("expired"), "{problem}");

    let good = w.p.identity("gateway", Some("a"), "g1", &[]);
    let other = postern::platform::token::Token::generate().unwrap();
    let unknown = Enrolment {
        token: other,
        api_ca: good.api_ca,
    };
    let (status, _, problem) = refused(
        w.p.client(&unknown)
            .gateway_register(&gateway_registration()),
    );
    assert_eq!((status, problem.as_str()), (401, "unknown token"));
    // The right id with another secret.
    let text = good.expose();
    let mut parts: Vec<&str> = text.split('.').collect();
    let forged_secret = "0".repeat(64);
    parts[2] = &forged_secret;
    let forged = Enrolment::parse(&parts.join(".")).unwrap();
    let (status, _, _) = refused(
        w.p.client(&forged)
            .gateway_register(&gateway_registration()),
    );
    assert_eq!(status, 401);
    w.p.client(&good)
        .gateway_register(&gateway_registration())
        .unwrap();
}

#[test]
fn reject_platform_whose_ca_does_not_match_the_pin() {
    let w = world();
    let mut e = w.p.identity("gateway", Some("a"), "g1", &[]);
    e.api_ca[0] ^= 1;
    match ApiClient::enrol(&w.p.url, &e) {
        Err(ClientError::Pin(m)) => assert!(m.contains("pinned"), "{m}"),
        other => panic!("expected a pin failure, got {other:?}"),
    }
}

#[test]
fn reject_malformed_bodies_with_the_named_field() {
    let w = world();
    let ga = w.p.client(&w.p.identity("gateway", Some("a"), "g1", &[]));
    let post = |body: &Value| refused(ga.post::<_, Value>("/v1/gateway/register", body));
    let (_, k) = common::platform::fresh_keys();
    let (status, field, _) = post(&json!({"ssh_public_key": "x", "tls_public_key": k, "extra": 1}));
    assert_eq!((status, field.as_deref()), (400, Some("extra")));
    let (status, field, problem) = post(&json!({"ssh_public_key": 7, "tls_public_key": k}));
    assert_eq!((status, field.as_deref()), (400, Some("ssh_public_key")));
    assert!(
        problem.contains("expected a string, found a number"),
        "{problem}"
    );
    let (_, field, _) = post(&json!({"ssh_public_key": "ssh-ed25519 AAAA", "tls_public_key": k}));
    assert_eq!(field.as_deref(), Some("ssh_public_key"));
    let (ssh, _) = common::platform::fresh_keys();
    let (_, field, _) =
        post(&json!({"ssh_public_key": ssh, "tls_public_key": "-----BEGIN PUBLIC KEY-----"}));
    assert_eq!(field.as_deref(), Some("tls_public_key"));
    let (status, field, _) = post(&json!(["not", "an", "object"]));
    assert_eq!((status, field), (400, None));
    let (status, _, problem) = post(&json!({"ssh_public_key": "x".repeat(100_000)}));
    assert_eq!(status, 413, "{problem}");
    let (status, field, _) = refused(ga.gateway_heartbeat(&GatewayHeartbeat {
        connected_relay: Some("Not A Relay".into()),
    }));
    assert_eq!((status, field.as_deref()), (400, Some("connected_relay")));
    let (status, _, _) = refused(ga.get::<Value>("/v1/nothing"));
    assert_eq!(status, 404);
    let (status, _, _) = refused(ga.get::<Value>("/v1/session"));
    assert_eq!(status, 405);
}

#[test]
fn fifty_concurrent_registrations_leave_a_consistent_registry() {
    let w = world();
    let clients: Vec<ApiClient> = (0..50)
        .map(|i| {
            w.p.client(&w.p.identity(
                "gateway",
                Some(if i % 2 == 0 { "a" } else { "b" }),
                &format!("g{i}"),
                &[],
            ))
        })
        .collect();
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .map(|c| s.spawn(|| c.gateway_register(&gateway_registration())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, r) in results.iter().enumerate() {
        let creds = r.as_ref().unwrap();
        assert_eq!(creds.gateway, format!("g{i}"));
        let expected_relay = if i % 2 == 0 { "ra" } else { "r0" };
        assert_eq!(creds.relays[0].name, expected_relay);
    }
    let list = w.p.ok(&["gateway", "list"]);
    let rows: Vec<&str> = list.lines().skip(1).collect();
    assert_eq!(rows.len(), 50, "{list}");
    for row in rows {
        let cols: Vec<&str> = row.split('\t').collect();
        let expected = if cols[0] == "a" { "ra" } else { "r0" };
        assert_eq!(cols[3], expected, "{row}");
    }
}

#[test]
fn restart_of_serve_keeps_all_state() {
    let mut w = world();
    let enrolment = w.p.identity("gateway", Some("a"), "g1", &[]);
    let ga = w.p.client(&enrolment);
    let reg = gateway_registration();
    ga.gateway_register(&reg).unwrap();
    ga.gateway_heartbeat(&GatewayHeartbeat {
        connected_relay: Some("ra".into()),
    })
    .unwrap();
    let ca = ga.api_ca().clone();
    w.p.stop();
    w.p.start(&[]);
    let again = ApiClient::pinned(&w.p.url, enrolment.token.clone(), ca).unwrap();
    let creds = again.gateway_renew(&reg).unwrap();
    assert_eq!(creds.relays[0].name, "ra");
    let list = w.p.ok(&["gateway", "list"]);
    assert!(
        list.lines().any(|l| l.starts_with("a\tg1\tlive\tra\tra")),
        "{list}"
    );
    let relays = w.p.ok(&["relay", "list"]);
    assert!(
        relays.lines().any(|l| l.starts_with("ra\torg a\tlive")),
        "{relays}"
    );
}

#[test]
fn serve_stops_cleanly_on_sigterm_and_starts_again() {
    let mut w = world();
    let enrolment = w.p.identity("gateway", Some("a"), "g1", &[]);
    let ca = w.p.client(&enrolment).api_ca().clone();
    let status = w.p.terminate();
    assert!(status.success(), "serve exited with {status}");
    w.p.start(&[]);
    let again = ApiClient::pinned(&w.p.url, enrolment.token.clone(), ca).unwrap();
    again.gateway_register(&gateway_registration()).unwrap();
}

#[test]
fn repeated_failed_token_attempts_are_rate_limited() {
    let mut p = TestPlatform::init();
    p.ok(&["org", "create", "a"]);
    let good = p.identity("gateway", Some("a"), "g1", &[]);
    p.start(&["--auth-burst", "3", "--auth-refill-ms", "600000"]);
    let bad = Enrolment {
        token: postern::platform::token::Token::generate().unwrap(),
        api_ca: good.api_ca,
    };
    let bad = p.client(&bad);
    for _ in 0..3 {
        assert_eq!(
            refused(bad.gateway_heartbeat(&GatewayHeartbeat {
                connected_relay: None
            }))
            .0,
            401
        );
    }
    let (status, _, problem) = refused(bad.gateway_heartbeat(&GatewayHeartbeat {
        connected_relay: None,
    }));
    assert_eq!(status, 429, "{problem}");
    let (status, _, _) = refused(p.client(&good).gateway_register(&gateway_registration()));
    assert_eq!(
        status, 429,
        "the right token is slowed down too while the address is blocked"
    );
}

#[test]
fn reject_identity_commands_that_make_no_sense() {
    let p = TestPlatform::init();
    p.ok(&["org", "create", "a"]);
    let fails = |args: &[&str], needle: &str| {
        let out = p.cli(args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let text = common::text(&out);
        assert!(text.contains(needle), "{args:?}: {text}");
    };
    fails(
        &["identity", "create", "--role", "gateway", "--name", "g1"],
        "belongs to an org",
    );
    fails(
        &[
            "identity", "create", "--role", "gateway", "--org", "zz", "--name", "g1",
        ],
        "org zz does not exist",
    );
    fails(
        &[
            "identity", "create", "--role", "admin", "--org", "a", "--name", "g1",
        ],
        "expected gateway, relay or operator",
    );
    fails(
        &[
            "identity", "create", "--role", "gateway", "--org", "a", "--name", "G_1",
        ],
        "gateway",
    );
    fails(&["org", "create", "a"], "exists already");
    p.identity("relay", Some("a"), "r1", &[]);
    fails(
        &["identity", "create", "--role", "relay", "--name", "r1"],
        "unique across orgs",
    );
    fails(
        &[
            "identity", "create", "--role", "operator", "--org", "a", "--name", "o", "--relay",
            "r1",
        ],
        "gateways only",
    );
    fails(&["init"], "initialised already");
    let state = p.state();
    let out = std::process::Command::new(common::platform::bin())
        .env("POSTERN_STATE", &state)
        .env_remove("POSTERN_SEALING_KEY")
        .args(["org", "list"])
        .output()
        .unwrap();
    assert!(
        common::text(&out).contains("no sealing key"),
        "{}",
        common::text(&out)
    );
}

#[test]
fn health_needs_no_token() {
    let w = world();
    let enrolment = w.p.identity("gateway", Some("a"), "g1", &[]);
    let c = w.p.client(&enrolment);
    let health: Value = c.get("/v1/health").unwrap();
    assert_eq!(health, json!({"status": "ok"}));
}
