//! The shared token cache against a real `redis-server` (the Debian package, which `.ci/run`
//! installs), started on a free loopback port by each test.

use crate::binary::{Proc, command_under, output, spawn_demo};
use crate::support::*;
use pinecone_admin_proxy::app::Running;
use pinecone_admin_proxy::fake::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, FakePinecone, TokenFault};
use pinecone_admin_proxy::token::TokenSource;
use pinecone_admin_proxy::token::shared::entry_names;
use std::process::Stdio;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const AUDIENCE: &str = "https://api.pinecone.io/";

/// A `redis-server` of our own on a loopback port; killed when dropped.
///
/// redis-server cannot be told to bind port 0 and say which it got, so a port is picked at
/// random below the kernel's ephemeral range (32768 and up, where outgoing connections take
/// theirs) and another is tried when that one is taken: redis-server says so and exits.
pub(crate) struct Redis {
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    pub(crate) async fn start(extra: &[&str]) -> Self {
        let args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        for _ in 0..20 {
            let mut r = Self { port: rand::random_range(10_000..30_000), args: args.clone(), child: None };
            match r.try_start().await {
                Ok(()) => return r,
                Err(output) if output.contains("Address already in use") => continue,
                Err(output) => panic!("redis-server ended before it was ready:\n{output}"),
            }
        }
        panic!("no free port for redis-server in 20 tries");
    }

    /// Starts it again on the same port, and waits until it says it accepts connections.
    async fn restart(&mut self) {
        self.try_start().await.unwrap_or_else(|output| panic!("redis-server ended before it was ready:\n{output}"));
    }

    /// Starts it on its port; what it said if it ended before it was ready.
    async fn try_start(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let tls = self.args.iter().any(|a| a == "--tls-port");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "notice"]);
        if tls {
            cmd.args(["--port", "0", "--tls-port", &port]);
        } else {
            cmd.args(["--port", &port]);
        }
        cmd.args(self.args.iter().filter(|a| *a != "--tls-port"));
        let mut child = cmd
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs (Debian package redis-server; .ci/run installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = async {
            let mut said = String::new();
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("Ready to accept connections") {
                    return Ok(());
                }
                said.push_str(&line);
                said.push('\n');
            }
            Err(said)
        };
        tokio::time::timeout(Duration::from_secs(10), ready).await.expect("redis-server ready or ended")?;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
        Ok(())
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub(crate) async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    pub(crate) async fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut self.conn().await).await.unwrap();
        keys.sort();
        keys
    }
}

async fn cached_proxy(fake: &FakePinecone, redis_url: &str, extra: &[(&str, &str)]) -> Running {
    let mut all = vec![("PINECONE_PROXY_TOKEN_SHARED_CACHE", redis_url)];
    all.extend_from_slice(extra);
    proxy_for(fake, &all).await
}

