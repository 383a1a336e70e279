//! The copy an administrator would build from stock parts: `ssh -N -R` from the gateway box to
//! an OpenSSH `sshd` on the relay box (AES-GCM), `stunnel` on the relay for the platform's outer
//! mutual TLS, and an `stunnel` pair for the end-to-end mutual TLS. Default settings otherwise.
//!
//! client → stunnel "inner" client → stunnel "outer" client → [platform | relay] stunnel server
//! → sshd's remote forward → ssh → [gateway] stunnel server → target

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::relay::ssh_keypair;
use crate::common::sshd;

/// The running pieces; each role's processes, killed on drop.
pub(crate) struct Stock {
    pub(crate) port: u16,
    pub(crate) platform: Child,
    pub(crate) relay: Child,
    pub(crate) sshd: sshd::Sshd,
    pub(crate) ssh: Child,
    pub(crate) gateway: Child,
}

impl Drop for Stock {
    fn drop(&mut self) {
        for c in [
            &mut self.platform,
            &mut self.relay,
            &mut self.ssh,
            &mut self.gateway,
        ] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Stock {
    /// Fails if `ssh -R` has exited: the figures would then not have gone through sshd.
    pub(crate) fn check_forward(&mut self) -> Result<(), String> {
        match self.ssh.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("ssh -R exited during the run ({status})")),
            Err(e) => Err(format!("ssh -R: {e}")),
        }
    }

    /// Process trees per role, as (role, root pids).
    pub(crate) fn roles(&self) -> Vec<(&'static str, Vec<u32>)> {
        vec![
            ("platform", vec![self.platform.id()]),
            ("relay", vec![self.relay.id(), self.sshd.pid()]),
            ("gateway", vec![self.ssh.id(), self.gateway.id()]),
        ]
    }
}

/// The stunnel program: Debian installs it as `stunnel4` (and usually `stunnel`).
pub(crate) fn stunnel_path() -> Option<&'static str> {
    ["/usr/bin/stunnel4", "/usr/bin/stunnel"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

/// `N` distinct free ports: all are held until all are chosen, so two services never get the
/// same one (which once let the relay's stunnel reach the gateway's directly, past a failed
/// `ssh -R`).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("free port").port())
}

fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts stunnel with `services` and waits until it listens on `port`.
fn stunnel(dir: &Path, name: &str, services: &str, port: u16) -> Child {
    let config = dir.join(format!("{name}.conf"));
    let text = format!("foreground = yes\npid =\ndebug = 4\n{services}");
    std::fs::write(&config, text).expect("write stunnel config");
    let log = dir.join(format!("{name}.log"));
    let mut child =
        Command::new(stunnel_path().expect("stunnel is not installed; .ci/run installs stunnel4"))
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("stunnel log"))
            .spawn()
            .expect("start stunnel");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() > deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("stunnel {name} did not listen on {port} ({exited:?}):\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn tls_service(dir: &Path, name: &str, client: bool, accept: u16, connect: u16) -> String {
    let (cert, key) = if client {
        ("client.pem", "client.key")
    } else {
        ("server.pem", "server.key")
    };
    format!(
        "[{name}]\nclient = {yes}\naccept = 127.0.0.1:{accept}\nconnect = 127.0.0.1:{connect}\n\
         cert = {d}/{cert}\nkey = {d}/{key}\nCAfile = {d}/ca.pem\nverifyChain = yes\n\
         requireCert = yes\nsslVersionMin = TLSv1.3\n",
        yes = if client { "yes" } else { "no" },
        d = dir.display()
    )
}

/// Builds the stock path to 127.0.0.1:`target`. `ssh_via` wraps the SSH leg: given sshd's port
/// it returns the port ssh should dial (a delaying proxy, or the same port).
pub(crate) fn start(
    dir: &Path,
    pki: &crate::mtls::Pki,
    target: u16,
    ssh_via: impl Fn(u16) -> u16,
) -> Stock {
    pki.write(dir);
    let [inner, outer, relay_tls, forward, gateway_tls] = free_ports();

    let e2e = tls_service(dir, "e2e", false, gateway_tls, target);
    let gateway = stunnel(dir, "gateway", &e2e, gateway_tls);

    ssh_keypair(dir, "host");
    let user_key = ssh_keypair(dir, "user");
    std::fs::copy(dir.join("user.pub"), dir.join("authorized_keys")).expect("authorized_keys");
    let settings = format!(
        "HostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\nAllowTcpForwarding yes\n\
         Ciphers aes128-gcm@openssh.com\n",
        d = dir.display()
    );
    let sshd = sshd::start(dir, &settings);
    let ssh_port = ssh_via(sshd.port);
    let mut ssh = Command::new("ssh")
        .args([
            "-N",
            "-c",
            "aes128-gcm@openssh.com",
            "-o",
            "ExitOnForwardFailure=yes",
        ])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
        ])
        .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-i"])
        .arg(&user_key)
        .args(["-p", &ssh_port.to_string()])
        .args([
            "-R",
            &format!("127.0.0.1:{forward}:127.0.0.1:{gateway_tls}"),
        ])
        .arg(format!("{}@127.0.0.1", sshd::current_user()))
        .stdin(Stdio::null())
        .spawn()
        .expect("start ssh");
    wait_listening(forward, "sshd's remote forward");
    if let Ok(Some(status)) = ssh.try_wait() {
        panic!("ssh -R exited ({status}): port {forward} is not sshd's forward");
    }

    let relay_service = tls_service(dir, "outer", false, relay_tls, forward);
    let relay = stunnel(dir, "relay", &relay_service, relay_tls);
    let services = format!(
        "{}{}",
        tls_service(dir, "inner", true, inner, outer),
        tls_service(dir, "outer", true, outer, relay_tls)
    );
    let platform = stunnel(dir, "platform", &services, inner);
    Stock {
        port: inner,
        platform,
        relay,
        sshd,
        ssh,
        gateway,
    }
}
