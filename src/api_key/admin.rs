//! The Admin API calls of a managed key's life, with the proxy's own token:
//! `create_api_key`, `list_project_api_keys` (for the janitor) and `delete_api_key`.
//!
//! Each call is bounded (`upstream.timeout` for the answer, 64 KiB of body) and says what
//! went wrong in one line, with the status and Pinecone's request id, so that the engine can
//! tell a refusal ([`KeyError::Rejected`]: a 403 quota or role, a 404 project; not worth
//! retrying soon) from a passing failure ([`KeyError::Transient`]). The created key's value
//! leaves only as a [`Secret`]: a `2xx` body is never quoted, and an error quotes only
//! Pinecone's `error.message`.

use crate::body::{BoxError, empty, full};
use crate::outbound::{Outbound, SendError};
use crate::secret::Secret;
use crate::token::TokenSource;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Collected, Limited};
use serde_json::{Value, json};
use std::pin::Pin;
use std::time::Duration;

/// The most of an Admin API answer read: a page of keys is a few KiB.
const MAX_BODY: usize = 64 * 1024;

/// A key just created: the only time Pinecone shows its value.
#[derive(Debug)]
pub struct Created {
    pub id: String,
    pub name: String,
    pub value: Secret,
}

/// A key as the project's list shows it (no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    pub name: String,
}

/// Why a call did not do what it was for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Pinecone refused it (403, or 404 for a project that does not exist): retrying soon
    /// would be refused again.
    #[error("{operation} refused (HTTP {status}{request_id}): {message}")]
    Rejected { operation: &'static str, status: u16, message: String, request_id: String },
    /// It failed this time: unreachable, timed out, a 5xx or 429, an answer that does not parse.
    #[error("{operation} failed: {reason}")]
    Transient { operation: &'static str, reason: String },
}

impl KeyError {
    /// The `result` label of `api_key_operations_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            KeyError::Rejected { .. } => "rejected",
            KeyError::Transient { .. } => "transient_error",
        }
    }
}

/// The Admin API, for keys. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminKeys {
    outbound: Outbound,
    tokens: TokenSource,
    /// `upstream.url` without its trailing slash.
    base: String,
    api_version: HeaderValue,
    timeout: Duration,
}

impl AdminKeys {
    pub(crate) fn new(outbound: Outbound, tokens: TokenSource, cfg: &crate::config::UpstreamConfig) -> Self {
        Self {
            outbound,
            tokens,
            base: format!("{}://{}{}", cfg.scheme, cfg.authority, cfg.base_path),
            api_version: cfg.api_version.clone(),
            timeout: cfg.timeout,
        }
    }

    /// Resolves once a usable access token is held.
    pub async fn token_ready(&self) {
        let mut changed = self.tokens.subscribe();
        while self.tokens.current().is_none() {
            if changed.changed().await.is_err() {
                // The token engine is gone (shutting down): nothing will come.
                return std::future::pending().await;
            }
        }
    }

