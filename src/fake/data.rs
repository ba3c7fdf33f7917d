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

/// The roles that may read vectors, and those that may write them (FACTS.md).
const READERS: [&str; 4] = ["ProjectEditor", "ProjectViewer", "DataPlaneEditor", "DataPlaneViewer"];
const WRITERS: [&str; 2] = ["ProjectEditor", "DataPlaneEditor"];

/// The fake's indexes, for `demo` and the tests.
impl State {
    /// Creates a serverless index `name` of `dimension` (cosine) in the seeded project, with
    /// its data plane; answers its host. For `demo`, which starts with one.
    pub fn create_index(self: &Arc<Self>, name: &str, dimension: usize) -> std::io::Result<String> {
        let project = self.project_id();
        let server = start(self, &project, name, Some(dimension), "cosine")?;
        let host = server.addr.to_string();
        let index = serde_json::json!({
            "name": name, "dimension": dimension, "metric": "cosine", "host": host,
            "deletion_protection": "disabled", "tags": null,
            "spec": { "serverless": { "cloud": "aws", "region": "us-east-1" } },
            "status": { "ready": true, "state": "Ready" }, "vector_type": "dense",
        });
        let mut data = self.data.lock();
        data.indexes.push((project.clone(), index));
        data.data_servers.insert((project, name.to_owned()), server);
        Ok(host)
    }

    /// Deletes the seeded project's index `name` (its data plane stops); answers whether it
    /// existed.
    pub fn delete_index(&self, name: &str) -> bool {
        let project = self.project_id();
        let mut data = self.data.lock();
        let before = data.indexes.len();
        data.indexes.retain(|(p, i)| !(*p == project && i["name"] == name));
        data.data_servers.remove(&(project, name.to_owned()));
        before != data.indexes.len()
    }

    /// Makes `describe_index` name `host` for the seeded project's index `name` (a TLS front
    /// that a test put before its data plane, as Pinecone's hosts are behind TLS); answers
    /// whether the index exists.
    pub fn set_index_host(&self, name: &str, host: &str) -> bool {
        let project = self.project_id();
        let mut data = self.data.lock();
        let index = data.indexes.iter_mut().find(|(p, i)| *p == project && i["name"] == name);
        index.map(|(_, i)| i["host"] = Value::from(host)).is_some()
    }

    /// Every index, of every project.
    pub fn indexes(&self) -> Vec<Value> {
        self.data.lock().indexes.iter().map(|(_, index)| index.clone()).collect()
    }
}

/// A query's match: id, score, values, metadata.
pub(crate) type Match = (String, f64, Vec<f64>, Option<Value>);

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
        super::serve_options(),
    ));
    let vectors = Vectors { dimension, metric: metric.to_owned(), namespaces: BTreeMap::new() };
    Ok(DataServer { addr, vectors, stop })
}

/// One index's data-plane service: REST, and gRPC ([`super::grpc`]) for requests of
/// content type `application/grpc`.
#[derive(Debug, Clone)]
pub(crate) struct DataService {
    pub(crate) state: Arc<State>,
    project: String,
    index: String,
}

