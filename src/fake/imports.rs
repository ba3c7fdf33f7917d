//! An index's bulk imports on the fake (`startBulkImport`, `listBulkImports`,
//! `describeBulkImport`, `cancelBulkImport`): recorded and never run, since the fake reads no
//! object storage; each stays `Pending` until it is cancelled.

use super::{error, invalid, json};
use crate::body::Body;
use http::{Response, StatusCode};
use serde_json::{Value, json};
use std::time::SystemTime;

/// The imports started on one index, in order.
#[derive(Debug, Default)]
pub(crate) struct Imports {
    started: Vec<Value>,
}

impl Imports {
    /// `POST /bulk/imports`: `uri` is required; answers the new import's id.
    pub(super) fn start(&mut self, request: &Value) -> Response<Body> {
        let Some(uri) = request["uri"].as_str().filter(|u| !u.is_empty()) else {
            return invalid("The request body must include uri.");
        };
        let id = (self.started.len() + 1).to_string();
        let created = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        self.started.push(json!({
            "id": id, "uri": uri, "status": "Pending", "createdAt": created,
            "percentComplete": 0.0, "recordsImported": 0,
        }));
        json(StatusCode::OK, &json!({ "id": id }))
    }

    /// `GET /bulk/imports`.
    pub(super) fn list(&self) -> Response<Body> {
        json(StatusCode::OK, &json!({ "data": self.started }))
    }

    /// `GET /bulk/imports/{id}`.
    pub(super) fn describe(&self, id: &str) -> Response<Body> {
        match self.started.iter().find(|i| i["id"] == id) {
            Some(import) => json(StatusCode::OK, import),
            None => missing(id),
        }
    }

    /// `DELETE /bulk/imports/{id}`: the import is `Cancelled`.
    pub(super) fn cancel(&mut self, id: &str) -> Response<Body> {
        match self.started.iter_mut().find(|i| i["id"] == id) {
            Some(import) => {
                import["status"] = Value::from("Cancelled");
                json(StatusCode::OK, &json!({}))
            }
            None => missing(id),
        }
    }
}

fn missing(id: &str) -> Response<Body> {
    error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("Import {id} not found"))
}
