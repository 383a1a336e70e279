//! `postern-platform`: the control plane's command line. Thin: flags in, library calls out.
//!
//! Every flag can also be given as an environment variable `POSTERN_<FLAG>` (upper case, `-`
//! as `_`); the flag wins. The sealing key comes from `--key-file` / `POSTERN_KEY_FILE` or from
//! `POSTERN_SEALING_KEY` (64 hex digits), never from the command line.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use argh::FromArgs;
use postern::cli::{flag, required};
use postern::id::{GatewayId, OrgId, RelayId};
use postern::pki::{write_private, SealingKey};
use postern::platform::admin::{self, IdentitySpec};
use postern::platform::client::ApiClient;
use postern::platform::dialer::Dialer;
use postern::platform::http::{serve, Limits};
use postern::platform::pipe::pipe;
use postern::platform::service::{Platform, ServeConfig};
use postern::platform::state::State;
use postern::platform::token::{hex, Role};

#[derive(FromArgs)]
/// postern's control plane: authorities, registry and the HTTPS API.
struct Cli {
    /// state directory (env POSTERN_STATE)
    #[argh(option)]
    state: Option<PathBuf>,
    /// file holding the sealing key, 64 hex digits (env POSTERN_KEY_FILE; or the key itself in
    /// POSTERN_SEALING_KEY)
    #[argh(option)]
    key_file: Option<PathBuf>,
    #[argh(subcommand)]
    cmd: Cmd,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Cmd {
    Init(Init),
    Org(OrgCmd),
    Identity(IdentityCmd),
    Relay(RelayCmd),
    Gateway(GatewayCmd),
    Serve(Serve),
    Connect(Connect),
    Ping(Ping),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "connect")]
/// serve a local port whose connections reach a target behind a gateway
struct Connect {
    /// platform API URL, https://host:port (env POSTERN_PLATFORM)
    #[argh(option)]
    platform: Option<String>,
    /// file holding the operator's enrolment string (env POSTERN_TOKEN_FILE; or the string in
    /// POSTERN_TOKEN)
    #[argh(option)]
    token_file: Option<PathBuf>,
    /// the gateway (env POSTERN_GATEWAY)
    #[argh(option)]
    gateway: Option<String>,
    /// host:port behind the gateway (env POSTERN_TARGET)
    #[argh(option)]
    target: Option<String>,
    /// local address to listen on (env POSTERN_LISTEN; default 127.0.0.1:0, printed)
    #[argh(option)]
    listen: Option<String>,
    /// lifetime asked for session certificates, seconds (env POSTERN_TTL_SECS; default 600)
    #[argh(option)]
    ttl_secs: Option<u64>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "ping")]
/// measure the path to a gateway: relay handshake, gateway answer, round trips
struct Ping {
    /// platform API URL, https://host:port (env POSTERN_PLATFORM)
    #[argh(option)]
    platform: Option<String>,
    /// file holding the operator's enrolment string (env POSTERN_TOKEN_FILE; or the string in
    /// POSTERN_TOKEN)
    #[argh(option)]
    token_file: Option<PathBuf>,
    /// the gateway (env POSTERN_GATEWAY)
    #[argh(option)]
    gateway: Option<String>,
    /// round trips to measure (env POSTERN_COUNT; default 5)
    #[argh(option)]
    count: Option<usize>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "init")]
/// create the state: registry, instance authorities, API CA (and the key file if missing)
struct Init {
    /// a DNS name or IP address clients use for the API; repeatable (env POSTERN_API_NAME,
    /// comma-separated; default localhost and 127.0.0.1)
    #[argh(option)]
    api_name: Vec<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "org")]
/// organisations
struct OrgCmd {
    #[argh(subcommand)]
    cmd: OrgSub,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum OrgSub {
    Create(OrgCreate),
    List(OrgList),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "create")]
