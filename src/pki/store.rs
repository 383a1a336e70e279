//! The authorities on disk.
//!
//! ```text
//! <dir>/instance/<slug>.crt | .pub      certificate (X.509 PEM) or public key (OpenSSH), 0644
//! <dir>/instance/<slug>.key             sealed private key, 0600
//! <dir>/org/<org>/<slug>.crt | .pub | .key
//! ```
//! Directories are created 0700. Creating never overwrites: an existing authority is an error,
//! because replacing a CA silently would orphan every certificate it issued.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;

use super::seal::{write_private, write_public};
use super::{
    AuthorityKind, AuthorityName, Lifetime, PkiError, Scope, SealingKey, SshAuthority,
    X509Authority,
};
use crate::id::OrgId;

/// The four instance authorities (shared relays).
#[derive(Debug)]
pub struct InstanceAuthorities {
    /// Signs gateway user certificates for instance relays.
    pub relay_ssh_client: SshAuthority,
    /// Signs instance relays' host certificates.
    pub relay_ssh_server: SshAuthority,
    /// Signs the platform's client certificates toward instance relays.
    pub relay_pki_client: X509Authority,
    /// Signs instance relays' TLS server certificates.
    pub relay_pki_server: X509Authority,
}

/// The six authorities of one organisation.
#[derive(Debug)]
pub struct OrgAuthorities {
    /// Signs the platform's ephemeral client certificates toward this org's gateways.
    pub gateway_client: X509Authority,
    /// Signs this org's gateways' TLS server certificates.
    pub gateway_server: X509Authority,
    /// Signs gateway user certificates for this org's own relays.
    pub relay_ssh_client: SshAuthority,
    /// Signs this org's relays' host certificates.
    pub relay_ssh_server: SshAuthority,
    /// Signs the platform's client certificates toward this org's relays.
    pub relay_pki_client: X509Authority,
    /// Signs this org's relays' TLS server certificates.
    pub relay_pki_server: X509Authority,
}

/// A directory of authorities, their private keys sealed under one [`SealingKey`].
#[derive(Debug)]
pub struct AuthorityStore {
    dir: PathBuf,
    key: SealingKey,
}

impl AuthorityStore {
    /// A store rooted at `dir` (created on first write).
    pub fn new(dir: &Path, key: SealingKey) -> Self {
        Self {
            dir: dir.to_owned(),
            key,
        }
    }

    fn scope_dir(&self, scope: &Scope) -> PathBuf {
        match scope {
            Scope::Instance => self.dir.join("instance"),
            Scope::Org(org) => self.dir.join("org").join(org.as_str()),
        }
    }

    fn paths(&self, name: &AuthorityName) -> (PathBuf, PathBuf) {
        let dir = self.scope_dir(&name.scope);
        let public = if name.kind.is_ssh() { "pub" } else { "crt" };
        let slug = name.kind.slug();
        (
            dir.join(format!("{slug}.{public}")),
            dir.join(format!("{slug}.key")),
        )
    }

    fn create_one(
        &self,
        name: AuthorityName,
        now: SystemTime,
        life: Lifetime,
    ) -> Result<(), PkiError> {
        let (public_path, key_path) = self.paths(&name);
        for p in [&public_path, &key_path] {
            if p.exists() {
                return Err(PkiError::AlreadyExists(p.clone()));
            }
        }
        let slot = name.slot();
        let (public, private) = if name.kind.is_ssh() {
            let ca = SshAuthority::create(name)?;
            let public = ca
                .public_key()
                .to_openssh()
                .map_err(|e| PkiError::Crypto(e.to_string()))?;
            let private = ca.private_openssh()?;
            (public + "\n", private.into_bytes())
        } else {
            let ca = X509Authority::create(name, now, life)?;
            (ca.certificate_pem(), ca.key_der().to_vec())
        };
        write_private(&key_path, self.key.seal(&slot, &private)?.as_bytes())?;
        write_public(&public_path, public.as_bytes())
    }

