//! Forwarding: the request rewrite, streaming both ways, the one replay after an upstream
//! 401, and the checks that keep this from being an open proxy. Beside it:
//!
//! - [`error`]: the proxy's own errors, and the one function that makes them responses.
//! - [`headers`]: the header policy, both ways.
//! - [`key_project`]: an API key's project, looked up for the `[policy]`.
//! - [`lines`]: the access and audit lines.
//! - [`managed_key`]: control-plane requests with the managed API key.
//! - [`mod@token_shim`]: `POST /oauth/token`, answered with a placeholder.
//!
//! Everything that can be computed once (the upstream scheme and authority, the version
//! header) is, at construction. Per request: one read of the current token (no lock held
//! across an `.await`), a header rewrite in place, and the bodies passed through as
//! streams. Listening and connections are [`crate::serve`]'s business; the token's,
//! [`crate::token`]'s.

mod error;
mod headers;
pub(crate) mod index_host;
mod key_project;
mod lines;
mod managed_key;
mod token_shim;

use error::ProxyError;
use headers::{X_PINECONE_API_VERSION, rewrite_request_headers, strip_hop_by_hop};

use token_shim::token_shim;

use crate::api_key::source::{ApiKey, KeySource};
use crate::body::{Body, BoxError};
use crate::config::Limits;
use crate::config::UpstreamConfig;
use crate::metrics::{Metrics, ReplayResult};
use crate::net::is_loopback_host;
use crate::outbound::{Pool, SendError};
use crate::policy::{Decision, Policy};
use crate::replay::{Buffered, NotKept, ReplayBudget, RequestBody};
use crate::routes::{Plane, Resolved};
use crate::token::TokenSource;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use index_host::IndexHost;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_http::timeout::{TimeoutBody, TimeoutError};

/// The forwarding service. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    upstream: Pool,
    tokens: TokenSource,
    metrics: Arc<Metrics>,
    authority: Authority,
    base_path: String,
    api_version: HeaderValue,
    override_api_version: bool,
    timeout: Duration,
    replay_limit: u64,
    replay_budget: Arc<ReplayBudget>,
    body_read_timeout: Duration,
    /// `None`: everything is forwarded.
    policy: Option<Policy>,
    /// The managed key for control-plane routes; `None` without `[api_key]`.
    keys: Option<KeySource>,
    /// On an index's listener: the index's host, where every request goes.
    index: Option<IndexHost>,
    /// API key id → its project, as `fetch_api_key` said (a key never changes project), or
    /// why it could not be had, or the lookup under way.
    key_projects: key_project::KeyProjects,
}

/// What the access log line (and the audit line) says of a forwarded request.
#[derive(Debug, Default)]
pub(super) struct Outcome<'p> {
    /// The policy's reason to forward it (`None`: no policy, or not decided).
    pub(super) allowed: Option<crate::policy::Allowed<'p>>,
    pub(super) upstream_status: Option<u16>,
    pub(super) token: Option<Arc<crate::token::Token>>,
    /// The managed key the request was sent with (control-plane routes).
    pub(super) key: Option<Arc<ApiKey>>,
    pub(super) error: Option<&'static str>,
    /// Why the policy refused it.
    pub(super) refusal: Option<String>,
    pub(super) replayed: bool,
}

/// What a replay needs of a request: its method, target, headers and body, or why its
/// body was not kept.
type Kept = Result<(Method, Uri, HeaderMap, Buffered), NotKept>;

/// What a replay is sent with.
pub(super) enum Renewed {
    Token(Arc<crate::token::Token>),
    Key(Arc<ApiKey>),
}

/// Counts a request as in flight until dropped, so a cancelled request is not leaked.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

