//! The refusal matrix: every verifier postern has, given the certificate it must accept and a
//! table of wrong ones, each refused with its specific error. The count assertion keeps the
//! table from shrinking unnoticed.

use std::time::SystemTime;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls_pki_types::{CertificateDer, ServerName};
use ssh_key::certificate::{CertType, Certificate};

use crate::id::gateway_pin_name;
use crate::pki::ext::ExtensionError;
use crate::pki::{gateway_key_id, relay_key_id, Lifetime, Scope, SshAuthority, X509Authority};
use crate::sshcert::{parse_blob, GatewayCertPolicy, RelayHostPolicy, SshCertError};
use crate::testkit::*;
use crate::tls::gateway::{GatewayClientVerifier, GatewayServerVerifier};
use crate::tls::relay::{RelayClientVerifier, RelayServerVerifier};
use crate::tls::TlsError;

#[derive(Debug)]
enum Refusal {
    Tls(TlsError),
    Ssh(SshCertError),
}

type Check = Result<(), Refusal>;

/// Everything the rows need: the world, subject keys, and each verifier under test.
struct Fixture {
    w: World,
    subject: Subject,
    ssh_key: ssh_key::PrivateKey,
}

fn life() -> Lifetime {
    Lifetime::minutes(10)
}

fn past() -> SystemTime {
    now() - days(1)
}

fn future() -> SystemTime {
    now() + days(1)
}

impl Fixture {
    fn new() -> Self {
        Self {
            w: World::new(),
            subject: Subject::new(),
            ssh_key: ssh_subject(),
        }
    }

    // ---- verifiers -------------------------------------------------------------------------

    fn instance_relay(&self, leaf: &CertificateDer<'_>) -> Check {
        let v = RelayClientVerifier::new(
            self.w.instance.pki_client.certificate().clone(),
            Scope::Instance,
        )
        .unwrap();
        v.verify(leaf, now()).map(|_| ()).map_err(Refusal::Tls)
    }

    fn org_a_relay(&self, leaf: &CertificateDer<'_>) -> Check {
        let v = RelayClientVerifier::new(
            self.w.a.pki_client.certificate().clone(),
            Scope::Org(org("a")),
        )
        .unwrap();
        v.verify(leaf, now()).map(|_| ()).map_err(Refusal::Tls)
    }

    fn platform_to_instance_relay(&self, leaf: &CertificateDer<'_>) -> Check {
        let v = RelayServerVerifier::new(self.w.instance.pki_server.certificate().clone()).unwrap();
        let name = ServerName::try_from(RELAY_HOST).unwrap();
        v.verify(leaf, &name, now()).map_err(Refusal::Tls)
    }

    fn gateway_a_g1(&self, leaf: &CertificateDer<'_>) -> Check {
        let v = GatewayClientVerifier::new(
            self.w.a.gateway_client.certificate().clone(),
            org("a"),
            gw("g1"),
        )
        .unwrap();
        v.verify(leaf, now()).map(|_| ()).map_err(Refusal::Tls)
    }

    fn platform_to_a_g1(&self, leaf: &CertificateDer<'_>) -> Check {
        let v = GatewayServerVerifier::new(
            self.w.a.gateway_server.certificate().clone(),
            org("a"),
            gw("g1"),
        )
        .unwrap();
        v.verify(leaf, now()).map_err(Refusal::Tls)
    }

    fn instance_relay_ssh(&self, cert: &Certificate) -> Check {
        let p = GatewayCertPolicy::new(self.w.instance.ssh_client.public_key(), Scope::Instance);
        p.verify(cert, "g1", now())
            .map(|_| ())
            .map_err(Refusal::Ssh)
    }

    fn org_a_relay_ssh(&self, cert: &Certificate) -> Check {
        let p = GatewayCertPolicy::new(self.w.a.ssh_client.public_key(), Scope::Org(org("a")));
        p.verify(cert, "g1", now())
            .map(|_| ())
            .map_err(Refusal::Ssh)
    }

