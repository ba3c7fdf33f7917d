//! The operations listener: health, readiness, startup, metrics, status, and the quit
//! endpoint for Kubernetes Jobs.
//!
//! None of it depends on Pinecone being reachable; readiness and startup only read the
//! token engine's state. `/status` shows fingerprints and times, never a secret or a
//! token. `POST /quitquitquit` is honoured from loopback peers only: in a pod the
//! application shares the network namespace, while anything else in the cluster that can
//! reach a non-loopback `ops_listen` (needed for kubelet probes) must not stop the proxy.

use crate::api_key::source::KeySource;
use crate::body::{Body, full};
use crate::credentials::Credentials;
use crate::metrics::Metrics;
use crate::proxy::index_host::IndexHost;
use crate::serve::Trigger;
use crate::token::TokenSource;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

/// The ops service; `peer` is the connection's remote address (`None` on a Unix socket,
/// which counts as local).
#[derive(Debug, Clone)]
pub(crate) struct Ops {
    inner: Arc<Inner>,
    peer: Option<SocketAddr>,
}

#[derive(Debug)]
struct Inner {
    tokens: TokenSource,
    keys: Option<KeySource>,
    indexes: Vec<IndexHost>,
    metrics: Arc<Metrics>,
    credentials: Credentials,
    upstream: String,
    quit: Trigger,
}

impl Ops {
    /// `sources`: the token engine, the managed key and the index hosts whose state the
    /// endpoints show.
    pub(crate) fn new(
        (tokens, keys, indexes): (TokenSource, Option<KeySource>, Vec<IndexHost>),
        metrics: Arc<Metrics>,
        credentials: Credentials,
        upstream: String,
        quit: Trigger,
    ) -> Self {
        Self { inner: Arc::new(Inner { tokens, keys, indexes, metrics, credentials, upstream, quit }), peer: None }
    }

    /// The same service, for a connection from `peer`.
    pub(crate) fn for_peer(&self, peer: Option<SocketAddr>) -> Self {
        Self { inner: self.inner.clone(), peer }
    }

    pub(crate) fn handle<B>(&self, request: &Request<B>) -> Response<Body> {
        let inner = &self.inner;
        let path = request.uri().path();
        let method = request.method();
        let get = method == Method::GET || method == Method::HEAD;
        match path {
            "/healthz" if get => text(StatusCode::OK, "ok\n"),
            "/readyz" if get => match self.not_ready_reason() {
                None => json(StatusCode::OK, &serde_json::json!({ "ready": true })),
                Some(reason) => {
                    json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({ "ready": false, "reason": reason }))
                }
            },
            "/startupz" if get => self.startup(),
            "/metrics" if get => self.metrics(),
            "/status" if get => self.status(),
            "/quitquitquit" if method == Method::POST => {
                if self.peer.is_some_and(|p| !p.ip().is_loopback()) {
                    return text(StatusCode::FORBIDDEN, "quitquitquit is accepted from loopback addresses only\n");
                }
                tracing::info!("shutdown requested on /quitquitquit");
                inner.quit.fire();
                text(StatusCode::OK, "shutting down\n")
            }
            "/healthz" | "/readyz" | "/startupz" | "/metrics" | "/status" | "/quitquitquit" => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                let allow = if path == "/quitquitquit" { "POST" } else { "GET, HEAD" };
                r.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
                r
            }
            _ => text(StatusCode::NOT_FOUND, "not found: try /healthz, /readyz, /startupz, /metrics, /status\n"),
        }
    }

    /// Why the proxy is not ready, if it is not: no usable token, or (with `[api_key]`) no
    /// usable managed key.
    fn not_ready_reason(&self) -> Option<String> {
        let inner = &self.inner;
        let index = || {
            let waiting = inner.indexes.iter().find(|i| !i.ready())?;
            let status = waiting.status();
            Some(format!(
                "the host of index {} is not known yet{}",
                status.name,
                status.last_error.map(|e| format!(": {e}")).unwrap_or_default()
            ))
        };
        inner.tokens.not_ready_reason().or_else(|| inner.keys.as_ref()?.not_ready_reason()).or_else(index)
    }

    fn startup(&self) -> Response<Body> {
        let tokens = &self.inner.tokens;
        if tokens.ever_had_token() {
            return json(StatusCode::OK, &serde_json::json!({ "started": true }));
        }
        let body = serde_json::json!({ "started": false, "reason": tokens.not_ready_reason() });
        json(StatusCode::SERVICE_UNAVAILABLE, &body)
    }

    fn metrics(&self) -> Response<Body> {
        self.inner.tokens.update_gauges();
        if let Some(keys) = &self.inner.keys {
            keys.update_gauges();
        }
        let mut r = Response::new(full(self.inner.metrics.render()));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
        r
    }

    fn status(&self) -> Response<Body> {
        let inner = &self.inner;
        let credentials = inner.credentials.current();
        let last_error = inner.credentials.last_error().map(|(e, since)| {
            serde_json::json!({
                "message": e.to_string(),
                "since": humantime::format_rfc3339_seconds(since).to_string(),
            })
        });
        json(
            StatusCode::OK,
            &serde_json::json!({
                "version": crate::VERSION,
                "upstream": inner.upstream,
                "token": inner.tokens.snapshot(),
                "api_key": inner.keys.as_ref().map(KeySource::snapshot),
                "indexes": inner.indexes.iter().map(IndexHost::status).collect::<Vec<_>>(),
                "credentials": {
                    "source": inner.credentials.describe(),
                    "generation": credentials.generation,
                    "client_id_fingerprint": credentials.client_id.fingerprint(),
                    // A file that went missing or empty: the credentials above stay in use.
                    "last_error": last_error,
                },
                "shutting_down": inner.quit.fired(),
            }),
        )
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut body = serde_json::to_vec_pretty(value).expect("json");
    body.push(b'\n');
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

impl<B> tower::Service<Request<B>> for Ops {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        std::future::ready(Ok(self.handle(&request)))
    }
}
