//! The policy over real sockets (PRODUCT.md, "Policy"): allowed requests forwarded, refused
//! ones answered 403 `forbidden_by_policy` without a token or an upstream request, project
//! scoping by path and by an API key's looked-up project, `deny` over `allow`, `unknown`
//! and ambiguous routes, the audit lines, the `operation` label, and `policy-check`.

use crate::binary::{output, spawn_demo};
use crate::support::*;
use http::{Method, Request, StatusCode};
use pinecone_admin_proxy::app::Running;
use pinecone_admin_proxy::body::{empty, full};
use pinecone_admin_proxy::fake::{DEMO_CLIENT_SECRET, FakePinecone};
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

async fn send(
    client: &TestClient,
    method: Method,
    url: &str,
    body: Option<&str>,
) -> (StatusCode, http::HeaderMap, Value) {
    let request = Request::builder().method(method).uri(url).header("content-type", "application/json");
    let request = match body {
        Some(body) => request.body(full(body.to_owned())),
        None => request.body(empty()),
    };
    let (status, headers, bytes) = collect(client.send(request.unwrap()).await).await;
    let value = if bytes.is_empty() { Value::Null } else { json(&bytes) };
    (status, headers, value)
}

/// A refusal as PRODUCT.md says it looks: its message.
fn refusal(status: StatusCode, headers: &http::HeaderMap, body: &Value) -> String {
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(headers["x-pinecone-proxy-error"], "forbidden_by_policy");
    assert_eq!(body["error"]["code"], "PERMISSION_DENIED", "{body}");
    assert_eq!(body["status"], 403);
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// The fake's ids: its one project, a second one made here, and an API key in each.
struct Ids {
    p1: String,
    p2: String,
    k1: String,
    k2: String,
}

/// Learns the seeded ids and makes a second project with a key, through a proxy without a
/// policy.
async fn ids(fake: &FakePinecone) -> Ids {
    let open = proxy_for(fake, &[]).await;
    let client = TestClient::default();
    let (_, _, projects) = send(&client, Method::GET, &url(&open, "/admin/projects"), None).await;
    let p1 = projects["data"][0]["id"].as_str().unwrap().to_owned();
    let (_, _, keys) = send(&client, Method::GET, &url(&open, &format!("/admin/projects/{p1}/api-keys")), None).await;
    let k1 = keys["data"][0]["id"].as_str().unwrap().to_owned();
    let (status, _, p2) =
        send(&client, Method::POST, &url(&open, "/admin/projects"), Some(r#"{"name":"other"}"#)).await;
    assert_eq!(status, StatusCode::OK, "{p2}");
    let p2 = p2["id"].as_str().unwrap().to_owned();
    let created = url(&open, &format!("/admin/projects/{p2}/api-keys"));
    let (status, _, k2) = send(&client, Method::POST, &created, Some(r#"{"name":"other-key"}"#)).await;
    assert_eq!(status, StatusCode::CREATED, "{k2}");
    let k2 = k2["key"]["id"].as_str().unwrap().to_owned();
    stop(open).await;
    Ids { p1, p2, k1, k2 }
}

async fn stop(running: Running) {
    running.shutdown();
    running.wait().await;
}

fn admin_requests(fake: &FakePinecone) -> u64 {
    fake.state().admin_requests.load(Ordering::SeqCst)
}

fn token_requests(fake: &FakePinecone) -> u64 {
    fake.state().token_requests.load(Ordering::SeqCst)
}

async fn policy_proxy(fake: &FakePinecone, allow: &str, deny: &str, projects: &str) -> Running {
    let mut extra = vec![("PINECONE_PROXY_POLICY_ALLOW", allow)];
    if !deny.is_empty() {
        extra.push(("PINECONE_PROXY_POLICY_DENY", deny));
    }
    if !projects.is_empty() {
        extra.push(("PINECONE_PROXY_POLICY_PROJECTS", projects));
    }
    let running = proxy_for(fake, &extra).await;
    running.tokens.get().await.expect("a token");
    running
}

#[tokio::test]
async fn the_application_may_only_do_what_the_policy_allows_in_its_project() {
    let fake = fake(3600).await;
    let ids = ids(&fake).await;
    let proxy =
        policy_proxy(&fake, "list_projects,fetch_project,create_api_key,list_project_api_keys", "", &ids.p1).await;
    let client = TestClient::default();
    let at = |path: String| url(&proxy, &path);

    let (status, _, body) = send(&client, Method::GET, &at("/admin/projects".into()), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) =
        send(&client, Method::POST, &at(format!("/admin/projects/{}/api-keys", ids.p1)), Some(r#"{"name":"app"}"#))
            .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let before = (admin_requests(&fake), token_requests(&fake));
    let (status, headers, body) =
        send(&client, Method::POST, &at(format!("/admin/projects/{}/api-keys", ids.p2)), Some(r#"{"name":"app"}"#))
            .await;
    assert_eq!(
        refusal(status, &headers, &body),
        format!(
            "pinecone-admin-proxy: refused by policy: create_api_key in project {}, which is not in policy.projects",
            ids.p2
        )
    );
    let (status, headers, body) = send(&client, Method::DELETE, &at(format!("/admin/projects/{}", ids.p1)), None).await;
    assert!(refusal(status, &headers, &body).ends_with("delete_project is not in policy.allow"), "{body}");
    let (status, headers, body) =
        send(&client, Method::POST, &at("/admin/service-accounts".into()), Some(r#"{"name":"x"}"#)).await;
    assert!(refusal(status, &headers, &body).contains("create_service_account is not in policy.allow"), "{body}");
    assert_eq!((admin_requests(&fake), token_requests(&fake)), before, "refusals reach no upstream and fetch no token");

    // The project of the other application is still there.
    let (status, _, _) = send(&client, Method::GET, &at(format!("/admin/projects/{}", ids.p2)), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "fetch_project is project-scoped too");
    let (status, _, _) = send(&client, Method::GET, &at(format!("/admin/projects/{}", ids.p1)), None).await;
    assert_eq!(status, StatusCode::OK);
    stop(proxy).await;
}

#[tokio::test]
async fn a_refused_request_needs_no_token_and_no_upstream() {
    // No token can be had (the token endpoint is a closed port), and the upstream counts
    // what reaches it: refusals are answered all the same, at once.
    let hits = Arc::new(AtomicU64::new(0));
    let seen = hits.clone();
    let upstream = Upstream::start(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { http::Response::new(empty()) }
    })
    .await;
    let refusing = closed_port();
    let closed = format!("http://127.0.0.1:{}/oauth/token", refusing.port);
    let proxy = start_with(&env(
        &closed,
        &upstream.url(),
        &[("PINECONE_PROXY_POLICY_ALLOW", "read_only"), ("PINECONE_PROXY_TOKEN_TIMEOUT", "1s")],
    ))
    .await;
    let client = TestClient::default();
    for (method, path) in [
        (Method::DELETE, "/admin/projects/p-1"),
        (Method::POST, "/admin/projects"),
        (Method::PATCH, "/admin/api-keys/k-1"),
        (Method::GET, "/v1/not-documented"),
        (Method::GET, "/admin/projects/p-1/../p-2"),
    ] {
        let (status, headers, body) = send(&client, method.clone(), &url(&proxy, path), None).await;
        refusal(status, &headers, &body);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached the upstream");
    // An allowed one waits for a token (token.timeout), and says so.
    let (status, headers, _) = send(&client, Method::GET, &url(&proxy, "/admin/projects"), None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["x-pinecone-proxy-error"], "token_unavailable");
    stop(proxy).await;
}

#[tokio::test]
async fn an_api_key_by_id_is_allowed_only_if_it_belongs_to_an_allowed_project() {
    let fake = fake(3600).await;
    let ids = ids(&fake).await;
    let proxy = policy_proxy(&fake, "fetch_api_key,update_api_key", "", &ids.p1).await;
    let client = TestClient::default();
    let key = |id: &str| url(&proxy, &format!("/admin/api-keys/{id}"));

    let before = admin_requests(&fake);
    let (status, _, body) = send(&client, Method::GET, &key(&ids.k1), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["project_id"], ids.p1.as_str());
    assert_eq!(admin_requests(&fake) - before, 2, "the lookup, then the request");
    let (status, _, body) = send(&client, Method::PATCH, &key(&ids.k1), Some(r#"{"name":"renamed"}"#)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(admin_requests(&fake) - before, 3, "the key's project is remembered");

    let before = admin_requests(&fake);
    let (status, headers, body) = send(&client, Method::PATCH, &key(&ids.k2), Some(r#"{"name":"x"}"#)).await;
    assert!(
        refusal(status, &headers, &body).ends_with(&format!(
            "update_api_key on API key {}: the key is not in a project of policy.projects",
            ids.k2
        )),
        "{body}"
    );
    assert!(!body.to_string().contains(&ids.p2), "the refusal never names the project of a key it refuses");
    assert_eq!(admin_requests(&fake) - before, 1, "the lookup only");

    let before = admin_requests(&fake);
    let (status, headers, body) = send(&client, Method::GET, &key(&"k".repeat(129)), None).await;
    assert!(refusal(status, &headers, &body).contains("longer than any API key id"), "{body}");
    assert_eq!(admin_requests(&fake), before, "an id no key can have is not looked up");

    let (status, headers, body) = send(&client, Method::GET, &key("no-such-key"), None).await;
    let message = refusal(status, &headers, &body);
    assert!(
        message.contains("fetch_api_key on API key no-such-key: the key's project could not be looked up"),
        "{message}"
    );
    assert!(message.contains("no such API key (404, request id "), "{message}");

    // The upstream's own answer to the key of the allowed project is unchanged by all this.
    let (status, _, _) = send(&client, Method::GET, &key(&ids.k1), None).await;
    assert_eq!(status, StatusCode::OK);
    stop(proxy).await;
}

#[tokio::test]
async fn a_failing_lookup_refuses_is_remembered_briefly_and_then_asked_again() {
    let fake = fake(3600).await;
    // The upstream's fetch_api_key: for k-1 a 500 until `mode` is 1, then the key in
    // project p-1; for k-2 a 200 that is not an API key. What the lookups carried.
    let mode = Arc::new(AtomicU64::new(0));
    let lookups = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let (answer, seen) = (mode.clone(), lookups.clone());
    let upstream = Upstream::start(move |request| {
        let (answer, seen) = (answer.clone(), seen.clone());
        async move {
            if request.method() != Method::GET {
                let mut response = http::Response::new(empty());
                *response.status_mut() = StatusCode::ACCEPTED;
                return response;
            }
            let h = request.headers();
            seen.lock().push((
                request.uri().path().to_owned(),
                h["authorization"].to_str().unwrap().to_owned(),
                h["x-pinecone-api-version"].to_str().unwrap().to_owned(),
            ));
            match (request.uri().path(), answer.load(Ordering::SeqCst)) {
                ("/admin/api-keys/k-2", _) => http::Response::new(full(r#"{"data":[]}"#)),
                (_, 0) => {
                    let mut response = http::Response::new(empty());
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    response
                }
                _ => http::Response::new(full(r#"{"id":"k-1","name":"k","project_id":"p-1","roles":[]}"#)),
            }
        }
    })
    .await;
    let proxy = start_with(&env(
        &fake.token_url(),
        &upstream.url(),
        &[("PINECONE_PROXY_POLICY_ALLOW", "delete_api_key"), ("PINECONE_PROXY_POLICY_PROJECTS", "p-1")],
    ))
    .await;
    let client = TestClient::default();
    let delete = |key: &str| {
        let url = url(&proxy, &format!("/admin/api-keys/{key}"));
        let client = client.clone();
        async move { send(&client, Method::DELETE, &url, None).await }
    };
    let (status, headers, body) = delete("k-1").await;
    let message = refusal(status, &headers, &body);
    assert!(message.contains("could not be looked up (fetch_api_key answered 500 Internal Server Error)"), "{message}");
    let (status, headers, body) = delete("k-2").await;
    assert!(refusal(status, &headers, &body).contains("fetch_api_key's response has no project_id"), "{body}");
    assert_eq!(lookups.lock().len(), 2);

    // The upstream recovers, but the failure is remembered for a few seconds: a flood
    // naming a failing key costs one lookup, not one each.
    mode.store(1, Ordering::SeqCst);
    let (status, headers, body) = delete("k-1").await;
    assert!(refusal(status, &headers, &body).contains("answered 500"), "{body}");
    assert_eq!(lookups.lock().len(), 2, "the failure was remembered");
    // Then it is asked again.
    let asked_again = async {
        loop {
            let (status, _, _) = delete("k-1").await;
            if status == StatusCode::ACCEPTED {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), asked_again).await.expect("asked again after a few seconds");
    let lookups = lookups.lock().clone();
    assert_eq!(lookups.len(), 3, "one more lookup, however many refusals came before it");
    let token = fake.state().issued_tokens().pop().unwrap();
    for (path, authorization, version) in &lookups {
        assert!(path.starts_with("/admin/api-keys/k-"), "{path}");
        assert_eq!(*authorization, format!("Bearer {token}"), "the proxy's own token");
        assert_eq!(version, "2025-10", "the configured version");
    }
    stop(proxy).await;
}

/// Concurrent requests naming one key id share one lookup.
#[tokio::test]
async fn a_burst_naming_one_key_costs_one_lookup() {
    let fake = fake(3600).await;
    let ids = ids(&fake).await;
    fake.state().set_admin_delay(Duration::from_millis(200));
    let proxy = policy_proxy(&fake, "fetch_api_key", "", &ids.p1).await;
    let before = admin_requests(&fake);
    let client = TestClient::default();
    let statuses = client.burst(&url(&proxy, &format!("/admin/api-keys/{}", ids.k1)), 20).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    assert_eq!(admin_requests(&fake) - before, 21, "one lookup, then the 20 requests");
    stop(proxy).await;
}

/// `X-HTTP-Method-Override` and its kin would let a request judged as a POST act as a
/// DELETE on a server that honours them: they never leave the proxy, policy or not. TRACE
/// is refused in any letter case.
#[tokio::test]
async fn method_overrides_are_removed_and_trace_is_refused_in_any_case() {
    let fake = fake(3600).await;
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let record = seen.clone();
    let upstream = Upstream::start(move |request| {
        let record = record.clone();
        async move {
            record.lock().push((request.method().clone(), request.headers().clone()));
            http::Response::new(empty())
        }
    })
    .await;
    let proxy = start_with(&env(&fake.token_url(), &upstream.url(), &[])).await;
    let client = TestClient::default();
    let request = Request::post(url(&proxy, "/admin/projects"))
        .header("x-http-method-override", "DELETE")
        .header("x-http-method", "DELETE")
        .header("X-Method-Override", "DELETE")
        .header("x-kept", "1")
        .body(empty())
        .unwrap();
    assert_eq!(client.send(request).await.status(), StatusCode::OK);
    for method in ["TRACE", "trace", "Trace"] {
        let request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(url(&proxy, "/admin/projects"));
        let (status, headers, _) = collect(client.send(request.body(empty()).unwrap()).await).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(headers["x-pinecone-proxy-error"], "bad_request");
    }
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 1, "only the POST reached the upstream");
    let (method, headers) = &seen[0];
    assert_eq!(*method, Method::POST);
    assert_eq!(headers["x-kept"], "1");
    for name in ["x-http-method-override", "x-http-method", "x-method-override"] {
        assert!(!headers.contains_key(name), "{name} was forwarded");
    }
    stop(proxy).await;
}

#[tokio::test]
async fn deny_wins_over_allow() {
    let fake = fake(3600).await;
    let ids = ids(&fake).await;
    let proxy = policy_proxy(&fake, "*", "delete_project,delete_api_key", "").await;
    let client = TestClient::default();
    let (status, headers, body) =
        send(&client, Method::DELETE, &url(&proxy, &format!("/admin/projects/{}", ids.p2)), None).await;
    assert!(
        refusal(status, &headers, &body).ends_with("delete_project is denied by policy.deny (\"delete_project\")"),
        "{body}"
    );
    let (status, _, _) = send(&client, Method::GET, &url(&proxy, &format!("/admin/projects/{}", ids.p2)), None).await;
    assert_eq!(status, StatusCode::OK, "\"*\" allows the rest, in every project");
    let (status, headers, body) = send(&client, Method::GET, &url(&proxy, "/v1/anything"), None).await;
    assert!(
        refusal(status, &headers, &body).contains("(unknown)"),
        "\"*\" is every documented operation, not unknown ones"
    );
    stop(proxy).await;
}

#[tokio::test]
async fn unknown_routes_are_forwarded_only_when_allowed_and_ambiguous_ones_never() {
    let fake = fake(3600).await;
    let ids = ids(&fake).await;
    let proxy = policy_proxy(&fake, "read_only,unknown", "", "").await;
    let client = TestClient::default();
    let (status, headers, body) = send(&client, Method::GET, &url(&proxy, "/admin/not-a-route"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "forwarded: the fake's own 404 ({body})");
    assert!(headers.get("x-pinecone-proxy-error").is_none());
    let before = admin_requests(&fake);
    for path in [
        format!("/admin/projects/{}/../{}", ids.p1, ids.p2),
        format!("/admin/projects/{}/", ids.p2),
        format!("/admin/projects/{}%2F", ids.p2),
        format!("/admin//projects/{}", ids.p2),
        format!("/Admin/Projects/{}", ids.p2),
        format!("/admin/PROJECTS/{}", ids.p2),
    ] {
        let (status, headers, body) = send(&client, Method::DELETE, &url(&proxy, &path), None).await;
        assert!(
            refusal(status, &headers, &body).contains("cannot be matched to an Admin API operation"),
            "{path}: {body}"
        );
    }
    let (status, headers, body) = send(
        &client,
        Method::from_bytes(b"delete").unwrap(),
        &url(&proxy, &format!("/admin/projects/{}", ids.p2)),
        None,
    )
    .await;
    assert!(refusal(status, &headers, &body).contains("case variant"), "{body}");
    assert_eq!(admin_requests(&fake), before, "none was forwarded");
    stop(proxy).await;
}

#[tokio::test]
async fn requests_total_carries_the_operation() {
    let fake = fake(3600).await;
    let proxy = policy_proxy(&fake, "list_projects", "", "").await;
    let client = TestClient::default();
    send(&client, Method::GET, &url(&proxy, "/admin/projects"), None).await;
    send(&client, Method::POST, &url(&proxy, "/admin/projects"), Some(r#"{"name":"x"}"#)).await;
    send(&client, Method::GET, &url(&proxy, "/nowhere"), None).await;
    let (_, _, metrics) = client.get(&ops_url(&proxy, "/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    for series in [
        r#"pinecone_proxy_requests_total{code="200",method="GET",operation="list_projects"} 1"#,
        r#"pinecone_proxy_requests_total{code="403",method="POST",operation="create_project"} 1"#,
        r#"pinecone_proxy_requests_total{code="403",method="GET",operation="unknown"} 1"#,
    ] {
        assert!(metrics.lines().any(|l| l == series), "{series} in\n{metrics}");
    }
    stop(proxy).await;
}

#[tokio::test]
async fn without_a_policy_everything_is_forwarded_and_still_labelled() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[]).await;
    let client = TestClient::default();
    let (status, _, _) = send(&client, Method::POST, &url(&proxy, "/admin/projects"), Some(r#"{"name":"x"}"#)).await;
    assert_eq!(status, StatusCode::OK, "create_project answers 200");
    let (status, headers, _) = send(&client, Method::GET, &url(&proxy, "/admin/projects/a/../b"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "forwarded as before");
    assert!(headers.get("x-pinecone-proxy-error").is_none());
    let (_, _, metrics) = client.get(&ops_url(&proxy, "/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"pinecone_proxy_requests_total{code="200",method="POST",operation="create_project"} 1"#)
    );
    stop(proxy).await;
}

#[tokio::test]
async fn changing_requests_are_audited_without_secrets_and_reads_are_not() {
    let fake = fake(3600).await;
    let ids = ids(&fake).await;
    let projects = ids.p1.clone();
    let extra = [
        ("PINECONE_PROXY_POLICY_ALLOW", "read_only,create_api_key"),
        ("PINECONE_PROXY_POLICY_PROJECTS", projects.as_str()),
        ("PINECONE_PROXY_LOG_FORMAT", "json"),
    ];
    let mut proc = spawn_demo(&fake.token_url(), &fake.api_url(), &extra).await;
    let client = TestClient::default();
    let at = |path: String| format!("http://{}{path}", proc.listen);
    let (status, _, created) =
        send(&client, Method::POST, &at(format!("/admin/projects/{}/api-keys", ids.p1)), Some(r#"{"name":"audited"}"#))
            .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = send(&client, Method::DELETE, &at(format!("/admin/projects/{}", ids.p2)), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // An SDK's own token exchange, answered by the proxy with a placeholder: not a change.
    let (status, _, _) = send(&client, Method::POST, &at("/oauth/token".into()), Some("{}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = send(&client, Method::GET, &at(format!("/admin/projects/{}", ids.p1)), None).await;
    assert_eq!(status, StatusCode::OK);

    let allowed: Value = serde_json::from_str(&proc.line_with(r#""operation":"create_api_key""#).await).unwrap();
    assert_eq!(allowed["target"], "pinecone_admin_proxy::audit");
    assert_eq!(allowed["level"], "INFO");
    assert_eq!(allowed["decision"], "allowed");
    assert_eq!(allowed["params"], format!("project_id={}", ids.p1));
    assert_eq!(allowed["rule"], "allowed by policy.allow (\"create_api_key\"), its project in policy.projects");
    assert_eq!(allowed["upstream_status"], 201);
    assert_eq!(allowed["request_id"].as_str().unwrap().len(), 36, "{allowed}");
    assert_eq!(allowed["token"].as_str().unwrap().len(), 16, "a fingerprint");
    let refused: Value = serde_json::from_str(&proc.line_with(r#""operation":"delete_project""#).await).unwrap();
    assert_eq!(refused["target"], "pinecone_admin_proxy::audit");
    assert_eq!(refused["decision"], "refused");
    assert_eq!(refused["rule"], "delete_project is not in policy.allow");
    assert_eq!(refused["status"], 403);
    assert!(refused.get("upstream_status").is_none_or(Value::is_null), "{refused}");
    // The GET's access line comes after the shim's and its own audit lines would have: none
    // was written.
    proc.line_with(r#""operation":"fetch_project""#).await;
    let all = proc.all.lock().clone();
    let audit: Vec<&str> = all.lines().filter(|l| l.contains("pinecone_admin_proxy::audit")).collect();
    assert_eq!(audit.len(), 2, "{audit:#?}");
    for secret in fake.state().issued_tokens().iter().map(String::as_str).chain([DEMO_CLIENT_SECRET]) {
        assert!(!all.contains(secret), "a secret or token in the log");
    }
    let new_key = created["value"].as_str().unwrap();
    assert!(!all.contains(new_key), "the new key's value is not logged");
}

#[tokio::test]
async fn policy_check_explains_and_exits_0_1_or_64() {
    let policy = [
        ("PINECONE_PROXY_POLICY_ALLOW", "read_only,create_api_key,delete_api_key"),
        ("PINECONE_PROXY_POLICY_DENY", "fetch_organization"),
        ("PINECONE_PROXY_POLICY_PROJECTS", "p-1"),
    ];
    let (code, stdout, _) = output(&["policy-check", "POST", "/admin/projects/p-1/api-keys"], &policy).await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        stdout,
        "operation: create_api_key (POST /admin/projects/{project_id}/api-keys)\n\
         path parameters: project_id=p-1\n\
         decision: allowed\n\
         rule: allowed by policy.allow (\"create_api_key\"), its project in policy.projects\n"
    );
    let (code, stdout, _) = output(&["policy-check", "DELETE", "/admin/projects/p-1"], &policy).await;
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("decision: refused (403 forbidden_by_policy)\nrule: delete_project is not in policy.allow"),
        "{stdout}"
    );
    let (code, stdout, _) = output(&["policy-check", "GET", "/admin/organizations/o-1?x=1"], &policy).await;
    assert_eq!(code, 1);
    assert!(stdout.contains("denied by policy.deny"), "{stdout}");
    let (code, stdout, _) =
        output(&["policy-check", "DELETE", "http://127.0.0.1:8484/admin/api-keys/k-9"], &policy).await;
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("decision: allowed if the API key belongs to one of policy.projects (p-1)"), "{stdout}");
    let (code, stdout, _) = output(&["policy-check", "DELETE", "/admin/projects/p-1"], &[]).await;
    assert_eq!(code, 0, "no policy: allowed ({stdout})");
    assert!(stdout.contains("no [policy] is set"));

    let (code, _, stderr) =
        output(&["policy-check", "GET", "/admin/projects"], &[("PINECONE_PROXY_POLICY_ALLOW", "list_project")]).await;
    assert_eq!(code, 64);
    assert!(stderr.contains("policy.allow") && stderr.contains("did you mean \"list_projects\""), "{stderr}");
    assert_eq!(output(&["policy-check", "GET", "admin"], &policy).await.0, 64, "not a path");
    assert_eq!(output(&["policy-check", "G(T", "/admin"], &policy).await.0, 64, "not a method");
}

#[tokio::test]
async fn check_config_shows_the_policy_and_names_a_bad_key() {
    let creds = [("PINECONE_CLIENT_ID", "id"), ("PINECONE_CLIENT_SECRET", "the-client-secret")];
    let envs = [
        &creds[..],
        &[("PINECONE_PROXY_POLICY_ALLOW", "list_projects,create_api_key"), ("PINECONE_PROXY_POLICY_PROJECTS", "p-1")],
    ]
    .concat();
    let (code, stdout, stderr) = output(&["check-config"], &envs).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("policy: only in projects p-1: create_api_key\n"), "{stdout}");
    assert!(stdout.contains("allow/deny alone decide): list_projects\n"), "{stdout}");
    let (_, stdout, _) = output(&["check-config"], &creds).await;
    assert!(stdout.contains("policy: none ([policy] not set): every request is forwarded"), "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("proxy.toml");
    std::fs::write(&file, "[policy]\ndeny = [\"delete_projcet\"]\n").unwrap();
    let (code, _, stderr) = output(&["check-config", "--config", file.to_str().unwrap()], &creds).await;
    assert_eq!(code, 64);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("policy.deny") && stderr.contains("did you mean \"delete_project\""), "{stderr}");
}