impl Proxy {
    pub(crate) fn new(
        upstream: Pool,
        tokens: TokenSource,
        metrics: Arc<Metrics>,
        cfg: &UpstreamConfig,
        limits: &Limits,
        policy: Option<Policy>,
        keys: Option<KeySource>,
    ) -> Self {
        let replay_budget = ReplayBudget::shown_in(limits.replay_memory, metrics.replay_memory.clone());
        Self {
            inner: Arc::new(Inner {
                upstream,
                tokens,
                metrics,
                authority: cfg.authority.clone(),
                base_path: cfg.base_path.clone(),
                api_version: cfg.api_version.clone(),
                override_api_version: cfg.override_api_version,
                timeout: cfg.timeout,
                replay_limit: cfg.replay_limit,
                replay_budget,
                body_read_timeout: limits.body_read_timeout,
                policy,
                keys,
                index: None,
                key_projects: key_project::KeyProjects::default(),
            }),
        }
    }

    /// The same proxy (metrics, limits, replay budget, policy, managed key) for an index's
    /// listener: every request goes to `host`.
    pub(crate) fn for_index(&self, host: IndexHost) -> Self {
        let i = &self.inner;
        Self {
            inner: Arc::new(Inner {
                upstream: i.upstream.clone(),
                tokens: i.tokens.clone(),
                metrics: i.metrics.clone(),
                authority: i.authority.clone(),
                base_path: i.base_path.clone(),
                api_version: i.api_version.clone(),
                override_api_version: i.override_api_version,
                timeout: i.timeout,
                replay_limit: i.replay_limit,
                replay_budget: i.replay_budget.clone(),
                body_read_timeout: i.body_read_timeout,
                policy: i.policy.clone(),
                keys: i.keys.clone(),
                index: Some(host),
                key_projects: key_project::KeyProjects::default(),
            }),
        }
    }