    fn gateway_checks_instance_relay(&self, cert: &Certificate) -> Check {
        let p = RelayHostPolicy::new(self.w.instance.ssh_server.public_key());
        p.verify(cert, RELAY_HOST, now())
            .map(|_| ())
            .map_err(Refusal::Ssh)
    }

    // ---- good leaves -----------------------------------------------------------------------

    fn relay_client(&self, ca: &X509Authority, o: &str, at: SystemTime) -> CertificateDer<'static> {
        ca.issue_relay_client(&self.subject.public, &identity_of(o, "g1"), at, life())
            .unwrap()
    }

    fn relay_server(&self, ca: &X509Authority, at: SystemTime) -> CertificateDer<'static> {
        ca.issue_relay_server(
            &self.subject.public,
            &relay_id(),
            &[RELAY_HOST.to_owned()],
            at,
            life(),
        )
        .unwrap()
    }

    fn session(
        &self,
        ca: &X509Authority,
        o: &str,
        g: &str,
        at: SystemTime,
    ) -> CertificateDer<'static> {
        ca.issue_gateway_client(&self.subject.public, &permission(o, g), at, life())
            .unwrap()
    }

    fn gateway_server(
        &self,
        ca: &X509Authority,
        g: &str,
        at: SystemTime,
    ) -> CertificateDer<'static> {
        ca.issue_gateway_server(&self.subject.public, &gw(g), at, life())
            .unwrap()
    }

    fn user_cert(&self, ca: &SshAuthority, o: &str, at: SystemTime) -> Certificate {
        ca.issue_gateway_user(self.ssh_key.public_key(), &org(o), &gw("g1"), at, life())
            .unwrap()
    }

    fn host_cert(&self, ca: &SshAuthority, host: &str, at: SystemTime) -> Certificate {
        ca.issue_relay_host(
            self.ssh_key.public_key(),
            &relay_id(),
            &[host.to_owned()],
            at,
            life(),
        )
        .unwrap()
    }

    // ---- deliberately wrong leaves -------------------------------------------------------------

    /// A leaf from `ca` shaped by `edit`, bypassing the typed issuers' rules.
    fn custom(
        &self,
        ca: &X509Authority,
        usage: ExtendedKeyUsagePurpose,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> CertificateDer<'static> {
        let mut p = ca.leaf("custom", usage, now(), life()).unwrap();
        edit(&mut p);
        ca.sign(&p, &self.subject.public).unwrap()
    }

    /// A self-signed leaf carrying `edit`'s names and extensions.
    fn self_signed(
        &self,
        usage: ExtendedKeyUsagePurpose,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> CertificateDer<'static> {
        let mut p = CertificateParams::default();
        p.extended_key_usages = vec![usage];
        edit(&mut p);
        p.self_signed(&self.subject.key).unwrap().der().clone()
    }

    /// An SSH certificate from `ca` shaped by `edit`.
    fn ssh_custom(
        &self,
        ca: &SshAuthority,
        edit: impl FnOnce(&mut ssh_key::certificate::Builder),
    ) -> Certificate {
        let mut b = ca
            .builder(self.ssh_key.public_key(), now(), life())
            .unwrap();
        edit(&mut b);
        ca.sign(b).unwrap()
    }
}

fn user_fields(b: &mut ssh_key::certificate::Builder, principal: &str) {
    b.cert_type(CertType::User).unwrap();
    b.key_id(gateway_key_id(&org("a"), &gw("g1"))).unwrap();
    b.valid_principal(principal).unwrap();
    b.extension("permit-port-forwarding", "").unwrap();
}

/// A user certificate whose key id was edited after signing.
fn tampered_ssh(cert: &Certificate) -> Certificate {
    let mut blob = cert.to_bytes().unwrap();
    let needle = cert.key_id().as_bytes();
    let at = blob
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
        + needle.len()
        - 1;
    blob[at] = b'2';
    parse_blob(&blob).unwrap()
}

