//! The control plane on `listen` (PRODUCT.md, "Forwarding on `listen`"): control-plane
//! routes take a project API key, never the bearer token. Without `[api_key]`, a client's own
//! `Api-Key` goes through unchanged, and a request without one is refused before any token
//! or upstream is involved.

use crate::support::*;
use http::{Method, Request, StatusCode};
use parking_lot::Mutex;
use pinecone_admin_proxy::body::{empty, full};
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

/// A project API key of the fake's, made through its Admin API.
async fn api_key(fake: &pinecone_admin_proxy::fake::FakePinecone) -> String {
    let client = TestClient::default();
    let (_, _, body) = client
        .post(
            &fake.token_url(),
            r#"{"grant_type":"client_credentials","client_id":"demo-client-id","client_secret":"demo-client-secret","audience":"https://api.pinecone.io/"}"#,
        )
        .await;
    let token = json(&body)["access_token"].as_str().unwrap().to_owned();
    let projects = Request::get(format!("{}/admin/projects", fake.api_url()))
        .header("authorization", format!("Bearer {token}"))
        .body(empty())
        .unwrap();
    let (_, _, body) = collect(client.send(projects).await).await;
    let project = json(&body)["data"][0]["id"].as_str().unwrap().to_owned();
    let request = Request::post(format!("{}/admin/projects/{project}/api-keys", fake.api_url()))
        .header("authorization", format!("Bearer {token}"))
        .header("x-pinecone-api-version", "2025-10")
        .body(full(r#"{"name":"app","roles":["ProjectEditor"]}"#))
        .unwrap();
    let (status, _, body) = collect(client.send(request).await).await;
    assert_eq!(status, StatusCode::CREATED);
    json(&body)["value"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn without_api_key_a_request_with_no_key_is_refused_before_any_token_or_upstream() {
    let fake = fake(3600).await;
    // No token can be had: the refusal must not wait for one.
    let refusing = closed_port();
    let token_url = format!("http://127.0.0.1:{}/oauth/token", refusing.port);
    let proxy = start_with(&env(&token_url, &fake.api_url(), &[("PINECONE_PROXY_TOKEN_TIMEOUT", "1s")])).await;
    let (status, headers, body) = TestClient::default().get(&url(&proxy, "/indexes")).await;
    assert_proxy_error(status, &headers, &body, StatusCode::FORBIDDEN, "api_key_not_configured");
    let message = json(&body)["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("list_indexes") && message.contains("[api_key]"), "{message}");
    assert_eq!(fake.state().control_requests.load(SeqCst), 0, "never forwarded");
    // An Admin API request still needs the token (and gets 503 here: none can be had).
    let (status, _, _) = TestClient::default().get(&url(&proxy, "/admin/projects")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn without_api_key_the_clients_own_key_goes_through_unchanged_and_no_token_with_it() {
    let fake = fake(3600).await;
    let key = api_key(&fake).await;
    let seen: Arc<Mutex<Vec<http::HeaderMap>>> = Arc::default();
    let record = seen.clone();
    let upstream = Upstream::start(move |request: Request<hyper::body::Incoming>| {
        record.lock().push(request.headers().clone());
        async { http::Response::new(full(r#"{"indexes":[]}"#)) }
    })
    .await;
    let proxy = start_with(&env(&fake.token_url(), &upstream.url(), &[])).await;
    proxy.tokens.get().await.unwrap();
    let request = Request::get(url(&proxy, "/indexes")).header("api-key", key.as_str()).body(empty()).unwrap();
    assert_eq!(TestClient::default().send(request).await.status(), StatusCode::OK);
    let headers = seen.lock().pop().expect("forwarded");
    assert_eq!(headers["api-key"], key.as_str(), "unchanged");
    assert!(!headers.contains_key("authorization"), "no bearer token of ours");
    assert_eq!(headers["x-pinecone-api-version"], "2025-10", "added when missing");

    // Against the fake: the key works, and a bad one's 401 comes back as it came, costing
    // no token request.
    let proxy = start_with(&env(&fake.token_url(), &fake.api_url(), &[])).await;
    proxy.tokens.get().await.unwrap();
    let before = fake.state().token_requests.load(SeqCst);
    let get = |key: &str| Request::get(url(&proxy, "/indexes")).header("api-key", key).body(empty()).unwrap();
    let (status, _, body) = collect(TestClient::default().send(get(&key)).await).await;
    assert_eq!((status, json(&body)["indexes"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)));
    let create = Request::builder()
        .method(Method::POST)
        .uri(url(&proxy, "/indexes"))
        .header("api-key", key.as_str())
        .body(full(r#"{"name":"docs","dimension":8,"spec":{"serverless":{"cloud":"aws","region":"us-east-1"}}}"#))
        .unwrap();
    assert_eq!(TestClient::default().send(create).await.status(), StatusCode::CREATED, "a body streams up");
    let (status, _, body) = collect(TestClient::default().send(get("pckey_wrong")).await).await;
    assert_eq!((status, &body[..]), (StatusCode::UNAUTHORIZED, &b"Invalid API key"[..]));
    assert_eq!(fake.state().token_requests.load(SeqCst), before, "a control plane 401 costs no token request");
}
