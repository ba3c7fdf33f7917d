//! The data plane through the sidecar (`[indexes]`): each index's listener forwards to the
//! index's host (found with `describe_index`), with the managed key in `api-key` and never
//! the client's, REST bodies both ways; `/readyz` waits for the host and `/status` shows it.

use crate::support::*;
use http::{Method, Request, StatusCode};
use pinecone_admin_proxy::app::Running;
use pinecone_admin_proxy::body::{empty, full};
use pinecone_admin_proxy::fake::FakePinecone;
use serde_json::json;

/// Creates the index `name` in the fake's project, through a proxy with a managed key that
/// may.
async fn create_index(fake: &FakePinecone, name: &str, dimension: u32) {
    let project = fake.state().project_id();
    let env = [
        ("PINECONE_PROXY_API_KEY_PROJECT_ID", project.as_str()),
        ("PINECONE_PROXY_API_KEY_ROLES", "ControlPlaneEditor"),
    ];
    let admin = proxy_for(fake, &env).await;
    let body = json!({"name": name, "dimension": dimension, "metric": "cosine", "spec": {"serverless": {"cloud": "aws", "region": "us-east-1"}}});
    let (status, _, text) = TestClient::default().post(&url(&admin, "/indexes"), &body.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{}", String::from_utf8_lossy(&text));
    admin.shutdown();
    admin.wait().await;
}

/// A proxy with a managed key (the default roles) and a listener for `docs`, ready.
async fn with_docs(fake: &FakePinecone) -> (Running, String) {
    let project = fake.state().project_id();
    let env = [("PINECONE_PROXY_API_KEY_PROJECT_ID", project.as_str()), ("PINECONE_PROXY_INDEXES", "docs=127.0.0.1:0")];
    let proxy = proxy_for(fake, &env).await;
    let ops = proxy.ops.tcp();
    assert!(
        pinecone_admin_proxy::wait::wait_ready(ops, std::time::Duration::from_secs(10)).await,
        "ready once the host is found"
    );
    let base = format!("http://{}", proxy.indexes[0].1.tcp());
    (proxy, base)
}

/// Until the deleted index's old data plane refuses connections: its listener closes as
/// its task sees the stop, and no event tells when.
async fn until_closed(host: &str) {
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while tokio::net::TcpStream::connect(host).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the old host closes");
}

fn request(method: Method, base: &str, path: &str, body: &str) -> Request<pinecone_admin_proxy::body::Body> {
    Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("api-key", "unused")
        .header("content-type", "application/json")
        .body(if body.is_empty() { empty() } else { full(body.to_owned()) })
        .unwrap()
}

#[tokio::test]
async fn rest_goes_to_the_index_host_with_the_managed_key() {
    let fake = fake(3600).await;
    create_index(&fake, "docs", 2).await;
    let (proxy, base) = with_docs(&fake).await;
    fake.state().set_recording(true);
    let client = TestClient::default();
    let upsert =
        json!({"vectors": [{"id": "a", "values": [1.0, 0.0]}, {"id": "b", "values": [0.0, 1.0]}], "namespace": "n"});
    let (status, _, body) =
        collect(client.send(request(Method::POST, &base, "/vectors/upsert", &upsert.to_string())).await).await;
    assert_eq!((status, json(&body)["upsertedCount"].as_u64()), (StatusCode::OK, Some(2)));
    let query = json!({"vector": [0.9, 0.1], "topK": 1, "namespace": "n"});
    let (status, _, body) =
        collect(client.send(request(Method::POST, &base, "/query", &query.to_string())).await).await;
    assert_eq!((status, json(&body)["matches"][0]["id"].as_str()), (StatusCode::OK, Some("a")));
    let (status, _, body) =
        collect(client.send(request(Method::GET, &base, "/vectors/fetch?ids=b&namespace=n", "")).await).await;
    assert_eq!((status, &json(&body)["vectors"]["b"]["values"]), (StatusCode::OK, &json!([0.0, 1.0])));

    let key = proxy.keys.as_ref().unwrap().current().unwrap();
    let data: Vec<_> = fake.state().recorded().into_iter().filter(|r| !r.target.starts_with("/indexes")).collect();
    assert_eq!(data.len(), 3);
    for r in &data {
        assert_eq!(
            r.headers.get_all("api-key").iter().collect::<Vec<_>>(),
            [key.header().to_str().unwrap()],
            "{}",
            r.target
        );
        assert_eq!(r.headers["x-pinecone-api-version"], "2025-10");
    }
    let (_, _, status) = client.get(&ops_url(&proxy, "/status")).await;
    let index = &json(&status)["indexes"][0];
    assert_eq!(index["name"], "docs");
    assert!(index["host"].as_str().unwrap().starts_with("127.0.0.1:"), "{index}");
    let (_, _, metrics) = client.get(&ops_url(&proxy, "/metrics")).await;
    let text = String::from_utf8_lossy(&metrics);
    assert!(
        text.contains(r#"pinecone_proxy_requests_total{code="200",method="POST",operation="upsertVectors"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_revoked_key_on_the_data_plane_is_replaced_and_the_upsert_replayed() {
    let fake = fake(3600).await;
    create_index(&fake, "docs", 2).await;
    let (proxy, base) = with_docs(&fake).await;
    let first = proxy.keys.as_ref().unwrap().current().unwrap();
    assert!(fake.state().revoke_api_key(&first.id));
    let upsert = json!({"vectors": [{"id": "a", "values": [1.0, 0.0]}]});
    let (status, _, _) =
        collect(TestClient::default().send(request(Method::POST, &base, "/vectors/upsert", &upsert.to_string())).await)
            .await;
    assert_eq!(status, StatusCode::OK, "replayed with the new key");
    assert_eq!(proxy.keys.as_ref().unwrap().current().unwrap().generation, 2);
    let (_, _, body) =
        collect(TestClient::default().send(request(Method::POST, &base, "/describe_index_stats", "{}")).await).await;
    assert_eq!(json(&body)["totalVectorCount"], 1, "upserted once");
}

#[tokio::test]
async fn readyz_waits_for_the_index_host() {
    let fake = fake(3600).await;
    let project = fake.state().project_id();
    let env =
        [("PINECONE_PROXY_API_KEY_PROJECT_ID", project.as_str()), ("PINECONE_PROXY_INDEXES", "missing=127.0.0.1:0")];
    let proxy = proxy_for(&fake, &env).await;
    proxy.keys.as_ref().unwrap().get().await.unwrap();
    let mut changed = fake.state().subscribe();
    // Until the lookup has been answered (404): then /readyz says why.
    let reason = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let (status, _, body) = TestClient::default().get(&ops_url(&proxy, "/readyz")).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            let reason = json(&body)["reason"].as_str().unwrap().to_owned();
            if reason.contains("404") {
                return reason;
            }
            changed.changed().await.unwrap();
        }
    })
    .await
    .expect("the lookup is answered");
    assert!(reason.contains("index missing"), "{reason}");
    let (status, _, body) = collect(
        TestClient::default()
            .send(request(Method::POST, &format!("http://{}", proxy.indexes[0].1.tcp()), "/query", "{}"))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{}", String::from_utf8_lossy(&body));
}

/// One unary gRPC call over h2c: the response's HTTP status, its headers, the message (if
/// any) and `grpc-status` (from the trailers, or from the headers of a trailers-only answer).
async fn grpc<Q: prost::Message, R: prost::Message + Default>(
    base: &str,
    method: &str,
    message: &Q,
) -> (http::HeaderMap, Option<R>, String, Option<String>) {
    let (headers, trailers, body) = grpc_call(base, method, message).await;
    let status = trailers.get("grpc-status").or(headers.get("grpc-status")).map(|v| v.to_str().unwrap().to_owned());
    let message = trailers.get("grpc-message").or(headers.get("grpc-message")).map(|v| v.to_str().unwrap().to_owned());
    let decoded = (body.len() >= 5).then(|| R::decode(&body[5..]).unwrap());
    (headers, decoded, status.unwrap_or_default(), message)
}

/// One unary gRPC call over h2c: the answer's headers, trailers and body.
async fn grpc_call<Q: prost::Message>(
    base: &str,
    method: &str,
    message: &Q,
) -> (http::HeaderMap, http::HeaderMap, bytes::Bytes) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, pinecone_admin_proxy::body::Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let encoded = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    frame.extend_from_slice(&encoded);
    let request = Request::post(format!("{base}{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("api-key", "unused")
        .body(full(frame))
        .unwrap();
    let response = client.request(request).await.expect("a gRPC answer");
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    (headers, trailers, collected.to_bytes())
}

#[tokio::test]
async fn grpc_goes_to_the_index_host_with_the_managed_key_and_its_status_passes_through() {
    use pinecone_admin_proxy::fake::grpc::*;
    let fake = fake(3600).await;
    create_index(&fake, "docs", 2).await;
    let (proxy, base) = with_docs(&fake).await;
    fake.state().set_recording(true);
    let upsert = UpsertRequest {
        vectors: vec![
            Vector { id: "a".into(), values: vec![1.0, 0.0] },
            Vector { id: "b".into(), values: vec![0.0, 1.0] },
        ],
        namespace: "n".into(),
    };
    let (_, answer, status, _) = grpc::<_, UpsertResponse>(&base, "/VectorService/Upsert", &upsert).await;
    assert_eq!((status.as_str(), answer.map(|a| a.upserted_count)), ("0", Some(2)));
    let query = QueryRequest { namespace: "n".into(), top_k: 1, vector: vec![0.1, 0.9], ..QueryRequest::default() };
    let (_, answer, status, _) = grpc::<_, QueryResponse>(&base, "/VectorService/Query", &query).await;
    assert_eq!(status, "0");
    assert_eq!(answer.unwrap().matches[0].id, "b");
    // An error's status and message pass through untouched, in the trailers-only answer.
    let (_, _, status, message) = grpc::<_, UpsertResponse>(&base, "/VectorService/Nothing", &query).await;
    assert_eq!(status, "12", "UNIMPLEMENTED");
    assert!(message.unwrap().contains("/VectorService/Nothing"));
    let bad = UpsertRequest { vectors: vec![Vector { id: "c".into(), values: vec![1.0] }], namespace: String::new() };
    let (headers, _, status, message) = grpc::<_, UpsertResponse>(&base, "/VectorService/Upsert", &bad).await;
    assert_eq!(status, "3", "INVALID_ARGUMENT");
    assert!(message.unwrap().contains("dimension"));
    assert!(headers.contains_key("grpc-status-details-bin"), "the details pass through: {headers:?}");
    // The same error from a server that had begun its answer: all three in the trailers.
    fake.state().set_grpc_status_in_trailers(true);
    let details = headers["grpc-status-details-bin"].clone();
    let (headers, trailers, _) = grpc_call(&base, "/VectorService/Upsert", &bad).await;
    assert!(!headers.contains_key("grpc-status"), "{headers:?}");
    assert_eq!(trailers["grpc-status"], "3");
    assert!(trailers["grpc-message"].to_str().unwrap().contains("dimension"));
    assert_eq!(trailers["grpc-status-details-bin"], details, "byte for byte");
    fake.state().set_grpc_status_in_trailers(false);

    let key = proxy.keys.as_ref().unwrap().current().unwrap();
    let calls: Vec<_> =
        fake.state().recorded().into_iter().filter(|r| r.target.starts_with("/VectorService/")).collect();
    assert_eq!(calls.len(), 5);
    for r in &calls {
        assert_eq!(r.headers.get_all("api-key").iter().collect::<Vec<_>>(), [key.header().to_str().unwrap()]);
        assert_eq!(r.headers["x-pinecone-api-version"], "2025-10");
    }
}

#[tokio::test]
async fn a_grpc_unauthenticated_replaces_the_key_and_the_call_is_replayed() {
    use pinecone_admin_proxy::fake::grpc::*;
    let fake = fake(3600).await;
    create_index(&fake, "docs", 2).await;
    let (proxy, base) = with_docs(&fake).await;
    let first = proxy.keys.as_ref().unwrap().current().unwrap();
    assert!(fake.state().revoke_api_key(&first.id));
    let upsert =
        UpsertRequest { vectors: vec![Vector { id: "a".into(), values: vec![1.0, 0.0] }], namespace: String::new() };
    let (_, answer, status, _) = grpc::<_, UpsertResponse>(&base, "/VectorService/Upsert", &upsert).await;
    assert_eq!((status.as_str(), answer.map(|a| a.upserted_count)), ("0", Some(1)), "replayed with the new key");
    assert_eq!(proxy.keys.as_ref().unwrap().current().unwrap().generation, 2);
    let (_, stats, _, _) = grpc::<_, DescribeIndexStatsResponse>(
        &base,
        "/VectorService/DescribeIndexStats",
        &DescribeIndexStatsRequest {},
    )
    .await;
    assert_eq!(stats.unwrap().total_vector_count, 1, "upserted once");
}

/// A server that had begun its answer sends `UNAUTHENTICATED` in the trailers: too late to
/// replay (the client has the headers, and gets the 16), but the key is replaced for the
/// calls that follow.
#[tokio::test]
async fn a_grpc_unauthenticated_in_trailers_replaces_the_key_for_the_calls_to_come() {
    use pinecone_admin_proxy::fake::grpc::*;
    let fake = fake(3600).await;
    create_index(&fake, "docs", 2).await;
    let (proxy, base) = with_docs(&fake).await;
    let keys = proxy.keys.as_ref().unwrap();
    let first = keys.current().unwrap();
    fake.state().set_grpc_status_in_trailers(true);
    assert!(fake.state().revoke_api_key(&first.id));
    let stats = DescribeIndexStatsRequest {};
    let method = "/VectorService/DescribeIndexStats";
    let (headers, _, status, _) = grpc::<_, DescribeIndexStatsResponse>(&base, method, &stats).await;
    assert!(!headers.contains_key("grpc-status"), "the status came in the trailers: {headers:?}");
    assert_eq!(status, "16", "the client gets the trailers' status as they came");
    let second = keys.newer_than(first.generation).await.expect("a new key after the 16 in the trailers");
    let (_, answer, status, _) = grpc::<_, DescribeIndexStatsResponse>(&base, method, &stats).await;
    assert_eq!((status.as_str(), answer.map(|a| a.dimension)), ("0", Some(2)), "the next call, with {}", second.id);
}

#[tokio::test]
async fn grpc_calls_are_named_by_their_rest_twin_and_a_refusal_is_permission_denied() {
    use pinecone_admin_proxy::fake::grpc::*;
    let fake = fake(3600).await;
    create_index(&fake, "docs", 2).await;
    let project = fake.state().project_id();
    let env = [
        ("PINECONE_PROXY_API_KEY_PROJECT_ID", project.as_str()),
        ("PINECONE_PROXY_INDEXES", "docs=127.0.0.1:0"),
        ("PINECONE_PROXY_POLICY_ALLOW", "queryVectors"),
    ];
    let proxy = proxy_for(&fake, &env).await;
    assert!(pinecone_admin_proxy::wait::wait_ready(proxy.ops.tcp(), std::time::Duration::from_secs(10)).await);
    let base = format!("http://{}", proxy.indexes[0].1.tcp());
    let query = QueryRequest { top_k: 1, vector: vec![1.0, 0.0], ..QueryRequest::default() };
    let (_, _, status, _) = grpc::<_, QueryResponse>(&base, "/VectorService/Query", &query).await;
    assert_eq!(status, "0", "allowed: queryVectors");
    let upsert =
        UpsertRequest { vectors: vec![Vector { id: "a".into(), values: vec![1.0, 0.0] }], namespace: String::new() };
    let (headers, _, status, message) = grpc::<_, UpsertResponse>(&base, "/VectorService/Upsert", &upsert).await;
    assert_eq!(status, "7", "PERMISSION_DENIED");
    assert_eq!(headers["x-pinecone-proxy-error"], "forbidden_by_policy");
    assert!(message.unwrap().contains("upsertVectors"), "named by its REST twin");
    assert_eq!(fake.state().data_requests.load(std::sync::atomic::Ordering::SeqCst), 1, "the refused call never left");
    let text = String::from_utf8(proxy.metrics.render()).unwrap();
    // Both counted by their REST twins (a gRPC refusal is an HTTP 200 with its status inside).
    for op in ["queryVectors", "upsertVectors"] {
        let line = format!(r#"pinecone_proxy_requests_total{{code="200",method="POST",operation="{op}"}} 1"#);
        assert!(text.contains(&line), "{line} in {text}");
    }
}

#[tokio::test]
async fn an_index_that_moved_is_found_again_after_a_connect_failure() {
    let fake = fake(3600).await;
    let old = fake.state().create_index("docs", 2).unwrap();
    let (_proxy, base) = with_docs(&fake).await;
    // The index is made again elsewhere: its old host is gone.
    assert!(fake.state().delete_index("docs"));
    let new = fake.state().create_index("docs", 2).unwrap();
    assert_ne!(old, new);
    until_closed(&old).await;
    let stats = || request(Method::POST, &base, "/describe_index_stats", "{}");
    let client = TestClient::default();
    let (status, headers, body) = collect(client.send(stats()).await).await;
    assert_proxy_error(status, &headers, &body, StatusCode::BAD_GATEWAY, "upstream_unreachable");
    let (status, _, _) = collect(client.send(stats()).await).await;
    assert_eq!(status, StatusCode::OK, "looked up again: the new host");
}

#[tokio::test]
async fn megabyte_upserts_stream_and_the_limits_of_listen_apply() {
    let fake = fake(3600).await;
    fake.state().create_index("docs", 2).unwrap();
    let (_proxy, base) = with_docs(&fake).await;
    // About 2 MiB of vectors: more than upstream.replay_limit (1 MiB), so it streams.
    let vectors: Vec<_> =
        (0..40_000).map(|i| json!({"id": format!("v-{i:06}-{}", "x".repeat(20)), "values": [0.5, 0.25]})).collect();
    let body = json!({"vectors": vectors}).to_string();
    assert!(body.len() > 2 << 20, "{}", body.len());
    let (status, _, answer) =
        collect(TestClient::default().send(request(Method::POST, &base, "/vectors/upsert", &body)).await).await;
    assert_eq!((status, json(&answer)["upsertedCount"].as_u64()), (StatusCode::OK, Some(40_000)));
    // A head over limits.max_head_bytes (64 KiB) is refused on the index listener as on listen.
    let huge = Request::get(format!("{base}/describe_index_stats"))
        .header("x-big", "y".repeat(70 * 1024))
        .body(empty())
        .unwrap();
    let (status, _, _) = collect(TestClient::default().send(huge).await).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

/// A gRPC method of no specification may be a stream: the proxy sends it on at once, and
/// the answer comes while the client's stream is still open (no wait for its end, which a
/// bidirectional call would never send first).
#[tokio::test]
async fn a_grpc_stream_of_no_specification_is_not_held_for_a_replay() {
    use http_body_util::BodyExt;
    let fake = fake(3600).await;
    fake.state().create_index("docs", 2).unwrap();
    let (_proxy, base) = with_docs(&fake).await;
    let (mut frames, stream) = http_body_util::Channel::<bytes::Bytes, std::convert::Infallible>::new(4);
    let client: hyper_util::client::legacy::Client<_, _> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let request = Request::post(format!("{base}/VectorService/StreamSomething"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(stream.boxed_unsync())
        .unwrap();
    frames.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0])).await.unwrap();
    // The stream stays open (`frames` is held) while the answer is awaited.
    let response = tokio::time::timeout(std::time::Duration::from_secs(5), client.request(request))
        .await
        .expect("answered before the client's stream ended")
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "12", "UNIMPLEMENTED, from the fake");
    drop(frames);
}

/// `listen` and the index listeners hold one `limits.head_memory` budget: more indexes do not
/// mean more memory. At 320 KiB, two h2c connections (160 KiB each), one on each listener, take
/// it all; a third on either is closed, and one on an index listener is admitted again once
/// one of the two has gone.
#[tokio::test]
async fn the_index_listeners_share_the_head_memory_of_listen() {
    let fake = fake(3600).await;
    fake.state().create_index("docs", 2).unwrap();
    let project = fake.state().project_id();
    let env = [
        ("PINECONE_PROXY_API_KEY_PROJECT_ID", project.as_str()),
        ("PINECONE_PROXY_INDEXES", "docs=127.0.0.1:0"),
        ("PINECONE_PROXY_LIMITS_HEAD_MEMORY", "320KiB"),
    ];
    let proxy = proxy_for(&fake, &env).await;
    let (listen, index) = (proxy.listen.tcp(), proxy.indexes[0].1.tcp());
    let h2c = |addr| async move {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The preface, an empty SETTINGS and a PING: answered by a PING ACK once read.
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        hello.extend_from_slice(&[0, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        tokio::io::AsyncWriteExt::write_all(&mut stream, &hello).await.unwrap();
        let admitted = until_ping_ack(&mut stream).await;
        (stream, admitted)
    };
    let (on_listen, admitted) = h2c(listen).await;
    assert!(admitted, "the first h2c connection, on listen");
    let (_on_index, admitted) = h2c(index).await;
    assert!(admitted, "the second, on the index listener");
    assert!(!h2c(index).await.1, "a third on the index listener passes the shared budget");
    assert!(!h2c(listen).await.1, "and on listen");
    drop(on_listen);
    let again = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if h2c(index).await.1 {
                return;
            }
        }
    });
    again.await.expect("admitted once the connection on listen has gone");
}

/// An index listener on a Unix socket (`indexes.docs = "unix:…"`) serves REST over HTTP/1.1
/// and gRPC over h2c as the TCP one does, in the socket mode of `listen_mode`.
#[tokio::test]
async fn an_index_listener_on_a_unix_socket_serves_rest_and_grpc() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use pinecone_admin_proxy::fake::grpc::{DescribeIndexStatsRequest, DescribeIndexStatsResponse};
    use prost::Message;
    use std::os::unix::fs::PermissionsExt;
    let fake = fake(3600).await;
    fake.state().create_index("docs", 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docs.sock");
    let project = fake.state().project_id();
    let indexes = format!("docs=unix:{}", path.display());
    let env = [("PINECONE_PROXY_API_KEY_PROJECT_ID", project.as_str()), ("PINECONE_PROXY_INDEXES", indexes.as_str())];
    let proxy = proxy_for(&fake, &env).await;
    assert!(pinecone_admin_proxy::wait::wait_ready(proxy.ops.tcp(), std::time::Duration::from_secs(10)).await);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut stats = request(Method::POST, "http://localhost", "/describe_index_stats", "{}");
    *stats.uri_mut() = "/describe_index_stats".parse().unwrap();
    stats.headers_mut().insert("host", "localhost".parse().unwrap());
    let (status, _, body) = collect(sender.send_request(stats).await.unwrap()).await;
    assert_eq!((status, json(&body)["dimension"].as_u64()), (StatusCode::OK, Some(2)));

    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut frame = vec![0u8, 0, 0, 0, 0];
    DescribeIndexStatsRequest {}.encode(&mut frame).unwrap();
    let call = Request::post("http://localhost/VectorService/DescribeIndexStats")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(frame))
        .unwrap();
    let collected = sender.send_request(call).await.unwrap().into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    let answer = DescribeIndexStatsResponse::decode(&collected.to_bytes()[5..]).unwrap();
    assert_eq!(answer.dimension, 2);
    proxy.shutdown();
    proxy.wait().await;
    assert!(!path.exists(), "the socket file is removed at exit");
}

