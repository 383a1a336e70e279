//! `postern-relay`: the relay. Thin: flags in, library calls out.
//!
//! Every flag can also be given as `POSTERN_<FLAG>` in the environment; the enrolment string
//! comes from `--token-file` / `POSTERN_TOKEN_FILE` or `POSTERN_TOKEN`, never from argv.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use argh::FromArgs;
use postern::cli::{enrolment, flag, list, required};
use postern::enrol::{api_client, EnrolError, Keys};
use postern::relay::agent::{self, Settings};
use postern::relay::{serve_metrics, serve_platforms, serve_ssh, Limits, Shared};
use tokio::net::TcpListener;

#[derive(FromArgs)]
/// postern relay: SSH server for gateway tunnels, mTLS listener for platforms.
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
/// enrol with the platform and serve until SIGTERM
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
    /// SSH listen address for gateways (env POSTERN_SSH_LISTEN; default 0.0.0.0:2222)
    #[argh(option)]
    ssh_listen: Option<String>,
    /// TLS listen address for platforms (env POSTERN_TLS_LISTEN; default 0.0.0.0:4433)
    #[argh(option)]
    tls_listen: Option<String>,
    /// health and metrics listen address (env POSTERN_METRICS_LISTEN; default 127.0.0.1:9433)
    #[argh(option)]
    metrics_listen: Option<String>,
    /// a name (DNS or IP) for the relay's certificates; repeatable (env POSTERN_HOSTNAME,
    /// comma-separated; default localhost and 127.0.0.1)
    #[argh(option)]
    hostname: Vec<String>,
    /// host:port gateways should dial (env POSTERN_SSH_ADVERTISE; default first hostname and the
    /// SSH port)
    #[argh(option)]
    ssh_advertise: Option<String>,
    /// host:port platforms should dial (env POSTERN_TLS_ADVERTISE; default first hostname and
    /// the TLS port)
    #[argh(option)]
    tls_advertise: Option<String>,
}

type Fallible<T = ()> = Result<T, String>;

fn main() -> ExitCode {
    postern::cli::init_logging();
    let Cmd::Run(run) = argh::from_env::<Cli>().cmd;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postern-relay: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn bind(addr: &str, what: &str) -> Fallible<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("{what} listen on {addr}: {e}"))
}

async fn serve(run: Run) -> Fallible {
    let state: PathBuf = required(run.state, "STATE", "the state directory")?;
    let platform_url: String = required(run.platform, "PLATFORM", "the platform URL")?;
    let enrolment = enrolment(run.token_file)?;
    let hostnames = list(run.hostname, "HOSTNAME", &["localhost", "127.0.0.1"]);
    let ssh_listener = bind(
        &flag(run.ssh_listen, "SSH_LISTEN")?.unwrap_or_else(|| "0.0.0.0:2222".into()),
        "SSH",
    )
    .await?;
    let tls_listener = bind(
        &flag(run.tls_listen, "TLS_LISTEN")?.unwrap_or_else(|| "0.0.0.0:4433".into()),
        "TLS",
    )
    .await?;
    let metrics_listener = bind(
        &flag(run.metrics_listen, "METRICS_LISTEN")?.unwrap_or_else(|| "127.0.0.1:9433".into()),
        "metrics",
    )
    .await?;
    let port = |l: &TcpListener| l.local_addr().map(|a| a.port()).unwrap_or(0);
    let first = hostnames[0].clone();
    let host = if first.contains(':') {
        format!("[{first}]")
    } else {
        first
    };
    let settings = Settings {
        state: state.clone(),
        platform_url,
        enrolment,
        hostnames,
        ssh_address: flag(run.ssh_advertise, "SSH_ADVERTISE")?
            .unwrap_or_else(|| format!("{host}:{}", port(&ssh_listener))),
        tls_address: flag(run.tls_advertise, "TLS_ADVERTISE")?
            .unwrap_or_else(|| format!("{host}:{}", port(&tls_listener))),
    };
    let limits = Limits::default();
    let keys = Keys::load_or_create(&state).map_err(|e| e.to_string())?;
    let registration = agent::registration(&keys, &settings).map_err(|e| e.to_string())?;
    let (client, creds) = tokio::task::spawn_blocking({
        let (settings, registration) = (settings.clone(), registration.clone());
        move || -> Result<_, EnrolError> {
            let client = api_client(&settings.state, &settings.platform_url, &settings.enrolment)?;
            let creds = client.relay_register(&registration)?;
            Ok((client, creds))
        }
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let (name, scope) = agent::scope_of(&creds).map_err(|e| e.to_string())?;
    let live = agent::live_from(&creds, &keys, &limits).map_err(|e| e.to_string())?;
    let shared = Shared::new(name.clone(), scope.clone(), live, limits.clone());
    let local = |l: &TcpListener| l.local_addr().map(|a| a.to_string()).unwrap_or_default();
    println!(
        "postern-relay: relay {name} ({}) ready: ssh {}, tls {}, metrics {}",
        match &scope {
            postern::pki::Scope::Instance => "instance".to_owned(),
            postern::pki::Scope::Org(o) => format!("org {o}"),
        },
        local(&ssh_listener),
        local(&tls_listener),
        local(&metrics_listener)
    );
    postern::notify::ready();
    let tasks = [
        tokio::spawn(serve_ssh(shared.clone(), ssh_listener)),
        tokio::spawn(serve_platforms(shared.clone(), tls_listener)),
        tokio::spawn(serve_metrics(shared.clone(), metrics_listener)),
        tokio::spawn(agent::run(
            shared.clone(),
            Arc::new(client),
            Arc::new(keys),
            registration,
            creds,
            limits,
        )),
    ];
    wait_for_signal().await?;
    log::info!("stopping: closing listeners and tunnels");
    shared.stop().await;
    for task in tasks {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    Ok(())
}

async fn wait_for_signal() -> Fallible {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
