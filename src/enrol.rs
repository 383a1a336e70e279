//! What relays and gateways share on their side of the platform: their own keys, generated
//! on the machine and never sent anywhere, and a platform client pinned at enrolment.
//!
//! ```text
//! <state>/ssh_ed25519_key   OpenSSH private key, 0600
//! <state>/tls_key.pem       PKCS#8 private key, 0600
//! <state>/api-ca.pem        the platform API CA pinned at enrolment
//! ```

use std::fmt;
use std::path::Path;

use rcgen::KeyPair;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::pki::{write_private, write_public};
use crate::platform::client::{ApiClient, ClientError};
use crate::platform::token::{sha256, Enrolment};

/// A failure with local state or with the platform.
#[derive(Debug)]
#[non_exhaustive]
pub enum EnrolError {
    /// A state file could not be read, written or parsed.
    State(String),
    /// The platform could not be reached or refused.
    Platform(ClientError),
    /// The platform's answer is not usable.
    Credentials(String),
}

impl fmt::Display for EnrolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::State(m) => write!(f, "local state: {m}"),
            Self::Platform(e) => write!(f, "{e}"),
            Self::Credentials(m) => write!(f, "credentials from the platform: {m}"),
        }
    }
}

impl std::error::Error for EnrolError {}

impl From<ClientError> for EnrolError {
    fn from(e: ClientError) -> Self {
        Self::Platform(e)
    }
}

/// A `Credentials` error for `what`.
pub fn bad(what: &str, e: impl fmt::Display) -> EnrolError {
    EnrolError::Credentials(format!("{what}: {e}"))
}

fn state_err(e: impl fmt::Display) -> EnrolError {
    EnrolError::State(e.to_string())
}

fn read(path: &Path) -> Result<Option<String>, EnrolError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EnrolError::State(format!("{}: {e}", path.display()))),
    }
}

/// A machine's SSH and TLS private keys. `Debug` shows nothing of them.
pub struct Keys {
    ssh: ssh_key::PrivateKey,
    tls: KeyPair,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

impl Keys {
    /// Loads the keys from `dir` (created 0700 if missing), generating any missing key (0600).
    pub fn load_or_create(dir: &Path) -> Result<Self, EnrolError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| EnrolError::State(format!("{}: {e}", dir.display())))?;
        let ssh_path = dir.join("ssh_ed25519_key");
        let ssh = match read(&ssh_path)? {
            Some(text) => ssh_key::PrivateKey::from_openssh(&text).map_err(state_err)?,
            None => {
                let key =
                    ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)
                        .map_err(state_err)?;
                let text = key.to_openssh(ssh_key::LineEnding::LF).map_err(state_err)?;
                write_private(&ssh_path, text.as_bytes()).map_err(state_err)?;
                key
            }
        };
        let tls_path = dir.join("tls_key.pem");
        let tls = match read(&tls_path)? {
            Some(text) => KeyPair::from_pem(&text).map_err(state_err)?,
            None => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(state_err)?;
                write_private(&tls_path, key.serialize_pem().as_bytes()).map_err(state_err)?;
                key
            }
        };
        Ok(Self { ssh, tls })
    }

    /// The SSH public key, OpenSSH format.
    pub fn ssh_public(&self) -> Result<String, EnrolError> {
        self.ssh.public_key().to_openssh().map_err(state_err)
    }

    /// The SSH private key, OpenSSH PEM. Never log it.
    pub fn ssh_private_openssh(&self) -> Result<String, EnrolError> {
        Ok(self
            .ssh
            .to_openssh(ssh_key::LineEnding::LF)
            .map_err(state_err)?
            .to_string())
    }

    /// The TLS public key, PEM.
    pub fn tls_public_pem(&self) -> String {
        self.tls.public_key_pem()
    }

    /// The TLS private key for rustls.
    pub fn tls_private(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.tls.serialize_der()))
    }
}

/// A client for the platform at `url`: the CA stored in `state` if it still matches the pin in
/// `enrolment`, else a fresh enrolment (which checks the pin) whose CA is then stored.
pub fn api_client(state: &Path, url: &str, enrolment: &Enrolment) -> Result<ApiClient, EnrolError> {
    let ca_path = state.join("api-ca.pem");
    if let Some(text) = read(&ca_path)? {
        let der = pem::parse(&text).map_err(state_err)?.into_contents();
        if sha256(&der) == enrolment.api_ca {
            return Ok(ApiClient::pinned(
                url,
                enrolment.token.clone(),
                CertificateDer::from(der),
            )?);
        }
    }
    let client = ApiClient::enrol(url, enrolment)?;
    let pem_text = pem::encode(&pem::Pem::new("CERTIFICATE", client.api_ca().to_vec()));
    write_public(&ca_path, pem_text.as_bytes()).map_err(state_err)?;
    Ok(client)
}

/// The first certificate in a PEM text.
pub fn der(pem_text: &str, what: &str) -> Result<CertificateDer<'static>, EnrolError> {
    let parsed = pem::parse(pem_text).map_err(|e| bad(what, e))?;
    Ok(CertificateDer::from(parsed.into_contents()))
}