/// create an organisation and its six authorities
struct OrgCreate {
    /// organisation name (a-z, 0-9, -)
    #[argh(positional)]
    name: String,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
/// list organisations
struct OrgList {}

#[derive(FromArgs)]
#[argh(subcommand, name = "identity")]
/// tokens for gateways, relays and operators
struct IdentityCmd {
    #[argh(subcommand)]
    cmd: IdentitySub,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum IdentitySub {
    Create(IdentityArgs),
    Rotate(RotateArgs),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "create")]
/// create an identity and print its enrolment string once
struct IdentityArgs {
    /// organisation (omit for an instance relay) (env POSTERN_ORG)
    #[argh(option)]
    org: Option<String>,
    /// gateway, relay or operator (env POSTERN_ROLE)
    #[argh(option)]
    role: Option<String>,
    /// its name (env POSTERN_NAME)
    #[argh(option)]
    name: Option<String>,
    /// gateways only: the relay it must use (default: chosen automatically) (env POSTERN_RELAY)
    #[argh(option)]
    relay: Option<String>,
    /// days the token stays valid (default 365; 30 for operators) (env POSTERN_VALID_DAYS)
    #[argh(option)]
    valid_days: Option<u64>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "rotate")]
/// replace an identity's token and print the new enrolment string once
struct RotateArgs {
    /// organisation (omit for an instance relay) (env POSTERN_ORG)
    #[argh(option)]
    org: Option<String>,
    /// gateway, relay or operator (env POSTERN_ROLE)
    #[argh(option)]
    role: Option<String>,
    /// its name (env POSTERN_NAME)
    #[argh(option)]
    name: Option<String>,
    /// days the token stays valid (default 365; 30 for operators) (env POSTERN_VALID_DAYS)
    #[argh(option)]
    valid_days: Option<u64>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "relay")]
/// relays
struct RelayCmd {
    #[argh(subcommand)]
    cmd: RelaySub,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum RelaySub {
    List(RelayList),
    Revoke(RelayRevoke),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
/// list relays with state, addresses, tunnels and last heartbeat
struct RelayList {}

#[derive(FromArgs)]
#[argh(subcommand, name = "revoke")]
/// revoke a relay
struct RelayRevoke {
    /// relay name
    #[argh(positional)]
    name: String,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "gateway")]
/// gateways
struct GatewayCmd {
    #[argh(subcommand)]
    cmd: GatewaySub,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum GatewaySub {
    List(GatewayList),
    Revoke(GatewayRevoke),
}

#[derive(FromArgs)]
#[argh(subcommand, name = "list")]
/// list gateways with state, relays and last heartbeat
struct GatewayList {
    /// only this organisation (env POSTERN_ORG)
    #[argh(option)]
    org: Option<String>,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "revoke")]
/// revoke a gateway
struct GatewayRevoke {
    /// organisation (env POSTERN_ORG)
    #[argh(option)]
    org: Option<String>,
    /// gateway name
    #[argh(positional)]
    name: String,
}

#[derive(FromArgs)]
#[argh(subcommand, name = "serve")]
/// serve the HTTPS API
struct Serve {
    /// address to listen on (env POSTERN_LISTEN; default 127.0.0.1:8443)
    #[argh(option)]
    listen: Option<String>,
    /// longest session certificate, seconds (env POSTERN_MAX_SESSION_SECS; default 3600)
    #[argh(option)]
    max_session_secs: Option<u64>,
    /// gateway certificate lifetime, seconds (env POSTERN_GATEWAY_CERT_SECS; default 86400)
    #[argh(option)]
    gateway_cert_secs: Option<u64>,
    /// relay certificate lifetime, seconds (env POSTERN_RELAY_CERT_SECS; default 604800)
    #[argh(option)]
    relay_cert_secs: Option<u64>,
    /// heartbeat interval told to clients, seconds (env POSTERN_HEARTBEAT_SECS; default 15)
    #[argh(option)]
    heartbeat_secs: Option<u64>,
    /// a relay or gateway silent longer than this is not live, seconds (env POSTERN_LIVE_SECS;
    /// default 60)
    #[argh(option)]
    live_secs: Option<u64>,
    /// failed token attempts per address before slowing it down (env POSTERN_AUTH_BURST;
    /// default 10)
    #[argh(option)]
    auth_burst: Option<u64>,
    /// one more failed attempt allowed per this many ms (env POSTERN_AUTH_REFILL_MS; default
    /// 6000)
    #[argh(option)]
    auth_refill_ms: Option<u64>,
}

type Fallible<T = ()> = Result<T, String>;

fn parsed<T: FromStr>(text: &str) -> Fallible<T>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| e.to_string())
}

