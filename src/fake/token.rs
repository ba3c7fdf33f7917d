//! The fake token endpoint, `POST /oauth/token`, as FACTS.md describes login.pinecone.io:
//! JSON or form bodies with four required fields; 401 `access_denied` for a wrong id or
//! secret, 403 for an unknown audience or grant type, 400 `invalid_request` for a missing
//! field or an unparsable body; success is `{"access_token", "expires_in", "token_type"}`
//! with a JWT-shaped token. Scripted faults come first.

use super::quota::Verdict;
use super::{AUDIENCE, Issued, Recorded, State, TokenFault, base64url, json};
use crate::body::{Body, BoxError, full};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Decrements the in-flight count when the request ends, however it ends.
struct InFlight<'a>(&'a State);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.token_inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) async fn handle(state: &State, parts: &Parts, body: Bytes) -> Result<Response<Body>, BoxError> {
    // With a quota, every answer reports it, whatever its status.
    let mut quota = HeaderMap::new();
    let mut response = answer(state, parts, body, &mut quota).await?;
    response.headers_mut().extend(quota);
    Ok(response)
}

/// Counts a refusal for a spent bucket and answers as Auth0 does: 429 `too_many_requests`.
fn spent(state: &State, bucket: &str) -> Response<Body> {
    state.quota_refused.fetch_add(1, Ordering::SeqCst);
    error(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", &format!("Quota exceeded ({bucket})"))
}

async fn answer(state: &State, parts: &Parts, body: Bytes, quota: &mut HeaderMap) -> Result<Response<Body>, BoxError> {
    let n = state.token_requests.fetch_add(1, Ordering::SeqCst) + 1;
    let now_inflight = state.token_inflight.fetch_add(1, Ordering::SeqCst) + 1;
    state.token_inflight_max.fetch_max(now_inflight, Ordering::SeqCst);
    let _inflight = InFlight(state);
    *state.last_token_request.lock() = Some(Recorded {
        method: parts.method.clone(),
        target: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    if let Some(scripted) = scripted(state, n).await {
        return scripted;
    }
    if parts.method != Method::POST {
        return Ok(error(StatusCode::NOT_FOUND, "not_found", "Not Found"));
    }
    let verdict = state.quota.lock().as_mut().map(|q| q.request(Instant::now()));
    match verdict {
        Some(Verdict::Go(headers)) => *quota = headers,
        Some(Verdict::Spent(bucket, headers)) => {
            *quota = headers;
            return Ok(spent(state, bucket));
        }
        None => {}
    }
    let fields = match parse(parts, &body) {
        Ok(fields) => fields,
        Err(description) => return Ok(error(StatusCode::BAD_REQUEST, "invalid_request", &description)),
    };
    let known = state.clients.lock().get(fields.get("client_id").map_or("", String::as_str)).cloned();
    if let Some(refused) = refusal(&fields, known.as_deref()) {
        return Ok(refused);
    }
    let verdict = state.quota.lock().as_mut().map(|q| q.issue(&fields["client_id"], Instant::now()));
    match verdict {
        Some(Verdict::Go(headers)) => quota.extend(headers),
        Some(Verdict::Spent(bucket, headers)) => {
            quota.extend(headers);
            return Ok(spent(state, bucket));
        }
        None => {}
    }
    Ok(issue(state, &fields["client_id"]))
}

/// What the knobs script for the `n`th request: a delay first, then a fault or a scripted
/// outage, if any.
async fn scripted(state: &State, n: u64) -> Option<Result<Response<Body>, BoxError>> {
    let delay = state.token_delay();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let fault = state.faults.lock().pop_front();
    match fault {
        Some(TokenFault::Reset) => return Some(Err("scripted connection reset".into())),
        Some(TokenFault::Ok(body)) => return Some(Ok(raw(StatusCode::OK, body, None))),
        Some(TokenFault::Status { status, body, retry_after }) => {
            return Some(Ok(raw(StatusCode::from_u16(status).expect("valid status"), body, retry_after)));
        }
        Some(TokenFault::Delay(d)) => tokio::time::sleep(d).await,
        None => {}
    }
    let every = state.fail_every();
    (every > 0 && n.is_multiple_of(every))
        .then(|| Ok(error(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", "scripted outage")))
}

/// Auth0's checks of a client-credentials request, in its order: the fields are there, the
/// client and its secret are known (`secret`: the known client's), the grant and the
/// audience are the ones it allows. The refusal, as Auth0 words it, if any.
fn refusal(fields: &HashMap<String, String>, secret: Option<&str>) -> Option<Response<Body>> {
    for name in ["grant_type", "client_id", "client_secret", "audience"] {
        if fields.get(name).is_none_or(|v| v.is_empty()) {
            let missing = format!("Missing required parameter: {name}");
            return Some(error(StatusCode::BAD_REQUEST, "invalid_request", &missing));
        }
    }
    if secret != Some(fields["client_secret"].as_str()) {
        return Some(error(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized"));
    }
    if fields["grant_type"] != "client_credentials" {
        let refused = format!("Grant type '{}' not allowed for the client.", fields["grant_type"]);
        return Some(error(StatusCode::FORBIDDEN, "unauthorized_client", &refused));
    }
    if fields["audience"] != AUDIENCE {
        let refused = format!("Service not enabled within domain: {}", fields["audience"]);
        return Some(error(StatusCode::FORBIDDEN, "access_denied", &refused));
    }
    None
}

/// A new token for `client_id`, remembered for the Admin API to check.
fn issue(state: &State, client_id: &str) -> Response<Body> {
    let expires_in = state.expires_in();
    let token = jwt(client_id, expires_in);
    let issued = Issued {
        expires: Instant::now() + Duration::from_secs(expires_in),
        revoked: false,
        client_id: client_id.to_owned(),
    };
    state.issued.lock().insert(token.clone(), issued);
    state.tokens_issued.fetch_add(1, Ordering::SeqCst);
    json(StatusCode::OK, &json!({ "access_token": token, "expires_in": expires_in, "token_type": "Bearer" }))
}

fn parse(parts: &Parts, body: &[u8]) -> Result<HashMap<String, String>, String> {
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with("application/x-www-form-urlencoded") {
        return Ok(form_urlencoded::parse(body).into_owned().collect());
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|_| "Invalid JSON body".to_owned())?;
    let object = value.as_object().ok_or_else(|| "The request body must be a JSON object".to_owned())?;
    Ok(object.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
}

fn error(status: StatusCode, code: &str, description: &str) -> Response<Body> {
    json(status, &json!({ "error": code, "error_description": description }))
}

fn raw(status: StatusCode, body: String, retry_after: Option<String>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// A JWT-shaped token (`eyJ…`), unique and unguessable; its signature is random bytes.
fn jwt(client_id: &str, expires_in: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let header = base64url(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = json!({
        "iss": "https://login.pinecone.io/",
        "sub": format!("{client_id}@clients"),
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + expires_in,
        "gty": "client-credentials",
        "jti": super::uuid(),
    });
    let signature: [u8; 32] = rand::random();
    format!("{header}.{}.{}", base64url(claims.to_string().as_bytes()), base64url(&signature))
}
