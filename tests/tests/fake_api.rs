//! The fake Pinecone follows FACTS.md and the 2026-07 spec, or the other tests prove
//! nothing: bearer validation, versions, error bodies, shapes, pagination, and service
//! accounts that are real to its token endpoint.

use crate::support::*;
use http::{Method, Request, StatusCode};
use pinecone_admin_proxy::body::{Body, empty, full};
use pinecone_admin_proxy::fake::FakePinecone;
use serde_json::{Value, json};

struct Api {
    fake: FakePinecone,
    token: String,
    client: TestClient,
}

impl Api {
    async fn new() -> Self {
        let fake = fake(3600).await;
        let client = TestClient::default();
        let (_, _, body) = client
            .post(
                &fake.token_url(),
                r#"{"grant_type":"client_credentials","client_id":"demo-client-id","client_secret":"demo-client-secret","audience":"https://api.pinecone.io/"}"#,
            )
            .await;
        let token = json(&body)["access_token"].as_str().unwrap().to_owned();
        Self { fake, token, client }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        version: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.fake.api_url()))
            .header("authorization", format!("Bearer {}", self.token));
        if let Some(v) = version {
            request = request.header("x-pinecone-api-version", v);
        }
        let body: Body = body.map_or_else(empty, |b| full(b.to_string()));
        let (status, headers, bytes) = collect(self.client.send(request.body(body).unwrap()).await).await;
        assert!(headers.contains_key("x-pinecone-request-id"));
        (status, if bytes.is_empty() { Value::Null } else { json(&bytes) })
    }
}

fn error_shape(v: &Value, status: u16, code: &str) {
    assert_eq!(v["status"], status, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string());
}

