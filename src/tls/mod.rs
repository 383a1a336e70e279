//! Pinned TLS: rustls configurations for postern's four TLS endpoints.
//!
//! | endpoint | presents | trusts exactly | yields |
//! |---|---|---|---|
//! | relay server ([`relay::RelayTlsServer`]) | relay PKI Server CA leaf | its relay PKI Client CA | [`relay::RelayRoute`] |
//! | platform→relay client ([`relay::platform_relay_client`]) | relay PKI Client CA leaf | the relay PKI Server CA | |
//! | gateway server ([`gateway::GatewayTlsServer`]) | org Gateway Server CA leaf | the org Gateway Client CA | [`gateway::SessionGrant`] |
//! | platform→gateway client ([`gateway::platform_gateway_client`]) | org Gateway Client CA leaf | the org Gateway Server CA, pinned to one gateway | |
//!
//! Every verifier trusts one authority certificate and nothing else: the chain a peer sends is
//! ignored (postern's leaves are signed directly by their authority), so an intermediate or a
//! parent of the right CA cannot vouch for anyone. Each check is available sans-IO (`verify`
//! taking `now`) for tests and for re-checking a live connection; the rustls adapters call the
//! same code. A refusal inside rustls carries the [`TlsError`], recoverable with
//! [`TlsError::from_rustls`].
//!
//! All endpoints speak TLS 1.3 only, with the ring provider. The inner platform↔gateway session
//! names its [`Mode`] by ALPN.

pub mod gateway;
pub mod relay;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::clock::{rfc3339, span, unix_now};
use crate::id::{GatewayId, OrgId};
use crate::pki::ext::ExtensionError;

/// Why a TLS peer certificate or configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsError {
    /// The leaf was not issued by the one authority trusted here.
    UntrustedIssuer {
        /// The trusted authority's subject.
        expected: String,
        /// The issuer the leaf names.
        arrived: String,
    },
    /// The leaf's signature does not verify under the trusted authority (altered).
    BadSignature,
    /// The leaf has expired.
    Expired {
        /// Its `notAfter`, Unix seconds.
        not_after: u64,
        /// The time of the check.
        now: u64,
    },
    /// The leaf is not valid yet.
    NotYetValid {
        /// Its `notBefore`, Unix seconds.
        not_before: u64,
        /// The time of the check.
        now: u64,
    },
    /// The leaf is not for this use (a server certificate presented as a client's, or reverse).
    WrongUsage {
        /// The extended key usage required here.
        expected: &'static str,
    },
    /// An authority certificate was presented as a leaf.
    CaAsLeaf,
    /// The leaf is not valid for the name pinned here.
    NameMismatch {
        /// The name required.
        expected: String,
    },
    /// postern's identity or permission extension is missing or malformed.
    Extension(ExtensionError),
    /// The certificate speaks for another organisation.
    WrongOrg {
        /// The organisation required here.
        expected: OrgId,
        /// The organisation in the certificate.
        arrived: OrgId,
    },
    /// The certificate speaks for another gateway.
    WrongGateway {
        /// The gateway required here.
        expected: GatewayId,
        /// The gateway in the certificate.
        arrived: GatewayId,
    },
    /// The peer presented no certificate.
    NoPeerCertificate,
    /// The peer named no postern mode, or one this build does not know.
    UnknownMode {
        /// The ALPN value offered, if any.
        arrived: Option<String>,
    },
    /// Any other certificate defect, as webpki names it.
    Certificate(String),
    /// A configuration could not be built (bad key, bad certificate).
    Config(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UntrustedIssuer { expected, arrived } => write!(
                f,
                "certificate issued by \"{arrived}\"; only \"{expected}\" is trusted here"
            ),
            Self::BadSignature => f.write_str("certificate signature does not verify (altered)"),
            Self::Expired { not_after, now } => write!(
                f,
                "certificate expired at {}, {} ago",
                rfc3339(*not_after),
                span(now.saturating_sub(*not_after))
            ),
            Self::NotYetValid { not_before, now } => write!(
                f,
                "certificate is not valid until {}, {} from now",
                rfc3339(*not_before),
                span(not_before.saturating_sub(*now))
            ),
            Self::WrongUsage { expected } => {
                write!(f, "certificate is not for {expected}; wrong kind of certificate")
            }
            Self::CaAsLeaf => f.write_str("an authority certificate was presented as a leaf"),
            Self::NameMismatch { expected } => {
                write!(f, "certificate is not valid for {expected:?}")
            }
            Self::Extension(e) => write!(f, "{e}"),
            Self::WrongOrg { expected, arrived } => {
                write!(f, "certificate is for org {arrived}; expected org {expected}")
            }
            Self::WrongGateway { expected, arrived } => {
                write!(f, "certificate is for gateway {arrived}; expected gateway {expected}")
            }
            Self::NoPeerCertificate => f.write_str("peer presented no certificate"),
            Self::UnknownMode { arrived: None } => {
                f.write_str("peer named no postern mode (ALPN); expected one of postern-tcp/1, postern-ping/1, postern-health/1")
            }
            Self::UnknownMode { arrived: Some(m) } => write!(f, "unknown postern mode {m:?}"),
            Self::Certificate(e) => write!(f, "certificate refused: {e}"),
            Self::Config(e) => write!(f, "TLS configuration error: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

impl From<ExtensionError> for TlsError {
    fn from(e: ExtensionError) -> Self {
        Self::Extension(e)
    }
}

impl TlsError {
    /// The postern refusal inside a rustls error, when a postern verifier produced it.
    pub fn from_rustls(e: &rustls::Error) -> Option<&TlsError> {
        match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.downcast_ref::<TlsError>()
            }
            _ => None,
        }
    }

    fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }
}

