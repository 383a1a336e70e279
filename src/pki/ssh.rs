//! OpenSSH certificate authorities (ssh-key) and the certificates they issue.
//!
//! Key ids carry the certified identity in a fixed, versioned form that [`crate::sshcert`] parses
//! strictly:
//! - gateway user certificates: `postern:v1:gateway:<org>:<gateway>`, principal `<gateway>`;
//! - relay host certificates: `postern:v1:relay:<relay>`, principals the relay's hostnames.
//!
//! Identifiers cannot contain `:` (see [`crate::id`]), so the split is unambiguous.

use std::time::SystemTime;

use rand_core::OsRng;
use ssh_key::certificate::{Builder, CertType, Certificate};
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};

use super::{AuthorityKind, AuthorityName, Lifetime, PkiError};
use crate::id::{GatewayId, OrgId, RelayId};

const GATEWAY_PREFIX: &str = "postern:v1:gateway:";
const RELAY_PREFIX: &str = "postern:v1:relay:";

/// The key id of a gateway's user certificate.
pub fn gateway_key_id(org: &OrgId, gateway: &GatewayId) -> String {
    format!("{GATEWAY_PREFIX}{org}:{gateway}")
}

/// Parses a gateway key id; `None` unless it is exactly the form [`gateway_key_id`] writes.
pub fn parse_gateway_key_id(key_id: &str) -> Option<(OrgId, GatewayId)> {
    let (org, gateway) = key_id.strip_prefix(GATEWAY_PREFIX)?.split_once(':')?;
    Some((OrgId::new(org).ok()?, GatewayId::new(gateway).ok()?))
}

/// The key id of a relay's host certificate.
pub fn relay_key_id(relay: &RelayId) -> String {
    format!("{RELAY_PREFIX}{relay}")
}

/// Parses a relay key id; `None` unless it is exactly the form [`relay_key_id`] writes.
pub fn parse_relay_key_id(key_id: &str) -> Option<RelayId> {
    RelayId::new(key_id.strip_prefix(RELAY_PREFIX)?).ok()
}

/// An OpenSSH certificate authority (Ed25519).
pub struct SshAuthority {
    name: AuthorityName,
    key: PrivateKey,
}

impl std::fmt::Debug for SshAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshAuthority")
            .field("name", &self.name.to_string())
            .field(
                "fingerprint",
                &self.key.fingerprint(HashAlg::Sha256).to_string(),
            )
            .finish_non_exhaustive()
    }
}

fn ssh_err(e: ssh_key::Error) -> PkiError {
    PkiError::Crypto(e.to_string())
}

impl SshAuthority {
    /// Creates a new authority with a fresh Ed25519 key.
    pub fn create(name: AuthorityName) -> Result<Self, PkiError> {
        if !name.kind.is_ssh() {
            return Err(PkiError::Invalid(format!(
                "{name} is an X.509 authority, not OpenSSH"
            )));
        }
        let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(ssh_err)?;
        key.set_comment(name.to_string());
        Ok(Self { name, key })
    }

    /// Loads an authority from its OpenSSH private key.
    pub fn load(name: AuthorityName, openssh_private: &str) -> Result<Self, PkiError> {
        let key = PrivateKey::from_openssh(openssh_private)
            .map_err(|e| PkiError::Format(format!("{name} private key: {e}")))?;
        if key.algorithm() != Algorithm::Ed25519 || key.is_encrypted() {
            return Err(PkiError::Format(format!(
                "{name} private key must be an unencrypted Ed25519 key, found {}",
                key.algorithm()
            )));
        }
        Ok(Self { name, key })
    }

    /// Which authority this is.
    pub fn name(&self) -> &AuthorityName {
        &self.name
    }

    /// The CA public key: what `TrustedUserCAKeys` or `@cert-authority` lines hold.
    pub fn public_key(&self) -> &PublicKey {
        self.key.public_key()
    }

    /// The CA's SHA-256 fingerprint, as verifiers pin it.
    pub fn fingerprint(&self) -> ssh_key::Fingerprint {
        self.key.fingerprint(HashAlg::Sha256)
    }

    /// The private key in OpenSSH format, for sealing. Never log it.
    pub(crate) fn private_openssh(&self) -> Result<String, PkiError> {
        Ok(self
            .key
            .to_openssh(LineEnding::LF)
            .map_err(ssh_err)?
            .to_string())
    }

