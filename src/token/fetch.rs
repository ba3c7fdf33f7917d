//! How one token is fetched: the request to the token endpoint, and the classification of
//! its answer into a token, a transient failure or a rejection of the credentials.
//!
//! [`classify`] is a pure function of the status, headers and body. [`Fetch`] is the seam
//! between the refresh loop and the network, so the loop can be tested against an
//! in-memory token source. Nothing here logs; nothing here puts the secret or a token in
//! an error.

use super::quota::{self, Bucket};
use super::schedule::{MAX_LIFETIME, RETRY_AFTER_CAP};
use crate::VERSION;
use crate::body::{BoxError, full};
use crate::config::{RequestFormat, TokenConfig};
use crate::credentials::CredentialSet;
use crate::outbound::{Outbound, SendError};
use crate::secret::Secret;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Collected, Limited};
use std::pin::Pin;
use std::time::{Duration, SystemTime};

/// A token as the endpoint returned it, before the engine dates it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub access_token: Secret,
    pub lifetime: Duration,
}

/// Why a token request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Worth retrying with backoff: connection errors, timeouts, 5xx, 429, bad 200s.
    #[error("{reason}")]
    Transient { reason: String, retry_after: Option<Duration> },
    /// The endpoint refused the credentials (400, 401, 403). Pinecone's `error` and
    /// `error_description` are kept: they say which of id, secret or audience is wrong.
    #[error("token endpoint rejected the credentials: HTTP {status} {error}: {description}")]
    Rejected { status: u16, error: String, description: String },
}

impl FetchError {
    pub fn transient(reason: impl Into<String>) -> Self {
        Self::Transient { reason: reason.into(), retry_after: None }
    }

    /// Whether the endpoint refused the audience rather than the client id or secret: Auth0's
    /// `access_denied` "Service not enabled within domain" (FACTS.md: a 403 for an audience
    /// without its trailing slash, say).
    pub fn is_audience(&self) -> bool {
        matches!(self, Self::Rejected { description, .. } if description.starts_with("Service not enabled within domain"))
    }

    /// The `result` label of `token_requests_total`.
    pub fn result_label(&self) -> &'static str {
        match self {
            FetchError::Transient { .. } => "transient_error",
            FetchError::Rejected { .. } => "rejected",
        }
    }
}

/// What one token request came back with: its outcome, and the quota buckets its response
/// reported (none when there was no response, or it said nothing of quotas).
#[derive(Debug, Clone)]
pub struct Answer {
    pub result: Result<Fetched, FetchError>,
    pub quota: Vec<Bucket>,
}

impl From<Result<Fetched, FetchError>> for Answer {
    fn from(result: Result<Fetched, FetchError>) -> Self {
        Self { result, quota: Vec::new() }
    }
}

/// Something that fetches tokens: the real endpoint, or a test's in-memory source.
pub trait Fetch: Send + Sync + 'static {
    fn fetch(&self, credentials: &CredentialSet) -> impl Future<Output = Answer> + Send;
}

/// The token endpoint over HTTP.
#[derive(Debug, Clone)]
pub struct HttpFetcher {
    outbound: Outbound,
    url: Uri,
    timeout: Duration,
    audience: String,
    format: RequestFormat,
    api_version: HeaderValue,
    user_agent: HeaderValue,
}

/// The most of a token response we read: a real one is about 1 KiB.
const MAX_RESPONSE: usize = 64 * 1024;

impl HttpFetcher {
    pub(crate) fn new(outbound: Outbound, cfg: &TokenConfig, api_version: HeaderValue) -> Self {
        Self {
            outbound,
            url: cfg.url.clone(),
            timeout: cfg.timeout,
            audience: cfg.audience.clone(),
            format: cfg.request_format,
            api_version,
            user_agent: HeaderValue::from_str(&format!("pinecone-admin-proxy/{VERSION}")).expect("ascii"),
        }
    }

    fn body(&self, c: &CredentialSet) -> (Vec<u8>, &'static str) {
        let fields = [
            ("grant_type", "client_credentials"),
            ("client_id", c.client_id.expose()),
            ("client_secret", c.client_secret.expose()),
            ("audience", self.audience.as_str()),
        ];
        match self.format {
            RequestFormat::Json => {
                let map: serde_json::Map<String, serde_json::Value> =
                    fields.iter().map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v))).collect();
                (serde_json::to_vec(&map).expect("a map of strings serialises"), "application/json")
            }
            RequestFormat::Form => {
                let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
                (body.into_bytes(), "application/x-www-form-urlencoded")
            }
        }
    }
}

impl Fetch for HttpFetcher {
    async fn fetch(&self, credentials: &CredentialSet) -> Answer {
        let (body, content_type) = self.body(credentials);
        let request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, content_type)
            .header(header::ACCEPT, "application/json")
            .header("x-pinecone-api-version", self.api_version.clone())
            .header(header::USER_AGENT, self.user_agent.clone())
            .body(full(body))
            .expect("valid request parts");
        let response = match self.outbound.send(request, self.timeout).await {
            Ok(response) => response,
            Err(SendError::Unreachable(e)) => {
                return Err(FetchError::transient(format!("token endpoint unreachable: {e}"))).into();
            }
            Err(SendError::Timeout) => {
                let waited = humantime::format_duration(self.timeout);
                return Err(FetchError::transient(format!(
                    "the token endpoint sent no response headers within {waited}"
                )))
                .into();
            }
        };
        let status = response.status();
        let now = SystemTime::now();
        let retry_after = retry_after(response.headers(), now);
        // Read whatever the outcome: a 429 reports the quota as much as a 200 does.
        let quota = quota::parse(response.headers(), now);
        // Typed as a boxed future: the higher-ranked `Send` check of the fetch's future cannot
        // see through `Limited`'s error conversion otherwise.
        let read: Pin<Box<dyn Future<Output = Result<Collected<Bytes>, BoxError>> + Send>> =
            Box::pin(Limited::new(response.into_body(), MAX_RESPONSE).collect());
        let result = match read.await {
            Ok(body) => classify(status, &body.to_bytes(), retry_after),
            Err(e) => Err(FetchError::transient(format!("reading the token response failed: {e}"))),
        };
        Answer { result, quota }
    }
}

