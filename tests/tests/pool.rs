//! The upstream connection pool, seen from the upstream's side of real sockets, through the
//! whole proxy: how many connections it opens, when it sends a request again, and when it
//! does not reuse one. (How many idle ones it keeps is tested in `src/outbound/pool.rs`,
//! with short idle limits.)

use crate::support::*;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Barrier, watch};

/// An HTTP/1.1 upstream that holds every request until `together` have arrived, and
/// reports how many of its connections are open.
async fn gathering_upstream(together: usize) -> (String, Arc<AtomicU64>, watch::Receiver<i64>) {
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let (open_tx, open) = watch::channel(0i64);
    let barrier = Arc::new(Barrier::new(together));
    let count = accepted.clone();
    tokio::spawn(async move {
        let open_tx = Arc::new(open_tx);
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            open_tx.send_modify(|n| *n += 1);
            let (barrier, open_tx) = (barrier.clone(), open_tx.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let barrier = barrier.clone();
                    async move {
                        if request.uri().path() == "/together" {
                            barrier.wait().await;
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(pinecone_admin_proxy::body::full("ok")))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                open_tx.send_modify(|n| *n -= 1);
            });
        }
    });
    (format!("http://{addr}"), accepted, open)
}

#[tokio::test]
async fn a_flood_of_requests_opens_no_more_than_max_connections() {
    let fake = fake(3600).await;
    // The upstream answers four at a time: with room for four connections, twenty requests
    // go through four, each waiting for one to come back.
    let (upstream, accepted, _) = gathering_upstream(4).await;
    let proxy =
        start_with(&env(&fake.token_url(), &upstream, &[("PINECONE_PROXY_UPSTREAM_MAX_CONNECTIONS", "4")])).await;
    let client = TestClient::default();
    assert!(client.burst(&url(&proxy, "/together"), 20).await.iter().all(|s| *s == StatusCode::OK));
    assert_eq!(accepted.load(Ordering::SeqCst), 4, "never more than upstream.max_connections");
}

/// Reads from `stream` until `pending` holds a whole request head (bodiless requests
/// only), and takes it out; `None` when the peer closes first.
async fn read_head(stream: &mut tokio::net::TcpStream, pending: &mut Vec<u8>) -> Option<()> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            return Some(());
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// An upstream that reads one request per connection, counts it, and closes the connection
/// without answering.
async fn vanishing_upstream() -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                if read_head(&mut stream, &mut pending).await.is_none() {
                    return;
                }
                count.fetch_add(1, Ordering::SeqCst);
                // Gone, with the request in hand and no answer.
            });
        }
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn a_request_written_to_a_connection_that_dies_is_never_sent_again() {
    let fake = fake(3600).await;
    let (upstream, seen) = vanishing_upstream().await;
    let proxy = start_with(&env(&fake.token_url(), &upstream, &[])).await;
    let client = TestClient::default();
    let (status, headers, _) = client.get(&url(&proxy, "/admin/projects")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-pinecone-proxy-error"], "upstream_unreachable");
    assert_eq!(seen.load(Ordering::SeqCst), 1, "a GET that was written goes once");
    let (status, _, _) = client.post(&url(&proxy, "/admin/projects"), r#"{"name":"once"}"#).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(seen.load(Ordering::SeqCst), 2, "a POST that was written goes once");
}

#[tokio::test]
async fn a_response_framed_by_both_length_and_chunks_does_not_reuse_its_connection() {
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let answer =
                    "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
                while read_head(&mut stream, &mut pending).await.is_some() {
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let fake = fake(3600).await;
    let proxy = start_with(&env(&fake.token_url(), &format!("http://{addr}"), &[])).await;
    let client = TestClient::default();
    for _ in 0..3 {
        let (status, headers, body) = client.get(&url(&proxy, "/twice-framed")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(!headers.contains_key("content-length"), "the length that contradicts the chunks is not forwarded");
        assert_eq!(&body[..], b"hello", "decoded as chunked (RFC 9112 §6.3)");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "each such response costs its connection");
}

/// Slow streaming uploads may hold at most three of four upstream connections: a plain
/// request still gets a connection, and a 200, while six uploads stall.
#[tokio::test]
async fn slow_uploads_never_take_the_last_connections() {
    use bytes::Bytes;
    use http_body_util::BodyExt;
    let fake = fake(3600).await;
    let (started_tx, mut started) = watch::channel(0u64);
    let started_tx = Arc::new(started_tx);
    let upstream = Upstream::start(move |request: Request<Incoming>| {
        let started_tx = started_tx.clone();
        async move {
            if request.method() == http::Method::POST {
                let mut body = request.into_body();
                let _first = body.frame().await;
                started_tx.send_modify(|n| *n += 1);
                let _ = body.collect().await;
            }
            Response::new(pinecone_admin_proxy::body::full("ok"))
        }
    })
    .await;
    let proxy = start_with(&env(
        &fake.token_url(),
        &upstream.url(),
        &[
            ("PINECONE_PROXY_UPSTREAM_MAX_CONNECTIONS", "4"),
            ("PINECONE_PROXY_UPSTREAM_REPLAY_LIMIT", "0"),
            ("PINECONE_PROXY_UPSTREAM_TIMEOUT", "10s"),
        ],
    ))
    .await;
    let client = TestClient::default();
    let mut senders = Vec::new();
    let mut uploads = Vec::new();
    for _ in 0..6 {
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, pinecone_admin_proxy::body::BoxError>::new(1);
        let request = Request::post(url(&proxy, "/upload")).body(body.boxed_unsync()).unwrap();
        let client = client.clone();
        uploads.push(tokio::spawn(async move { client.send(request).await.status() }));
        tx.send_data(Bytes::from_static(b"first part of a body that never ends")).await.unwrap();
        senders.push(tx);
    }
    tokio::time::timeout(Duration::from_secs(10), started.wait_for(|n| *n >= 3))
        .await
        .expect("three uploads reach the upstream")
        .unwrap();
    let (status, _, _) = client.get(&url(&proxy, "/admin/projects")).await;
    assert_eq!(status, StatusCode::OK, "a plain request is served while uploads hold their share");
    assert_eq!(*started.borrow(), 3, "the other three uploads wait for the share, not for the last connection");
    drop(senders);
    for upload in uploads {
        assert_eq!(upload.await.unwrap(), StatusCode::OK, "each upload is sent in its turn");
    }
}