    /// Starts a certificate for `subject` valid over `life` at `now`. Crate-internal so tests can
    /// shape deliberately wrong certificates; the typed issuers below are the public way.
    pub(crate) fn builder(
        &self,
        subject: &PublicKey,
        now: SystemTime,
        life: Lifetime,
    ) -> Result<Builder, PkiError> {
        if subject.algorithm() != Algorithm::Ed25519
            && subject.algorithm()
                != (Algorithm::Ecdsa {
                    curve: ssh_key::EcdsaCurve::NistP256,
                })
        {
            return Err(PkiError::Subject(format!(
                "SSH key algorithm {} is not accepted; expected ssh-ed25519 or ecdsa-sha2-nistp256",
                subject.algorithm()
            )));
        }
        let (start, end) = life.window(now)?;
        let mut b =
            Builder::new_with_random_nonce(&mut OsRng, subject.key_data().clone(), start, end)
                .map_err(ssh_err)?;
        b.serial(rand_core::RngCore::next_u64(&mut OsRng))
            .map_err(ssh_err)?;
        Ok(b)
    }

    /// Signs a finished builder with this authority.
    pub(crate) fn sign(&self, builder: Builder) -> Result<Certificate, PkiError> {
        builder.sign(&self.key).map_err(ssh_err)
    }

    /// A gateway's user certificate: principal = gateway id, org and gateway in the key id, and
    /// `permit-port-forwarding` as its only extension. Issued by a relay SSH Client CA.
    pub fn issue_gateway_user(
        &self,
        subject: &PublicKey,
        org: &OrgId,
        gateway: &GatewayId,
        now: SystemTime,
        life: Lifetime,
    ) -> Result<Certificate, PkiError> {
        self.name.require(AuthorityKind::RelaySshClient)?;
        self.name.require_org(org)?;
        let mut b = self.builder(subject, now, life)?;
        b.cert_type(CertType::User).map_err(ssh_err)?;
        b.key_id(gateway_key_id(org, gateway)).map_err(ssh_err)?;
        b.valid_principal(gateway.as_str()).map_err(ssh_err)?;
        b.extension("permit-port-forwarding", "").map_err(ssh_err)?;
        self.sign(b)
    }

    /// A relay's host certificate: its hostnames as principals. Issued by a relay SSH Server CA.
    pub fn issue_relay_host(
        &self,
        subject: &PublicKey,
        relay: &RelayId,
        hostnames: &[String],
        now: SystemTime,
        life: Lifetime,
    ) -> Result<Certificate, PkiError> {
        self.name.require(AuthorityKind::RelaySshServer)?;
        if hostnames.is_empty() {
            return Err(PkiError::Invalid(format!("relay {relay} has no hostnames")));
        }
        let mut b = self.builder(subject, now, life)?;
        b.cert_type(CertType::Host).map_err(ssh_err)?;
        b.key_id(relay_key_id(relay)).map_err(ssh_err)?;
        for h in hostnames {
            if h.is_empty() || h.contains(',') || h.contains('*') || h.contains(char::is_whitespace)
            {
                return Err(PkiError::Invalid(format!(
                    "relay hostname {h:?} is not a plain host name"
                )));
            }
            b.valid_principal(h.as_str()).map_err(ssh_err)?;
        }
        self.sign(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_round_trip_and_are_strict() {
        let org = OrgId::new("acme").unwrap();
        let gw = GatewayId::new("edge-7").unwrap();
        assert_eq!(
            parse_gateway_key_id(&gateway_key_id(&org, &gw)),
            Some((org, gw))
        );
        for bad in [
            "postern:v1:gateway:acme",
            "postern:v1:gateway:acme:edge:7",
            "postern:v2:gateway:acme:edge-7",
            "postern:v1:gateway:ACME:edge-7",
            "xpostern:v1:gateway:acme:edge-7",
        ] {
            assert_eq!(parse_gateway_key_id(bad), None, "{bad}");
        }
        let r = RelayId::new("r1").unwrap();
        assert_eq!(parse_relay_key_id(&relay_key_id(&r)), Some(r));
        assert_eq!(parse_relay_key_id("postern:v1:relay:r1:x"), None);
    }
}
