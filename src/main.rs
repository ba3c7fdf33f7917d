//! The `pinecone-admin-proxy` binary: process concerns only. Arguments, logging,
//! configuration, signals and exit codes (0 after a clean shutdown, 64 for bad usage or
//! configuration, 1 for failures at run time). Everything else is the library's.

use clap::{Parser, Subcommand};
use pinecone_admin_proxy::config::{self, Config, Env, Flags};
use pinecone_admin_proxy::credentials::{Credentials, Reload};
use pinecone_admin_proxy::fake::quota::Quota;
use pinecone_admin_proxy::fake::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, FakePinecone};
use pinecone_admin_proxy::serve::Listen;
use pinecone_admin_proxy::{app, wait};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};

/// `println!` that never panics: a closed standard output (`check-config | head`) ends the
/// output, not the process with a backtrace.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "pinecone-admin-proxy",
    version,
    about = "A local proxy that holds a Pinecone service account and forwards Admin API requests with a fresh token",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    flags: Flags,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default)
    Run(Flags),
    /// Run the proxy against a built-in fake Pinecone: no credentials, no network
    Demo {
        #[command(flatten)]
        flags: Flags,
        /// Give the fake a token quota, as Auth0 meters tokens: e.g. per_hour=10,per_day=50
        /// (a bucket's window may be set: per_hour=3/2m)
        #[arg(long, value_name = "SPEC", value_parser = parse_quota)]
        quota: Option<Quota>,
    },
    /// Run the fake Pinecone alone (token endpoint and in-memory Admin API)
    FakePinecone {
        /// Where to listen
        #[arg(long, default_value = "127.0.0.1:8585", value_name = "ADDR")]
        listen: SocketAddr,
        /// Lifetime of the tokens it issues, in seconds
        #[arg(long, default_value_t = 86400, value_name = "SECS")]
        expires_in: u64,
        /// Meter tokens as Auth0 does: e.g. per_hour=10,per_day=50,rate=30 (a bucket's
        /// window may be set: per_hour=3/2m)
        #[arg(long, value_name = "SPEC", value_parser = parse_quota)]
        quota: Option<Quota>,
    },
    /// Load and validate the configuration, and print the effective values (secrets redacted)
    CheckConfig(Flags),
    /// Say what the configured [policy] decides for a request: its operation, the decision,
    /// the rule (exit 0 allowed, 1 refused, 64 bad configuration)
    PolicyCheck {
        #[command(flatten)]
        flags: Flags,
        /// The request's method, e.g. DELETE
        method: String,
        /// The request's path, e.g. /admin/projects/3fa85f64-5717-4562-b3fc-2c963f66afa6
        path: String,
    },
    /// Wait until a running proxy reports ready (exit 0), or time out (exit 1)
    Wait {
        /// The proxy's ops listener [default: PINECONE_PROXY_OPS_LISTEN or 127.0.0.1:9484]
        #[arg(long, value_name = "ADDR")]
        ops: Option<String>,
        /// How long to wait
        #[arg(long, default_value = "30s", value_name = "DUR", value_parser = parse_duration)]
        timeout: Duration,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage_error = e.use_stderr();
            let _ = e.print();
            return if usage_error { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    // One thread when the process may use one CPU (a sidecar's CPU limit or an affinity
    // mask): a multi-threaded runtime with one worker only adds hand-offs.
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pinecone-admin-proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let env = Env::from_process();
    runtime.block_on(async move {
        match cli.command {
            None => run(&cli.flags, &env).await,
            Some(Command::Run(flags)) => run(&flags, &env).await,
            Some(Command::Demo { flags, quota }) => demo(&flags, quota, &env).await,
            Some(Command::FakePinecone { listen, expires_in, quota }) => fake_pinecone(listen, expires_in, quota).await,
            Some(Command::CheckConfig(flags)) => check_config(&flags, &env),
            Some(Command::PolicyCheck { flags, method, path }) => policy_check(&flags, &env, &method, &path),
            Some(Command::Wait { ops, timeout }) => wait_command(ops, timeout, &env).await,
        }
    })
}

/// Loads the configuration and the credentials, or says why not in one line.
fn load(flags: &Flags, env: &Env) -> Result<(Config, Credentials), ExitCode> {
    let config = config::load(flags, env).map_err(|e| {
        eprintln!("pinecone-admin-proxy: configuration error: {e}");
        ExitCode::from(EXIT_USAGE)
    })?;
    let credentials = Credentials::load(&config.credentials).map_err(|e| {
        eprintln!("pinecone-admin-proxy: configuration error: {}: {e}", e.key());
        ExitCode::from(EXIT_USAGE)
    })?;
    Ok((config, credentials))
}

/// Starts the log writer; what it returns is held until the command returns, so that every
/// queued line is written before the process exits.
fn init_logging(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    pinecone_admin_proxy::logging::init(&config.log)
}

async fn run(flags: &Flags, env: &Env) -> ExitCode {
    let (config, credentials) = match load(flags, env) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let _log = init_logging(&config);
    serve_until_signal(&config, credentials).await
}

async fn serve_until_signal(config: &Config, credentials: Credentials) -> ExitCode {
    let Some(signals) = Signals::new() else { return ExitCode::FAILURE };
    let hup = tokio::spawn(reload_on_hup(signals.hup, credentials.clone()));
    let result = app::run(config, credentials, shutdown_signal(signals.term, signals.int)).await;
    hup.abort();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Said once: the log goes to standard error too.
        Err(e) => {
            eprintln!("pinecone-admin-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// The handlers, or `None` after saying why they could not be installed.
    fn new() -> Option<Self> {
        let install = || -> std::io::Result<Self> {
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
                hup: signal(SignalKind::hangup())?,
            })
        };
        install().map_err(|e| eprintln!("pinecone-admin-proxy: cannot install signal handlers: {e}")).ok()
    }
}

async fn shutdown_signal(mut term: tokio::signal::unix::Signal, mut int: tokio::signal::unix::Signal) {
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = name, "shutdown signal received");
}

