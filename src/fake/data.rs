//! The fake data plane: each index's REST API (`db_data`) on a loopback port of its own,
//! as the real one is on the index's own host. `describe_index` names that port as the
//! index's `host`.
//!
//! Requests are routed here to the index's vectors ([`super::vectors`]) and bulk imports
//! ([`super::imports`]); `/records/…` answers 400, as for an index without integrated
//! embedding. Keys are checked as on the control plane: a live key of the index's project
//! whose roles cover the operation (reading takes a project or data-plane role, writing an
//! editor's); anything else gets the plain-text `401 Invalid API key` (FACTS.md), a key
//! without the role `403`.

use super::imports::Imports;
use super::vectors::Vectors;
use super::{State, error, invalid};
use crate::body::{Body, BoxError};
use crate::serve::{self, Listener, Trigger};
use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
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

/// A running data-plane server: its address, and what stops it.
#[derive(Debug)]
pub(crate) struct DataServer {
    pub(crate) addr: SocketAddr,
    pub(crate) vectors: Vectors,
    imports: Imports,
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
    let vectors = Vectors::new(dimension, metric);
    Ok(DataServer { addr, vectors, imports: Imports::default(), stop })
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
        let (method, path) = (&parts.method, parts.uri.path());
        let mut data = self.state.data.lock();
        match self.authorize(&data, &parts.headers, writes(method, path)) {
            Err(Denied::Unauthenticated) => return super::control::invalid_api_key(),
            Err(Denied::Forbidden) => {
                return error(StatusCode::FORBIDDEN, "FORBIDDEN", "The API key's roles do not allow this operation.");
            }
            Ok(()) => {}
        }
        let Some(server) = data.data_servers.get_mut(&(self.project.clone(), self.index.clone())) else {
            return error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("Index {} not found", self.index));
        };
        let request: Value =
            if body.is_empty() { json!({}) } else { serde_json::from_slice(body).unwrap_or(Value::Null) };
        let query = parts.uri.query().unwrap_or("");
        let (vectors, imports) = (&mut server.vectors, &mut server.imports);
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::POST, ["vectors", "upsert"]) => vectors.upsert(&request),
            (&Method::POST, ["query"]) => vectors.query(&request),
            (&Method::GET, ["vectors", "fetch"]) => vectors.fetch(query),
            (&Method::GET, ["vectors", "list"]) => vectors.list(query),
            (&Method::POST, ["vectors", "update"]) => vectors.update(&request),
            (&Method::POST, ["vectors", "delete"]) => vectors.delete(&request),
            (&Method::POST | &Method::GET, ["describe_index_stats"]) => vectors.stats(),
            (&Method::GET, ["namespaces"]) => vectors.namespaces(),
            (&Method::GET, ["namespaces", name]) => vectors.namespace(name),
            (&Method::DELETE, ["namespaces", name]) => vectors.delete_namespace(name),
            (&Method::POST, ["bulk", "imports"]) => imports.start(&request),
            (&Method::GET, ["bulk", "imports"]) => imports.list(),
            (&Method::GET, ["bulk", "imports", id]) => imports.describe(id),
            (&Method::DELETE, ["bulk", "imports", id]) => imports.cancel(id),
            // Records are for indexes with integrated embedding, which the fake does not make.
            (&Method::POST, ["records", "namespaces", _, "upsert" | "search"]) => {
                invalid("Integrated inference is not configured for this index.")
            }
            (m, _) => error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("No route for {m} {path}")),
        }
    }
}

/// Whether a data-plane request writes (an editor's role), or reads.
fn writes(method: &Method, path: &str) -> bool {
    *method == Method::DELETE
        || matches!(path, "/vectors/upsert" | "/vectors/update" | "/vectors/delete" | "/bulk/imports")
            && *method == Method::POST
        || path.starts_with("/records/") && path.ends_with("/upsert")
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
