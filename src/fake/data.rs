//! The fake data plane: each index's REST API (`db_data`) on a loopback port of its own,
//! as the real one is on the index's own host. `describe_index` names that port as the
//! index's `host`.
//!
//! Vectors live in memory, per namespace: `upsertVectors`, `queryVectors` (by vector or by
//! id, cosine, euclidean or dot product; filters are not evaluated and answer 400),
//! `fetchVectors`, `deleteVectors`, `describeIndexStats`. Keys are checked as on the
//! control plane: a live key of the index's project whose roles cover the operation
//! (reading takes a project or data-plane role, writing an editor's); anything else gets the
//! plain-text `401 Invalid API key` (FACTS.md), a key without the role `403`.

use super::{State, error, invalid, json};
use crate::body::{Body, BoxError};
use crate::serve::{self, Listener, Trigger};
use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The roles that may read vectors, and those that may write them (FACTS.md).
const READERS: [&str; 4] = ["ProjectEditor", "ProjectViewer", "DataPlaneEditor", "DataPlaneViewer"];
const WRITERS: [&str; 2] = ["ProjectEditor", "DataPlaneEditor"];

/// One stored vector.
#[derive(Debug, Clone)]
struct Stored {
    values: Vec<f64>,
    metadata: Option<Value>,
}

/// An index's vectors, by namespace and id.
#[derive(Debug, Default)]
pub(crate) struct Vectors {
    dimension: Option<usize>,
    metric: String,
    namespaces: BTreeMap<String, BTreeMap<String, Stored>>,
}

/// A running data-plane server: its address, and what stops it.
#[derive(Debug)]
pub(crate) struct DataServer {
    pub(crate) addr: SocketAddr,
    pub(crate) vectors: Vectors,
    stop: Trigger,
}

impl Drop for DataServer {
    fn drop(&mut self) {
        self.stop.fire();
    }
}

/// Starts the data plane of `project`'s index `name` on a free loopback port; it stops when
/// the returned server is dropped (the index deleted) or the fake stops.
pub(crate) fn start(
    state: &Arc<State>,
    project: &str,
    name: &str,
    dimension: Option<usize>,
    metric: &str,
) -> std::io::Result<DataServer> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let stop = Trigger::default();
    let service = DataService { state: state.clone(), project: project.to_owned(), index: name.to_owned() };
    let fake_stopped = state.stopped.wait();
    let stopped = stop.wait();
    tokio::spawn(serve::serve(
        "fake-pinecone-data",
        Listener::Tcp(listener),
        move |_| service.clone(),
        async move {
            tokio::select! {
                () = fake_stopped => {}
                () = stopped => {}
            }
        },
        serve::ServeOptions::new(Duration::from_secs(1)),
    ));
    let vectors = Vectors { dimension, metric: metric.to_owned(), namespaces: BTreeMap::new() };
    Ok(DataServer { addr, vectors, stop })
}

/// One index's data-plane service.
#[derive(Debug, Clone)]
struct DataService {
    state: Arc<State>,
    project: String,
    index: String,
}

impl DataService {
    async fn handle(self, request: Request<Incoming>) -> Result<Response<Body>, BoxError> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        self.state.data_requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.state.record(&parts, &body);
        Ok(self.answer(&parts, &body))
    }

    fn answer(&self, parts: &Parts, body: &Bytes) -> Response<Body> {
        let mut data = self.state.data.lock();
        let presented = parts.headers.get("api-key").and_then(|v| v.to_str().ok());
        let key = presented.and_then(|value| data.key_of_value(value)).filter(|(project, _)| *project == self.project);
        let Some((_, roles)) = key else {
            self.state.data_unauthorized.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return super::control::invalid_api_key();
        };
        let write = parts.uri.path() == "/vectors/upsert" || parts.uri.path() == "/vectors/delete";
        let needed: &[&str] = if write { &WRITERS } else { &READERS };
        if !roles.iter().any(|r| needed.contains(&r.as_str())) {
            return error(StatusCode::FORBIDDEN, "FORBIDDEN", "The API key's roles do not allow this operation.");
        }
        let Some(server) = data.data_servers.get_mut(&(self.project.clone(), self.index.clone())) else {
            return error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("Index {} not found", self.index));
        };
        let vectors = &mut server.vectors;
        let request: Value =
            if body.is_empty() { json!({}) } else { serde_json::from_slice(body).unwrap_or(Value::Null) };
        match (&parts.method, parts.uri.path()) {
            (&Method::POST, "/vectors/upsert") => vectors.upsert(&request),
            (&Method::POST, "/query") => vectors.query(&request),
            (&Method::GET, "/vectors/fetch") => vectors.fetch(parts.uri.query().unwrap_or("")),
            (&Method::POST, "/vectors/delete") => vectors.delete(&request),
            (&Method::POST | &Method::GET, "/describe_index_stats") => vectors.stats(),
            (m, path) => error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("No route for {m} {path}")),
        }
    }
}

