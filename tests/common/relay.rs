//! A real `postern-relay` and an OpenSSH client standing in for a gateway.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postern::platform::api::{GatewayRegistration, SessionCredentials, SessionRequest};
use postern::platform::client::ApiClient;
use postern::platform::dial::{dial_relay, DialError, RelayStream};
use postern::platform::token::Enrolment;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::platform::TestPlatform;

/// A running relay.
pub(crate) struct TestRelay {
    child: Child,
    args: (String, String),
    extra: Vec<String>,
    env: Vec<(String, String)>,
    pub(crate) ssh_port: u16,
    pub(crate) tls: String,
    pub(crate) metrics: String,
    _dir: tempfile::TempDir,
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        + key.len();
    line[start..].split([',', ' ', '\n']).next().unwrap()
}

impl TestRelay {
    /// Starts `postern-relay run` on 127.0.0.1 port 0 enrolled with `enrolment`.
    pub(crate) fn start(platform: &TestPlatform, enrolment: &Enrolment) -> Self {
        Self::start_with(platform, enrolment, "127.0.0.1:0", &[])
    }

    /// As [`TestRelay::start`], with the SSH listener on `ssh_listen` and extra `run` flags.
    pub(crate) fn start_with(
        platform: &TestPlatform,
        enrolment: &Enrolment,
        ssh_listen: &str,
        extra: &[&str],
    ) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let dir = tempfile::tempdir().unwrap();
        let env = vec![
            ("POSTERN_STATE".to_owned(), dir.path().display().to_string()),
            ("POSTERN_PLATFORM".to_owned(), platform.url.clone()),
            ("POSTERN_TOKEN".to_owned(), enrolment.expose()),
        ];
        let (child, line) = Self::spawn(&env, ssh_listen, "127.0.0.1:0", &extra);
        let ssh = field(&line, "ssh ");
        Self {
            ssh_port: ssh.rsplit(':').next().unwrap().parse().unwrap(),
            tls: field(&line, "tls ").to_owned(),
            metrics: field(&line, "metrics ").to_owned(),
            args: (ssh.to_owned(), field(&line, "tls ").to_owned()),
            extra,
            env,
            child,
            _dir: dir,
        }
    }

    fn spawn(env: &[(String, String)], ssh: &str, tls: &str, extra: &[String]) -> (Child, String) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_postern-relay"))
            .args(["run", "--ssh-listen", ssh, "--tls-listen", tls])
            .args(["--metrics-listen", "127.0.0.1:0", "--hostname", "127.0.0.1"])
            .args(["--hostname", "localhost"])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let line = super::first_line(&mut child);
        assert!(line.contains("ready"), "relay did not start: {line:?}");
        (child, line)
    }

    /// Kills the relay (SIGKILL: no goodbye to anyone) and starts it again on the same ports
    /// with the same state.
    pub(crate) fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let (child, line) = Self::spawn(&self.env, &self.args.0, &self.args.1, &self.extra);
        self.child = child;
        self.metrics = field(&line, "metrics ").to_owned();
    }

    /// The relay's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (bounded) for a clean exit.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        super::terminate(&mut self.child, "relay")
    }

    /// `GET path` on the metrics listener.
    pub(crate) fn get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(&self.metrics).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// The value of one metric line (exact name with labels).
    pub(crate) fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
    }

    /// Waits (bounded) until metric `name` is at least `min`.
    pub(crate) fn wait_metric(&self, name: &str, min: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metric(name) < min {
            assert!(Instant::now() < deadline, "{name} never reached {min}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until `postern_relay_tunnels` is `n`.
    pub(crate) fn wait_tunnels(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metric("postern_relay_tunnels") != n {
            assert!(Instant::now() < deadline, "tunnels never reached {n}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// An echo server that prefixes its replies with `tag`, until the test ends.
pub(crate) fn tagged_echo(tag: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 65536];
                let _ = stream.write_all(tag.as_bytes());
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = stream.shutdown(std::net::Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

/// An OpenSSH key pair at `dir/name` (`name.pub` beside it).
pub(crate) fn ssh_keypair(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let out = super::run(
        "ssh-keygen",
        &[
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            name,
            "-f",
            path.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", super::text(&out));
    path
}

/// Registers a gateway whose SSH key is the OpenSSH key at `key`; writes `key-cert.pub` and a
/// known_hosts trusting the relay SSH Server CA it was given. Returns the known_hosts path.
pub(crate) fn register_openssh_gateway(client: &ApiClient, key: &Path) -> PathBuf {
    let (_, tls) = super::platform::fresh_keys();
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    let creds = client
        .gateway_register(&GatewayRegistration {
            ssh_public_key: public,
            tls_public_key: tls,
            org: None,
        })
        .unwrap();
    let cert_path = PathBuf::from(format!("{}-cert.pub", key.display()));
    std::fs::write(&cert_path, format!("{}\n", creds.ssh_certificate)).unwrap();
    let known = key.with_extension("known_hosts");
    std::fs::write(
        &known,
        format!("@cert-authority * {}\n", creds.relay_host_ca),
    )
    .unwrap();
    known
}

/// `ssh` options shared by every test connection.
pub(crate) fn ssh_command(key: &Path, known_hosts: &Path, port: u16, user: &str) -> Command {
    let mut c = Command::new("ssh");
    c.args([
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
    ])
    .arg("-o")
    .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
    .args([
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
    ])
    .args(["-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=2"])
    .arg("-i")
    .arg(key)
    .args(["-p", &port.to_string(), &format!("{user}@127.0.0.1")]);
    c
}

/// `ssh -N -R` for `user`, forwarding to 127.0.0.1:`target`.
pub(crate) fn openssh_tunnel(
    key: &Path,
    known_hosts: &Path,
    port: u16,
    user: &str,
    target: u16,
) -> Child {
    openssh_tunnel_with(key, known_hosts, port, user, target, &[])
}

/// [`openssh_tunnel`] with more `ssh` options (`-c aes128-ctr`, …).
pub(crate) fn openssh_tunnel_with(
    key: &Path,
    known_hosts: &Path,
    port: u16,
    user: &str,
    target: u16,
    options: &[&str],
) -> Child {
    ssh_command(key, known_hosts, port, user)
        .args(options)
        .args([
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            &format!("0:127.0.0.1:{target}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Session certificates for `gateway` and a relay client key, from `operator`.
pub(crate) fn session(
    operator: &ApiClient,
    gateway: &str,
    target: &str,
) -> (SessionCredentials, PrivateKeyDer<'static>) {
    let relay_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let (_, gateway_key) = super::platform::fresh_keys();
    let creds = operator
        .session(&SessionRequest {
            gateway: gateway.into(),
            target: target.into(),
            ttl_secs: 300,
            relay_client_key: relay_key.public_key_pem(),
            gateway_client_key: gateway_key,
        })
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(relay_key.serialize_der()));
    (creds, key)
}

/// Dials the relay of `creds`.
pub(crate) fn dial(
    creds: &SessionCredentials,
    key: PrivateKeyDer<'static>,
) -> Result<RelayStream, DialError> {
    dial_relay(creds, key, Duration::from_secs(10))
}
