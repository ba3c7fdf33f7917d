//! Upstream 401: one new token for every request that saw the rejected generation, one
//! replay per request for bodies within `replay_limit`, never a loop, always within the
//! token request budget.

use crate::support::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use pinecone_admin_proxy::body::full;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

#[tokio::test]
async fn revocation_under_concurrent_load_costs_one_token_request() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[]).await;
    let client = TestClient::default();
    assert_eq!(client.get(&url(&proxy, "/admin/projects")).await.0, StatusCode::OK);
    fake.state().revoke_all();
    let requests: Vec<_> = (0..50)
        .map(|i| {
            let client = client.clone();
            let url = url(&proxy, "/admin/projects");
            tokio::spawn(async move {
                if i % 2 == 0 {
                    client.get(&url).await.0
                } else {
                    client.post(&url, &format!(r#"{{"name":"p{i}"}}"#)).await.0
                }
            })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap(), StatusCode::OK, "replayed with the new token");
    }
    assert_eq!(fake.state().token_requests.load(SeqCst), 2, "one new token for all");
    assert_eq!(proxy.metrics.upstream_unauthorized.get(), 50);
    let metrics = String::from_utf8(client.get(&ops_url(&proxy, "/metrics")).await.2.to_vec()).unwrap();
    assert!(metrics.contains("pinecone_proxy_replays_total{result=\"success\"} 50"), "{metrics}");
    // Every POST was created exactly once.
    let projects = json(&client.get(&url(&proxy, "/admin/projects")).await.2);
    for i in (1..50).step_by(2) {
        let n = projects["data"].as_array().unwrap().iter().filter(|p| p["name"] == format!("p{i}")).count();
        assert_eq!(n, 1, "p{i}");
    }
}

#[tokio::test]
async fn a_body_over_the_replay_limit_is_not_replayed() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[("PINECONE_PROXY_UPSTREAM_REPLAY_LIMIT", "16")]).await;
    let client = TestClient::default();
    proxy.tokens.get().await.unwrap();
    fake.state().revoke_all();
    let (status, _, body) =
        client.post(&url(&proxy, "/admin/projects"), r#"{"name":"a-rather-long-project-name"}"#).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the upstream's 401 goes back");
    assert_eq!(json(&body)["error"]["code"], "UNAUTHENTICATED");
    let metrics = String::from_utf8(client.get(&ops_url(&proxy, "/metrics")).await.2.to_vec()).unwrap();
    assert!(metrics.contains("pinecone_proxy_replays_total{result=\"too_large\"} 1"), "{metrics}");
    // The 401 still made the proxy fetch a new token, which the next request uses.
    proxy.tokens.newer_than(1).await.unwrap();
    assert_eq!(
        client.post(&url(&proxy, "/admin/projects"), r#"{"name":"a-rather-long-project-name"}"#).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_always_401_upstream_never_loops_and_the_budget_holds() {
    let fake = fake(3600).await;
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    let upstream = Upstream::start(move |_request: Request<Incoming>| {
        counter.fetch_add(1, SeqCst);
        async move {
            let mut r = Response::new(full(Bytes::from_static(
                br#"{"error":{"code":"UNAUTHENTICATED","message":"Invalid API key."},"status":401}"#,
            )));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            r
        }
    })
    .await;
    let proxy = start_with(&env(&fake.token_url(), &upstream.url(), &[("PINECONE_PROXY_TOKEN_TIMEOUT", "1s")])).await;
    let client = TestClient::default();
    let rounds = 4;
    let per_round = 25;
    for _ in 0..rounds {
        let requests: Vec<_> = (0..per_round)
            .map(|_| {
                let client = client.clone();
                let url = url(&proxy, "/admin/projects");
                tokio::spawn(async move { client.get(&url).await.0 })
            })
            .collect();
        for r in requests {
            assert_eq!(r.await.unwrap(), StatusCode::UNAUTHORIZED);
        }
    }
    let requests = rounds * per_round;
    assert!(hits.load(SeqCst) <= 2 * requests, "at most one replay each: {} upstream hits", hits.load(SeqCst));
    let tokens = fake.state().token_requests.load(SeqCst);
    assert!(tokens <= 6, "{tokens} token requests: the budget (6 a minute) holds");
    assert!(proxy.metrics.token_budget_exhausted.get() >= 1 || tokens < 6);
}

/// Pinecone's planes other than the Admin API reject a service account's token with a
/// plain-text 401 however fresh the token is: before the fix each such 401 invalidated the
/// token and cost a token request (20 requests, 11 tokens). A path the route table does not
/// know (here a data-plane path sent to the API host) is still forwarded with the token, and
/// its 401 goes back as it came. (Known control-plane routes take an API key and never the
/// token: `control_plane.rs`.)
#[tokio::test]
async fn a_401_outside_the_admin_api_costs_no_token() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[]).await;
    let client = TestClient::default();
    proxy.tokens.get().await.unwrap();
    for _ in 0..20 {
        let (status, headers, body) = client.get(&url(&proxy, "/describe_index_stats")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(&body[..], b"Invalid API key", "the control plane's answer, as it came");
        assert!(!headers.contains_key("x-pinecone-proxy-error"));
    }
    assert_eq!(fake.state().control_unauthorized.load(SeqCst), 20, "each reached the control plane once");
    assert_eq!(fake.state().token_requests.load(SeqCst), 1, "no token request for a 401 a token cannot cure");
    assert_eq!(proxy.metrics.upstream_unauthorized.get(), 0);
    // The Admin API's own 401 still gets its one new token and replay.
    fake.state().revoke_all();
    assert_eq!(client.get(&url(&proxy, "/admin/projects")).await.0, StatusCode::OK);
    assert_eq!(fake.state().token_requests.load(SeqCst), 2);
}