async fn reload_on_hup(mut hup: tokio::signal::unix::Signal, credentials: Credentials) {
    while hup.recv().await.is_some() {
        match credentials.reload() {
            Ok(Reload::Changed { generation }) => tracing::info!(generation, "SIGHUP: credentials re-read and changed"),
            Ok(Reload::Unchanged) => tracing::info!("SIGHUP: credentials re-read, unchanged"),
            Err(e) => tracing::warn!(error = %e, "SIGHUP: cannot re-read the credentials; keeping the current ones"),
        }
    }
}

fn check_config(flags: &Flags, env: &Env) -> ExitCode {
    let (config, credentials) = match load(flags, env) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    match &config.file {
        Some(path) => out!("configuration is valid: {} (with the environment and flags over it)", path.display()),
        None => out!("configuration is valid: no file (defaults, environment, flags)"),
    }
    for (key, value, origin) in config.describe() {
        out!("{key} = {value}    # {origin}");
    }
    out!(
        "credentials: {} (client id fingerprint {})",
        credentials.describe(),
        credentials.current().client_id.fingerprint()
    );
    match &config.policy {
        Some(policy) => policy.describe().iter().for_each(|line| out!("{line}")),
        None => out!("policy: none ([policy] not set): every request is forwarded"),
    }
    match &config.api_key {
        Some(k) => out!(
            "managed API key: project {}, roles {}, lease {} rotated at {}, deleted {} after",
            k.project_id,
            k.roles.join(","),
            humantime::format_duration(k.lifetime),
            k.rotate_at,
            humantime::format_duration(k.grace)
        ),
        None => out!("managed API key: none ([api_key] not set): control-plane requests bring their own Api-Key"),
    }
    for name in &config.unknown_env {
        out!("warning: {name} starts with PINECONE_PROXY_ but sets no configuration key; ignored");
    }
    ExitCode::SUCCESS
}

