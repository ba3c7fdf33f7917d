//! What the proxy says of each request it answers: the access line (every request) and the
//! audit line (every request that may change something, allowed or refused). Never a body,
//! a header value of the client's, a secret or a token: a token appears by fingerprint.

use super::Outcome;
use super::Proxy;
use super::headers::X_PINECONE_REQUEST_ID;
use crate::body::Body;
use crate::routes::Resolved;
use http::{Method, Response};
use std::time::Duration;

impl Proxy {
    /// The access line of a request, answered in `elapsed`.
    pub(super) fn access(
        method: &Method,
        path: &str,
        resolved: &Resolved<'_>,
        outcome: &Outcome<'_>,
        response: &Response<Body>,
        elapsed: Duration,
    ) {
        tracing::info!(
            target: crate::logging::ACCESS_TARGET,
            method = %method,
            path = %path,
            operation = %resolved.operation(),
            status = response.status().as_u16(),
            upstream_status = outcome.upstream_status,
            duration_ms = elapsed.as_micros() as f64 / 1000.0,
            token = outcome.token.as_ref().map(|t| t.fingerprint.as_str()),
            api_key = outcome.key.as_ref().map(|k| k.fingerprint.as_str()),
            error = outcome.error,
            replayed = outcome.replayed,
            "request",
        );
    }

    /// The audit line of a request that changes something (any method but GET, HEAD and
    /// OPTIONS), allowed or refused: what, on which ids, the decision, what the upstream
    /// said. Never a body, a header value of the client's, a secret or a token.
    pub(super) fn audit(
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
            api_key = outcome.key.as_ref().map(|k| k.fingerprint.as_str()),
            error = outcome.error,
            "audit",
        );
    }
}