impl Vectors {
    fn upsert(&mut self, request: &Value) -> Response<Body> {
        let Some(items) = request["vectors"].as_array() else { return invalid("vectors must be a list.") };
        let namespace = request["namespace"].as_str().unwrap_or("").to_owned();
        let mut parsed = Vec::with_capacity(items.len());
        for item in items {
            let (Some(id), Some(values)) = (item["id"].as_str(), item["values"].as_array()) else {
                return invalid("Each vector needs an id and values.");
            };
            let values: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
            if self.dimension.is_some_and(|d| d != values.len()) {
                let message = format!(
                    "Vector dimension {} does not match the dimension of the index {}",
                    values.len(),
                    self.dimension.unwrap_or(0)
                );
                return invalid(&message);
            }
            let metadata = item.get("metadata").filter(|m| m.is_object()).cloned();
            parsed.push((id.to_owned(), Stored { values, metadata }));
        }
        let count = parsed.len();
        self.namespaces.entry(namespace).or_default().extend(parsed);
        json(StatusCode::OK, &json!({ "upsertedCount": count }))
    }

    fn query(&self, request: &Value) -> Response<Body> {
        if request.get("filter").is_some_and(|f| !f.is_null()) {
            return invalid("The fake Pinecone does not evaluate metadata filters.");
        }
        let namespace = request["namespace"].as_str().unwrap_or("");
        let empty = BTreeMap::new();
        let stored = self.namespaces.get(namespace).unwrap_or(&empty);
        let by_id = request["id"].as_str().and_then(|id| stored.get(id)).map(|s| s.values.clone());
        let vector: Option<Vec<f64>> =
            request["vector"].as_array().map(|v| v.iter().filter_map(Value::as_f64).collect()).or(by_id);
        let Some(vector) = vector else { return invalid("Either vector or id is required.") };
        let top_k = request["topK"].as_u64().unwrap_or(10) as usize;
        let (values, metadata) = (request["includeValues"] == true, request["includeMetadata"] == true);
        let mut scored: Vec<(f64, &String, &Stored)> =
            stored.iter().map(|(id, s)| (score(&self.metric, &vector, &s.values), id, s)).collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        let matches: Vec<Value> = scored
            .into_iter()
            .take(top_k)
            .map(|(score, id, s)| {
                let mut m = json!({ "id": id, "score": score });
                if values {
                    m["values"] = json!(s.values);
                }
                if let (true, Some(meta)) = (metadata, &s.metadata) {
                    m["metadata"] = meta.clone();
                }
                m
            })
            .collect();
        json(StatusCode::OK, &json!({ "matches": matches, "namespace": namespace, "usage": { "readUnits": 1 } }))
    }

    fn fetch(&self, query: &str) -> Response<Body> {
        let mut ids = Vec::new();
        let mut namespace = String::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "ids" => ids.push(v.into_owned()),
                "namespace" => namespace = v.into_owned(),
                _ => {}
            }
        }
        let found: serde_json::Map<String, Value> = ids
            .iter()
            .filter_map(|id| {
                let s = self.namespaces.get(&namespace)?.get(id)?;
                let mut v = json!({ "id": id, "values": s.values });
                if let Some(meta) = &s.metadata {
                    v["metadata"] = meta.clone();
                }
                Some((id.clone(), v))
            })
            .collect();
        json(StatusCode::OK, &json!({ "vectors": found, "namespace": namespace, "usage": { "readUnits": 1 } }))
    }

    fn delete(&mut self, request: &Value) -> Response<Body> {
        let namespace = request["namespace"].as_str().unwrap_or("");
        if request["deleteAll"] == true {
            self.namespaces.remove(namespace);
        } else if let (Some(ids), Some(stored)) = (request["ids"].as_array(), self.namespaces.get_mut(namespace)) {
            for id in ids.iter().filter_map(Value::as_str) {
                stored.remove(id);
            }
        }
        json(StatusCode::OK, &json!({}))
    }

    fn stats(&self) -> Response<Body> {
        let namespaces: serde_json::Map<String, Value> =
            self.namespaces.iter().map(|(ns, v)| (ns.clone(), json!({ "vectorCount": v.len() }))).collect();
        let total: usize = self.namespaces.values().map(BTreeMap::len).sum();
        json(
            StatusCode::OK,
            &json!({
                "namespaces": namespaces,
                "dimension": self.dimension,
                "indexFullness": 0.0,
                "totalVectorCount": total,
                "metric": self.metric,
                "vectorType": "dense",
            }),
        )
    }
}

/// How alike two vectors are by the index's metric: higher is closer (euclidean as its
/// negative distance squared would not be Pinecone's; it answers the distance, ranked
/// ascending, so it is negated for the ranking and reported as is).
fn score(metric: &str, a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    match metric {
        "dotproduct" => dot,
        "euclidean" => -a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>(),
        _ => {
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let n = norm(a) * norm(b);
            if n == 0.0 { 0.0 } else { dot / n }
        }
    }
}

impl tower::Service<Request<Incoming>> for DataService {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        Box::pin(self.clone().handle(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_rank_the_closest_first() {
        let (a, b, c) = ([1.0, 0.0], [0.9, 0.1], [0.0, 1.0]);
        for metric in ["cosine", "dotproduct", "euclidean"] {
            assert!(score(metric, &a, &b) > score(metric, &a, &c), "{metric}");
        }
        assert!((score("cosine", &a, &a) - 1.0).abs() < 1e-9);
    }
}