fn policy_check(flags: &Flags, env: &Env, method: &str, path: &str) -> ExitCode {
    // The policy is judged without credentials, so that a CI job can check a manifest's
    // policy without its secret: stand-ins when none are set (they are never used).
    let mut loaded = config::load(flags, env);
    if loaded.as_ref().is_err_and(|e| e.key.starts_with("credentials.")) {
        let mut stand_in = env.clone();
        stand_in.set("PINECONE_CLIENT_ID", "policy-check").set("PINECONE_CLIENT_SECRET", "policy-check");
        let retried = config::load(flags, &stand_in);
        if retried.as_ref().is_ok() || retried.as_ref().is_err_and(|e| !e.key.starts_with("credentials.")) {
            loaded = retried;
        }
    }
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("pinecone-admin-proxy: configuration error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        eprintln!("pinecone-admin-proxy: policy-check: {method:?} is not an HTTP method");
        return ExitCode::from(EXIT_USAGE);
    };
    // A full URL or a path with a query: the path is what the policy judges.
    let path = match path.parse::<http::Uri>() {
        Ok(uri) if path.starts_with('/') || uri.scheme().is_some() => uri.path().to_owned(),
        _ => {
            eprintln!("pinecone-admin-proxy: policy-check: {path:?} is not a request path (it starts with /)");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let check = pinecone_admin_proxy::policy::explain(config.policy.as_ref(), &method, &path);
    for line in &check.lines {
        out!("{line}");
    }
    if check.allowed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn parse_quota(spec: &str) -> Result<Quota, String> {
    Quota::parse(spec)
}

async fn demo(flags: &Flags, quota: Option<Quota>, env: &Env) -> ExitCode {
    let fake = match FakePinecone::start(SocketAddr::from(([127, 0, 0, 1], 0)), 3600).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("pinecone-admin-proxy: cannot start the fake Pinecone: {e}");
            return ExitCode::FAILURE;
        }
    };
    fake.state().set_quota(quota);
    // The demo honours the caller's whole configuration (file, environment, flags: limits,
    // policy, shared cache, logging …) except what must name the fake: its endpoints and
    // its credentials. What it sets aside of the caller's, it names at start.
    // The demo keeps a managed API key for the demo project, so that the control plane works
    // through the proxy with no key in the application.
    let fixed = [
        ("token.url", fake.token_url()),
        ("upstream.url", fake.api_url()),
        ("api_key.project_id", fake.state().project_id()),
    ];
    let fixed: Vec<(&str, &str)> =
        fixed.iter().map(|(k, v)| (*k, v.as_str())).chain([("credentials.client_id", DEMO_CLIENT_ID)]).collect();
    let (config, set_aside) = match config::load_demo(flags, env, &fixed, DEMO_CLIENT_SECRET) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("pinecone-admin-proxy: configuration error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let credentials = match Credentials::load(&config.credentials) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pinecone-admin-proxy: configuration error: {}: {e}", e.key());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let _log = init_logging(&config);
    for setting in &set_aside {
        tracing::warn!(setting = %setting, "demo: not used; the demo's fake Pinecone has its own endpoints and credentials");
    }
    let Some(signals) = Signals::new() else { return ExitCode::FAILURE };
    let mut config = config;
    if let Err(e) = demo_index(&mut config, &fake) {
        eprintln!("pinecone-admin-proxy: the demo's index: {e}");
        return ExitCode::FAILURE;
    }
    let running = match app::start(&config, credentials).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pinecone-admin-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let pinecone_admin_proxy::serve::BoundAddr::Tcp(ops) = &running.ops {
        // The token, the managed key and the index's host: what the lines below need.
        let _ = wait::wait_until_ready(*ops, Duration::from_secs(10)).await;
    }
    print_demo(&running, &fake);
    let quit = running.quit_trigger();
    tokio::select! {
        () = shutdown_signal(signals.term, signals.int) => quit.fire(),
        () = quit.wait() => {}
    }
    running.wait().await;
    fake.stop().await;
    ExitCode::SUCCESS
}

/// The demo's index, `demo-index` (3 dimensions, cosine), made in the fake, and its listener
/// (unless the configuration names indexes of its own): on `listen`'s port + 1, or any free
/// port when `listen` takes one.
fn demo_index(config: &mut config::Config, fake: &FakePinecone) -> std::io::Result<()> {
    fake.state().create_index(DEMO_INDEX, 3)?;
    if !config.indexes.is_empty() {
        return Ok(());
    }
    let listen = match &config.listen {
        Listen::Tcp(addr) if addr.port() != 0 => Listen::Tcp(SocketAddr::new(addr.ip(), addr.port().saturating_add(1))),
        Listen::Tcp(addr) => Listen::Tcp(SocketAddr::new(addr.ip(), 0)),
        Listen::Unix(_) => Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0))),
    };
    config.indexes.push(config::IndexListen { name: DEMO_INDEX.into(), listen });
    Ok(())
}