    /// `create_api_key` in `project` named `name` with `roles`.
    pub async fn create(&self, project: &str, name: &str, roles: &[String]) -> Result<Created, KeyError> {
        const OP: &str = "create_api_key";
        let body = json!({ "name": name, "roles": roles }).to_string();
        let path = format!("/admin/projects/{project}/api-keys");
        let (status, request_id, body) = self.call(OP, Method::POST, &path, Some(body)).await?;
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(refusal(OP, status, &request_id, &body));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|_| malformed(OP, "not JSON", &request_id))?;
        let text = |field: &Value| field.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
        let value = text(&v["value"]).ok_or_else(|| malformed(OP, "no value", &request_id))?;
        let id = text(&v["key"]["id"]).ok_or_else(|| malformed(OP, "no key.id", &request_id))?;
        if HeaderValue::from_str(&value).is_err() {
            return Err(malformed(OP, "a value not allowed in a header", &request_id));
        }
        Ok(Created { id, name: text(&v["key"]["name"]).unwrap_or_else(|| name.to_owned()), value: Secret::new(value) })
    }

    /// `list_project_api_keys` of `project`: every key's id and name.
    pub async fn list(&self, project: &str) -> Result<Vec<Listed>, KeyError> {
        const OP: &str = "list_project_api_keys";
        let (status, request_id, body) =
            self.call(OP, Method::GET, &format!("/admin/projects/{project}/api-keys"), None).await?;
        if status != StatusCode::OK {
            return Err(refusal(OP, status, &request_id, &body));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|_| malformed(OP, "not JSON", &request_id))?;
        let keys = v["data"].as_array().ok_or_else(|| malformed(OP, "no data list", &request_id))?;
        keys.iter()
            .map(|k| match (k["id"].as_str(), k["name"].as_str()) {
                (Some(id), Some(name)) => Ok(Listed { id: id.to_owned(), name: name.to_owned() }),
                _ => Err(malformed(OP, "a key without an id or a name", &request_id)),
            })
            .collect()
    }

    /// `delete_api_key`. A key that is already gone (404) counts as deleted.
    pub async fn delete(&self, id: &str) -> Result<(), KeyError> {
        const OP: &str = "delete_api_key";
        let (status, request_id, body) = self.call(OP, Method::DELETE, &format!("/admin/api-keys/{id}"), None).await?;
        match status {
            StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Ok(()),
            _ => Err(refusal(OP, status, &request_id, &body)),
        }
    }

    /// One Admin API call with the proxy's token: the status, Pinecone's request id (as
    /// `, request id …`, or empty) and the body, read within the timeout and the size bound.
    async fn call(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, String, Bytes), KeyError> {
        let transient = |reason: String| KeyError::Transient { operation, reason };
        let token = self.tokens.get().await.map_err(|_| transient("no usable access token".into()))?;
        let uri: Uri =
            format!("{}{path}", self.base).parse().map_err(|_| transient(format!("{path} is not a valid path")))?;
        let mut request = Request::new(body.map_or_else(empty, full));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(header::AUTHORIZATION, token.authorization().clone());
        headers.insert("x-pinecone-api-version", self.api_version.clone());
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let response = self.outbound.send(request, self.timeout).await.map_err(|e| match e {
            SendError::Timeout => transient(format!("no answer within {}", humantime::format_duration(self.timeout))),
            SendError::Unreachable(e) => transient(format!("the Admin API is unreachable: {e}")),
        })?;
        let status = response.status();
        let request_id = response
            .headers()
            .get("x-pinecone-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|id| id.len() <= 128)
            .map(|id| format!(", request id {id}"))
            .unwrap_or_default();
        if status == StatusCode::UNAUTHORIZED {
            self.tokens.invalidate(token.generation);
        }
        // Typed as a boxed future: the higher-ranked `Send` check cannot see through
        // `Limited`'s error conversion otherwise.
        let read: Pin<Box<dyn Future<Output = Result<Collected<Bytes>, BoxError>> + Send>> =
            Box::pin(Limited::new(response.into_body(), MAX_BODY).collect());
        let body = match tokio::time::timeout(self.timeout, read).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(e)) => return Err(transient(format!("the answer could not be read ({e}){request_id}"))),
            Err(_) => return Err(transient(format!("the answer's body took too long{request_id}"))),
        };
        Ok((status, request_id, body))
    }
}

/// A non-success answer: a refusal for 403 and 404, a passing failure otherwise (401 means
/// the token was stale: the refresher fetches another). Only Pinecone's `error.message` is
/// quoted, at most 300 characters.
fn refusal(operation: &'static str, status: StatusCode, request_id: &str, body: &[u8]) -> KeyError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message: String = parsed["error"]["message"].as_str().unwrap_or("no message").chars().take(300).collect();
    match status {
        StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
            KeyError::Rejected { operation, status: status.as_u16(), message, request_id: request_id.to_owned() }
        }
        _ => KeyError::Transient { operation, reason: format!("HTTP {status}{request_id}: {message}") },
    }
}