/// The inner session's purpose, named by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Forward bytes to the permitted target.
    Tcp,
    /// Answer round-trip probes.
    Ping,
    /// Report the gateway's health.
    Health,
}

impl Mode {
    /// Every mode, in the order a gateway offers them.
    pub const ALL: [Mode; 3] = [Mode::Tcp, Mode::Ping, Mode::Health];

    /// The ALPN protocol id.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Self::Tcp => b"postern-tcp/1",
            Self::Ping => b"postern-ping/1",
            Self::Health => b"postern-health/1",
        }
    }

    /// The mode a negotiated ALPN value names.
    pub fn from_alpn(alpn: Option<&[u8]>) -> Result<Self, TlsError> {
        Self::ALL
            .into_iter()
            .find(|m| Some(m.alpn()) == alpn)
            .ok_or_else(|| TlsError::UnknownMode {
                arrived: alpn.map(|a| String::from_utf8_lossy(a).into_owned()),
            })
    }
}

/// The crypto provider every postern endpoint uses: ring, TLS 1.3 AEAD suites only, in the
/// order fastest on this CPU ([`crate::cipher`]).
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites = crate::cipher::tls13_suites(crate::cipher::hardware_aes());
    Arc::new(provider)
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

fn to_system(now: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(now.as_secs())
}

fn to_unix(now: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(unix_now(now)))
}

/// Which extended key usage a leaf must carry.
#[derive(Debug, Clone, Copy)]
enum Usage {
    Client,
    Server,
}

/// The one authority certificate a verifier trusts.
#[derive(Debug, Clone)]
struct TrustedAuthority {
    cert: CertificateDer<'static>,
    subject: String,
}

impl TrustedAuthority {
    fn new(cert: CertificateDer<'static>) -> Result<Self, TlsError> {
        webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| TlsError::Config(format!("trusted authority certificate: {e}")))?;
        let subject = subject_of(&cert)?;
        Ok(Self { cert, subject })
    }

    /// Checks that `leaf` is signed by this authority, is a leaf for `usage`, and is valid at
    /// `now`. The peer's intermediates are deliberately not consulted.
    fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        usage: Usage,
        now: SystemTime,
    ) -> Result<(), TlsError> {
        let anchor = webpki::anchor_from_trusted_cert(&self.cert)
            .map_err(|e| TlsError::Config(format!("trusted authority certificate: {e}")))?;
        let ee = webpki::EndEntityCert::try_from(leaf)
            .map_err(|e| TlsError::Certificate(format!("{e:?}")))?;
        let eku = match usage {
            Usage::Client => webpki::KeyUsage::client_auth(),
            Usage::Server => webpki::KeyUsage::server_auth(),
        };
        ee.verify_for_usage(
            algorithms().all,
            &[anchor],
            &[],
            to_unix(now),
            eku,
            None,
            None,
        )
        .map(|_| ())
        .map_err(|e| self.explain(e, leaf, usage))
    }

    fn explain(&self, e: webpki::Error, leaf: &CertificateDer<'_>, usage: Usage) -> TlsError {
        match e {
            webpki::Error::UnknownIssuer => TlsError::UntrustedIssuer {
                expected: self.subject.clone(),
                arrived: issuer_of(leaf).unwrap_or_else(|_| "an unparsable issuer".into()),
            },
            webpki::Error::InvalidSignatureForPublicKey => TlsError::BadSignature,
            webpki::Error::CertExpired { time, not_after } => TlsError::Expired {
                not_after: not_after.as_secs(),
                now: time.as_secs(),
            },
            webpki::Error::CertNotValidYet { time, not_before } => TlsError::NotYetValid {
                not_before: not_before.as_secs(),
                now: time.as_secs(),
            },
            webpki::Error::RequiredEkuNotFoundContext(_) => TlsError::WrongUsage {
                expected: match usage {
                    Usage::Client => "TLS client authentication",
                    Usage::Server => "TLS server authentication",
                },
            },
            webpki::Error::CaUsedAsEndEntity => TlsError::CaAsLeaf,
            other => TlsError::Certificate(format!("{other:?}")),
        }
    }

    /// The subject this authority is known by, for client-certificate hints.
    fn hint(&self) -> Vec<rustls::DistinguishedName> {
        webpki::anchor_from_trusted_cert(&self.cert)
            .map(|a| vec![rustls::DistinguishedName::in_sequence(&a.subject)])
            .unwrap_or_default()
    }
}

