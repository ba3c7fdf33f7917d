//! The managed API key (PRODUCT.md, "The control plane and the data plane: a managed API
//! key") over real sockets against the fake: control-plane requests carry the proxy's key
//! and never the client's credentials; the key is created before `/readyz` says ready,
//! replaced once after a revocation, rotated by overlap under load with no failed request,
//! deleted on shutdown, and the janitor deletes exactly the orphans of ours.

use crate::support::*;
use http::{Method, Request, StatusCode};
use pinecone_admin_proxy::app::Running;
use pinecone_admin_proxy::body::{empty, full};
use pinecone_admin_proxy::fake::FakePinecone;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const PREFIX: &str = "pinecone-admin-proxy";

/// A proxy in front of `fake` that keeps a managed key in the fake's project, with the
/// roles to create and delete indexes, plus `extra`.
async fn managed(fake: &FakePinecone, extra: &[(&str, &str)]) -> Running {
    let project = fake.state().project_id();
    let mut env = vec![
        ("PINECONE_PROXY_API_KEY_PROJECT_ID", project.as_str()),
        ("PINECONE_PROXY_API_KEY_ROLES", "ControlPlaneEditor"),
    ];
    env.extend_from_slice(extra);
    proxy_for(fake, &env).await
}

fn keys(proxy: &Running) -> &pinecone_admin_proxy::api_key::source::KeySource {
    proxy.keys.as_ref().expect("[api_key] is set")
}

/// The names of the fake's live keys that are ours.
fn ours(fake: &FakePinecone) -> Vec<String> {
    fake.state()
        .api_keys()
        .iter()
        .filter_map(|k| k["name"].as_str().filter(|n| n.starts_with(&format!("{PREFIX}-"))).map(str::to_owned))
        .collect()
}

fn ids(fake: &FakePinecone) -> Vec<String> {
    fake.state().api_keys().iter().map(|k| k["id"].as_str().unwrap().to_owned()).collect()
}