fn malformed(operation: &'static str, what: &str, request_id: &str) -> KeyError {
    KeyError::Transient { operation, reason: format!("the answer does not parse: {what}{request_id}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Env, Flags};
    use crate::credentials::Credentials;
    use crate::fake::{DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, FakePinecone};
    use crate::metrics::Metrics;
    use crate::outbound::Settings;
    use crate::token::{HttpFetcher, Refresher};
    use http::Response;
    use hyper::body::Incoming;
    use std::sync::Arc;

    /// The calls against `api_url`, with tokens from `token_url` (a refresher of their own).
    fn keys_for(api_url: &str, token_url: &str) -> AdminKeys {
        let mut env = Env::default();
        env.set("PINECONE_CLIENT_ID", DEMO_CLIENT_ID)
            .set("PINECONE_CLIENT_SECRET", DEMO_CLIENT_SECRET)
            .set("PINECONE_PROXY_TOKEN_URL", token_url)
            .set("PINECONE_PROXY_UPSTREAM_URL", api_url)
            .set("PINECONE_PROXY_UPSTREAM_TIMEOUT", "2s");
        let config = crate::config::load(&Flags::default(), &env).unwrap();
        let outbound = Outbound::new(Settings::new(&config.upstream).unwrap());
        let tokens = TokenSource::new(Arc::new(Metrics::new()), config.token.timeout);
        let fetcher = HttpFetcher::new(outbound.clone(), &config.token, config.upstream.api_version.clone());
        let credentials = Credentials::load(&config.credentials).unwrap();
        let refresher = Refresher::new(tokens.clone(), fetcher, credentials, &config.token);
        tokio::spawn(refresher.run(std::future::pending()));
        AdminKeys::new(outbound, tokens, &config.upstream)
    }

    async fn fake() -> (FakePinecone, String) {
        let fake = FakePinecone::start("127.0.0.1:0".parse().unwrap(), 3600).await.unwrap();
        let project = fake.state().data.lock().projects[0]["id"].as_str().unwrap().to_owned();
        (fake, project)
    }

    #[tokio::test]
    async fn a_key_is_created_listed_and_deleted() {
        let (fake, project) = fake().await;
        let keys = keys_for(&fake.api_url(), &fake.token_url());
        let roles = vec!["ControlPlaneViewer".to_owned(), "DataPlaneEditor".to_owned()];
        let created = keys.create(&project, "app-1800000000-abc123", &roles).await.unwrap();
        assert_eq!(created.name, "app-1800000000-abc123");
        let (in_project, with_roles) = fake.state().data.lock().key_of_value(created.value.expose()).unwrap();
        assert_eq!((in_project.as_str(), with_roles), (project.as_str(), roles), "the value works, in the project");
        let listed = keys.list(&project).await.unwrap();
        assert!(listed.contains(&Listed { id: created.id.clone(), name: created.name.clone() }), "{listed:?}");
        keys.delete(&created.id).await.unwrap();
        assert!(fake.state().data.lock().key_of_value(created.value.expose()).is_none(), "gone at once");
        keys.delete(&created.id).await.expect("a key already gone counts as deleted");
    }

    #[tokio::test]
    async fn refusals_name_pinecones_message_and_request_id() {
        let (fake, project) = fake().await;
        let keys = keys_for(&fake.api_url(), &fake.token_url());
        fake.state().refuse_api_key_creation(Some("Not enough available quota"));
        let e = keys.create(&project, "app-1-abcdef", &["ProjectEditor".to_owned()]).await.unwrap_err();
        let KeyError::Rejected { status, message, request_id, .. } = &e else { panic!("{e:?}") };
        assert_eq!((*status, message.as_str()), (403, "Not enough available quota"));
        assert!(request_id.starts_with(", request id "), "{e}");
        assert_eq!(e.result_label(), "rejected");
        fake.state().refuse_api_key_creation(None);
        let e = keys.create("no-such-project", "app-1-abcdef", &["ProjectEditor".to_owned()]).await.unwrap_err();
        assert!(matches!(e, KeyError::Rejected { status: 404, .. }), "{e:?}");
    }

    /// An Admin API that answers `/admin/…` with `status` and `body`, whatever is asked.
    async fn answering(status: u16, body: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(move |_: Request<Incoming>| async move {
                    let mut r = Response::new(full(body));
                    *r.status_mut() = StatusCode::from_u16(status).unwrap();
                    r.headers_mut().insert("x-pinecone-request-id", HeaderValue::from_static("req-7"));
                    Ok::<_, std::convert::Infallible>(r)
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(io, service));
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn answers_that_do_not_parse_are_transient_and_never_quote_a_value() {
        let (fake, project) = fake().await;
        let roles = ["ProjectEditor".to_owned()];
        for (status, body, says) in [
            (201, r#"{"key":{"id":"k-1"},"value":""}"#, "no value"),
            (201, r#"{"key":{},"value":"pckey_secret_never_shown"}"#, "no key.id"),
            (201, "pckey_secret_never_shown", "not JSON"),
            (201, r#"{"key":{"id":"k-1"},"value":"pckey\nsecret_never_shown"}"#, "header"),
            (
                503,
                r#"{"error":{"code":"UNAVAILABLE","message":"try later"}}"#,
                "HTTP 503 Service Unavailable, request id req-7: try later",
            ),
        ] {
            let keys = keys_for(&answering(status, body).await, &fake.token_url());
            let e = keys.create(&project, "app-1-abcdef", &roles).await.unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, KeyError::Transient { .. }), "{status} {body}: {e:?}");
            assert!(text.contains(says), "{text}");
            assert!(!text.contains("secret_never_shown"), "{text}");
        }
        let keys = keys_for(&answering(200, r#"{"data":[{"id":"k-1"}]}"#).await, &fake.token_url());
        let e = keys.list(&project).await.unwrap_err();
        assert!(e.to_string().contains("a key without an id or a name"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_admin_api_is_transient() {
        let (fake, project) = fake().await;
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = format!("http://127.0.0.1:{}", closed.local_addr().unwrap().port());
        let e = keys_for(&url, &fake.token_url()).list(&project).await.unwrap_err();
        assert!(e.to_string().starts_with("list_project_api_keys failed: the Admin API is unreachable"), "{e}");
        assert_eq!(e.result_label(), "transient_error");
    }
}
