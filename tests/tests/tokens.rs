//! The token engine over real sockets: the exact token request, one request for a cold
//! start under load, and refresh that never presents an expired token.

use crate::support::*;
use http::StatusCode;
use pinecone_admin_proxy::fake::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

#[tokio::test]
async fn the_token_request_has_the_contract_shape() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[("PINECONE_API_VERSION", "2026-07")]).await;
    proxy.tokens.get().await.unwrap();
    let request = fake.state().last_token_request().unwrap();
    assert_eq!(request.method, http::Method::POST);
    assert_eq!(request.target, "/oauth/token");
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.headers["x-pinecone-api-version"], "2026-07");
    assert_eq!(request.headers["user-agent"], format!("pinecone-admin-proxy/{}", env!("CARGO_PKG_VERSION")).as_str());
    assert!(!request.headers.contains_key("authorization"), "credentials travel in the body only");
    let body = json(&request.body);
    assert_eq!(
        body,
        serde_json::json!({
            "grant_type": "client_credentials",
            "client_id": DEMO_CLIENT_ID,
            "client_secret": DEMO_CLIENT_SECRET,
            "audience": "https://api.pinecone.io/",
        })
    );
}

#[tokio::test]
async fn form_request_format() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_TOKEN_REQUEST_FORMAT", "form")]).await;
    proxy.tokens.get().await.unwrap();
    let request = fake.state().last_token_request().unwrap();
    assert_eq!(request.headers["content-type"], "application/x-www-form-urlencoded");
    let fields: std::collections::HashMap<String, String> =
        form_urlencoded::parse(&request.body).into_owned().collect();
    assert_eq!(fields["grant_type"], "client_credentials");
    assert_eq!(fields["client_id"], DEMO_CLIENT_ID);
    assert_eq!(fields["client_secret"], DEMO_CLIENT_SECRET);
    assert_eq!(fields["audience"], "https://api.pinecone.io/");
}

#[tokio::test]
async fn cold_start_under_load_makes_exactly_one_token_request() {
    let fake = fake(3600).await;
    fake.state().set_token_delay(Duration::from_millis(500));
    let proxy = proxy_for(&fake, &[]).await;
    let client = TestClient::default();
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            let url = url(&proxy, "/admin/projects");
            tokio::spawn(async move { client.get(&url).await.0 })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(fake.state().token_requests.load(SeqCst), 1);
    assert_eq!(fake.state().token_inflight_max.load(SeqCst), 1);
    assert_eq!(fake.state().admin_requests.load(SeqCst), 100);
}

/// Requests flow while 2-second tokens are refreshed three times (about a second each, at
/// half-life): none carries an expired token, none sees a 401. The paused-clock property
/// test of the engine (`src/token/refresher/tests.rs`) covers the schedule itself; this is
/// the same over real sockets and the real clock, kept short.
#[tokio::test]
async fn refresh_with_short_lifetimes_never_presents_an_expired_token() {
    let fake = fake(2).await;
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_TOKEN_MAX_REQUESTS_PER_MINUTE", "120")]).await;
    let client = TestClient::default();
    let mut sent = 0;
    let traffic = async {
        while fake.state().tokens_issued.load(SeqCst) < 4 {
            let (status, _, body) = client.get(&url(&proxy, "/admin/projects")).await;
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            sent += 1;
            // A steady trickle, not a spin: about fifty requests a second.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), traffic).await.expect("three refreshes of 2 s tokens");
    let state = fake.state();
    assert_eq!(state.expired_presented.load(SeqCst), 0);
    assert_eq!(state.unauthorized.load(SeqCst), 0);
    // One token request a token (the next may be on its way as this is read).
    let (requests, issued) = (state.token_requests.load(SeqCst), state.tokens_issued.load(SeqCst));
    assert!(requests <= issued + 1, "{requests} token requests for {issued} tokens");
    assert!(sent > 20, "requests flowed across the refreshes ({sent})");
}
