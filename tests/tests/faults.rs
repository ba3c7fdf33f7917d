//! The token endpoint's fault matrix: each failure is classified (transient or rejected),
//! retried after a backoff (or `Retry-After`), and never discards a usable token.

use crate::support::*;
use http::StatusCode;
use pinecone_admin_proxy::fake::TokenFault;
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;
use tokio::time::Instant;

fn status(code: u16, body: &str, retry_after: Option<&str>) -> TokenFault {
    TokenFault::Status { status: code, body: body.into(), retry_after: retry_after.map(Into::into) }
}

/// A transient fault on the first token request: the second, at least `min_wait` later,
/// gets the token.
#[tokio::test]
async fn transient_faults_are_retried_after_a_backoff() {
    let cases: Vec<(&str, TokenFault, Duration)> = vec![
        ("500", status(500, "Internal Server Error", None), Duration::from_secs(1)),
        ("503", status(503, r#"{"error":"temporarily_unavailable"}"#, None), Duration::from_secs(1)),
        ("429 without Retry-After", status(429, r#"{"error":"too_many_requests"}"#, None), Duration::from_secs(1)),
        ("429 with Retry-After", status(429, r#"{"error":"too_many_requests"}"#, Some("3")), Duration::from_secs(3)),
        (
            "503 with an HTTP-date Retry-After",
            status(503, "", Some(&httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(4)))),
            Duration::from_secs(2),
        ),
        ("malformed JSON", TokenFault::Ok("{\"access_token\": ".into()), Duration::from_secs(1)),
        ("empty 200", TokenFault::Ok(String::new()), Duration::from_secs(1)),
        (
            "no expires_in",
            TokenFault::Ok(r#"{"access_token":"eyJx","token_type":"Bearer"}"#.into()),
            Duration::from_secs(1),
        ),
        ("zero expires_in", TokenFault::Ok(r#"{"access_token":"eyJx","expires_in":0}"#.into()), Duration::from_secs(1)),
        (
            "negative expires_in",
            TokenFault::Ok(r#"{"access_token":"eyJx","expires_in":-60}"#.into()),
            Duration::from_secs(1),
        ),
        ("no access_token", TokenFault::Ok(r#"{"expires_in":3600}"#.into()), Duration::from_secs(1)),
        ("slower than token.timeout", TokenFault::Delay(Duration::from_secs(3)), Duration::from_secs(1)),
        ("connection reset", TokenFault::Reset, Duration::from_secs(1)),
    ];
    let runs = cases.into_iter().map(|(name, fault, min_wait)| async move {
        let fake = fake(3600).await;
        fake.state().push_token_faults([fault]);
        let started = Instant::now();
        let proxy = proxy_for(&fake, &[("PINECONE_PROXY_TOKEN_TIMEOUT", "500ms")]).await;
        let first = async {
            loop {
                if let Ok(token) = proxy.tokens.get().await {
                    break token;
                }
            }
        };
        let token = tokio::time::timeout(Duration::from_secs(20), first).await.expect("a token after the retry");
        let waited = started.elapsed();
        assert_eq!(token.generation, 1, "{name}");
        assert!(waited >= min_wait, "{name}: retried after {waited:?}, sooner than {min_wait:?}");
        assert!(waited < min_wait + Duration::from_secs(4), "{name}: retried only after {waited:?}");
        assert_eq!(proxy.metrics.token_transient.get(), 1, "{name}: counted as transient");
        assert_eq!(proxy.metrics.token_rejected.get(), 0, "{name}");
        assert_eq!(proxy.metrics.token_success.get(), 1, "{name}");
        assert_eq!(fake.state().token_requests.load(SeqCst), 2, "{name}: one retry");
        let status = json(&TestClient::default().get(&ops_url(&proxy, "/status")).await.2);
        assert_eq!(status["token"]["last_error"]["kind"], "transient_error", "{name}");
        let at = status["token"]["last_error"]["at"].as_str().expect("a time");
        assert!(humantime::parse_rfc3339(at).is_ok(), "{name}: RFC 3339, as every time in /status: {at}");
        assert!(
            !status["token"]["last_error"]["message"].as_str().unwrap().contains("eyJx"),
            "{name}: no token quoted"
        );
    });
    futures_join_all(runs).await;
}

#[tokio::test]
async fn rejections_are_reported_with_pinecones_reason() {
    // What the client is told is wrong: the credentials, or the audience.
    let cases = [
        (401, r#"{"error":"access_denied","error_description":"Unauthorized"}"#, "Unauthorized", "credentials"),
        (
            403,
            r#"{"error":"access_denied","error_description":"Service not enabled within domain: https://api.pinecone.io"}"#,
            "Service not enabled",
            "audience (token.audience",
        ),
        (
            400,
            r#"{"error":"invalid_request","error_description":"Missing required parameter: audience"}"#,
            "Missing",
            "credentials",
        ),
    ];
    for (code, body, reason, told) in cases {
        let fake = fake(3600).await;
        fake.state().push_token_faults([status(code, body, None)]);
        let proxy = proxy_for(&fake, &[]).await;
        let (status_code, headers, body) = TestClient::default().get(&url(&proxy, "/admin/projects")).await;
        assert_eq!(status_code, StatusCode::SERVICE_UNAVAILABLE, "{code}");
        assert_eq!(headers["x-pinecone-proxy-error"], "credentials_rejected");
        let said = json(&body)["error"]["message"].as_str().unwrap().to_owned();
        assert!(said.contains(&format!("rejects the proxy's {told}")), "{code}: {said}");
        assert_eq!(proxy.metrics.token_rejected.get(), 1);
        let status = json(&TestClient::default().get(&ops_url(&proxy, "/status")).await.2);
        let message = status["token"]["last_error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(reason) && message.contains(&code.to_string()), "{message}");
        assert_eq!(status["token"]["last_error"]["kind"], "rejected");
    }
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_token_in_use() {
    // 3-second tokens refresh at about 1.5 s; the refresh fails, and requests carry on
    // with the current token until the retry a second later.
    let fake = fake(3).await;
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_TOKEN_MAX_REQUESTS_PER_MINUTE", "60")]).await;
    let first = proxy.tokens.get().await.unwrap();
    fake.state().push_token_faults([status(503, "down", None)]);
    let client = TestClient::default();
    let mut ok = 0;
    while proxy.metrics.token_transient.get() == 0 {
        assert_eq!(client.get(&url(&proxy, "/admin/projects")).await.0, StatusCode::OK);
        ok += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxy.tokens.current().expect("still usable").generation, first.generation);
    assert_eq!(client.get(&url(&proxy, "/admin/projects")).await.0, StatusCode::OK);
    let second = proxy.tokens.newer_than(first.generation).await.unwrap();
    assert_eq!(second.generation, 2);
    assert!(ok > 10);
    assert_eq!(fake.state().expired_presented.load(SeqCst), 0);
}

/// Runs futures concurrently, without a futures dependency.
async fn futures_join_all<F: Future<Output = ()> + Send + 'static>(futures: impl IntoIterator<Item = F>) {
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    for h in handles {
        h.await.unwrap();
    }
}
