//! A real OpenSSH `sshd` on 127.0.0.1, run as the current user, for interop tests.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{run, write};

/// A running sshd; killed on drop.
pub(crate) struct Sshd {
    child: Child,
    pub(crate) port: u16,
    pub(crate) log: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    /// The listening sshd's process id (sessions run in its child processes).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What sshd logged so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

pub(crate) fn sshd_path() -> PathBuf {
    ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("sshd is not installed; .ci/run installs openssh-server")
}

pub(crate) fn current_user() -> String {
    String::from_utf8(run("id", &["-un"]).stdout)
        .unwrap()
        .trim()
        .to_owned()
}

/// Starts sshd in `dir` with `settings` (sshd_config lines naming host keys, CAs, …) on top of
/// a port on 127.0.0.1, no passwords and no PAM.
pub(crate) fn start(dir: &Path, settings: &str) -> Sshd {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nPidFile {dir}/sshd.pid\n{settings}\
         PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
         UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n",
        dir = dir.display()
    );
    write(&dir.join("sshd_config"), config.as_bytes(), 0o644);
    let _ = std::fs::create_dir_all("/run/sshd");
    let log = dir.join("sshd.log");
    let child = Command::new(sshd_path())
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .arg("-E")
        .arg(&log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start sshd");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "sshd did not listen: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        sleep(Duration::from_millis(50));
    }
    Sshd { child, port, log }
}
