//! The fake Pinecone: a token endpoint and an in-memory Admin API on one loopback port,
//! behaving as `shared/pinecone/FACTS.md` describes the real ones (paths, status codes,
//! shapes, error bodies, bearer validation with expiry and revocation).
//!
//! It serves `demo` and `fake-pinecone`, and the tests, which use its knobs (token
//! lifetime, delays, scripted failures, revocation, credential rotation) and its counters.
//! [`token`] owns the token endpoint, [`admin`] the Admin API (with [`iam`], its 2026-07
//! operations), [`control`] the control plane (API keys of their project, within their
//! roles; indexes in memory); this file owns the state and data they share, Pinecone's error
//! bodies, and the server.

pub mod admin;
pub mod control;
pub mod data;
pub mod grpc;
pub mod iam;
mod imports;
pub mod quota;
pub mod token;
mod vectors;

use crate::body::{Body, BoxError, empty, full};
use crate::serve::{self, Listener, Trigger};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The client id and secret that `demo` and `fake-pinecone` accept.
pub const DEMO_CLIENT_ID: &str = "demo-client-id";
pub const DEMO_CLIENT_SECRET: &str = "demo-client-secret";
/// What a real token request must name as its audience (with the trailing slash).
pub const AUDIENCE: &str = "https://api.pinecone.io/";

/// A scripted answer for the next token request, instead of the normal one.
#[derive(Debug, Clone)]
pub enum TokenFault {
    /// Answer with this status, body and optional `Retry-After`.
    Status { status: u16, body: String, retry_after: Option<String> },
    /// Answer 200 with this body (malformed or odd successes).
    Ok(String),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Close the connection without an answer.
    Reset,
}

/// One request the Admin API or the control plane received, kept while recording is on.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// The request target as received, byte for byte.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug)]
pub(crate) struct Issued {
    pub(crate) expires: Instant,
    pub(crate) revoked: bool,
    pub(crate) client_id: String,
}

/// The fake's state: knobs, counters and data. Shared by its handlers and the tests.
#[derive(Debug)]
pub struct State {
    /// Requests received, on any path, counted as they arrive (before any delay).
    pub arrived: AtomicU64,
    /// Data-plane requests (every index's), and those answered 401.
    pub data_requests: AtomicU64,
    pub data_unauthorized: AtomicU64,
    /// Fired when the fake stops: the indexes' data-plane servers stop with it.
    pub(crate) stopped: Trigger,
    /// Bumped when a request arrives and when one has been answered, so that a test can
    /// wait for what the proxy did to the fake.
    activity: tokio::sync::watch::Sender<u64>,
    pub(crate) clients: Mutex<HashMap<String, String>>,
    expires_in: AtomicU64,
    token_delay: Mutex<Duration>,
    admin_delay: Mutex<Duration>,
    pub(crate) faults: Mutex<VecDeque<TokenFault>>,
    /// Every n-th token request answers 503 (0: never).
    fail_every: AtomicU64,
    pub(crate) issued: Mutex<HashMap<String, Issued>>,
    /// Token requests received (whatever their outcome).
    pub token_requests: AtomicU64,
    /// Tokens issued.
    pub tokens_issued: AtomicU64,
    /// Admin API requests received.
    pub admin_requests: AtomicU64,
    /// Admin API requests that presented a token after its expiry.
    pub expired_presented: AtomicU64,
    /// Admin API requests answered 401.
    pub unauthorized: AtomicU64,
    /// Control-plane requests received (any path outside `/admin`), and those answered 401.
    pub control_requests: AtomicU64,
    pub control_unauthorized: AtomicU64,
    /// Token requests in flight now, and the most ever in flight at once.
    pub(crate) token_inflight: AtomicU64,
    pub token_inflight_max: AtomicU64,
    pub(crate) last_token_request: Mutex<Option<Recorded>>,
    recording: AtomicBool,
    pub(crate) recorded: Mutex<Vec<Recorded>>,
    pub(crate) data: Mutex<Data>,
    /// The token quota, if one is set.
    pub(crate) quota: Mutex<Option<quota::Quota>>,
    /// Token requests refused with 429 because a quota bucket was spent.
    pub quota_refused: AtomicU64,
    /// gRPC errors answered as headers, then trailers with the status (as a server that had
    /// begun its answer sends them), instead of trailers-only.
    pub(crate) grpc_status_in_trailers: AtomicBool,
}

