//! The `wait` command: polls a running proxy's `/readyz` until it answers 200 or the
//! timeout passes, for applications that cannot use Kubernetes native sidecars and must
//! not start before the proxy has a token (and, with `[api_key]`, its key). On a timeout it
//! says why: nothing listening, or the reason `/readyz` gave last.

use crate::body::{Body, empty};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// How often `/readyz` is asked.
const POLL: Duration = Duration::from_millis(200);
/// The most of a `/readyz` answer read: a reason is one line.
const MAX_ANSWER: usize = 16 * 1024;

/// Why the proxy was not ready, as the last look found it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// No connection (nothing listening, refused, unreachable).
    #[error("nothing answers at {addr} ({error}); is the proxy running, and is --ops its ops_listen?")]
    NothingListening { addr: SocketAddr, error: String },
    /// `/readyz` answered, not 200.
    #[error("/readyz answers {status}: {reason}")]
    NotReady { status: u16, reason: String },
    /// No answer at all before the deadline.
    #[error("/readyz gave no answer in time")]
    NoAnswer,
}

/// Waits until `http://{ops}/readyz` answers 200. Returns whether it did in time.
pub async fn wait_ready(ops: SocketAddr, timeout: Duration) -> bool {
    wait_until_ready(ops, timeout).await.is_ok()
}

/// Waits until `http://{ops}/readyz` answers 200, until `timeout` has passed (never less),
/// and says why not if it did not.
pub async fn wait_until_ready(ops: SocketAddr, timeout: Duration) -> Result<(), NotReady> {
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let uri: http::Uri = format!("http://{ops}/readyz").parse().expect("a socket address makes a valid URI");
    let deadline = Instant::now() + timeout;
    let mut last = NotReady::NoAnswer;
    loop {
        match tokio::time::timeout_at(deadline, look(&client, uri.clone(), ops)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(why)) => last = why,
            Err(_) => return Err(last),
        }
        if Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep_until((Instant::now() + POLL).min(deadline)).await;
    }
}

/// One look at `/readyz`.
async fn look(client: &Client<HttpConnector, Body>, uri: http::Uri, addr: SocketAddr) -> Result<(), NotReady> {
    let request = http::Request::get(uri).body(empty()).expect("valid request");
    let response = client.request(request).await.map_err(|e| {
        let error = std::error::Error::source(&e).map_or_else(|| e.to_string(), ToString::to_string);
        NotReady::NothingListening { addr, error }
    })?;
    let status = response.status();
    if status == http::StatusCode::OK {
        return Ok(());
    }
    let body = Limited::new(response.into_body(), MAX_ANSWER).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let reason = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["reason"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "no reason given".into());
    Err(NotReady::NotReady { status: status.as_u16(), reason })
}
