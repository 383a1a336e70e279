//! postern's own X.509 extensions: who a certificate speaks for, and what it permits.
//!
//! Two extensions, both non-critical (webpki refuses unknown critical extensions), both versioned,
//! both parsed strictly: wrong version, wrong shape, trailing bytes, a bad identifier, a duplicate,
//! a critical flag or a missing extension is an error, and an error means deny.
//!
//! ```text
//! GatewayIdentity ::= SEQUENCE {        -- OID 2.25.6354120900384192301.1
//!     version   INTEGER (1),
//!     org       UTF8String,              -- an OrgId
//!     gateway   UTF8String }             -- a GatewayId
//!
//! Permission ::= SEQUENCE {              -- OID 2.25.6354120900384192301.2
//!     version   INTEGER (1),
//!     org       UTF8String,
//!     gateway   UTF8String,
//!     host      UTF8String,              -- DNS name or IP literal, lower case
//!     port      INTEGER (1..65535),
//!     actor     UTF8String,              -- who asked, for the gateway's log
//!     session   UTF8String }             -- the platform's session id
//! ```
//!
//! `GatewayIdentity` rides in the platform→relay client certificate (the relay routes by it) and
//! in the gateway's TLS server certificate (the platform pins it). `Permission` rides in the
//! platform→gateway client certificate; the gateway dials nothing else.
//!
//! The arc `2.25.6354120900384192301` is a UUID-form arc (X.667) whose value fits the 64-bit
//! arcs rcgen can encode; the version field lets a later arc or layout coexist.

use std::fmt;
use std::net::IpAddr;

use x509_parser::prelude::{FromDer, X509Certificate};

use super::der::{DerError, Reader, Writer};
use crate::id::{GatewayId, IdError, OrgId};

/// OID arcs of the gateway-identity extension.
pub const OID_GATEWAY_IDENTITY: &[u64] = &[2, 25, 6_354_120_900_384_192_301, 1];
/// OID arcs of the permission extension.
pub const OID_PERMISSION: &[u64] = &[2, 25, 6_354_120_900_384_192_301, 2];
/// The only layout version this build writes and reads.
pub const EXTENSION_VERSION: u64 = 1;

const MAX_ACTOR: usize = 128;
const MAX_SESSION: usize = 64;
const MAX_HOST: usize = 253;

/// Which of postern's extensions an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtensionKind {
    /// The (org, gateway) identity extension.
    GatewayIdentity,
    /// The session permission extension.
    Permission,
}

impl ExtensionKind {
    fn oid(self) -> &'static [u64] {
        match self {
            Self::GatewayIdentity => OID_GATEWAY_IDENTITY,
            Self::Permission => OID_PERMISSION,
        }
    }
}

impl fmt::Display for ExtensionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::GatewayIdentity => "postern gateway-identity extension",
            Self::Permission => "postern permission extension",
        })
    }
}

/// Why an extension could not be read. Every variant means deny.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtensionError {
    /// The certificate does not carry the extension.
    Missing(ExtensionKind),
    /// The certificate carries the extension more than once.
    Duplicate(ExtensionKind),
    /// The extension is marked critical; postern's extensions never are.
    Critical(ExtensionKind),
    /// The extension has a layout version this build does not read.
    UnsupportedVersion {
        /// Which extension.
        kind: ExtensionKind,
        /// The version found.
        version: u64,
    },
    /// The extension's bytes are not the documented layout.
    Malformed {
        /// Which extension.
        kind: ExtensionKind,
        /// What was wrong.
        reason: String,
    },
    /// The certificate itself could not be parsed.
    Certificate(String),
}

impl fmt::Display for ExtensionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(k) => write!(f, "certificate has no {k}"),
            Self::Duplicate(k) => write!(f, "certificate carries the {k} more than once"),
            Self::Critical(k) => write!(f, "the {k} is marked critical; expected non-critical"),
            Self::UnsupportedVersion { kind, version } => write!(
                f,
                "the {kind} has version {version}; this build reads version {EXTENSION_VERSION}"
            ),
            Self::Malformed { kind, reason } => write!(f, "the {kind} is malformed: {reason}"),
            Self::Certificate(e) => write!(f, "certificate cannot be parsed: {e}"),
        }
    }
}

impl std::error::Error for ExtensionError {}

fn malformed(kind: ExtensionKind) -> impl Fn(String) -> ExtensionError {
    move |reason| ExtensionError::Malformed { kind, reason }
}

/// A host and port the gateway may dial.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    host: String,
    port: u16,
}

