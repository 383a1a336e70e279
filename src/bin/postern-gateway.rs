//! `postern-gateway`: the edge-box gateway. Thin: flags in, library calls out.
//!
//! Every flag can also be given as `POSTERN_<FLAG>` in the environment. The enrolment string
//! comes from `--token-file` / `POSTERN_TOKEN_FILE` or `POSTERN_TOKEN`; proxy credentials from
//! `--proxy-auth-file`; never from argv.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use argh::FromArgs;
use postern::cli::{enrolment, flag, read_file, required};
use postern::gateway::proxy::Proxy;
use postern::gateway::supervisor::{run, Settings};

#[derive(FromArgs)]
/// postern gateway: keeps an SSH tunnel to its relay and serves end-to-end TLS sessions.
struct Cli {
    #[argh(subcommand)]
    cmd: Cmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Run(Run),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "run")]
/// register with the platform and serve until SIGTERM
struct Run {
    /// state directory for keys and the pinned API CA (env POSTERN_STATE)
    #[argh(option)]
    state: Option<PathBuf>,
    /// platform API URL, https://host:port (env POSTERN_PLATFORM)
    #[argh(option)]
    platform: Option<String>,
    /// file holding the enrolment string (env POSTERN_TOKEN_FILE; or the string itself in
    /// POSTERN_TOKEN)
    #[argh(option)]
    token_file: Option<PathBuf>,
    /// HTTP CONNECT proxy host:port for the SSH connection (env POSTERN_PROXY)
    #[argh(option)]
    proxy: Option<String>,
    /// file holding user:password for the proxy (env POSTERN_PROXY_AUTH_FILE)
    #[argh(option)]
    proxy_auth_file: Option<PathBuf>,
    /// health and metrics listen address (env POSTERN_HEALTH_LISTEN; default 127.0.0.1:9434)
    #[argh(option)]
    health_listen: Option<String>,
    /// seconds each blocking phase of a tunnel may take (env POSTERN_TIMEOUT_SECS; default 10)
    #[argh(option)]
    timeout_secs: Option<u64>,
}

type Fallible<T = ()> = Result<T, String>;

fn main() -> ExitCode {
    postern::cli::init_logging();
    let Cmd::Run(args) = argh::from_env::<Cli>().cmd;
    match serve(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: Run) -> Fallible {
    let state: PathBuf = required(args.state, "STATE", "the state directory")?;
    let platform_url: String = required(args.platform, "PLATFORM", "the platform URL")?;
    let enrolment = enrolment(args.token_file)?;
    let proxy = match flag(args.proxy, "PROXY")? {
        None => None,
        Some(address) => Some(Proxy {
            address,
            credentials: flag(args.proxy_auth_file, "PROXY_AUTH_FILE")?
                .map(|p| read_file(&p))
                .transpose()?,
        }),
    };
    let health_addr =
        flag(args.health_listen, "HEALTH_LISTEN")?.unwrap_or_else(|| "127.0.0.1:9434".into());
    let health = TcpListener::bind(&health_addr)
        .map_err(|e| format!("health listen on {health_addr}: {e}"))?;
    let health_local = health
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let stopping = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stopping.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    let settings = Settings {
        state,
        platform_url,
        enrolment,
        proxy,
        timeout: Duration::from_secs(flag(args.timeout_secs, "TIMEOUT_SECS")?.unwrap_or(10)),
    };
    let on_ready = Box::new(move |who: &str, relay: &str| {
        println!("postern-gateway: {who} ready: tunnel to relay {relay}, health {health_local}");
        postern::notify::ready();
    });
    run(settings, stopping, Some(health), on_ready).map_err(|e| e.to_string())?;
    log::info!("stopped");
    Ok(())
}
