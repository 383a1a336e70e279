//! Shared fixtures for the crate's unit tests: a fixed clock, an instance and two orgs with all
//! their authorities in memory, subject keys, and an in-memory TLS handshake.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CustomExtension, KeyPair};
use rustls::{ClientConnection, ServerConnection};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use ssh_key::{Algorithm, PrivateKey};

use crate::id::{GatewayId, OrgId, RelayId};
use crate::pki::ext::{GatewayIdentity, Permission, Target, OID_GATEWAY_IDENTITY, OID_PERMISSION};
use crate::pki::{
    AuthorityKind, AuthorityName, Lifetime, Scope, SshAuthority, SubjectKey, X509Authority,
};
use crate::tls::Identity;

/// The tests' clock: the real time, read once per process, so that rustls handshakes (which read
/// the system clock) and the sans-IO checks (which take `now`) agree.
pub(crate) fn now() -> SystemTime {
    static NOW: OnceLock<u64> = OnceLock::new();
    UNIX_EPOCH + Duration::from_secs(*NOW.get_or_init(|| crate::clock::unix_now(SystemTime::now())))
}

pub(crate) fn days(n: u64) -> Duration {
    Duration::from_secs(n * 86_400)
}

pub(crate) fn org(s: &str) -> OrgId {
    OrgId::new(s).unwrap()
}

pub(crate) fn gw(s: &str) -> GatewayId {
    GatewayId::new(s).unwrap()
}

pub(crate) fn relay_id() -> RelayId {
    RelayId::new("r1").unwrap()
}

pub(crate) const RELAY_HOST: &str = "relay.example.net";

/// The authorities of one scope, each of the six roles (the instance uses only four).
pub(crate) struct Cas {
    pub(crate) gateway_client: X509Authority,
    pub(crate) gateway_server: X509Authority,
    pub(crate) ssh_client: SshAuthority,
    pub(crate) ssh_server: SshAuthority,
    pub(crate) pki_client: X509Authority,
    pub(crate) pki_server: X509Authority,
}

fn x509(scope: &Scope, kind: AuthorityKind) -> X509Authority {
    X509Authority::create(
        AuthorityName {
            scope: scope.clone(),
            kind,
        },
        now(),
        Lifetime::days(3650),
    )
    .unwrap()
}

fn ssh(scope: &Scope, kind: AuthorityKind) -> SshAuthority {
    SshAuthority::create(AuthorityName {
        scope: scope.clone(),
        kind,
    })
    .unwrap()
}

impl Cas {
    fn new(scope: Scope) -> Self {
        // The instance has no Gateway CAs in the design; its slots here are filled with an
        // org-less stand-in that no test trusts, so the struct stays uniform.
        let gw_scope = match &scope {
            Scope::Instance => Scope::Org(org("unused")),
            s => s.clone(),
        };
        Self {
            gateway_client: x509(&gw_scope, AuthorityKind::GatewayClient),
            gateway_server: x509(&gw_scope, AuthorityKind::GatewayServer),
            ssh_client: ssh(&scope, AuthorityKind::RelaySshClient),
            ssh_server: ssh(&scope, AuthorityKind::RelaySshServer),
            pki_client: x509(&scope, AuthorityKind::RelayPkiClient),
            pki_server: x509(&scope, AuthorityKind::RelayPkiServer),
        }
    }
}

/// The instance and orgs `a` and `b`.
pub(crate) struct World {
    pub(crate) instance: Cas,
    pub(crate) a: Cas,
    pub(crate) b: Cas,
}

impl World {
    pub(crate) fn new() -> Self {
        Self {
            instance: Cas::new(Scope::Instance),
            a: Cas::new(Scope::Org(org("a"))),
            b: Cas::new(Scope::Org(org("b"))),
        }
    }
}

/// A subject key pair: the private half stays with the test as it would with the subject.
pub(crate) struct Subject {
    pub(crate) key: KeyPair,
    pub(crate) public: SubjectKey,
}

impl Subject {
    pub(crate) fn new() -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let public = SubjectKey::from_key_pair(&key).unwrap();
        Self { key, public }
    }

    pub(crate) fn identity(&self, cert: CertificateDer<'static>) -> Identity {
        Identity {
            chain: vec![cert],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der())),
        }
    }
}

pub(crate) fn ssh_subject() -> PrivateKey {
    PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap()
}

pub(crate) fn identity_of(o: &str, g: &str) -> GatewayIdentity {
    GatewayIdentity {
        org: org(o),
        gateway: gw(g),
    }
}

pub(crate) fn permission(o: &str, g: &str) -> Permission {
    Permission::new(
        org(o),
        gw(g),
        Target::parse("db.internal:5432").unwrap(),
        "alice@example.com",
        "s-1",
    )
    .unwrap()
}

pub(crate) fn identity_ext(o: &str, g: &str) -> CustomExtension {
    CustomExtension::from_oid_content(OID_GATEWAY_IDENTITY, identity_of(o, g).to_der())
}

pub(crate) fn permission_ext(der: Vec<u8>) -> CustomExtension {
    CustomExtension::from_oid_content(OID_PERMISSION, der)
}

/// Flips a bit in the last byte of a DER certificate: inside its signature.
pub(crate) fn tamper(cert: &CertificateDer<'_>) -> CertificateDer<'static> {
    let mut bytes = cert.to_vec();
    if let Some(last) = bytes.last_mut() {
        *last ^= 0x01;
    }
    CertificateDer::from(bytes)
}

/// Runs a TLS handshake between two in-memory peers; returns the first error either side hits.
pub(crate) fn handshake(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> Result<(), rustls::Error> {
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
        }
        let mut back = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut back).unwrap();
        }
        if !back.is_empty() {
            client.read_tls(&mut back.as_slice()).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
            return Ok(());
        }
    }
    Err(rustls::Error::General(
        "handshake did not finish in 20 flights".into(),
    ))
}