/// The index the demo starts with.
const DEMO_INDEX: &str = "demo-index";

/// What the demo prints once the proxy is ready: its addresses and lines to try.
fn print_demo(running: &app::Running, fake: &FakePinecone) {
    let proxy = running.listen.to_string();
    let ops = running.ops.to_string();
    let index = running.indexes.first().map_or_else(String::new, |(name, addr)| format!("{addr} ({name})"));
    let data = running.indexes.first().map_or_else(String::new, |(_, addr)| addr.to_string());
    out!(
        "\npinecone-admin-proxy {version} demo: a fake Pinecone runs at {fake} (no credentials, no network).\n\n\
         Proxy:       http://{proxy}\n\
         Index:       http://{index}: its data plane, REST and gRPC\n\
         Operations:  http://{ops}/status\n\n\
         Try:\n  \
         curl -s http://{proxy}/admin/projects\n  \
         curl -s -X POST http://{proxy}/admin/projects -H 'Content-Type: application/json' -d '{{\"name\":\"my-project\"}}'\n  \
         curl -s http://{proxy}/indexes        # the control plane, with the proxy's managed API key\n  \
         curl -s -X POST http://{data}/vectors/upsert -H 'Content-Type: application/json' -d '{{\"vectors\":[{{\"id\":\"a\",\"values\":[0.1,0.2,0.3]}}]}}'\n  \
         curl -s -X POST http://{data}/query -H 'Content-Type: application/json' -d '{{\"vector\":[0.1,0.2,0.3],\"topK\":1}}'\n  \
         curl -s http://{ops}/status\n\n\
         Ctrl-C to stop.\n",
        version = pinecone_admin_proxy::VERSION,
        fake = fake.api_url(),
    );
}

async fn fake_pinecone(listen: SocketAddr, expires_in: u64, quota: Option<Quota>) -> ExitCode {
    let fake = match FakePinecone::start(listen, expires_in).await {
        Ok(f) => f,
        Err(e) => {
            eprintln!("pinecone-admin-proxy: cannot start the fake Pinecone on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let quota_text = quota.as_ref().map_or("none".into(), |q| {
        let rules: Vec<String> = q
            .rules()
            .iter()
            .map(|r| format!("{} {} per {}", r.name, r.limit, humantime::format_duration(r.window)))
            .collect();
        rules.join(", ")
    });
    fake.state().set_quota(quota);
    out!(
        "fake Pinecone on {api}\n  token endpoint: {token}\n  client id:      {DEMO_CLIENT_ID}\n  client secret:  {DEMO_CLIENT_SECRET}\n  project:        {project} (demo-project: an api_key.project_id)\n  token lifetime: {expires_in}s\n  token quota:    {quota_text}\n  counters:       {api}/_fake/stats\n",
        api = fake.api_url(),
        token = fake.token_url(),
        project = fake.state().project_id(),
    );
    let Some(signals) = Signals::new() else { return ExitCode::FAILURE };
    shutdown_signal(signals.term, signals.int).await;
    fake.stop().await;
    ExitCode::SUCCESS
}

async fn wait_command(ops: Option<String>, timeout: Duration, env: &Env) -> ExitCode {
    let text = ops
        .or_else(|| env.get("PINECONE_PROXY_OPS_LISTEN").map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1:9484".into());
    let addr = match text.parse::<Listen>() {
        Ok(Listen::Tcp(addr)) => addr,
        Ok(Listen::Unix(_)) => {
            eprintln!("pinecone-admin-proxy: wait: --ops must be a TCP address");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            eprintln!("pinecone-admin-proxy: wait: --ops {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match wait::wait_until_ready(addr, timeout).await {
        Ok(()) => {
            out!("proxy at {addr} is ready");
            ExitCode::SUCCESS
        }
        Err(why) => {
            let within = humantime::format_duration(timeout);
            eprintln!("pinecone-admin-proxy: wait: not ready at {addr} within {within}: {why}");
            ExitCode::FAILURE
        }
    }
}
