//! The binary as a user runs it: exit codes, one-line configuration errors, check-config,
//! signals (SIGTERM drains in-flight requests and exits 0; SIGHUP re-reads credentials),
//! and the secret and tokens absent from all output at trace level.

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use parking_lot::Mutex;
use pinecone_admin_proxy::body::{empty, full};
use pinecone_admin_proxy::fake::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};

fn command(args: &[&str], envs: &[(&str, &str)]) -> Command {
    command_under(&[], args, envs)
}

/// The binary run by `prefix` (`prlimit --nofile=…`), or by itself.
pub(crate) fn command_under(prefix: &[&str], args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut c = match prefix.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    c.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in envs {
        c.env(k, v);
    }
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    c
}

pub(crate) async fn output(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = command(args, envs).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const CREDS: [(&str, &str); 2] = [("PINECONE_CLIENT_ID", "id"), ("PINECONE_CLIENT_SECRET", "the-client-secret")];

#[tokio::test]
async fn bad_configuration_exits_64_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let unknown = file("unknown.toml", "[token]\nrefresh_att = 0.5\n");
    let secret = file("secret.toml", "[credentials]\nclient_secret = \"file-secret-value\"\n");
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        (CREDS.to_vec(), vec!["--config", &unknown], "token.refresh_att"),
        (CREDS.to_vec(), vec!["--config", &secret], "credentials.client_secret"),
        (vec![("PINECONE_CLIENT_ID", "id")], vec![], "credentials.client_secret_file"),
        (vec![("PINECONE_CLIENT_SECRET", "s")], vec![], "credentials.client_id"),
        ([&CREDS[..], &[("PINECONE_PROXY_TOKEN_TIMEOUT", "10 parsecs")]].concat(), vec![], "token.timeout"),
        (CREDS.to_vec(), vec!["--listen", "0.0.0.0:8484"], "listen"),
        (CREDS.to_vec(), vec!["--token-url", "http://login.example.com/oauth/token"], "token.url"),
        (CREDS.to_vec(), vec!["--upstream", "not a url"], "upstream.url"),
        (
            [&CREDS[..1], &[("PINECONE_CLIENT_SECRET_FILE", "/nonexistent/secret")]].concat(),
            vec![],
            "credentials.client_secret_file",
        ),
        (CREDS.to_vec(), vec!["--config", "/nonexistent/config.toml"], "--config"),
    ];
    for (envs, args, key) in cases {
        let (code, stdout, stderr) = output(&args, &envs).await;
        assert_eq!(code, 64, "{key}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{key}: one line: {stderr}");
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
        assert!(!stderr.contains("the-client-secret") && !stderr.contains("file-secret-value"), "{stderr}");
        assert!(stdout.is_empty());
    }
    // check-config exits 64 the same way.
    let (code, _, stderr) = output(&["check-config", "--config", &unknown], &CREDS).await;
    assert_eq!(code, 64, "{stderr}");
}

#[tokio::test]
async fn a_bad_api_key_section_exits_64_from_run_and_check_config_naming_the_key() {
    const PROJECT: (&str, &str) = ("PINECONE_PROXY_API_KEY_PROJECT_ID", "3fa85f64-5717-4562-b3fc-2c963f66afa6");
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 4] = [
        (
            &[PROJECT, ("PINECONE_PROXY_API_KEY_ROLES", "ControlPlaneViewer,DataPlaneEditr")],
            "api_key.roles",
            "did you mean DataPlaneEditor?",
        ),
        (&[PROJECT, ("PINECONE_PROXY_API_KEY_NAME_PREFIX", "My_Proxy")], "api_key.name_prefix", "a-z, 0-9 and -"),
        (&[("PINECONE_PROXY_API_KEY_PROJECT_ID", "demo-project")], "api_key.project_id", "UUID"),
        (&[("PINECONE_PROXY_API_KEY_ROLES", "ProjectViewer")], "api_key.project_id", "is required"),
    ];
    for (envs, key, says) in cases {
        let envs = [&CREDS[..], envs].concat();
        for command in [&["run"][..], &["check-config"]] {
            let (code, _, stderr) = output(command, &envs).await;
            assert_eq!(code, 64, "{command:?} {key}: {stderr}");
            assert_eq!(stderr.lines().count(), 1, "{key}: one line: {stderr}");
            assert!(stderr.contains(key) && stderr.contains(says), "{key}, {says}: {stderr}");
        }
    }
}