#[tokio::test]
async fn token_endpoint_errors_follow_facts() {
    let fake = fake(3600).await;
    let client = TestClient::default();
    let cases = [
        (
            r#"{"grant_type":"client_credentials","client_id":"demo-client-id","client_secret":"wrong","audience":"https://api.pinecone.io/"}"#,
            401,
            "access_denied",
        ),
        (
            r#"{"grant_type":"client_credentials","client_id":"nobody","client_secret":"x","audience":"https://api.pinecone.io/"}"#,
            401,
            "access_denied",
        ),
        (
            r#"{"grant_type":"client_credentials","client_id":"demo-client-id","client_secret":"demo-client-secret","audience":"https://api.pinecone.io"}"#,
            403,
            "access_denied",
        ),
        (
            r#"{"grant_type":"password","client_id":"demo-client-id","client_secret":"demo-client-secret","audience":"https://api.pinecone.io/"}"#,
            403,
            "unauthorized_client",
        ),
        (
            r#"{"grant_type":"client_credentials","client_id":"demo-client-id","audience":"https://api.pinecone.io/"}"#,
            400,
            "invalid_request",
        ),
        ("not json", 400, "invalid_request"),
    ];
    for (body, status, error) in cases {
        let (s, _, b) = client.post(&fake.token_url(), body).await;
        assert_eq!(s.as_u16(), status, "{body}");
        let v = json(&b);
        assert_eq!(v["error"], error, "{body}");
        assert!(v["error_description"].is_string());
    }
    let (_, _, b) = client
        .post(&fake.token_url(), r#"{"grant_type":"client_credentials","client_id":"demo-client-id","client_secret":"demo-client-secret","audience":"https://api.pinecone.io"}"#)
        .await;
    assert_eq!(json(&b)["error_description"], "Service not enabled within domain: https://api.pinecone.io");
    let (s, _, b) = client.post(&fake.token_url(), r#"{"grant_type":"client_credentials","client_id":"demo-client-id","client_secret":"demo-client-secret","audience":"https://api.pinecone.io/"}"#).await;
    assert_eq!(s, StatusCode::OK);
    let v = json(&b);
    assert!(v["access_token"].as_str().unwrap().starts_with("eyJ"));
    assert_eq!(v["expires_in"], 3600);
    assert_eq!(v["token_type"], "Bearer");
}

#[tokio::test]
async fn bearer_versions_and_the_2025_10_operations() {
    let api = Api::new().await;
    // No or a bad token: 401 UNAUTHENTICATED / Invalid API key.
    let (s, _, b) = collect(
        api.client.send(Request::get(format!("{}/admin/projects", api.fake.api_url())).body(empty()).unwrap()).await,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    error_shape(&json(&b), 401, "UNAUTHENTICATED");
    assert_eq!(json(&b)["error"]["message"], "Invalid API key.");
    // An unknown version: 400.
    let (s, v) = api.call(Method::GET, "/admin/projects", Some("1999-01"), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    error_shape(&v, 400, "INVALID_ARGUMENT");
    // Projects.
    let (s, v) =
        api.call(Method::POST, "/admin/projects", Some("2025-10"), Some(json!({"name": "p1", "max_pods": 2}))).await;
    assert_eq!(s, StatusCode::OK);
    for field in ["id", "name", "max_pods", "force_encryption_with_cmek", "organization_id", "created_at"] {
        assert!(!v[field].is_null(), "{field}");
    }
    let id = v["id"].as_str().unwrap().to_owned();
    let (s, v) = api.call(Method::POST, "/admin/projects", None, Some(json!({"name": ""}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    error_shape(&v, 400, "INVALID_ARGUMENT");
    let (s, v) = api.call(Method::PATCH, &format!("/admin/projects/{id}"), None, Some(json!({"name": "p2"}))).await;
    assert_eq!((s, v["name"].clone()), (StatusCode::OK, json!("p2")));
    // API keys: 201 with the key and its value.
    let (s, v) =
        api.call(Method::POST, &format!("/admin/projects/{id}/api-keys"), None, Some(json!({"name": "k"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(v["key"]["roles"], json!(["ProjectEditor"]));
    assert!(v["value"].as_str().unwrap().starts_with("pckey_"));
    let key = v["key"]["id"].as_str().unwrap().to_owned();
    let (s, v) = api
        .call(
            Method::POST,
            &format!("/admin/projects/{id}/api-keys"),
            None,
            Some(json!({"name": "k", "roles": ["Nope"]})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    error_shape(&v, 400, "INVALID_ARGUMENT");
    assert_eq!(api.call(Method::DELETE, &format!("/admin/api-keys/{key}"), None, None).await.0, StatusCode::ACCEPTED);
    assert_eq!(api.call(Method::DELETE, &format!("/admin/projects/{id}"), None, None).await.0, StatusCode::ACCEPTED);
    let (s, v) = api.call(Method::GET, &format!("/admin/projects/{id}"), None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    error_shape(&v, 404, "NOT_FOUND");
    let (s, v) = api.call(Method::GET, "/admin/organizations", None, None).await;
    assert_eq!(s, StatusCode::OK);
    for field in ["id", "name", "plan", "payment_status", "created_at", "support_tier"] {
        assert!(!v["data"][0][field].is_null(), "{field}");
    }
    // The 2026-07 collections do not exist in older versions.
    assert_eq!(api.call(Method::GET, "/admin/users", Some("2025-10"), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(api.call(Method::GET, "/admin/users", Some("2026-07"), None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn pagination_follows_next_and_checks_limits() {
    let api = Api::new().await;
    let v7 = Some("2026-07");
    for i in 0..5 {
        let (s, _) =
            api.call(Method::POST, "/admin/service-accounts", v7, Some(json!({"name": format!("sa-{i}")}))).await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let mut names = Vec::new();
    let mut path = "/admin/service-accounts?limit=2".to_owned();
    loop {
        let (s, v) = api.call(Method::GET, &path, v7, None).await;
        assert_eq!(s, StatusCode::OK);
        assert!(v["data"].as_array().unwrap().len() <= 2);
        names.extend(v["data"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap().to_owned()));
        match v["pagination"]["next"].as_str() {
            Some(next) => path = format!("/admin/service-accounts?limit=2&paginationToken={next}"),
            None => {
                assert!(v["pagination"].is_null(), "null on the last page");
                break;
            }
        }
    }
    assert_eq!(names.len(), 6, "the demo account and five more: {names:?}");
    for bad in ["limit=0", "limit=101", "limit=x"] {
        let (s, v) = api.call(Method::GET, &format!("/admin/service-accounts?{bad}"), v7, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        error_shape(&v, 400, "OUT_OF_RANGE");
    }
    let (s, v) = api.call(Method::GET, "/admin/service-accounts?paginationToken=garbage", v7, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    error_shape(&v, 400, "INVALID_ARGUMENT");
}

#[tokio::test]
async fn service_accounts_are_real_credentials_and_rotation_revokes_their_tokens() {
    let api = Api::new().await;
    let v7 = Some("2026-07");
    let (s, created) = api.call(Method::POST, "/admin/service-accounts", v7, Some(json!({"name": "ci"}))).await;
    assert_eq!(s, StatusCode::CREATED);
    let id = created["service_account"]["id"].as_str().unwrap().to_owned();
    let client_id = created["service_account"]["client_id"].as_str().unwrap().to_owned();
    let secret = created["client_secret"].as_str().unwrap().to_owned();

    // A proxy with the new account's credentials works...
    let mut e = env(&api.fake.token_url(), &api.fake.api_url(), &[]);
    e.set("PINECONE_CLIENT_ID", &client_id).set("PINECONE_CLIENT_SECRET", &secret);
    let proxy = start_with(&e).await;
    assert_eq!(api.client.get(&url(&proxy, "/admin/projects")).await.0, StatusCode::OK);
    // ...until the secret is rotated: the old secret and its tokens stop working.
    let (s, rotated) = api.call(Method::POST, &format!("/admin/service-accounts/{id}/rotate-secret"), v7, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(rotated["client_secret"], secret.as_str());
    // The upstream's 401 goes back (the proxy's new token request was rejected, so there
    // is nothing to replay with), and /status says why.
    let (status, headers, body) = api.client.get(&url(&proxy, "/admin/projects")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!headers.contains_key("x-pinecone-proxy-error"));
    error_shape(&json(&body), 401, "UNAUTHENTICATED");
    let status = json(&api.client.get(&ops_url(&proxy, "/status")).await.2);
    assert_eq!(status["token"]["credentials_rejected"], true);
    assert!(status["token"]["last_error"]["message"].as_str().unwrap().contains("401 access_denied"));

    // Role bindings: filters, conflicts, the last owner.
    let (s, v) = api.call(Method::GET, "/admin/role-bindings?principal_id=x", v7, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    error_shape(&v, 400, "INVALID_ARGUMENT");
    let binding = json!({"principal_type": "service_account", "principal_id": id, "resource_type": "organization", "role": "OrgMember"});
    let (s, b) = api.call(Method::POST, "/admin/role-bindings", v7, Some(binding.clone())).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["principal_id"], id.as_str());
    // The same binding again.
    let (s, v) = api.call(Method::POST, "/admin/role-bindings", v7, Some(binding)).await;
    assert_eq!(s, StatusCode::CONFLICT);
    error_shape(&v, 409, "ALREADY_EXISTS");
    let (_, owners) = api.call(Method::GET, "/admin/role-bindings?role=OrgOwner", v7, None).await;
    let owners = owners["data"].as_array().unwrap().clone();
    assert_eq!(owners.len(), 2);
    assert_eq!(
        api.call(Method::DELETE, &format!("/admin/role-bindings/{}", owners[0]["id"].as_str().unwrap()), v7, None)
            .await
            .0,
        StatusCode::ACCEPTED
    );
    let (s, v) = api
        .call(Method::DELETE, &format!("/admin/role-bindings/{}", owners[1]["id"].as_str().unwrap()), v7, None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "the last OrgOwner stays");
    error_shape(&v, 409, "ABORTED");

    // Invites: create, resend, delete.
    let (s, invite) = api
        .call(Method::POST, "/admin/invites", v7, Some(json!({"email": "new@example.com", "role_bindings": [{"resource_type": "organization", "role": "OrgMember"}]})))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(invite["status"], "pending");
    let iid = invite["id"].as_str().unwrap();
    assert_eq!(api.call(Method::POST, &format!("/admin/invites/{iid}/resend"), v7, None).await.0, StatusCode::OK);
    let (s, v) =
        api.call(Method::POST, "/admin/invites", v7, Some(json!({"email": "not-an-email", "role_bindings": []}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    error_shape(&v, 400, "INVALID_ARGUMENT");
    assert_eq!(api.call(Method::DELETE, &format!("/admin/invites/{iid}"), v7, None).await.0, StatusCode::ACCEPTED);
}

impl Api {
    /// A control-plane request with `Api-Key: key`; the status, the body as text.
    async fn control(&self, method: Method, path: &str, key: &str, body: Option<Value>) -> (StatusCode, String) {
        self.at(&self.fake.api_url(), method, path, key, body).await
    }

    /// A request with `key` to `base` (the control plane, or an index's data plane).
    async fn at(&self, base: &str, method: Method, path: &str, key: &str, body: Option<Value>) -> (StatusCode, String) {
        let request = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header("api-key", key)
            .header("x-pinecone-api-version", "2025-10");
        let body: Body = body.map_or_else(empty, |b| full(b.to_string()));
        let (status, _, bytes) = collect(self.client.send(request.body(body).unwrap()).await).await;
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    /// A new API key in `project` with `roles`: its id and its value.
    async fn key(&self, project: &str, roles: &[&str]) -> (String, String) {
        let (status, v) = self
            .call(
                Method::POST,
                &format!("/admin/projects/{project}/api-keys"),
                None,
                Some(json!({"name": "k", "roles": roles})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        (v["key"]["id"].as_str().unwrap().to_owned(), v["value"].as_str().unwrap().to_owned())
    }

    async fn first_project(&self) -> String {
        let (_, v) = self.call(Method::GET, "/admin/projects", None, None).await;
        v["data"][0]["id"].as_str().unwrap().to_owned()
    }
}

/// FACTS.md, "The control plane and the data plane": API keys only, of their own project,
/// within their roles; a bearer token or a deleted key is a plain-text 401 at once.
#[tokio::test]
async fn the_control_plane_takes_live_api_keys_of_its_project_within_their_roles() {
    let api = Api::new().await;
    let project = api.first_project().await;
    let (key_id, editor) = api.key(&project, &["ControlPlaneEditor"]).await;
    assert_eq!(api.control(Method::GET, "/indexes", &editor, None).await, (StatusCode::OK, r#"{"indexes":[]}"#.into()));
    for bad in [api.token.clone(), "pckey_nothing".to_owned()] {
        let (status, body) = api.control(Method::GET, "/indexes", &bad, None).await;
        assert_eq!((status, body.as_str()), (StatusCode::UNAUTHORIZED, "Invalid API key"), "plain text, not JSON");
    }
    let create = json!({"name": "docs", "dimension": 8, "metric": "cosine", "spec": {"serverless": {"cloud": "aws", "region": "us-east-1"}}});
    let (status, body) = api.control(Method::POST, "/indexes", &editor, Some(create.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let index: Value = serde_json::from_str(&body).unwrap();
    let host = index["host"].as_str().unwrap();
    assert!(host.parse::<std::net::SocketAddr>().is_ok(), "a bare host, its data plane's loopback address: {host}");
    assert_eq!(index["status"]["ready"], true);
    let (status, body) = api.control(Method::POST, "/indexes", &editor, Some(create)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let bad_name = json!({"name": "Docs_1", "spec": {"serverless": {"cloud": "aws", "region": "us-east-1"}}});
    assert_eq!(api.control(Method::POST, "/indexes", &editor, Some(bad_name)).await.0, StatusCode::BAD_REQUEST);
    let (status, body) = api.control(Method::GET, "/indexes/docs", &editor, None).await;
    assert_eq!((status, serde_json::from_str::<Value>(&body).unwrap()["host"].as_str()), (StatusCode::OK, Some(host)));

    // A viewer reads and may not write; a data-plane key may not use the control plane.
    let (_, viewer) = api.key(&project, &["ControlPlaneViewer"]).await;
    assert_eq!(api.control(Method::GET, "/indexes/docs", &viewer, None).await.0, StatusCode::OK);
    assert_eq!(api.control(Method::DELETE, "/indexes/docs", &viewer, None).await.0, StatusCode::FORBIDDEN);
    let (_, data_only) = api.key(&project, &["DataPlaneEditor"]).await;
    assert_eq!(api.control(Method::GET, "/indexes", &data_only, None).await.0, StatusCode::FORBIDDEN);

    // Another project's key sees none of this project's indexes.
    let (_, other) = api.call(Method::POST, "/admin/projects", None, Some(json!({"name": "other"}))).await;
    let (_, elsewhere) = api.key(other["id"].as_str().unwrap(), &["ProjectEditor"]).await;
    assert_eq!(api.control(Method::GET, "/indexes", &elsewhere, None).await.1, r#"{"indexes":[]}"#);
    assert_eq!(api.control(Method::GET, "/indexes/docs", &elsewhere, None).await.0, StatusCode::NOT_FOUND);

    assert_eq!(api.control(Method::DELETE, "/indexes/docs", &editor, None).await.0, StatusCode::ACCEPTED);
    assert_eq!(api.control(Method::GET, "/indexes/docs", &editor, None).await.0, StatusCode::NOT_FOUND);
    // A deleted key stops working at once.
    assert_eq!(
        api.call(Method::DELETE, &format!("/admin/api-keys/{key_id}"), None, None).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(api.control(Method::GET, "/indexes", &editor, None).await.0, StatusCode::UNAUTHORIZED);
}

/// Each index's data plane on its own port: vectors in memory, keys of the index's project
/// within their roles, a plain-text 401 otherwise; it goes with its index.
#[tokio::test]
async fn each_index_has_a_data_plane_of_its_own() {
    let api = Api::new().await;
    let project = api.first_project().await;
    let (_, admin) = api.key(&project, &["ControlPlaneEditor"]).await;
    let create = json!({"name": "docs", "dimension": 2, "metric": "cosine", "spec": {"serverless": {"cloud": "aws", "region": "us-east-1"}}});
    let (_, body) = api.control(Method::POST, "/indexes", &admin, Some(create)).await;
    let base = format!("http://{}", serde_json::from_str::<Value>(&body).unwrap()["host"].as_str().unwrap());
    let (_, writer) = api.key(&project, &["DataPlaneEditor"]).await;
    let (_, reader) = api.key(&project, &["DataPlaneViewer"]).await;

    let upsert = json!({"vectors": [{"id": "a", "values": [1.0, 0.0], "metadata": {"t": "x"}}, {"id": "b", "values": [0.0, 1.0]}], "namespace": "n"});
    assert_eq!(
        api.at(&base, Method::POST, "/vectors/upsert", &writer, Some(upsert.clone())).await,
        (StatusCode::OK, r#"{"upsertedCount":2}"#.into())
    );
    assert_eq!(api.at(&base, Method::POST, "/vectors/upsert", &reader, Some(upsert)).await.0, StatusCode::FORBIDDEN);
    let query = json!({"vector": [0.9, 0.1], "topK": 1, "namespace": "n", "includeMetadata": true});
    let (status, body) = api.at(&base, Method::POST, "/query", &reader, Some(query)).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, v["matches"][0]["id"].as_str(), &v["matches"][0]["metadata"]),
        (StatusCode::OK, Some("a"), &json!({"t": "x"}))
    );
    let (_, body) = api.at(&base, Method::GET, "/vectors/fetch?ids=b&namespace=n", &reader, None).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["vectors"]["b"]["values"], json!([0.0, 1.0]));
    let (_, body) = api.at(&base, Method::POST, "/describe_index_stats", &reader, Some(json!({}))).await;
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["totalVectorCount"], 2);
    // topK is required, from 1 to 10,000, as the spec says.
    for top_k in [None, Some(0), Some(10_001)] {
        let mut query = json!({"vector": [0.9, 0.1], "namespace": "n"});
        if let Some(k) = top_k {
            query["topK"] = json!(k);
        }
        let (status, body) = api.at(&base, Method::POST, "/query", &reader, Some(query)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{top_k:?}: {body}");
        assert!(body.contains("topK"), "{body}");
    }
    let wrong = json!({"vectors": [{"id": "c", "values": [1.0, 2.0, 3.0]}]});
    assert_eq!(api.at(&base, Method::POST, "/vectors/upsert", &writer, Some(wrong)).await.0, StatusCode::BAD_REQUEST);

    // A control-plane key, another project's key, a token, nothing: refused.
    assert_eq!(api.at(&base, Method::POST, "/query", &admin, Some(json!({"id": "a"}))).await.0, StatusCode::FORBIDDEN);
    let (_, other) = api.call(Method::POST, "/admin/projects", None, Some(json!({"name": "other"}))).await;
    let (_, elsewhere) = api.key(other["id"].as_str().unwrap(), &["ProjectEditor"]).await;
    for bad in [elsewhere, api.token.clone(), String::new()] {
        let refused = api.at(&base, Method::POST, "/query", &bad, Some(json!({"id": "a"}))).await;
        assert_eq!(refused, (StatusCode::UNAUTHORIZED, "Invalid API key".into()));
    }
    // Deleting the index stops its data plane.
    assert_eq!(api.control(Method::DELETE, "/indexes/docs", &admin, None).await.0, StatusCode::ACCEPTED);
    let mut changed = api.fake.state().subscribe();
    let gone = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            if tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.is_err() {
                return;
            }
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), changed.changed()).await;
        }
    });
    gone.await.expect("the data plane stops with its index");
}

#[tokio::test]
async fn create_api_key_can_be_refused_with_a_403() {
    let api = Api::new().await;
    let project = api.first_project().await;
    api.fake.state().refuse_api_key_creation(Some("Not enough available quota"));
    let path = format!("/admin/projects/{project}/api-keys");
    let (status, v) = api.call(Method::POST, &path, None, Some(json!({"name": "k", "roles": ["ProjectEditor"]}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    error_shape(&v, 403, "QUOTA_EXCEEDED");
    assert_eq!(v["error"]["message"], "Not enough available quota");
    api.fake.state().refuse_api_key_creation(None);
    api.key(&project, &["ProjectEditor"]).await;
}
