//! The outer TLS hop: platform → relay.
//!
//! The relay requires a client certificate from exactly its relay PKI Client CA (instance or its
//! org's) and routes by the (org, gateway) in that certificate's identity extension. The platform
//! trusts exactly the relay PKI Server CA and checks the relay's hostname.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::{ClientConfig, ServerConfig, ServerConnection};
use rustls_pki_types::{CertificateDer, ServerName};

use super::{
    client_config, not_after_of, server_config, ClientCheck, Identity, ServerCheck, TlsError,
    TrustedAuthority, Usage,
};
use crate::id::{GatewayId, OrgId};
use crate::pki::ext::GatewayIdentity;
use crate::pki::Scope;

/// Proof that a platform's client certificate passed [`RelayClientVerifier::verify`]: where the
/// relay must route this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRoute {
    org: OrgId,
    gateway: GatewayId,
    not_after: u64,
}

impl RelayRoute {
    /// The certified organisation.
    pub fn org(&self) -> &OrgId {
        &self.org
    }
    /// The certified gateway.
    pub fn gateway(&self) -> &GatewayId {
        &self.gateway
    }
    /// When the client certificate expires, Unix seconds.
    pub fn not_after(&self) -> u64 {
        self.not_after
    }
}

/// The relay's check of platform client certificates.
#[derive(Debug, Clone)]
pub struct RelayClientVerifier {
    ca: TrustedAuthority,
    scope: Scope,
}

impl RelayClientVerifier {
    /// Trust exactly `client_ca` (this relay's relay PKI Client CA). An org relay passes
    /// `Scope::Org` and additionally refuses certificates naming another org.
    pub fn new(client_ca: CertificateDer<'static>, scope: Scope) -> Result<Self, TlsError> {
        Ok(Self {
            ca: TrustedAuthority::new(client_ca)?,
            scope,
        })
    }

    /// Checks a platform client certificate at `now` and returns the route it names.
    pub fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        now: SystemTime,
    ) -> Result<RelayRoute, TlsError> {
        self.ca.verify(leaf, Usage::Client, now)?;
        let id = GatewayIdentity::from_certificate(leaf)?;
        if let Scope::Org(expected) = &self.scope {
            if *expected != id.org {
                return Err(TlsError::WrongOrg {
                    expected: expected.clone(),
                    arrived: id.org,
                });
            }
        }
        Ok(RelayRoute {
            org: id.org,
            gateway: id.gateway,
            not_after: not_after_of(leaf)?,
        })
    }
}

impl ClientCheck for RelayClientVerifier {
    fn authority(&self) -> &TrustedAuthority {
        &self.ca
    }
    fn check(&self, leaf: &CertificateDer<'_>, now: SystemTime) -> Result<(), TlsError> {
        self.verify(leaf, now).map(drop)
    }
}

/// The relay's TLS listener configuration and the check that yields each connection's route.
#[derive(Debug, Clone)]
pub struct RelayTlsServer {
    config: Arc<ServerConfig>,
    verifier: RelayClientVerifier,
}

impl RelayTlsServer {
    /// Presents `identity` (a relay PKI Server CA leaf) and requires client certificates that
    /// `verifier` accepts.
    pub fn new(identity: Identity, verifier: RelayClientVerifier) -> Result<Self, TlsError> {
        let config = server_config(identity, verifier.clone(), Vec::new(), None)?;
        Ok(Self { config, verifier })
    }

    /// The rustls configuration for accepting connections.
    pub fn config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config)
    }

    /// The route of a connection whose handshake has completed, re-checked at `now`.
    pub fn route(&self, conn: &ServerConnection, now: SystemTime) -> Result<RelayRoute, TlsError> {
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(TlsError::NoPeerCertificate)?;
        self.verifier.verify(leaf, now)
    }
}

/// The platform's check of a relay's TLS server certificate.
#[derive(Debug, Clone)]
pub struct RelayServerVerifier {
    ca: TrustedAuthority,
}

impl RelayServerVerifier {
    /// Trust exactly `server_ca` (the relay PKI Server CA of the relay being dialled).
    pub fn new(server_ca: CertificateDer<'static>) -> Result<Self, TlsError> {
        Ok(Self {
            ca: TrustedAuthority::new(server_ca)?,
        })
    }

    /// Checks a relay's certificate for `name` (the host dialled) at `now`.
    pub fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        name: &ServerName<'_>,
        now: SystemTime,
    ) -> Result<(), TlsError> {
        self.ca.verify(leaf, Usage::Server, now)?;
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| TlsError::Certificate(format!("{e:?}")))?;
        ee.verify_is_valid_for_subject_name(name)
            .map_err(|_| TlsError::NameMismatch {
                expected: name.to_str().into_owned(),
            })
    }
}

impl ServerCheck for RelayServerVerifier {
    fn check(
        &self,
        leaf: &CertificateDer<'_>,
        name: &ServerName<'_>,
        now: SystemTime,
    ) -> Result<(), TlsError> {
        self.verify(leaf, name, now)
    }
}

/// The platform's client configuration toward relays signed by `verifier`'s CA, presenting
/// `identity` (a relay PKI Client CA leaf naming the gateway to reach).
pub fn platform_relay_client(
    identity: Identity,
    verifier: RelayServerVerifier,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config(identity, verifier, Vec::new(), None)
}
