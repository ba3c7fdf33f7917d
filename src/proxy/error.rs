//! The proxy's own errors: what each means ([`ProxyError`], one `x-pinecone-proxy-error`
//! reason a variant, with whose fault it was in its status), and the one place one becomes a
//! response ([`error_response`], and `Proxy::failed`, which counts and logs it too): Pinecone's error body, so SDKs show our message as they
//! would show Pinecone's.

use super::{Outcome, Proxy};
use crate::body::{Body, full};
use crate::token::TokenUnavailable;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};
use std::time::Duration;

/// The header that marks an error the proxy made itself, with its reason.
pub(crate) const ERROR_HEADER: &str = "x-pinecone-proxy-error";

/// An error the proxy answers itself. Each variant is one `x-pinecone-proxy-error` reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no usable Pinecone access token; the next token request is due in {}s", retry_after.as_secs())]
    TokenUnavailable { retry_after: Duration },
    #[error(
        "the Pinecone token endpoint rejects the proxy's {} and no usable token is left; see the proxy's /status and logs",
        if *audience { "audience (token.audience: Pinecone's is https://api.pinecone.io/, with its trailing slash)" } else { "credentials" }
    )]
    CredentialsRejected { audience: bool },
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
    #[error(
        "{operation} is a control-plane operation, which takes a project API key: set [api_key] \
         (api_key.project_id) so that the proxy supplies a managed key, or send your own in Api-Key"
    )]
    ApiKeyNotConfigured { operation: &'static str },
    #[error(
        "no usable managed API key (api_key.project_id); the next creation is due in {}s; see the proxy's /status",
        retry_after.as_secs()
    )]
    ApiKeyUnavailable { retry_after: Duration },
}

impl ProxyError {
    /// The `x-pinecone-proxy-error` reason.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            ProxyError::TokenUnavailable { .. } => "token_unavailable",
            ProxyError::CredentialsRejected { .. } => "credentials_rejected",
            ProxyError::UpstreamUnreachable(_) => "upstream_unreachable",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::BadRequest { .. } => "bad_request",
            ProxyError::BodyTimeout(_) => "body_timeout",
            ProxyError::Forbidden(_) => "forbidden_by_policy",
            ProxyError::ApiKeyNotConfigured { .. } => "api_key_not_configured",
            ProxyError::ApiKeyUnavailable { .. } => "api_key_unavailable",
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ProxyError::TokenUnavailable { .. }
            | ProxyError::CredentialsRejected { .. }
            | ProxyError::ApiKeyUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamUnreachable(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest { status, .. } => *status,
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::Forbidden(_) | ProxyError::ApiKeyNotConfigured { .. } => StatusCode::FORBIDDEN,
        }
    }

    /// Pinecone's error code for the body.
    fn code(&self) -> &'static str {
        match self {
            ProxyError::TokenUnavailable { .. }
            | ProxyError::CredentialsRejected { .. }
            | ProxyError::UpstreamUnreachable(_)
            | ProxyError::ApiKeyUnavailable { .. } => "UNAVAILABLE",
            ProxyError::UpstreamTimeout(_) | ProxyError::BodyTimeout(_) => "DEADLINE_EXCEEDED",
            ProxyError::BadRequest { .. } => "INVALID_ARGUMENT",
            ProxyError::Forbidden(_) | ProxyError::ApiKeyNotConfigured { .. } => "PERMISSION_DENIED",
        }
    }

    pub(crate) fn bad_request(status: StatusCode, message: impl Into<String>) -> Self {
        ProxyError::BadRequest { status, message: message.into() }
    }
}