/// A trusted CA that is itself an intermediate under a parent, and a leaf the parent signed.
fn parent_signed_leaf(f: &Fixture) -> (CertificateDer<'static>, CertificateDer<'static>) {
    let parent_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut parent = CertificateParams::new(Vec::<String>::new()).unwrap();
    parent.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let parent_issuer = rcgen::Issuer::new(parent.clone(), &parent_key);
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "intermediate");
    let ca_cert = ca.signed_by(&ca_key, &parent_issuer).unwrap().der().clone();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    leaf.custom_extensions = vec![identity_ext("a", "g1")];
    let leaf_cert = leaf
        .signed_by(&f.subject.public, &parent_issuer)
        .unwrap()
        .der()
        .clone();
    (ca_cert, leaf_cert)
}

type Row = (&'static str, Check, fn(&Refusal) -> bool);

macro_rules! tls {
    ($p:pat) => {
        |r: &Refusal| matches!(r, Refusal::Tls($p))
    };
}
macro_rules! ssh {
    ($p:pat) => {
        |r: &Refusal| matches!(r, Refusal::Ssh($p))
    };
}

use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};

fn tls_rows(f: &Fixture) -> Vec<Row> {
    let (i, a, b) = (&f.w.instance, &f.w.a, &f.w.b);
    let good_rc = f.relay_client(&i.pki_client, "a", now());
    let good_session = f.session(&a.gateway_client, "a", "g1", now());
    let pin = gateway_pin_name(&org("a"), &gw("g1"));
    let (mid_ca, parent_leaf) = parent_signed_leaf(f);
    let parent_check = RelayClientVerifier::new(mid_ca, Scope::Instance)
        .unwrap()
        .verify(&parent_leaf, now())
        .map(|_| ())
        .map_err(Refusal::Tls);
    vec![
        // instance relay, checking platform client certificates
        (
            "reject_org_relay_client_cert_at_instance_relay",
            f.instance_relay(&f.relay_client(&a.pki_client, "a", now())),
            tls!(TlsError::UntrustedIssuer { .. }),
        ),
        // webpki checks the leaf's usage before its issuer, so a server leaf is refused for usage.
        (
            "reject_relay_server_ca_leaf_as_relay_client",
            f.instance_relay(&f.relay_server(&i.pki_server, now())),
            tls!(TlsError::WrongUsage { .. }),
        ),
        (
            "reject_gateway_session_cert_at_relay",
            f.instance_relay(&f.session(&a.gateway_client, "a", "g1", now())),
            tls!(TlsError::UntrustedIssuer { .. }),
        ),
        (
            "reject_expired_relay_client_cert",
            f.instance_relay(&f.relay_client(&i.pki_client, "a", past())),
            tls!(TlsError::Expired { .. }),
        ),
        (
            "reject_not_yet_valid_relay_client_cert",
            f.instance_relay(&f.relay_client(&i.pki_client, "a", future())),
            tls!(TlsError::NotYetValid { .. }),
        ),
        (
            "reject_tampered_relay_client_cert",
            f.instance_relay(&tamper(&good_rc)),
            tls!(TlsError::BadSignature),
        ),
        (
            "reject_server_usage_from_relay_client_ca",
            f.instance_relay(&f.custom(&i.pki_client, ServerAuth, |p| {
                p.custom_extensions = vec![identity_ext("a", "g1")]
            })),
            tls!(TlsError::WrongUsage { .. }),
        ),
        (
            "reject_relay_client_cert_without_identity",
            f.instance_relay(&f.custom(&i.pki_client, ClientAuth, |_| {})),
            tls!(TlsError::Extension(ExtensionError::Missing(_))),
        ),
        (
            "reject_relay_client_cert_with_malformed_identity",
            f.instance_relay(&f.custom(&i.pki_client, ClientAuth, |p| {
                p.custom_extensions = vec![identity_ext_raw(b"\x30\x03\x02\x01\x01")]
            })),
            tls!(TlsError::Extension(ExtensionError::Malformed { .. })),
        ),
        (
            "reject_self_signed_relay_client_cert",
            f.instance_relay(&f.self_signed(ClientAuth, |p| {
                p.custom_extensions = vec![identity_ext("a", "g1")]
            })),
            tls!(TlsError::UntrustedIssuer { .. }),
        ),
        (
            "reject_leaf_signed_by_parent_of_trusted_ca",
            parent_check,
            tls!(TlsError::UntrustedIssuer { .. }),
        ),
        (
            "reject_trusted_ca_presented_as_leaf",
            f.instance_relay(i.pki_client.certificate()),
            tls!(TlsError::CaAsLeaf),
        ),
        (
            "reject_critical_identity_extension",
            f.instance_relay(&f.custom(&i.pki_client, ClientAuth, |p| {
                let mut e = identity_ext("a", "g1");
                e.set_criticality(true);
                p.custom_extensions = vec![e];
            })),
            tls!(TlsError::Certificate(_)),
        ),
        (
            "reject_ssh_certificate_as_tls_leaf",
            f.instance_relay(&CertificateDer::from(
                f.user_cert(&i.ssh_client, "a", now()).to_bytes().unwrap(),
            )),
            tls!(TlsError::Certificate(_)),
        ),
        // org relay of org a
        (
            "reject_instance_relay_client_cert_at_org_relay",
            f.org_a_relay(&good_rc),
            tls!(TlsError::UntrustedIssuer { .. }),
        ),
        (
            "reject_other_org_relay_client_cert_at_org_relay",
            f.org_a_relay(&f.relay_client(&b.pki_client, "b", now())),
            tls!(TlsError::UntrustedIssuer { .. }),
        ),
        (
            "reject_org_relay_client_cert_naming_other_org",
            f.org_a_relay(&f.custom(&a.pki_client, ClientAuth, |p| {
                p.custom_extensions = vec![identity_ext("b", "g1")]
            })),
            tls!(TlsError::WrongOrg { .. }),
        ),
        // platform checking an instance relay
        (
            "reject_org_relay_server_cert_for_instance_relay",
            f.platform_to_instance_relay(&f.relay_server(&a.pki_server, now())),
            tls!(TlsError::UntrustedIssuer { .. }),
        ),
        (
            "reject_relay_client_ca_leaf_as_relay_server",
            f.platform_to_instance_relay(&f.custom(&i.pki_client, ServerAuth, |p| {
                p.subject_alt_names = CertificateParams::new(vec![RELAY_HOST.to_owned()])
                    .unwrap()
                    .subject_alt_names
            })),
            tls!(TlsError::UntrustedIssuer { .. }),
        ),
        (
            "reject_relay_server_cert_for_other_host",
            f.platform_to_instance_relay(
                &i.pki_server
                    .issue_relay_server(
                        &f.subject.public,
                        &relay_id(),
                        &["other.example.net".to_owned()],
                        now(),
                        life(),
                    )
                    .unwrap(),
            ),
            tls!(TlsError::NameMismatch { .. }),
        ),
        (
            "reject_expired_relay_server_cert",
            f.platform_to_instance_relay(&f.relay_server(&i.pki_server, past())),
            tls!(TlsError::Expired { .. }),
        ),
        (
            "reject_client_usage_from_relay_server_ca",
            f.platform_to_instance_relay(&f.custom(&i.pki_server, ClientAuth, |p| {
                p.subject_alt_names = CertificateParams::new(vec![RELAY_HOST.to_owned()])
                    .unwrap()
                    .subject_alt_names
            })),
            tls!(TlsError::WrongUsage { .. }),
        ),
        // gateway g1 of org a, checking session certificates
        (
            "reject_other_org_session_cert",
            f.gateway_a_g1(&f.session(&b.gateway_client, "b", "g1", now())),
            tls!(TlsError::UntrustedIssuer { .. }),
        ),
        (
            "reject_gateway_server_ca_leaf_as_session_cert",
            f.gateway_a_g1(&f.custom(&a.gateway_server, ClientAuth, |p| {
                p.custom_extensions = vec![permission_ext(permission("a", "g1").to_der())]
            })),
            tls!(TlsError::UntrustedIssuer { .. }),
        ),
        (
            "reject_relay_client_cert_at_gateway",
            f.gateway_a_g1(&f.relay_client(&a.pki_client, "a", now())),
            tls!(TlsError::UntrustedIssuer { .. }),
        ),
        (
            "reject_session_cert_for_other_gateway",
            f.gateway_a_g1(&f.session(&a.gateway_client, "a", "g2", now())),
            tls!(TlsError::WrongGateway { .. }),
        ),
        (
            "reject_session_cert_without_permission",
            f.gateway_a_g1(&f.custom(&a.gateway_client, ClientAuth, |_| {})),
            tls!(TlsError::Extension(ExtensionError::Missing(_))),
        ),
        (
            "reject_permission_of_unknown_version",
            f.gateway_a_g1(&f.custom(&a.gateway_client, ClientAuth, |p| {
                p.custom_extensions =
                    vec![permission_ext(bump_version(permission("a", "g1").to_der()))]
            })),
            tls!(TlsError::Extension(
                ExtensionError::UnsupportedVersion { .. }
            )),
        ),
        (
            "reject_permission_with_trailing_bytes",
            f.gateway_a_g1(&f.custom(&a.gateway_client, ClientAuth, |p| {
                let mut d = permission("a", "g1").to_der();
                d.push(0);
                p.custom_extensions = vec![permission_ext(d)];
            })),
            tls!(TlsError::Extension(ExtensionError::Malformed { .. })),
        ),
        (
            "reject_duplicate_permission",
            f.gateway_a_g1(&f.custom(&a.gateway_client, ClientAuth, |p| {
                p.custom_extensions = vec![
                    permission_ext(permission("a", "g1").to_der()),
                    permission_ext(permission("a", "g1").to_der()),
                ]
            })),
            tls!(TlsError::Extension(ExtensionError::Duplicate(_))),
        ),
        (
            "reject_expired_session_cert",
            f.gateway_a_g1(&f.session(&a.gateway_client, "a", "g1", past())),
            tls!(TlsError::Expired { .. }),
        ),
        (
            "reject_tampered_session_cert",
            f.gateway_a_g1(&tamper(&good_session)),
            tls!(TlsError::BadSignature),
        ),
        (
            "reject_self_signed_session_cert",
            f.gateway_a_g1(&f.self_signed(ClientAuth, |p| {
                p.custom_extensions = vec![permission_ext(permission("a", "g1").to_der())]
            })),
            tls!(TlsError::UntrustedIssuer { .. }),
        ),
        (
            "reject_session_cert_naming_other_org",
            f.gateway_a_g1(&f.custom(&a.gateway_client, ClientAuth, |p| {
                p.custom_extensions = vec![permission_ext(permission("b", "g1").to_der())]
            })),
            tls!(TlsError::WrongOrg { .. }),
        ),
        // platform pinning gateway g1 of org a
        (
            "reject_other_gateway_of_same_org",
            f.platform_to_a_g1(&f.gateway_server(&a.gateway_server, "g2", now())),
            tls!(TlsError::NameMismatch { .. }),
        ),
        (
            "reject_other_org_gateway_server_cert",
            f.platform_to_a_g1(&f.gateway_server(&b.gateway_server, "g1", now())),
            tls!(TlsError::UntrustedIssuer { .. }),
        ),
        (
            "reject_gateway_client_ca_leaf_as_gateway_server",
            f.platform_to_a_g1(&f.custom(&a.gateway_client, ServerAuth, |p| {
                p.subject_alt_names = CertificateParams::new(vec![pin.clone()])
                    .unwrap()
                    .subject_alt_names;
                p.custom_extensions = vec![identity_ext("a", "g1")];
            })),
            tls!(TlsError::UntrustedIssuer { .. }),
        ),
        (
            "reject_pinned_name_with_other_identity",
            f.platform_to_a_g1(&f.custom(&a.gateway_server, ServerAuth, |p| {
                p.subject_alt_names = CertificateParams::new(vec![pin.clone()])
                    .unwrap()
                    .subject_alt_names;
                p.custom_extensions = vec![identity_ext("a", "g2")];
            })),
            tls!(TlsError::WrongGateway { .. }),
        ),
        (
            "reject_pinned_name_without_identity",
            f.platform_to_a_g1(&f.custom(&a.gateway_server, ServerAuth, |p| {
                p.subject_alt_names = CertificateParams::new(vec![pin.clone()])
                    .unwrap()
                    .subject_alt_names
            })),
            tls!(TlsError::Extension(ExtensionError::Missing(_))),
        ),
        (
            "reject_not_yet_valid_gateway_server_cert",
            f.platform_to_a_g1(&f.gateway_server(&a.gateway_server, "g1", future())),
            tls!(TlsError::NotYetValid { .. }),
        ),
    ]
}

