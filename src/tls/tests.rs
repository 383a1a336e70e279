//! The four configurations wired into real rustls handshakes, in memory.

use std::sync::Arc;

use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use rustls_pki_types::ServerName;

use super::gateway::{
    platform_gateway_client, GatewayClientVerifier, GatewayServerVerifier, GatewayTlsServer,
};
use super::relay::{
    platform_relay_client, RelayClientVerifier, RelayServerVerifier, RelayTlsServer,
};
use super::{server_name, Mode, TlsError};
use crate::pki::{Lifetime, Scope};
use crate::testkit::*;

/// Handshakes `client` with a fresh server connection of `config`; returns the server side.
fn connect(
    client: &mut ClientConnection,
    config: Arc<ServerConfig>,
) -> Result<ServerConnection, rustls::Error> {
    let mut server = ServerConnection::new(config).unwrap();
    handshake(client, &mut server)?;
    Ok(server)
}

/// The postern refusal that stopped a handshake (panics if it succeeded or failed otherwise).
fn refusal(client: &mut ClientConnection, config: Arc<ServerConfig>) -> TlsError {
    let err = connect(client, config).unwrap_err();
    TlsError::from_rustls(&err)
        .cloned()
        .unwrap_or_else(|| panic!("not a postern refusal: {err:?}"))
}

struct Relay {
    server: RelayTlsServer,
}

fn relay(w: &World) -> Relay {
    let key = Subject::new();
    let cert = w
        .instance
        .pki_server
        .issue_relay_server(
            &key.public,
            &relay_id(),
            &[RELAY_HOST.into()],
            now(),
            Lifetime::days(30),
        )
        .unwrap();
    let verifier =
        RelayClientVerifier::new(w.instance.pki_client.certificate().clone(), Scope::Instance)
            .unwrap();
    Relay {
        server: RelayTlsServer::new(key.identity(cert), verifier).unwrap(),
    }
}

fn platform_to_relay(
    w: &World,
    client_ca: &crate::pki::X509Authority,
    o: &str,
) -> ClientConnection {
    let config = platform_relay_config(w, client_ca, o);
    ClientConnection::new(config, server_name(RELAY_HOST).unwrap()).unwrap()
}

fn platform_relay_config(
    w: &World,
    client_ca: &crate::pki::X509Authority,
    o: &str,
) -> Arc<ClientConfig> {
    let key = Subject::new();
    let cert = client_ca
        .issue_relay_client(
            &key.public,
            &identity_of(o, "g1"),
            now(),
            Lifetime::minutes(5),
        )
        .unwrap();
    let verifier = RelayServerVerifier::new(w.instance.pki_server.certificate().clone()).unwrap();
    platform_relay_client(key.identity(cert), verifier).unwrap()
}

#[test]
fn relay_handshake_yields_the_certified_route() {
    let w = World::new();
    let r = relay(&w);
    let mut client = platform_to_relay(&w, &w.instance.pki_client, "a");
    let server = connect(&mut client, r.server.config()).unwrap();
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let route = r.server.route(&server, now()).unwrap();
    assert_eq!(
        (route.org().as_str(), route.gateway().as_str()),
        ("a", "g1")
    );
}

#[test]
fn relay_refuses_client_cert_from_org_authority() {
    let w = World::new();
    let r = relay(&w);
    let mut client = platform_to_relay(&w, &w.a.pki_client, "a");
    let err = refusal(&mut client, r.server.config());
    assert!(matches!(err, TlsError::UntrustedIssuer { .. }), "{err:?}");
}

#[test]
fn platform_refuses_relay_from_other_authority() {
    let w = World::new();
    let key = Subject::new();
    let cert =
        w.a.pki_server
            .issue_relay_server(
                &key.public,
                &relay_id(),
                &[RELAY_HOST.into()],
                now(),
                Lifetime::days(1),
            )
            .unwrap();
    let verifier =
        RelayClientVerifier::new(w.instance.pki_client.certificate().clone(), Scope::Instance)
            .unwrap();
    let server_cfg = RelayTlsServer::new(key.identity(cert), verifier).unwrap();
    let mut client = platform_to_relay(&w, &w.instance.pki_client, "a");
    let err = refusal(&mut client, server_cfg.config());
    assert!(matches!(err, TlsError::UntrustedIssuer { .. }), "{err:?}");
}

fn gateway_server(w: &World, g: &str) -> GatewayTlsServer {
    let key = Subject::new();
    let cert =
        w.a.gateway_server
            .issue_gateway_server(&key.public, &gw(g), now(), Lifetime::days(30))
            .unwrap();
    let verifier =
        GatewayClientVerifier::new(w.a.gateway_client.certificate().clone(), org("a"), gw(g))
            .unwrap();
    GatewayTlsServer::new(key.identity(cert), verifier).unwrap()
}

/// The platform's inner-session config toward gateway `g` of org a, with a session cert for g1.
fn platform_gateway_config(w: &World, g: &str, mode: Mode) -> (ClientConfig, ServerName<'static>) {
    let key = Subject::new();
    let cert =
        w.a.gateway_client
            .issue_gateway_client(
                &key.public,
                &permission("a", "g1"),
                now(),
                Lifetime::minutes(5),
            )
            .unwrap();
    let verifier =
        GatewayServerVerifier::new(w.a.gateway_server.certificate().clone(), org("a"), gw(g))
            .unwrap();
    let (config, name) = platform_gateway_client(key.identity(cert), verifier, mode).unwrap();
    ((*config).clone(), name)
}

