//! X.509 authorities (rcgen) and the leaves they issue.

use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SerialNumber, SubjectPublicKeyInfo,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, ServerName};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ext::{GatewayIdentity, Permission};
use super::{AuthorityKind, AuthorityName, Lifetime, PkiError, Scope};
use crate::id::{gateway_pin_name, GatewayId, RelayId};

/// A subject's public key, the only thing of the subject's that issuance uses.
///
/// Only Ed25519 and ECDSA P-256 keys are accepted.
#[derive(Debug, Clone)]
pub struct SubjectKey {
    spki: SubjectPublicKeyInfo,
}

impl SubjectKey {
    /// From a DER `SubjectPublicKeyInfo`.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, PkiError> {
        let spki =
            SubjectPublicKeyInfo::from_der(der).map_err(|e| PkiError::Subject(e.to_string()))?;
        Self::checked(spki)
    }

    /// From a PEM `PUBLIC KEY`.
    pub fn from_spki_pem(pem_text: &str) -> Result<Self, PkiError> {
        let spki = SubjectPublicKeyInfo::from_pem(pem_text)
            .map_err(|e| PkiError::Subject(e.to_string()))?;
        Self::checked(spki)
    }

    /// From a PEM `CERTIFICATE REQUEST`, after checking its signature (proof of possession).
    /// Only the public key is used; names and extensions in the request are ignored.
    pub fn from_csr_pem(pem_text: &str) -> Result<Self, PkiError> {
        let parsed =
            pem::parse(pem_text).map_err(|e| PkiError::Subject(format!("CSR PEM: {e}")))?;
        if parsed.tag() != "CERTIFICATE REQUEST" {
            return Err(PkiError::Subject(format!(
                "expected PEM label \"CERTIFICATE REQUEST\", found {:?}",
                parsed.tag()
            )));
        }
        Self::from_csr_der(parsed.contents())
    }

    /// From a DER certificate request, after checking its signature.
    pub fn from_csr_der(der: &[u8]) -> Result<Self, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
                .map_err(|e| PkiError::Subject(format!("certificate request: {e}")))?;
        Self::from_spki_der(&csr.public_key.subject_public_key_info())
    }

    /// The public half of a key pair held by the caller.
    pub fn from_key_pair(key: &KeyPair) -> Result<Self, PkiError> {
        Self::from_spki_der(&key.subject_public_key_info())
    }

    fn checked(spki: SubjectPublicKeyInfo) -> Result<Self, PkiError> {
        let alg = spki.algorithm();
        if alg == &rcgen::PKCS_ED25519 || alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            Ok(Self { spki })
        } else {
            Err(PkiError::Subject(format!(
                "key algorithm {alg:?} is not accepted; expected Ed25519 or ECDSA P-256"
            )))
        }
    }
}

impl PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        self.spki.der_bytes()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.spki.algorithm()
    }
}

/// An X.509 certificate authority: its self-signed certificate and its private key.
pub struct X509Authority {
    name: AuthorityName,
    cert: CertificateDer<'static>,
    key_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for X509Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Authority")
            .field("name", &self.name.to_string())
            .finish_non_exhaustive()
    }
}

fn crypto(e: rcgen::Error) -> PkiError {
    PkiError::Crypto(e.to_string())
}

fn offset_time(unix: u64) -> Result<time::OffsetDateTime, PkiError> {
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .ok_or_else(|| PkiError::Invalid(format!("time {unix} is out of range")))
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Crypto("system random generator failed".into()))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // positive and exactly 16 bytes long
    Ok(SerialNumber::from_slice(&bytes))
}

fn base_params(
    common_name: &str,
    now: SystemTime,
    life: Lifetime,
) -> Result<CertificateParams, PkiError> {
    let (start, end) = life.window(now)?;
    let mut params = CertificateParams::default();
    params.not_before = offset_time(start)?;
    params.not_after = offset_time(end)?;
    params.serial_number = Some(random_serial()?);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "postern");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    Ok(params)
}

fn public_key_of(cert: &CertificateDer<'_>) -> Result<Vec<u8>, PkiError> {
    let (_, parsed) = X509Certificate::from_der(cert)
        .map_err(|e| PkiError::Format(format!("CA certificate: {e}")))?;
    Ok(parsed.public_key().raw.to_vec())
}