/// `Retry-After` in seconds or as an HTTP date, capped at 10 minutes.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(value).ok()?.duration_since(now).unwrap_or(Duration::ZERO),
    };
    Some(delay.min(RETRY_AFTER_CAP))
}

#[derive(serde::Deserialize)]
struct Success {
    access_token: Option<String>,
    expires_in: Option<serde_json::Number>,
    token_type: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct ErrorBody {
    error: Option<String>,
    error_description: Option<String>,
}

/// Turns a token endpoint's answer into a token or a classified failure. The body of a 200
/// is never quoted in an error: it may hold a token.
pub fn classify(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> Result<Fetched, FetchError> {
    let malformed = |what: &str| FetchError::Transient {
        reason: format!("malformed token response (HTTP 200): {what}"),
        retry_after: None,
    };
    if status == StatusCode::OK {
        let parsed: Success = serde_json::from_slice(body).map_err(|_| malformed("not a JSON object"))?;
        let token = parsed.access_token.filter(|t| !t.trim().is_empty()).ok_or_else(|| malformed("no access_token"))?;
        if HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
            return Err(malformed("access_token has characters not allowed in a header"));
        }
        if let Some(t) = parsed.token_type
            && !t.eq_ignore_ascii_case("bearer")
        {
            return Err(malformed("token_type is not Bearer"));
        }
        let secs = parsed.expires_in.and_then(|n| n.as_f64()).ok_or_else(|| malformed("no numeric expires_in"))?;
        if !(secs.is_finite() && secs >= 1.0) {
            return Err(malformed("expires_in is not a positive number of seconds"));
        }
        let lifetime = Duration::from_secs_f64(secs.min(MAX_LIFETIME.as_secs_f64()));
        return Ok(Fetched { access_token: Secret::new(token), lifetime });
    }
    let err: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let error = shorten(err.error.as_deref().unwrap_or_default());
    let description = shorten(err.error_description.as_deref().unwrap_or_default());
    match status.as_u16() {
        400 | 401 | 403 => Err(FetchError::Rejected { status: status.as_u16(), error, description }),
        code => {
            let detail = if error.is_empty() { String::new() } else { format!(" {error}: {description}") };
            Err(FetchError::Transient { reason: format!("token endpoint answered HTTP {code}{detail}"), retry_after })
        }
    }
}

/// Keeps an endpoint-provided string to one short printable line.
fn shorten(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Result<Fetched, FetchError> {
        classify(StatusCode::OK, body.as_bytes(), None)
    }

    #[test]
    fn success_reads_the_lifetime_from_the_response() {
        let f = ok(r#"{"access_token":"eyJabc","expires_in":1800,"token_type":"Bearer"}"#).unwrap();
        assert_eq!(f.access_token.expose(), "eyJabc");
        assert_eq!(f.lifetime, Duration::from_secs(1800));
        let f = ok(r#"{"access_token":"eyJabc","expires_in":86400,"scope":"x"}"#).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(86400));
    }

    #[test]
    fn absurd_lifetimes_are_capped() {
        let f = ok(r#"{"access_token":"t","expires_in":99999999999}"#).unwrap();
        assert_eq!(f.lifetime, MAX_LIFETIME);
    }

    #[test]
    fn malformed_successes_are_transient_and_never_quote_the_body() {
        for body in [
            "",
            "not json",
            "[]",
            r#"{"expires_in":100}"#,
            r#"{"access_token":"","expires_in":100}"#,
            r#"{"access_token":"secret-tok"}"#,
            r#"{"access_token":"secret-tok","expires_in":0}"#,
            r#"{"access_token":"secret-tok","expires_in":-5}"#,
            r#"{"access_token":"secret-tok","expires_in":"soon"}"#,
            r#"{"access_token":"secret-tok","expires_in":100,"token_type":"mac"}"#,
            "{\"access_token\":\"bad\\ntok\",\"expires_in\":100}",
        ] {
            let e = ok(body).expect_err(body);
            assert!(matches!(e, FetchError::Transient { .. }), "{body}");
            assert!(!e.to_string().contains("secret-tok"), "{e}");
        }
    }

    #[test]
    fn status_classes() {
        let body = br#"{"error":"access_denied","error_description":"Unauthorized"}"#;
        for code in [400, 401, 403] {
            let e = classify(StatusCode::from_u16(code).unwrap(), body, None).unwrap_err();
            assert_eq!(
                e,
                FetchError::Rejected {
                    status: code,
                    error: "access_denied".into(),
                    description: "Unauthorized".into()
                }
            );
            assert_eq!(e.result_label(), "rejected");
        }
        for code in [429, 500, 502, 503, 504, 404] {
            let e = classify(StatusCode::from_u16(code).unwrap(), b"<html>", Some(Duration::from_secs(7))).unwrap_err();
            assert_eq!(e.result_label(), "transient_error");
            assert!(matches!(e, FetchError::Transient { retry_after: Some(d), .. } if d == Duration::from_secs(7)));
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("12"));
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(12)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&date).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("99999"));
        assert_eq!(retry_after(&h, now), Some(RETRY_AFTER_CAP));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("whenever"));
        assert_eq!(retry_after(&h, now), None);
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        h.insert(header::RETRY_AFTER, HeaderValue::from_str(&past).unwrap());
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));
    }
}
