//! The baseline for connection setup: one mutual-TLS connection straight to the target, through
//! a rustls terminator (tokio, as in the relay) in front of it. The same certificates, written as
//! PEM, serve the stunnel instances of the stock copy.

use std::io;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

/// A CA with one server and one client certificate (Ed25519, like postern's).
pub(crate) struct Pki {
    ca: CertificateDer<'static>,
    server: (CertificateDer<'static>, KeyPair),
    client: (CertificateDer<'static>, KeyPair),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn key_der(k: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der()))
}

/// An Ed25519 key in PKCS#8 v1, which OpenSSL 3.0 (stunnel's) reads; ring's own PKCS#8 v2
/// documents it refuses.
fn openssl_key() -> KeyPair {
    let out = crate::common::run("openssl", &["genpkey", "-algorithm", "ed25519"]);
    assert!(out.status.success(), "openssl genpkey failed");
    KeyPair::from_pem(&String::from_utf8_lossy(&out.stdout)).expect("OpenSSL's Ed25519 key")
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

impl Pki {
    pub(crate) fn new() -> Self {
        let ca_key = openssl_key();
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = dn("postern bench CA");
        let ca = params.self_signed(&ca_key).expect("CA").der().clone();
        let issuer = Issuer::new(params, ca_key);
        let leaf = |names: Vec<String>, usage| {
            let key = openssl_key();
            let mut params = CertificateParams::new(names.clone()).expect("leaf params");
            params.distinguished_name = dn(&names[0]);
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer).expect("leaf").der().clone();
            (cert, key)
        };
        Self {
            server: leaf(
                vec!["localhost".into(), "127.0.0.1".into()],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            client: leaf(
                vec!["bench-client".into()],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            ca,
        }
    }

    /// Writes ca.pem, server.pem, server.key, client.pem and client.key into `dir`.
    pub(crate) fn write(&self, dir: &Path) {
        let pem = |tag: &str, der: &[u8]| pem::encode(&pem::Pem::new(tag, der.to_vec()));
        let files = [
            ("ca.pem", pem("CERTIFICATE", &self.ca)),
            ("server.pem", pem("CERTIFICATE", &self.server.0)),
            ("server.key", self.server.1.serialize_pem()),
            ("client.pem", pem("CERTIFICATE", &self.client.0)),
            ("client.key", self.client.1.serialize_pem()),
        ];
        for (name, text) in files {
            crate::common::write(&dir.join(name), text.as_bytes(), 0o600);
        }
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).expect("CA root");
        Arc::new(roots)
    }

    fn server_config(&self) -> Arc<ServerConfig> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots(), provider())
            .build()
            .expect("client verifier");
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.server.0.clone()], key_der(&self.server.1))
            .expect("server certificate");
        Arc::new(config)
    }

    pub(crate) fn client_config(&self) -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(self.roots())
            .with_client_auth_cert(vec![self.client.0.clone()], key_der(&self.client.1))
            .expect("client certificate");
        Arc::new(config)
    }
}

/// Starts the terminator in front of 127.0.0.1:`target`; returns its port.
pub(crate) fn start(pki: &Pki, target: u16) -> u16 {
    let config = pki.server_config();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mTLS terminator");
    let port = listener.local_addr().expect("terminator address").port();
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    let _ = up.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
    });
    port
}

/// One mutual-TLS connection through the terminator that writes twice before reading: seconds
/// from connect to the full echo (the same exchange as `target::setup_once`).
pub(crate) fn setup_once(config: &Arc<ClientConfig>, port: u16) -> io::Result<f64> {
    let start = Instant::now();
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let name = ServerName::try_from("localhost").map_err(io::Error::other)?;
    let conn = ClientConnection::new(config.clone(), name).map_err(io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    crate::target::write_twice_then_read(&mut s)?;
    Ok(start.elapsed().as_secs_f64())
}
