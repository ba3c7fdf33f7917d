//! Auth0's token quota over real sockets: the fake meters tokens and reports its buckets on
//! every token response; the proxy shows them and never sends into a spent bucket.

use crate::support::*;
use pinecone_admin_proxy::fake::quota::Quota;
use pinecone_admin_proxy::fake::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, FakePinecone};
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn metered(fake: &FakePinecone, spec: &str) {
    fake.state().set_quota(Some(Quota::parse(spec).expect("quota spec")));
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn quota_headers_become_metrics_and_status() {
    let fake = fake(3600).await;
    metered(&fake, "per_hour=10,per_day=50,rate=30");
    let proxy = proxy_for(&fake, &[]).await;
    proxy.tokens.get().await.unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let (_, _, body) = TestClient::default().get(&ops_url(&proxy, "/metrics")).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    for (bucket, limit, window) in [("per_hour", 10.0, 3600.0), ("per_day", 50.0, 86400.0), ("rate", 30.0, 60.0)] {
        let series = |name: &str| format!("pinecone_proxy_token_quota_{name}{{bucket=\"{bucket}\"}}");
        assert_eq!(metric(&text, &series("limit")), limit, "{bucket}");
        assert_eq!(metric(&text, &series("remaining")), limit - 1.0, "{bucket}: one token taken");
        let reset = metric(&text, &series("reset_timestamp_seconds"));
        assert!(reset > now + window - 5.0 && reset <= now + window + 1.0, "{bucket} resets at {reset}, now {now}");
    }
    let (_, _, body) = TestClient::default().get(&ops_url(&proxy, "/status")).await;
    let quota = &json(&body)["token"]["quota"];
    assert_eq!(quota[0]["bucket"], "per_hour");
    assert_eq!(quota[0]["limit"], 10);
    assert_eq!(quota[0]["remaining"], 9);
    assert_eq!(quota[0]["spent"], false);
    assert_eq!(quota.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn without_quota_headers_nothing_is_shown() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[]).await;
    proxy.tokens.get().await.unwrap();
    let (_, _, body) = TestClient::default().get(&ops_url(&proxy, "/metrics")).await;
    assert!(!String::from_utf8_lossy(&body).contains("pinecone_proxy_token_quota_limit{"));
    assert_eq!(proxy.tokens.snapshot().quota.len(), 0);
}

#[tokio::test]
async fn a_spent_bucket_blocks_token_requests_until_its_reset() {
    // 2-second tokens are refreshed about every second, but the quota allows 2 tokens per
    // 3 seconds: the second token spends the bucket, and the third may only be asked for
    // after the reset. A request sent before would be answered 429.
    let fake = fake(2).await;
    metered(&fake, "per_hour=2/3s");
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_TOKEN_MAX_REQUESTS_PER_MINUTE", "120")]).await;
    until(&proxy.tokens, Duration::from_secs(20), "generation 3", |t| generation(t) >= 3).await;
    let state = fake.state();
    assert_eq!(state.quota_refused.load(SeqCst), 0, "a token request went into the spent bucket");
    assert_eq!(state.token_requests.load(SeqCst), 3);
}

#[tokio::test]
async fn a_429_for_a_spent_bucket_is_obeyed_until_the_reset() {
    // Another replica already took the only token of this 3-second window: the proxy's
    // first request gets 429 with r=0, and it waits for the reset instead of backing off
    // for a second and trying again.
    let fake = fake(3600).await;
    metered(&fake, "per_hour=1/3s");
    let body = serde_json::json!({
        "grant_type": "client_credentials", "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET, "audience": "https://api.pinecone.io/",
    });
    let (status, _, _) = TestClient::default().post(&fake.token_url(), &body.to_string()).await;
    assert_eq!(status, 200);
    let proxy = proxy_for(&fake, &[]).await;
    let mut changed = proxy.tokens.subscribe();
    changed.changed().await.unwrap();
    assert_eq!(proxy.tokens.snapshot().last_error.unwrap().kind, "transient_error");
    let reason = proxy.tokens.not_ready_reason().unwrap();
    assert!(reason.contains("quota is spent (bucket per_hour"), "{reason}");
    until(&proxy.tokens, Duration::from_secs(10), "generation 1", |t| generation(t) >= 1).await;
    let state = fake.state();
    assert_eq!(state.quota_refused.load(SeqCst), 1, "one 429, then nothing until the reset");
    assert_eq!(state.token_requests.load(SeqCst), 3);
}

/// A token endpoint written by the test: each answer is `script(n)` for the n-th request
/// (from 0), with the given status and headers and a valid token body on a 200.
async fn scripted_endpoint(
    script: impl Fn(u64) -> (u16, Vec<(&'static str, String)>) + Clone + Send + Sync + 'static,
) -> (Upstream, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = count.clone();
    let endpoint = Upstream::start(move |_request| {
        let (script, seen) = (script.clone(), seen.clone());
        async move {
            let (status, headers) = script(seen.fetch_add(1, SeqCst));
            let body = if status == 200 {
                format!(r#"{{"access_token":"eyJ-test-{}","expires_in":3600,"token_type":"Bearer"}}"#, rand_id())
            } else {
                r#"{"error":"too_many_requests","error_description":"Rate limit exceeded"}"#.to_owned()
            };
            let mut response = http::Response::new(pinecone_admin_proxy::body::full(body));
            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
    })
    .await;
    (endpoint, count)
}

fn rand_id() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A 429 whose rate bucket resets in 50 s but whose `Retry-After` says 1 s: the endpoint's
/// own word wins, and the token comes a second later, not 50.
#[tokio::test]
async fn a_429s_retry_after_wins_over_the_buckets_reset() {
    let fake = fake(3600).await;
    let (endpoint, count) = scripted_endpoint(|n| match n {
        0 => (
            429,
            vec![
                ("retry-after", "1".to_owned()),
                ("x-ratelimit-limit", "30".to_owned()),
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-reset", (unix_now() + 50).to_string()),
            ],
        ),
        _ => (200, vec![]),
    })
    .await;
    let proxy = start_with(&env(&format!("{}/oauth/token", endpoint.url()), &fake.api_url(), &[])).await;
    until(&proxy.tokens, Duration::from_secs(20), "generation 1", |t| generation(t) >= 1).await;
    assert_eq!(count.load(SeqCst), 2, "the 429, then the token");
}

/// A skewed clock and hostile readings: an endpoint whose `Date` is two hours ahead of ours
/// reports a rate reset 10 s after its `Date` (10 s, not 2 h), and a per_day reset years
/// away is cut back to a day and shown as clamped. Token requests are never held for hours.
#[tokio::test]
async fn skewed_and_hostile_resets_are_read_on_the_endpoints_clock_and_clamped() {
    let fake = fake(3600).await;
    let (endpoint, _) = scripted_endpoint(|_| {
        let their_now = SystemTime::now() + Duration::from_secs(7200);
        let their_unix = their_now.duration_since(UNIX_EPOCH).unwrap().as_secs();
        (
            200,
            vec![
                ("date", httpdate::fmt_http_date(their_now)),
                ("x-ratelimit-limit", "30".to_owned()),
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-reset", (their_unix + 10).to_string()),
                ("auth0-client-quota-limit", "b=per_day;q=50;r=0;t=99999999".to_owned()),
            ],
        )
    })
    .await;
    let proxy = start_with(&env(&format!("{}/oauth/token", endpoint.url()), &fake.api_url(), &[])).await;
    proxy.tokens.get().await.unwrap();
    let now = unix_now();
    let status = json(&TestClient::default().get(&ops_url(&proxy, "/status")).await.2);
    let quota = status["token"]["quota"].as_array().unwrap_or_else(|| panic!("{status}"));
    let bucket = |name: &str| quota.iter().find(|b| b["bucket"] == name).unwrap_or_else(|| panic!("{status}"));
    let resets = |b: &serde_json::Value| {
        let at = humantime::parse_rfc3339(b["resets_at"].as_str().unwrap()).unwrap();
        at.duration_since(UNIX_EPOCH).unwrap().as_secs()
    };
    let rate = bucket("rate");
    assert!(resets(rate) <= now + 12, "10 s after the endpoint's Date, on our clock: {rate}");
    assert_eq!(rate["clamped"], false);
    let day = bucket("per_day");
    assert_eq!(day["clamped"], true, "{day}");
    assert!(resets(day) <= now + 86_400 + 2, "cut back to one day: {day}");
}