impl State {
    fn new(expires_in: u64) -> Self {
        Self {
            clients: Mutex::new(HashMap::from([(DEMO_CLIENT_ID.to_owned(), DEMO_CLIENT_SECRET.to_owned())])),
            expires_in: AtomicU64::new(expires_in),
            token_delay: Mutex::new(Duration::ZERO),
            admin_delay: Mutex::new(Duration::ZERO),
            faults: Mutex::new(VecDeque::new()),
            fail_every: AtomicU64::new(0),
            issued: Mutex::new(HashMap::new()),
            arrived: AtomicU64::new(0),
            data_requests: AtomicU64::new(0),
            data_unauthorized: AtomicU64::new(0),
            stopped: Trigger::default(),
            activity: tokio::sync::watch::Sender::new(0),
            token_requests: AtomicU64::new(0),
            tokens_issued: AtomicU64::new(0),
            admin_requests: AtomicU64::new(0),
            expired_presented: AtomicU64::new(0),
            unauthorized: AtomicU64::new(0),
            control_requests: AtomicU64::new(0),
            control_unauthorized: AtomicU64::new(0),
            token_inflight: AtomicU64::new(0),
            token_inflight_max: AtomicU64::new(0),
            last_token_request: Mutex::new(None),
            recording: AtomicBool::new(false),
            grpc_status_in_trailers: AtomicBool::new(false),
            recorded: Mutex::new(Vec::new()),
            data: Mutex::new(Data::seeded()),
            quota: Mutex::new(None),
            quota_refused: AtomicU64::new(0),
        }
    }

    /// Told when a request arrives and when one has been answered.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.activity.subscribe()
    }

    /// Meters token requests from now on (`None`: no quota, no quota headers).
    pub fn set_quota(&self, quota: Option<quota::Quota>) {
        *self.quota.lock() = quota;
    }

    /// What `GET /_fake/stats` shows: the counters, for scripts that run the fake as a
    /// process (the fleet benchmark). Not part of Pinecone's API.
    pub fn stats(&self) -> Value {
        serde_json::json!({
            "token_requests": Self::count(&self.token_requests),
            "tokens_issued": Self::count(&self.tokens_issued),
            "quota_refused": Self::count(&self.quota_refused),
            "admin_requests": Self::count(&self.admin_requests),
            "control_requests": Self::count(&self.control_requests),
        })
    }

    /// Accepts this client id with this secret (replacing an earlier secret: a rotation).
    pub fn set_client(&self, id: &str, secret: &str) {
        self.clients.lock().insert(id.to_owned(), secret.to_owned());
    }

    /// The lifetime of tokens issued from now on.
    pub fn set_expires_in(&self, secs: u64) {
        self.expires_in.store(secs, Ordering::SeqCst);
    }

    pub fn expires_in(&self) -> u64 {
        self.expires_in.load(Ordering::SeqCst)
    }

    /// How long every token request takes.
    pub fn set_token_delay(&self, delay: Duration) {
        *self.token_delay.lock() = delay;
    }

    pub(crate) fn token_delay(&self) -> Duration {
        *self.token_delay.lock()
    }

    /// How long every Admin API request waits before its answer.
    pub fn set_admin_delay(&self, delay: Duration) {
        *self.admin_delay.lock() = delay;
    }

    /// Queues scripted answers for the next token requests, in order.
    pub fn push_token_faults(&self, faults: impl IntoIterator<Item = TokenFault>) {
        self.faults.lock().extend(faults);
    }

    /// Makes every `n`-th token request answer 503 `temporarily_unavailable` (0: none).
    pub fn set_token_failure_every(&self, n: u64) {
        self.fail_every.store(n, Ordering::SeqCst);
    }

    pub(crate) fn fail_every(&self) -> u64 {
        self.fail_every.load(Ordering::SeqCst)
    }

    /// Makes `create_api_key` answer 403 with `message` (`None`: create as usual).
    pub fn refuse_api_key_creation(&self, message: Option<&str>) {
        self.data.lock().refuse_api_key_creation = message.map(str::to_owned);
    }

    /// The seeded project's id.
    pub fn project_id(&self) -> String {
        self.data.lock().projects[0]["id"].as_str().expect("a seeded project").to_owned()
    }

    /// Every live API key (id, name, project_id, roles), of every project.
    pub fn api_keys(&self) -> Vec<Value> {
        self.data.lock().api_keys.clone()
    }

    /// The value of every API key ever created (the secrets), deleted ones included.
    pub fn api_key_values(&self) -> Vec<String> {
        self.data.lock().api_key_values.keys().cloned().collect()
    }

    /// How many keys `create_api_key` has made.
    pub fn api_keys_created(&self) -> u64 {
        self.data.lock().api_keys_created
    }

    /// Deletes an API key behind the proxy's back (a revocation in the console): it stops
    /// working at once. Answers whether it existed.
    pub fn revoke_api_key(&self, id: &str) -> bool {
        let mut data = self.data.lock();
        let before = data.api_keys.len();
        data.api_keys.retain(|k| k["id"] != id);
        before != data.api_keys.len()
    }

    /// Adds a key named `name` to the seeded project (one another proxy, or a person, made);
    /// answers its id.
    pub fn add_api_key(&self, name: &str) -> String {
        let mut data = self.data.lock();
        let id = uuid();
        let project = data.projects[0]["id"].clone();
        data.api_keys
            .push(serde_json::json!({ "id": id, "name": name, "project_id": project, "roles": ["ProjectViewer"] }));
        id
    }

    /// Revokes every token issued so far: the Admin API answers 401 to them.
    pub fn revoke_all(&self) {
        for t in self.issued.lock().values_mut() {
            t.revoked = true;
        }
    }

    /// Revokes every token issued to one client (a rotated or deleted service account).
    pub fn revoke_client(&self, client_id: &str) {
        for t in self.issued.lock().values_mut().filter(|t| t.client_id == client_id) {
            t.revoked = true;
        }
    }

    /// Whether this access token was issued by us (expired or not).
    pub fn was_issued(&self, token: &str) -> bool {
        self.issued.lock().contains_key(token)
    }

    /// Every access token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.issued.lock().keys().cloned().collect()
    }

    /// Answers gRPC errors with the status in trailers after the headers (`true`), or
    /// trailers-only, as tonic does (`false`, the default).
    pub fn set_grpc_status_in_trailers(&self, on: bool) {
        self.grpc_status_in_trailers.store(on, Ordering::SeqCst);
    }

    /// Starts or stops recording Admin API requests.
    pub fn set_recording(&self, on: bool) {
        self.recording.store(on, Ordering::SeqCst);
    }

    /// Keeps a request while recording is on.
    pub(crate) fn record(&self, parts: &http::request::Parts, body: &[u8]) {
        if self.recording() {
            self.recorded.lock().push(Recorded {
                method: parts.method.clone(),
                target: parts.uri.path_and_query().map_or_else(|| parts.uri.to_string(), |pq| pq.as_str().to_owned()),
                headers: parts.headers.clone(),
                body: Bytes::copy_from_slice(body),
            });
        }
    }

    pub(crate) fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    /// The Admin API requests recorded so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded.lock().clone()
    }

    /// The last token request received, with its headers and body.
    pub fn last_token_request(&self) -> Option<Recorded> {
        self.last_token_request.lock().clone()
    }

    pub fn count(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::SeqCst)
    }
}