impl From<TokenUnavailable> for ProxyError {
    fn from(e: TokenUnavailable) -> Self {
        match e {
            TokenUnavailable::Timeout { retry_after } => ProxyError::TokenUnavailable { retry_after },
            TokenUnavailable::CredentialsRejected { audience } => ProxyError::CredentialsRejected { audience },
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
    if let ProxyError::TokenUnavailable { retry_after } | ProxyError::ApiKeyUnavailable { retry_after } = error {
        h.insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(header::ALLOW, HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"));
    }
    response
}

/// Whether a request is a gRPC call (`content-type: application/grpc…`).
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl ProxyError {
    /// The gRPC status code a gRPC client gets for this error.
    fn grpc_code(&self) -> u8 {
        match self {
            // PERMISSION_DENIED
            ProxyError::Forbidden(_) | ProxyError::ApiKeyNotConfigured { .. } => 7,
            // DEADLINE_EXCEEDED
            ProxyError::UpstreamTimeout(_) | ProxyError::BodyTimeout(_) => 4,
            // INVALID_ARGUMENT
            ProxyError::BadRequest { .. } => 3,
            // UNAVAILABLE: the client may try again.
            ProxyError::TokenUnavailable { .. }
            | ProxyError::CredentialsRejected { .. }
            | ProxyError::UpstreamUnreachable(_)
            | ProxyError::ApiKeyUnavailable { .. } => 14,
        }
    }
}

/// A [`ProxyError`] for a gRPC client: a trailers-only answer (HTTP 200, `content-type:
/// application/grpc`, the status in `grpc-status` and the message, percent-encoded, in
/// `grpc-message`), with `x-pinecone-proxy-error` as for REST.
pub(crate) fn grpc_error_response(error: &ProxyError) -> Response<Body> {
    let message = format!("pinecone-admin-proxy: {error}");
    let encoded: String = message
        .bytes()
        .map(|b| if (0x20..0x7f).contains(&b) && b != b'%' { char::from(b).to_string() } else { format!("%{b:02X}") })
        .collect();
    let mut response = Response::new(crate::body::empty());
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(u16::from(error.grpc_code())));
    h.insert("grpc-message", HeaderValue::from_str(&encoded).expect("visible ASCII"));
    h.insert(ERROR_HEADER, HeaderValue::from_static(error.reason()));
    response
}

impl Proxy {
    /// A request the proxy answers itself: counted, logged when it is not the client's own
    /// doing (that is on its access line), and made a response.
    pub(super) fn failed(
        &self,
        error: ProxyError,
        method: &Method,
        (path, grpc): (&str, bool),
        outcome: &mut Outcome<'_>,
    ) -> Response<Body> {
        let metrics = &self.inner.metrics;
        outcome.error = Some(error.reason());
        match &error {
            ProxyError::UpstreamUnreachable(_) => metrics.upstream_unreachable.inc(),
            ProxyError::UpstreamTimeout(_) => metrics.upstream_timeout.inc(),
            ProxyError::BodyTimeout(_) => metrics.limit_hit(crate::limits::Limit::BodyReadTimeout.label()),
            _ => {}
        }
        let clients_doing = matches!(
            error,
            ProxyError::BadRequest { .. }
                | ProxyError::BodyTimeout(_)
                | ProxyError::Forbidden(_)
                | ProxyError::ApiKeyNotConfigured { .. }
        );
        if !clients_doing {
            tracing::warn!(method = %method, path = %path, reason = error.reason(), error = %error, "request failed");
        }
        let response = if grpc { grpc_error_response(&error) } else { error_response(&error) };
        if let ProxyError::Forbidden(why) = error {
            outcome.refusal = Some(why);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;

    #[test]
    fn error_responses_table() {
        let cases = [
            (
                ProxyError::TokenUnavailable { retry_after: Duration::from_secs(3) },
                503,
                "token_unavailable",
                "UNAVAILABLE",
            ),
            (ProxyError::CredentialsRejected { audience: false }, 503, "credentials_rejected", "UNAVAILABLE"),
            (ProxyError::UpstreamUnreachable("refused".into()), 502, "upstream_unreachable", "UNAVAILABLE"),
            (ProxyError::UpstreamTimeout(Duration::from_secs(60)), 504, "upstream_timeout", "DEADLINE_EXCEEDED"),
            (ProxyError::bad_request(StatusCode::METHOD_NOT_ALLOWED, "no"), 405, "bad_request", "INVALID_ARGUMENT"),
            (ProxyError::bad_request(StatusCode::BAD_REQUEST, "no"), 400, "bad_request", "INVALID_ARGUMENT"),
            (
                ProxyError::ApiKeyNotConfigured { operation: "list_indexes" },
                403,
                "api_key_not_configured",
                "PERMISSION_DENIED",
            ),
            (
                ProxyError::ApiKeyUnavailable { retry_after: Duration::from_secs(600) },
                503,
                "api_key_unavailable",
                "UNAVAILABLE",
            ),
        ];
        for (error, status, reason, code) in cases {
            let r = error_response(&error);
            assert_eq!(r.status().as_u16(), status);
            assert_eq!(r.headers()[ERROR_HEADER], reason);
            assert_eq!(r.headers()["content-type"], "application/json");
            let retry = ["token_unavailable", "api_key_unavailable"].contains(&reason);
            assert_eq!(r.headers().contains_key("retry-after"), retry, "{reason}");
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
