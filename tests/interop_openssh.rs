//! Our SSH certificates against OpenSSH: `ssh-keygen -L` reads them, a real `sshd` trusting our
//! CA lets a gateway certificate in (and refuses one from another org's CA), and certificates
//! `ssh-keygen -s` makes with our CA key pass (or fail) our own policy the same way.

// Test helpers panic on setup failure; that is the point of a test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use common::{gw, name, org, run, text, write};
use postern::id::RelayId;
use postern::pki::{AuthorityKind, Lifetime, Scope, SshAuthority};
use postern::sshcert::{parse_openssh, GatewayCertPolicy, SshCertError};
use ssh_key::{Algorithm, LineEnding, PrivateKey};

fn subject_key(dir: &Path, stem: &str) -> (PrivateKey, PathBuf) {
    let key = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap();
    let path = dir.join(stem);
    write(
        &path,
        key.to_openssh(LineEnding::LF).unwrap().as_bytes(),
        0o600,
    );
    write(
        &dir.join(format!("{stem}.pub")),
        key.public_key().to_openssh().unwrap().as_bytes(),
        0o644,
    );
    (key, path)
}

fn org_ssh_client_ca(o: &str) -> SshAuthority {
    SshAuthority::create(name(Scope::Org(org(o)), AuthorityKind::RelaySshClient)).unwrap()
}

#[test]
fn ssh_keygen_lists_gateway_user_cert() {
    let dir = tempfile::tempdir().unwrap();
    let ca = org_ssh_client_ca("acme");
    let (key, _) = subject_key(dir.path(), "gw");
    let cert = ca
        .issue_gateway_user(
            key.public_key(),
            &org("acme"),
            &gw("edge-7"),
            SystemTime::now(),
            Lifetime::minutes(30),
        )
        .unwrap();
    let path = dir.path().join("gw-cert.pub");
    write(&path, cert.to_openssh().unwrap().as_bytes(), 0o644);
    let out = run("ssh-keygen", &["-L", "-f", path.to_str().unwrap()]);
    let listing = text(&out);
    assert!(out.status.success(), "{listing}");
    assert!(
        listing.contains("ssh-ed25519-cert-v01@openssh.com user certificate"),
        "{listing}"
    );
    assert!(
        listing.contains("Key ID: \"postern:v1:gateway:acme:edge-7\""),
        "{listing}"
    );
    let principals = section(&listing, "Principals:");
    assert_eq!(principals, vec!["edge-7"], "{listing}");
    assert_eq!(
        section(&listing, "Extensions:"),
        vec!["permit-port-forwarding"],
        "{listing}"
    );
    assert_eq!(
        section(&listing, "Critical Options:"),
        Vec::<String>::new(),
        "{listing}"
    );
    let valid = listing
        .lines()
        .find(|l| l.trim_start().starts_with("Valid:"))
        .unwrap();
    assert!(valid.contains("from ") && valid.contains(" to "), "{valid}");
}

#[test]
fn ssh_keygen_lists_relay_host_cert() {
    let dir = tempfile::tempdir().unwrap();
    let ca = SshAuthority::create(name(Scope::Instance, AuthorityKind::RelaySshServer)).unwrap();
    let (key, _) = subject_key(dir.path(), "relay");
    let hosts = vec!["relay.example.net".to_owned(), "10.1.2.3".to_owned()];
    let cert = ca
        .issue_relay_host(
            key.public_key(),
            &RelayId::new("r1").unwrap(),
            &hosts,
            SystemTime::now(),
            Lifetime::days(30),
        )
        .unwrap();
    let path = dir.path().join("relay-cert.pub");
    write(&path, cert.to_openssh().unwrap().as_bytes(), 0o644);
    let listing = text(&run("ssh-keygen", &["-L", "-f", path.to_str().unwrap()]));
    assert!(listing.contains("host certificate"), "{listing}");
    assert_eq!(section(&listing, "Principals:"), hosts, "{listing}");
}

