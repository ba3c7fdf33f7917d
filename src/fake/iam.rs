//! The fake Admin API's 2026-07 operations: users, invites, service accounts (with
//! `rotate-secret`) and role bindings, with cursor pagination (`limit` 1–100,
//! `paginationToken`, `pagination.next`), as `admin_2026-07.oas.yaml` describes them.
//!
//! Service accounts are real to the fake's token endpoint: creating one makes its client
//! id and secret work there, rotating its secret revokes the old secret and every token
//! issued with it, and deleting it revokes both. [`super::admin`] routes here; the data and the error bodies are [`super`]'s.

// Handlers return their error response early with `?`; the fake is on no hot path.
#![allow(clippy::result_large_err)]

use super::{DEMO_CLIENT_ID, Data, State, accepted, error, find, invalid, json, not_found, object, uuid};
use crate::body::Body;
use http::{Method, Response, StatusCode};
use serde_json::{Map, Value, json};
use std::time::{Duration, SystemTime};

const ORG_ROLES: &[&str] = &["OrgOwner", "OrgManager", "OrgMember", "OrgBillingAdmin"];
const PROJECT_ROLES: &[&str] = &[
    "ProjectOwner",
    "ProjectManager",
    "ProjectMember",
    "ProjectEditor",
    "ProjectViewer",
    "ControlPlaneEditor",
    "ControlPlaneViewer",
    "DataPlaneEditor",
    "DataPlaneViewer",
];
const PRINCIPALS: &[&str] = &["user", "service_account", "api_key", "invite"];

/// The 2026-07 collections.
#[derive(Debug, Default)]
pub struct Iam {
    users: Vec<Value>,
    invites: Vec<Value>,
    service_accounts: Vec<Value>,
    role_bindings: Vec<Value>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Iam {
    /// The organization's owner, and the demo service account, both organization owners.
    pub fn seeded(org_id: &str) -> Self {
        let owner = uuid();
        let account = uuid();
        let t = now();
        Self {
            users: vec![json!({ "id": owner, "email": "owner@example.com", "name": "Demo Owner" })],
            invites: Vec::new(),
            service_accounts: vec![json!({
                "id": account, "name": "demo-service-account", "client_id": DEMO_CLIENT_ID,
                "created_at": t, "updated_at": t,
            })],
            role_bindings: vec![
                binding("user", &owner, "organization", org_id, "OrgOwner"),
                binding("service_account", &account, "organization", org_id, "OrgOwner"),
            ],
        }
    }
}

fn binding(principal_type: &str, principal_id: &str, resource_type: &str, resource_id: &str, role: &str) -> Value {
    json!({
        "id": uuid(), "principal_type": principal_type, "principal_id": principal_id,
        "resource_type": resource_type, "resource_id": resource_id, "role": role, "created_at": now(),
    })
}

/// Deletes a user or an invite, and the role bindings that name it.
fn delete_principal(
    items: &mut Vec<Value>,
    role_bindings: &mut Vec<Value>,
    id: &str,
    what: &str,
) -> Result<Response<Body>, Response<Body>> {
    let i = find(items, id).ok_or_else(|| not_found(what, id))?;
    items.remove(i);
    role_bindings.retain(|b| b["principal_id"] != id);
    Ok(accepted())
}

fn conflict(code: &str, message: &str) -> Response<Body> {
    error(StatusCode::CONFLICT, code, message)
}

/// Routes a 2026-07 path, or `None` if the path is not one of these collections.
pub(crate) fn route(
    state: &State,
    data: &mut Data,
    method: &Method,
    segments: &[&str],
    query: &[(String, String)],
    body: &[u8],
) -> Option<Response<Body>> {
    let m = method;
    let r = match segments {
        ["admin", "users"] if m == Method::GET => list_users(data, query),
        ["admin", "users", id] if m == Method::GET => get(&data.iam.users, id, "User"),
        ["admin", "users", id] if m == Method::DELETE => {
            delete_principal(&mut data.iam.users, &mut data.iam.role_bindings, id, "User")
        }
        ["admin", "invites"] if m == Method::GET => page(&data.iam.invites, query, &[]),
        ["admin", "invites"] if m == Method::POST => create_invite(data, body),
        ["admin", "invites", id] if m == Method::GET => get(&data.iam.invites, id, "Invite"),
        ["admin", "invites", id] if m == Method::DELETE => {
            delete_principal(&mut data.iam.invites, &mut data.iam.role_bindings, id, "Invite")
        }
        ["admin", "invites", id, "resend"] if m == Method::POST => resend_invite(data, id),
        ["admin", "service-accounts"] if m == Method::GET => page(&data.iam.service_accounts, query, &[]),
        ["admin", "service-accounts"] if m == Method::POST => create_service_account(state, data, body),
        ["admin", "service-accounts", id] if m == Method::GET => get(&data.iam.service_accounts, id, "Service account"),
        ["admin", "service-accounts", id] if m == Method::PATCH => update_service_account(data, id, body),
        ["admin", "service-accounts", id] if m == Method::DELETE => delete_service_account(state, data, id),
        ["admin", "service-accounts", id, "rotate-secret"] if m == Method::POST => rotate_secret(state, data, id),
        ["admin", "role-bindings"] if m == Method::GET => list_role_bindings(data, query),
        ["admin", "role-bindings"] if m == Method::POST => create_role_binding(data, body),
        ["admin", "role-bindings", id] if m == Method::GET => get(&data.iam.role_bindings, id, "Role binding"),
        ["admin", "role-bindings", id] if m == Method::DELETE => delete_role_binding(data, id),
        ["admin", "users" | "invites" | "service-accounts" | "role-bindings", ..] => {
            Err(error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("No route for {m} /{}", segments.join("/"))))
        }
        _ => return None,
    };
    Some(r.unwrap_or_else(|r| r))
}

