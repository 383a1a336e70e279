//! The relay's side of the platform: its keys, enrolment, renewal, heartbeats and revocations.
//!
//! Keys are generated on the relay and never leave it:
//! ```text
//! <state>/ssh_host_ed25519_key   OpenSSH private key, 0600
//! <state>/tls_key.pem            PKCS#8 private key, 0600
//! <state>/api-ca.pem             the platform API CA pinned at enrolment
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::KeyPair;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{ssh_config, Limits, Live, Shared};
use crate::clock::unix_now;
use crate::id::{GatewayId, OrgId, RelayId};
use crate::pki::{write_private, write_public, Scope};
use crate::platform::api::{RelayCredentials, RelayHeartbeat, RelayRegistration};
use crate::platform::client::{ApiClient, ClientError};
use crate::platform::token::{sha256, Enrolment};
use crate::sshcert::GatewayCertPolicy;
use crate::tls::relay::{RelayClientVerifier, RelayTlsServer};
use crate::tls::Identity;

/// A failure setting the relay up.
#[derive(Debug)]
#[non_exhaustive]
pub enum AgentError {
    /// A state file could not be read or written.
    State(String),
    /// The platform could not be reached or refused.
    Platform(ClientError),
    /// The platform's answer is not usable.
    Credentials(String),
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::State(m) => write!(f, "relay state: {m}"),
            Self::Platform(e) => write!(f, "{e}"),
            Self::Credentials(m) => write!(f, "credentials from the platform: {m}"),
        }
    }
}

impl std::error::Error for AgentError {}

impl From<ClientError> for AgentError {
    fn from(e: ClientError) -> Self {
        Self::Platform(e)
    }
}

fn creds_err(what: &str) -> impl Fn(&dyn fmt::Display) -> AgentError + '_ {
    move |e| AgentError::Credentials(format!("{what}: {e}"))
}

/// How this relay enrols and what it advertises.
#[derive(Debug, Clone)]
pub struct Settings {
    /// State directory.
    pub state: PathBuf,
    /// `https://host:port` of the platform API.
    pub platform_url: String,
    /// The enrolment string (token and API pin).
    pub enrolment: Enrolment,
    /// Names in the relay's certificates.
    pub hostnames: Vec<String>,
    /// `host:port` gateways dial.
    pub ssh_address: String,
    /// `host:port` platforms dial.
    pub tls_address: String,
}

/// The relay's private keys.
pub struct Keys {
    ssh: ssh_key::PrivateKey,
    tls: KeyPair,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

fn read(path: &Path) -> Result<Option<String>, AgentError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::State(format!("{}: {e}", path.display()))),
    }
}

fn state_err(e: impl fmt::Display) -> AgentError {
    AgentError::State(e.to_string())
}

impl Keys {
    /// Loads the keys from `dir`, generating (0600) any that is missing.
    pub fn load_or_create(dir: &Path) -> Result<Self, AgentError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| AgentError::State(format!("{}: {e}", dir.display())))?;
        let ssh_path = dir.join("ssh_host_ed25519_key");
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

    /// The registration body for these keys.
    pub fn registration(&self, settings: &Settings) -> Result<RelayRegistration, AgentError> {
        Ok(RelayRegistration {
            ssh_host_key: self.ssh.public_key().to_openssh().map_err(state_err)?,
            tls_public_key: self.tls.public_key_pem(),
            hostnames: settings.hostnames.clone(),
            ssh_address: settings.ssh_address.clone(),
            tls_address: settings.tls_address.clone(),
            org: None,
        })
    }
}

/// A client for the platform: the stored API CA if it still matches the pin, else enrolment
/// (which checks the pin) and the CA stored for next time.
pub fn api_client(settings: &Settings) -> Result<ApiClient, AgentError> {
    let ca_path = settings.state.join("api-ca.pem");
    if let Some(text) = read(&ca_path)? {
        let der = pem::parse(&text).map_err(state_err)?.into_contents();
        if sha256(&der) == settings.enrolment.api_ca {
            let token = settings.enrolment.token.clone();
            return Ok(ApiClient::pinned(
                &settings.platform_url,
                token,
                CertificateDer::from(der),
            )?);
        }
    }
    let client = ApiClient::enrol(&settings.platform_url, &settings.enrolment)?;
    let pem_text = pem::encode(&pem::Pem::new("CERTIFICATE", client.api_ca().to_vec()));
    write_public(&ca_path, pem_text.as_bytes()).map_err(state_err)?;
    Ok(client)
}

