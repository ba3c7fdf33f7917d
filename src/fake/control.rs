//! The fake control plane (`/indexes` … on the same host as the Admin API), as FACTS.md
//! describes it. Every request needs `Api-Key` with the value of a live API key of the
//! fake's; anything else (no key, a deleted key, a service account's bearer token) gets the
//! real control plane's `401` with the plain-text body `Invalid API key`, not the Admin API's
//! JSON. A key works in its own project only, and only for what its roles cover (`403`
//! otherwise): reading takes a project or control-plane role, writing an editor's.
//!
//! Indexes live in memory, per project: `list_indexes`, `create_index` (serverless, with a
//! `host` as the real one names it), `describe_index`, `delete_index`. Other control-plane
//! paths are a 404. An index is kept in the 2025-10 shape (`dimension`, `metric`,
//! `spec.serverless`); a request with `X-Pinecone-Api-Version` 2026-07 or later (the Python
//! SDK 10.2's) is answered in that version's shape instead, and may create one in it
//! (`schema.fields` with the reserved `_values` or `_sparse_values` vector field,
//! `deployment` managed), as the SDK's models describe it (there is no 2026-07 `db_control`
//! specification beside FACTS.md).

use super::{Data, State, accepted, error, invalid, json, not_found};
use crate::body::{Body, full};
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The roles that may read the control plane, and those that may change it (FACTS.md).
const READERS: [&str; 4] = ["ProjectEditor", "ProjectViewer", "ControlPlaneEditor", "ControlPlaneViewer"];
const WRITERS: [&str; 2] = ["ProjectEditor", "ControlPlaneEditor"];

pub(crate) fn handle(state: &Arc<State>, parts: &Parts, body: &[u8]) -> Response<Body> {
    state.control_requests.fetch_add(1, Ordering::Relaxed);
    state.record(parts, body);
    let mut data = state.data.lock();
    let presented = parts.headers.get("api-key").and_then(|v| v.to_str().ok());
    let Some((project, roles)) = presented.and_then(|value| data.key_of_value(value)) else {
        state.control_unauthorized.fetch_add(1, Ordering::SeqCst);
        return invalid_api_key();
    };
    let write = !matches!(parts.method, Method::GET | Method::HEAD);
    let needed: &[&str] = if write { &WRITERS } else { &READERS };
    if !roles.iter().any(|r| needed.contains(&r.as_str())) {
        return error(StatusCode::FORBIDDEN, "FORBIDDEN", "The API key's roles do not allow this operation.");
    }
    let segments: Vec<&str> = parts.uri.path().trim_start_matches('/').split('/').collect();
    let m = &parts.method;
    let shaped = Shape::of(parts);
    match segments.as_slice() {
        ["indexes"] if m == Method::GET => {
            let indexes: Vec<Value> =
                data.indexes.iter().filter(|(p, _)| *p == project).map(|(_, i)| shaped.render(i)).collect();
            json(StatusCode::OK, &json!({ "indexes": indexes }))
        }
        ["indexes"] if m == Method::POST => create_index(state, &mut data, &project, body, shaped),
        ["indexes", name] if m == Method::GET => match position(&data, &project, name) {
            Some(i) => json(StatusCode::OK, &shaped.render(&data.indexes[i].1)),
            None => not_found("Index", name),
        },
        ["indexes", name] if m == Method::DELETE => match position(&data, &project, name) {
            Some(i) => {
                data.indexes.remove(i);
                // Its data plane stops with it.
                data.data_servers.remove(&(project.clone(), (*name).to_owned()));
                accepted()
            }
            None => not_found("Index", name),
        },
        _ => error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("No route for {m} {}", parts.uri.path())),
    }
}

fn position(data: &Data, project: &str, name: &str) -> Option<usize> {
    data.indexes.iter().position(|(p, i)| p == project && i["name"] == name)
}

/// Which API version's index shape a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// 2025-10 and 2026-04: `dimension`, `metric`, `spec.serverless`.
    Spec,
    /// 2026-07: `schema.fields`, `deployment`.
    Schema,
}

impl Shape {
    fn of(parts: &Parts) -> Self {
        let version = parts.headers.get("x-pinecone-api-version").and_then(|v| v.to_str().ok()).unwrap_or("");
        // Versions are YYYY-MM, so they compare as text.
        if version >= "2026-07" { Shape::Schema } else { Shape::Spec }
    }

    /// A stored (2025-10) index as this version shows it.
    fn render(self, index: &Value) -> Value {
        if self == Shape::Spec {
            return index.clone();
        }
        let serverless = &index["spec"]["serverless"];
        let field = match index["vector_type"].as_str() {
            Some("sparse") => ("_sparse_values", json!({ "type": "sparse_vector", "metric": "dotproduct" })),
            _ => (
                "_values",
                json!({ "type": "dense_vector", "dimension": index["dimension"], "metric": index["metric"] }),
            ),
        };
        json!({
            "name": index["name"],
            "host": index["host"],
            "status": index["status"],
            "schema": { "fields": { field.0: field.1 } },
            "deployment": { "deployment_type": "managed", "cloud": serverless["cloud"], "region": serverless["region"] },
            "deletion_protection": index["deletion_protection"],
            "tags": index["tags"],
        })
    }