fn sealing_key(key_file: Option<&Path>, create: bool) -> Fallible<SealingKey> {
    if let Ok(hex_key) = std::env::var("POSTERN_SEALING_KEY") {
        return SealingKey::from_hex(&hex_key).map_err(|e| format!("POSTERN_SEALING_KEY: {e}"));
    }
    let path = key_file
        .ok_or("no sealing key: pass --key-file, or set POSTERN_KEY_FILE or POSTERN_SEALING_KEY")?;
    if create && !path.exists() {
        let key = SealingKey::generate().map_err(|e| e.to_string())?;
        write_private(path, format!("{}\n", key.to_hex()).as_bytes()).map_err(|e| e.to_string())?;
        eprintln!(
            "created sealing key {} (0600); keep it outside the state directory and back it up",
            path.display()
        );
        return Ok(key);
    }
    SealingKey::from_file(path).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    postern::cli::init_logging();
    match run(argh::from_env()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern-platform: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Fallible {
    match cli.cmd {
        Cmd::Connect(c) => return run_connect(c),
        Cmd::Ping(p) => return run_ping(p),
        _ => {}
    }
    let dir: PathBuf = required(cli.state, "STATE", "the state directory")?;
    let key_file: Option<PathBuf> = flag(cli.key_file, "KEY_FILE")?;
    let now = SystemTime::now();
    if let Cmd::Init(init) = &cli.cmd {
        return run_init(&dir, key_file.as_deref(), init, now);
    }
    let state =
        State::open(&dir, sealing_key(key_file.as_deref(), false)?).map_err(|e| e.to_string())?;
    let live = ServeConfig::default().live_secs;
    match cli.cmd {
        Cmd::Init(_) => Ok(()),
        Cmd::Org(OrgCmd {
            cmd: OrgSub::Create(c),
        }) => {
            let org: OrgId = parsed(&c.name)?;
            admin::create_org(&state, &org, now).map_err(|e| e.to_string())?;
            println!("created org {org} and its six authorities");
            Ok(())
        }
        Cmd::Org(OrgCmd {
            cmd: OrgSub::List(_),
        }) => {
            print!("{}", admin::org_list(&state).map_err(|e| e.to_string())?);
            Ok(())
        }
        Cmd::Identity(IdentityCmd { cmd }) => run_identity(&state, cmd, now),
        Cmd::Relay(RelayCmd {
            cmd: RelaySub::List(_),
        }) => {
            print!(
                "{}",
                admin::relay_list(&state, now, live).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        Cmd::Relay(RelayCmd {
            cmd: RelaySub::Revoke(r),
        }) => {
            let relay: RelayId = parsed(&r.name)?;
            admin::revoke_relay(&state, &relay, now).map_err(|e| e.to_string())?;
            println!("revoked relay {relay}");
            Ok(())
        }
        Cmd::Gateway(GatewayCmd {
            cmd: GatewaySub::List(l),
        }) => {
            let org: Option<OrgId> = flag(l.org.map(|o| parsed(&o)).transpose()?, "ORG")?;
            let table =
                admin::gateway_list(&state, org.as_ref(), now, live).map_err(|e| e.to_string())?;
            print!("{table}");
            Ok(())
        }
        Cmd::Gateway(GatewayCmd {
            cmd: GatewaySub::Revoke(r),
        }) => {
            let org: OrgId = required(r.org.map(|o| parsed(&o)).transpose()?, "ORG", "the org")?;
            let gw: GatewayId = parsed(&r.name)?;
            admin::revoke_gateway(&state, &org, &gw, now).map_err(|e| e.to_string())?;
            println!("revoked gateway {gw} of org {org}");
            Ok(())
        }
        Cmd::Serve(s) => run_serve(state, s),
        Cmd::Connect(_) | Cmd::Ping(_) => Ok(()),
    }
}

fn run_init(dir: &Path, key_file: Option<&Path>, init: &Init, now: SystemTime) -> Fallible {
    let names = postern::cli::list(
        init.api_name.clone(),
        "API_NAME",
        &["localhost", "127.0.0.1"],
    );
    let key = sealing_key(key_file, true)?;
    let state = State::init(dir, key, &names, now).map_err(|e| e.to_string())?;
    println!(
        "initialised {} (API names: {}; API CA sha256 {})",
        dir.display(),
        names.join(", "),
        hex(&state.api_ca.fingerprint())
    );
    Ok(())
}

fn identity_spec(
    org: Option<String>,
    role: Option<String>,
    name: Option<String>,
    relay: Option<String>,
    valid_days: Option<u64>,
) -> Fallible<IdentitySpec> {
    let role_text: String = required(role, "ROLE", "the role")?;
    let role = Role::parse(&role_text)
        .ok_or_else(|| format!("role {role_text:?}: expected gateway, relay or operator"))?;
    let org: Option<String> = flag(org, "ORG")?;
    let relay: Option<String> = flag(relay, "RELAY")?;
    let default_days = if role == Role::Operator { 30 } else { 365 };
    let days: u64 = flag(valid_days, "VALID_DAYS")?.unwrap_or(default_days);
    Ok(IdentitySpec {
        role,
        org: org.map(|o| parsed(&o)).transpose()?,
        name: required(name, "NAME", "the name")?,
        relay_pin: relay.map(|r| parsed(&r)).transpose()?,
        valid_secs: days.saturating_mul(86_400),
    })
}

fn run_identity(state: &State, cmd: IdentitySub, now: SystemTime) -> Fallible {
    let (enrolment, spec) = match cmd {
        IdentitySub::Create(a) => {
            let spec = identity_spec(a.org, a.role, a.name, a.relay, a.valid_days)?;
            (admin::create_identity(state, &spec, now), spec)
        }
        IdentitySub::Rotate(a) => {
            let spec = identity_spec(a.org, a.role, a.name, None, a.valid_days)?;
            (admin::rotate_identity(state, &spec, now), spec)
        }
    };
    let enrolment = enrolment.map_err(|e| e.to_string())?;
    eprintln!(
        "enrolment string for {} {} (shown once; it is a secret, hand it over securely):",
        spec.role, spec.name
    );
    println!("{}", enrolment.expose());
    Ok(())
}

fn run_serve(state: State, s: Serve) -> Fallible {
    let defaults = ServeConfig::default();
    let config = ServeConfig {
        max_session_secs: flag(s.max_session_secs, "MAX_SESSION_SECS")?
            .unwrap_or(defaults.max_session_secs),
        gateway_cert_secs: flag(s.gateway_cert_secs, "GATEWAY_CERT_SECS")?
            .unwrap_or(defaults.gateway_cert_secs),
        relay_cert_secs: flag(s.relay_cert_secs, "RELAY_CERT_SECS")?
            .unwrap_or(defaults.relay_cert_secs),
        heartbeat_secs: flag(s.heartbeat_secs, "HEARTBEAT_SECS")?
            .unwrap_or(defaults.heartbeat_secs),
        live_secs: flag(s.live_secs, "LIVE_SECS")?.unwrap_or(defaults.live_secs),
        auth_burst: flag(s.auth_burst, "AUTH_BURST")?.unwrap_or(defaults.auth_burst),
        auth_refill_ms: flag(s.auth_refill_ms, "AUTH_REFILL_MS")?
            .unwrap_or(defaults.auth_refill_ms),
    };
    let listen: String = flag(s.listen, "LISTEN")?.unwrap_or_else(|| "127.0.0.1:8443".into());
    let api_ca = state.api_ca.clone();
    let tls = postern::platform::http::api_tls_config(&api_ca, SystemTime::now())
        .map_err(|e| e.to_string())?;
    let platform = Platform::new(state, config).map_err(|e| e.to_string())?;
    let listener = TcpListener::bind(&listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!(
        "postern-platform: serving the API on https://{local} (names {}; CA sha256 {})",
        api_ca.names().join(", "),
        hex(&api_ca.fingerprint())
    );
    let stop = stop_on_signal(local)?;
    postern::notify::ready();
    serve(listener, tls, Arc::new(platform), Limits::default(), stop).map_err(|e| e.to_string())?;
    eprintln!("postern-platform: stopped");
    Ok(())
}

/// Sets the returned flag on SIGTERM or SIGINT and wakes the accept loop listening on `local`,
/// so `serve` finishes the requests in flight and returns.
fn stop_on_signal(local: std::net::SocketAddr) -> Fallible<Arc<AtomicBool>> {
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    let stop = Arc::new(AtomicBool::new(false));
    let (mut woken, waker) = UnixStream::pair().map_err(|e| format!("signal pipe: {e}"))?;
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let waker = waker.try_clone().map_err(|e| format!("signal pipe: {e}"))?;
        signal_hook::low_level::pipe::register(signal, waker)
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut byte = [0u8; 1];
            if woken.read(&mut byte).is_ok() {
                eprintln!("postern-platform: stopping, finishing requests in flight");
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                // Wake the blocking accept; the connection is dropped unserved.
                let _ = std::net::TcpStream::connect(local);
            }
        })
        .map_err(|e| format!("signal thread: {e}"))?;
    Ok(stop)
}

fn operator_client(platform: Option<String>, token_file: Option<PathBuf>) -> Fallible<ApiClient> {
    let url: String = required(platform, "PLATFORM", "the platform URL")?;
    let enrolment = postern::cli::enrolment(token_file)?;
    ApiClient::enrol(&url, &enrolment).map_err(|e| e.to_string())
}

fn run_connect(c: Connect) -> Fallible {
    let client = operator_client(c.platform, c.token_file)?;
    let gateway: String = required(c.gateway, "GATEWAY", "the gateway")?;
    let target: String = required(c.target, "TARGET", "the target")?;
    let listen: String = flag(c.listen, "LISTEN")?.unwrap_or_else(|| "127.0.0.1:0".into());
    let ttl: u64 = flag(c.ttl_secs, "TTL_SECS")?.unwrap_or(600);
    let dialer = Arc::new(Dialer::new(
        client,
        &gateway,
        &target,
        ttl,
        Duration::from_secs(10),
    ));
    let listener = TcpListener::bind(&listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("postern-platform: connect listening on {local}: gateway {gateway}, target {target}");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let dialer = dialer.clone();
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let spawned = std::thread::Builder::new()
            .name("connect".into())
            .stack_size(256 * 1024)
            .spawn(move || match dialer.connect() {
                Ok(remote) => match pipe(stream, remote) {
                    Ok(n) => log::info!("{peer}: done, {} bytes up, {} down", n.up, n.down),
                    Err(e) => log::warn!("{peer}: connection failed mid-stream: {e}"),
                },
                Err(e) => log::warn!("{peer}: {e}"),
            });
        if let Err(e) = spawned {
            log::error!("cannot start a connection thread: {e}");
        }
    }
    Ok(())
}

fn run_ping(p: Ping) -> Fallible {
    let client = operator_client(p.platform, p.token_file)?;
    let gateway: String = required(p.gateway, "GATEWAY", "the gateway")?;
    let count: usize = flag(p.count, "COUNT")?.unwrap_or(5).max(1);
    let dialer = Dialer::new(client, &gateway, "0.0.0.0:1", 60, Duration::from_secs(10));
    let report = dialer.ping(count).map_err(|e| e.to_string())?;
    let mut rtts = report.round_trips.clone();
    rtts.sort();
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    println!("gateway {gateway} via relay {}", report.relay);
    println!("  session certificates: {}", ms(report.session));
    println!("  relay TLS handshake:  {}", ms(report.relay_setup));
    println!("  gateway answer:       {}", ms(report.inner_setup));
    println!(
        "  round trip ({count}):     min {}, median {}, max {}",
        ms(rtts[0]),
        ms(rtts[rtts.len() / 2]),
        ms(rtts[rtts.len() - 1])
    );
    Ok(())
}