impl DataService {
    async fn handle(self, request: Request<Incoming>) -> Result<Response<Body>, BoxError> {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if grpc {
            self.state.data_requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (parts, body) = request.into_parts();
            self.state.record(&parts, &[]);
            return Ok(super::grpc::handle(self, Request::from_parts(parts, body)).await);
        }
        let (parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        self.state.data_requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.state.record(&parts, &body);
        Ok(self.answer(&parts, &body))
    }

    fn answer(&self, parts: &Parts, body: &Bytes) -> Response<Body> {
        let mut data = self.state.data.lock();
        let write = parts.uri.path() == "/vectors/upsert" || parts.uri.path() == "/vectors/delete";
        match self.authorize(&data, &parts.headers, write) {
            Err(Denied::Unauthenticated) => return super::control::invalid_api_key(),
            Err(Denied::Forbidden) => {
                return error(StatusCode::FORBIDDEN, "FORBIDDEN", "The API key's roles do not allow this operation.");
            }
            Ok(()) => {}
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

/// Why a data-plane request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// No key, a bad or deleted key, another project's key: 401 (gRPC 16).
    Unauthenticated,
    /// A key whose roles do not cover the operation: 403 (gRPC 7).
    Forbidden,
}

impl DataService {
    /// Whether the `api-key` in `headers` (gRPC metadata are headers too) may read, or
    /// `write`, this index's vectors.
    pub(crate) fn authorize(&self, data: &super::Data, headers: &http::HeaderMap, write: bool) -> Result<(), Denied> {
        let presented = headers.get("api-key").and_then(|v| v.to_str().ok());
        let key = presented.and_then(|value| data.key_of_value(value)).filter(|(project, _)| *project == self.project);
        let Some((_, roles)) = key else {
            self.state.data_unauthorized.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(Denied::Unauthenticated);
        };
        let needed: &[&str] = if write { &WRITERS } else { &READERS };
        if roles.iter().any(|r| needed.contains(&r.as_str())) { Ok(()) } else { Err(Denied::Forbidden) }
    }

    /// This index's vectors, under the fake's lock.
    pub(crate) fn with_vectors<T>(&self, f: impl FnOnce(&mut Vectors) -> T) -> Option<T> {
        let mut data = self.state.data.lock();
        data.data_servers.get_mut(&(self.project.clone(), self.index.clone())).map(|s| f(&mut s.vectors))
    }
}

impl Vectors {
    /// Stores `items` (id, values, metadata) in `namespace`: how many, or why not.
    pub(crate) fn put(
        &mut self,
        namespace: &str,
        items: Vec<(String, Vec<f64>, Option<Value>)>,
    ) -> Result<usize, String> {
        if let Some((_, values, _)) = items.iter().find(|(_, v, _)| self.dimension.is_some_and(|d| d != v.len())) {
            let index = self.dimension.unwrap_or(0);
            return Err(format!("Vector dimension {} does not match the dimension of the index {index}", values.len()));
        }
        let count = items.len();
        let stored = self.namespaces.entry(namespace.to_owned()).or_default();
        stored.extend(items.into_iter().map(|(id, values, metadata)| (id, Stored { values, metadata })));
        Ok(count)
    }

    /// The `top_k` nearest of `namespace` to `vector` (or to the vector stored as `id`):
    /// id, score, values, metadata.
    pub(crate) fn nearest(
        &self,
        namespace: &str,
        vector: Option<Vec<f64>>,
        id: Option<&str>,
        top_k: usize,
    ) -> Result<Vec<Match>, String> {
        let empty = BTreeMap::new();
        let stored = self.namespaces.get(namespace).unwrap_or(&empty);
        let by_id = id.and_then(|id| stored.get(id)).map(|s| s.values.clone());
        let vector = vector.or(by_id).ok_or("Either vector or id is required.")?;
        let mut scored: Vec<(f64, &String, &Stored)> =
            stored.iter().map(|(id, s)| (score(&self.metric, &vector, &s.values), id, s)).collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(scored
            .into_iter()
            .take(top_k)
            .map(|(sc, id, s)| (id.clone(), sc, s.values.clone(), s.metadata.clone()))
            .collect())
    }

    /// The stored vectors of `ids` in `namespace`.
    pub(crate) fn get(&self, namespace: &str, ids: &[String]) -> Vec<(String, Vec<f64>, Option<Value>)> {
        let Some(stored) = self.namespaces.get(namespace) else { return Vec::new() };
        ids.iter().filter_map(|id| stored.get(id).map(|s| (id.clone(), s.values.clone(), s.metadata.clone()))).collect()
    }

    /// Vectors by namespace, the dimension and the metric.
    pub(crate) fn counts(&self) -> (Vec<(String, usize)>, Option<usize>, &str) {
        (self.namespaces.iter().map(|(ns, v)| (ns.clone(), v.len())).collect(), self.dimension, &self.metric)
    }

    fn upsert(&mut self, request: &Value) -> Response<Body> {
        let Some(items) = request["vectors"].as_array() else { return invalid("vectors must be a list.") };
        let mut parsed = Vec::with_capacity(items.len());
        for item in items {
            let (Some(id), Some(values)) = (item["id"].as_str(), item["values"].as_array()) else {
                return invalid("Each vector needs an id and values.");
            };
            let values: Vec<f64> = values.iter().filter_map(Value::as_f64).collect();
            parsed.push((id.to_owned(), values, item.get("metadata").filter(|m| m.is_object()).cloned()));
        }
        match self.put(request["namespace"].as_str().unwrap_or(""), parsed) {
            Ok(count) => json(StatusCode::OK, &json!({ "upsertedCount": count })),
            Err(message) => invalid(&message),
        }
    }

    fn query(&self, request: &Value) -> Response<Body> {
        if request.get("filter").is_some_and(|f| !f.is_null()) {
            return invalid("The fake Pinecone does not evaluate metadata filters.");
        }
        let namespace = request["namespace"].as_str().unwrap_or("");
        let vector = request["vector"].as_array().map(|v| v.iter().filter_map(Value::as_f64).collect());
        let top_k = request["topK"].as_u64().unwrap_or(10) as usize;
        let found = match self.nearest(namespace, vector, request["id"].as_str(), top_k) {
            Ok(found) => found,
            Err(message) => return invalid(&message),
        };
        let (values, metadata) = (request["includeValues"] == true, request["includeMetadata"] == true);
        let matches: Vec<Value> = found
            .into_iter()
            .map(|(id, score, v, meta)| {
                let mut m = json!({ "id": id, "score": score });
                if values {
                    m["values"] = json!(v);
                }
                if let (true, Some(meta)) = (metadata, meta) {
                    m["metadata"] = meta;
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
        let found: serde_json::Map<String, Value> = self
            .get(&namespace, &ids)
            .into_iter()
            .map(|(id, values, metadata)| {
                let mut v = json!({ "id": id, "values": values });
                if let Some(meta) = metadata {
                    v["metadata"] = meta;
                }
                (id, v)
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
        let (counts, _, _) = self.counts();
        let total: usize = counts.iter().map(|(_, n)| n).sum();
        let namespaces: serde_json::Map<String, Value> =
            counts.into_iter().map(|(ns, n)| (ns, json!({ "vectorCount": n }))).collect();
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
