//! The platform's state directory, and the API's own certificate authority.
//!
//! ```text
//! <state>/postern.db             the registry (SQLite), 0600
//! <state>/authorities/…          the ten kinds of authorities (see pki::AuthorityStore)
//! <state>/api/ca.crt             the API CA certificate; its SHA-256 is the pin in every token
//! <state>/api/ca.key             its private key, sealed, 0600
//! <state>/api/names.json         the names (DNS or IP) the API's certificate carries
//! ```
//! The directory is 0700. The sealing key never lives here: it comes from a file or the
//! environment. The API's TLS leaf is issued in memory at start and re-issued before it expires,
//! so its key never touches the disk.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use super::sqlite::SqliteStore;
use super::token::sha256;
use super::PlatformError;
use crate::clock::unix_now;
use crate::pki::{write_private, write_public, AuthorityStore, Lifetime, SealingKey};

const API_SLOT: &str = "platform-api-ca";
const AUTHORITY_DAYS: u64 = 3650;
const API_LEAF_DAYS: u64 = 30;
const API_LEAF_RENEW_DAYS: u64 = 20;

/// An opened state directory.
#[derive(Debug)]
pub struct State {
    /// The directory.
    pub dir: PathBuf,
    /// The registry.
    pub store: Arc<SqliteStore>,
    /// The authorities.
    pub authorities: AuthorityStore,
    /// The API's certificate authority.
    pub api_ca: Arc<ApiCa>,
}

fn io(action: &str, path: &Path, e: std::io::Error) -> PlatformError {
    PlatformError::State(format!("{action} {}: {e}", path.display()))
}

impl State {
    /// Creates a new state directory: the registry, the four instance authorities and the API
    /// CA whose certificate carries `api_names`. Refuses to touch an existing state.
    pub fn init(
        dir: &Path,
        key: SealingKey,
        api_names: &[String],
        now: SystemTime,
    ) -> Result<Self, PlatformError> {
        let db = dir.join("postern.db");
        if db.exists() {
            return Err(PlatformError::State(format!(
                "{} exists: this state is initialised already",
                db.display()
            )));
        }
        check_names(api_names)?;
        let api_dir = dir.join("api");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&api_dir)
            .map_err(|e| io("create", &api_dir, e))?;
        let authorities = AuthorityStore::new(&dir.join("authorities"), key.clone());
        authorities.create_instance(now, Lifetime::days(AUTHORITY_DAYS))?;
        ApiCa::create(&api_dir, &key, api_names, now)?;
        SqliteStore::open(&db)?;
        Self::open(dir, key)
    }

    /// Opens an initialised state directory.
    pub fn open(dir: &Path, key: SealingKey) -> Result<Self, PlatformError> {
        let db = dir.join("postern.db");
        if !db.exists() {
            return Err(PlatformError::State(format!(
                "{} does not exist: run `postern-platform init` first",
                db.display()
            )));
        }
        let api_ca = Arc::new(ApiCa::load(&dir.join("api"), &key)?);
        Ok(Self {
            dir: dir.to_owned(),
            store: Arc::new(SqliteStore::open(&db)?),
            authorities: AuthorityStore::new(&dir.join("authorities"), key),
            api_ca,
        })
    }
}

fn check_names(names: &[String]) -> Result<(), PlatformError> {
    if names.is_empty() {
        return Err(PlatformError::Usage(
            "the API needs at least one name (--api-name)".into(),
        ));
    }
    for n in names {
        ServerName::try_from(n.as_str()).map_err(|_| {
            PlatformError::Usage(format!("API name {n:?} is not a DNS name or IP address"))
        })?;
    }
    Ok(())
}

/// The certificate authority of the platform API's own TLS.
pub struct ApiCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    names: Vec<String>,
}

impl std::fmt::Debug for ApiCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCa")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

fn crypto(e: rcgen::Error) -> PlatformError {
    PlatformError::State(format!("API certificate: {e}"))
}

fn dated(now: SystemTime, life: Lifetime) -> Result<CertificateParams, PlatformError> {
    let mut params = CertificateParams::default();
    let start = now
        .checked_sub(life.backdate)
        .ok_or_else(|| PlatformError::State("clock before 1970".into()))?;
    params.not_before = time::OffsetDateTime::from(start);
    params.not_after = time::OffsetDateTime::from(now + life.valid_for);
    Ok(params)
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "postern");
    dn.push(DnType::CommonName, cn);
    dn
}

