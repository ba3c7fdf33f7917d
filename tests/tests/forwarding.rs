//! Forwarding: byte-exact requests and responses, the header policy, streaming both
//! ways, trailers, the SDK token shim, and the open-proxy refusals.

use crate::support::*;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use parking_lot::Mutex;
use pinecone_admin_proxy::body::{Body, empty, full};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// What the echo upstream received.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    target: String,
    headers: HeaderMap,
    body: Bytes,
}

/// An upstream that records each request and answers with its body.
async fn echo() -> (Upstream, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let upstream = Upstream::start(move |request: Request<Incoming>| {
        let log = log.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            log.lock().push(Seen {
                method: parts.method.clone(),
                target: parts.uri.path_and_query().unwrap().as_str().to_owned(),
                headers: parts.headers.clone(),
                body: body.clone(),
            });
            let mut response = Response::new(full(body));
            response.headers_mut().insert("x-echo", HeaderValue::from_static("1"));
            response.headers_mut().append("set-cookie", HeaderValue::from_static("a=1"));
            response.headers_mut().append("set-cookie", HeaderValue::from_static("b=2"));
            response
        }
    })
    .await;
    (upstream, seen)
}

#[tokio::test]
async fn every_method_path_query_and_body_arrive_byte_for_byte() {
    let fake = fake(3600).await;
    let (upstream, seen) = echo().await;
    let proxy = start_with(&env(&fake.token_url(), &upstream.url(), &[])).await;
    let client = TestClient::default();
    let big: Vec<u8> = (0..(1 << 20)).map(|_| rand::random::<u8>()).collect();
    let target = "/admin/projects/a%2Fb%20c/api-keys?x=1&x=2&y=%7E%C3%A9&empty=&flag";
    let methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "PROPFIND"];
    for method in methods {
        let body = if method == "HEAD" { Bytes::new() } else { Bytes::from(big.clone()) };
        let request = Request::builder()
            .method(method)
            .uri(url(&proxy, target))
            .header("content-type", "application/octet-stream")
            .body(full(body.clone()))
            .unwrap();
        let (status, headers, received) = collect(client.send(request).await).await;
        assert_eq!(status, StatusCode::OK, "{method}");
        assert_eq!(headers["x-echo"], "1");
        assert_eq!(headers.get_all("set-cookie").iter().count(), 2, "repeated response headers kept");
        let last = seen.lock().last().cloned().unwrap();
        assert_eq!(last.method.as_str(), method);
        assert_eq!(last.target, target, "{method}: path and query byte for byte");
        assert_eq!(Sha256::digest(&last.body), Sha256::digest(&body), "{method}: request body");
        if method != "HEAD" {
            assert_eq!(Sha256::digest(&received), Sha256::digest(&body), "{method}: response body");
        }
    }
    assert_eq!(seen.lock().len(), methods.len());
}

#[tokio::test]
async fn header_policy_end_to_end() {
    let fake = fake(3600).await;
    let (upstream, seen) = echo().await;
    let proxy = start_with(&env(&fake.token_url(), &upstream.url(), &[])).await;
    let client = TestClient::default();
    let request = Request::get(url(&proxy, "/admin/projects"))
        .header("authorization", "Bearer placeholder-from-the-app")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("x-end-to-end", "kept")
        .body(empty())
        .unwrap();
    assert_eq!(collect(client.send(request).await).await.0, StatusCode::OK);
    let h = seen.lock().last().unwrap().headers.clone();
    let token = proxy.tokens.current().unwrap();
    assert_eq!(h["authorization"], token.authorization().to_str().unwrap());
    assert!(fake.state().was_issued(h["authorization"].to_str().unwrap().strip_prefix("Bearer ").unwrap()));
    assert_eq!(h["x-pinecone-api-version"], "2025-10");
    assert_eq!(h["host"], upstream.addr.to_string(), "Host is the upstream's");
    assert_eq!(h["x-end-to-end"], "kept");
    for gone in ["proxy-authorization", "x-hop", "keep-alive"] {
        assert!(!h.contains_key(gone), "{gone} reached the upstream");
    }

    // The client's own version wins...
    let request = Request::get(url(&proxy, "/x")).header("x-pinecone-api-version", "2026-07").body(empty()).unwrap();
    client.send(request).await;
    assert_eq!(seen.lock().last().unwrap().headers["x-pinecone-api-version"], "2026-07");
    drop(proxy);

    // ...unless override_api_version is set.
    let proxy = start_with(&env(
        &fake.token_url(),
        &upstream.url(),
        &[("PINECONE_PROXY_UPSTREAM_OVERRIDE_API_VERSION", "true"), ("PINECONE_API_VERSION", "2025-04")],
    ))
    .await;
    let request = Request::get(url(&proxy, "/x")).header("x-pinecone-api-version", "2026-07").body(empty()).unwrap();
    client.send(request).await;
    let h = seen.lock().last().unwrap().headers.clone();
    assert_eq!(h.get_all("x-pinecone-api-version").iter().collect::<Vec<_>>(), ["2025-04"]);
}

