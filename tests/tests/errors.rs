//! Errors the proxy makes itself: 502, 503 (twice), 504, each with its
//! `x-pinecone-proxy-error` reason, Pinecone's error body and its metric.

use crate::support::*;
use http::StatusCode;
use pinecone_admin_proxy::fake::TokenFault;
use std::time::Duration;

#[tokio::test]
async fn unreachable_upstream_is_502() {
    let fake = fake(3600).await;
    let refusing = closed_port();
    let closed = format!("http://127.0.0.1:{}", refusing.port);
    let proxy = start_with(&env(&fake.token_url(), &closed, &[])).await;
    let (status, headers, body) = TestClient::default().get(&url(&proxy, "/admin/projects")).await;
    assert_proxy_error(status, &headers, &body, StatusCode::BAD_GATEWAY, "upstream_unreachable");
    assert!(
        json(&body)["error"]["message"].as_str().unwrap().contains("Connect"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(proxy.metrics.upstream_unreachable.get(), 1);
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let fake = fake(3600).await;
    fake.state().set_admin_delay(Duration::from_secs(5));
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_UPSTREAM_TIMEOUT", "200ms")]).await;
    let (status, headers, body) = TestClient::default().get(&url(&proxy, "/admin/projects")).await;
    assert_proxy_error(status, &headers, &body, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    assert_eq!(proxy.metrics.upstream_timeout.get(), 1);
}

/// Each request on a kept-alive upstream connection gets the whole timeout from its own
/// start: the connection's timer is moved on, not left at the first request's deadline.
#[tokio::test]
async fn a_kept_alive_connection_times_each_request_from_its_start() {
    let fake = fake(3600).await;
    fake.state().set_admin_delay(Duration::from_millis(600));
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_UPSTREAM_TIMEOUT", "1s")]).await;
    let client = TestClient::default();
    // Three in a row on one connection: the second ends 1.2 s after the first began.
    for _ in 0..3 {
        let (status, _, body) = client.get(&url(&proxy, "/admin/projects")).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    fake.state().set_admin_delay(Duration::from_secs(5));
    let (status, headers, body) = client.get(&url(&proxy, "/admin/projects")).await;
    assert_proxy_error(status, &headers, &body, StatusCode::GATEWAY_TIMEOUT, "upstream_timeout");
    // The timed-out connection is not reused with its request still pending.
    fake.state().set_admin_delay(Duration::ZERO);
    let (status, _, _) = client.get(&url(&proxy, "/admin/projects")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(proxy.metrics.upstream_timeout.get(), 1);
}

#[tokio::test]
async fn no_token_is_503_token_unavailable_with_retry_after() {
    let fake = fake(3600).await;
    fake.state().push_token_faults((0..10).map(|_| TokenFault::Status {
        status: 503,
        body: r#"{"error":"temporarily_unavailable"}"#.into(),
        retry_after: Some("30".into()),
    }));
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_TOKEN_TIMEOUT", "300ms")]).await;
    let (status, headers, body) = TestClient::default().get(&url(&proxy, "/admin/projects")).await;
    assert_proxy_error(status, &headers, &body, StatusCode::SERVICE_UNAVAILABLE, "token_unavailable");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((20..=31).contains(&retry_after), "Retry-After {retry_after} follows the endpoint's 30 s");
    assert_eq!(fake.state().admin_requests.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn rejected_credentials_are_503_credentials_rejected_at_once() {
    let fake = fake(3600).await;
    fake.state().set_client("demo-client-id", "a-different-secret");
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_TOKEN_TIMEOUT", "30s")]).await;
    let started = tokio::time::Instant::now();
    let (status, headers, body) = TestClient::default().get(&url(&proxy, "/admin/projects")).await;
    assert_proxy_error(status, &headers, &body, StatusCode::SERVICE_UNAVAILABLE, "credentials_rejected");
    assert!(started.elapsed() < Duration::from_secs(5), "did not wait token.timeout");
    assert_eq!(proxy.metrics.token_rejected.get(), 1);
    let status = json(&TestClient::default().get(&ops_url(&proxy, "/status")).await.2);
    assert_eq!(status["token"]["credentials_rejected"], true);
    assert!(status["token"]["last_error"]["message"].as_str().unwrap().contains("access_denied"));
}
