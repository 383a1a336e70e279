//! The ten certificate authorities, their storage, and the leaves they issue.
//!
//! Four authorities belong to the instance (for shared relays) and six to each organisation; see
//! [`AuthorityKind`]. X.509 authorities are built with rcgen, OpenSSH authorities with ssh-key,
//! all Ed25519. Every authority is a self-signed root that signs leaves directly (path length 0):
//! verifiers trust exactly one of them and never a chain.
//!
//! Issuance takes the subject's public key (or a CSR whose signature is checked, of which only the
//! key is used): postern never generates a subject's private key. Names, identities and
//! permissions come from the caller, never from the request. Time is a parameter: `now` is passed
//! in, `not_before` is backdated by [`Lifetime::backdate`] for clock skew.

mod der;
pub mod ext;
mod seal;
mod ssh;
mod store;
mod x509;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::id::OrgId;

pub use seal::{write_private, write_public, SealingKey};
pub use ssh::{
    gateway_key_id, parse_gateway_key_id, parse_relay_key_id, relay_key_id, SshAuthority,
};
pub use store::{AuthorityStore, InstanceAuthorities, OrgAuthorities};
pub use x509::{SubjectKey, X509Authority};

/// Errors creating, storing, loading or using an authority.
#[derive(Debug)]
#[non_exhaustive]
pub enum PkiError {
    /// A file could not be read or written.
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An authority already exists where a new one was to be created.
    AlreadyExists(PathBuf),
    /// Stored material is not in the expected format.
    Format(String),
    /// The sealing key is not valid.
    SealingKey(String),
    /// A sealed key did not open: another sealing key, another slot, or a damaged file.
    WrongSealingKey {
        /// The slot that was being opened.
        slot: String,
    },
    /// A stored certificate does not belong to the stored private key.
    KeyMismatch {
        /// The authority.
        authority: String,
    },
    /// A leaf was requested from an authority that does not issue that kind of leaf.
    WrongAuthority {
        /// The authority that must issue this leaf.
        expected: String,
        /// The authority that was asked.
        arrived: String,
    },
    /// The subject's key or request is not acceptable.
    Subject(String),
    /// An input to issuance is not valid (a name, a lifetime, a field).
    Invalid(String),
    /// The underlying certificate library failed.
    Crypto(String),
}

impl PkiError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

impl fmt::Display for PkiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io {
                action,
                path,
                source,
            } => {
                write!(f, "cannot {action} {}: {source}", path.display())
            }
            Self::AlreadyExists(p) => write!(
                f,
                "an authority already exists at {}; refusing to overwrite a CA",
                p.display()
            ),
            Self::Format(m) => write!(f, "stored authority is malformed: {m}"),
            Self::SealingKey(m) => write!(f, "sealing key is not valid: {m}"),
            Self::WrongSealingKey { slot } => write!(
                f,
                "the private key of {slot} does not open with this sealing key \
                 (another key, a key moved from another slot, or a damaged file)"
            ),
            Self::KeyMismatch { authority } => {
                write!(
                    f,
                    "the certificate of {authority} does not match its private key"
                )
            }
            Self::WrongAuthority { expected, arrived } => {
                write!(
                    f,
                    "this leaf must be issued by the {expected}, not by the {arrived}"
                )
            }
            Self::Subject(m) => write!(f, "subject key refused: {m}"),
            Self::Invalid(m) => write!(f, "invalid issuance request: {m}"),
            Self::Crypto(m) => write!(f, "certificate library error: {m}"),
        }
    }
}

impl std::error::Error for PkiError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Whose an authority is: the instance's (shared relays) or one organisation's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The postern instance: shared relays.
    Instance,
    /// One organisation.
    Org(OrgId),
}

/// The six roles an authority can have. The instance has the four `Relay*` roles; every
/// organisation has all six.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthorityKind {
    /// OpenSSH CA signing gateways' user certificates for relays.
    RelaySshClient,
    /// OpenSSH CA signing relays' host certificates.
    RelaySshServer,
    /// X.509 CA signing the platform's client certificates toward relays.
    RelayPkiClient,
    /// X.509 CA signing relays' TLS server certificates.
    RelayPkiServer,
    /// X.509 CA signing the platform's ephemeral client certificates toward gateways.
    GatewayClient,
    /// X.509 CA signing gateways' TLS server certificates.
    GatewayServer,
}

impl AuthorityKind {
    /// The four instance authorities, in storage order.
    pub const INSTANCE: [Self; 4] = [
        Self::RelaySshClient,
        Self::RelaySshServer,
        Self::RelayPkiClient,
        Self::RelayPkiServer,
    ];
    /// The six organisation authorities, in storage order.
    pub const ORG: [Self; 6] = [
        Self::GatewayClient,
        Self::GatewayServer,
        Self::RelaySshClient,
        Self::RelaySshServer,
        Self::RelayPkiClient,
        Self::RelayPkiServer,
    ];

