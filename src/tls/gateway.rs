//! The inner, end-to-end TLS session: platform ↔ gateway, through the relay's splice.
//!
//! TLS 1.3 only, ALPN naming the [`Mode`]. The gateway requires a client certificate from exactly
//! its org's Gateway Client CA carrying a permission extension for this very gateway; success is a
//! [`SessionGrant`], the only thing the proxy accepts as permission to dial. The platform trusts
//! exactly the org's Gateway Server CA and pins the one gateway it meant: its per-gateway name in
//! SNI and SAN, and the (org, gateway) identity extension.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, ServerConnection,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{
    config_error, not_after_of, provider, refuse_tls12, schemes, server_name, to_system,
    verify_tls13, Identity, Mode, TlsError, TrustedAuthority, Usage,
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

#[derive(Debug)]
struct ClientAdapter(GatewayClientVerifier, Vec<DistinguishedName>);

impl ClientCertVerifier for ClientAdapter {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.1
    }
    fn verify_client_cert(
        &self,
        leaf: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .verify(leaf, to_system(now))
            .map(|_| ClientCertVerified::assertion())
            .map_err(TlsError::into_rustls)
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
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
        let hint = verifier.ca.hint();
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(config_error)?
            .with_client_cert_verifier(Arc::new(ClientAdapter(verifier.clone(), hint)))
            .with_single_cert(identity.chain, identity.key)
            .map_err(config_error)?;
        config.alpn_protocols = Mode::ALL.iter().map(|m| m.alpn().to_vec()).collect();
        Ok(Self {
            config: Arc::new(config),
            verifier,
        })
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

#[derive(Debug)]
struct ServerAdapter(GatewayServerVerifier);

impl ServerCertVerifier for ServerAdapter {
    fn verify_server_cert(
        &self,
        leaf: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        _: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if name.to_str() != self.0.pin {
            return Err(TlsError::NameMismatch {
                expected: self.0.pin.clone(),
            }
            .into_rustls());
        }
        self.0
            .verify(leaf, to_system(now))
            .map(|_| ServerCertVerified::assertion())
            .map_err(TlsError::into_rustls)
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
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
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerAdapter(verifier)))
        .with_client_auth_cert(identity.chain, identity.key)
        .map_err(config_error)?;
    config.alpn_protocols = vec![mode.alpn().to_vec()];
    Ok((Arc::new(config), name))
}