/// Every REST operation of the data plane goes through an index listener with the managed
/// key and is counted by its `operationId`: listing, updating, namespaces, bulk imports, and
/// records (which the fake refuses with 400, as Pinecone does an index without integrated
/// embedding: the refusal passes through as it came).
#[tokio::test]
async fn every_rest_operation_of_the_data_plane_is_forwarded_and_named() {
    let fake = fake(3600).await;
    fake.state().create_index("docs", 2).unwrap();
    let (proxy, base) = with_docs(&fake).await;
    fake.state().set_recording(true);
    let client = TestClient::default();
    let call = |method: Method, path: &str, body: serde_json::Value| {
        let body = if body.is_null() { String::new() } else { body.to_string() };
        let request = request(method, &base, path, &body);
        let client = &client;
        async move { collect(client.send(request).await).await }
    };
    let vectors = json!({"namespace": "n", "vectors": [
        {"id": "doc#1", "values": [1.0, 0.0]}, {"id": "doc#2", "values": [0.0, 1.0]}, {"id": "other", "values": [0.5, 0.5]}]});
    assert_eq!(call(Method::POST, "/vectors/upsert", vectors).await.0, StatusCode::OK);

    let (status, _, body) = call(Method::GET, "/vectors/list?namespace=n&prefix=doc%23&limit=1", json!(null)).await;
    let page = json(&body);
    assert_eq!((status, page["vectors"][0]["id"].as_str()), (StatusCode::OK, Some("doc#1")));
    assert_eq!(page["pagination"]["next"], "doc#1", "one more page");
    let update = json!({"id": "doc#2", "namespace": "n", "setMetadata": {"genre": "poetry"}});
    assert_eq!(call(Method::POST, "/vectors/update", update).await.0, StatusCode::OK);
    let (_, _, body) = call(Method::GET, "/vectors/fetch?ids=doc%232&namespace=n", json!(null)).await;
    assert_eq!(json(&body)["vectors"]["doc#2"]["metadata"]["genre"], "poetry");
    let (status, _, body) = call(Method::GET, "/namespaces", json!(null)).await;
    assert_eq!((status, &json(&body)["namespaces"][0]), (StatusCode::OK, &json!({"name": "n", "record_count": 3})));
    assert_eq!(call(Method::GET, "/namespaces/n", json!(null)).await.0, StatusCode::OK);

    let (status, _, body) = call(Method::POST, "/bulk/imports", json!({"uri": "s3://bucket/vectors/"})).await;
    assert_eq!(status, StatusCode::OK);
    let id = json(&body)["id"].as_str().unwrap().to_owned();
    let (_, _, body) = call(Method::GET, &format!("/bulk/imports/{id}"), json!(null)).await;
    assert_eq!(json(&body)["status"], "Pending");
    assert_eq!(call(Method::DELETE, &format!("/bulk/imports/{id}"), json!(null)).await.0, StatusCode::OK);
    let (_, _, body) = call(Method::GET, "/bulk/imports", json!(null)).await;
    assert_eq!(json(&body)["data"][0]["status"], "Cancelled");

    let search = json!({"query": {"inputs": {"text": "poems"}, "top_k": 2}});
    let (status, _, body) = call(Method::POST, "/records/namespaces/n/search", search).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json(&body)["error"]["message"].as_str().unwrap().contains("Integrated inference"));
    assert_eq!(call(Method::DELETE, "/namespaces/n", json!(null)).await.0, StatusCode::OK);
    assert_eq!(call(Method::GET, "/namespaces/n", json!(null)).await.0, StatusCode::NOT_FOUND);

    let key = proxy.keys.as_ref().unwrap().current().unwrap();
    // A 404 makes the proxy look the host up again (`/indexes/docs`), in the background.
    let recorded: Vec<_> = fake.state().recorded().into_iter().filter(|r| !r.target.starts_with("/indexes")).collect();
    assert_eq!(recorded.len(), 13);
    assert!(recorded.iter().all(|r| r.headers["api-key"] == key.header()), "every call with the managed key");
    let (_, _, metrics) = client.get(&ops_url(&proxy, "/metrics")).await;
    let text = String::from_utf8_lossy(&metrics);
    for (method, code, operation) in [
        ("GET", 200, "listVectors"),
        ("POST", 200, "updateVector"),
        ("GET", 200, "listNamespacesOperation"),
        ("GET", 404, "describeNamespace"),
        ("DELETE", 200, "deleteNamespace"),
        ("POST", 200, "startBulkImport"),
        ("GET", 200, "describeBulkImport"),
        ("DELETE", 200, "cancelBulkImport"),
        ("GET", 200, "listBulkImports"),
        ("POST", 400, "searchRecordsNamespace"),
    ] {
        let series =
            format!(r#"pinecone_proxy_requests_total{{code="{code}",method="{method}",operation="{operation}"}} 1"#);
        assert!(text.contains(&series), "{series}");
    }
}