async fn metric(proxy: &Running, line: &str) -> f64 {
    let (_, _, body) = TestClient::default().get(&ops_url(proxy, "/metrics")).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    let found = text
        .lines()
        .find_map(|l| l.strip_prefix(line)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{line} in\n{text}"));
    found.parse().unwrap()
}

fn request(method: Method, proxy: &Running, path: &str, body: &str) -> Request<pinecone_admin_proxy::body::Body> {
    Request::builder()
        .method(method)
        .uri(url(proxy, path))
        // What an SDK sends when it is told the proxy supplies the key: placeholders.
        .header("api-key", "unused")
        .header("authorization", "Bearer not-a-token")
        .header("content-type", "application/json")
        .body(if body.is_empty() { empty() } else { full(body.to_owned()) })
        .unwrap()
}

#[tokio::test]
async fn control_plane_requests_carry_the_managed_key_and_never_the_clients_credentials() {
    let fake = fake(3600).await;
    fake.state().set_recording(true);
    let proxy = managed(&fake, &[]).await;
    let key = keys(&proxy).get().await.unwrap();
    let value = key.header().to_str().unwrap().to_owned();
    let client = TestClient::default();

    let create =
        r#"{"name":"docs","dimension":8,"metric":"cosine","spec":{"serverless":{"cloud":"aws","region":"us-east-1"}}}"#;
    let (status, _, body) = collect(client.send(request(Method::POST, &proxy, "/indexes", create)).await).await;
    assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    let (status, _, body) = collect(client.send(request(Method::GET, &proxy, "/indexes/docs", "")).await).await;
    assert_eq!(status, StatusCode::OK);
    let host = json(&body)["host"].as_str().unwrap().to_owned();
    assert!(host.parse::<std::net::SocketAddr>().is_ok(), "describe_index names the data plane's host: {host}");
    let (status, _, body) = collect(client.send(request(Method::GET, &proxy, "/indexes", "")).await).await;
    assert_eq!((status, json(&body)["indexes"][0]["name"].as_str()), (StatusCode::OK, Some("docs")));
    let (status, _, _) = collect(client.send(request(Method::DELETE, &proxy, "/indexes/docs", "")).await).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // Every control-plane request carried exactly the managed key, and no bearer token.
    let control: Vec<_> = fake.state().recorded().into_iter().filter(|r| r.target.starts_with("/indexes")).collect();
    assert_eq!(control.len(), 4, "no replays: the key worked at once");
    for r in &control {
        assert_eq!(r.headers.get_all("api-key").iter().collect::<Vec<_>>(), [value.as_str()], "{}", r.target);
        assert!(!r.headers.contains_key("authorization"), "{}", r.target);
        assert_eq!(r.headers["x-pinecone-api-version"], "2025-10");
    }
    // One key, in the project, with the roles asked for, named with its lease end.
    assert_eq!(fake.state().api_keys_created(), 1);
    let made = fake.state().api_keys().into_iter().find(|k| k["id"] == key.id.as_str()).unwrap();
    assert_eq!(made["roles"], serde_json::json!(["ControlPlaneEditor"]));
    assert_eq!(made["project_id"], fake.state().project_id());
    let end: u64 = key.name.strip_prefix("pinecone-admin-proxy-").unwrap()[..10].parse().unwrap();
    let expected = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 86_400;
    assert!(end.abs_diff(expected) < 60, "lease end {end} in the name, about now + 24h");

    // /status and /metrics show the key, never its value; /readyz is ready.
    let (_, _, status) = TestClient::default().get(&ops_url(&proxy, "/status")).await;
    let shown = json(&status)["api_key"].clone();
    assert_eq!((shown["id"].as_str(), shown["usable"].as_bool()), (Some(key.id.as_str()), Some(true)));
    assert_eq!(shown["fingerprint"], key.fingerprint.as_str());
    assert_eq!(shown["roles"], serde_json::json!(["ControlPlaneEditor"]));
    for field in ["name", "created_at", "lease_end", "next_rotation", "project_id"] {
        assert!(shown[field].is_string(), "{field}: {shown}");
    }
    let (_, _, metrics) = TestClient::default().get(&ops_url(&proxy, "/metrics")).await;
    for text in [&status, &metrics] {
        assert!(!String::from_utf8_lossy(text).contains(&value), "the key's value is shown");
    }
    assert_eq!(metric(&proxy, "pinecone_proxy_api_key_usable").await, 1.0);
    assert_eq!(
        metric(&proxy, r#"pinecone_proxy_api_key_operations_total{operation="create",result="success"}"#).await,
        1.0
    );
    let lease_end = metric(&proxy, "pinecone_proxy_api_key_lease_end_timestamp_seconds").await;
    assert!((lease_end - end as f64).abs() < 2.0, "{lease_end} against the name's {end}");
    assert_eq!(
        metric(&proxy, r#"pinecone_proxy_requests_total{code="201",method="POST",operation="create_index"}"#).await,
        1.0
    );
    let (status, _, _) = TestClient::default().get(&ops_url(&proxy, "/readyz")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_revoked_key_is_replaced_once_for_all_the_requests_that_saw_it_and_each_is_replayed() {
    let fake = fake(3600).await;
    let proxy = managed(&fake, &[]).await;
    let first = keys(&proxy).get().await.unwrap();
    assert!(fake.state().revoke_api_key(&first.id));
    let create = |i: usize| {
        format!(
            r#"{{"name":"idx-{i}","dimension":8,"metric":"cosine","spec":{{"serverless":{{"cloud":"aws","region":"us-east-1"}}}}}}"#
        )
    };
    let client = TestClient::default();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let (client, request) = (client.clone(), request(Method::POST, &proxy, "/indexes", &create(i)));
            tokio::spawn(async move { collect(client.send(request).await).await.0 })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::CREATED, "replayed with the new key, body and all");
    }
    assert_eq!(fake.state().api_keys_created(), 2, "one new key for all");
    assert_eq!(fake.state().indexes().len(), 32, "each request created its index once");
    let second = keys(&proxy).current().unwrap();
    assert_eq!(second.generation, 2);
    let replayed = metric(&proxy, r#"pinecone_proxy_replays_total{result="success"}"#).await;
    assert!((1.0..=32.0).contains(&replayed), "{replayed}");
    // The revoked key is gone already; the new one is the only one of ours.
    assert_eq!(ours(&fake), std::slice::from_ref(&second.name));
}

#[tokio::test]
async fn a_refused_creation_is_shown_and_requests_get_503_while_the_admin_api_still_works() {
    let fake = fake(3600).await;
    fake.state().refuse_api_key_creation(Some("Not enough available quota"));
    let proxy = managed(&fake, &[("PINECONE_PROXY_TOKEN_TIMEOUT", "1s")]).await;
    let client = TestClient::default();
    let (status, headers, body) = client.get(&url(&proxy, "/indexes")).await;
    assert_proxy_error(status, &headers, &body, StatusCode::SERVICE_UNAVAILABLE, "api_key_unavailable");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((500..=601).contains(&retry), "tried again in 10 minutes: {retry}");
    assert_eq!(fake.state().api_keys_created(), 0);
    assert_eq!(fake.state().control_requests.load(std::sync::atomic::Ordering::SeqCst), 0, "never forwarded");

    let (_, _, status) = client.get(&ops_url(&proxy, "/status")).await;
    let error = &json(&status)["api_key"]["last_error"];
    assert!(error["message"].as_str().unwrap().contains("Not enough available quota"), "{error}");
    assert!(error["message"].as_str().unwrap().contains("HTTP 403"), "{error}");
    assert!(error["at"].as_str().unwrap().ends_with('Z'));
    let (status, _, body) = client.get(&ops_url(&proxy, "/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(json(&body)["reason"].as_str().unwrap().contains("Not enough available quota"));
    assert_eq!(
        metric(&proxy, r#"pinecone_proxy_api_key_operations_total{operation="create",result="rejected"}"#).await,
        1.0
    );
    assert_eq!(metric(&proxy, "pinecone_proxy_api_key_usable").await, 0.0);

    let (status, _, _) = client.get(&url(&proxy, "/admin/projects")).await;
    assert_eq!(status, StatusCode::OK, "the Admin API does not need the key");
    // Many requests later, still the one creation: a refusal is retried every 10 minutes.
    assert_eq!(client.burst(&url(&proxy, "/indexes"), 20).await, vec![StatusCode::SERVICE_UNAVAILABLE; 20]);
    let (status, _, _) = client.get(&ops_url(&proxy, "/status")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        metric(&proxy, r#"pinecone_proxy_api_key_operations_total{operation="create",result="rejected"}"#).await,
        1.0
    );
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_with_the_key_then_deletes_it() {
    let fake = fake(3600).await;
    let proxy = managed(&fake, &[]).await;
    let key = keys(&proxy).get().await.unwrap();
    // Requests in flight when the shutdown starts: slow answers from the control plane.
    fake.state().set_admin_delay(Duration::from_millis(500));
    let arrived = fake.state().arrived.load(std::sync::atomic::Ordering::SeqCst);
    let client = TestClient::default();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, request) = (client.clone(), request(Method::GET, &proxy, "/indexes", ""));
            tokio::spawn(async move { collect(client.send(request).await).await.0 })
        })
        .collect();
    until_fake(&fake, |f| f.state().arrived.load(std::sync::atomic::Ordering::SeqCst) >= arrived + 8).await;
    proxy.shutdown();
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK, "finished with the key, before it was deleted");
    }
    proxy.wait().await;
    assert!(!ids(&fake).contains(&key.id), "deleted on shutdown");
    assert!(ours(&fake).is_empty());
}

#[tokio::test]
async fn without_delete_on_shutdown_the_key_outlives_the_proxy() {
    let fake = fake(3600).await;
    let proxy = managed(&fake, &[("PINECONE_PROXY_API_KEY_DELETE_ON_SHUTDOWN", "false")]).await;
    let key = keys(&proxy).get().await.unwrap();
    proxy.shutdown();
    proxy.wait().await;
    assert!(ids(&fake).contains(&key.id));
}

#[tokio::test]
async fn the_janitor_deletes_exactly_our_keys_past_their_lease_and_grace() {
    let fake = fake(3600).await;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let orphan = fake.state().add_api_key(&format!("{PREFIX}-{}-abc123", now - 3600));
    let in_grace = fake.state().add_api_key(&format!("{PREFIX}-{}-abc124", now - 60));
    let in_use = fake.state().add_api_key(&format!("{PREFIX}-{}-abc125", now + 3600));
    let others = [
        fake.state().add_api_key(&format!("{PREFIX}-staging-{}-abc126", now - 3600)),
        fake.state().add_api_key(&format!("{PREFIX}-{}-ABC127", now - 3600)),
        fake.state().add_api_key("pinecone-cli-x1y2z3"),
    ];
    let proxy = managed(&fake, &[]).await;
    keys(&proxy).get().await.unwrap();
    until_fake(&fake, |f| !ids(f).contains(&orphan)).await;
    let left = ids(&fake);
    for kept in [&in_grace, &in_use].into_iter().chain(&others) {
        assert!(left.contains(kept), "{kept} kept");
    }
    assert_eq!(metric(&proxy, "pinecone_proxy_api_key_orphans_deleted_total").await, 1.0);
}

#[tokio::test]
async fn rotation_by_overlap_under_load_fails_no_request_and_deletes_the_old_keys() {
    let fake = fake(3600).await;
    // A new key every two seconds; the old one deleted half a second after.
    let proxy = managed(
        &fake,
        &[
            ("PINECONE_PROXY_API_KEY_LIFETIME", "4s"),
            ("PINECONE_PROXY_API_KEY_ROTATE_AT", "0.5"),
            ("PINECONE_PROXY_API_KEY_GRACE", "500ms"),
            ("PINECONE_PROXY_API_KEY_MAX_CREATES_PER_HOUR", "3600"),
        ],
    )
    .await;
    let first = keys(&proxy).get().await.unwrap();
    let client = TestClient::default();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (client, stop, target) = (client.clone(), stop.clone(), url(&proxy, "/indexes"));
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    statuses.push(client.get(&target).await.0);
                }
                statuses
            })
        })
        .collect();
    // Until the fourth key is in use (three rotations), and the first is deleted.
    let mut changed = keys(&proxy).subscribe();
    tokio::time::timeout(Duration::from_secs(20), async {
        while keys(&proxy).current().is_none_or(|k| k.generation < 4) {
            changed.changed().await.unwrap();
        }
    })
    .await
    .expect("three rotations");
    until_fake(&fake, |f| !ids(f).contains(&first.id)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for worker in workers {
        let statuses = worker.await.unwrap();
        total += statuses.len();
        assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    }
    assert!(total > 100, "{total} requests across the rotations");
    assert_eq!(
        metric(&proxy, r#"pinecone_proxy_replays_total{result="success"}"#).await,
        0.0,
        "no key was used after its deletion"
    );
    assert!(ours(&fake).len() <= 2, "the current key and at most one within its grace: {:?}", ours(&fake));
}

/// Waits until `cond` holds of the fake, up to 10 s, looking again each time a request
/// arrives at the fake or is answered.
async fn until_fake(fake: &FakePinecone, cond: impl Fn(&FakePinecone) -> bool) {
    let mut activity = fake.state().subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !cond(fake) {
            activity.changed().await.expect("the fake runs");
        }
    })
    .await
    .expect("the fake reached the state awaited");
}

