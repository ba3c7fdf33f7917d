//! The fake data plane's gRPC: `VectorService` (no package: `/VectorService/Upsert` …) over
//! h2c on each index's data-plane port, as the real one is on port 443 of the index host.
//! tonic's server half (`tonic::server::Grpc`, the framing, status and trailers) with
//! prost's codec; the messages are the fields of `db_data_2025-10.proto` that the fake
//! uses, written out with prost's derive (same names, numbers and types), so that no
//! `protoc` is needed to build. Metadata (`google.protobuf.Struct`) and sparse values are not
//! kept. Keys are checked as for REST: gRPC status 16 `UNAUTHENTICATED` for a bad key, 7
//! `PERMISSION_DENIED` for roles that do not cover the call.

use super::data::{DataService, Denied};
use crate::body::{Body, BoxError};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::HashMap;
use std::pin::Pin;
use tonic::Status;
use tonic::server::{Grpc, UnaryService};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Vector {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(float, repeated, tag = "2")]
    pub values: Vec<f32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpsertRequest {
    #[prost(message, repeated, tag = "1")]
    pub vectors: Vec<Vector>,
    #[prost(string, tag = "2")]
    pub namespace: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UpsertResponse {
    #[prost(uint32, tag = "1")]
    pub upserted_count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryRequest {
    #[prost(string, tag = "1")]
    pub namespace: String,
    #[prost(uint32, tag = "2")]
    pub top_k: u32,
    #[prost(bool, tag = "4")]
    pub include_values: bool,
    #[prost(float, repeated, tag = "7")]
    pub vector: Vec<f32>,
    #[prost(string, tag = "8")]
    pub id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ScoredVector {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(float, tag = "2")]
    pub score: f32,
    #[prost(float, repeated, tag = "3")]
    pub values: Vec<f32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Usage {
    #[prost(uint32, optional, tag = "1")]
    pub read_units: Option<u32>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryResponse {
    #[prost(message, repeated, tag = "2")]
    pub matches: Vec<ScoredVector>,
    #[prost(string, tag = "3")]
    pub namespace: String,
    #[prost(message, optional, tag = "4")]
    pub usage: Option<Usage>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchRequest {
    #[prost(string, repeated, tag = "1")]
    pub ids: Vec<String>,
    #[prost(string, tag = "2")]
    pub namespace: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct FetchResponse {
    #[prost(map = "string, message", tag = "1")]
    pub vectors: HashMap<String, Vector>,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(message, optional, tag = "3")]
    pub usage: Option<Usage>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DescribeIndexStatsRequest {}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NamespaceSummary {
    #[prost(uint32, tag = "1")]
    pub vector_count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DescribeIndexStatsResponse {
    #[prost(map = "string, message", tag = "1")]
    pub namespaces: HashMap<String, NamespaceSummary>,
    #[prost(uint32, tag = "2")]
    pub dimension: u32,
    #[prost(float, tag = "3")]
    pub index_fullness: f32,
    #[prost(uint32, tag = "4")]
    pub total_vector_count: u32,
    #[prost(string, tag = "5")]
    pub metric: String,
}

type Answer<T> = Pin<Box<dyn Future<Output = Result<tonic::Response<T>, Status>> + Send>>;

/// One unary method: what it does to the index's vectors, and whether it writes.
#[derive(Clone)]
struct Method<F> {
    service: DataService,
    write: bool,
    headers: http::HeaderMap,
    run: F,
}

impl<Q, R, F> UnaryService<Q> for Method<F>
where
    Q: Send + 'static,
    R: Send + 'static,
    F: Fn(&mut super::vectors::Vectors, Q) -> Result<R, Status> + Clone + Send + 'static,
{
    type Response = R;
    type Future = Answer<R>;

    fn call(&mut self, request: tonic::Request<Q>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let data = this.service.state.data.lock();
            match this.service.authorize(&data, &this.headers, this.write) {
                Err(Denied::Unauthenticated) => return Err(Status::unauthenticated("Invalid API key")),
                Err(Denied::Forbidden) => {
                    return Err(Status::permission_denied("The API key's roles do not allow this operation."));
                }
                Ok(()) => {}
            }
            drop(data);
            let message = request.into_inner();
            let answer = this.service.with_vectors(|v| (this.run)(v, message));
            answer.unwrap_or_else(|| Err(Status::not_found("index not found"))).map(tonic::Response::new)
        })
    }
}

fn method<F>(service: &DataService, headers: &http::HeaderMap, write: bool, run: F) -> Method<F> {
    Method { service: service.clone(), write, headers: headers.clone(), run }
}

/// Answers one gRPC call on the data-plane port.
pub(crate) async fn handle(service: DataService, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();
    let response = match path.as_str() {
        "/VectorService/Upsert" => {
            let mut grpc = Grpc::new(ProstCodec::<UpsertResponse, UpsertRequest>::default());
            grpc.unary(method(&service, &headers, true, upsert), request).await
        }
        "/VectorService/Query" => {
            let mut grpc = Grpc::new(ProstCodec::<QueryResponse, QueryRequest>::default());
            grpc.unary(method(&service, &headers, false, query), request).await
        }
        "/VectorService/Fetch" => {
            let mut grpc = Grpc::new(ProstCodec::<FetchResponse, FetchRequest>::default());
            grpc.unary(method(&service, &headers, false, fetch), request).await
        }
        "/VectorService/DescribeIndexStats" => {
            let mut grpc = Grpc::new(ProstCodec::<DescribeIndexStatsResponse, DescribeIndexStatsRequest>::default());
            grpc.unary(method(&service, &headers, false, stats), request).await
        }
        _ => Status::unimplemented(format!("{path} is not a method of the fake's VectorService")).into_http(),
    };
    let response = response.map(|body| body.map_err(BoxError::from).boxed_unsync());
    if service.state.grpc_status_in_trailers.load(std::sync::atomic::Ordering::SeqCst) {
        status_in_trailers(response)
    } else {
        response
    }
}

/// A trailers-only answer (its status in the headers) as headers and then trailers.
fn status_in_trailers(mut response: Response<Body>) -> Response<Body> {
    let mut trailers = http::HeaderMap::new();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        if let Some(value) = response.headers_mut().remove(name) {
            trailers.insert(name, value);
        }
    }
    if trailers.is_empty() {
        return response;
    }
    let body = http_body_util::Empty::<bytes::Bytes>::new()
        .with_trailers(async move { Some(Ok(trailers)) })
        .map_err(|never: std::convert::Infallible| match never {})
        .boxed_unsync();
    response.map(|_| body)
}

fn upsert(v: &mut super::vectors::Vectors, r: UpsertRequest) -> Result<UpsertResponse, Status> {
    let items = r.vectors.into_iter().map(|x| (x.id, x.values.into_iter().map(f64::from).collect(), None)).collect();
    // With details, as Pinecone's errors carry them: `grpc-status-details-bin` must pass.
    let details =
        |m: String| Status::with_details(tonic::Code::InvalidArgument, m, bytes::Bytes::from_static(b"fake-details"));
    let count = v.put(&r.namespace, items).map_err(details)?;
    Ok(UpsertResponse { upserted_count: count as u32 })
}

fn query(v: &mut super::vectors::Vectors, r: QueryRequest) -> Result<QueryResponse, Status> {
    let vector = (!r.vector.is_empty()).then(|| r.vector.iter().copied().map(f64::from).collect());
    let id = (!r.id.is_empty()).then_some(r.id.as_str());
    let found = v.nearest(&r.namespace, vector, id, r.top_k as usize).map_err(Status::invalid_argument)?;
    let matches = found
        .into_iter()
        .map(|(id, score, values, _)| ScoredVector {
            id,
            score: score as f32,
            values: if r.include_values { values.into_iter().map(|x| x as f32).collect() } else { Vec::new() },
        })
        .collect();
    Ok(QueryResponse { matches, namespace: r.namespace, usage: Some(Usage { read_units: Some(1) }) })
}

fn fetch(v: &mut super::vectors::Vectors, r: FetchRequest) -> Result<FetchResponse, Status> {
    let vectors = v
        .get(&r.namespace, &r.ids)
        .into_iter()
        .map(|(id, values, _)| (id.clone(), Vector { id, values: values.into_iter().map(|x| x as f32).collect() }))
        .collect();
    Ok(FetchResponse { vectors, namespace: r.namespace, usage: Some(Usage { read_units: Some(1) }) })
}

fn stats(v: &mut super::vectors::Vectors, _: DescribeIndexStatsRequest) -> Result<DescribeIndexStatsResponse, Status> {
    let (counts, dimension, metric) = v.counts();
    let total = counts.iter().map(|(_, n)| *n as u32).sum();
    let namespaces = counts.into_iter().map(|(ns, n)| (ns, NamespaceSummary { vector_count: n as u32 })).collect();
    Ok(DescribeIndexStatsResponse {
        namespaces,
        dimension: dimension.unwrap_or(0) as u32,
        index_fullness: 0.0,
        total_vector_count: total,
        metric: metric.to_owned(),
    })
}
