//! Control-plane requests with the managed API key (`[api_key]`): the key in `Api-Key`
//! (the client's `Api-Key` and `Authorization` out), a wait of at most `token.timeout`
//! while none is usable (then `503 api_key_unavailable`), and after a `401` one new key for
//! every request that saw the old one rejected and one replay.

use super::error::ProxyError;
use super::headers::rewrite_key_headers;
use super::{Outcome, Proxy, Renewed, finish};
use crate::api_key::source::KeySource;
use crate::body::{Body, BoxError};
use bytes::Bytes;
use http::{Response, StatusCode, Version};

impl Proxy {
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
        let inner = &self.inner;
        let key = keys.get().await.map_err(|e| ProxyError::ApiKeyUnavailable { retry_after: e.retry_after })?;
        outcome.key = Some(key.clone());
        parts.uri = self.upstream_uri(&parts.uri)?;
        parts.version = Version::HTTP_11;
        rewrite_key_headers(&mut parts.headers, key.header(), &inner.api_version, inner.override_api_version);
        let (response, replay) = self.send_replayable(parts, body).await?;
        outcome.upstream_status = Some(response.status().as_u16());
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(finish(response));
        }
        // The plane no longer takes this key (deleted, revoked): one new key for all, and
        // one line for all.
        if keys.invalidate(key.generation) {
            tracing::warn!(
                id = %key.id,
                fingerprint = %key.fingerprint,
                "the control plane answered 401 to the managed API key; replacing it",
            );
        }
        let renew = async { keys.newer_than(key.generation).await.ok().map(Renewed::Key) };
        Box::pin(self.replay(response, replay, outcome, renew)).await
    }
}
