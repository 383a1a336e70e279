//! The registry: what the platform remembers, behind a small trait so that the SQLite default
//! can be replaced without touching the API.
//!
//! Every method is one transaction: it either happens completely or not at all.

use std::fmt;

use super::token::Role;
use crate::id::{GatewayId, OrgId, RelayId};

/// A registry failure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// The thing to create exists already.
    Exists(String),
    /// The thing to change does not exist.
    NotFound(String),
    /// A value in the store could not be read back (a corrupt or foreign database).
    Corrupt(String),
    /// The storage backend failed.
    Backend(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exists(what) => write!(f, "{what} exists already"),
            Self::NotFound(what) => write!(f, "{what} does not exist"),
            Self::Corrupt(what) => {
                write!(f, "the state database holds an unreadable value: {what}")
            }
            Self::Backend(what) => write!(f, "state database: {what}"),
        }
    }
}

impl std::error::Error for StoreError {}

/// Who a token belongs to. `org` is `None` only for instance relays.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityRecord {
    /// What the token may do.
    pub role: Role,
    /// The organisation, or `None` for an instance relay.
    pub org: Option<OrgId>,
    /// The gateway, relay or operator name (unique per role and org).
    pub name: String,
    /// The token's public lookup id.
    pub token_id: String,
    /// SHA-256 of the token's secret.
    pub token_digest: Vec<u8>,
    /// Unix time after which the token is refused.
    pub expires_at: u64,
    /// Unix time of creation (or of the last rotation).
    pub created_at: u64,
    /// Unix time of revocation.
    pub revoked_at: Option<u64>,
    /// For a gateway: the relay the operator assigned it to, if any.
    pub relay_pin: Option<RelayId>,
}

impl fmt::Debug for IdentityRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityRecord")
            .field("role", &self.role)
            .field("org", &self.org)
            .field("name", &self.name)
            .field("token_id", &self.token_id)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// A registered relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRecord {
    /// Its name.
    pub name: RelayId,
    /// Its organisation, or `None` for an instance relay open to every org.
    pub org: Option<OrgId>,
    /// Where gateways dial it (`host:port`).
    pub ssh_address: String,
    /// Where platforms dial it (`host:port`).
    pub tls_address: String,
    /// The names in its certificates.
    pub hostnames: Vec<String>,
    /// Unix time of the last registration or renewal.
    pub registered_at: u64,
    /// When its current certificates expire.
    pub cert_not_after: u64,
    /// Unix time of its last heartbeat.
    pub last_heartbeat: Option<u64>,
    /// Tunnels it reported in its last heartbeat.
    pub tunnels: u64,
}

/// A registered gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRecord {
    /// Its organisation.
    pub org: OrgId,
    /// Its name.
    pub name: GatewayId,
    /// The relay the platform assigned.
    pub assigned_relay: RelayId,
    /// The relay it last reported being connected to.
    pub connected_relay: Option<RelayId>,
    /// Unix time of the last registration or renewal.
    pub registered_at: u64,
    /// When its current certificates expire.
    pub cert_not_after: u64,
    /// Unix time of its last heartbeat.
    pub last_heartbeat: Option<u64>,
}

/// An issued session, kept for audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id in the certificates.
    pub id: String,
    /// The organisation.
    pub org: OrgId,
    /// The gateway.
    pub gateway: GatewayId,
    /// The operator who asked.
    pub operator: String,
    /// The permitted target.
    pub target: String,
    /// The relay it goes through.
    pub relay: RelayId,
    /// Unix time of issue.
    pub issued_at: u64,
    /// When its certificates expire.
    pub not_after: u64,
}

/// The registry's operations. Implementations must be safe to call from many threads.
pub trait Store: Send + Sync {
    /// Records a new organisation; `make_authorities` runs inside the same transaction, so if
    /// it fails the organisation is not recorded.
    fn create_org(
        &self,
        org: &OrgId,
        now: u64,
        make_authorities: &mut dyn FnMut() -> Result<(), String>,
    ) -> Result<(), StoreError>;
    /// Whether the organisation exists.
    fn org_exists(&self, org: &OrgId) -> Result<bool, StoreError>;
    /// All organisations with their creation time.
    fn orgs(&self) -> Result<Vec<(OrgId, u64)>, StoreError>;

    /// Records a new identity; fails if (role, org, name) exists.
    fn create_identity(&self, identity: &IdentityRecord) -> Result<(), StoreError>;
    /// Replaces an identity's token (rotation); fails if it does not exist or is revoked.
    fn rotate_identity(&self, identity: &IdentityRecord) -> Result<(), StoreError>;
    /// The identity a token id belongs to.
    fn identity_by_token(&self, token_id: &str) -> Result<Option<IdentityRecord>, StoreError>;
    /// The identity (role, org, name).
    fn identity(
        &self,
        role: Role,
        org: Option<&OrgId>,
        name: &str,
    ) -> Result<Option<IdentityRecord>, StoreError>;
    /// Marks an identity revoked (idempotent: the first revocation time is kept).
    fn revoke(
        &self,
        role: Role,
        org: Option<&OrgId>,
        name: &str,
        now: u64,
    ) -> Result<(), StoreError>;
    /// Every identity of `role`, ordered by org and name.
    fn identities(&self, role: Role) -> Result<Vec<IdentityRecord>, StoreError>;
    /// Every revoked identity of `role`, optionally only in `org`.
    fn revoked(&self, role: Role, org: Option<&OrgId>) -> Result<Vec<IdentityRecord>, StoreError>;

    /// Inserts or replaces a relay's registration.
    fn put_relay(&self, relay: &RelayRecord) -> Result<(), StoreError>;
    /// One relay.
    fn relay(&self, name: &RelayId) -> Result<Option<RelayRecord>, StoreError>;
    /// All relays.
    fn relays(&self) -> Result<Vec<RelayRecord>, StoreError>;
    /// Records a relay heartbeat.
    fn relay_heartbeat(&self, name: &RelayId, now: u64, tunnels: u64) -> Result<(), StoreError>;

    /// Inserts or replaces a gateway's registration.
    fn put_gateway(&self, gateway: &GatewayRecord) -> Result<(), StoreError>;
    /// One gateway.
    fn gateway(&self, org: &OrgId, name: &GatewayId) -> Result<Option<GatewayRecord>, StoreError>;
    /// All gateways.
    fn gateways(&self) -> Result<Vec<GatewayRecord>, StoreError>;
    /// Records a gateway heartbeat and the relay it is connected to.
    fn gateway_heartbeat(
        &self,
        org: &OrgId,
        name: &GatewayId,
        connected: Option<&RelayId>,
        now: u64,
    ) -> Result<(), StoreError>;

    /// Records an issued session.
    fn record_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
}