fn ssh_rows(f: &Fixture) -> Vec<Row> {
    let (i, a, b) = (&f.w.instance, &f.w.a, &f.w.b);
    let self_signer = SshAuthority::create(crate::pki::AuthorityName {
        scope: Scope::Instance,
        kind: crate::pki::AuthorityKind::RelaySshClient,
    })
    .unwrap();
    vec![
        // instance relay checking gateway user certificates
        (
            "reject_org_ssh_user_cert_at_instance_relay",
            f.instance_relay_ssh(&f.user_cert(&a.ssh_client, "a", now())),
            ssh!(SshCertError::UntrustedCa { .. }),
        ),
        (
            "reject_user_cert_from_relay_host_ca",
            f.instance_relay_ssh(&f.ssh_custom(&i.ssh_server, |b| user_fields(b, "g1"))),
            ssh!(SshCertError::UntrustedCa { .. }),
        ),
        (
            "reject_host_cert_as_user_cert",
            f.instance_relay_ssh(&f.ssh_custom(&i.ssh_client, |b| {
                b.cert_type(CertType::Host).unwrap();
                b.key_id(gateway_key_id(&org("a"), &gw("g1"))).unwrap();
                b.valid_principal("g1").unwrap();
                b.extension("permit-port-forwarding", "").unwrap();
            })),
            ssh!(SshCertError::WrongType { .. }),
        ),
        (
            "reject_expired_user_cert",
            f.instance_relay_ssh(&f.user_cert(&i.ssh_client, "a", past())),
            ssh!(SshCertError::Expired { .. }),
        ),
        (
            "reject_not_yet_valid_user_cert",
            f.instance_relay_ssh(&f.user_cert(&i.ssh_client, "a", future())),
            ssh!(SshCertError::NotYetValid { .. }),
        ),
        (
            "reject_user_cert_for_other_principal",
            f.instance_relay_ssh(&f.ssh_custom(&i.ssh_client, |b| user_fields(b, "g2"))),
            ssh!(SshCertError::WrongPrincipal { .. }),
        ),
        (
            "reject_tampered_user_cert",
            f.instance_relay_ssh(&tampered_ssh(&f.user_cert(&i.ssh_client, "a", now()))),
            ssh!(SshCertError::BadSignature),
        ),
        (
            "reject_user_cert_with_critical_option",
            f.instance_relay_ssh(&f.ssh_custom(&i.ssh_client, |b| {
                user_fields(b, "g1");
                b.critical_option("force-command", "/bin/true").unwrap();
            })),
            ssh!(SshCertError::UnknownCriticalOption { .. }),
        ),
        (
            "reject_user_cert_without_port_forwarding",
            f.instance_relay_ssh(&f.ssh_custom(&i.ssh_client, |b| {
                b.cert_type(CertType::User).unwrap();
                b.key_id(gateway_key_id(&org("a"), &gw("g1"))).unwrap();
                b.valid_principal("g1").unwrap();
            })),
            ssh!(SshCertError::MissingExtension { .. }),
        ),
        (
            "reject_user_cert_valid_for_any_principal",
            f.instance_relay_ssh(&f.ssh_custom(&i.ssh_client, |b| {
                b.cert_type(CertType::User).unwrap();
                b.key_id(gateway_key_id(&org("a"), &gw("g1"))).unwrap();
                b.all_principals_valid().unwrap();
                b.extension("permit-port-forwarding", "").unwrap();
            })),
            ssh!(SshCertError::NoPrincipals),
        ),
        (
            "reject_self_signed_user_cert",
            f.instance_relay_ssh(&f.ssh_custom(&self_signer, |b| user_fields(b, "g1"))),
            ssh!(SshCertError::UntrustedCa { .. }),
        ),
        (
            "reject_user_cert_with_foreign_key_id",
            f.instance_relay_ssh(&f.ssh_custom(&i.ssh_client, |b| {
                b.cert_type(CertType::User).unwrap();
                b.key_id("g1@a").unwrap();
                b.valid_principal("g1").unwrap();
                b.extension("permit-port-forwarding", "").unwrap();
            })),
            ssh!(SshCertError::MalformedKeyId { .. }),
        ),
        (
            "reject_x509_certificate_as_ssh_certificate",
            parse_blob(f.relay_client(&i.pki_client, "a", now()).as_ref())
                .map(|_| ())
                .map_err(Refusal::Ssh),
            ssh!(SshCertError::Parse(_)),
        ),
        // org relay of org a
        (
            "reject_instance_user_cert_at_org_relay",
            f.org_a_relay_ssh(&f.user_cert(&i.ssh_client, "a", now())),
            ssh!(SshCertError::UntrustedCa { .. }),
        ),
        (
            "reject_other_org_user_cert_at_org_relay",
            f.org_a_relay_ssh(&f.user_cert(&b.ssh_client, "b", now())),
            ssh!(SshCertError::UntrustedCa { .. }),
        ),
        (
            "reject_org_user_cert_naming_other_org",
            f.org_a_relay_ssh(&f.ssh_custom(&a.ssh_client, |b| {
                b.cert_type(CertType::User).unwrap();
                b.key_id(gateway_key_id(&org("b"), &gw("g1"))).unwrap();
                b.valid_principal("g1").unwrap();
                b.extension("permit-port-forwarding", "").unwrap();
            })),
            ssh!(SshCertError::WrongOrg { .. }),
        ),
        // gateway checking an instance relay's host certificate
        (
            "reject_user_cert_as_host_cert",
            f.gateway_checks_instance_relay(&f.ssh_custom(&i.ssh_server, |b| {
                b.cert_type(CertType::User).unwrap();
                b.key_id(relay_key_id(&relay_id())).unwrap();
                b.valid_principal(RELAY_HOST).unwrap();
            })),
            ssh!(SshCertError::WrongType { .. }),
        ),
        (
            "reject_host_cert_for_other_host",
            f.gateway_checks_instance_relay(&f.host_cert(
                &i.ssh_server,
                "other.example.net",
                now(),
            )),
            ssh!(SshCertError::WrongPrincipal { .. }),
        ),
        (
            "reject_org_relay_host_cert_for_instance_relay",
            f.gateway_checks_instance_relay(&f.host_cert(&a.ssh_server, RELAY_HOST, now())),
            ssh!(SshCertError::UntrustedCa { .. }),
        ),
        (
            "reject_host_cert_from_user_ca",
            f.gateway_checks_instance_relay(&f.ssh_custom(&i.ssh_client, |b| {
                b.cert_type(CertType::Host).unwrap();
                b.key_id(relay_key_id(&relay_id())).unwrap();
                b.valid_principal(RELAY_HOST).unwrap();
            })),
            ssh!(SshCertError::UntrustedCa { .. }),
        ),
        (
            "reject_expired_host_cert",
            f.gateway_checks_instance_relay(&f.host_cert(&i.ssh_server, RELAY_HOST, past())),
            ssh!(SshCertError::Expired { .. }),
        ),
        (
            "reject_host_cert_valid_for_any_host",
            f.gateway_checks_instance_relay(&f.ssh_custom(&i.ssh_server, |b| {
                b.cert_type(CertType::Host).unwrap();
                b.key_id(relay_key_id(&relay_id())).unwrap();
                b.all_principals_valid().unwrap();
            })),
            ssh!(SshCertError::NoPrincipals),
        ),
    ]
}

