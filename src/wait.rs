//! The `wait` command: polls a running proxy's `/readyz` until it answers 200 or the
//! timeout passes, for applications that cannot use Kubernetes native sidecars and must
//! not start before the proxy has a token.

use crate::body::{Body, empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// How often `/readyz` is asked.
const POLL: Duration = Duration::from_millis(200);

/// Waits until `http://{ops}/readyz` answers 200. Returns whether it did in time.
pub async fn wait_ready(ops: SocketAddr, timeout: Duration) -> bool {
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let uri: http::Uri = format!("http://{ops}/readyz").parse().expect("a socket address makes a valid URI");
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(true) = tokio::time::timeout_at(deadline, ready_once(&client, uri.clone())).await {
            return true;
        }
        if Instant::now() + POLL >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn ready_once(client: &Client<HttpConnector, Body>, uri: http::Uri) -> bool {
    let request = http::Request::get(uri).body(empty()).expect("valid request");
    matches!(client.request(request).await, Ok(r) if r.status() == http::StatusCode::OK)
}