    /// Answers one request: forwards it, or answers it with a proxy error. It owns the
    /// proxy, so that the service's future is this one, boxed.
    async fn respond<B>(self, request: Request<B>) -> Result<Response<Body>, Infallible>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &self.inner;
        let start = Instant::now();
        inner.metrics.inflight.inc();
        let _inflight = InFlight(&inner.metrics);
        let method = request.method().clone();
        // A clone of the URI shares its bytes with the request: no copy of the path.
        let uri = request.uri().clone();
        let path = uri.path();
        let resolved = crate::routes::resolve(&method, path);
        let grpc = error::is_grpc(request.headers());
        let mut outcome = Outcome::default();
        let response = match self.forward(request, &resolved, &mut outcome).await {
            Ok(response) => response,
            Err(error) => self.failed(error, &method, (path, grpc), &mut outcome),
        };
        let elapsed = start.elapsed();
        inner.metrics.request(&method, response.status(), resolved.operation());
        inner.metrics.request_duration.observe(elapsed.as_secs_f64());
        // The token shim's placeholder changes nothing and never leaves the proxy.
        let shim = method == Method::POST && path == "/oauth/token";
        let reads = crate::routes::READS_BY_POST.contains(&resolved.operation());
        if !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) && !shim && !reads {
            self.audit(&method, &resolved, &outcome, &response, elapsed);
        }
        Self::access(&method, path, &resolved, &outcome, &response, elapsed);
        Ok(response)
    }

    async fn forward<'p, B>(
        &'p self,
        request: Request<B>,
        resolved: &Resolved<'_>,
        outcome: &mut Outcome<'p>,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &self.inner;
        let (mut parts, body) = request.into_parts();
        self.check_target(&parts.method, &parts.uri, parts.version)?;
        let index = inner.index.is_some();
        if !index && parts.method == Method::POST && parts.uri.path() == "/oauth/token" {
            return Box::pin(token_shim(body, inner.body_read_timeout)).await;
        }
        if let Some(policy) = &inner.policy {
            // Before any token or body: a refused request costs nothing upstream.
            let decision = match policy.decide(resolved) {
                Decision::KeyProject(allowed) => Box::pin(self.decide_key(policy, resolved, allowed)).await,
                decision => decision,
            };
            match decision {
                Decision::Allowed(allowed) => outcome.allowed = Some(allowed),
                Decision::Refused(why) => return Err(ProxyError::Forbidden(why)),
                Decision::KeyProject(_) => unreachable!("decide_key decides"),
            }
        }

        if let (Some(host), Some(keys)) = (&inner.index, &inner.keys) {
            // Every gRPC method of the data plane is unary; one of no specification may stream.
            let limit =
                if error::is_grpc(&parts.headers) && resolved.route().is_none() { 0 } else { inner.replay_limit };
            return Box::pin(self.forward_index(parts, body, (keys, host, limit), outcome)).await;
        }
        if resolved.route().is_some_and(|r| r.plane == Plane::Control) {
            return match &inner.keys {
                Some(keys) => Box::pin(self.forward_managed_key(parts, body, keys, outcome)).await,
                None => Box::pin(self.forward_own_key(parts, body, resolved)).await,
            };
        }
        let token = inner.tokens.get().await?;
        outcome.token = Some(token.clone());
        let admin_route = is_admin_path(parts.uri.path());
        parts.uri = self.upstream_uri(&parts.uri)?;
        parts.version = Version::HTTP_11;
        rewrite_request_headers(
            &mut parts.headers,
            token.authorization(),
            &inner.api_version,
            inner.override_api_version,
        );
        let (response, replay) = self.send_replayable(&inner.upstream, (parts, inner.replay_limit), body).await?;
        outcome.upstream_status = Some(response.status().as_u16());
        if response.status() != StatusCode::UNAUTHORIZED || !admin_route {
            // A 401 outside the Admin API (the control plane's `Invalid API key` for a
            // bearer token) is not the token's fault: a new one would cure nothing and
            // only spend the token quota. It goes back as it came.
            return Ok(finish(response));
        }

        // Rare, and as large as all the rest: boxed out of every request's future.
        inner.metrics.upstream_unauthorized.inc();
        inner.tokens.invalidate(token.generation);
        let renew = async { inner.tokens.newer_than(token.generation).await.ok().map(Renewed::Token) };
        Box::pin(self.replay(&inner.upstream, response, replay, outcome, renew)).await
    }

    /// Sends a request whose body is kept for a replay if it may be (within
    /// `upstream.replay_limit` and `limits.replay_memory`), or streams otherwise; answers
    /// the response and what a replay needs.
    /// `limit`: the most kept (`upstream.replay_limit`; 0 to stream at once: a gRPC method
    /// not known to be unary may be a stream whose end never comes before its answer).
    async fn send_replayable<B>(
        &self,
        pool: &Pool,
        (parts, limit): (http::request::Parts, u64),
        body: B,
    ) -> Result<(Response<Body>, Kept), ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &self.inner;
        // Most Admin API requests have no body; reading one is boxed out of their future.
        let stalled = Arc::new(AtomicBool::new(false));
        let body = match body.is_end_stream() {
            true => RequestBody::Buffered(Buffered::default()),
            false => Box::pin(self.read_body(body, limit, stalled.clone())).await?,
        };
        let (body, kept) = body.into_parts();
        let streaming = kept.is_err();
        // What a replay needs of the request; the headers are copied only if the body
        // could be replayed at all.
        let replay = kept.map(|kept| (parts.method.clone(), parts.uri.clone(), parts.headers.clone(), kept));
        let response = self.send_on(pool, Request::from_parts(parts, body), streaming).await.map_err(|e| {
            if stalled.load(Ordering::Relaxed) { ProxyError::BodyTimeout(inner.body_read_timeout) } else { e }
        })?;
        Ok((response, replay))
    }

    /// A control-plane request, without a managed key: the client's own `Api-Key` goes
    /// upstream unchanged, and no bearer token of ours with it (the control plane takes API
    /// keys only); without one, `403 api_key_not_configured`, no token used, nothing sent. A
    /// `401` is the client's key's and goes back as it came; the body streams.
    async fn forward_own_key<B>(
        &self,
        mut parts: http::request::Parts,
        body: B,
        resolved: &Resolved<'_>,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &self.inner;
        if parts.headers.get("api-key").is_none_or(|v| v.is_empty()) {
            return Err(ProxyError::ApiKeyNotConfigured { operation: resolved.operation() });
        }
        parts.uri = self.upstream_uri(&parts.uri)?;
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.entry(X_PINECONE_API_VERSION.clone()).or_insert_with(|| inner.api_version.clone());
        let streaming = !body.is_end_stream();
        // The flag tells a client's stall apart once hyper's client has wrapped it.
        let stalled = Arc::new(AtomicBool::new(false));
        let flag = stalled.clone();
        let body = TimeoutBody::new(inner.body_read_timeout, body).map_err(move |e| {
            if e.is::<TimeoutError>() {
                flag.store(true, Ordering::Relaxed);
            }
            e
        });
        let request = Request::from_parts(parts, body.boxed_unsync());
        let response = self.send_streaming(request, streaming).await.map_err(|e| {
            if stalled.load(Ordering::Relaxed) { ProxyError::BodyTimeout(inner.body_read_timeout) } else { e }
        })?;
        Ok(finish(response))
    }

    /// Reads a request body for a possible replay, or as much of it as may be kept before it
    /// streams. `stalled` is set when the client stalls, so that the error is told apart
    /// once hyper's client has wrapped it (a stall while the body streams upstream).
    async fn read_body<B>(&self, body: B, limit: u64, stalled: Arc<AtomicBool>) -> Result<RequestBody, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &self.inner;
        // Taken before the timeout wraps the body: tower-http's TimeoutBody does not pass the
        // size on, and a body known too large for a replay must stream at once.
        let hint = http_body::Body::size_hint(&body);
        let flag = stalled.clone();
        // tower-http's timeout between frames.
        let body = TimeoutBody::new(inner.body_read_timeout, body).map_err(move |e| {
            if e.is::<TimeoutError>() {
                flag.store(true, Ordering::Relaxed);
            }
            e
        });
        RequestBody::read(body, hint, limit, &inner.replay_budget).await.map_err(|e| {
            if stalled.load(Ordering::Relaxed) {
                return ProxyError::BodyTimeout(inner.body_read_timeout);
            }
            ProxyError::bad_request(StatusCode::BAD_REQUEST, format!("the request body could not be read: {e}"))
        })
    }

    /// After an upstream 401 (the caller has reported the credential stale): the request is
    /// sent once more with what `renew` gives (one new token, or one new key, for every
    /// request that saw the old one rejected), if its body was kept. A second 401 goes back
    /// to the client: the credential was just made, and another would only spend a quota.
    async fn replay(
        &self,
        pool: &Pool,
        response: Response<Body>,
        replay: Kept,
        outcome: &mut Outcome<'_>,
        renew: impl Future<Output = Option<Renewed>>,
    ) -> Result<Response<Body>, ProxyError> {
        let inner = &self.inner;
        let (method, uri, mut headers, kept) = match replay {
            Ok(replay) => replay,
            Err(why) => {
                inner.metrics.replay(match why {
                    NotKept::TooLarge => ReplayResult::TooLarge,
                    NotKept::NoBudget => ReplayResult::NoBudget,
                });
                return Ok(finish(response));
            }
        };
        let Some(fresh) = renew.await else {
            inner.metrics.replay(ReplayResult::NoToken);
            return Ok(finish(response));
        };
        drop(response);
        let token = match fresh {
            Renewed::Token(token) => {
                headers.insert(header::AUTHORIZATION, token.authorization().clone());
                outcome.token = Some(token);
                true
            }
            Renewed::Key(key) => {
                headers.insert(headers::API_KEY.clone(), key.header().clone());
                outcome.key = Some(key);
                false
            }
        };
        let mut request = Request::new(kept.to_body());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        outcome.replayed = true;
        let response = self.send_on(pool, request, false).await?;
        outcome.upstream_status = Some(response.status().as_u16());
        if response.status() == StatusCode::UNAUTHORIZED {
            if token {
                inner.metrics.upstream_unauthorized.inc();
            }
            inner.metrics.replay(ReplayResult::Unauthorized);
        } else {
            inner.metrics.replay(ReplayResult::Success);
        }
        Ok(finish(response))
    }

    /// Sends one request upstream, waiting at most `upstream.timeout` for the headers.
    async fn send(&self, request: Request<Body>) -> Result<Response<Body>, ProxyError> {
        self.send_streaming(request, false).await
    }

    /// [`Proxy::send`] for a request whose body may stream from the client.
    async fn send_streaming(&self, request: Request<Body>, streaming: bool) -> Result<Response<Body>, ProxyError> {
        self.send_on(&self.inner.upstream, request, streaming).await
    }

    /// Sends one request on `pool` (the API's, or an index host's).
    async fn send_on(
        &self,
        pool: &Pool,
        request: Request<Body>,
        streaming: bool,
    ) -> Result<Response<Body>, ProxyError> {
        let inner = &self.inner;
        pool.send(request, inner.timeout, streaming).await.map_err(|e| match e {
            SendError::Timeout => ProxyError::UpstreamTimeout(inner.timeout),
            SendError::Unreachable(e) => ProxyError::UpstreamUnreachable(e),
        })
    }

    /// Not an open proxy: no `CONNECT`, and an absolute-form target (HTTP/1) must name
    /// the upstream or this proxy itself. HTTP/2 always carries `:authority`, which plays
    /// the part of `Host`, so only HTTP/1 absolute forms are judged.
    fn check_target(&self, method: &Method, uri: &Uri, version: Version) -> Result<(), ProxyError> {
        // In any letter case: `trace` is an extension method to hyper, but a server that
        // folds case would answer it as TRACE.
        if method.as_str().eq_ignore_ascii_case("CONNECT") {
            return Err(ProxyError::bad_request(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported: this proxy only forwards to the Pinecone API",
            ));
        }
        if method.as_str().eq_ignore_ascii_case("TRACE") {
            // A hop that answers TRACE echoes the request back: with the bearer token in it.
            return Err(ProxyError::bad_request(
                StatusCode::METHOD_NOT_ALLOWED,
                "TRACE is not forwarded: its echo would carry the proxy's access token",
            ));
        }
        if version < Version::HTTP_2
            && let Some(authority) = uri.authority()
        {
            let host = authority.host();
            if !host.eq_ignore_ascii_case(self.inner.authority.host()) && !is_loopback_host(host) {
                return Err(ProxyError::bad_request(
                    StatusCode::BAD_REQUEST,
                    format!("request target names another host ({host}); this proxy only forwards to the Pinecone API"),
                ));
            }
        }
        Ok(())
    }

    /// The request target for the upstream, in origin form: the base path, then the
    /// client's path and query byte for byte. ([`Pool`] adds the scheme and authority
    /// where HTTP/2 needs them, and `Host` for HTTP/1.1.)
    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, ProxyError> {
        let inner = &self.inner;
        let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let path_and_query = if inner.base_path.is_empty() {
            uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"))
        } else {
            PathAndQuery::try_from(format!("{}{pq}", inner.base_path))
                .map_err(|_| ProxyError::bad_request(StatusCode::BAD_REQUEST, "invalid request target"))?
        };
        Ok(Uri::from(path_and_query))
    }
}

/// Whether `path` is the Admin API's (`/admin/…`): the only routes where a 401 can mean
/// that the bearer token is stale. Any other path on the host (the control plane,
/// inference, assistants) takes an API key and rejects a bearer token with 401 however
/// fresh it is.
fn is_admin_path(path: &str) -> bool {
    path.strip_prefix("/admin").is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The upstream's response as the client gets it: hop-by-hop headers out, body streamed.
fn finish(mut response: Response<Body>) -> Response<Body> {
    strip_hop_by_hop(response.headers_mut());
    response
}

impl<B> tower::Service<Request<B>> for Proxy
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        Box::pin(self.clone().respond(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_admin_paths_are_admin_routes() {
        for (path, admin) in [
            ("/admin/projects", true),
            ("/admin", true),
            ("/admin/", true),
            ("/indexes", false),
            ("/administrators", false),
            ("/assistant/assistants", false),
            ("/", false),
        ] {
            assert_eq!(is_admin_path(path), admin, "{path}");
        }
    }
}