/// Clients that stop reading large responses do not stall the index's other clients: every
/// client's stream shares one HTTP/2 connection to the index host, where what a stream has
/// received and its client has not taken counts against the connection's window too. One
/// h2c client opens as many streams as `limits.max_concurrent_streams` lets it (64), each a
/// query whose answer (400 KB) it does not read; the others' queries are answered
/// all the same, and the held answers come whole once read. With hyper's client windows (2
/// MiB a stream, 5 MiB the connection) three such streams closed the connection's window and
/// the first other query waited for `limits.body_read_timeout`.
#[tokio::test]
async fn clients_that_stop_reading_large_answers_do_not_stall_the_others() {
    const DIMENSION: usize = 1024;
    const VECTORS: usize = 20;
    const SLOW: usize = 64;
    let fake = fake(3600).await;
    create_index(&fake, "docs", DIMENSION as u32).await;
    let (_proxy, base) = with_docs(&fake).await;
    let client = TestClient::default();
    // About 20 KB of JSON a vector.
    let vectors: Vec<_> = (0..VECTORS)
        .map(|n| {
            let values: Vec<f64> = (0..DIMENSION).map(|d| ((n * 31 + d * 17) % 997 + 1) as f64 / 997.0).collect();
            json!({"id": format!("v{n}"), "values": values})
        })
        .collect();
    let upsert = json!({"vectors": vectors}).to_string();
    let (status, _, _) = collect(client.send(request(Method::POST, &base, "/vectors/upsert", &upsert)).await).await;
    assert_eq!(status, StatusCode::OK);
    let probe: Vec<f64> = (0..DIMENSION).map(|d| (d % 7) as f64 + 1.0).collect();
    let large = json!({"vector": probe, "topK": VECTORS, "includeValues": true}).to_string();

    // The slow client: one h2c connection whose streams take 16 KiB (64 KiB in all, the
    // connection's window) and then nothing until the end.
    let tcp = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    let (mut slow, connection) =
        h2::client::Builder::new().initial_window_size(16 << 10).handshake::<_, bytes::Bytes>(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut held = Vec::new();
    for _ in 0..SLOW {
        let head = Request::post(format!("{base}/query"))
            .header("content-type", "application/json")
            .header("api-key", "unused")
            .body(())
            .unwrap();
        slow = slow.ready().await.unwrap();
        let (answer, mut send) = slow.send_request(head, false).unwrap();
        send.send_data(bytes::Bytes::from(large.clone()), true).unwrap();
        let response = answer.await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "the head needs no window");
        held.push(response.into_body());
    }

    // Meanwhile, others' queries are answered, one after another (a stall would last
    // body_read_timeout's 30 s).
    let small = json!({"vector": probe, "topK": 1}).to_string();
    for n in 0..50 {
        let query = async { collect(client.send(request(Method::POST, &base, "/query", &small)).await).await };
        let answered = tokio::time::timeout(std::time::Duration::from_secs(10), query).await;
        let (status, _, body) =
            answered.unwrap_or_else(|_| panic!("query {n} stalled behind the slow client's answers"));
        assert_eq!((status, json(&body)["matches"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)));
    }

    // And the slow answers were held, not dropped: each comes whole once read (all at once:
    // the streams share the slow client's connection window).
    let mut reads = tokio::task::JoinSet::new();
    for mut body in held {
        reads.spawn(async move {
            let mut whole = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                body.flow_control().release_capacity(chunk.len()).unwrap();
                whole.extend_from_slice(&chunk);
            }
            whole
        });
    }
    while let Some(whole) = reads.join_next().await {
        assert_eq!(json(&whole.unwrap())["matches"].as_array().map(Vec::len), Some(VECTORS));
    }
}