#[tokio::test]
async fn upstream_base_path_is_prefixed() {
    let fake = fake(3600).await;
    let (upstream, seen) = echo().await;
    let proxy = start_with(&env(&fake.token_url(), &format!("{}/base/", upstream.url()), &[])).await;
    TestClient::default().get(&url(&proxy, "/admin/projects?a=%20")).await;
    assert_eq!(seen.lock().last().unwrap().target, "/base/admin/projects?a=%20");
}

#[tokio::test]
async fn response_streams_before_the_upstream_finishes() {
    let fake = fake(3600).await;
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let release = Arc::new(Mutex::new(Some(release_rx)));
    let upstream = Upstream::start(move |_request: Request<Incoming>| {
        let release = release.clone();
        async move {
            let (mut tx, body) =
                http_body_util::channel::Channel::<Bytes, pinecone_admin_proxy::body::BoxError>::new(4);
            let wait = release.lock().take().expect("one request");
            tokio::spawn(async move {
                tx.send_data(Bytes::from_static(b"first chunk;")).await.unwrap();
                wait.await.unwrap();
                tx.send_data(Bytes::from_static(b"last chunk")).await.unwrap();
            });
            Response::new(body.boxed_unsync())
        }
    })
    .await;
    let proxy = start_with(&env(&fake.token_url(), &upstream.url(), &[])).await;
    let response = TestClient::default().send(Request::get(url(&proxy, "/stream")).body(empty()).unwrap()).await;
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"first chunk;", "the first chunk arrived while the upstream still holds the last");
    release_tx.send(()).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"last chunk");
}

#[tokio::test]
async fn request_streams_before_the_client_finishes() {
    let fake = fake(3600).await;
    let (upstream, first_rx) = first_part_upstream().await;
    // With a replay limit, a small body is read whole before it is sent; without one, it
    // streams as it comes.
    let proxy =
        start_with(&env(&fake.token_url(), &upstream.url(), &[("PINECONE_PROXY_UPSTREAM_REPLAY_LIMIT", "0")])).await;
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, pinecone_admin_proxy::body::BoxError>::new(4);
    let request = Request::post(url(&proxy, "/upload")).body(body.boxed_unsync()).unwrap();
    let client = TestClient::default();
    let pending = tokio::spawn(async move { collect(client.send(request).await).await });
    tx.send_data(Bytes::from_static(b"part one;")).await.unwrap();
    assert_eq!(&first_rx.await.unwrap()[..], b"part one;", "the upstream got the first part before the last was sent");
    tx.send_data(Bytes::from_static(b"part two")).await.unwrap();
    drop(tx);
    let (status, _, rest) = pending.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&rest[..], b"part two");
}

#[tokio::test]
async fn response_trailers_pass_through() {
    let fake = fake(3600).await;
    let upstream = Upstream::start(|_request: Request<Incoming>| async move {
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, pinecone_admin_proxy::body::BoxError>::new(4);
        tokio::spawn(async move {
            tx.send_data(Bytes::from_static(b"data")).await.unwrap();
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
            tx.send_trailers(trailers).await.unwrap();
        });
        let mut response = Response::new(body.boxed_unsync());
        response.headers_mut().insert("trailer", HeaderValue::from_static("x-checksum"));
        response
    })
    .await;
    let proxy = start_with(&env(&fake.token_url(), &upstream.url(), &[])).await;
    let request = Request::get(url(&proxy, "/t")).header("te", "trailers").body(empty()).unwrap();
    let response = TestClient::default().send(request).await;
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().and_then(|t| t.get("x-checksum")).expect("trailer arrived"), "abc123");
    assert_eq!(&collected.to_bytes()[..], b"data");
}

#[tokio::test]
async fn sdk_token_shim_answers_a_placeholder_that_is_then_replaced() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[]).await;
    let client = TestClient::default();
    let (status, _, body) = client
        .post(&url(&proxy, "/oauth/token"), r#"{"client_id":"unused","client_secret":"unused","grant_type":"client_credentials","audience":"https://api.pinecone.io/"}"#)
        .await;
    assert_eq!(status, StatusCode::OK);
    let v = json(&body);
    let placeholder = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(v["expires_in"], 86400);
    assert_eq!(v["token_type"], "Bearer");
    assert!(!fake.state().was_issued(&placeholder), "never the real token");
    assert_eq!(
        fake.state().token_requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the shim asked Pinecone nothing"
    );
    let (_, _, again) = client.post(&url(&proxy, "/oauth/token"), "{}").await;
    assert_ne!(json(&again)["access_token"], placeholder.as_str(), "a fresh placeholder each time");

    let request = Request::get(url(&proxy, "/admin/projects"))
        .header("authorization", format!("Bearer {placeholder}"))
        .header("x-pinecone-api-version", "2025-10")
        .body(empty())
        .unwrap();
    let (status, _, body) = collect(client.send(request).await).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["data"][0]["name"], "demo-project");
}

