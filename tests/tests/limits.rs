//! The limits of the request path, tried as a hostile local client would: slow and huge
//! request heads, connections that send nothing or idle, stalled bodies, many h2c streams,
//! more connections than allowed, a low open-file limit, TRACE. Where memory is the point
//! the proxy runs as its own process and its peak RSS (`VmHWM`) is read from /proc.

use crate::binary::{Proc, command_under, spawn_demo, spawn_demo_under};
use crate::support::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use parking_lot::Mutex;
use pinecone_admin_proxy::body::{empty, full};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The shipped manifests' memory limit.
const MEMORY_LIMIT_KIB: u64 = 64 << 10;
/// How long a test waits for what a limit is due to do, well past the limit itself.
const PATIENCE: Duration = Duration::from_secs(30);

/// Open files enough for a test that holds a thousand connections, and the proxy's side.
fn room_for_connections() {
    let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap();
    rlimit::setrlimit(rlimit::Resource::NOFILE, hard, hard).unwrap();
    assert!(hard >= 4096, "these tests need an open-file limit of 4096 or more, have {hard}");
}

/// Connects `n` times to `addr` and writes `first` on each.
async fn connections(addr: std::net::SocketAddr, n: usize, first: &[u8]) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if !first.is_empty() {
            s.write_all(first).await.unwrap();
        }
        out.push(s);
    }
    out
}

/// Reads until the peer closes (or resets) the connection; what was read.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Waits until the proxy has closed every one of `streams`.
async fn all_closed(streams: &mut [TcpStream]) {
    let closing = one_by_one(streams.iter_mut().map(until_closed));
    tokio::time::timeout(PATIENCE, closing).await.expect("the proxy closes them");
}

/// Awaits each in turn (they all run on the proxy's side meanwhile).
async fn one_by_one<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in futures {
        out.push(f.await);
    }
    out
}