fn der(pem_text: &str, what: &str) -> Result<CertificateDer<'static>, AgentError> {
    let parsed = pem::parse(pem_text).map_err(|e| creds_err(what)(&e))?;
    Ok(CertificateDer::from(parsed.into_contents()))
}

/// Who the platform says this relay is.
pub fn scope_of(creds: &RelayCredentials) -> Result<(RelayId, Scope), AgentError> {
    let name = RelayId::new(&creds.relay).map_err(|e| creds_err("relay name")(&e))?;
    let scope = match &creds.org {
        None => Scope::Instance,
        Some(org) => Scope::Org(OrgId::new(org).map_err(|e| creds_err("org")(&e))?),
    };
    Ok((name, scope))
}

/// Builds what the relay presents and trusts from the platform's answer and its own keys.
pub fn live_from(
    creds: &RelayCredentials,
    keys: &Keys,
    limits: &Limits,
) -> Result<Live, AgentError> {
    let (_, scope) = scope_of(creds)?;
    let openssh = keys
        .ssh
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(state_err)?;
    let host_key = russh::keys::PrivateKey::from_openssh(openssh.as_bytes())
        .map_err(|e| creds_err("host key")(&e))?;
    let host_cert = russh::keys::Certificate::from_openssh(&creds.ssh_host_certificate)
        .map_err(|e| creds_err("ssh_host_certificate")(&e))?;
    let chain = creds
        .tls_chain
        .iter()
        .map(|p| der(p, "tls_chain"))
        .collect::<Result<Vec<_>, _>>()?;
    let identity = Identity {
        chain,
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(keys.tls.serialize_der())),
    };
    let client_ca = der(&creds.tls_client_ca, "tls_client_ca")?;
    let verifier = RelayClientVerifier::new(client_ca, scope.clone())
        .map_err(|e| creds_err("tls_client_ca")(&e))?;
    let tls = RelayTlsServer::new(identity, verifier).map_err(|e| creds_err("tls_chain")(&e))?;
    let user_ca = ssh_key::PublicKey::from_openssh(&creds.ssh_user_ca)
        .map_err(|e| creds_err("ssh_user_ca")(&e))?;
    Ok(Live {
        ssh: Arc::new(ssh_config(host_key, host_cert, limits)),
        tls,
        gateway_policy: GatewayCertPolicy::new(&user_ca, scope),
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ClientError::Unreachable(format!("API task failed: {e}"))))
}

/// Heartbeats, revocation polling and renewal, until the relay stops.
pub async fn run(
    shared: Arc<Shared>,
    client: Arc<ApiClient>,
    keys: Arc<Keys>,
    registration: RelayRegistration,
    first: RelayCredentials,
    limits: Limits,
) {
    let mut renew_after = first.renew_after;
    let mut interval = Duration::from_secs(first.heartbeat_secs.max(1));
    let mut stop = shared.stop.subscribe();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let tunnels = u64::try_from(shared.registry.tunnels()).unwrap_or(u64::MAX);
        let c = client.clone();
        match blocking(move || c.relay_heartbeat(&RelayHeartbeat { tunnels })).await {
            Ok(reply) => interval = Duration::from_secs(reply.heartbeat_secs.clamp(1, 300)),
            Err(e) => log::warn!("heartbeat to the platform failed: {e}"),
        }
        let c = client.clone();
        match blocking(move || c.revocations()).await {
            Ok(list) => {
                let revoked: HashSet<_> = list
                    .gateways
                    .iter()
                    .filter_map(|g| {
                        Some((OrgId::new(&g.org).ok()?, GatewayId::new(&g.gateway).ok()?))
                    })
                    .collect();
                shared.apply_revocations(revoked).await;
            }
            Err(e) => log::warn!("revocation poll failed (keeping the last list): {e}"),
        }
        if unix_now(SystemTime::now()) >= renew_after {
            let (c, reg) = (client.clone(), registration.clone());
            match blocking(move || c.relay_renew(&reg)).await {
                Ok(creds) => match live_from(&creds, &keys, &limits) {
                    Ok(live) => {
                        shared.replace(live);
                        renew_after = creds.renew_after;
                        log::info!(
                            "renewed certificates; next renewal at {}",
                            crate::clock::rfc3339(renew_after)
                        );
                    }
                    Err(e) => log::error!("renewed certificates are unusable: {e}"),
                },
                Err(e) => log::warn!("renewal failed (will retry): {e}"),
            }
        }
    }
}
