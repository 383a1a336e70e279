//! A tour of postern's security core on one machine, with no external services: it creates the
//! instance and one organisation's authorities in a state directory (sealed keys, 0600), issues
//! one of every leaf from public keys alone, and checks each with the verifier its peer runs,
//! plus one refusal per verifier. Run with `cargo run --example tour [STATE_DIR]`.

use std::error::Error;
use std::path::PathBuf;
use std::time::SystemTime;

use postern::id::{GatewayId, OrgId, RelayId};
use postern::pki::ext::{GatewayIdentity, Permission, Target};
use postern::pki::{AuthorityStore, Lifetime, Scope, SealingKey, SubjectKey};
use postern::sshcert::{GatewayCertPolicy, RelayHostPolicy};
use postern::tls::gateway::{GatewayClientVerifier, GatewayServerVerifier};
use postern::tls::relay::{RelayClientVerifier, RelayServerVerifier};
use rustls_pki_types::ServerName;

fn main() -> Result<(), Box<dyn Error>> {
    let dir = match std::env::args().nth(1) {
        Some(d) => PathBuf::from(d),
        None => std::env::temp_dir().join(format!("postern-tour-{}", std::process::id())),
    };
    let now = SystemTime::now();
    let sealing = SealingKey::generate()?;
    let store = AuthorityStore::new(&dir, sealing);
    let instance = store.create_instance(now, Lifetime::days(3650))?;
    let acme = OrgId::new("acme")?;
    let other = OrgId::new("other")?;
    let org = store.create_org(&acme, now, Lifetime::days(3650))?;
    let other_org = store.create_org(&other, now, Lifetime::days(3650))?;
    println!("state: {} (instance: 4 authorities; orgs acme and other: 6 each; keys sealed with a key this run discards)", dir.display());

    let edge = GatewayId::new("edge-7")?;
    let x509_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
    let subject = SubjectKey::from_key_pair(&x509_key)?;
    let ssh_key = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)?;
    let host = "relay.example.net";

    let user = instance.relay_ssh_client.issue_gateway_user(
        ssh_key.public_key(),
        &acme,
        &edge,
        now,
        Lifetime::days(1),
    )?;
    let policy = GatewayCertPolicy::new(instance.relay_ssh_client.public_key(), Scope::Instance);
    report(
        "relay accepts gateway SSH user cert",
        policy
            .verify(&user, "edge-7", now)
            .map(|v| format!("{}/{}", v.org(), v.gateway())),
    );
    let foreign = other_org.relay_ssh_client.issue_gateway_user(
        ssh_key.public_key(),
        &other,
        &edge,
        now,
        Lifetime::days(1),
    )?;
    report(
        "relay refuses another org's SSH cert",
        policy
            .verify(&foreign, "edge-7", now)
            .map(|_| "ACCEPTED".to_owned()),
    );

    let host_cert = instance.relay_ssh_server.issue_relay_host(
        ssh_key.public_key(),
        &RelayId::new("r1")?,
        &[host.into()],
        now,
        Lifetime::days(30),
    )?;
    let host_policy = RelayHostPolicy::new(instance.relay_ssh_server.public_key());
    report(
        "gateway accepts relay host cert",
        host_policy
            .verify(&host_cert, host, now)
            .map(|v| v.relay().to_string()),
    );

    let relay_tls = instance.relay_pki_server.issue_relay_server(
        &subject,
        &RelayId::new("r1")?,
        &[host.into()],
        now,
        Lifetime::days(30),
    )?;
    let platform_check = RelayServerVerifier::new(instance.relay_pki_server.certificate().clone())?;
    report(
        "platform accepts relay TLS cert",
        platform_check
            .verify(&relay_tls, &ServerName::try_from(host)?, now)
            .map(|()| host.to_owned()),
    );

    let route_cert = instance.relay_pki_client.issue_relay_client(
        &subject,
        &GatewayIdentity {
            org: acme.clone(),
            gateway: edge.clone(),
        },
        now,
        Lifetime::minutes(5),
    )?;
    let relay_check = RelayClientVerifier::new(
        instance.relay_pki_client.certificate().clone(),
        Scope::Instance,
    )?;
    report(
        "relay routes platform client cert",
        relay_check
            .verify(&route_cert, now)
            .map(|r| format!("{}/{}", r.org(), r.gateway())),
    );
    let org_relay_check = RelayClientVerifier::new(
        org.relay_pki_client.certificate().clone(),
        Scope::Org(acme.clone()),
    )?;
    report(
        "org relay refuses instance client cert",
        org_relay_check
            .verify(&route_cert, now)
            .map(|_| "ACCEPTED".to_owned()),
    );

    let permission = Permission::new(
        acme.clone(),
        edge.clone(),
        Target::parse("127.0.0.1:5432")?,
        "alice@example.com",
        "s-1",
    )?;
    let session = org.gateway_client.issue_gateway_client(
        &subject,
        &permission,
        now,
        Lifetime::minutes(5),
    )?;
    let gateway_check = GatewayClientVerifier::new(
        org.gateway_client.certificate().clone(),
        acme.clone(),
        edge.clone(),
    )?;
    report(
        "gateway grants session",
        gateway_check
            .verify(&session, now)
            .map(|g| format!("{} for {}", g.target(), g.actor())),
    );
    let other_gw = GatewayClientVerifier::new(
        org.gateway_client.certificate().clone(),
        acme.clone(),
        GatewayId::new("edge-8")?,
    )?;
    report(
        "gateway edge-8 refuses edge-7's session",
        other_gw
            .verify(&session, now)
            .map(|_| "ACCEPTED".to_owned()),
    );

    let gw_tls =
        org.gateway_server
            .issue_gateway_server(&subject, &edge, now, Lifetime::days(30))?;
    let pin =
        GatewayServerVerifier::new(org.gateway_server.certificate().clone(), acme.clone(), edge)?;
    report(
        "platform pins gateway",
        pin.verify(&gw_tls, now).map(|()| pin.pin().to_owned()),
    );
    Ok(())
}

fn report<E: std::fmt::Display>(what: &str, outcome: Result<String, E>) {
    match outcome {
        Ok(detail) => println!("  ok       {what:<42} {detail}"),
        Err(e) => println!("  refused  {what:<42} {e}"),
    }
}
