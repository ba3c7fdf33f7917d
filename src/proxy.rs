//! Forwarding: the request rewrite, the header policy, streaming both ways, the SDK token
//! shim, and the one function that turns the proxy's own errors into responses.
//!
//! Everything that can be computed once (the upstream scheme and authority, the version
//! header) is, at construction. Per request: one read of the current token (no lock held
//! across an `.await`), a header rewrite in place, and the bodies passed through as
//! streams. Listening and connections are [`crate::serve`]'s business; the token's,
//! [`crate::token`]'s.

use crate::body::{Body, BoxError, full};
use crate::config::Limits;
use crate::config::UpstreamConfig;
use crate::metrics::{Metrics, ReplayResult};
use crate::net::is_loopback_host;
use crate::policy::{Decision, Policy, Resolved};
use crate::replay::{Buffered, NotKept, ReplayBudget, RequestBody};
use crate::token::{TokenSource, TokenUnavailable};
use crate::upstream::{SendError, Upstream};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower_http::timeout::{TimeoutBody, TimeoutError};

/// The header that marks an error the proxy made itself, with its reason.
pub(crate) const ERROR_HEADER: &str = "x-pinecone-proxy-error";
static X_PINECONE_API_VERSION: HeaderName = HeaderName::from_static("x-pinecone-api-version");

/// An error the proxy answers itself. Each variant is one `x-pinecone-proxy-error` reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no usable Pinecone access token; the next token request is due in {}s", retry_after.as_secs())]
    TokenUnavailable { retry_after: Duration },
    #[error(
        "the Pinecone token endpoint rejects the proxy's credentials and no usable token is left; see the proxy's /status and logs"
    )]
    CredentialsRejected,
    #[error("cannot reach the Pinecone API: {0}")]
    UpstreamUnreachable(String),
    #[error("the Pinecone API sent no response headers within {}", humantime::format_duration(*.0))]
    UpstreamTimeout(Duration),
    #[error("{message}")]
    BadRequest { status: StatusCode, message: String },
    #[error("the request body stalled: no data for {} (limits.body_read_timeout)", humantime::format_duration(*.0))]
    BodyTimeout(Duration),
    #[error("refused by policy: {0}")]
    Forbidden(String),
}

impl ProxyError {
    /// The `x-pinecone-proxy-error` reason.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ProxyError::TokenUnavailable { .. } => "token_unavailable",
            ProxyError::CredentialsRejected => "credentials_rejected",
            ProxyError::UpstreamUnreachable(_) => "upstream_unreachable",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::BadRequest { .. } => "bad_request",
            ProxyError::BodyTimeout(_) => "body_timeout",
            ProxyError::Forbidden(_) => "forbidden_by_policy",
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::TokenUnavailable { .. } | ProxyError::CredentialsRejected => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest { status, .. } => *status,
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// Pinecone's error code for the body.
    fn code(&self) -> &'static str {
        match self {
            ProxyError::TokenUnavailable { .. }
            | ProxyError::CredentialsRejected
            | ProxyError::UpstreamUnreachable(_) => "UNAVAILABLE",
            ProxyError::UpstreamTimeout(_) | ProxyError::BodyTimeout(_) => "DEADLINE_EXCEEDED",
            ProxyError::BadRequest { .. } => "INVALID_ARGUMENT",
            ProxyError::Forbidden(_) => "PERMISSION_DENIED",
        }
    }

    fn bad_request(status: StatusCode, message: impl Into<String>) -> Self {
        ProxyError::BadRequest { status, message: message.into() }
    }
}

impl From<TokenUnavailable> for ProxyError {
    fn from(e: TokenUnavailable) -> Self {
        match e {
            TokenUnavailable::Timeout { retry_after } => ProxyError::TokenUnavailable { retry_after },
            TokenUnavailable::CredentialsRejected => ProxyError::CredentialsRejected,
        }
    }
}

