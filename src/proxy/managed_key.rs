//! Requests with the managed API key (`[api_key]`): control-plane requests on `listen`, and
//! every request on an index's listener (its data plane, on the index's own host). The key
//! goes in `Api-Key` (the client's `Api-Key` and `Authorization` out), a wait of at most
//! `token.timeout` while none is usable (then `503 api_key_unavailable`), and after a `401`
//! (or a gRPC `UNAUTHENTICATED`) one new key for every request that saw the old one rejected
//! and one replay; a gRPC `UNAUTHENTICATED` in trailers replaces the key without a replay.

use super::error::ProxyError;
use super::headers::rewrite_key_headers;
use super::index_host::IndexHost;
use super::{Outcome, Proxy, Renewed, finish};
use crate::api_key::source::{ApiKey, KeySource};
use crate::body::{Body, BoxError};
use crate::outbound::Pool;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::uri::PathAndQuery;
use http::{Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use std::sync::Arc;

/// Whether an answer says the key was not taken: HTTP 401 (`Invalid API key`), or a gRPC
/// call answered at once with status 16 `UNAUTHENTICATED` (a trailers-only response, whose
/// status is in its headers: what a server answers before it reads a message).
fn rejects_key(response: &Response<Body>) -> bool {
    response.status() == StatusCode::UNAUTHORIZED || response.headers().get("grpc-status").is_some_and(|s| s == "16")
}

/// Asks for a key newer than `key`: the first request to see it rejected says so.
fn replace(keys: &KeySource, key: &ApiKey) {
    if keys.invalidate(key.generation) {
        tracing::warn!(
            id = %key.id,
            fingerprint = %key.fingerprint,
            "the control or data plane answered 401 to the managed API key; replacing it",
        );
    }
}

/// A gRPC answer whose status comes in its trailers, after its headers and messages: a 16
/// `UNAUTHENTICATED` there cannot be replayed (the client has begun to receive the answer),
/// but the key is replaced for the calls to come. Other answers are left as they are.
fn watch_trailers(response: Response<Body>, keys: &KeySource, key: &Arc<ApiKey>) -> Response<Body> {
    let grpc = response.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return response;
    }
    let (keys, key) = (keys.clone(), key.clone());
    response.map(|body| {
        body.map_frame(move |frame| {
            if frame.trailers_ref().and_then(|t| t.get("grpc-status")).is_some_and(|s| s == "16") {
                replace(&keys, &key);
            }
            frame
        })
        .boxed_unsync()
    })
}

impl Proxy {
    /// A control-plane request on `listen`: to `upstream.url`.
    pub(super) async fn forward_managed_key<'p, B>(
        &'p self,
        mut parts: http::request::Parts,
        body: B,
        keys: &KeySource,
        outcome: &mut Outcome<'p>,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        parts.uri = self.upstream_uri(&parts.uri)?;
        let pool = self.inner.upstream.clone();
        let limit = self.inner.replay_limit;
        self.forward_with_key(&pool, (parts, limit), body, keys, outcome).await
    }

    /// A request on an index's listener: to the index's host, its path and query as they
    /// came. A host that cannot be reached is looked up again for the next request.
    pub(super) async fn forward_index<'p, B>(
        &'p self,
        mut parts: http::request::Parts,
        body: B,
        (keys, host, limit): (&KeySource, &IndexHost, u64),
        outcome: &mut Outcome<'p>,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let pool = host.pool().await.map_err(|e| {
            ProxyError::UpstreamUnreachable(format!("the host of index {} is not known: {e}", host.name()))
        })?;
        let pq = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
        let result = self.forward_with_key(&pool, (parts, limit), body, keys, outcome).await;
        match &result {
            Err(ProxyError::UpstreamUnreachable(_)) => host.forget(),
            // The index may have moved (or gone): look again, for the requests to come.
            Ok(response) if response.status() == StatusCode::NOT_FOUND => host.recheck(),
            _ => {}
        }
        result
    }

    async fn forward_with_key<'p, B>(
        &'p self,
        pool: &Pool,
        (mut parts, limit): (http::request::Parts, u64),
        body: B,
        keys: &KeySource,
        outcome: &mut Outcome<'p>,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = &self.inner;
        let key = keys.get().await.map_err(|e| ProxyError::ApiKeyUnavailable { retry_after: e.retry_after })?;
        outcome.key = Some(key.clone());
        // The pool speaks what its connection speaks (HTTP/2 ignores the field; an HTTP/1.1
        // connection refuses any other version), as on the Admin API path.
        parts.version = Version::HTTP_11;
        rewrite_key_headers(&mut parts.headers, key.header(), &inner.api_version, inner.override_api_version);
        let (response, replay) = self.send_replayable(pool, (parts, limit), body).await?;
        outcome.upstream_status = Some(response.status().as_u16());
        if !rejects_key(&response) {
            return Ok(finish(watch_trailers(response, keys, &key)));
        }
        // The plane no longer takes this key (deleted, revoked): one new key for all, and
        // one line for all.
        replace(keys, &key);
        let renew = async { keys.newer_than(key.generation).await.ok().map(Renewed::Key) };
        Box::pin(self.replay(pool, response, replay, outcome, renew)).await
    }
}