    fn load_ssh(&self, name: AuthorityName) -> Result<SshAuthority, PkiError> {
        let (public_path, key_path) = self.paths(&name);
        let private = self.key.open(&name.slot(), &read(&key_path)?)?;
        let private = String::from_utf8(private)
            .map_err(|_| PkiError::Format(format!("{name} private key is not text")))?;
        let ca = SshAuthority::load(name, &private)?;
        let public = ssh_key::PublicKey::from_openssh(read(&public_path)?.trim())
            .map_err(|e| PkiError::Format(format!("{}: {e}", public_path.display())))?;
        if public.key_data() != ca.public_key().key_data() {
            return Err(PkiError::KeyMismatch {
                authority: ca.name().to_string(),
            });
        }
        Ok(ca)
    }

    fn load_x509(&self, name: AuthorityName) -> Result<X509Authority, PkiError> {
        let (public_path, key_path) = self.paths(&name);
        let private = self.key.open(&name.slot(), &read(&key_path)?)?;
        let cert = pem::parse(read(&public_path)?)
            .map_err(|e| PkiError::Format(format!("{}: {e}", public_path.display())))?;
        if cert.tag() != "CERTIFICATE" {
            return Err(PkiError::Format(format!(
                "{}: expected a CERTIFICATE, found {:?}",
                public_path.display(),
                cert.tag()
            )));
        }
        X509Authority::load(name, CertificateDer::from(cert.into_contents()), private)
    }

    /// Creates the four instance authorities. Fails if any already exists.
    pub fn create_instance(
        &self,
        now: SystemTime,
        life: Lifetime,
    ) -> Result<InstanceAuthorities, PkiError> {
        make_dir(&self.scope_dir(&Scope::Instance))?;
        for kind in AuthorityKind::INSTANCE {
            self.create_one(
                AuthorityName {
                    scope: Scope::Instance,
                    kind,
                },
                now,
                life,
            )?;
        }
        self.load_instance()
    }

    /// Creates the six authorities of `org`. Fails if any already exists.
    pub fn create_org(
        &self,
        org: &OrgId,
        now: SystemTime,
        life: Lifetime,
    ) -> Result<OrgAuthorities, PkiError> {
        let scope = Scope::Org(org.clone());
        make_dir(&self.scope_dir(&scope))?;
        for kind in AuthorityKind::ORG {
            self.create_one(
                AuthorityName {
                    scope: scope.clone(),
                    kind,
                },
                now,
                life,
            )?;
        }
        self.load_org(org)
    }

    /// Loads the four instance authorities.
    pub fn load_instance(&self) -> Result<InstanceAuthorities, PkiError> {
        let name = |kind| AuthorityName {
            scope: Scope::Instance,
            kind,
        };
        Ok(InstanceAuthorities {
            relay_ssh_client: self.load_ssh(name(AuthorityKind::RelaySshClient))?,
            relay_ssh_server: self.load_ssh(name(AuthorityKind::RelaySshServer))?,
            relay_pki_client: self.load_x509(name(AuthorityKind::RelayPkiClient))?,
            relay_pki_server: self.load_x509(name(AuthorityKind::RelayPkiServer))?,
        })
    }

    /// Loads the six authorities of `org`.
    pub fn load_org(&self, org: &OrgId) -> Result<OrgAuthorities, PkiError> {
        let name = |kind| AuthorityName {
            scope: Scope::Org(org.clone()),
            kind,
        };
        Ok(OrgAuthorities {
            gateway_client: self.load_x509(name(AuthorityKind::GatewayClient))?,
            gateway_server: self.load_x509(name(AuthorityKind::GatewayServer))?,
            relay_ssh_client: self.load_ssh(name(AuthorityKind::RelaySshClient))?,
            relay_ssh_server: self.load_ssh(name(AuthorityKind::RelaySshServer))?,
            relay_pki_client: self.load_x509(name(AuthorityKind::RelayPkiClient))?,
            relay_pki_server: self.load_x509(name(AuthorityKind::RelayPkiServer))?,
        })
    }
}

fn read(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|e| PkiError::io("read", path, e))
}

fn make_dir(path: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| PkiError::io("create directory", path, e))
}