fn platform_to_gateway(w: &World, g: &str, mode: Mode) -> ClientConnection {
    let (config, name) = platform_gateway_config(w, g, mode);
    ClientConnection::new(Arc::new(config), name).unwrap()
}

#[test]
fn gateway_session_yields_grant_and_mode() {
    let w = World::new();
    let server_cfg = gateway_server(&w, "g1");
    for mode in Mode::ALL {
        let mut client = platform_to_gateway(&w, "g1", mode);
        let server = connect(&mut client, server_cfg.config()).unwrap();
        assert_eq!(
            client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let (grant, negotiated) = server_cfg.accept(&server, now()).unwrap();
        assert_eq!(negotiated, mode);
        assert_eq!(grant.target().to_string(), "db.internal:5432");
        assert_eq!(grant.actor(), "alice@example.com");
    }
}

#[test]
fn platform_pinned_to_g2_refuses_g1() {
    let w = World::new();
    let server_cfg = gateway_server(&w, "g1");
    let mut client = platform_to_gateway(&w, "g2", Mode::Tcp);
    let err = refusal(&mut client, server_cfg.config());
    assert!(matches!(err, TlsError::NameMismatch { .. }), "{err:?}");
}

#[test]
fn gateway_g2_refuses_session_for_g1() {
    let w = World::new();
    let server_cfg = gateway_server(&w, "g2");
    let mut client = platform_to_gateway(&w, "g2", Mode::Tcp);
    let err = refusal(&mut client, server_cfg.config());
    assert!(matches!(err, TlsError::WrongGateway { .. }), "{err:?}");
}

#[test]
fn gateway_refuses_session_without_mode() {
    let w = World::new();
    let server_cfg = gateway_server(&w, "g1");
    let (mut config, name) = platform_gateway_config(&w, "g1", Mode::Tcp);
    config.alpn_protocols.clear();
    let mut client = ClientConnection::new(Arc::new(config), name).unwrap();
    let server = connect(&mut client, server_cfg.config()).unwrap();
    assert_eq!(
        server_cfg.accept(&server, now()).unwrap_err(),
        TlsError::UnknownMode { arrived: None }
    );
}

#[test]
fn grant_is_rechecked_at_a_later_now() {
    let w = World::new();
    let server_cfg = gateway_server(&w, "g1");
    let mut client = platform_to_gateway(&w, "g1", Mode::Tcp);
    let server = connect(&mut client, server_cfg.config()).unwrap();
    let (grant, _) = server_cfg.accept(&server, now()).unwrap();
    let later = now()
        + std::time::Duration::from_secs(grant.not_after() - crate::clock::unix_now(now()) + 1);
    assert!(matches!(
        server_cfg.accept(&server, later),
        Err(TlsError::Expired { .. })
    ));
}

/// Every handshake of the same client and server configurations is a full one. A resumed
/// session would skip the certificate checks: a revoked or expired short-lived certificate
/// could come back in on the strength of an earlier handshake.
#[test]
fn sessions_are_never_resumed() {
    let w = World::new();
    let r = relay(&w);
    let to_relay = platform_relay_config(&w, &w.instance.pki_client, "a");
    let g = gateway_server(&w, "g1");
    let (to_gateway, gateway_name) = platform_gateway_config(&w, "g1", Mode::Tcp);
    let to_gateway = Arc::new(to_gateway);
    for round in 0..3 {
        let mut client =
            ClientConnection::new(to_relay.clone(), server_name(RELAY_HOST).unwrap()).unwrap();
        let server = connect(&mut client, r.server.config()).unwrap();
        let kinds = (client.handshake_kind(), server.handshake_kind());
        let full = Some(rustls::HandshakeKind::Full);
        assert_eq!(kinds, (full, full), "relay hop, handshake {round}");
        let mut client = ClientConnection::new(to_gateway.clone(), gateway_name.clone()).unwrap();
        let server = connect(&mut client, g.config()).unwrap();
        let kinds = (client.handshake_kind(), server.handshake_kind());
        assert_eq!(kinds, (full, full), "inner session, handshake {round}");
    }
    // Each side refuses on its own: a client that would resume (another TLS stack) and a server
    // that would issue tickets both get full handshakes.
    let mut eager = (*to_relay).clone();
    eager.resumption = rustls::client::Resumption::in_memory_sessions(16);
    let eager = Arc::new(eager);
    let mut ticketing = (*r.server.config()).clone();
    ticketing.session_storage = rustls::server::ServerSessionMemoryCache::new(16);
    ticketing.send_tls13_tickets = 2;
    let ticketing = Arc::new(ticketing);
    for round in 0..2 {
        let mut client =
            ClientConnection::new(eager.clone(), server_name(RELAY_HOST).unwrap()).unwrap();
        let server = connect(&mut client, r.server.config()).unwrap();
        let full = Some(rustls::HandshakeKind::Full);
        assert_eq!(server.handshake_kind(), full, "resuming client, {round}");
        let mut client =
            ClientConnection::new(to_relay.clone(), server_name(RELAY_HOST).unwrap()).unwrap();
        connect(&mut client, ticketing.clone()).unwrap();
        assert_eq!(client.handshake_kind(), full, "ticketing server, {round}");
    }
}
