//! The fake control plane (`/indexes`, `/collections`, inference, assistants … on the same
//! host as the Admin API), as far as the proxy's tests need it today: FACTS.md's key check.
//! Every request needs `Api-Key` with the value of a live API key of the fake's; anything
//! else (no key, a deleted key, a service account's bearer token) gets the real control
//! plane's `401` with the plain-text body `Invalid API key`, not the Admin API's JSON.
//! With a valid key, `GET /indexes` lists no indexes and every other path is a 404.

use super::{State, error, json};
use crate::body::{Body, full};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::json;
use std::sync::atomic::Ordering;

pub(crate) fn handle(state: &State, parts: &Parts) -> Response<Body> {
    state.control_requests.fetch_add(1, Ordering::Relaxed);
    let presented = parts.headers.get("api-key").and_then(|v| v.to_str().ok());
    if !presented.is_some_and(|value| state.data.lock().key_value_is_live(value)) {
        state.control_unauthorized.fetch_add(1, Ordering::SeqCst);
        return invalid_api_key();
    }
    match parts.uri.path() {
        "/indexes" if parts.method == Method::GET => json(StatusCode::OK, &json!({ "indexes": [] })),
        path => error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("No route for {} {path}", parts.method)),
    }
}

/// The control and data planes' answer to a missing or bad key (FACTS.md).
fn invalid_api_key() -> Response<Body> {
    let mut r = Response::new(full("Invalid API key"));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}