fn parse<'a>(cert: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, TlsError> {
    X509Certificate::from_der(cert)
        .map(|(_, c)| c)
        .map_err(|e| TlsError::Certificate(e.to_string()))
}

fn subject_of(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    Ok(parse(cert)?.subject().to_string())
}

fn issuer_of(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    Ok(parse(cert)?.issuer().to_string())
}

/// `notAfter` of a certificate, Unix seconds.
fn not_after_of(cert: &CertificateDer<'_>) -> Result<u64, TlsError> {
    let t = parse(cert)?.validity().not_after.timestamp();
    u64::try_from(t).map_err(|_| TlsError::Certificate(format!("notAfter {t} is before 1970")))
}

/// A TLS 1.3 signature check with postern's algorithms (ring, Ed25519 and ECDSA P-256 among
/// them), for every verifier in the crate.
pub(crate) fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
}

/// The answer of every postern verifier to a TLS 1.2 signature.
pub(crate) fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::General("postern speaks TLS 1.3 only".into()))
}

/// The signature schemes every postern verifier offers.
pub(crate) fn schemes() -> Vec<SignatureScheme> {
    algorithms().supported_schemes()
}

/// A certificate chain and private key an endpoint presents.
#[derive(Debug)]
pub struct Identity {
    /// The leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn config_error(e: rustls::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

/// A server name for SNI from a string, or a configuration error.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| TlsError::Config(format!("{name:?} is not a valid server name")))
}

/// A postern check of a client certificate, run by rustls during the handshake.
trait ClientCheck: fmt::Debug + Send + Sync + 'static {
    fn authority(&self) -> &TrustedAuthority;
    fn check(&self, leaf: &CertificateDer<'_>, now: SystemTime) -> Result<(), TlsError>;
}

/// A postern check of a server certificate, run by rustls during the handshake.
trait ServerCheck: fmt::Debug + Send + Sync + 'static {
    fn check(
        &self,
        leaf: &CertificateDer<'_>,
        name: &ServerName<'_>,
        now: SystemTime,
    ) -> Result<(), TlsError>;
}

#[derive(Debug)]
struct ClientAdapter<V> {
    check: V,
    hints: Vec<DistinguishedName>,
}

impl<V: ClientCheck> ClientCertVerifier for ClientAdapter<V> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }
    fn verify_client_cert(
        &self,
        leaf: &CertificateDer<'_>,
        _ignored_chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check
            .check(leaf, to_system(now))
            .map(|()| ClientCertVerified::assertion())
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
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

#[derive(Debug)]
struct ServerAdapter<V>(V);

impl<V: ServerCheck> ServerCertVerifier for ServerAdapter<V> {
    fn verify_server_cert(
        &self,
        leaf: &CertificateDer<'_>,
        _ignored_chain: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .check(leaf, name, to_system(now))
            .map(|()| ServerCertVerified::assertion())
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
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// The largest record the end-to-end session sends, header included: 17 bytes short of 16 KiB,
/// so that once sealed (5-byte header, content type, 16-byte tag) each inner record is exactly
/// one full-size record of the relay hop it travels in, instead of a full one and a 22-byte one.
pub const INNER_RECORD: usize = 16 * 1024 - 17;

/// A TLS 1.3 server presenting `identity` and requiring client certificates `check` accepts,
/// sending records of at most `record` bytes (None: the TLS maximum).
fn server_config<V: ClientCheck>(
    identity: Identity,
    check: V,
    alpn: Vec<Vec<u8>>,
    record: Option<usize>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let hints = check.authority().hint();
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(Arc::new(ClientAdapter { check, hints }))
        .with_single_cert(identity.chain, identity.key)
        .map_err(config_error)?;
    config.alpn_protocols = alpn;
    config.max_fragment_size = record;
    // No resumption: a resumed session skips the client certificate checks.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A TLS 1.3 client presenting `identity` and accepting servers `check` accepts, sending
/// records of at most `record` bytes (None: the TLS maximum).
fn client_config<V: ServerCheck>(
    identity: Identity,
    check: V,
    alpn: Vec<Vec<u8>>,
    record: Option<usize>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerAdapter(check)))
        .with_client_auth_cert(identity.chain, identity.key)
        .map_err(config_error)?;
    config.alpn_protocols = alpn;
    config.max_fragment_size = record;
    // Every connection is a full handshake: its certificates are checked afresh each time.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}