/// A GET through the binary's `listen`.
async fn get_ok(proc: &Proc) {
    let (status, _, body) = TestClient::default().get(&format!("http://{}/admin/projects", proc.listen)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

/// An upstream that answers with the request's headers, and counts what reached it.
async fn echoing_upstream() -> (Upstream, Arc<Mutex<Vec<(String, String)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let upstream = Upstream::start(move |request: Request<Incoming>| {
        let log = log.clone();
        async move {
            let headers = format!("{:?}", request.headers()).to_lowercase();
            log.lock().push((request.method().to_string(), headers.clone()));
            Response::new(full(headers))
        }
    })
    .await;
    (upstream, seen)
}

#[tokio::test]
async fn trace_is_refused_and_max_forwards_is_not_passed_on() {
    let fake = fake(3600).await;
    let (upstream, seen) = echoing_upstream().await;
    let proxy = start_with(&env(&fake.token_url(), &upstream.url(), &[])).await;
    let client = TestClient::default();
    let request = |method: &str| {
        Request::builder()
            .method(method)
            .uri(url(&proxy, "/admin/projects"))
            .header("max-forwards", "0")
            .body(empty())
            .unwrap()
    };
    let (status, headers, body) = collect(client.send(request("TRACE")).await).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["x-pinecone-proxy-error"], "bad_request");
    assert!(!String::from_utf8_lossy(&body).to_lowercase().contains("bearer"));
    assert!(seen.lock().is_empty(), "TRACE never reaches the upstream");

    let (status, _, body) = collect(client.send(request("GET")).await).await;
    assert_eq!(status, StatusCode::OK);
    let echoed = String::from_utf8_lossy(&body);
    assert!(echoed.contains("\"authorization\""), "the upstream gets the token: {echoed}");
    assert!(!echoed.contains("max-forwards"), "Max-Forwards is not passed on: {echoed}");
}

#[tokio::test]
async fn a_head_over_max_head_bytes_gets_431_and_is_never_forwarded() {
    let fake = fake(3600).await;
    let (upstream, seen) = echoing_upstream().await;
    let proxy = start_with(&env(&fake.token_url(), &upstream.url(), &[])).await;
    let mut stream = TcpStream::connect(proxy.listen.tcp()).await.unwrap();
    let head = format!("GET /admin/projects HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(66 << 10));
    // The proxy stops reading at the limit: the rest of the write may fail.
    let _ = stream.write_all(head.as_bytes()).await;
    let answer = until_closed(&mut stream).await;
    assert!(answer.starts_with(b"HTTP/1.1 431"), "{}", String::from_utf8_lossy(&answer));
    assert!(seen.lock().is_empty(), "never forwarded");
    let metrics =
        String::from_utf8_lossy(&TestClient::default().get(&ops_url(&proxy, "/metrics")).await.2).into_owned();
    assert!(metrics.contains("pinecone_proxy_limit_hits_total{limit=\"max_head_bytes\"} 1"), "{metrics}");
    // A head just under the limit is forwarded.
    let fits = format!("GET /admin/projects HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n", "a".repeat(60 << 10));
    let mut stream = TcpStream::connect(proxy.listen.tcp()).await.unwrap();
    stream.write_all(fits.as_bytes()).await.unwrap();
    let mut buf = [0u8; 12];
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200");
}

#[tokio::test]
async fn slow_heads_and_silent_connections_are_closed_while_normal_requests_succeed() {
    room_for_connections();
    let fake = fake(3600).await;
    let limits =
        [("PINECONE_PROXY_LIMITS_FIRST_BYTE_TIMEOUT", "2s"), ("PINECONE_PROXY_LIMITS_HEADER_READ_TIMEOUT", "2s")];
    let proc = spawn_demo(&fake.token_url(), &fake.api_url(), &limits).await;
    // 300 of them: silent, 10 bytes of the h2c preface, and 40 KiB of a head that never ends.
    let partial = format!("GET /admin/projects HTTP/1.1\r\nhost: x\r\nx-slow: {}", "a".repeat(40 << 10));
    let mut slow = connections(proc.listen, 100, b"").await;
    slow.extend(connections(proc.listen, 100, b"PRI * HTTP").await);
    slow.extend(connections(proc.listen, 100, partial.as_bytes()).await);
    for _ in 0..20 {
        get_ok(&proc).await;
    }
    all_closed(&mut slow).await;
    get_ok(&proc).await;
    assert!(proc.metric("pinecone_proxy_limit_hits_total{limit=\"first_byte_timeout\"}").await >= 200.0);
    assert!(proc.metric("pinecone_proxy_limit_hits_total{limit=\"header_read_timeout\"}").await >= 100.0);
    let peak = proc.peak_rss_kib();
    assert!(peak < MEMORY_LIMIT_KIB, "peak RSS {peak} KiB");
    assert!(proc.all.lock().contains("limits.header_read_timeout"), "a line names the limit");
}

#[tokio::test]
async fn a_thousand_large_heads_stay_within_head_memory() {
    room_for_connections();
    let fake = fake(3600).await;
    let proc = spawn_demo(&fake.token_url(), &fake.api_url(), &[]).await;
    // 1,000 heads of 60 KiB that never end: 60 MiB of buffers without the budget.
    let partial = format!("GET /admin/projects HTTP/1.1\r\nhost: x\r\nx-slow: {}", "a".repeat(60 << 10));
    let mut heads = Vec::new();
    for _ in 0..10 {
        heads.extend(connections(proc.listen, 100, partial.as_bytes()).await);
        get_ok(&proc).await;
    }
    let peak = proc.peak_rss_kib();
    assert!(peak < MEMORY_LIMIT_KIB, "peak RSS {peak} KiB");
    let refused = proc.metric("pinecone_proxy_limit_hits_total{limit=\"head_memory\"}").await;
    assert!(refused >= 800.0, "8 MiB holds about 150 such heads; {refused} refused");
    drop(heads);
    get_ok(&proc).await;
}

#[tokio::test]
async fn a_thousand_idle_connections_are_closed_after_the_idle_timeout() {
    room_for_connections();
    let fake = fake(3600).await;
    let proc = spawn_demo(&fake.token_url(), &fake.api_url(), &[("PINECONE_PROXY_LIMITS_IDLE_TIMEOUT", "15s")]).await;
    let request = b"GET /admin/projects HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut idle = connections(proc.listen, 1000, request).await;
    // Each had its answer, and is kept alive.
    for stream in &mut idle {
        let mut buf = [0u8; 12];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
    }
    assert_eq!(proc.metric("pinecone_proxy_open_connections").await, 1000.0);
    let peak = proc.peak_rss_kib();
    assert!(peak < MEMORY_LIMIT_KIB, "peak RSS {peak} KiB with 1,000 connections");
    all_closed(&mut idle).await;
    assert!(proc.metric("pinecone_proxy_limit_hits_total{limit=\"idle_timeout\"}").await >= 1000.0);
    // The gauge goes down as each connection's task ends, just after its socket is closed.
    let drained = async {
        while proc.metric("pinecone_proxy_open_connections").await != 0.0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(PATIENCE, drained).await.expect("open_connections back to 0");
}

#[tokio::test]
async fn stalled_bodies_are_held_within_the_replay_budget_and_time_out_with_408() {
    room_for_connections();
    let fake = fake(3600).await;
    let proc =
        spawn_demo(&fake.token_url(), &fake.api_url(), &[("PINECONE_PROXY_LIMITS_BODY_READ_TIMEOUT", "3s")]).await;
    // 80 bodies of 1 MiB less one byte, each stalled before its last byte: 80 MiB held
    // before the budget.
    let length = (1 << 20) - 1;
    let head = format!(
        "POST /admin/projects HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        length + 1
    );
    let mut stalled = Vec::new();
    for _ in 0..80 {
        let mut s = TcpStream::connect(proc.listen).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&vec![b' '; length]).await.unwrap();
        stalled.push(s);
    }
    get_ok(&proc).await;
    let answers = tokio::time::timeout(PATIENCE, one_by_one(stalled.iter_mut().map(until_closed)))
        .await
        .expect("each stalled request is answered");
    for answer in answers {
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("x-pinecone-proxy-error: body_timeout"), "{text}");
    }
    assert!(proc.metric("pinecone_proxy_limit_hits_total{limit=\"body_read_timeout\"}").await >= 80.0);
    let peak = proc.peak_rss_kib();
    assert!(peak < MEMORY_LIMIT_KIB, "peak RSS {peak} KiB");
    get_ok(&proc).await;
}

#[tokio::test]
async fn a_body_streamed_for_lack_of_replay_memory_is_not_replayed_and_counted() {
    let fake = fake(3600).await;
    let upstream = Upstream::start(|request: Request<Incoming>| async move {
        let _ = collect_body(request).await;
        let mut r = Response::new(full(r#"{"error":{"code":"UNAUTHENTICATED","message":"no"},"status":401}"#));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r
    })
    .await;
    let proxy =
        start_with(&env(&fake.token_url(), &upstream.url(), &[("PINECONE_PROXY_LIMITS_REPLAY_MEMORY", "1KiB")])).await;
    let (status, _, _) = TestClient::default().post(&url(&proxy, "/admin/projects"), &"x".repeat(4096)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the 401 goes back");
    let metrics =
        String::from_utf8_lossy(&TestClient::default().get(&ops_url(&proxy, "/metrics")).await.2).into_owned();
    assert!(metrics.contains("pinecone_proxy_replays_total{result=\"no_budget\"} 1"), "{metrics}");
    assert!(metrics.contains("pinecone_proxy_replays_total{result=\"too_large\"} 0"), "{metrics}");
}

async fn collect_body(request: Request<Incoming>) -> bytes::Bytes {
    use http_body_util::BodyExt;
    request.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default()
}

#[tokio::test]
async fn a_stalled_body_gets_408_whether_buffered_or_streamed() {
    let fake = fake(3600).await;
    let proxy = start_with(&env(
        &fake.token_url(),
        &fake.api_url(),
        &[("PINECONE_PROXY_LIMITS_BODY_READ_TIMEOUT", "1s"), ("PINECONE_PROXY_UPSTREAM_REPLAY_LIMIT", "1KiB")],
    ))
    .await;
    // 10 bytes of 100 (kept for a replay), and 4 KiB of 1 MiB (streamed to the upstream).
    for (sent, length) in [(10, 100), (4096, 1 << 20)] {
        let mut s = TcpStream::connect(proxy.listen.tcp()).await.unwrap();
        let head = format!("POST /admin/projects HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&vec![b' '; sent]).await.unwrap();
        let answer = tokio::time::timeout(PATIENCE, until_closed(&mut s)).await.expect("answered");
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{sent} of {length}: {text}");
        assert!(text.contains("x-pinecone-proxy-error: body_timeout"), "{text}");
        assert!(text.contains("limits.body_read_timeout"), "the body says which limit: {text}");
    }
}

#[tokio::test]
async fn connections_past_max_connections_wait_until_one_closes() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_LIMITS_MAX_CONNECTIONS", "5")]).await;
    let mut held = connections(proxy.listen.tcp(), 5, b"").await;
    let metrics = || async {
        String::from_utf8_lossy(&TestClient::default().get(&ops_url(&proxy, "/metrics")).await.2).into_owned()
    };
    let waiting = {
        let url = url(&proxy, "/admin/projects");
        tokio::spawn(async move { TestClient::default().get(&url).await.0 })
    };
    // The five are open, accepting has paused, and the sixth is not served...
    let paused = async {
        loop {
            let text = metrics().await;
            if text.contains("pinecone_proxy_open_connections 5")
                && !text.contains("pinecone_proxy_limit_hits_total{limit=\"max_connections\"} 0")
            {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(PATIENCE, paused).await.expect("five open, and max_connections counted");
    assert!(!waiting.is_finished(), "served past max_connections");
    // ...until one of them goes.
    drop(held.pop());
    assert_eq!(tokio::time::timeout(PATIENCE, waiting).await.expect("served").unwrap(), StatusCode::OK);
    // The ops listener answered all along: it has connections of its own.
}

#[tokio::test]
async fn a_low_open_file_limit_lowers_max_connections_and_the_proxy_keeps_serving() {
    let fake = fake(3600).await;
    let proc = spawn_demo_under(
        &["prlimit", "--nofile=500:500", "--"],
        &fake.token_url(),
        &fake.api_url(),
        &[("PINECONE_PROXY_LIMITS_FIRST_BYTE_TIMEOUT", "2s")],
    )
    .await;
    assert!(proc.all.lock().contains("accepting_at_most=84"), "{}", proc.all.lock());
    // More silent connections than the limit leaves room for: accepting pauses instead of
    // failing, they are closed after first_byte_timeout, and a request then gets through.
    let mut silent = connections(proc.listen, 200, b"").await;
    get_ok(&proc).await;
    all_closed(&mut silent).await;
    assert!(!proc.all.lock().contains("Too many open files"), "{}", proc.all.lock());
    get_ok(&proc).await;
}

#[tokio::test]
async fn h2c_has_its_stream_limit_and_an_idle_connection_gets_a_goaway() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_LIMITS_IDLE_TIMEOUT", "1s")]).await;
    let tcp = TcpStream::connect(proxy.listen.tcp()).await.unwrap();
    let (mut client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    // The server's SETTINGS come with its first answer.
    let request = || Request::builder().uri(format!("http://{}/admin/projects", proxy.listen.tcp())).body(()).unwrap();
    let (answer, _) = client.send_request(request(), true).unwrap();
    let driven = tokio::spawn(async move {
        let result = (&mut connection).await;
        (connection.max_concurrent_send_streams(), result)
    });
    assert_eq!(answer.await.unwrap().status(), StatusCode::OK);
    // 200 at once: the client holds back what the limit does not allow, and all succeed.
    let mut answers = Vec::new();
    for _ in 0..200 {
        client = client.ready().await.unwrap();
        answers.push(client.send_request(request(), true).unwrap().0);
    }
    for answer in answers {
        assert_eq!(answer.await.unwrap().status(), StatusCode::OK);
    }
    drop(client);
    // Idle for the idle timeout: a GOAWAY, and the connection ends cleanly.
    let (streams, result) = tokio::time::timeout(PATIENCE, driven).await.expect("closed when idle").unwrap();
    assert_eq!(streams, 64, "limits.max_concurrent_streams");
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn a_vanished_secret_file_shows_on_status_while_its_credentials_stay_in_use() {
    let fake = fake(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, pinecone_admin_proxy::fake::DEMO_CLIENT_SECRET).unwrap();
    let mut env = pinecone_admin_proxy::config::Env::default();
    env.set("PINECONE_CLIENT_ID", pinecone_admin_proxy::fake::DEMO_CLIENT_ID)
        .set("PINECONE_CLIENT_SECRET_FILE", path.to_str().unwrap())
        .set("PINECONE_PROXY_TOKEN_URL", &fake.token_url())
        .set("PINECONE_PROXY_UPSTREAM_URL", &fake.api_url())
        .set("PINECONE_PROXY_LISTEN", "127.0.0.1:0")
        .set("PINECONE_PROXY_OPS_LISTEN", "127.0.0.1:0");
    let proxy = start_with(&env).await;
    let status = || async { json(&TestClient::default().get(&ops_url(&proxy, "/status")).await.2) };
    assert!(status().await["credentials"]["last_error"].is_null());
    std::fs::remove_file(&path).unwrap();
    let seen = async {
        loop {
            let s = status().await;
            if !s["credentials"]["last_error"].is_null() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let s = tokio::time::timeout(PATIENCE, seen).await.expect("shown on /status");
    let message = s["credentials"]["last_error"]["message"].as_str().unwrap();
    assert!(message.contains(path.to_str().unwrap()), "names the file: {message}");
    assert!(s["credentials"]["last_error"]["since"].is_string());
    assert_eq!(TestClient::default().get(&url(&proxy, "/admin/projects")).await.0, StatusCode::OK, "still serving");
    // Back again: the error clears.
    std::fs::write(&path, pinecone_admin_proxy::fake::DEMO_CLIENT_SECRET).unwrap();
    let cleared = async {
        while !status().await["credentials"]["last_error"].is_null() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(PATIENCE, cleared).await.expect("cleared on /status");
}

/// A keep-alive connection that completed a request and a silent one are both counted in
/// `open_connections`, and counted out when they go.
#[tokio::test]
async fn open_connections_counts_what_is_open() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[]).await;
    let streams = connections(proxy.listen.tcp(), 3, b"").await;
    let gauge = || async {
        let text =
            String::from_utf8_lossy(&TestClient::default().get(&ops_url(&proxy, "/metrics")).await.2).into_owned();
        text.lines().find_map(|l| l.strip_prefix("pinecone_proxy_open_connections ").map(str::to_owned)).unwrap()
    };
    // The gauge follows the connections' tasks, which start and end just after the sockets.
    let reaches = |value: &'static str| async move {
        while gauge().await != value {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(PATIENCE, reaches("3")).await.expect("open_connections counts the three");
    drop(streams);
    tokio::time::timeout(PATIENCE, reaches("0")).await.expect("open_connections back to 0 once they close");
}

/// Runs the binary in a mount namespace of its own whose `/etc/hosts` says `localhost` is
/// 192.0.2.1 (TEST-NET-1: off the machine), as a bad resolver entry would.
fn with_localhost_elsewhere(dir: &tempfile::TempDir) -> Vec<String> {
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "192.0.2.1 localhost\n").unwrap();
    let script = format!("mount --bind {} /etc/hosts && exec \"$@\"", hosts.display());
    ["unshare", "-m", "sh", "-c", &script, "sh"].map(String::from).to_vec()
}

#[tokio::test]
async fn localhost_resolving_off_the_machine_is_refused_with_a_clear_error() {
    let fake = fake(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = with_localhost_elsewhere(&dir);
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let elsewhere = "localhost resolves to 192.0.2.1, which is not a loopback address; refusing to connect";

    // The upstream named localhost: the proxy has its token (from 127.0.0.1), and forwarding
    // refuses to connect.
    let upstream = format!("http://localhost:{}", fake.addr().port());
    let proc = spawn_demo_under(&prefix, &fake.token_url(), &upstream, &[]).await;
    let before = fake.state().admin_requests.load(std::sync::atomic::Ordering::SeqCst);
    let (status, headers, body) = TestClient::default().get(&format!("http://{}/admin/projects", proc.listen)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-pinecone-proxy-error"], "upstream_unreachable");
    assert!(String::from_utf8_lossy(&body).contains(elsewhere), "{}", String::from_utf8_lossy(&body));
    assert_eq!(fake.state().admin_requests.load(std::sync::atomic::Ordering::SeqCst), before);

    // The token endpoint named localhost: no token request leaves, the log says why.
    let token_url = format!("http://localhost:{}/oauth/token", fake.addr().port());
    let envs = [
        ("PINECONE_CLIENT_ID", pinecone_admin_proxy::fake::DEMO_CLIENT_ID),
        ("PINECONE_CLIENT_SECRET", pinecone_admin_proxy::fake::DEMO_CLIENT_SECRET),
        ("PINECONE_PROXY_TOKEN_URL", &token_url),
        ("PINECONE_PROXY_UPSTREAM_URL", &fake.api_url()),
        ("PINECONE_PROXY_LISTEN", "127.0.0.1:0"),
        ("PINECONE_PROXY_OPS_LISTEN", "127.0.0.1:0"),
    ];
    let tokens_before = fake.state().token_requests.load(std::sync::atomic::Ordering::SeqCst);
    let mut child = command_under(&prefix, &[], &envs).spawn().unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let line = tokio::time::timeout(PATIENCE, async {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        loop {
            line.clear();
            assert!(stderr.read_line(&mut line).await.unwrap() > 0, "the proxy exited");
            if line.contains("token request failed") {
                return line;
            }
        }
    })
    .await
    .expect("a token request failure is logged");
    assert!(line.contains(elsewhere), "{line}");
    assert_eq!(fake.state().token_requests.load(std::sync::atomic::Ordering::SeqCst), tokens_before);
    child.kill().await.unwrap();
}

fn limit_hits(proxy: &pinecone_admin_proxy::app::Running, limit: &str) -> u64 {
    let text = String::from_utf8(proxy.metrics.render()).unwrap();
    let series = format!("pinecone_proxy_limit_hits_total{{limit=\"{limit}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)?.parse().ok()).unwrap_or(0)
}

/// The `POST /oauth/token` shim reads its body itself: a client that announces one and
/// never sends it gets 408 `body_timeout` within `limits.body_read_timeout`, and the
/// connection is closed, not held.
#[tokio::test]
async fn a_token_shim_body_that_never_comes_is_a_408_and_a_closed_connection() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_LIMITS_BODY_READ_TIMEOUT", "1s")]).await;
    let mut stream = TcpStream::connect(proxy.listen.tcp()).await.unwrap();
    stream
        .write_all(b"POST /oauth/token HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"gr")
        .await
        .unwrap();
    let got = tokio::time::timeout(PATIENCE, until_closed(&mut stream)).await.expect("answered and closed");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("x-pinecone-proxy-error: body_timeout"), "{got}");
}

/// An h2c client that never opens its flow-control window gets no byte of a response: the
/// response waits on it. After `limits.body_read_timeout` the connection is closed and what
/// the response held is let go (the upstream sees its body dropped).
#[tokio::test]
async fn an_h2c_response_the_client_never_accepts_is_let_go_after_the_body_read_timeout() {
    use bytes::Bytes;
    let fake = fake(3600).await;
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel::<()>();
    let dropped_tx = Arc::new(Mutex::new(Some(dropped_tx)));
    let upstream = Upstream::start(move |_request: Request<Incoming>| {
        let dropped_tx = dropped_tx.clone();
        async move {
            // An endless body that says when it is dropped.
            struct Endless(Option<tokio::sync::oneshot::Sender<()>>);
            impl Drop for Endless {
                fn drop(&mut self) {
                    if let Some(tx) = self.0.take() {
                        let _ = tx.send(());
                    }
                }
            }
            impl http_body::Body for Endless {
                type Data = Bytes;
                type Error = pinecone_admin_proxy::body::BoxError;
                fn poll_frame(
                    self: std::pin::Pin<&mut Self>,
                    _: &mut std::task::Context<'_>,
                ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
                    std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(vec![b'x'; 16 << 10])))))
                }
            }
            let body = Endless(dropped_tx.lock().take());
            Response::new(http_body_util::BodyExt::boxed_unsync(body))
        }
    })
    .await;
    let proxy =
        start_with(&env(&fake.token_url(), &upstream.url(), &[("PINECONE_PROXY_LIMITS_BODY_READ_TIMEOUT", "1s")]))
            .await;
    let tcp = TcpStream::connect(proxy.listen.tcp()).await.unwrap();
    let (mut client, connection) =
        h2::client::Builder::new().initial_window_size(0).handshake::<_, Bytes>(tcp).await.unwrap();
    let driven = tokio::spawn(connection);
    let request = Request::get(format!("http://{}/big", proxy.listen.tcp())).body(()).unwrap();
    let (answer, _) = client.send_request(request, true).unwrap();
    let response = answer.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the head comes: headers need no window");
    tokio::time::timeout(PATIENCE, dropped).await.expect("the response was let go").unwrap();
    tokio::time::timeout(PATIENCE, driven).await.expect("the connection was closed").unwrap().ok();
    assert_eq!(limit_hits(&proxy, "body_read_timeout"), 1);
}

/// An idle h2c connection whose peer ignores the GOAWAY and the ping after it (it never
/// answers anything) is closed a few seconds after `limits.idle_timeout`, not left to the
/// keep-alive timers (30 s and 10 s).
#[tokio::test]
async fn an_idle_h2c_peer_that_ignores_goaway_is_closed_all_the_same() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_LIMITS_IDLE_TIMEOUT", "1s")]).await;
    let mut stream = TcpStream::connect(proxy.listen.tcp()).await.unwrap();
    // The preface and an empty SETTINGS frame; then nothing, not even a SETTINGS ack.
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let closing = until_closed(&mut stream);
    tokio::time::timeout(Duration::from_secs(20), closing).await.expect("closed well before the keep-alive timers");
    assert_eq!(limit_hits(&proxy, "idle_timeout"), 1);
}

/// 20 HTTP/1.1 bodies of 100,000 one-byte chunks each, the last chunk withheld: what the
/// proxy keeps for replays is charged by the memory it holds (one buffer a body, 128 KiB
/// for 100,000 bytes), and the process stays far under the manifests' 64 MiB. Kept as
/// hyper handed them over and charged by payload bytes (before), the same bodies held
/// 84 MiB (release build; 80 such bodies of 150,000 chunks: 449 MiB, now 35 MiB).
#[tokio::test]
async fn bodies_of_one_byte_chunks_are_charged_what_they_hold() {
    const BODIES: usize = 20;
    let fake = fake(3600).await;
    let proc = spawn_demo(&fake.token_url(), &fake.api_url(), &[]).await;
    get_ok(&proc).await;
    let head = b"POST /admin/projects HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunks: Vec<u8> = b"1\r\nx\r\n".repeat(100_000);
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..BODIES {
        let chunks = chunks.clone();
        let addr = proc.listen;
        senders.spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(head).await.unwrap();
            s.write_all(&chunks).await.unwrap();
            s // held open, the last chunk never sent
        });
    }
    let mut held = Vec::new();
    while let Some(s) = senders.join_next().await {
        held.push(s.unwrap());
    }
    // All read: each body's buffer has grown to 128 KiB (its capacity, doubling from one byte).
    let all_read = (BODIES * (128 << 10)) as f64;
    tokio::time::timeout(PATIENCE * 2, async {
        while proc.metric("pinecone_proxy_replay_memory_bytes").await < all_read {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the proxy reads every body into its replay buffer");
    assert_eq!(proc.metric("pinecone_proxy_replay_memory_bytes").await, all_read, "charged by capacity");
    get_ok(&proc).await;
    let peak = proc.peak_rss_kib();
    assert!(peak < 48 << 10, "peak RSS {peak} KiB");
    drop(held);
}

/// A thousand h2c connections each fill their receive window (64 KiB) with a body while
/// their requests wait for a token: h2 reads what arrives whether or not the request is
/// ready, so each h2c connection is charged what it can make the proxy hold against
/// `limits.head_memory`, and those past it are closed. Before, the same connections held
/// 103 MiB (16 KiB frames) and 156 MiB (300-byte frames) over the proxy's baseline.
#[tokio::test]
async fn h2c_connections_that_fill_their_windows_are_charged_what_they_can_hold() {
    let fake = fake(3600).await;
    fake.state().set_token_delay(Duration::from_secs(60));
    let proc = spawn_demo_waiting(&fake).await;
    let mut held = Vec::new();
    for n in 0..1000 {
        let mut s = TcpStream::connect(proc.listen).await.unwrap();
        let size = if n % 2 == 0 { 16_383 } else { 300 };
        let _ = s.write_all(&h2c_frames(65_535 / size, size)).await;
        held.push(s);
    }
    // Each connection ends with a PING: its answer means the proxy has read all before it.
    let answered = tokio::time::timeout(PATIENCE, one_by_one(held.iter_mut().map(until_ping_ack)))
        .await
        .expect("each connection is read to its end, or closed");
    let kept = answered.iter().filter(|acked| **acked).count();
    let closed = proc.metric("pinecone_proxy_limit_hits_total{limit=\"head_memory\"}").await as usize;
    assert_eq!(kept + closed, 1000, "each was read whole or closed for the budget");
    assert!(kept > 0 && closed > 0, "{kept} kept, {closed} closed");
    let peak = proc.peak_rss_kib();
    assert!(peak < 64 << 10, "peak RSS {peak} KiB with {kept} h2c connections holding full windows");
    drop(held);
}

/// The binary in front of `fake`, ready (its `/healthz` answers) while the first token is
/// still on its way.
async fn spawn_demo_waiting(fake: &pinecone_admin_proxy::fake::FakePinecone) -> Proc {
    let envs = [
        ("PINECONE_CLIENT_ID", pinecone_admin_proxy::fake::DEMO_CLIENT_ID),
        ("PINECONE_CLIENT_SECRET", pinecone_admin_proxy::fake::DEMO_CLIENT_SECRET),
        ("PINECONE_PROXY_TOKEN_URL", &fake.token_url()),
        ("PINECONE_PROXY_UPSTREAM_URL", &fake.api_url()),
        ("PINECONE_PROXY_TOKEN_TIMEOUT", "60s"),
        ("PINECONE_PROXY_LISTEN", "127.0.0.1:0"),
        ("PINECONE_PROXY_OPS_LISTEN", "127.0.0.1:0"),
    ];
    Proc::started(command_under(&[], &[], &envs)).await
}

/// The bytes of an h2c connection that opens one POST stream and sends `n` DATA frames of
/// `size` bytes each (within the default windows of 65,535), never ending the stream, then
/// a PING.
fn h2c_frames(n: usize, size: usize) -> Vec<u8> {
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    // HEADERS, END_HEADERS: :method POST (static 3), :scheme http (static 6), :path and
    // :authority as literals with indexed names (4 and 1), content-type json.
    let path = b"/admin/projects";
    let mut block = vec![0x83, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path);
    block.extend_from_slice(&[0x01, 1, b'x']);
    out.extend(frame(0x1, 0x4, 1, &block));
    for _ in 0..n {
        out.extend(frame(0x0, 0, 1, &vec![b'x'; size]));
    }
    out.extend(frame(0x6, 0, 0, b"8 bytes!"));
    out
}