fn identity_ext_raw(der: &[u8]) -> rcgen::CustomExtension {
    rcgen::CustomExtension::from_oid_content(crate::pki::ext::OID_GATEWAY_IDENTITY, der.to_vec())
}

fn bump_version(mut der: Vec<u8>) -> Vec<u8> {
    der[4] = 2;
    der
}

/// How many wrong combinations the matrix holds. Raise it when adding rows; it must never fall.
const EXPECTED_ROWS: usize = 62;

#[test]
fn refusal_matrix() {
    let f = Fixture::new();
    let rows: Vec<Row> = tls_rows(&f).into_iter().chain(ssh_rows(&f)).collect();
    let mut failures = Vec::new();
    for (name, outcome, expected) in &rows {
        match outcome {
            Ok(()) => failures.push(format!("{name}: ACCEPTED")),
            Err(r) if !expected(r) => {
                failures.push(format!("{name}: refused with the wrong error {r:?}"))
            }
            Err(r) => {
                let message = match r {
                    Refusal::Tls(e) => e.to_string(),
                    Refusal::Ssh(e) => e.to_string(),
                };
                assert!(!message.is_empty(), "{name}: empty message");
            }
        }
    }
    assert!(
        failures.is_empty(),
        "matrix failures:\n{}",
        failures.join("\n")
    );
    let mut names: Vec<_> = rows.iter().map(|r| r.0).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), rows.len(), "row names must be distinct");
    assert_eq!(rows.len(), EXPECTED_ROWS, "the refusal matrix changed size");
}