fn errors(proxy: &Running, reason: &str) -> u64 {
    let text = String::from_utf8(proxy.metrics.render()).unwrap();
    let series = format!("pinecone_proxy_shared_cache_errors_total{{reason=\"{reason}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&series)?.parse().ok()).unwrap_or_else(|| panic!("no {series}"))
}

/// Another proxy may write the entry and let its lock go between this proxy's read and its
/// lock. Once the lock is taken the entry is read again: one that is usable now is taken,
/// and the lock given back, instead of a second fetch (five proxies started together made two
/// token requests about one time in ten under load before).
#[tokio::test]
async fn an_entry_written_just_before_the_lock_is_taken_is_used_and_the_lock_given_back() {
    use pinecone_admin_proxy::token::shared::{Look, SharedCache};
    let redis = Redis::start(&[]).await;
    let url = redis.url();
    let env =
        env("http://127.0.0.1:9/oauth/token", "http://127.0.0.1:9", &[("PINECONE_PROXY_TOKEN_SHARED_CACHE", &url)]);
    let config = pinecone_admin_proxy::config::load(&Default::default(), &env).unwrap();
    let metrics = std::sync::Arc::new(pinecone_admin_proxy::metrics::Metrics::new());
    let shared = config.token.shared_cache.as_ref().unwrap();
    let mut cache = SharedCache::new(shared, AUDIENCE, Duration::from_secs(10), metrics).unwrap();
    let _: () = redis::cmd("SET")
        .arg("entry")
        .arg("written")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();
    // The first read behaves as if the entry were not there yet (the race's first half).
    let mut reads = 0;
    let look = cache
        .obtain_entry("entry", "lock", |_, bytes: &[u8], _, _| {
            reads += 1;
            (reads > 1).then(|| bytes.to_vec())
        })
        .await;
    assert!(matches!(look, Look::Hit(ref v) if v == b"written"), "the entry, read again after the lock");
    let lock: Option<String> = redis::cmd("GET").arg("lock").query_async(&mut redis.conn().await).await.unwrap();
    assert_eq!(lock, None, "the lock given back");
}

#[tokio::test]
async fn proxies_sharing_one_redis_make_one_token_request() {
    let redis = Redis::start(&[]).await;
    let fake = fake(3600).await;
    fake.state().set_token_delay(Duration::from_millis(300));
    let url = redis.url();
    // Started one after another within milliseconds: all look before the first token (300 ms) arrives.
    let mut proxies = Vec::new();
    for _ in 0..5 {
        proxies.push(cached_proxy(&fake, &url, &[]).await);
    }
    let mut fingerprints = Vec::new();
    for p in &proxies {
        p.tokens.get().await.expect("a token");
        fingerprints.push(p.tokens.snapshot().fingerprint.unwrap());
    }
    let errors: Vec<_> = proxies
        .iter()
        .map(|p| {
            let c = p.tokens.snapshot().shared_cache.unwrap();
            (c.tokens_read, c.tokens_written, c.last_error)
        })
        .collect();
    assert_eq!(
        fake.state().token_requests.load(SeqCst),
        1,
        "one token request for five proxies; (read, written, last error) of each: {errors:?}"
    );
    assert!(fingerprints.iter().all(|f| *f == fingerprints[0]), "{fingerprints:?}");
    let written: u64 = proxies.iter().map(|p| p.tokens.snapshot().shared_cache.unwrap().tokens_written).sum();
    let read: u64 = proxies.iter().map(|p| p.tokens.snapshot().shared_cache.unwrap().tokens_read).sum();
    assert_eq!((written, read), (1, 4));
    let (entry, _) = entry_names(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AUDIENCE);
    assert_eq!(redis.keys().await, [entry], "the entry, and the lock released");
    // And they serve with it.
    let (status, _, _) = TestClient::default().get(&url_of(&proxies[3], "/admin/projects")).await;
    assert_eq!(status, 200);
}

fn url_of(p: &Running, path: &str) -> String {
    url(p, path)
}

#[tokio::test]
async fn a_refresh_happens_once_per_fleet() {
    // 6-second tokens are refreshed at 2.4 to 3.6 s (half-life with jitter); the first
    // proxy due fetches, the others find the new token in the cache.
    let redis = Redis::start(&[]).await;
    let fake = fake(6).await;
    let url = redis.url();
    let mut proxies = Vec::new();
    for _ in 0..3 {
        proxies.push(cached_proxy(&fake, &url, &[]).await);
    }
    for p in &proxies {
        p.tokens.get().await.unwrap();
    }
    assert_eq!(fake.state().tokens_issued.load(SeqCst), 1);
    for p in &proxies {
        until(&p.tokens, Duration::from_secs(10), "a second token", |t| generation(t) >= 2).await;
    }
    assert_eq!(fake.state().tokens_issued.load(SeqCst), 2, "one refresh for three proxies");
    let fingerprints: Vec<_> = proxies.iter().map(|p| p.tokens.snapshot().fingerprint.unwrap()).collect();
    assert!(fingerprints.iter().all(|f| *f == fingerprints[0]), "{fingerprints:?}");
}

#[tokio::test]
async fn a_lock_holder_that_dies_mid_fetch_is_taken_over_after_the_lock_ttl() {
    let redis = Redis::start(&[]).await;
    let fake = fake(3600).await;
    // The first token request hangs: proxy A takes the lock, sends it, and is killed.
    fake.state().push_token_faults([TokenFault::Delay(Duration::from_secs(120))]);
    let url = redis.url();
    let envs = [
        ("PINECONE_CLIENT_ID", DEMO_CLIENT_ID),
        ("PINECONE_CLIENT_SECRET", DEMO_CLIENT_SECRET),
        ("PINECONE_PROXY_TOKEN_URL", &fake.token_url()),
        ("PINECONE_PROXY_UPSTREAM_URL", &fake.api_url()),
        ("PINECONE_PROXY_LISTEN", "127.0.0.1:0"),
        ("PINECONE_PROXY_OPS_LISTEN", "127.0.0.1:0"),
        ("PINECONE_PROXY_TOKEN_SHARED_CACHE", &url),
        ("PINECONE_PROXY_TOKEN_TIMEOUT", "3s"),
    ];
    let mut a = command_under(&[], &[], &envs).kill_on_drop(true).spawn().unwrap();
    let (_, lock) = entry_names(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AUDIENCE);
    let mut conn = redis.conn().await;
    // Wait for A's request to reach the fake (it holds the lock by then).
    tokio::time::timeout(Duration::from_secs(10), async {
        while fake.state().token_requests.load(SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("A sent its token request");
    let ttl: i64 = redis::cmd("PTTL").arg(&lock).query_async(&mut conn).await.unwrap();
    assert!(ttl > 0, "A holds the lock with a TTL ({ttl})");
    a.kill().await.unwrap();
    // B finds the lock held, waits for it to expire, takes it and fetches.
    let b = cached_proxy(&fake, &url, &[("PINECONE_PROXY_TOKEN_TIMEOUT", "3s")]).await;
    until(&b.tokens, Duration::from_secs(15), "B's token", |t| generation(t) >= 1).await;
    assert_eq!(fake.state().token_requests.load(SeqCst), 2);
    assert_eq!(errors(&b, "lock_wait"), 0, "taken over, not given up on");
    assert_eq!(b.tokens.snapshot().shared_cache.unwrap().tokens_written, 1);
}

#[tokio::test]
async fn redis_killed_and_restarted_while_proxies_serve() {
    let mut redis = Redis::start(&[]).await;
    let fake = fake(3).await;
    let url = redis.url();
    let budget = [("PINECONE_PROXY_TOKEN_MAX_REQUESTS_PER_MINUTE", "120")];
    let a = cached_proxy(&fake, &url, &budget).await;
    let b = cached_proxy(&fake, &url, &budget).await;
    a.tokens.get().await.unwrap();
    b.tokens.get().await.unwrap();
    let client = TestClient::default();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let urls = [url_of(&a, "/admin/projects"), url_of(&b, "/admin/projects")];
    let load = tokio::spawn(async move {
        let mut failed = Vec::new();
        let mut sent = 0;
        loop {
            for u in &urls {
                let (status, _, body) = client.get(u).await;
                sent += 1;
                if status != 200 {
                    failed.push(format!("{status} {}", String::from_utf8_lossy(&body)));
                }
            }
            if stop_rx.try_recv().is_ok() {
                return (sent, failed);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    redis.kill().await;
    // Two refreshes each with Redis gone: the proxies fetch for themselves.
    let (ga, gb) = (generation(&a.tokens), generation(&b.tokens));
    until(&a.tokens, Duration::from_secs(15), "A refreshes without Redis", |t| generation(t) >= ga + 2).await;
    until(&b.tokens, Duration::from_secs(15), "B refreshes without Redis", |t| generation(t) >= gb + 2).await;
    assert!(errors(&a, "unreachable") + errors(&a, "timeout") >= 1);

    redis.restart().await;
    // Back: the cache is written and read again.
    let written = |t: &TokenSource| t.snapshot().shared_cache.unwrap();
    let before = written(&a.tokens).tokens_written + written(&b.tokens).tokens_written;
    until(&a.tokens, Duration::from_secs(30), "the cache used again", |t| {
        let s = written(t);
        s.tokens_written + written(&b.tokens).tokens_written > before || s.tokens_read > 0
    })
    .await;
    stop_tx.send(()).unwrap();
    let (sent, failed) = load.await.unwrap();
    assert!(failed.is_empty(), "{} of {sent} requests failed: {:?}", failed.len(), &failed[..failed.len().min(5)]);
    assert!(sent > 50, "{sent}");
    assert_eq!(fake.state().expired_presented.load(SeqCst), 0);
}

#[tokio::test]
async fn an_entry_written_under_another_secret_is_never_used() {
    let redis = Redis::start(&[]).await;
    let fake = fake(3600).await;
    let url = redis.url();
    let a = cached_proxy(&fake, &url, &[]).await;
    a.tokens.get().await.unwrap();
    // The secret is rotated: B uses the new one, and neither finds nor opens A's entry.
    fake.state().set_client(DEMO_CLIENT_ID, "rotated-secret");
    let b = cached_proxy(&fake, &url, &[("PINECONE_CLIENT_SECRET", "rotated-secret")]).await;
    b.tokens.get().await.unwrap();
    assert_eq!(fake.state().token_requests.load(SeqCst), 2, "B fetched for itself");
    let (old, _) = entry_names(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AUDIENCE);
    let (new, _) = entry_names(DEMO_CLIENT_ID, "rotated-secret", AUDIENCE);
    let mut keys = vec![old.clone(), new.clone()];
    keys.sort();
    assert_eq!(redis.keys().await, keys);
    // Someone with write access to Redis puts A's value under B's name: it does not open.
    let mut conn = redis.conn().await;
    let value: Vec<u8> = redis::cmd("GET").arg(&old).query_async(&mut conn).await.unwrap();
    let () = redis::cmd("SET").arg(&new).arg(value).arg("PX").arg(600_000).query_async(&mut conn).await.unwrap();
    let c = cached_proxy(&fake, &url, &[("PINECONE_CLIENT_SECRET", "rotated-secret")]).await;
    c.tokens.get().await.unwrap();
    assert_eq!(errors(&c, "unreadable"), 1);
    assert_eq!(fake.state().token_requests.load(SeqCst), 3, "C fetched for itself");
    assert_ne!(c.tokens.snapshot().fingerprint, a.tokens.snapshot().fingerprint);
}

#[tokio::test]
async fn garbage_in_the_cache_is_counted_and_overwritten() {
    let redis = Redis::start(&[]).await;
    let fake = fake(3600).await;
    let (entry, _) = entry_names(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AUDIENCE);
    let mut conn = redis.conn().await;
    let () =
        redis::cmd("SET").arg(&entry).arg("not a token").arg("PX").arg(600_000).query_async(&mut conn).await.unwrap();
    let url = redis.url();
    let a = cached_proxy(&fake, &url, &[]).await;
    a.tokens.get().await.unwrap();
    assert_eq!(errors(&a, "unreadable"), 1);
    let b = cached_proxy(&fake, &url, &[]).await;
    b.tokens.get().await.unwrap();
    assert_eq!(errors(&b, "unreadable"), 0, "A overwrote it");
    assert_eq!(fake.state().token_requests.load(SeqCst), 1);
    assert_eq!(b.tokens.snapshot().fingerprint, a.tokens.snapshot().fingerprint);
}

#[tokio::test]
async fn the_redis_password_never_appears_in_any_output() {
    const PASSWORD: &str = "redis-pass-4f9c2b";
    const WRONG: &str = "wrong-pass-77d1e0";
    let redis = Redis::start(&["--requirepass", PASSWORD]).await;
    let fake = fake(3600).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("redis-url");
    std::fs::write(&file, format!("redis://:{PASSWORD}@127.0.0.1:{}/0\n", redis.port)).unwrap();
    let path = file.to_str().unwrap().to_owned();
    let cache = [("PINECONE_PROXY_TOKEN_SHARED_CACHE_FILE", path.as_str()), ("PINECONE_PROXY_LOG_LEVEL", "debug")];
    let mut good = spawn_demo(&fake.token_url(), &fake.api_url(), &cache).await;
    good.line_with("token fetched").await;
    // A wrong password: an error answer, counted, and the proxy still serves.
    let wrong_url = format!("redis://:{WRONG}@127.0.0.1:{}/0", redis.port);
    let wrong_env = [("PINECONE_PROXY_TOKEN_SHARED_CACHE", wrong_url.as_str())];
    let mut wrong = spawn_demo(&fake.token_url(), &fake.api_url(), &wrong_env).await;
    wrong.line_with("shared token cache failed").await;
    assert_eq!(wrong.metric("pinecone_proxy_shared_cache_errors_total{reason=\"error\"}").await, 1.0);
    let client = TestClient::default();
    let mut seen = String::new();
    for p in [&good, &wrong] {
        for path in ["/status", "/metrics", "/readyz"] {
            let (_, _, body) = client.get(&format!("http://{}{path}", p.ops)).await;
            seen.push_str(&String::from_utf8_lossy(&body));
        }
        let (status, _, body) = client.get(&format!("http://{}/admin/projects", p.listen)).await;
        assert_eq!(status, 200);
        seen.push_str(&String::from_utf8_lossy(&body));
    }
    assert!(seen.contains("redis://:<redacted>@127.0.0.1"), "the URL is shown redacted in /status");
    let base = [
        ("PINECONE_CLIENT_ID", DEMO_CLIENT_ID),
        ("PINECONE_CLIENT_SECRET", DEMO_CLIENT_SECRET),
        ("PINECONE_PROXY_TOKEN_SHARED_CACHE", wrong_url.as_str()),
    ];
    let (code, out, err) = output(&["check-config"], &base).await;
    assert_eq!(code, 0, "{err}");
    seen.push_str(&out);
    seen.push_str(&err);
    let bad = [("PINECONE_PROXY_TOKEN_SHARED_CACHE", &*format!("redis://:{WRONG}@127.0.0.1:notaport/0"))];
    let (code, out, err) = output(&["check-config"], &[&base[..2], &bad[..]].concat()).await;
    assert_eq!(code, 64);
    seen.push_str(&out);
    seen.push_str(&err);
    seen.push_str(&good.all.lock().clone());
    seen.push_str(&wrong.all.lock().clone());
    for p in [PASSWORD, WRONG] {
        assert!(!seen.contains(p), "the password {p} appeared in:\n{seen}");
    }
}

#[tokio::test]
async fn rediss_with_a_private_ca_and_a_password() {
    let TestCa { ca_pem, cert, key } = test_ca("pinecone-admin-proxy test Redis CA");
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let (ca_file, cert_file, key_file) =
        (file("ca.pem", ca_pem), file("cert.pem", cert.pem()), file("key.pem", key.serialize_pem()));
    let redis = Redis::start(&[
        "--tls-port",
        "--tls-cert-file",
        &cert_file,
        "--tls-key-file",
        &key_file,
        "--tls-ca-cert-file",
        &ca_file,
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "tls-pass-81b2",
    ])
    .await;
    let fake = fake(3600).await;
    let url = format!("rediss://:tls-pass-81b2@localhost:{}/0", redis.port);
    let trusted = [("PINECONE_PROXY_TOKEN_SHARED_CACHE_CA_FILE", ca_file.as_str())];
    let a = cached_proxy(&fake, &url, &trusted).await;
    a.tokens.get().await.unwrap();
    let b = cached_proxy(&fake, &url, &trusted).await;
    b.tokens.get().await.unwrap();
    assert_eq!(fake.state().token_requests.load(SeqCst), 1, "shared over TLS");
    assert_eq!(b.tokens.snapshot().shared_cache.unwrap().tokens_read, 1);
    // Without the CA, the web PKI roots do not trust it: counted, and the proxy fetches itself.
    let c = cached_proxy(&fake, &url, &[]).await;
    c.tokens.get().await.unwrap();
    assert_eq!(errors(&c, "unreachable"), 1);
    assert_eq!(fake.state().token_requests.load(SeqCst), 2);
}

#[tokio::test]
async fn a_proxy_held_back_by_a_spent_quota_still_takes_the_fleets_token() {
    // B's first token request meets a spent bucket (another client took the hour's only
    // token): B may not ask again for 20 s. When a token for the same credentials reaches
    // the cache (A, here served by another token endpoint), B takes it within a second.
    let redis = Redis::start(&[]).await;
    let metered = fake(3600).await;
    metered.state().set_quota(Some(pinecone_admin_proxy::fake::quota::Quota::parse("per_hour=1/20s").unwrap()));
    let body = serde_json::json!({
        "grant_type": "client_credentials", "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET, "audience": AUDIENCE,
    });
    let (status, _, _) = TestClient::default().post(&metered.token_url(), &body.to_string()).await;
    assert_eq!(status, 200);
    let url = redis.url();
    let b = cached_proxy(&metered, &url, &[]).await;
    let mut changed = b.tokens.subscribe();
    changed.changed().await.unwrap();
    assert!(b.tokens.not_ready_reason().unwrap().contains("quota is spent"));
    let other = fake(3600).await;
    let a = cached_proxy(&other, &url, &[]).await;
    a.tokens.get().await.unwrap();
    until(&b.tokens, Duration::from_secs(5), "B takes A's token", |t| generation(t) >= 1).await;
    assert_eq!(b.tokens.snapshot().fingerprint, a.tokens.snapshot().fingerprint);
    assert_eq!(metered.state().quota_refused.load(SeqCst), 1, "B sent nothing more into the spent bucket");
}

#[tokio::test]
async fn a_slow_redis_is_given_up_on_after_500_ms() {
    // Redis stalls for 5 s (DEBUG SLEEP blocks its one thread): the proxy's commands time
    // out, it counts that, fetches for itself and is ready while Redis still sleeps.
    let redis = Redis::start(&["--enable-debug-command", "yes"]).await;
    let fake = fake(3600).await;
    // A connection of the test's own that waits as long as the sleep takes.
    let patient = redis::AsyncConnectionConfig::new().set_response_timeout(None).set_connection_timeout(None);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection_with_config(&patient).await.unwrap();
    let sleeping = tokio::spawn(async move {
        let () = redis::cmd("DEBUG").arg("SLEEP").arg(5).query_async(&mut conn).await.unwrap();
    });
    // The stall has begun once a second client gets no PONG at once.
    let mut asleep = false;
    for _ in 0..50 {
        let probe = async {
            let mut c = client.get_multiplexed_async_connection_with_config(&patient).await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        };
        if tokio::time::timeout(Duration::from_millis(200), probe).await.is_err() {
            asleep = true;
            break;
        }
    }
    assert!(asleep, "Redis never stalled");
    let proxy = cached_proxy(&fake, &redis.url(), &[]).await;
    proxy.tokens.get().await.expect("a token without Redis");
    assert!(!sleeping.is_finished(), "the token came while Redis was still asleep");
    assert_eq!(errors(&proxy, "timeout"), 1);
    assert_eq!(fake.state().token_requests.load(SeqCst), 1);
    let error = proxy.tokens.snapshot().shared_cache.unwrap().last_error.unwrap();
    assert_eq!(error.reason, "timeout");
    sleeping.await.unwrap();
}

#[tokio::test]
async fn an_oversized_entry_is_never_read_whole() {
    // 8 MiB under the entry's name: counted unreadable, and Redis sends the proxy at most
    // shared::MAX_VALUE bytes of it (its output counter says so), not 8 MiB.
    let redis = Redis::start(&[]).await;
    let fake = fake(3600).await;
    let (entry, _) = entry_names(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AUDIENCE);
    let mut conn = redis.conn().await;
    let big = vec![b'x'; 8 << 20];
    let () = redis::cmd("SET").arg(&entry).arg(big).arg("PX").arg(600_000).query_async(&mut conn).await.unwrap();
    let sent = |info: String| -> u64 {
        info.lines().find_map(|l| l.strip_prefix("total_net_output_bytes:")?.trim().parse().ok()).unwrap()
    };
    let before = sent(redis::cmd("INFO").arg("stats").query_async(&mut conn).await.unwrap());
    let proxy = cached_proxy(&fake, &redis.url(), &[]).await;
    proxy.tokens.get().await.unwrap();
    assert_eq!(errors(&proxy, "unreadable"), 1);
    let after = sent(redis::cmd("INFO").arg("stats").query_async(&mut conn).await.unwrap());
    assert!(after - before < 256 * 1024, "Redis sent {} bytes", after - before);
}

/// A Redis writer keeps an old sealed entry alive by writing it back with a long TTL after
/// its token expired. Its expiry is sealed inside it: the proxy never adopts it, counts it
/// (`stale`), fetches a token of its own and overwrites it.
#[tokio::test]
async fn an_old_entry_written_back_with_a_long_ttl_is_never_adopted() {
    let redis = Redis::start(&[]).await;
    let fake = fake(3).await;
    let (entry, _) = entry_names(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AUDIENCE);
    let a = cached_proxy(&fake, &redis.url(), &[]).await;
    a.tokens.get().await.unwrap();
    let old_fingerprint = a.tokens.snapshot().fingerprint.unwrap();
    a.shutdown();
    a.wait().await;
    let mut conn = redis.conn().await;
    let old: Vec<u8> = redis::cmd("GET").arg(&entry).query_async(&mut conn).await.unwrap();
    // The token lives 3 s; its entry goes when it does. Written back then, for an hour.
    tokio::time::timeout(Duration::from_secs(10), async {
        while redis::cmd("EXISTS").arg(&entry).query_async::<i64>(&mut conn).await.unwrap() == 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the entry expires with its token");
    let () = redis::cmd("SET").arg(&entry).arg(&old).arg("PX").arg(3_600_000).query_async(&mut conn).await.unwrap();
    fake.state().set_expires_in(3600);

    let b = cached_proxy(&fake, &redis.url(), &[]).await;
    b.tokens.get().await.unwrap();
    assert_ne!(b.tokens.snapshot().fingerprint.unwrap(), old_fingerprint, "the written-back token is not taken");
    assert_eq!(errors(&b, "stale"), 1);
    assert_eq!(fake.state().tokens_issued.load(SeqCst), 2, "B fetched its own");
    let client = TestClient::default();
    assert_eq!(client.get(&ops_url(&b, "/readyz")).await.0, 200);
    assert_eq!(client.get(&url(&b, "/admin/projects")).await.0, 200);
    assert_eq!(fake.state().expired_presented.load(SeqCst), 0, "no expired token was ever sent");
    let now: Vec<u8> = redis::cmd("GET").arg(&entry).query_async(&mut conn).await.unwrap();
    assert_ne!(now, old, "overwritten with B's token");
}

/// A lock no proxy could have set (no TTL, or a TTL longer than `token.timeout`) is not
/// waited for: counted `bad_lock`, and the proxy fetches for itself at once.
#[tokio::test]
async fn a_lock_that_no_proxy_sets_is_not_waited_for() {
    let redis = Redis::start(&[]).await;
    let fake = fake(3600).await;
    let (entry, lock) = entry_names(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AUDIENCE);
    let mut conn = redis.conn().await;
    for ttl in [None, Some(3_600_000)] {
        // No entry to take: the lock is all the proxy finds.
        let _: i64 = redis::cmd("DEL").arg(&entry).query_async(&mut conn).await.unwrap();
        let mut set = redis::cmd("SET");
        set.arg(&lock).arg("not-a-proxy");
        if let Some(ms) = ttl {
            set.arg("PX").arg(ms);
        }
        let () = set.query_async(&mut conn).await.unwrap();
        let proxy = cached_proxy(&fake, &redis.url(), &[]).await;
        proxy.tokens.get().await.unwrap();
        assert_eq!(errors(&proxy, "bad_lock"), 1, "lock TTL {ttl:?}");
        assert_eq!(errors(&proxy, "lock_wait"), 0, "not waited for until it timed out");
        let error = proxy.tokens.snapshot().shared_cache.unwrap().last_error.unwrap();
        assert!(error.message.contains("which no proxy sets"), "{}", error.message);
        proxy.shutdown();
        proxy.wait().await;
    }
    assert_eq!(fake.state().token_requests.load(SeqCst), 2, "each fetched for itself");
}

/// Whatever answers in Redis's place sends a reply of 256 MiB: the proxy reads a few KiB of
/// it, counts it (`oversized`), fetches for itself, and its peak memory stays small.
#[tokio::test]
async fn a_huge_reply_costs_the_proxy_a_small_fixed_amount_of_memory() {
    let fake = fake(3600).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut first = [0u8; 256];
                let _ = socket.read(&mut first).await;
                const HUGE: usize = 256 << 20;
                if socket.write_all(format!("${HUGE}\r\n").as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 << 10];
                for _ in 0..HUGE / chunk.len() {
                    if socket.write_all(&chunk).await.is_err() {
                        return;
                    }
                    counter.fetch_add(chunk.len() as u64, SeqCst);
                }
            });
        }
    });
    let cache = format!("redis://127.0.0.1:{port}/0");
    let proxy = spawn_demo(&fake.token_url(), &fake.api_url(), &[("PINECONE_PROXY_TOKEN_SHARED_CACHE", &cache)]).await;
    assert!(proxy.metric("pinecone_proxy_shared_cache_errors_total{reason=\"oversized\"}").await >= 1.0);
    assert_eq!(proxy.metric("pinecone_proxy_token_usable").await, 1.0, "a token of its own");
    let peak = proxy.peak_rss_kib();
    assert!(peak < 32 << 10, "peak RSS {peak} KiB with a 256 MiB reply on offer");
    assert!(sent.load(SeqCst) < 64 << 20, "the proxy stopped reading: {} bytes sent", sent.load(SeqCst));
}

/// `demo` uses `token.shared_cache` like `run` (it used to drop it silently).
#[tokio::test]
async fn the_demo_uses_the_shared_cache() {
    let redis = Redis::start(&[]).await;
    let url = redis.url();
    let proc = Proc::started(command_under(
        &[],
        &["demo", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"],
        &[("PINECONE_PROXY_TOKEN_SHARED_CACHE", &url)],
    ))
    .await;
    assert!(pinecone_admin_proxy::wait::wait_ready(proc.ops, Duration::from_secs(10)).await);
    // Ready as soon as the token is in use; it is written to Redis just after. The demo's
    // process tells no event, so its /status is asked until then.
    let status_url = format!("http://{}/status", proc.ops);
    let written = async {
        loop {
            let status = json(&TestClient::default().get(&status_url).await.2);
            if status["token"]["shared_cache"]["tokens_written"] != 0 {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let status = tokio::time::timeout(Duration::from_secs(10), written).await.expect("the token is written to Redis");
    assert_eq!(status["token"]["shared_cache"]["tokens_written"], 1, "{status}");
    let (entry, _) = entry_names(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, AUDIENCE);
    let keys = redis.keys().await;
    assert!(keys.contains(&entry), "{keys:?}");
    // The demo's managed key is the fleet's too (its entry is written once it is in use).
    assert!(keys.iter().all(|k| *k == entry || k.ends_with(":api-key")), "{keys:?}");
}