/// The one place a [`ProxyError`] becomes a response: Pinecone's error body,
/// `{"error": {"code", "message"}, "status"}`, and the `x-pinecone-proxy-error` header.
pub(crate) fn error_response(error: &ProxyError) -> Response<Body> {
    let status = error.status();
    let body = serde_json::json!({
        "error": { "code": error.code(), "message": format!("pinecone-admin-proxy: {error}") },
        "status": status.as_u16(),
    });
    let mut response = Response::new(full(serde_json::to_vec(&body).expect("json")));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(ERROR_HEADER, HeaderValue::from_static(error.reason()));
    if let ProxyError::TokenUnavailable { retry_after } = error {
        h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(header::ALLOW, HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"));
    }
    response
}

/// Removes the connection-specific headers (RFC 9110 §7.6.1) and those named in
/// `Connection`, from a request or a response. `TE: trailers` is kept: it is end-to-end in
/// meaning, and hyper sends HTTP/1.1 trailers only to a peer that announced it.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Almost no request or response carries one: one pass over the names decides, where
    // removing nine names costs about 3,400 instructions a request (bench/profile).
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if name != header::TE {
            headers.remove(&name);
        }
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove(header::MAX_FORWARDS);
    for name in METHOD_OVERRIDES {
        headers.remove(name);
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers"))));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The connection-specific header names (RFC 9110 §7.6.1, and the older `Keep-Alive`,
/// `Proxy-Connection`, `Proxy-Authorization` and `Proxy-Authenticate`), `Max-Forwards`
/// (it is for TRACE and OPTIONS, and a hop that answers when it reaches 0 would answer in
/// Pinecone's name), and the [`METHOD_OVERRIDES`].
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::MAX_FORWARDS,
    ]
    .contains(name)
        || matches!(name.as_str(), "keep-alive" | "proxy-connection")
        || METHOD_OVERRIDES.contains(&name.as_str())
}

/// Headers with which some servers and frameworks let a request name another method than
/// its own (`POST` with `X-HTTP-Method-Override: DELETE`): the policy judged the request's
/// own method, so they never reach the upstream, policy or not.
const METHOD_OVERRIDES: [&str; 3] = ["x-http-method-override", "x-http-method", "x-method-override"];

/// The request header policy: hop-by-hop headers out, our `Authorization` in, and the API
/// version in unless the client chose one (or always, with `override_api_version`). The
/// client's `Host` is left for [`Upstream::send`], which replaces it with the upstream's in
/// the same lookup.
pub(crate) fn rewrite_request_headers(
    headers: &mut HeaderMap,
    authorization: &HeaderValue,
    api_version: &HeaderValue,
    override_api_version: bool,
) {
    strip_hop_by_hop(headers);
    headers.insert(header::AUTHORIZATION, authorization.clone());
    if override_api_version {
        headers.insert(X_PINECONE_API_VERSION.clone(), api_version.clone());
    } else {
        // One lookup, where `contains_key` and then `insert` would hash the name twice.
        headers.entry(X_PINECONE_API_VERSION.clone()).or_insert_with(|| api_version.clone());
    }
}

/// The forwarding service. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    upstream: Upstream,
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
    /// API key id → its project, as `fetch_api_key` said (a key never changes project), or
    /// why it could not be had, or the lookup under way.
    key_projects: parking_lot::Mutex<HashMap<String, Arc<KeyLookup>>>,
}

/// One `fetch_api_key` lookup of a key's project, shared by every request for that key id
/// while it runs (single flight): a burst of requests naming one key costs one lookup.
#[derive(Debug, Default)]
struct KeyLookup {
    /// The key's project, or why it could not be looked up, and when that was learnt.
    result: tokio::sync::OnceCell<(Result<String, String>, Instant)>,
}