#[tokio::test]
async fn usage_errors_exit_64_and_help_exits_0() {
    assert_eq!(output(&["--no-such-flag"], &CREDS).await.0, 64);
    assert_eq!(output(&["no-such-command"], &CREDS).await.0, 64);
    let (code, stdout, _) = output(&["--help"], &[]).await;
    assert_eq!(code, 0);
    for command in ["run", "demo", "fake-pinecone", "check-config", "policy-check", "wait"] {
        assert!(stdout.contains(command), "--help lists {command}");
    }
    let (code, stdout, _) = output(&["--version"], &[]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn check_config_prints_effective_values_with_the_secret_redacted() {
    let envs =
        [&CREDS[..], &[("PINECONE_PROXY_UPSTREAM_TIMEOUT", "7s"), ("PINECONE_PROXY_PORT", "tcp://10.0.0.1:8484")]]
            .concat();
    let (code, stdout, stderr) = output(&["check-config", "--api-version", "2026-07"], &envs).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("configuration is valid: no file"), "{stdout}");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/pinecone-admin-proxy.toml");
    let (code, named, _) = output(&["check-config", "--config", shipped], &CREDS).await;
    assert_eq!(code, 0);
    assert!(named.starts_with(&format!("configuration is valid: {shipped}")), "names the file it loaded: {named}");
    assert!(stdout.contains("upstream.timeout = 7s    # env PINECONE_PROXY_UPSTREAM_TIMEOUT"), "{stdout}");
    assert!(stdout.contains("upstream.api_version = 2026-07    # flag --api-version"), "{stdout}");
    assert!(stdout.contains("token.max_requests_per_minute = 6    # default"), "{stdout}");
    assert!(stdout.contains("PINECONE_CLIENT_SECRET = <redacted>"), "{stdout}");
    assert!(
        stdout.contains("warning: PINECONE_PROXY_PORT"),
        "unknown PINECONE_PROXY_ variables are warned about: {stdout}"
    );
    assert!(!stdout.contains("the-client-secret"));
}

#[tokio::test]
async fn a_port_in_use_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, stderr) = output(&["--listen", &addr, "--ops-listen", "127.0.0.1:0"], &CREDS).await;
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.matches("cannot listen on").count(), 1, "said once: {stderr}");
    assert!(stderr.contains("(listen)") && stderr.contains("--ops-listen too"), "with the hint: {stderr}");
}

/// A running binary, its stderr lines forwarded to a channel.
pub(crate) struct Proc {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    pub(crate) all: Arc<Mutex<String>>,
    pub(crate) ops: std::net::SocketAddr,
    pub(crate) listen: std::net::SocketAddr,
}

/// The binary with the demo credentials, a token endpoint, an upstream and `extra`.
pub(crate) async fn spawn_demo(token_url: &str, upstream: &str, extra: &[(&str, &str)]) -> Proc {
    spawn_demo_under(&[], token_url, upstream, extra).await
}

/// [`spawn_demo`], run by `prefix`.
pub(crate) async fn spawn_demo_under(prefix: &[&str], token_url: &str, upstream: &str, extra: &[(&str, &str)]) -> Proc {
    let base = [
        ("PINECONE_CLIENT_ID", DEMO_CLIENT_ID),
        ("PINECONE_CLIENT_SECRET", DEMO_CLIENT_SECRET),
        ("PINECONE_PROXY_TOKEN_URL", token_url),
        ("PINECONE_PROXY_UPSTREAM_URL", upstream),
    ];
    spawn_under(prefix, &[&base[..], extra].concat()).await
}

