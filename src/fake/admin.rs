//! The fake Admin API: projects, organizations and API keys (all versions) in
//! memory, with FACTS.md's paths, status codes, shapes and error bodies. Every request is
//! authenticated first: a missing, unknown, expired or revoked bearer token gets 401
//! `UNAUTHENTICATED` / `Invalid API key.`. A missing `X-Pinecone-Api-Version` means the
//! oldest supported version; an unknown one is a 400. The 2026-07 operations are
//! [`super::iam`]'s; the data and the error bodies are [`super`]'s.

// Handlers return their error response early with `?`; the fake is on no hot path, so a
// large `Err` costs nothing that matters.
#![allow(clippy::result_large_err)]

use super::{Data, State, accepted, error, find, invalid, json, not_found, object, uuid};
use crate::body::Body;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode, header};
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::SystemTime;
use tokio::time::Instant;

/// The versions the fake knows; the first is what a missing header means.
pub const VERSIONS: &[&str] = &["2025-04", "2025-10", "2026-01.alpha", "2026-04", "2026-07"];
/// The versions with users, invites, service accounts and role bindings (2026-04 in its
/// later revision, and 2026-07).
const IAM_VERSIONS: &[&str] = &["2026-04", "2026-07"];
const ROLES: &[&str] = &[
    "ProjectEditor",
    "ProjectViewer",
    "ControlPlaneEditor",
    "ControlPlaneViewer",
    "DataPlaneEditor",
    "DataPlaneViewer",
];

pub(crate) fn handle(state: &State, parts: &Parts, body: &Bytes) -> Response<Body> {
    state.admin_requests.fetch_add(1, Ordering::Relaxed);
    state.record(parts, body);
    let mut response = route(state, parts, body);
    response.headers_mut().insert("x-pinecone-request-id", HeaderValue::from_str(&uuid()).expect("ascii"));
    response
}