    /// A 2026-07 create request in the stored (2025-10) shape: a managed deployment and one
    /// reserved vector field.
    fn stored_request(self, request: serde_json::Map<String, Value>) -> Result<serde_json::Map<String, Value>, String> {
        if self == Shape::Spec {
            return Ok(request);
        }
        let deployment = &request["deployment"];
        if deployment["deployment_type"] != "managed" {
            return Err("deployment.deployment_type must be managed (the fake serves serverless indexes only).".into());
        }
        let fields = request.get("schema").and_then(|s| s.get("fields")).and_then(Value::as_object);
        let (vector_type, field) = match fields.map(|f| (f.get("_values"), f.get("_sparse_values"), f.len())) {
            Some((Some(dense), None, 1)) => ("dense", dense),
            Some((None, Some(sparse), 1)) => ("sparse", sparse),
            _ => return Err("schema.fields must hold one vector field, _values or _sparse_values.".into()),
        };
        let mut stored = serde_json::Map::new();
        for key in ["name", "deletion_protection", "tags"] {
            if let Some(v) = request.get(key) {
                stored.insert(key.into(), v.clone());
            }
        }
        stored.insert("dimension".into(), field["dimension"].clone());
        stored.insert("metric".into(), field.get("metric").cloned().unwrap_or(json!("cosine")));
        stored.insert("vector_type".into(), json!(vector_type));
        stored.insert(
            "spec".into(),
            json!({ "serverless": { "cloud": deployment["cloud"], "region": deployment["region"] } }),
        );
        Ok(stored)
    }
}

/// `create_index` (serverless): the name rules of the spec, 409 for a name taken in the
/// project, 201 with the index, ready at once.
fn create_index(state: &Arc<State>, data: &mut Data, project: &str, body: &[u8], shaped: Shape) -> Response<Body> {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(body) else {
        return invalid("The request body must be a JSON object.");
    };
    let request = match shaped.stored_request(request) {
        Ok(request) => request,
        Err(problem) => return invalid(&problem),
    };
    let name = request.get("name").and_then(Value::as_str).unwrap_or_default();
    if let Err(problem) = index_name(name) {
        return invalid(&problem);
    }
    let Some(serverless) = request.get("spec").and_then(|s| s.get("serverless")) else {
        return invalid("spec.serverless with cloud and region is required.");
    };
    let (Some(cloud), Some(region)) =
        (serverless.get("cloud").and_then(Value::as_str), serverless.get("region").and_then(Value::as_str))
    else {
        return invalid("spec.serverless needs cloud and region.");
    };
    let dimension = request.get("dimension").and_then(Value::as_u64);
    if dimension.is_some_and(|d| !(1..=20_000).contains(&d)) {
        return invalid("dimension must be between 1 and 20000.");
    }
    let metric = request.get("metric").and_then(Value::as_str).unwrap_or("cosine");
    if !["cosine", "euclidean", "dotproduct"].contains(&metric) {
        return invalid("metric must be cosine, euclidean or dotproduct.");
    }
    if position(data, project, name).is_some() {
        return error(StatusCode::CONFLICT, "ALREADY_EXISTS", &format!("Resource {name} already exists"));
    }
    // The real host is `<name>-<id>.svc.<region>.pinecone.io`; the fake's is its data plane's
    // loopback address, so that a proxy (or a test) can reach it.
    let server = match super::data::start(state, project, name, dimension.map(|d| d as usize), metric) {
        Ok(server) => server,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", &format!("no data plane: {e}")),
    };
    let host = server.addr.to_string();
    data.data_servers.insert((project.to_owned(), name.to_owned()), server);
    let index = json!({
        "name": name,
        "dimension": dimension,
        "metric": metric,
        "host": host,
        "deletion_protection": request.get("deletion_protection").cloned().unwrap_or(json!("disabled")),
        "tags": request.get("tags").cloned().unwrap_or(Value::Null),
        "spec": { "serverless": { "cloud": cloud, "region": region } },
        "status": { "ready": true, "state": "Ready" },
        "vector_type": request.get("vector_type").cloned().unwrap_or(json!("dense")),
    });
    data.indexes.push((project.to_owned(), index.clone()));
    json(StatusCode::CREATED, &shaped.render(&index))
}

/// The spec's rule: 1-45 characters of lower-case alphanumerics and `-`, starting and
/// ending with an alphanumeric.
fn index_name(name: &str) -> Result<(), String> {
    let allowed = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ends = !name.starts_with('-') && !name.ends_with('-');
    if (1..=45).contains(&name.len()) && allowed && ends {
        return Ok(());
    }
    Err(format!(
        "Name {name:?} is invalid: it must be 1-45 characters long, start and end with an alphanumeric character, \
         and consist only of lower case alphanumeric characters or '-'."
    ))
}

/// The control and data planes' answer to a missing or bad key (FACTS.md).
pub(crate) fn invalid_api_key() -> Response<Body> {
    let mut r = Response::new(full("Invalid API key"));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}