/// How many times the proxy has asked the fake's control plane where `docs` is.
fn lookups(fake: &FakePinecone) -> usize {
    fake.state().recorded().iter().filter(|r| r.method == Method::GET && r.target == "/indexes/docs").count()
}

/// An index host that cannot be reached while `describe_index` keeps naming it: the first
/// connect failure looks the host up again (it may have moved), the next ones within 10 s do
/// not (it has not: it is down). Twenty failed requests, one lookup after the start's; before,
/// each failed request cost the next one a `describe_index` on the control plane.
#[tokio::test]
async fn a_host_that_is_down_is_not_looked_up_again_for_every_request() {
    let fake = fake(3600).await;
    fake.state().create_index("docs", 2).unwrap();
    let closed = closed_port();
    assert!(fake.state().set_index_host("docs", &format!("127.0.0.1:{}", closed.port)));
    fake.state().set_recording(true);
    let (_proxy, base) = with_docs(&fake).await;
    assert_eq!(lookups(&fake), 1, "found at start");
    let client = TestClient::default();
    for _ in 0..20 {
        let (status, headers, body) =
            collect(client.send(request(Method::POST, &base, "/describe_index_stats", "{}")).await).await;
        assert_proxy_error(status, &headers, &body, StatusCode::BAD_GATEWAY, "upstream_unreachable");
    }
    assert_eq!(lookups(&fake), 2, "once more after the first failure, then not for 10 s");
}

