//! An HTTPS upstream and token endpoint whose certificate comes from a CA made at test
//! time, trusted through `upstream.ca_file`; HTTP/2 negotiated by ALPN, or HTTP/1.1 where
//! the upstream offers only that.

use crate::support::*;
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use pinecone_admin_proxy::fake;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

struct TlsFake {
    port: u16,
    ca_pem: String,
    alpn: Arc<Mutex<Vec<String>>>,
    fake: fake::FakePinecone,
    /// The certificate for `localhost` and its key, with the ALPN protocols offered.
    acceptor: tokio_rustls::TlsAcceptor,
}

/// The fake Pinecone's service behind TLS on `localhost`, with a fresh CA, offering the
/// given ALPN protocols.
async fn tls_fake(protocols: &[&[u8]]) -> TlsFake {
    let TestCa { ca_pem, cert, key } = test_ca("pinecone-admin-proxy test CA");

    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
        .unwrap();
    config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let tls = acceptor.clone();

    let plain = fake(3600).await;
    let service = fake::Service::new(plain.state().clone());
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let alpn = Arc::new(Mutex::new(Vec::new()));
    let seen = alpn.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, service, seen) = (acceptor.clone(), service.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let protocol = tls.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
                seen.lock().push(protocol.unwrap_or_default());
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(service))
                    .await;
            });
        }
    });
    TlsFake { port, ca_pem, alpn, fake: plain, acceptor: tls }
}

/// A TLS front for `backend` (an index's plain data plane) with `tls`'s certificate: each
/// connection's TLS is ended here and its bytes relayed. Answers the port and the ALPN
/// protocol each connection chose.
async fn tls_front(tls: &TlsFake, backend: String) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let alpn = Arc::new(Mutex::new(Vec::new()));
    let (seen, acceptor) = (alpn.clone(), tls.acceptor.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, seen, backend) = (acceptor.clone(), seen.clone(), backend.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let protocol = tls.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
                seen.lock().push(protocol.unwrap_or_default());
                let mut plain = tokio::net::TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, alpn)
}

/// A proxy whose token endpoint and upstream are `tls`, trusting its CA through
/// `upstream.ca_file`.
async fn proxy_trusting(tls: &TlsFake) -> pinecone_admin_proxy::app::Running {
    proxy_trusting_with(tls, &[]).await
}

/// [`proxy_trusting`], with more of the environment.
async fn proxy_trusting_with(tls: &TlsFake, extra: &[(&str, &str)]) -> pinecone_admin_proxy::app::Running {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &tls.ca_pem).unwrap();
    let base = format!("https://localhost:{}", tls.port);
    // The file is read at start; the directory may go when this returns.
    let mut env_vars = vec![("PINECONE_PROXY_UPSTREAM_CA_FILE", ca_file.to_str().unwrap())];
    env_vars.extend_from_slice(extra);
    start_with(&env(&format!("{base}/oauth/token"), &base, &env_vars)).await
}

#[tokio::test]
async fn https_upstream_trusted_through_ca_file_speaks_h2() {
    let tls = tls_fake(&[b"h2", b"http/1.1"]).await;
    let proxy = proxy_trusting(&tls).await;
    let (status, _, body) = TestClient::default().get(&url(&proxy, "/admin/projects")).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["data"][0]["name"], "demo-project");
    let alpn = tls.alpn.lock().clone();
    assert!(!alpn.is_empty() && alpn.iter().all(|p| p == "h2"), "ALPN chose HTTP/2: {alpn:?}");
    // One connection, kept alive: the token request and forwarding share the host's HTTP/2
    // connection (one outbound stack).
    let connections = tls.alpn.lock().len();
    assert_eq!(connections, 1);
    for path in ["/admin/organizations", "/admin/projects", "/admin/organizations"] {
        assert_eq!(TestClient::default().get(&url(&proxy, path)).await.0, StatusCode::OK);
    }
    assert_eq!(tls.alpn.lock().len(), connections, "no new connection: the HTTP/2 one is reused");
}