impl X509Authority {
    /// Creates a new authority with a fresh Ed25519 key and a self-signed certificate.
    pub fn create(name: AuthorityName, now: SystemTime, life: Lifetime) -> Result<Self, PkiError> {
        if name.kind.is_ssh() {
            return Err(PkiError::Invalid(format!(
                "{name} is an OpenSSH authority, not X.509"
            )));
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(crypto)?;
        let mut params = base_params(&name.to_string(), now, life)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(crypto)?.der().clone();
        let key_der = key.serialize_der();
        Ok(Self {
            name,
            cert,
            key_der,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an authority from its certificate and PKCS#8 private key, checking they belong
    /// together.
    pub fn load(
        name: AuthorityName,
        cert: CertificateDer<'static>,
        key_der: Vec<u8>,
    ) -> Result<Self, PkiError> {
        let key = KeyPair::try_from(key_der.as_slice())
            .map_err(|e| PkiError::Format(format!("{name} private key: {e}")))?;
        if public_key_of(&cert)? != key.subject_public_key_info() {
            return Err(PkiError::KeyMismatch {
                authority: name.to_string(),
            });
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(crypto)?;
        Ok(Self {
            name,
            cert,
            key_der,
            issuer,
        })
    }

    /// Which authority this is.
    pub fn name(&self) -> &AuthorityName {
        &self.name
    }

    /// The authority's certificate: what verifiers trust.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificate as PEM.
    pub fn certificate_pem(&self) -> String {
        pem::encode(&pem::Pem::new("CERTIFICATE", self.cert.to_vec()))
    }

    /// The PKCS#8 private key, for sealing. Never log it.
    pub(crate) fn key_der(&self) -> &[u8] {
        &self.key_der
    }

    /// Signs `params` for `subject`. Crate-internal so that only the typed issuers below, and
    /// tests that need deliberately wrong certificates, can shape a leaf.
    pub(crate) fn sign(
        &self,
        params: &CertificateParams,
        subject: &SubjectKey,
    ) -> Result<CertificateDer<'static>, PkiError> {
        Ok(params
            .signed_by(subject, &self.issuer)
            .map_err(crypto)?
            .der()
            .clone())
    }

    pub(crate) fn leaf(
        &self,
        common_name: &str,
        usage: ExtendedKeyUsagePurpose,
        now: SystemTime,
        life: Lifetime,
    ) -> Result<CertificateParams, PkiError> {
        let mut params = base_params(common_name, now, life)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    /// A relay's TLS server certificate for its hostnames (DNS names or IP addresses).
    /// Issued by a relay PKI Server CA.
    pub fn issue_relay_server(
        &self,
        subject: &SubjectKey,
        relay: &RelayId,
        hostnames: &[String],
        now: SystemTime,
        life: Lifetime,
    ) -> Result<CertificateDer<'static>, PkiError> {
        self.name.require(AuthorityKind::RelayPkiServer)?;
        if hostnames.is_empty() {
            return Err(PkiError::Invalid(format!("relay {relay} has no hostnames")));
        }
        for h in hostnames {
            ServerName::try_from(h.as_str()).map_err(|_| {
                PkiError::Invalid(format!("relay hostname {h:?} is not a DNS name or IP"))
            })?;
        }
        let mut params = self.leaf(
            relay.as_str(),
            ExtendedKeyUsagePurpose::ServerAuth,
            now,
            life,
        )?;
        params.subject_alt_names = CertificateParams::new(hostnames.to_vec())
            .map_err(crypto)?
            .subject_alt_names;
        self.sign(&params, subject)
    }

    /// A gateway's TLS server certificate: its pin name as the only SAN, and its (org, gateway)
    /// identity. Issued by the org's Gateway Server CA.
    pub fn issue_gateway_server(
        &self,
        subject: &SubjectKey,
        gateway: &GatewayId,
        now: SystemTime,
        life: Lifetime,
    ) -> Result<CertificateDer<'static>, PkiError> {
        self.name.require(AuthorityKind::GatewayServer)?;
        let Scope::Org(org) = &self.name.scope else {
            return Err(PkiError::Invalid(
                "gateway server CA must belong to an org".into(),
            ));
        };
        let identity = GatewayIdentity {
            org: org.clone(),
            gateway: gateway.clone(),
        };
        let pin = gateway_pin_name(org, gateway);
        let mut params = self.leaf(&pin, ExtendedKeyUsagePurpose::ServerAuth, now, life)?;
        params.subject_alt_names = CertificateParams::new(vec![pin])
            .map_err(crypto)?
            .subject_alt_names;
        params.custom_extensions = vec![identity_extension(&identity)];
        self.sign(&params, subject)
    }

    /// The platform's client certificate toward a relay, naming the (org, gateway) to reach.
    /// Issued by a relay PKI Client CA (instance, or the gateway's own org).
    pub fn issue_relay_client(
        &self,
        subject: &SubjectKey,
        identity: &GatewayIdentity,
        now: SystemTime,
        life: Lifetime,
    ) -> Result<CertificateDer<'static>, PkiError> {
        self.name.require(AuthorityKind::RelayPkiClient)?;
        self.name.require_org(&identity.org)?;
        let cn = format!("{}/{}", identity.org, identity.gateway);
        let mut params = self.leaf(&cn, ExtendedKeyUsagePurpose::ClientAuth, now, life)?;
        params.custom_extensions = vec![identity_extension(identity)];
        self.sign(&params, subject)
    }

    /// The platform's ephemeral client certificate toward one gateway, carrying the permission.
    /// Issued by that org's Gateway Client CA.
    pub fn issue_gateway_client(
        &self,
        subject: &SubjectKey,
        permission: &Permission,
        now: SystemTime,
        life: Lifetime,
    ) -> Result<CertificateDer<'static>, PkiError> {
        self.name.require(AuthorityKind::GatewayClient)?;
        if !matches!(&self.name.scope, Scope::Org(_)) {
            return Err(PkiError::Invalid(
                "gateway client CA must belong to an org".into(),
            ));
        }
        self.name.require_org(&permission.org)?;
        let cn = format!("session {}", permission.session_id);
        let mut params = self.leaf(&cn, ExtendedKeyUsagePurpose::ClientAuth, now, life)?;
        params.custom_extensions = vec![CustomExtension::from_oid_content(
            super::ext::OID_PERMISSION,
            permission.to_der(),
        )];
        self.sign(&params, subject)
    }
}

fn identity_extension(identity: &GatewayIdentity) -> CustomExtension {
    CustomExtension::from_oid_content(super::ext::OID_GATEWAY_IDENTITY, identity.to_der())
}