impl ApiCa {
    fn create(
        dir: &Path,
        key: &SealingKey,
        names: &[String],
        now: SystemTime,
    ) -> Result<(), PlatformError> {
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(crypto)?;
        let mut params = dated(now, Lifetime::days(AUTHORITY_DAYS))?;
        params.distinguished_name = name("postern platform API CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&ca_key).map_err(crypto)?;
        let sealed = key.seal(API_SLOT, &ca_key.serialize_der())?;
        write_private(&dir.join("ca.key"), sealed.as_bytes())?;
        write_public(&dir.join("ca.crt"), cert.pem().as_bytes())?;
        let names = serde_json::to_vec(names).map_err(|e| PlatformError::State(e.to_string()))?;
        write_public(&dir.join("names.json"), &names)?;
        Ok(())
    }

    fn load(dir: &Path, key: &SealingKey) -> Result<Self, PlatformError> {
        let read = |f: &str| {
            let p = dir.join(f);
            fs::read_to_string(&p).map_err(|e| io("read", &p, e))
        };
        let cert = pem::parse(read("ca.crt")?)
            .map_err(|e| PlatformError::State(format!("api/ca.crt: {e}")))?;
        let cert = CertificateDer::from(cert.into_contents());
        let der = key.open(API_SLOT, &read("ca.key")?)?;
        let ca_key = KeyPair::try_from(der.as_slice()).map_err(crypto)?;
        let issuer = Issuer::from_ca_cert_der(&cert, ca_key).map_err(crypto)?;
        let names: Vec<String> = serde_json::from_str(&read("names.json")?)
            .map_err(|e| PlatformError::State(format!("api/names.json: {e}")))?;
        check_names(&names)?;
        Ok(Self {
            cert,
            issuer,
            names,
        })
    }

    /// The CA certificate clients pin.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// SHA-256 of the CA certificate: the pin in every enrolment string.
    pub fn fingerprint(&self) -> [u8; 32] {
        sha256(&self.cert)
    }

    /// The names the API's certificate carries.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// A fresh leaf for the API, with a key generated in memory.
    fn issue_leaf(&self, now: SystemTime) -> Result<CertifiedKey, PlatformError> {
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(crypto)?;
        let mut params = CertificateParams::new(self.names.clone()).map_err(crypto)?;
        let dates = dated(now, Lifetime::days(API_LEAF_DAYS))?;
        params.not_before = dates.not_before;
        params.not_after = dates.not_after;
        params.distinguished_name = name("postern platform API");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let leaf = params.signed_by(&leaf_key, &self.issuer).map_err(crypto)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signer = crate::tls::provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| PlatformError::State(format!("API key: {e}")))?;
        Ok(CertifiedKey::new(
            vec![leaf.der().clone(), self.cert.clone()],
            signer,
        ))
    }

    /// A certificate resolver for the API listener that re-issues its leaf before it expires.
    pub fn resolver(self: &Arc<Self>, now: SystemTime) -> Result<ApiCertResolver, PlatformError> {
        Ok(ApiCertResolver {
            ca: self.clone(),
            current: Mutex::new((Arc::new(self.issue_leaf(now)?), renew_at(now))),
        })
    }
}

fn renew_at(now: SystemTime) -> u64 {
    unix_now(now + Duration::from_secs(API_LEAF_RENEW_DAYS * 86_400))
}

/// Serves the API's leaf, re-issuing it once it is [`API_LEAF_RENEW_DAYS`] old.
#[derive(Debug)]
pub struct ApiCertResolver {
    ca: Arc<ApiCa>,
    current: Mutex<(Arc<CertifiedKey>, u64)>,
}

impl ResolvesServerCert for ApiCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let now = SystemTime::now();
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if unix_now(now) >= current.1 {
            match self.ca.issue_leaf(now) {
                Ok(fresh) => *current = (Arc::new(fresh), renew_at(now)),
                Err(e) => log::error!("re-issuing the API certificate failed: {e}"),
            }
        }
        Some(current.0.clone())
    }
}
