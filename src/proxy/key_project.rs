//! The project of an API key named by id, for the `[policy]`'s `projects`: an operation on
//! `/admin/api-keys/{api_key_id}` names no project, so the key's is looked up with
//! `fetch_api_key` through the proxy's own token. One lookup per key id at a time (single
//! flight), a key's project remembered for ever (a key never changes project), a failure for
//! a few seconds; the map bounded.

use super::Proxy;
use super::error::ProxyError;
use super::headers::{X_PINECONE_REQUEST_ID, rewrite_request_headers};
use crate::body::BoxError;
use crate::policy::{Decision, Policy};
use crate::routes::Resolved;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

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

/// The lookups remembered, by key id.
#[derive(Debug, Default)]
pub(super) struct KeyProjects(parking_lot::Mutex<HashMap<String, Arc<KeyLookup>>>);

impl KeyProjects {
    /// The lookup of `key`'s project: the one remembered, or a new one if there is none or
    /// it failed over [`KEY_LOOKUP_FAILURE_KEPT`] ago.
    fn lookup(&self, key: &str) -> Arc<KeyLookup> {
        let now = Instant::now();
        let mut known = self.0.lock();
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
}

impl Proxy {
    /// Finishes the decision on an operation on an API key by id: its project, from the
    /// map or from `fetch_api_key` (through the proxy's own token).
    pub(super) async fn decide_key<'p>(
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
        let lookup = self.inner.key_projects.lookup(key);
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
}
