//! A real `postern-platform` for tests: a temporary state, the CLI, and `serve` on 127.0.0.1:0.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use postern::id::OrgId;
use postern::pki::{AuthorityStore, InstanceAuthorities, OrgAuthorities, SealingKey};
use postern::platform::api::{GatewayRegistration, RelayRegistration};
use postern::platform::client::ApiClient;
use postern::platform::token::Enrolment;
use rustls_pki_types::CertificateDer;

/// One platform: its state directory, sealing key and (once started) its `serve` process.
pub(crate) struct TestPlatform {
    pub(crate) dir: tempfile::TempDir,
    key: String,
    serve: Option<Child>,
    pub(crate) url: String,
}

impl Drop for TestPlatform {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_postern-platform"))
}

impl TestPlatform {
    /// `init` a fresh state (sealing key in the environment, never on the command line).
    pub(crate) fn init() -> Self {
        let p = Self {
            dir: tempfile::tempdir().unwrap(),
            key: SealingKey::generate().unwrap().to_hex(),
            serve: None,
            url: String::new(),
        };
        p.ok(&["init"]);
        p
    }

    pub(crate) fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn command(&self) -> Command {
        let mut c = Command::new(bin());
        c.env("POSTERN_STATE", self.state())
            .env("POSTERN_SEALING_KEY", &self.key)
            .env("RUST_LOG", "warn");
        c
    }

    /// Runs the CLI.
    pub(crate) fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs the CLI and returns its stdout, failing the test if it fails.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "{args:?}: {}", super::text(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `identity create` and the parsed enrolment string.
    pub(crate) fn identity(
        &self,
        role: &str,
        org: Option<&str>,
        name: &str,
        extra: &[&str],
    ) -> Enrolment {
        let mut args = vec!["identity", "create", "--role", role, "--name", name];
        if let Some(org) = org {
            args.extend(["--org", org]);
        }
        args.extend(extra);
        Enrolment::parse(self.ok(&args).trim()).unwrap()
    }

    /// Starts `serve` on 127.0.0.1:0 with `extra` flags and waits for its address.
    pub(crate) fn start(&mut self, extra: &[&str]) {
        let mut child = self
            .command()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let line = super::first_line(&mut child);
        let start = line
            .find("https://")
            .unwrap_or_else(|| panic!("no URL in {line:?}"));
        let url = line[start..].split_whitespace().next().unwrap();
        self.url = url.to_owned();
        self.serve = Some(child);
    }

    /// Stops `serve`.
    pub(crate) fn stop(&mut self) {
        if let Some(mut child) = self.serve.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM to `serve` and returns how it exited.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.serve.take().expect("serve is running");
        super::terminate(&mut child, "postern-platform serve")
    }

    /// A client enrolled with `enrolment` (checks the API pin).
    pub(crate) fn client(&self, enrolment: &Enrolment) -> ApiClient {
        ApiClient::enrol(&self.url, enrolment).unwrap()
    }

    fn authorities(&self) -> AuthorityStore {
        AuthorityStore::new(
            &self.state().join("authorities"),
            SealingKey::from_hex(&self.key).unwrap(),
        )
    }

    pub(crate) fn instance_cas(&self) -> InstanceAuthorities {
        self.authorities().load_instance().unwrap()
    }

    pub(crate) fn org_cas(&self, org: &str) -> OrgAuthorities {
        self.authorities()
            .load_org(&OrgId::new(org).unwrap())
            .unwrap()
    }
}

/// Fresh keys for a registering relay or gateway: an OpenSSH Ed25519 public key and a PEM
/// Ed25519 public key.
pub(crate) fn fresh_keys() -> (String, String) {
    let ssh = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)
        .unwrap()
        .public_key()
        .to_openssh()
        .unwrap();
    let tls = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .unwrap()
        .public_key_pem();
    (ssh, tls)
}

pub(crate) fn relay_registration(port: u16) -> RelayRegistration {
    let (ssh, tls) = fresh_keys();
    RelayRegistration {
        ssh_host_key: ssh,
        tls_public_key: tls,
        hostnames: vec!["localhost".into(), "127.0.0.1".into()],
        ssh_address: format!("127.0.0.1:{port}"),
        tls_address: format!("127.0.0.1:{}", port + 1),
        org: None,
    }
}

pub(crate) fn gateway_registration() -> GatewayRegistration {
    let (ssh, tls) = fresh_keys();
    GatewayRegistration {
        ssh_public_key: ssh,
        tls_public_key: tls,
        org: None,
    }
}

/// The first certificate of a PEM text.
pub(crate) fn der(pem_text: &str) -> CertificateDer<'static> {
    CertificateDer::from(pem::parse(pem_text).unwrap().into_contents())
}