fn get(items: &[Value], id: &str, what: &str) -> Result<Response<Body>, Response<Body>> {
    find(items, id).map(|i| json(StatusCode::OK, &items[i])).ok_or_else(|| not_found(what, id))
}

/// One page of `items` after the given filters: `limit` 1–100 (default 100), and a
/// cursor that is only valid with the same limit and filters.
fn page(items: &[Value], query: &[(String, String)], filters: &[&str]) -> Result<Response<Body>, Response<Body>> {
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let limit = match param("limit") {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => return Err(error(StatusCode::BAD_REQUEST, "OUT_OF_RANGE", "limit must be between 1 and 100.")),
        },
    };
    let context: String =
        filters.iter().filter_map(|f| param(f).map(|v| format!("{f}={v}"))).collect::<Vec<_>>().join("&");
    let offset = match param("paginationToken") {
        None => 0,
        Some(token) => decode_cursor(token)
            .filter(|(_, l, c)| *l == limit && *c == context)
            .map(|(offset, _, _)| offset)
            .ok_or_else(|| invalid("Invalid or expired pagination token."))?,
    };
    let end = (offset + limit).min(items.len());
    let data: Vec<Value> = items.get(offset..end).map(<[Value]>::to_vec).unwrap_or_default();
    let pagination = (end < items.len()).then(|| json!({ "next": encode_cursor(end, limit, &context) }));
    Ok(json(StatusCode::OK, &json!({ "data": data, "pagination": pagination })))
}

fn encode_cursor(offset: usize, limit: usize, context: &str) -> String {
    super::base64url(format!("{offset}|{limit}|{context}").as_bytes())
}

fn decode_cursor(token: &str) -> Option<(usize, usize, String)> {
    let text = String::from_utf8(base64url_decode(token)?).ok()?;
    let mut parts = text.splitn(3, '|');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.to_owned()))
}

fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes() {
        acc = acc << 6 | A.iter().position(|a| *a == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn list_users(data: &Data, query: &[(String, String)]) -> Result<Response<Body>, Response<Body>> {
    let email = query.iter().find(|(k, _)| k == "email").map(|(_, v)| v.to_lowercase());
    if let Some(e) = &email
        && !valid_email(e)
    {
        return Err(invalid("email is not a valid email address."));
    }
    let users: Vec<Value> = data
        .iam
        .users
        .iter()
        .filter(|u| email.as_ref().is_none_or(|e| u["email"].as_str().unwrap_or("").to_lowercase() == *e))
        .cloned()
        .collect();
    page(&users, query, &["email"])
}

fn valid_email(e: &str) -> bool {
    e.len() <= 254 && e.split_once('@').is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
}

/// Checks a `RoleBindingInput` and returns its (resource type, resource id, role).
fn binding_input(data: &Data, v: &Value) -> Result<(String, String, String), Response<Body>> {
    let resource_type = v["resource_type"].as_str().unwrap_or_default();
    let role = v["role"].as_str().unwrap_or_default();
    let resource_id = match resource_type {
        "organization" => match v["resource_id"].as_str() {
            None => data.org_id().to_owned(),
            Some(id) if id == data.org_id() => id.to_owned(),
            Some(id) => return Err(not_found("Organization", id)),
        },
        "project" => {
            let id = v["resource_id"].as_str().ok_or_else(|| invalid("resource_id is required for project scope."))?;
            if !data.has_project(id) {
                return Err(not_found("Project", id));
            }
            id.to_owned()
        }
        _ => return Err(invalid("resource_type must be organization or project.")),
    };
    let allowed = if resource_type == "organization" { ORG_ROLES } else { PROJECT_ROLES };
    if !allowed.contains(&role) {
        return Err(invalid(&format!("role must be one of {} for {resource_type} scope.", allowed.join(", "))));
    }
    Ok((resource_type.to_owned(), resource_id, role.to_owned()))
}

fn bindings_input(
    data: &Data,
    map: &Map<String, Value>,
    required: bool,
) -> Result<Vec<(String, String, String)>, Response<Body>> {
    match map.get("role_bindings") {
        None if required => Err(invalid("Missing required field 'role_bindings'.")),
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(|v| binding_input(data, v)).collect(),
        Some(_) => Err(invalid("role_bindings must be a list.")),
    }
}

fn create_invite(data: &mut Data, body: &[u8]) -> Result<Response<Body>, Response<Body>> {
    let map = object(body)?;
    let email = map
        .get("email")
        .and_then(Value::as_str)
        .filter(|e| valid_email(e))
        .ok_or_else(|| invalid("Field 'email' must be a valid email address of at most 254 characters."))?;
    let bindings = bindings_input(data, &map, true)?;
    if data.iam.invites.iter().any(|i| i["email"] == email && i["status"] == "pending") {
        return Err(conflict("ALREADY_EXISTS", &format!("A pending invite for {email} already exists.")));
    }
    let expires = humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(7 * 86_400)).to_string();
    let invite =
        json!({ "id": uuid(), "email": email, "status": "pending", "expires_at": expires, "created_at": now() });
    for (rt, rid, role) in bindings {
        data.iam.role_bindings.push(binding("invite", invite["id"].as_str().unwrap(), &rt, &rid, &role));
    }
    data.iam.invites.push(invite.clone());
    Ok(json(StatusCode::OK, &invite))
}

fn resend_invite(data: &mut Data, id: &str) -> Result<Response<Body>, Response<Body>> {
    let i = find(&data.iam.invites, id).ok_or_else(|| not_found("Invite", id))?;
    if data.iam.invites[i]["status"] != "pending" {
        return Err(conflict("ABORTED", "Only a pending invite can be resent."));
    }
    data.iam.invites[i]["expires_at"] =
        Value::from(humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(7 * 86_400)).to_string());
    Ok(json(StatusCode::OK, &data.iam.invites[i]))
}

fn account_name(map: &Map<String, Value>, required: bool) -> Result<Option<String>, Response<Body>> {
    match map.get("name") {
        None if required => Err(invalid("Missing required field 'name'.")),
        None => Ok(None),
        Some(Value::String(s)) if (1..=80).contains(&s.chars().count()) => Ok(Some(s.clone())),
        Some(_) => Err(invalid("Field 'name' must be a string of 1 to 80 characters.")),
    }
}

fn new_secret() -> String {
    let bytes: [u8; 48] = rand::random();
    super::base64url(&bytes)
}

fn create_service_account(state: &State, data: &mut Data, body: &[u8]) -> Result<Response<Body>, Response<Body>> {
    let map = object(body)?;
    let name = account_name(&map, true)?.expect("required");
    let bindings = bindings_input(data, &map, false)?;
    let client_id: String = {
        let bytes: [u8; 16] = rand::random();
        super::base64url(&bytes)
    };
    let secret = new_secret();
    let t = now();
    let account = json!({ "id": uuid(), "name": name, "client_id": client_id, "created_at": t, "updated_at": t });
    for (rt, rid, role) in bindings {
        data.iam.role_bindings.push(binding("service_account", account["id"].as_str().unwrap(), &rt, &rid, &role));
    }
    state.set_client(&client_id, &secret);
    data.iam.service_accounts.push(account.clone());
    Ok(json(StatusCode::CREATED, &json!({ "service_account": account, "client_secret": secret })))
}

fn update_service_account(data: &mut Data, id: &str, body: &[u8]) -> Result<Response<Body>, Response<Body>> {
    let i = find(&data.iam.service_accounts, id).ok_or_else(|| not_found("Service account", id))?;
    let map = object(body)?;
    if let Some(name) = account_name(&map, false)? {
        data.iam.service_accounts[i]["name"] = Value::String(name);
        data.iam.service_accounts[i]["updated_at"] = Value::String(now());
    }
    Ok(json(StatusCode::OK, &data.iam.service_accounts[i]))
}