impl Target {
    /// Checks a host (lower-case DNS name or IP literal) and a non-zero port.
    pub fn new(host: &str, port: u16) -> Result<Self, String> {
        if port == 0 {
            return Err("target port 0 is not dialable; expected 1..=65535".into());
        }
        check_host(host)?;
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// Parses `host:port` or `[v6]:port`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("target {s:?} has no port; expected host:port"))?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .ok_or_else(|| format!("target {s:?} opens '[' without closing it"))?,
            None if host.contains(':') => {
                return Err(format!("target {s:?}: write IPv6 addresses as [addr]:port"))
            }
            None => host,
        };
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("target {s:?} has port {port:?}; expected 1..=65535"))?;
        Self::new(host, port)
    }

    /// The host: a DNS name or an IP literal (without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn check_host(host: &str) -> Result<(), String> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    };
    if host.is_empty() || host.len() > MAX_HOST || !host.split('.').all(label_ok) {
        return Err(format!(
            "target host {:?} is neither an IP address nor a lower-case DNS name",
            host.escape_debug().to_string()
        ));
    }
    Ok(())
}

fn check_token(what: &str, value: &str, max: usize, allowed: fn(u8) -> bool) -> Result<(), String> {
    if value.is_empty() || value.len() > max || !value.bytes().all(allowed) {
        return Err(format!(
            "{what} {:?} must be 1 to {max} characters of the documented set",
            value.escape_debug().to_string()
        ));
    }
    Ok(())
}

/// Who asked for a session: visible ASCII, no spaces (an email address or a user id).
fn check_actor(actor: &str) -> Result<(), String> {
    check_token("actor", actor, MAX_ACTOR, |b| b.is_ascii_graphic())
}

/// The platform's session id: `A-Z a-z 0-9 - _`.
fn check_session(session: &str) -> Result<(), String> {
    check_token("session id", session, MAX_SESSION, |b| {
        b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
    })
}

/// The (org, gateway) a certificate speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GatewayIdentity {
    /// The organisation.
    pub org: OrgId,
    /// The gateway within it.
    pub gateway: GatewayId,
}

impl GatewayIdentity {
    /// DER of the extension value.
    pub fn to_der(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.sequence(|w| {
            w.integer(EXTENSION_VERSION);
            w.utf8(self.org.as_str());
            w.utf8(self.gateway.as_str());
        });
        w.into_bytes()
    }

    /// Parses the extension value strictly.
    pub fn from_der(bytes: &[u8]) -> Result<Self, ExtensionError> {
        let kind = ExtensionKind::GatewayIdentity;
        let bad = malformed(kind);
        let der = |e: DerError| bad(e.to_string());
        let id = |e: IdError| bad(e.to_string());
        let mut outer = Reader::new(bytes);
        let mut seq = outer.sequence().map_err(der)?;
        check_version(kind, seq.integer().map_err(der)?)?;
        let org = OrgId::new(seq.utf8().map_err(der)?).map_err(id)?;
        let gateway = GatewayId::new(seq.utf8().map_err(der)?).map_err(id)?;
        seq.finish().map_err(der)?;
        outer.finish().map_err(der)?;
        Ok(Self { org, gateway })
    }

    /// Finds and parses the extension in a DER certificate.
    pub fn from_certificate(cert_der: &[u8]) -> Result<Self, ExtensionError> {
        Self::from_der(find_extension(cert_der, ExtensionKind::GatewayIdentity)?.as_slice())
    }
}

fn check_version(kind: ExtensionKind, version: u64) -> Result<(), ExtensionError> {
    if version == EXTENSION_VERSION {
        Ok(())
    } else {
        Err(ExtensionError::UnsupportedVersion { kind, version })
    }
}

/// What one platform→gateway client certificate allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// The organisation of the gateway.
    pub org: OrgId,
    /// The one gateway this certificate is good for.
    pub gateway: GatewayId,
    /// The one target the gateway may dial.
    pub target: Target,
    /// Who asked (for the gateway's log).
    pub actor: String,
    /// The platform's session id (for the gateway's log).
    pub session_id: String,
}

impl Permission {
    /// Checks the free-text fields and builds a permission.
    pub fn new(
        org: OrgId,
        gateway: GatewayId,
        target: Target,
        actor: &str,
        session_id: &str,
    ) -> Result<Self, String> {
        check_actor(actor)?;
        check_session(session_id)?;
        Ok(Self {
            org,
            gateway,
            target,
            actor: actor.to_owned(),
            session_id: session_id.to_owned(),
        })
    }

    /// DER of the extension value.
    pub fn to_der(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.sequence(|w| {
            w.integer(EXTENSION_VERSION);
            w.utf8(self.org.as_str());
            w.utf8(self.gateway.as_str());
            w.utf8(self.target.host());
            w.integer(u64::from(self.target.port()));
            w.utf8(&self.actor);
            w.utf8(&self.session_id);
        });
        w.into_bytes()
    }

