//! A real `postern-gateway`, and sessions through the whole path.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use postern::platform::api::{SessionCredentials, SessionRequest};
use postern::platform::client::ApiClient;
use postern::platform::dial::{dial_gateway, DialError, GatewayStream};
use postern::platform::token::Enrolment;
use postern::tls::Mode;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::platform::TestPlatform;

/// A running gateway.
pub(crate) struct TestGateway {
    pub(crate) child: Child,
    pub(crate) health: String,
    pub(crate) stderr: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TestGateway {
    /// Starts `postern-gateway run` and waits until its first tunnel is up.
    pub(crate) fn start(platform: &TestPlatform, enrolment: &Enrolment) -> Self {
        Self::start_with(platform, enrolment, &[])
    }

    /// As [`TestGateway::start`], with extra `run` flags.
    pub(crate) fn start_with(
        platform: &TestPlatform,
        enrolment: &Enrolment,
        flags: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_postern-gateway"))
            .args(["run", "--health-listen", "127.0.0.1:0"])
            .args(flags)
            .env("POSTERN_STATE", dir.path().join("state"))
            .env("POSTERN_PLATFORM", &platform.url)
            .env("POSTERN_TOKEN", enrolment.expose())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let line = super::first_line(&mut child);
        assert!(
            line.contains("ready"),
            "gateway did not come up: {line:?}\n{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        );
        let health = line.rsplit("health ").next().unwrap().trim().to_owned();
        Self {
            child,
            health,
            stderr,
            _dir: dir,
        }
    }

    /// `GET path` on the health listener: (status line, body).
    pub(crate) fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(&self.health).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// What the gateway logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// One session's certificates and both private keys.
pub(crate) struct Session {
    pub(crate) creds: SessionCredentials,
    pub(crate) relay_key: PrivateKeyDer<'static>,
    pub(crate) gateway_key: PrivateKeyDer<'static>,
}

fn key() -> (String, PrivateKeyDer<'static>) {
    let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    (
        k.public_key_pem(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.serialize_der())),
    )
}

/// Asks `operator` for a session to `gateway` and `target`.
pub(crate) fn session(operator: &ApiClient, gateway: &str, target: &str, ttl: u64) -> Session {
    let (relay_pub, relay_key) = key();
    let (gateway_pub, gateway_key) = key();
    let creds = operator
        .session(&SessionRequest {
            gateway: gateway.into(),
            target: target.into(),
            ttl_secs: ttl,
            relay_client_key: relay_pub,
            gateway_client_key: gateway_pub,
        })
        .unwrap();
    Session {
        creds,
        relay_key,
        gateway_key,
    }
}

impl Session {
    /// Opens the whole path in `mode`.
    pub(crate) fn open(&self, mode: Mode) -> Result<GatewayStream, DialError> {
        dial_gateway(
            &self.creds,
            self.relay_key.clone_key(),
            self.gateway_key.clone_key(),
            mode,
            Duration::from_secs(20),
        )
    }
}