async fn spawn(envs: &[(&str, &str)]) -> Proc {
    spawn_under(&[], envs).await
}

async fn spawn_under(prefix: &[&str], envs: &[(&str, &str)]) -> Proc {
    let ports = [("PINECONE_PROXY_LISTEN", "127.0.0.1:0"), ("PINECONE_PROXY_OPS_LISTEN", "127.0.0.1:0")];
    let proc = Proc::started(command_under(prefix, &[], &[envs, &ports].concat())).await;
    assert!(pinecone_admin_proxy::wait::wait_ready(proc.ops, Duration::from_secs(10)).await, "proxy ready");
    proc
}

/// The addresses in a "pinecone-admin-proxy started" line, text or JSON.
fn started_addresses(line: &str) -> Option<(std::net::SocketAddr, std::net::SocketAddr)> {
    if !line.contains("pinecone-admin-proxy started") {
        return None;
    }
    let field = |name: &str| {
        [format!(" {name}="), format!("\"{name}\":\"")].iter().find_map(|pattern| {
            let rest = &line[line.find(pattern.as_str())? + pattern.len()..];
            let end = rest.find(|c: char| c.is_whitespace() || c == '"').unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
    };
    Some((field("listen")?, field("ops_listen")?))
}

impl Proc {
    /// Runs `command` (listening on port 0) until it says it started, and takes the
    /// addresses it bound from that line: ready or not, it answers `/healthz` from then on.
    pub(crate) async fn started(mut command: Command) -> Proc {
        let mut child = command.spawn().unwrap();
        let all = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::unbounded_channel();
        let (bound_tx, bound) = oneshot::channel();
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = all.clone();
        tokio::spawn(async move {
            let mut bound_tx = Some(bound_tx);
            while let Ok(Some(line)) = stderr.next_line().await {
                log.lock().push_str(&line);
                log.lock().push('\n');
                if let Some(addresses) = started_addresses(&line) {
                    bound_tx.take().map(|tx| tx.send(addresses));
                }
                let _ = tx.send(line);
            }
        });
        let mut stdout = child.stdout.take().unwrap();
        let log = all.clone();
        tokio::spawn(async move {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s).await;
            log.lock().push_str(&s);
        });
        let (listen, ops) = tokio::time::timeout(Duration::from_secs(10), bound)
            .await
            .unwrap_or_else(|_| panic!("no \"started\" line within 10 s:\n{}", all.lock()))
            .unwrap_or_else(|_| panic!("the process ended before it started:\n{}", all.lock()));
        Proc { child, lines, all, ops, listen }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill").args(["-s", name, &pid]).status().unwrap().success());
    }

    /// The process's peak resident memory so far (`VmHWM`), in KiB.
    pub(crate) fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id().unwrap())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// The value of one series of the proxy's `/metrics` (0 if absent).
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let (_, _, body) = TestClient::default().get(&format!("http://{}/metrics", self.ops)).await;
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Waits for a log line containing `text`.
    pub(crate) async fn line_with(&mut self, text: &str) -> String {
        let find = async {
            loop {
                let line = self.lines.recv().await.expect("process still logging");
                if line.contains(text) {
                    return line;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), find)
            .await
            .unwrap_or_else(|_| panic!("no log line with {text:?}"))
    }

    async fn exit_code(&mut self) -> i32 {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits")
            .unwrap()
            .code()
            .unwrap_or(-1)
    }
}

#[tokio::test]
async fn sigterm_lets_the_request_in_flight_finish_then_exits_0() {
    let fake = fake(3600).await;
    let (arrived_tx, arrived_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let hooks = Arc::new(Mutex::new(Some((arrived_tx, release_rx))));
    let upstream = Upstream::start(move |_request: Request<Incoming>| {
        let hooks = hooks.clone();
        async move {
            let taken = hooks.lock().take();
            if let Some((arrived, release)) = taken {
                arrived.send(()).unwrap();
                release.await.unwrap();
            }
            Response::new(full(Bytes::from_static(b"finished")))
        }
    })
    .await;
    let mut proc = spawn_demo(&fake.token_url(), &upstream.url(), &[("PINECONE_PROXY_SHUTDOWN_GRACE", "20s")]).await;
    let client = TestClient::default();
    let in_flight = {
        let url = format!("http://{}/slow", proc.listen);
        let client = client.clone();
        tokio::spawn(async move { client.get(&url).await })
    };
    arrived_rx.await.unwrap();
    proc.signal("TERM");
    proc.line_with("no longer accepting").await;
    // Logged once the proxy listener is closed and the open connection is draining.
    let draining = proc.line_with("draining connections").await;
    assert!(draining.contains("proxy") && draining.contains("connections=1"), "{draining}");
    // The listener is closed: new connections are refused while the old one drains.
    let refused = tokio::net::TcpStream::connect(proc.listen).await;
    assert!(refused.is_err(), "still accepting after SIGTERM");
    release_tx.send(()).unwrap();
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"finished");
    assert_eq!(proc.exit_code().await, 0);
}

#[tokio::test]
async fn sighup_rereads_the_secret_file() {
    let fake = fake(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{DEMO_CLIENT_SECRET}\n")).unwrap();
    let envs = [
        ("PINECONE_CLIENT_ID", DEMO_CLIENT_ID),
        ("PINECONE_CLIENT_SECRET_FILE", secret_file.to_str().unwrap()),
        ("PINECONE_PROXY_TOKEN_URL", &fake.token_url()),
        ("PINECONE_PROXY_UPSTREAM_URL", &fake.api_url()),
    ];
    let mut proc = spawn(&envs).await;
    fake.state().set_client(DEMO_CLIENT_ID, "rotated-secret");
    std::fs::write(&secret_file, "rotated-secret\n").unwrap();
    proc.signal("HUP");
    proc.line_with("SIGHUP: credentials re-read and changed").await;
    let fetched = proc.line_with("token fetched").await;
    assert!(fetched.contains("credential_generation=2"), "{fetched}");
    // The process is still serving, with a token from the new secret.
    let (status, _, _) = TestClient::default().get(&format!("http://{}/admin/projects", proc.listen)).await;
    assert_eq!(status, StatusCode::OK);
    proc.signal("TERM");
    assert_eq!(proc.exit_code().await, 0);
}

#[tokio::test]
async fn the_secret_and_tokens_never_appear_in_output_at_trace_level() {
    for format in ["text", "json"] {
        let fake = fake(3600).await;
        let project = fake.state().project_id();
        let extra = [
            ("RUST_LOG", "trace"),
            ("PINECONE_PROXY_LOG_FORMAT", format),
            ("PINECONE_PROXY_API_KEY_PROJECT_ID", &project),
        ];
        let mut proc = spawn_demo(&fake.token_url(), &fake.api_url(), &extra).await;
        let client = TestClient::default();
        let base = format!("http://{}", proc.listen);
        let (_, _, shim) = client.post(&format!("{base}/oauth/token"), "{}").await;
        let placeholder = json(&shim)["access_token"].as_str().unwrap().to_owned();
        let request = Request::get(format!("{base}/admin/projects"))
            .header("authorization", format!("Bearer {placeholder}"))
            .body(empty())
            .unwrap();
        assert_eq!(collect(client.send(request).await).await.0, StatusCode::OK);
        client.post(&format!("{base}/admin/projects"), r#"{"name":"p"}"#).await;
        // A revoked token: the upstream answers 401, the proxy fetches a new one and
        // replays the request with it.
        fake.state().revoke_all();
        assert_eq!(client.get(&format!("{base}/admin/projects")).await.0, StatusCode::OK);
        proc.line_with("token fetched").await;
        let second = proc.line_with("token fetched").await;
        assert!(second.contains("generation") && second.contains('2'), "{second}");
        assert!(second.contains("the upstream answered 401"), "the fetch says why: {second}");
        assert_eq!(client.get(&format!("{base}/admin/projects")).await.0, StatusCode::OK);
        // The managed key: used, revoked behind the proxy's back, replaced, replayed.
        assert_eq!(client.get(&format!("{base}/indexes")).await.0, StatusCode::OK);
        let ours = fake
            .state()
            .api_keys()
            .into_iter()
            .find(|k| k["name"].as_str().unwrap().starts_with("pinecone-admin-proxy-"));
        assert!(fake.state().revoke_api_key(ours.unwrap()["id"].as_str().unwrap()));
        assert_eq!(client.get(&format!("{base}/indexes")).await.0, StatusCode::OK);
        client.get(&format!("http://{}/status", proc.ops)).await;
        client.get(&format!("http://{}/metrics", proc.ops)).await;
        proc.signal("TERM");
        assert_eq!(proc.exit_code().await, 0);
        let all = proc.all.lock().clone();
        assert!(all.contains("access"), "access lines were logged ({format})");
        let started = all.lines().find(|l| l.contains("pinecone-admin-proxy started")).unwrap();
        for active in ["policy", "shared_cache", "api_key"] {
            assert!(started.contains(active), "the start line says whether {active} is on ({format}): {started}");
        }
        assert!(started.contains(&project), "{started}");
        let debug = if format == "json" { "\"level\":\"DEBUG\"" } else { " DEBUG " };
        assert!(all.contains(debug), "output below info was produced ({format}):\n{all}");
        assert!(!all.contains(DEMO_CLIENT_SECRET), "the client secret leaked ({format})");
        // Each step of the key's life wrote its audit line; SIGTERM deleted the key in use
        // (and the revoked one: a 404 counts as deleted) before exit 0.
        for action in ["api_key_created", "api_key_replaced", "api_key_deleted"] {
            assert!(all.contains(action), "an audit line {action} ({format})");
        }
        let ours = fake
            .state()
            .api_keys()
            .into_iter()
            .filter(|k| k["name"].as_str().unwrap().starts_with("pinecone-admin-proxy-"));
        assert_eq!(ours.count(), 0, "deleted on SIGTERM ({format})");
        let values = fake.state().api_key_values();
        assert_eq!(values.len(), 2, "the first key and its replacement");
        for value in values {
            assert!(!all.contains(&value), "an API key leaked ({format})");
            // `pckey_<label>_<secret>`: the secret is base64url, which may hold a `_` itself.
            let secret = value.splitn(3, '_').nth(2).unwrap();
            assert!(secret.len() >= 32 && !all.contains(secret), "part of an API key leaked ({format})");
        }
        let tokens = fake.state().issued_tokens();
        assert_eq!(tokens.len(), 2);
        for token in tokens {
            assert!(!all.contains(&token), "a token leaked ({format})");
            // Not even a piece of it: the signature part is unique to each token.
            assert!(!all.contains(token.rsplit('.').next().unwrap()), "a token signature leaked ({format})");
        }
    }
}

#[tokio::test]
async fn access_lines_are_written_while_the_proxy_runs_in_order_and_all_before_it_exits() {
    let fake = fake(3600).await;
    let mut proc = spawn_demo(&fake.token_url(), &fake.api_url(), &[]).await;
    let client = TestClient::default();
    // Each line arrives while the proxy runs, after its request, not at exit.
    for path in ["/admin/projects", "/admin/api-keys-first", "/admin/projects?second"] {
        client.get(&format!("http://{}{path}", proc.listen)).await;
        let line = proc.line_with("pinecone_admin_proxy::access").await;
        let expected = path.split('?').next().unwrap();
        assert!(line.contains(&format!(" path={expected} ")), "in order: {line}");
    }
    // A burst, then the exit: every line of the burst is out before the last line.
    let burst: Vec<_> = (0..50)
        .map(|i| {
            let (client, url) = (client.clone(), format!("http://{}/admin/projects?burst={i}", proc.listen));
            tokio::spawn(async move { client.get(&url).await.0 })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    proc.signal("TERM");
    assert_eq!(proc.exit_code().await, 0);
    proc.line_with("shutdown complete").await;
    assert!(proc.lines.recv().await.is_none(), "the exit line is the last line");
    let all = proc.all.lock().clone();
    let access = all.lines().filter(|l| l.contains("pinecone_admin_proxy::access")).count();
    assert_eq!(access, 53, "every request has its line:\n{all}");
    let last_access = all.rfind("pinecone_admin_proxy::access").unwrap();
    assert!(last_access < all.find("shutdown signal received").unwrap(), "lines in order:\n{all}");
}

/// `demo` runs the caller's configuration (here a file's `[limits]` and `[policy]`) against
/// its fake, names each setting it sets aside (the endpoints and credentials, which must be
/// the fake's), and refuses a configuration file it cannot read, as `run` does.
#[tokio::test]
async fn demo_honours_the_configuration_and_names_what_it_sets_aside() {
    // (A demo that started anyway would run until stopped: a deadline, not a hang.)
    let refused = output(
        &["demo", "--config", "/nonexistent/proxy.toml", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"],
        &[],
    );
    let (code, _, stderr) =
        tokio::time::timeout(Duration::from_secs(30), refused).await.expect("the demo refuses to start");
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("/nonexistent/proxy.toml"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(
        &file,
        "[limits]\nmax_head_bytes = \"8KiB\"\n[policy]\nallow = [\"read_only\"]\n[token]\nurl = \"https://login.example/oauth/token\"\n",
    )
    .unwrap();
    let args = ["demo", "--config", file.to_str().unwrap(), "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"];
    let args = [&args[..], &["--upstream", "https://api.example"]].concat();
    let mut proc = Proc::started(command_under(&[], &args, &[("PINECONE_CLIENT_SECRET", "caller-secret-value")])).await;
    assert!(pinecone_admin_proxy::wait::wait_ready(proc.ops, Duration::from_secs(10)).await);
    let client = TestClient::default();
    let base = format!("http://{}", proc.listen);
    assert_eq!(client.get(&format!("{base}/admin/projects")).await.0, 200, "the fake answers");
    let (status, headers, _) = client.post(&format!("{base}/admin/projects"), r#"{"name":"x"}"#).await;
    assert_eq!(status, 403, "[policy]");
    assert_eq!(headers["x-pinecone-proxy-error"], "forbidden_by_policy");
    let big = http::Request::get(format!("{base}/admin/projects"))
        .header("x-big", "a".repeat(9000))
        .body(pinecone_admin_proxy::body::empty())
        .unwrap();
    assert_eq!(client.send(big).await.status(), 431, "[limits] max_head_bytes");
    proc.signal("TERM");
    assert_eq!(proc.exit_code().await, 0);
    let output = proc.all.lock().clone();
    for named in
        ["token.url (file ", "upstream.url (flag --upstream)", "the client secret (env PINECONE_CLIENT_SECRET)"]
    {
        assert!(output.contains(named), "{named} not named in:\n{output}");
    }
    assert!(!output.contains("caller-secret-value"));
}

/// `check-config | head -1`: a reader that goes away ends the output, not the process with
/// a panic and a backtrace.
#[tokio::test]
async fn a_closed_stdout_is_not_a_panic() {
    let mut child = command(&["check-config"], &CREDS)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the first line is written: every line meets a broken pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn bad_indexes_exit_64_from_run_naming_the_key() {
    const PROJECT: (&str, &str) = ("PINECONE_PROXY_API_KEY_PROJECT_ID", "3fa85f64-5717-4562-b3fc-2c963f66afa6");
    for (indexes, key) in [
        ("docs", "indexes"),
        ("docs=0.0.0.0:8485", "indexes.docs"),
        ("a=127.0.0.1:18485,b=127.0.0.1:18485", "indexes.b"),
    ] {
        let envs = [&CREDS[..], &[PROJECT, ("PINECONE_PROXY_INDEXES", indexes)]].concat();
        let (code, _, stderr) = output(&["run"], &envs).await;
        assert_eq!(code, 64, "{indexes}: {stderr}");
        assert!(stderr.contains(key) && stderr.lines().count() == 1, "{key}: {stderr}");
    }
}