/// An index that is gone (`describe_index` answers 404): requests get 502 with the lookup's
/// error, and the control plane is asked again at most once every 10 s, not once a request.
#[tokio::test]
async fn a_deleted_index_is_not_looked_up_again_for_every_request() {
    let fake = fake(3600).await;
    let old = fake.state().create_index("docs", 2).unwrap();
    fake.state().set_recording(true);
    let (_proxy, base) = with_docs(&fake).await;
    assert!(fake.state().delete_index("docs"));
    until_closed(&old).await;
    let client = TestClient::default();
    let mut said = Vec::new();
    for _ in 0..20 {
        let (status, _, body) =
            collect(client.send(request(Method::POST, &base, "/describe_index_stats", "{}")).await).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        said.push(String::from_utf8_lossy(&body).into_owned());
    }
    assert_eq!(lookups(&fake), 2, "found at start, and looked for once after the connect failure");
    assert!(said.last().unwrap().contains("describe_index answered 404"), "{}", said.last().unwrap());
}

/// gRPC bodies of megabytes both ways through an index listener: a 2 MiB `Upsert` (over
/// `upstream.replay_limit`, so it streams) and a `Query` whose answer carries 10,000 vectors.
#[tokio::test]
async fn megabyte_grpc_upserts_and_answers_stream() {
    use pinecone_admin_proxy::fake::grpc::*;
    use prost::Message;
    let fake = fake(3600).await;
    fake.state().create_index("docs", 2).unwrap();
    let (_proxy, base) = with_docs(&fake).await;
    let vectors: Vec<_> = (0..50_000)
        .map(|i| Vector { id: format!("v-{i:06}-{}", "x".repeat(30)), values: vec![0.5, (i % 100) as f32 / 100.0] })
        .collect();
    let upsert = UpsertRequest { vectors, namespace: "big".into() };
    assert!(upsert.encoded_len() > 2 << 20, "{}", upsert.encoded_len());
    let (_, answer, status, message) = grpc::<_, UpsertResponse>(&base, "/VectorService/Upsert", &upsert).await;
    assert_eq!((status.as_str(), answer.map(|a| a.upserted_count)), ("0", Some(50_000)), "{message:?}");
    let query = QueryRequest {
        namespace: "big".into(),
        top_k: 10_000,
        include_values: true,
        vector: vec![0.5, 0.5],
        ..QueryRequest::default()
    };
    let (_, body_of, status, message) = grpc::<_, QueryResponse>(&base, "/VectorService/Query", &query).await;
    assert_eq!(status, "0", "{message:?}");
    let answer = body_of.unwrap();
    assert_eq!(answer.matches.len(), 10_000);
    assert!(answer.encoded_len() > 500_000, "{}", answer.encoded_len());
    assert!(answer.matches.iter().all(|m| m.values.len() == 2));
}