/// The indented lines under `header` in `ssh-keygen -L` output ("(none)" means empty).
fn section(listing: &str, header: &str) -> Vec<String> {
    let mut lines = listing
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(header));
    let first = lines.next().unwrap_or_default();
    if first.contains("(none)") {
        return Vec::new();
    }
    lines
        .take_while(|l| l.starts_with("                "))
        .map(|l| l.trim().to_owned())
        .collect()
}

use common::sshd::{current_user, Sshd};

/// Makes an unencrypted Ed25519 key pair at `path` (and `path.pub`) with ssh-keygen.
fn ssh_keygen_ed25519(path: &Path, comment: &str) {
    let path = path.to_str().unwrap();
    let out = run(
        "ssh-keygen",
        &["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path],
    );
    assert!(out.status.success(), "{}", text(&out));
}

/// A real sshd on 127.0.0.1 trusting `ca` for users whose certificate names `principal`.
fn start_sshd(dir: &Path, ca: &SshAuthority, principal: &str) -> Sshd {
    let host = dir.join("host_ed25519");
    ssh_keygen_ed25519(&host, "relay host key");
    write(
        &dir.join("ca.pub"),
        ca.public_key().to_openssh().unwrap().as_bytes(),
        0o644,
    );
    write(
        &dir.join("principals"),
        format!("{principal}\n").as_bytes(),
        0o644,
    );
    common::sshd::start(
        dir,
        &format!(
            "HostKey {host}\nTrustedUserCAKeys {dir}/ca.pub\nAuthorizedPrincipalsFile {dir}/principals\n\
             AuthorizedKeysFile none\n",
            host = host.display(),
            dir = dir.display()
        ),
    )
}

fn ssh_login(sshd: &Sshd, key: &Path, cert: &Path) -> std::process::Output {
    let port = sshd.port.to_string();
    let cert_opt = format!("CertificateFile={}", cert.display());
    let key_s = key.to_str().unwrap();
    let target = format!("{}@127.0.0.1", current_user());
    run(
        "ssh",
        &[
            "-F",
            "/dev/null",
            "-T",
            "-p",
            &port,
            "-i",
            key_s,
            "-o",
            &cert_opt,
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
            &target,
            "echo",
            "postern-ok",
        ],
    )
}

#[test]
fn sshd_accepts_gateway_cert_from_trusted_ca_and_refuses_other_org() {
    let dir = tempfile::tempdir().unwrap();
    let acme = org_ssh_client_ca("acme");
    let other = org_ssh_client_ca("other");
    let sshd = start_sshd(dir.path(), &acme, "edge-7");
    let (key, key_path) = subject_key(dir.path(), "gw");
    let now = SystemTime::now();

    let good = acme
        .issue_gateway_user(
            key.public_key(),
            &org("acme"),
            &gw("edge-7"),
            now,
            Lifetime::minutes(10),
        )
        .unwrap();
    let good_path = dir.path().join("good-cert.pub");
    write(&good_path, good.to_openssh().unwrap().as_bytes(), 0o644);
    let out = ssh_login(&sshd, &key_path, &good_path);
    let log = || std::fs::read_to_string(&sshd.log).unwrap_or_default();
    assert!(
        out.status.success() && text(&out).contains("postern-ok"),
        "{}\nsshd log:\n{}",
        text(&out),
        log()
    );

    let bad = other
        .issue_gateway_user(
            key.public_key(),
            &org("other"),
            &gw("edge-7"),
            now,
            Lifetime::minutes(10),
        )
        .unwrap();
    let bad_path = dir.path().join("bad-cert.pub");
    write(&bad_path, bad.to_openssh().unwrap().as_bytes(), 0o644);
    let out = ssh_login(&sshd, &key_path, &bad_path);
    assert!(
        !out.status.success(),
        "sshd accepted another org's certificate: {}",
        text(&out)
    );
    assert!(text(&out).contains("Permission denied"), "{}", text(&out));
}

/// A CA key made by `ssh-keygen` and loaded into postern; certificates `ssh-keygen -s` signs with
/// it must meet our policy exactly as our own do, and its wrong ones must be refused for the
/// right reason.
#[test]
fn policy_judges_ssh_keygen_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca");
    ssh_keygen_ed25519(&ca_path, "acme ca");
    let ca_text = std::fs::read_to_string(&ca_path).unwrap();
    let ca = SshAuthority::load(
        name(Scope::Org(org("acme")), AuthorityKind::RelaySshClient),
        &ca_text,
    )
    .unwrap();
    let (_, key_path) = subject_key(dir.path(), "gw");
    let pub_path = format!("{}.pub", key_path.display());
    let cert_path = format!("{}-cert.pub", key_path.display());
    let policy = GatewayCertPolicy::new(ca.public_key(), Scope::Org(org("acme")));
    type Expect = Option<fn(&SshCertError) -> bool>;
    let cases: &[(&str, &[&str], Expect)] = &[
        (
            "good",
            &[
                "-V",
                "-1m:+10m",
                "-n",
                "edge-7",
                "-O",
                "clear",
                "-O",
                "permit-port-forwarding",
            ],
            None,
        ),
        (
            "other principal",
            &[
                "-V",
                "-1m:+10m",
                "-n",
                "edge-8",
                "-O",
                "clear",
                "-O",
                "permit-port-forwarding",
            ],
            Some(|e| matches!(e, SshCertError::WrongPrincipal { .. })),
        ),
        (
            "no forwarding",
            &["-V", "-1m:+10m", "-n", "edge-7", "-O", "clear"],
            Some(|e| matches!(e, SshCertError::MissingExtension { .. })),
        ),
        (
            "force-command",
            &[
                "-V",
                "-1m:+10m",
                "-n",
                "edge-7",
                "-O",
                "clear",
                "-O",
                "permit-port-forwarding",
                "-O",
                "force-command=/bin/true",
            ],
            Some(|e| matches!(e, SshCertError::UnknownCriticalOption { .. })),
        ),
        (
            "host type",
            &["-V", "-1m:+10m", "-h", "-n", "edge-7"],
            Some(|e| matches!(e, SshCertError::WrongType { .. })),
        ),
        (
            "expired",
            &[
                "-V",
                "-2d:-1d",
                "-n",
                "edge-7",
                "-O",
                "clear",
                "-O",
                "permit-port-forwarding",
            ],
            Some(|e| matches!(e, SshCertError::Expired { .. })),
        ),
        (
            "not yet valid",
            &[
                "-V",
                "+1d:+2d",
                "-n",
                "edge-7",
                "-O",
                "clear",
                "-O",
                "permit-port-forwarding",
            ],
            Some(|e| matches!(e, SshCertError::NotYetValid { .. })),
        ),
        // ssh-keygen's default validity is "forever"; postern refuses a certificate without an end.
        (
            "forever",
            &[
                "-n",
                "edge-7",
                "-O",
                "clear",
                "-O",
                "permit-port-forwarding",
            ],
            Some(|e| matches!(e, SshCertError::Parse(_))),
        ),
    ];
    let mut seen = 0;
    for (label, extra, refusal) in cases {
        let _ = std::fs::remove_file(&cert_path);
        let mut args = vec![
            "-q",
            "-s",
            ca_path.to_str().unwrap(),
            "-I",
            "postern:v1:gateway:acme:edge-7",
        ];
        args.extend_from_slice(extra);
        args.push(&pub_path);
        let out = run("ssh-keygen", &args);
        assert!(out.status.success(), "{label}: {}", text(&out));
        let result = parse_openssh(&std::fs::read_to_string(&cert_path).unwrap())
            .and_then(|cert| policy.verify(&cert, "edge-7", SystemTime::now()));
        match refusal {
            None => assert!(result.is_ok(), "{label}: {result:?}"),
            Some(expected) => assert!(result.as_ref().is_err_and(expected), "{label}: {result:?}"),
        }
        seen += 1;
    }
    assert_eq!(seen, 8, "every ssh-keygen fixture was judged");
}