/// The fake's HTTP service: routes `/oauth/token` to [`token`] and the rest to [`admin`].
#[derive(Debug, Clone)]
pub struct Service {
    state: Arc<State>,
}

impl Service {
    pub fn new(state: Arc<State>) -> Self {
        Self { state }
    }

    async fn handle(self, request: Request<Incoming>) -> Result<Response<Body>, BoxError> {
        self.state.arrived.fetch_add(1, Ordering::SeqCst);
        self.state.activity.send_modify(|n| *n += 1);
        let response = self.answer(request).await;
        self.state.activity.send_modify(|n| *n += 1);
        response
    }

    async fn answer(&self, request: Request<Incoming>) -> Result<Response<Body>, BoxError> {
        let (parts, body) = request.into_parts();
        // A fake reads whole bodies: requests to it are small, and tests want them.
        let body = body.collect().await?.to_bytes();
        if parts.uri.path() == "/oauth/token" {
            return token::handle(&self.state, &parts, body).await;
        }
        if parts.uri.path() == "/_fake/stats" {
            return Ok(json(StatusCode::OK, &self.state.stats()));
        }
        let delay = *self.state.admin_delay.lock();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let path = parts.uri.path();
        if path == "/admin" || path.starts_with("/admin/") {
            Ok(admin::handle(&self.state, &parts, &body))
        } else {
            Ok(control::handle(&self.state, &parts, &body))
        }
    }
}

impl tower::Service<Request<Incoming>> for Service {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        Box::pin(self.clone().handle(request))
    }
}

