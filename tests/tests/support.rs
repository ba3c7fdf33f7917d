//! Shared helpers: a proxy started in-process on port 0, a plain HTTP client, a
//! programmable upstream, and the path of the built binary.

#![allow(dead_code, unreachable_pub)]

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use pinecone_admin_proxy::app::{self, Running};
use pinecone_admin_proxy::body::{Body, empty, full};
use pinecone_admin_proxy::config::{self, Env, Flags};
use pinecone_admin_proxy::credentials::Credentials;
use pinecone_admin_proxy::fake::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, FakePinecone};
use pinecone_admin_proxy::serve::{self, Listener, Trigger};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_pinecone-admin-proxy");

pub fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub async fn fake(expires_in: u64) -> FakePinecone {
    FakePinecone::start(localhost(), expires_in).await.expect("fake starts")
}

/// The environment of a proxy that uses `token_url` and `upstream_url` with the demo
/// credentials, on port 0, plus `extra`.
pub fn env(token_url: &str, upstream_url: &str, extra: &[(&str, &str)]) -> Env {
    let mut env = Env::default();
    env.set("PINECONE_CLIENT_ID", DEMO_CLIENT_ID)
        .set("PINECONE_CLIENT_SECRET", DEMO_CLIENT_SECRET)
        .set("PINECONE_PROXY_TOKEN_URL", token_url)
        .set("PINECONE_PROXY_UPSTREAM_URL", upstream_url)
        .set("PINECONE_PROXY_LISTEN", "127.0.0.1:0")
        .set("PINECONE_PROXY_OPS_LISTEN", "127.0.0.1:0");
    for (k, v) in extra {
        env.set(k, v);
    }
    env
}

pub async fn start_with(env: &Env) -> Running {
    let config = config::load(&Flags::default(), env).expect("valid configuration");
    let credentials = Credentials::load(&config.credentials).expect("credentials");
    app::start(&config, credentials).await.expect("proxy starts")
}

/// A proxy in front of `fake` (token endpoint and upstream).
pub async fn proxy_for(fake: &FakePinecone, extra: &[(&str, &str)]) -> Running {
    start_with(&env(&fake.token_url(), &fake.api_url(), extra)).await
}

pub fn url(running: &Running, path: &str) -> String {
    format!("http://{}{path}", running.listen.tcp())
}

pub fn ops_url(running: &Running, path: &str) -> String {
    format!("http://{}{path}", running.ops.tcp())
}

/// A plain HTTP/1.1 client.
#[derive(Clone)]
pub struct TestClient(Client<HttpConnector, Body>);

impl Default for TestClient {
    fn default() -> Self {
        Self(Client::builder(TokioExecutor::new()).build(HttpConnector::new()))
    }
}

impl TestClient {
    pub async fn send(&self, request: Request<Body>) -> Response<Incoming> {
        self.0.request(request).await.expect("request sent")
    }

    pub async fn get(&self, url: &str) -> (StatusCode, HeaderMap, Bytes) {
        collect(self.send(Request::get(url).body(empty()).unwrap()).await).await
    }

    pub async fn post(&self, url: &str, body: &str) -> (StatusCode, HeaderMap, Bytes) {
        let request =
            Request::post(url).header("content-type", "application/json").body(full(body.to_owned())).unwrap();
        collect(self.send(request).await).await
    }
}

impl TestClient {
    /// `n` GETs of `url` at once; their statuses, in the order they were sent.
    pub async fn burst(&self, url: &str, n: usize) -> Vec<StatusCode> {
        let requests: Vec<_> = (0..n)
            .map(|_| {
                let (client, url) = (self.clone(), url.to_owned());
                tokio::spawn(async move { client.get(&url).await.0 })
            })
            .collect();
        let mut statuses = Vec::with_capacity(n);
        for request in requests {
            statuses.push(request.await.expect("request task"));
        }
        statuses
    }
}

pub async fn collect(response: Response<Incoming>) -> (StatusCode, HeaderMap, Bytes) {
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, body.collect().await.expect("body").to_bytes())
}

pub fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(bytes)))
}

/// An upstream whose answers a test writes. Stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    stop: Trigger,
}

impl Upstream {
    pub async fn start<F, Fut>(handler: F) -> Self
    where
        F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Trigger::default();
        let service = tower::service_fn(move |request| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(request).await) }
        });
        tokio::spawn(serve::serve(
            "test-upstream",
            Listener::Tcp(listener),
            move |_| service.clone(),
            stop.wait(),
            serve::ServeOptions::new(Duration::from_secs(1)),
        ));
        Self { addr, stop }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.fire();
    }
}

/// A loopback port that refuses connections for as long as this is held: a socket bound to
/// it that never listens. Bound, no other process can take the port meanwhile (a port bound
/// and released at once could be anyone's by the time the test connects).
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    ClosedPort { _socket: socket, port }
}

/// A certificate authority made now, and a certificate it signed for `localhost`.
pub struct TestCa {
    pub ca_pem: String,
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

pub fn test_ca(name: &str) -> TestCa {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, name);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &ca).unwrap();
    TestCa { ca_pem: ca.pem(), cert, key }
}

/// Waits (after each token request or cache read, up to `within`) until `cond` holds.
pub async fn until(
    tokens: &pinecone_admin_proxy::token::TokenSource,
    within: Duration,
    what: &str,
    cond: impl Fn(&pinecone_admin_proxy::token::TokenSource) -> bool,
) {
    let mut changed = tokens.subscribe();
    tokio::time::timeout(within, async {
        while !cond(tokens) {
            changed.changed().await.expect("engine running");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not within {within:?}: {what}: {:?}", tokens.snapshot()));
}

/// The generation of the token the engine holds (0: none yet).
pub fn generation(tokens: &pinecone_admin_proxy::token::TokenSource) -> u64 {
    tokens.snapshot().generation.unwrap_or(0)
}

/// A response the proxy made itself: the status, its `x-pinecone-proxy-error` reason and
/// Pinecone's error body.
pub fn assert_proxy_error(status: StatusCode, headers: &HeaderMap, body: &[u8], want: StatusCode, reason: &str) {
    assert_eq!(status, want, "{}", String::from_utf8_lossy(body));
    assert_eq!(headers["x-pinecone-proxy-error"], reason);
    assert_eq!(headers["content-type"], "application/json");
    let v = json(body);
    assert_eq!(v["status"], want.as_u16());
    assert!(v["error"]["code"].is_string());
    assert!(v["error"]["message"].as_str().unwrap().contains("pinecone-admin-proxy"));
}

/// Reads HTTP/2 frames (after an h2c client's PING) until a PING ACK (`true`) or the end
/// of the connection (`false`).
pub async fn until_ping_ack(stream: &mut tokio::net::TcpStream) -> bool {
    let mut head = [0u8; 9];
    loop {
        if tokio::io::AsyncReadExt::read_exact(stream, &mut head).await.is_err() {
            return false;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        if tokio::io::AsyncReadExt::read_exact(stream, &mut payload).await.is_err() {
            return false;
        }
        if head[3] == 0x6 && head[4] & 0x1 == 0x1 {
            return true;
        }
    }
}