#[tokio::test]
async fn the_fake_speaks_each_versions_index_shape_as_the_sdks_do() {
    let fake = fake(3600).await;
    let proxy = managed(&fake, &[]).await;
    let client = TestClient::default();
    let versioned = |method: Method, path: &str, version: &str, body: &str| {
        let mut r = request(method, &proxy, path, body);
        r.headers_mut().insert("x-pinecone-api-version", version.parse().unwrap());
        r
    };
    // The Python SDK 10.2's request: 2026-07, a schema and a deployment.
    let create = r#"{"name":"shaped","schema":{"fields":{"_values":{"type":"dense_vector","dimension":8,"metric":"dotproduct"}}},"deployment":{"deployment_type":"managed","cloud":"aws","region":"us-east-1"}}"#;
    let (status, _, body) = collect(client.send(versioned(Method::POST, "/indexes", "2026-07", create)).await).await;
    assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    let created = json(&body);
    assert_eq!(created["schema"]["fields"]["_values"]["dimension"], 8);
    assert_eq!(created["deployment"]["region"], "us-east-1");
    // The same index in 2025-10's shape.
    let (_, _, body) = collect(client.send(versioned(Method::GET, "/indexes/shaped", "2025-10", "")).await).await;
    let old = json(&body);
    assert_eq!((old["dimension"].as_u64(), old["metric"].as_str()), (Some(8), Some("dotproduct")));
    assert_eq!(old["spec"]["serverless"]["cloud"], "aws");
    let bad = r#"{"name":"bad","schema":{"fields":{"title":{"type":"string"}}},"deployment":{"deployment_type":"managed","cloud":"aws","region":"us-east-1"}}"#;
    let (status, _, _) = collect(client.send(versioned(Method::POST, "/indexes", "2026-07", bad)).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// An h2c client on `listen` reaches the control plane over the proxy's HTTP/1.1 connection
/// to a plain-http upstream: the version is the proxy's to choose per hop.
#[tokio::test]
async fn an_http2_client_reaches_the_control_plane_over_http1_upstream() {
    let fake = fake(3600).await;
    let proxy = managed(&fake, &[]).await;
    let client: hyper_util::client::legacy::Client<_, pinecone_admin_proxy::body::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let response = client.request(request(Method::GET, &proxy, "/indexes", "")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