#[tokio::test]
async fn concurrent_first_requests_share_one_http2_connection() {
    // The token from the same fake over plain HTTP (another host to the proxy), so that the
    // burst's requests are the first to this one.
    let tls = tls_fake(&[b"h2", b"http/1.1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &tls.ca_pem).unwrap();
    let upstream = format!("https://localhost:{}", tls.port);
    let ca = [("PINECONE_PROXY_UPSTREAM_CA_FILE", ca_file.to_str().unwrap())];
    let proxy = start_with(&env(&tls.fake.token_url(), &upstream, &ca)).await;
    proxy.tokens.get().await.unwrap();
    assert!(tls.alpn.lock().is_empty(), "no connection to the upstream before the burst");
    let client = TestClient::default();
    assert!(client.burst(&url(&proxy, "/admin/projects"), 20).await.iter().all(|s| *s == StatusCode::OK));
    assert_eq!(tls.alpn.lock().clone(), ["h2"], "one TLS handshake for the burst");
}

#[tokio::test]
async fn an_https_upstream_offering_only_http1_gets_kept_alive_http1_over_tls() {
    let tls = tls_fake(&[b"http/1.1"]).await;
    let proxy = proxy_trusting(&tls).await;
    let client = TestClient::default();
    let (status, _, body) = client.get(&url(&proxy, "/admin/projects")).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["data"][0]["name"], "demo-project");
    // A body goes up and comes back through rustls.
    let (status, _, body) = client.post(&url(&proxy, "/admin/projects"), r#"{"name": "over-tls"}"#).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["name"], "over-tls");
    let (_, _, body) = client.get(&url(&proxy, "/admin/projects")).await;
    assert_eq!(json(&body)["data"].as_array().unwrap().len(), 2);
    let alpn = tls.alpn.lock().clone();
    assert_eq!(alpn, ["http/1.1"], "the token's connection, kept alive, serves the forwarded requests one by one");
}

#[tokio::test]
async fn an_untrusted_certificate_is_502_upstream_unreachable() {
    let tls = tls_fake(&[b"h2", b"http/1.1"]).await;
    let plain = fake(3600).await;
    let proxy = start_with(&env(&plain.token_url(), &format!("https://localhost:{}", tls.port), &[])).await;
    let (status, headers, body) = TestClient::default().get(&url(&proxy, "/admin/projects")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-pinecone-proxy-error"], "upstream_unreachable");
    let message = json(&body)["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.to_lowercase().contains("certificate"), "{message}");
}

/// An index whose host is behind TLS (as Pinecone's are): its data plane gets HTTP/2 by ALPN,
/// one connection for REST and gRPC alike, with the managed key.
#[tokio::test]
async fn an_index_host_over_tls_is_spoken_to_in_http2_by_alpn_for_rest_and_grpc() {
    use http_body_util::BodyExt;
    use pinecone_admin_proxy::body::full;
    let tls = tls_fake(&[b"h2", b"http/1.1"]).await;
    let plain = tls.fake.state().create_index("docs", 2).unwrap();
    let (port, alpn) = tls_front(&tls, plain).await;
    assert!(tls.fake.state().set_index_host("docs", &format!("localhost:{port}")));
    let project = tls.fake.state().project_id();
    let env = [("PINECONE_PROXY_API_KEY_PROJECT_ID", project.as_str()), ("PINECONE_PROXY_INDEXES", "docs=127.0.0.1:0")];
    let proxy = proxy_trusting_with(&tls, &env).await;
    assert!(pinecone_admin_proxy::wait::wait_ready(proxy.ops.tcp(), std::time::Duration::from_secs(10)).await);
    let base = format!("http://{}", proxy.indexes[0].1.tcp());

    let (status, _, body) = TestClient::default().post(&format!("{base}/describe_index_stats"), "{}").await;
    assert_eq!((status, json(&body)["dimension"].as_u64()), (StatusCode::OK, Some(2)));
    let client: hyper_util::client::legacy::Client<_, pinecone_admin_proxy::body::Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    // DescribeIndexStats with an empty request message.
    let call = http::Request::post(format!("{base}/VectorService/DescribeIndexStats"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(vec![0u8; 5]))
        .unwrap();
    let collected = client.request(call).await.unwrap().into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(alpn.lock().clone(), ["h2"], "one TLS connection to the index host, HTTP/2 by ALPN");
}