/// Sends raw bytes and returns the status line of the answer.
async fn raw_status_line(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn not_an_open_proxy() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[]).await;
    let addr = proxy.listen.tcp();
    let line = raw_status_line(addr, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n").await;
    assert!(line.starts_with("HTTP/1.1 405"), "{line}");
    let line =
        raw_status_line(addr, "GET http://example.com/admin/projects HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert!(line.starts_with("HTTP/1.1 400"), "{line}");
    // An absolute form that names the proxy itself is an ordinary request.
    let line =
        raw_status_line(addr, &format!("GET http://{addr}/admin/projects HTTP/1.1\r\nHost: {addr}\r\n\r\n")).await;
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    assert_eq!(
        fake.state().admin_requests.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "only the last one was forwarded"
    );

    let client = TestClient::default();
    let request = Request::builder().method("CONNECT").uri(format!("http://{addr}/")).body(empty()).unwrap();
    let (status, headers, body) = collect(client.send(request).await).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["x-pinecone-proxy-error"], "bad_request");
    assert_eq!(json(&body)["status"], 405);
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let fake = fake(3600).await;
    let proxy = proxy_for(&fake, &[]).await;
    let client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let response = client.request(Request::get(url(&proxy, "/admin/projects")).body(empty()).unwrap()).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let (status, _, body) = collect(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["data"][0]["name"], "demo-project");
}

/// An upstream that counts the connections it accepts; `keep_alive` false closes each
/// connection after one response.
async fn counting_upstream(keep_alive: bool) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let status = match request.uri().path() {
                        "/no-content" => StatusCode::NO_CONTENT,
                        _ => StatusCode::OK,
                    };
                    let mut response = Response::new(if status == StatusCode::OK { full("hello") } else { empty() });
                    *response.status_mut() = status;
                    Ok::<_, std::convert::Infallible>(response)
                });
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder.http1().keep_alive(keep_alive);
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let fake = fake(3600).await;
    let (addr, accepted) = counting_upstream(true).await;
    let proxy = start_with(&env(&fake.token_url(), &format!("http://{addr}"), &[])).await;
    let client = TestClient::default();
    for path in ["/a", "/no-content", "/b", "/no-content", "/c"] {
        for method in ["GET", "HEAD"] {
            let request = Request::builder().method(method).uri(url(&proxy, path)).body(empty()).unwrap();
            assert!(collect(client.send(request).await).await.0.is_success());
        }
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one connection for sequential requests");
    for _ in 0..5 {
        assert!(client.burst(&url(&proxy, "/x"), 20).await.iter().all(|s| *s == StatusCode::OK));
    }
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n <= 21, "{n} connections for 20 concurrent requests: the pool reuses them");
}

#[tokio::test]
async fn connections_the_upstream_closes_are_replaced() {
    let fake = fake(3600).await;
    let (addr, accepted) = counting_upstream(false).await;
    let proxy = start_with(&env(&fake.token_url(), &format!("http://{addr}"), &[])).await;
    let client = TestClient::default();
    for _ in 0..20 {
        let (status, _, body) = client.get(&url(&proxy, "/a")).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(&body[..], b"hello");
    }
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 20);
}

/// A body whose `Content-Length` is over `upstream.replay_limit` (1 MiB by default) streams
/// at once: its first part reaches the upstream before the client has sent the rest, and
/// nothing of it is held for a replay.
#[tokio::test]
async fn a_body_known_too_large_for_a_replay_streams_at_once() {
    let fake = fake(3600).await;
    let (upstream, first_rx) = first_part_upstream().await;
    let proxy = start_with(&env(&fake.token_url(), &upstream.url(), &[])).await;
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, pinecone_admin_proxy::body::BoxError>::new(4);
    let total = 2 << 20;
    let request =
        Request::post(url(&proxy, "/upload")).header("content-length", total).body(body.boxed_unsync()).unwrap();
    let client = TestClient::default();
    let pending = tokio::spawn(async move { collect(client.send(request).await).await });
    tx.send_data(Bytes::from(vec![b'a'; 64 << 10])).await.unwrap();
    let first =
        tokio::time::timeout(std::time::Duration::from_secs(5), first_rx).await.expect("first part upstream").unwrap();
    assert!(!first.is_empty() && first.len() <= 64 << 10, "the upstream got the first part before the rest was sent");
    assert_eq!(proxy.metrics.replay_memory.get(), 0, "nothing held for a replay");
    tx.send_data(Bytes::from(vec![b'b'; total - (64 << 10)])).await.unwrap();
    drop(tx);
    let (status, _, rest) = pending.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first.len() + rest.len(), total, "all of it, streamed");
}

/// An upstream that reports the first part of a request body as soon as it arrives, then
/// answers with the rest of it.
async fn first_part_upstream() -> (Upstream, oneshot::Receiver<Bytes>) {
    let (first_tx, first_rx) = oneshot::channel::<Bytes>();
    let first_tx = Arc::new(Mutex::new(Some(first_tx)));
    let upstream = Upstream::start(move |request: Request<Incoming>| {
        let first_tx = first_tx.clone();
        async move {
            let mut body = request.into_body();
            let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
            first_tx.lock().take().unwrap().send(first).unwrap();
            let rest = body.collect().await.unwrap().to_bytes();
            Response::new(full(rest))
        }
    })
    .await;
    (upstream, first_rx)
}
