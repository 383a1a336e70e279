//! Helpers shared by the interop tests: running the reference tools and writing files.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub(crate) mod e2e;
pub(crate) mod gateway;
pub(crate) mod platform;
pub(crate) mod relay;
pub(crate) mod sshd;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use postern::id::{GatewayId, OrgId};
use postern::pki::{AuthorityKind, AuthorityName, Scope};

/// `native`, or `emulated` when the suite runs under qemu-user (`POSTERN_EMULATED`, set by
/// cross/test.sh), saying so: emulated TLS and SSH run 10 to 100 times slower, so work sized for
/// native speed is shrunk there rather than skipped.
pub(crate) fn scaled(native: usize, emulated: usize, what: &str) -> usize {
    if std::env::var_os("POSTERN_EMULATED").is_some() {
        eprintln!("emulated run: {what}: {emulated} instead of {native}");
        emulated
    } else {
        native
    }
}

/// The first line a freshly started program prints on stdout (its "ready" or address line).
pub(crate) fn first_line(child: &mut Child) -> String {
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    line
}

/// Sends SIGTERM to `child` and waits (bounded) for it to exit.
pub(crate) fn terminate(child: &mut Child, what: &str) -> ExitStatus {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{what} did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `program args...`, panicking with a clear message when the tool is not installed.
pub(crate) fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}; .ci/run installs it (openssh-client, openssh-server, openssl)"))
}

/// `stdout + stderr` of an output, for assertions and failure messages.
pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes `contents` with `mode`.
pub(crate) fn write(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub(crate) fn org(s: &str) -> OrgId {
    OrgId::new(s).unwrap()
}

pub(crate) fn gw(s: &str) -> GatewayId {
    GatewayId::new(s).unwrap()
}

pub(crate) fn name(scope: Scope, kind: AuthorityKind) -> AuthorityName {
    AuthorityName { scope, kind }
}

/// Makes an Ed25519 private key with `openssl genpkey` at `path`.
pub(crate) fn openssl_ed25519_key(path: &Path) {
    let out = run(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            path.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// Writes a DER certificate as PEM at `path` and returns the path.
pub(crate) fn cert_pem(path: &Path, der: &[u8]) -> std::path::PathBuf {
    write(
        path,
        pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())).as_bytes(),
        0o644,
    );
    path.to_owned()
}