impl KeyLookup {
    /// Whether the answer may still be used: a project for ever, a failure for
    /// [`KEY_LOOKUP_FAILURE_KEPT`] (so that a flood naming a missing key costs one lookup
    /// every few seconds, and a passing failure is soon asked again).
    fn fresh(&self, now: Instant) -> bool {
        match self.result.get() {
            None | Some((Ok(_), _)) => true,
            Some((Err(_), at)) => now.saturating_duration_since(*at) < KEY_LOOKUP_FAILURE_KEPT,
        }
    }
}

/// How many API keys' projects are remembered; past it, the map starts over (a client
/// naming random key ids cannot grow it).
const KEY_PROJECTS_REMEMBERED: usize = 4096;
/// The most of a `fetch_api_key` response that is read.
const KEY_LOOKUP_BODY_LIMIT: usize = 64 * 1024;
/// The longest API key id looked up: Pinecone's are UUIDs (36 characters).
const MAX_KEY_ID: usize = 128;
/// How long a failed lookup is remembered.
const KEY_LOOKUP_FAILURE_KEPT: Duration = Duration::from_secs(5);
static X_PINECONE_REQUEST_ID: HeaderName = HeaderName::from_static("x-pinecone-request-id");

/// What the access log line (and the audit line) says of a forwarded request.
#[derive(Debug, Default)]
struct Outcome<'p> {
    /// The policy's reason to forward it (`None`: no policy, or not decided).
    allowed: Option<crate::policy::Allowed<'p>>,
    upstream_status: Option<u16>,
    token: Option<Arc<crate::token::Token>>,
    error: Option<&'static str>,
    /// Why the policy refused it.
    refusal: Option<String>,
    replayed: bool,
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
        upstream: Upstream,
        tokens: TokenSource,
        metrics: Arc<Metrics>,
        cfg: &UpstreamConfig,
        limits: &Limits,
        policy: Option<Policy>,
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
                key_projects: parking_lot::Mutex::new(HashMap::new()),
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
        let resolved = crate::policy::resolve(&method, path);
        let mut outcome = Outcome::default();
        let response = match self.forward(request, &resolved, &mut outcome).await {
            Ok(response) => response,
            Err(error) => {
                outcome.error = Some(error.reason());
                match &error {
                    ProxyError::UpstreamUnreachable(_) => inner.metrics.upstream_unreachable.inc(),
                    ProxyError::UpstreamTimeout(_) => inner.metrics.upstream_timeout.inc(),
                    _ => {}
                }
                if let ProxyError::BodyTimeout(_) = error {
                    inner.metrics.limit_hit(crate::limits::Limit::BodyReadTimeout.label());
                }
                // The client's own doing is on its access line, not a warning.
                if !matches!(
                    error,
                    ProxyError::BadRequest { .. } | ProxyError::BodyTimeout(_) | ProxyError::Forbidden(_)
                ) {
                    tracing::warn!(method = %method, path = %path, reason = error.reason(), error = %error, "request failed");
                }
                let response = error_response(&error);
                outcome.refusal = match error {
                    ProxyError::Forbidden(why) => Some(why),
                    _ => None,
                };
                response
            }
        };
        let elapsed = start.elapsed();
        let operation = resolved.operation();
        inner.metrics.request(&method, response.status(), operation);
        inner.metrics.request_duration.observe(elapsed.as_secs_f64());
        // The token shim's placeholder changes nothing and never leaves the proxy.
        let shim = method == Method::POST && path == "/oauth/token";
        if !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) && !shim {
            self.audit(&method, &resolved, &outcome, &response, elapsed);
        }
        tracing::info!(
            target: crate::logging::ACCESS_TARGET,
            method = %method,
            path = %path,
            operation = %operation,
            status = response.status().as_u16(),
            upstream_status = outcome.upstream_status,
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            token = outcome.token.as_ref().map(|t| t.fingerprint.as_str()),
            error = outcome.error,
            replayed = outcome.replayed,
            "request",
        );
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
        if parts.method == Method::POST && parts.uri.path() == "/oauth/token" {
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
        // Most Admin API requests have no body; reading one is boxed out of their future.
        let stalled = Arc::new(AtomicBool::new(false));
        let body = if body.is_end_stream() {
            RequestBody::Buffered(Buffered::default())
        } else {
            // tower-http's timeout between frames; the flag tells its error apart once hyper's
            // client has wrapped it (a stall while the body streams upstream).
            let flag = stalled.clone();
            // Taken before the timeout wraps the body: tower-http's TimeoutBody does not
            // pass the size on, and a body known too large for a replay must stream at once.
            let hint = http_body::Body::size_hint(&body);
            let body = TimeoutBody::new(inner.body_read_timeout, body).map_err(move |e| {
                if e.is::<TimeoutError>() {
                    flag.store(true, Ordering::Relaxed);
                }
                e
            });
            Box::pin(RequestBody::read(body, hint, inner.replay_limit, &inner.replay_budget)).await.map_err(|e| {
                if stalled.load(Ordering::Relaxed) {
                    return ProxyError::BodyTimeout(inner.body_read_timeout);
                }
                ProxyError::bad_request(StatusCode::BAD_REQUEST, format!("the request body could not be read: {e}"))
            })?
        };
        let (body, kept) = body.into_parts();
        let streaming = kept.is_err();
        // What a replay needs of the request; the headers are copied only if the body
        // could be replayed at all.
        let replay = kept.map(|kept| (parts.method.clone(), parts.uri.clone(), parts.headers.clone(), kept));
        let response = self.send_streaming(Request::from_parts(parts, body), streaming).await.map_err(|e| {
            if stalled.load(Ordering::Relaxed) { ProxyError::BodyTimeout(inner.body_read_timeout) } else { e }
        })?;
        outcome.upstream_status = Some(response.status().as_u16());
        if response.status() != StatusCode::UNAUTHORIZED || !admin_route {
            // A 401 outside the Admin API (the control plane's `Invalid API key` for a
            // bearer token) is not the token's fault: a new one would cure nothing and
            // only spend the token quota. It goes back as it came.
            return Ok(finish(response));
        }

        // Rare, and as large as all the rest: boxed out of every request's future.
        Box::pin(self.replay(response, token.generation, replay, outcome)).await
    }

    /// After an upstream 401: one new token is fetched for every request that saw this
    /// generation rejected, and the request is sent once more with it.
    async fn replay(
        &self,
        response: Response<Body>,
        rejected: u64,
        replay: Result<(Method, Uri, HeaderMap, Buffered), NotKept>,
        outcome: &mut Outcome<'_>,
    ) -> Result<Response<Body>, ProxyError> {
        let inner = &self.inner;
        inner.metrics.upstream_unauthorized.inc();
        inner.tokens.invalidate(rejected);
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
        let Ok(fresh) = inner.tokens.newer_than(rejected).await else {
            inner.metrics.replay(ReplayResult::NoToken);
            return Ok(finish(response));
        };
        drop(response);
        headers.insert(header::AUTHORIZATION, fresh.authorization().clone());
        let mut request = Request::new(kept.to_body());
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        outcome.token = Some(fresh.clone());
        outcome.replayed = true;
        let response = self.send(request).await?;
        outcome.upstream_status = Some(response.status().as_u16());
        if response.status() == StatusCode::UNAUTHORIZED {
            // Not invalidated again: the token was just issued, and a second fetch would
            // only burn the token quota. The 401 goes back to the client.
            inner.metrics.upstream_unauthorized.inc();
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
        let inner = &self.inner;
        inner.upstream.send(request, inner.timeout, streaming).await.map_err(|e| match e {
            SendError::Timeout => ProxyError::UpstreamTimeout(inner.timeout),
            SendError::Unreachable(e) => ProxyError::UpstreamUnreachable(e),
        })
    }

    /// Finishes the decision on an operation on an API key by id: its project, from the
    /// map or from `fetch_api_key` (through the proxy's own token).
    async fn decide_key<'p>(
        &self,
        policy: &'p Policy,
        resolved: &Resolved<'_>,
        allowed: crate::policy::Allowed<'p>,
    ) -> Decision<'p> {
        let key = resolved.param("api_key_id").unwrap_or_default();
        if key.len() > MAX_KEY_ID {
            // Not looked up, and not remembered: a client naming ids of 60 KiB could
            // otherwise fill the map with them.
            return policy.decide_key(resolved, allowed, Err("the id is longer than any API key id"));
        }
        let lookup = self.key_lookup(key);
        let (project, _) =
            lookup.result.get_or_init(|| async { (self.look_up_key_project(key).await, Instant::now()) }).await;
        match project {
            Ok(project) => policy.decide_key(resolved, allowed, Ok(project.as_str())),
            Err(why) => {
                tracing::debug!(api_key_id = key, error = %why, "policy: the API key's project could not be looked up");
                policy.decide_key(resolved, allowed, Err(why.as_str()))
            }
        }
    }

    /// The lookup of `key`'s project: the one remembered, or a new one if there is none or
    /// it failed over [`KEY_LOOKUP_FAILURE_KEPT`] ago.
    fn key_lookup(&self, key: &str) -> Arc<KeyLookup> {
        let now = Instant::now();
        let mut known = self.inner.key_projects.lock();
        if let Some(lookup) = known.get(key).filter(|l| l.fresh(now)) {
            return lookup.clone();
        }
        if known.len() >= KEY_PROJECTS_REMEMBERED {
            known.clear();
        }
        let lookup = Arc::new(KeyLookup::default());
        known.insert(key.to_owned(), lookup.clone());
        lookup
    }

    /// `GET /admin/api-keys/{key}` upstream: the key's `project_id`, or why not.
    async fn look_up_key_project(&self, key: &str) -> Result<String, String> {
        let inner = &self.inner;
        let token = inner.tokens.get().await.map_err(|e| ProxyError::from(e).to_string())?;
        let uri = Uri::try_from(format!("{}/admin/api-keys/{key}", inner.base_path))
            .map_err(|_| "the key id does not make a valid path".to_owned())?;
        let mut request = Request::new(crate::body::empty());
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        rewrite_request_headers(headers, token.authorization(), &inner.api_version, true);
        let response = self.send(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let request_id =
            response.headers().get(&X_PINECONE_REQUEST_ID).and_then(|v| v.to_str().ok()).map(str::to_owned);
        // Typed as a boxed future: the higher-ranked `Send` check of the service's future
        // cannot see through `Limited`'s error conversion otherwise.
        let read: Pin<Box<dyn Future<Output = Result<http_body_util::Collected<Bytes>, BoxError>> + Send>> =
            Box::pin(http_body_util::Limited::new(response.into_body(), KEY_LOOKUP_BODY_LIMIT).collect());
        let body = match tokio::time::timeout(inner.timeout, read).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(e)) => return Err(format!("fetch_api_key's response could not be read: {e}")),
            Err(_) => {
                return Err(format!(
                    "fetch_api_key's response body took over {}",
                    humantime::format_duration(inner.timeout)
                ));
            }
        };
        let request_id = request_id.map(|id| format!(", request id {id}")).unwrap_or_default();
        match status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(format!("fetch_api_key: no such API key (404{request_id})")),
            StatusCode::UNAUTHORIZED => {
                inner.metrics.upstream_unauthorized.inc();
                inner.tokens.invalidate(token.generation);
                return Err(format!("fetch_api_key: the Pinecone API rejected the proxy's token (401{request_id})"));
            }
            status => return Err(format!("fetch_api_key answered {status}{request_id}")),
        }
        #[derive(serde::Deserialize)]
        struct ApiKey {
            project_id: String,
        }
        match serde_json::from_slice::<ApiKey>(&body) {
            Ok(key) if !key.project_id.is_empty() => Ok(key.project_id),
            _ => Err(format!("fetch_api_key's response has no project_id{request_id}")),
        }
    }

    /// The audit line of a request that changes something (any method but GET, HEAD and
    /// OPTIONS), allowed or refused: what, on which ids, the decision, what the upstream
    /// said. Never a body, a header value of the client's, a secret or a token.
    fn audit(
        &self,
        method: &Method,
        resolved: &Resolved<'_>,
        outcome: &Outcome<'_>,
        response: &Response<Body>,
        elapsed: Duration,
    ) {
        let (decision, rule) = match (&outcome.refusal, &outcome.allowed) {
            (Some(why), _) => ("refused", why.clone()),
            (None, Some(allowed)) => ("allowed", allowed.to_string()),
            (None, None) if self.inner.policy.is_none() => ("allowed", "no policy".to_owned()),
            // Answered by the proxy before the policy was asked (a bad request).
            (None, None) => ("not_decided", String::new()),
        };
        // A header of the upstream's; visible ASCII only (to_str), and short.
        let request_id =
            response.headers().get(&X_PINECONE_REQUEST_ID).and_then(|v| v.to_str().ok()).filter(|id| id.len() <= 128);
        tracing::info!(
            target: crate::logging::AUDIT_TARGET,
            method = %method,
            operation = %resolved.operation(),
            params = resolved.params_text().as_str(),
            decision = %decision,
            rule = rule.as_str(),
            status = response.status().as_u16(),
            upstream_status = outcome.upstream_status,
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            request_id,
            token = outcome.token.as_ref().map(|t| t.fingerprint.as_str()),
            error = outcome.error,
            "audit",
        );
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
        if version < Version::HTTP_2 {
            if let Some(authority) = uri.authority() {
                let host = authority.host();
                if !host.eq_ignore_ascii_case(self.inner.authority.host()) && !is_loopback_host(host) {
                    return Err(ProxyError::bad_request(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "request target names another host ({host}); this proxy only forwards to the Pinecone API"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The request target for the upstream, in origin form: the base path, then the
    /// client's path and query byte for byte. ([`Upstream`] adds the scheme and authority
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

/// `POST /oauth/token` on the proxy: a fresh random placeholder, never the real token, so
/// an SDK that insists on its own token exchange works when pointed at the proxy. The
/// placeholder it then sends is replaced like any other `Authorization`.
async fn token_shim<B>(body: B, deadline: Duration) -> Result<Response<Body>, ProxyError>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // Read (and ignore) the body so an HTTP/1 connection stays reusable: at most
    // TOKEN_SHIM_BODY_LIMIT bytes, all of it within `limits.body_read_timeout`. A client
    // that sends more, or never finishes, gets an error, and hyper closes an HTTP/1.1
    // connection whose body was not read to its end.
    let read = http_body_util::Limited::new(body, TOKEN_SHIM_BODY_LIMIT).collect();
    match tokio::time::timeout(deadline, read).await {
        Err(_) => return Err(ProxyError::BodyTimeout(deadline)),
        Ok(Err(_)) => {
            return Err(ProxyError::bad_request(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a token request body is at most {TOKEN_SHIM_BODY_LIMIT} bytes"),
            ));
        }
        Ok(Ok(_)) => {}
    }
    let placeholder: String = (0..16).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let body = serde_json::json!({
        "access_token": format!("pinecone-admin-proxy-placeholder-{placeholder}"),
        "expires_in": 86400,
        "token_type": "Bearer",
    });
    let mut response = Response::new(full(serde_json::to_vec(&body).expect("json")));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The most of a `POST /oauth/token` body the shim reads: an SDK's token request is a few
/// hundred bytes.
const TOKEN_SHIM_BODY_LIMIT: usize = 64 * 1024;

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

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn header_policy_table() {
        let auth = HeaderValue::from_static("Bearer real");
        let version = HeaderValue::from_static("2025-10");
        let mut h = headers(&[
            ("authorization", "Bearer placeholder"),
            ("proxy-authorization", "Basic x"),
            ("host", "127.0.0.1:8484"),
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers, deflate"),
            ("content-type", "application/json"),
            ("x-custom", "a"),
            ("x-custom", "b"),
            ("x-http-method-override", "DELETE"),
            ("X-HTTP-Method", "DELETE"),
            ("x-method-override", "DELETE"),
        ]);
        rewrite_request_headers(&mut h, &auth, &version, false);
        assert_eq!(h.get("authorization").unwrap(), "Bearer real");
        assert_eq!(h.get("x-pinecone-api-version").unwrap(), "2025-10");
        assert_eq!(h.get("te").unwrap(), "trailers");
        for gone in [
            "proxy-authorization",
            "connection",
            "keep-alive",
            "x-private",
            "transfer-encoding",
            "upgrade",
            "proxy-connection",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be removed");
        }
        assert_eq!(h.get_all("x-custom").iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(h.get("host").unwrap(), "127.0.0.1:8484", "left for the upstream client to replace");
        assert_eq!(h.get("content-type").unwrap(), "application/json");
    }

    #[test]
    fn client_api_version_wins_unless_overridden() {
        let auth = HeaderValue::from_static("Bearer t");
        let version = HeaderValue::from_static("2025-10");
        let mut h = headers(&[("x-pinecone-api-version", "2026-07")]);
        rewrite_request_headers(&mut h, &auth, &version, false);
        assert_eq!(h.get("x-pinecone-api-version").unwrap(), "2026-07");
        rewrite_request_headers(&mut h, &auth, &version, true);
        assert_eq!(h.get("x-pinecone-api-version").unwrap(), "2025-10");
        assert_eq!(h.get_all("x-pinecone-api-version").iter().count(), 1);
    }

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

    #[test]
    fn te_without_trailers_is_dropped() {
        let mut h = headers(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key("te"));
    }

    #[test]
    fn error_responses_table() {
        let cases = [
            (
                ProxyError::TokenUnavailable { retry_after: Duration::from_secs(3) },
                503,
                "token_unavailable",
                "UNAVAILABLE",
            ),
            (ProxyError::CredentialsRejected, 503, "credentials_rejected", "UNAVAILABLE"),
            (ProxyError::UpstreamUnreachable("refused".into()), 502, "upstream_unreachable", "UNAVAILABLE"),
            (ProxyError::UpstreamTimeout(Duration::from_secs(60)), 504, "upstream_timeout", "DEADLINE_EXCEEDED"),
            (ProxyError::bad_request(StatusCode::METHOD_NOT_ALLOWED, "no"), 405, "bad_request", "INVALID_ARGUMENT"),
            (ProxyError::bad_request(StatusCode::BAD_REQUEST, "no"), 400, "bad_request", "INVALID_ARGUMENT"),
        ];
        for (error, status, reason, code) in cases {
            let r = error_response(&error);
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()[ERROR_HEADER], reason);
            assert_eq!(r.headers()["content-type"], "application/json");
            assert_eq!(r.headers().contains_key("retry-after"), reason == "token_unavailable");
            let body = futures_body(r);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["status"], status);
            assert_eq!(v["error"]["code"], code);
            assert!(v["error"]["message"].as_str().unwrap().starts_with("pinecone-admin-proxy: "));
        }
        let r = error_response(&ProxyError::TokenUnavailable { retry_after: Duration::from_secs(3) });
        assert_eq!(r.headers()["retry-after"], "3");
    }

    fn futures_body(r: Response<Body>) -> Bytes {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async { r.into_body().collect().await.unwrap().to_bytes() })
    }
}