fn delete_service_account(state: &State, data: &mut Data, id: &str) -> Result<Response<Body>, Response<Body>> {
    let i = find(&data.iam.service_accounts, id).ok_or_else(|| not_found("Service account", id))?;
    let account = data.iam.service_accounts.remove(i);
    let client_id = account["client_id"].as_str().unwrap_or_default();
    state.clients.lock().remove(client_id);
    state.revoke_client(client_id);
    data.iam.role_bindings.retain(|b| b["principal_id"] != *id);
    Ok(accepted())
}

/// A new secret; the old one, and every token issued with it, stop working at once
/// (Pinecone says "within seconds").
fn rotate_secret(state: &State, data: &mut Data, id: &str) -> Result<Response<Body>, Response<Body>> {
    let i = find(&data.iam.service_accounts, id).ok_or_else(|| not_found("Service account", id))?;
    let secret = new_secret();
    let client_id = data.iam.service_accounts[i]["client_id"].as_str().unwrap_or_default().to_owned();
    state.set_client(&client_id, &secret);
    state.revoke_client(&client_id);
    data.iam.service_accounts[i]["updated_at"] = Value::String(now());
    Ok(json(StatusCode::OK, &json!({ "service_account": data.iam.service_accounts[i], "client_secret": secret })))
}

fn principal_exists(data: &Data, principal_type: &str, id: &str) -> bool {
    match principal_type {
        "user" => find(&data.iam.users, id).is_some(),
        "service_account" => find(&data.iam.service_accounts, id).is_some(),
        "invite" => find(&data.iam.invites, id).is_some(),
        "api_key" => data.has_api_key(id),
        _ => false,
    }
}

fn create_role_binding(data: &mut Data, body: &[u8]) -> Result<Response<Body>, Response<Body>> {
    let map = object(body)?;
    let principal_type = map.get("principal_type").and_then(Value::as_str).unwrap_or_default();
    if !PRINCIPALS.contains(&principal_type) {
        return Err(invalid(&format!("principal_type must be one of {}.", PRINCIPALS.join(", "))));
    }
    let principal_id = map
        .get("principal_id")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("Missing required field 'principal_id'."))?;
    if !principal_exists(data, principal_type, principal_id) {
        return Err(not_found("Principal", principal_id));
    }
    let (resource_type, resource_id, role) = binding_input(data, &Value::Object(map.clone()))?;
    let duplicate = data.iam.role_bindings.iter().any(|b| {
        b["principal_id"] == principal_id && b["resource_id"] == resource_id.as_str() && b["role"] == role.as_str()
    });
    if duplicate {
        return Err(conflict("ALREADY_EXISTS", "This role binding already exists."));
    }
    let b = binding(principal_type, principal_id, &resource_type, &resource_id, &role);
    data.iam.role_bindings.push(b.clone());
    Ok(json(StatusCode::OK, &b))
}

fn delete_role_binding(data: &mut Data, id: &str) -> Result<Response<Body>, Response<Body>> {
    let i = find(&data.iam.role_bindings, id).ok_or_else(|| not_found("Role binding", id))?;
    let owners = data.iam.role_bindings.iter().filter(|b| b["role"] == "OrgOwner").count();
    if data.iam.role_bindings[i]["role"] == "OrgOwner" && owners == 1 {
        return Err(conflict("ABORTED", "Cannot remove the last OrgOwner of the organization."));
    }
    data.iam.role_bindings.remove(i);
    Ok(accepted())
}

fn list_role_bindings(data: &Data, query: &[(String, String)]) -> Result<Response<Body>, Response<Body>> {
    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    if param("principal_id").is_some() && param("principal_type").is_none() {
        return Err(invalid("principal_type is required when principal_id is set."));
    }
    if param("resource_id").is_some() && param("resource_type").is_none() {
        return Err(invalid("resource_type is required when resource_id is set."));
    }
    let filters = ["principal_type", "principal_id", "resource_type", "resource_id", "role"];
    let items: Vec<Value> = data
        .iam
        .role_bindings
        .iter()
        .filter(|b| filters.iter().all(|f| param(f).is_none_or(|v| b[*f] == v)))
        .cloned()
        .collect();
    page(&items, query, &filters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let c = encode_cursor(200, 100, "email=a@b.c");
        assert_eq!(decode_cursor(&c), Some((200, 100, "email=a@b.c".to_owned())));
        assert_eq!(decode_cursor("!!"), None);
    }
}