#[test]
fn every_verifier_accepts_the_right_certificate() {
    let f = Fixture::new();
    let (i, a) = (&f.w.instance, &f.w.a);
    let checks: Vec<(&str, Check)> = vec![
        (
            "instance relay",
            f.instance_relay(&f.relay_client(&i.pki_client, "a", now())),
        ),
        (
            "instance relay, other org",
            f.instance_relay(&f.relay_client(&i.pki_client, "b", now())),
        ),
        (
            "org relay",
            f.org_a_relay(&f.relay_client(&a.pki_client, "a", now())),
        ),
        (
            "platform to relay",
            f.platform_to_instance_relay(&f.relay_server(&i.pki_server, now())),
        ),
        (
            "gateway",
            f.gateway_a_g1(&f.session(&a.gateway_client, "a", "g1", now())),
        ),
        (
            "platform to gateway",
            f.platform_to_a_g1(&f.gateway_server(&a.gateway_server, "g1", now())),
        ),
        (
            "instance relay ssh",
            f.instance_relay_ssh(&f.user_cert(&i.ssh_client, "a", now())),
        ),
        (
            "org relay ssh",
            f.org_a_relay_ssh(&f.user_cert(&a.ssh_client, "a", now())),
        ),
        (
            "gateway to relay ssh",
            f.gateway_checks_instance_relay(&f.host_cert(&i.ssh_server, RELAY_HOST, now())),
        ),
    ];
    for (name, outcome) in checks {
        assert!(
            outcome.is_ok(),
            "{name} refused the right certificate: {outcome:?}"
        );
    }
}

#[test]
fn backdating_accepts_a_verifier_clock_slightly_behind() {
    let f = Fixture::new();
    let cert = f.session(&f.w.a.gateway_client, "a", "g1", now());
    let v = GatewayClientVerifier::new(
        f.w.a.gateway_client.certificate().clone(),
        org("a"),
        gw("g1"),
    )
    .unwrap();
    assert!(v
        .verify(&cert, now() - std::time::Duration::from_secs(60))
        .is_ok());
    assert!(matches!(
        v.verify(&cert, now() - std::time::Duration::from_secs(600)),
        Err(TlsError::NotYetValid { .. })
    ));
}
