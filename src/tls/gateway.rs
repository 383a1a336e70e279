//! The inner, end-to-end TLS session: platform ↔ gateway, through the relay's splice.
//!
//! TLS 1.3 only, ALPN naming the [`Mode`]. The gateway requires a client certificate from exactly
//! its org's Gateway Client CA carrying a permission extension for this very gateway; success is a
//! [`SessionGrant`], the only thing the proxy accepts as permission to dial. The platform trusts
//! exactly the org's Gateway Server CA and pins the one gateway it meant: its per-gateway name in
//! SNI and SAN, and the (org, gateway) identity extension.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::{ClientConfig, ServerConfig, ServerConnection};
use rustls_pki_types::{CertificateDer, ServerName};

use super::{
    client_config, not_after_of, server_config, server_name, ClientCheck, Identity, Mode,
    ServerCheck, TlsError, TrustedAuthority, Usage, INNER_RECORD,
};
use crate::id::{gateway_pin_name, GatewayId, OrgId};
use crate::pki::ext::{GatewayIdentity, Permission, Target};

fn check_gateway(
    org: &OrgId,
    gateway: &GatewayId,
    arrived_org: &OrgId,
    arrived_gw: &GatewayId,
) -> Result<(), TlsError> {
    if arrived_org != org {
        return Err(TlsError::WrongOrg {
            expected: org.clone(),
            arrived: arrived_org.clone(),
        });
    }
    if arrived_gw != gateway {
        return Err(TlsError::WrongGateway {
            expected: gateway.clone(),
            arrived: arrived_gw.clone(),
        });
    }
    Ok(())
}

/// Proof that a platform client certificate passed [`GatewayClientVerifier::verify`]: the one
/// target this session may reach, who asked, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionGrant {
    permission: Permission,
    not_after: u64,
}

impl SessionGrant {
    /// The one target the gateway may dial for this session.
    pub fn target(&self) -> &Target {
        &self.permission.target
    }
    /// Who asked, as the platform certified it.
    pub fn actor(&self) -> &str {
        &self.permission.actor
    }
    /// The platform's session id.
    pub fn session_id(&self) -> &str {
        &self.permission.session_id
    }
    /// When the certificate expires (Unix seconds): the session must close then.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }
}

/// The gateway's check of platform client certificates.
#[derive(Debug, Clone)]
pub struct GatewayClientVerifier {
    ca: TrustedAuthority,
    org: OrgId,
    gateway: GatewayId,
}

impl GatewayClientVerifier {
    /// Trust exactly `client_ca` (the org's Gateway Client CA) for sessions to `gateway` of `org`.
    pub fn new(
        client_ca: CertificateDer<'static>,
        org: OrgId,
        gateway: GatewayId,
    ) -> Result<Self, TlsError> {
        Ok(Self {
            ca: TrustedAuthority::new(client_ca)?,
            org,
            gateway,
        })
    }

    /// Checks a platform client certificate at `now` and returns what it grants.
    pub fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        now: SystemTime,
    ) -> Result<SessionGrant, TlsError> {
        self.ca.verify(leaf, Usage::Client, now)?;
        let permission = Permission::from_certificate(leaf)?;
        check_gateway(
            &self.org,
            &self.gateway,
            &permission.org,
            &permission.gateway,
        )?;
        Ok(SessionGrant {
            permission,
            not_after: not_after_of(leaf)?,
        })
    }
}

impl ClientCheck for GatewayClientVerifier {
    fn authority(&self) -> &TrustedAuthority {
        &self.ca
    }
    fn check(&self, leaf: &CertificateDer<'_>, now: SystemTime) -> Result<(), TlsError> {
        self.verify(leaf, now).map(drop)
    }
}

/// The gateway's inner TLS server configuration and the check that yields each session's grant.
#[derive(Debug, Clone)]
pub struct GatewayTlsServer {
    config: Arc<ServerConfig>,
    verifier: GatewayClientVerifier,
}

impl GatewayTlsServer {
    /// Presents `identity` (the gateway's Gateway Server CA leaf), requires client certificates
    /// that `verifier` accepts, and offers every [`Mode`] by ALPN.
    pub fn new(identity: Identity, verifier: GatewayClientVerifier) -> Result<Self, TlsError> {
        let alpn = Mode::ALL.iter().map(|m| m.alpn().to_vec()).collect();
        let config = server_config(identity, verifier.clone(), alpn, Some(INNER_RECORD))?;
        Ok(Self { config, verifier })
    }

    /// The rustls configuration for accepting inner sessions.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    /// The grant and mode of a session whose handshake has completed, re-checked at `now`.
    /// A session without a postern ALPN is refused here.
    pub fn accept(
        &self,
        conn: &ServerConnection,
        now: SystemTime,
    ) -> Result<(SessionGrant, Mode), TlsError> {
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(TlsError::NoPeerCertificate)?;
        let grant = self.verifier.verify(leaf, now)?;
        Ok((grant, Mode::from_alpn(conn.alpn_protocol())?))
    }
}

/// The platform's check of one gateway's TLS server certificate.
#[derive(Debug, Clone)]
pub struct GatewayServerVerifier {
    ca: TrustedAuthority,
    org: OrgId,
    gateway: GatewayId,
    pin: String,
}

impl GatewayServerVerifier {
    /// Trust exactly `server_ca` (the org's Gateway Server CA), and only for `gateway`.
    pub fn new(
        server_ca: CertificateDer<'static>,
        org: OrgId,
        gateway: GatewayId,
    ) -> Result<Self, TlsError> {
        let pin = gateway_pin_name(&org, &gateway);
        Ok(Self {
            ca: TrustedAuthority::new(server_ca)?,
            org,
            gateway,
            pin,
        })
    }

    /// The name this verifier pins (and the SNI to send).
    pub fn pin(&self) -> &str {
        &self.pin
    }

    /// Checks a gateway's certificate at `now`: issuer, usage, validity, the pinned name and the
    /// identity extension.
    pub fn verify(&self, leaf: &CertificateDer<'_>, now: SystemTime) -> Result<(), TlsError> {
        self.ca.verify(leaf, Usage::Server, now)?;
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| TlsError::Certificate(format!("{e:?}")))?;
        ee.verify_is_valid_for_subject_name(&server_name(&self.pin)?)
            .map_err(|_| TlsError::NameMismatch {
                expected: self.pin.clone(),
            })?;
        let id = GatewayIdentity::from_certificate(leaf)?;
        check_gateway(&self.org, &self.gateway, &id.org, &id.gateway)
    }
}

impl ServerCheck for GatewayServerVerifier {
    /// The SNI rustls was given must be this gateway's pin, and the certificate must match it.
    fn check(
        &self,
        leaf: &CertificateDer<'_>,
        name: &ServerName<'_>,
        now: SystemTime,
    ) -> Result<(), TlsError> {
        if name.to_str() != self.pin {
            return Err(TlsError::NameMismatch {
                expected: self.pin.clone(),
            });
        }
        self.verify(leaf, now)
    }
}

/// The platform's client configuration for one inner session: presents `identity` (the
/// ephemeral Gateway Client CA leaf), trusts only `verifier`'s gateway, offers only `mode`.
/// Returns the configuration and the server name to connect with (the gateway's pin).
pub fn platform_gateway_client(
    identity: Identity,
    verifier: GatewayServerVerifier,
    mode: Mode,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), TlsError> {
    let name = server_name(verifier.pin())?;
    let config = client_config(
        identity,
        verifier,
        vec![mode.alpn().to_vec()],
        Some(INNER_RECORD),
    )?;
    Ok((config, name))
}