    /// The file-name stem of this authority.
    pub fn slug(self) -> &'static str {
        match self {
            Self::RelaySshClient => "relay-ssh-client-ca",
            Self::RelaySshServer => "relay-ssh-server-ca",
            Self::RelayPkiClient => "relay-pki-client-ca",
            Self::RelayPkiServer => "relay-pki-server-ca",
            Self::GatewayClient => "gateway-client-ca",
            Self::GatewayServer => "gateway-server-ca",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::RelaySshClient => "relay SSH Client CA",
            Self::RelaySshServer => "relay SSH Server CA",
            Self::RelayPkiClient => "relay PKI Client CA",
            Self::RelayPkiServer => "relay PKI Server CA",
            Self::GatewayClient => "Gateway Client CA",
            Self::GatewayServer => "Gateway Server CA",
        }
    }

    /// Whether this authority signs OpenSSH certificates (else X.509).
    pub fn is_ssh(self) -> bool {
        matches!(self, Self::RelaySshClient | Self::RelaySshServer)
    }
}

/// One authority's full name: its scope and its role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuthorityName {
    /// Whose authority.
    pub scope: Scope,
    /// Which role.
    pub kind: AuthorityKind,
}

impl AuthorityName {
    /// The storage slot, e.g. `instance/relay-ssh-client-ca` or `org/acme/gateway-client-ca`.
    pub fn slot(&self) -> String {
        match &self.scope {
            Scope::Instance => format!("instance/{}", self.kind.slug()),
            Scope::Org(org) => format!("org/{org}/{}", self.kind.slug()),
        }
    }

    /// Refuses unless this authority has role `kind`.
    pub(crate) fn require(&self, kind: AuthorityKind) -> Result<(), PkiError> {
        if self.kind == kind {
            return Ok(());
        }
        let expected = AuthorityName {
            scope: self.scope.clone(),
            kind,
        };
        Err(PkiError::WrongAuthority {
            expected: expected.to_string(),
            arrived: self.to_string(),
        })
    }

    /// Refuses when this is another organisation's authority (instance authorities serve all).
    pub(crate) fn require_org(&self, org: &OrgId) -> Result<(), PkiError> {
        match &self.scope {
            Scope::Org(own) if own != org => Err(PkiError::WrongAuthority {
                expected: AuthorityName {
                    scope: Scope::Org(org.clone()),
                    kind: self.kind,
                }
                .to_string(),
                arrived: self.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for AuthorityName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.scope {
            Scope::Instance => write!(f, "postern instance {}", self.kind.title()),
            Scope::Org(org) => write!(f, "postern org {org} {}", self.kind.title()),
        }
    }
}

/// How long a certificate lives, and how far its start is backdated for clock skew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// Subtracted from `now` for `not_before`.
    pub backdate: Duration,
    /// Added to `now` for `not_after`.
    pub valid_for: Duration,
}

impl Lifetime {
    /// The default allowance for clock skew between issuer and verifier.
    pub const DEFAULT_BACKDATE: Duration = Duration::from_secs(120);

    /// A lifetime of `valid_for` with the default backdate.
    pub fn new(valid_for: Duration) -> Self {
        Self {
            backdate: Self::DEFAULT_BACKDATE,
            valid_for,
        }
    }

    /// `minutes` minutes with the default backdate (session certificates).
    pub fn minutes(minutes: u64) -> Self {
        Self::new(Duration::from_secs(minutes.saturating_mul(60)))
    }

    /// `days` days with the default backdate.
    pub fn days(days: u64) -> Self {
        Self::new(Duration::from_secs(days.saturating_mul(86_400)))
    }

    /// The validity window at `now`, in Unix seconds.
    pub(crate) fn window(&self, now: SystemTime) -> Result<(u64, u64), PkiError> {
        if self.valid_for.is_zero() {
            return Err(PkiError::Invalid("lifetime is zero".into()));
        }
        let now = unix_secs(now)?;
        let start = now.saturating_sub(self.backdate.as_secs());
        let end = now
            .checked_add(self.valid_for.as_secs())
            .filter(|end| i64::try_from(*end).is_ok())
            .ok_or_else(|| PkiError::Invalid("lifetime runs past the representable time".into()))?;
        Ok((start, end))
    }
}

/// Seconds since the Unix epoch; an error for times before it.
pub(crate) fn unix_secs(t: SystemTime) -> Result<u64, PkiError> {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| PkiError::Invalid("time is before 1970".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_distinct_slots() {
        let org = OrgId::new("acme").unwrap();
        let mut slots: Vec<String> = AuthorityKind::INSTANCE
            .iter()
            .map(|k| {
                AuthorityName {
                    scope: Scope::Instance,
                    kind: *k,
                }
                .slot()
            })
            .chain(AuthorityKind::ORG.iter().map(|k| {
                AuthorityName {
                    scope: Scope::Org(org.clone()),
                    kind: *k,
                }
                .slot()
            }))
            .collect();
        slots.sort();
        slots.dedup();
        assert_eq!(slots.len(), 10);
    }

    #[test]
    fn lifetime_window_is_backdated() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (a, b) = Lifetime::minutes(5).window(now).unwrap();
        assert_eq!((a, b), (1_000_000 - 120, 1_000_000 + 300));
        assert!(Lifetime::new(Duration::ZERO).window(now).is_err());
    }
}
