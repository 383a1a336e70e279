//! The relay's side of the platform: enrolment, renewal, heartbeats and revocations.
//! Keys and the pinned platform client come from [`crate::enrol`].

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{ssh_config, Limits, Live, Shared};
use crate::clock::unix_now;
use crate::enrol::{bad, der, EnrolError, Keys};
use crate::id::{GatewayId, OrgId, RelayId};
use crate::pki::Scope;
use crate::platform::api::{RelayCredentials, RelayHeartbeat, RelayRegistration};
use crate::platform::client::{ApiClient, ClientError};
use crate::platform::token::Enrolment;
use crate::sshcert::GatewayCertPolicy;
use crate::tls::relay::{RelayClientVerifier, RelayTlsServer};
use crate::tls::Identity;

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

/// The registration body for this relay's keys.
pub fn registration(keys: &Keys, settings: &Settings) -> Result<RelayRegistration, EnrolError> {
    Ok(RelayRegistration {
        ssh_host_key: keys.ssh_public()?,
        tls_public_key: keys.tls_public_pem(),
        hostnames: settings.hostnames.clone(),
        ssh_address: settings.ssh_address.clone(),
        tls_address: settings.tls_address.clone(),
        org: None,
    })
}

/// Who the platform says this relay is.
pub fn scope_of(creds: &RelayCredentials) -> Result<(RelayId, Scope), EnrolError> {
    let name = RelayId::new(&creds.relay).map_err(|e| bad("relay name", e))?;
    let scope = match &creds.org {
        None => Scope::Instance,
        Some(org) => Scope::Org(OrgId::new(org).map_err(|e| bad("org", e))?),
    };
    Ok((name, scope))
}

/// Builds what the relay presents and trusts from the platform's answer and its own keys.
pub fn live_from(
    creds: &RelayCredentials,
    keys: &Keys,
    limits: &Limits,
) -> Result<Live, EnrolError> {
    let (_, scope) = scope_of(creds)?;
    let host_key = russh::keys::PrivateKey::from_openssh(keys.ssh_private_openssh()?.as_bytes())
        .map_err(|e| bad("host key", e))?;
    let host_cert = russh::keys::Certificate::from_openssh(&creds.ssh_host_certificate)
        .map_err(|e| bad("ssh_host_certificate", e))?;
    let chain = creds
        .tls_chain
        .iter()
        .map(|p| der(p, "tls_chain"))
        .collect::<Result<Vec<_>, _>>()?;
    let identity = Identity {
        chain,
        key: keys.tls_private(),
    };
    let client_ca = der(&creds.tls_client_ca, "tls_client_ca")?;
    let verifier =
        RelayClientVerifier::new(client_ca, scope.clone()).map_err(|e| bad("tls_client_ca", e))?;
    let tls = RelayTlsServer::new(identity, verifier).map_err(|e| bad("tls_chain", e))?;
    let user_ca =
        ssh_key::PublicKey::from_openssh(&creds.ssh_user_ca).map_err(|e| bad("ssh_user_ca", e))?;
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