fn authenticate(state: &State, parts: &Parts) -> Result<(), Response<Body>> {
    let token = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = match token.and_then(|t| state.issued.lock().get(t).map(|i| (i.expires, i.revoked))) {
        Some((expires, revoked)) => {
            let expired = Instant::now() >= expires;
            if expired {
                state.expired_presented.fetch_add(1, Ordering::SeqCst);
            }
            !expired && !revoked
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        state.unauthorized.fetch_add(1, Ordering::SeqCst);
        Err(error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", "Invalid API key."))
    }
}

fn route(state: &State, parts: &Parts, body: &[u8]) -> Response<Body> {
    if let Err(r) = authenticate(state, parts) {
        return r;
    }
    let version = match version(parts) {
        Ok(version) => version,
        Err(refused) => return refused,
    };
    let segments: Vec<&str> = parts.uri.path().trim_start_matches('/').split('/').collect();
    let mut data = state.data.lock();
    let m = &parts.method;
    if IAM_VERSIONS.contains(&version) {
        let query: Vec<(String, String)> =
            form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned().collect();
        if let Some(response) = super::iam::route(state, &mut data, m, &segments, &query, body) {
            return response;
        }
    }
    resources(&mut data, parts, &segments, body)
}

/// The request's `X-Pinecone-Api-Version` (the oldest when absent), or the refusal of an
/// unknown one.
fn version(parts: &Parts) -> Result<&'static str, Response<Body>> {
    let Some(v) = parts.headers.get("x-pinecone-api-version") else { return Ok(VERSIONS[0]) };
    VERSIONS.iter().find(|known| v.as_bytes() == known.as_bytes()).copied().ok_or_else(|| {
        invalid(&format!(
            "Unsupported API version {:?}. Supported versions: {}.",
            String::from_utf8_lossy(v.as_bytes()),
            VERSIONS.join(", ")
        ))
    })
}

/// Projects, organizations and API keys: the routes of every version.
fn resources(data: &mut Data, parts: &Parts, segments: &[&str], body: &[u8]) -> Response<Body> {
    let m = &parts.method;
    match segments {
        ["admin", "projects"] if m == Method::GET => json(StatusCode::OK, &json!({ "data": data.projects })),
        ["admin", "projects"] if m == Method::POST => create_project(data, body),
        ["admin", "projects", id] if m == Method::GET => match find(&data.projects, id) {
            Some(i) => json(StatusCode::OK, &data.projects[i]),
            None => not_found("Project", id),
        },
        ["admin", "projects", id] if m == Method::PATCH => update_project(data, id, body),
        ["admin", "projects", id] if m == Method::DELETE => match find(&data.projects, id) {
            Some(i) => {
                data.projects.remove(i);
                data.api_keys.retain(|k| k["project_id"] != *id);
                accepted()
            }
            None => not_found("Project", id),
        },
        ["admin", "organizations"] if m == Method::GET => json(StatusCode::OK, &json!({ "data": data.organizations })),
        ["admin", "organizations", id] if m == Method::GET => match find(&data.organizations, id) {
            Some(i) => json(StatusCode::OK, &data.organizations[i]),
            None => not_found("Organization", id),
        },
        ["admin", "organizations", id] if m == Method::PATCH => update_organization(data, id, body),
        ["admin", "organizations", id] if m == Method::DELETE => match find(&data.organizations, id) {
            Some(i) => {
                data.organizations.remove(i);
                accepted()
            }
            None => not_found("Organization", id),
        },
        ["admin", "projects", id, "api-keys"] if m == Method::GET => match find(&data.projects, id) {
            Some(_) => {
                let keys: Vec<&Value> = data.api_keys.iter().filter(|k| k["project_id"] == *id).collect();
                json(StatusCode::OK, &json!({ "data": keys }))
            }
            None => not_found("Project", id),
        },
        ["admin", "projects", id, "api-keys"] if m == Method::POST => create_api_key(data, id, body),
        ["admin", "api-keys", id] if m == Method::GET => match find(&data.api_keys, id) {
            Some(i) => json(StatusCode::OK, &data.api_keys[i]),
            None => not_found("API key", id),
        },
        ["admin", "api-keys", id] if m == Method::PATCH => update_api_key(data, id, body),
        ["admin", "api-keys", id] if m == Method::DELETE => match find(&data.api_keys, id) {
            Some(i) => {
                data.api_keys.remove(i);
                accepted()
            }
            None => not_found("API key", id),
        },
        _ => error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("No route for {} {}", m, parts.uri.path())),
    }
}

fn name_field(
    map: &serde_json::Map<String, Value>,
    max: usize,
    required: bool,
) -> Result<Option<String>, Response<Body>> {
    match map.get("name") {
        None if required => Err(invalid("Missing required field 'name'.")),
        None => Ok(None),
        Some(Value::String(s)) if (1..=max).contains(&s.chars().count()) => Ok(Some(s.clone())),
        Some(_) => Err(invalid(&format!("Field 'name' must be a string of 1 to {max} characters."))),
    }
}

fn project_fields(map: &serde_json::Map<String, Value>, project: &mut Value) -> Result<(), Response<Body>> {
    match map.get("max_pods") {
        None => {}
        Some(v) if v.as_u64().is_some() => project["max_pods"] = v.clone(),
        Some(_) => return Err(invalid("Field 'max_pods' must be a non-negative integer.")),
    }
    match map.get("force_encryption_with_cmek") {
        None => {}
        Some(Value::Bool(b)) => {
            if project["force_encryption_with_cmek"] == true && !b {
                return Err(invalid("CMEK encryption cannot be disabled once enabled."));
            }
            project["force_encryption_with_cmek"] = Value::Bool(*b);
        }
        Some(_) => return Err(invalid("Field 'force_encryption_with_cmek' must be a boolean.")),
    }
    Ok(())
}