    /// Parses the extension value strictly. This is the parser the fuzz target drives.
    pub fn from_der(bytes: &[u8]) -> Result<Self, ExtensionError> {
        let kind = ExtensionKind::Permission;
        let bad = malformed(kind);
        let der = |e: DerError| bad(e.to_string());
        let mut outer = Reader::new(bytes);
        let mut seq = outer.sequence().map_err(der)?;
        check_version(kind, seq.integer().map_err(der)?)?;
        let org = OrgId::new(seq.utf8().map_err(der)?).map_err(|e| bad(e.to_string()))?;
        let gateway = GatewayId::new(seq.utf8().map_err(der)?).map_err(|e| bad(e.to_string()))?;
        let host = seq.utf8().map_err(der)?;
        let port = seq.integer().map_err(der)?;
        let port = u16::try_from(port).map_err(|_| bad(format!("port {port} exceeds 65535")))?;
        let target = Target::new(host, port).map_err(&bad)?;
        let actor = seq.utf8().map_err(der)?;
        let session_id = seq.utf8().map_err(der)?;
        seq.finish().map_err(der)?;
        outer.finish().map_err(der)?;
        Self::new(org, gateway, target, actor, session_id).map_err(bad)
    }

    /// Finds and parses the extension in a DER certificate.
    pub fn from_certificate(cert_der: &[u8]) -> Result<Self, ExtensionError> {
        Self::from_der(find_extension(cert_der, ExtensionKind::Permission)?.as_slice())
    }
}

/// Returns the value of exactly one non-critical extension of `kind`.
fn find_extension(cert_der: &[u8], kind: ExtensionKind) -> Result<Vec<u8>, ExtensionError> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| ExtensionError::Certificate(e.to_string()))?;
    let mut found = cert.extensions().iter().filter(|ext| {
        ext.oid
            .iter()
            .is_some_and(|arcs| arcs.eq(kind.oid().iter().copied()))
    });
    let ext = found.next().ok_or(ExtensionError::Missing(kind))?;
    if found.next().is_some() {
        return Err(ExtensionError::Duplicate(kind));
    }
    if ext.critical {
        return Err(ExtensionError::Critical(kind));
    }
    Ok(ext.value.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn permission() -> Permission {
        Permission::new(
            OrgId::new("acme").unwrap(),
            GatewayId::new("edge-7").unwrap(),
            Target::parse("db.internal:5432").unwrap(),
            "alice@example.com",
            "s-0001",
        )
        .unwrap()
    }

    #[test]
    fn permission_round_trips() {
        let p = permission();
        assert_eq!(Permission::from_der(&p.to_der()).unwrap(), p);
    }

    #[test]
    fn identity_round_trips() {
        let id = GatewayIdentity {
            org: OrgId::new("acme").unwrap(),
            gateway: GatewayId::new("edge-7").unwrap(),
        };
        assert_eq!(GatewayIdentity::from_der(&id.to_der()).unwrap(), id);
    }

    #[test]
    fn reject_permission_with_other_version() {
        let mut der = permission().to_der();
        der[4] = 2; // SEQUENCE hdr (2) + INTEGER hdr (2) → version byte
        assert_eq!(
            Permission::from_der(&der).unwrap_err(),
            ExtensionError::UnsupportedVersion {
                kind: ExtensionKind::Permission,
                version: 2
            }
        );
    }

    #[test]
    fn reject_permission_with_trailing_bytes() {
        let mut der = permission().to_der();
        der.push(0);
        assert!(matches!(
            Permission::from_der(&der),
            Err(ExtensionError::Malformed { .. })
        ));
    }

    #[test]
    fn reject_every_truncation() {
        let der = permission().to_der();
        for n in 0..der.len() {
            assert!(
                Permission::from_der(&der[..n]).is_err(),
                "prefix of {n} bytes accepted"
            );
        }
    }

    #[test]
    fn reject_bad_fields() {
        let org = OrgId::new("acme").unwrap();
        let gw = GatewayId::new("g").unwrap();
        let t = Target::parse("h:1").unwrap();
        assert!(Permission::new(org.clone(), gw.clone(), t.clone(), "a b", "s").is_err());
        assert!(Permission::new(org.clone(), gw.clone(), t.clone(), "", "s").is_err());
        assert!(Permission::new(org, gw, t, "a", "s/1").is_err());
    }

    #[test]
    fn targets_parse_strictly() {
        assert_eq!(Target::parse("[::1]:22").unwrap().to_string(), "[::1]:22");
        assert_eq!(Target::parse("10.0.0.5:80").unwrap().host(), "10.0.0.5");
        for bad in [
            "host",
            "host:0",
            "host:65536",
            "Host:1",
            "::1:22",
            "[::1:22",
            "a..b:1",
            ":1",
            "a b:1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