/// A running fake Pinecone. Stops when dropped.
#[derive(Debug)]
pub struct FakePinecone {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Trigger,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// How the fake's servers serve: the default time limits, but no connection, head-memory or
/// stream budget that Pinecone's hosts would not have (the proxy's `head_memory` closes the
/// 52nd h2c connection; a benchmark's nginx opening 64 to an index must not meet that here;
/// the proxy's clients' 64 streams a connection all go on its one connection to a host).
pub(crate) fn serve_options() -> serve::ServeOptions {
    let limits = crate::config::Limits {
        max_connections: 1 << 16,
        head_memory: 1 << 30,
        max_concurrent_streams: 1000,
        ..Default::default()
    };
    serve::ServeOptions { limits, ..serve::ServeOptions::new(Duration::from_secs(1)) }
}

impl FakePinecone {
    /// Starts on `addr` (port 0 for any free port), issuing tokens valid `expires_in`
    /// seconds.
    pub async fn start(addr: SocketAddr, expires_in: u64) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::new(expires_in));
        let stop = Trigger::default();
        let service = Service::new(state.clone());
        let task = tokio::spawn(serve::serve(
            "fake-pinecone",
            Listener::Tcp(listener),
            move |_| service.clone(),
            stop.wait(),
            serve_options(),
        ));
        Ok(Self { addr, state, stop, task: Some(task) })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/oauth/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Stops accepting and waits for the server to end.
    pub async fn stop(mut self) {
        self.stop.fire();
        self.state.stopped.fire();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakePinecone {
    fn drop(&mut self) {
        self.stop.fire();
        self.state.stopped.fire();
    }
}

/// The Admin API's data.
#[derive(Debug)]
pub struct Data {
    pub(crate) organizations: Vec<Value>,
    pub(crate) projects: Vec<Value>,
    pub(crate) api_keys: Vec<Value>,
    /// API key values (the secret, shown once at creation) and the id of their key.
    pub(crate) api_key_values: HashMap<String, String>,
    pub(crate) iam: iam::Iam,
    /// The control plane's indexes, each with its project's id.
    pub(crate) indexes: Vec<(String, Value)>,
    /// When set, `create_api_key` answers 403 with this message (a quota, or a role the
    /// service account may not grant).
    pub(crate) refuse_api_key_creation: Option<String>,
    /// Keys `create_api_key` has made.
    pub(crate) api_keys_created: u64,
    /// Each index's data plane, by project and index name.
    pub(crate) data_servers: HashMap<(String, String), data::DataServer>,
}

impl Data {
    /// One organization with one project that has one API key.
    pub fn seeded() -> Self {
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let org_id = "-NM7af6f234168c4e44a";
        let project_id = uuid();
        Self {
            organizations: vec![serde_json::json!({
                "id": org_id, "name": "demo-organization", "plan": "Free", "payment_status": "Active",
                "created_at": now, "support_tier": "free",
            })],
            projects: vec![serde_json::json!({
                "id": project_id, "name": "demo-project", "max_pods": 0, "force_encryption_with_cmek": false,
                "organization_id": org_id, "created_at": now,
            })],
            api_keys: vec![serde_json::json!({
                "id": uuid(), "name": "demo-key", "project_id": project_id, "roles": ["ProjectEditor"],
            })],
            api_key_values: HashMap::new(),
            iam: iam::Iam::seeded(org_id),
            indexes: Vec::new(),
            refuse_api_key_creation: None,
            api_keys_created: 0,
            data_servers: HashMap::new(),
        }
    }

    /// The organization's id (the fake has one).
    pub(crate) fn org_id(&self) -> &str {
        self.organizations.first().and_then(|o| o["id"].as_str()).unwrap_or("-NM7af6f234168c4e44a")
    }

    pub(crate) fn has_project(&self, id: &str) -> bool {
        find(&self.projects, id).is_some()
    }

    pub(crate) fn has_api_key(&self, id: &str) -> bool {
        find(&self.api_keys, id).is_some()
    }

    /// The project and roles of the live API key whose secret is `value`.
    pub(crate) fn key_of_value(&self, value: &str) -> Option<(String, Vec<String>)> {
        let key = &self.api_keys[find(&self.api_keys, self.api_key_values.get(value)?)?];
        let roles = key["roles"].as_array()?.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect();
        Some((key["project_id"].as_str()?.to_owned(), roles))
    }
}

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": { "code": code, "message": message }, "status": status.as_u16() }))
}

pub(crate) fn invalid(message: &str) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
}

pub(crate) fn not_found(what: &str, id: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("{what} \"{id}\" not found."))
}

pub(crate) fn accepted() -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::ACCEPTED;
    r
}

pub(crate) fn find(items: &[Value], id: &str) -> Option<usize> {
    items.iter().position(|v| v["id"] == id)
}

/// The body as a JSON object, or the 400 that says it is not one. (A large `Err`: the fake
/// is on no hot path.)
#[allow(clippy::result_large_err)]
pub(crate) fn object(body: &[u8]) -> Result<serde_json::Map<String, Value>, Response<Body>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(invalid("The request body must be a JSON object.")),
    }
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec(value).expect("json")));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// A random UUID (version 4).
pub(crate) fn uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Unpadded base64url (RFC 4648 §5), for JWT-shaped tokens.
pub(crate) fn base64url(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_known_values() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foob"), "Zm9vYg");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert!(base64url(br#"{"alg":"RS256"}"#).starts_with("eyJ"));
    }

    #[test]
    fn uuids_are_version_4() {
        let u = uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(u, uuid());
    }
}