fn create_project(data: &mut Data, body: &[u8]) -> Response<Body> {
    let result = (|| {
        let map = object(body)?;
        let name = name_field(&map, 512, true)?.expect("required");
        if data.projects.iter().any(|p| p["name"] == name.as_str()) {
            return Err(error(
                StatusCode::CONFLICT,
                "ALREADY_EXISTS",
                &format!("A project named {name:?} already exists."),
            ));
        }
        let org = data.organizations.first().map_or(Value::from("-NM7af6f234168c4e44a"), |o| o["id"].clone());
        let mut project = json!({
            "id": uuid(), "name": name, "max_pods": 0, "force_encryption_with_cmek": false,
            "organization_id": org, "created_at": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        });
        project_fields(&map, &mut project)?;
        data.projects.push(project.clone());
        Ok(json(StatusCode::OK, &project))
    })();
    result.unwrap_or_else(|r| r)
}

fn update_project(data: &mut Data, id: &str, body: &[u8]) -> Response<Body> {
    let Some(i) = find(&data.projects, id) else { return not_found("Project", id) };
    let result = (|| {
        let map = object(body)?;
        let mut project = data.projects[i].clone();
        if let Some(name) = name_field(&map, 512, false)? {
            project["name"] = Value::String(name);
        }
        project_fields(&map, &mut project)?;
        data.projects[i] = project.clone();
        Ok(json(StatusCode::OK, &project))
    })();
    result.unwrap_or_else(|r| r)
}

fn update_organization(data: &mut Data, id: &str, body: &[u8]) -> Response<Body> {
    let Some(i) = find(&data.organizations, id) else { return not_found("Organization", id) };
    let result = (|| {
        let map = object(body)?;
        if let Some(name) = name_field(&map, 512, false)? {
            data.organizations[i]["name"] = Value::String(name);
        }
        Ok(json(StatusCode::OK, &data.organizations[i]))
    })();
    result.unwrap_or_else(|r| r)
}

fn roles(map: &serde_json::Map<String, Value>) -> Result<Option<Value>, Response<Body>> {
    match map.get("roles") {
        None => Ok(None),
        Some(Value::Array(items)) if items.iter().all(|r| r.as_str().is_some_and(|r| ROLES.contains(&r))) => {
            Ok(Some(Value::Array(items.clone())))
        }
        Some(_) => Err(invalid(&format!("Field 'roles' must be a list of: {}.", ROLES.join(", ")))),
    }
}

fn create_api_key(data: &mut Data, project_id: &str, body: &[u8]) -> Response<Body> {
    if find(&data.projects, project_id).is_none() {
        return not_found("Project", project_id);
    }
    if let Some(message) = &data.refuse_api_key_creation {
        return error(StatusCode::FORBIDDEN, "QUOTA_EXCEEDED", message);
    }
    let result = (|| {
        let map = object(body)?;
        let name = name_field(&map, 80, true)?.expect("required");
        let roles = roles(&map)?.unwrap_or_else(|| json!(["ProjectEditor"]));
        let key = json!({ "id": uuid(), "name": name, "project_id": project_id, "roles": roles });
        data.api_keys.push(key.clone());
        data.api_keys_created += 1;
        let secret: [u8; 24] = rand::random();
        let label: [u8; 4] = rand::random();
        let value = format!("pckey_{}_{}", hex(&label), super::base64url(&secret));
        data.api_key_values.insert(value.clone(), key["id"].as_str().expect("an id").to_owned());
        Ok(json(StatusCode::CREATED, &json!({ "key": key, "value": value })))
    })();
    result.unwrap_or_else(|r| r)
}

fn update_api_key(data: &mut Data, id: &str, body: &[u8]) -> Response<Body> {
    let Some(i) = find(&data.api_keys, id) else { return not_found("API key", id) };
    let result = (|| {
        let map = object(body)?;
        let mut key = data.api_keys[i].clone();
        if let Some(name) = name_field(&map, 80, false)? {
            key["name"] = Value::String(name);
        }
        if let Some(roles) = roles(&map)? {
            key["roles"] = roles;
        }
        data.api_keys[i] = key.clone();
        Ok(json(StatusCode::OK, &key))
    })();
    result.unwrap_or_else(|r| r)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
