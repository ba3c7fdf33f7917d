//! Where an index's data plane is: its host, found with `describe_index` (the control plane,
//! with the managed key) before the proxy is ready, and found again after a connect failure
//! or a 404 from the host. One lookup at a time; requests that need the host meanwhile wait
//! for it, within the key's wait (`token.timeout`). Requests make the proxy look again at
//! most once every [`RECHECK_EVERY`]: a host that is down, or an index that is gone, costs
//! the control plane one `describe_index` every 10 s, not one a request.

use crate::api_key::source::KeySource;
use crate::body::{BoxError, empty};
use crate::outbound::{Outbound, Pool, SendError};
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Collected, Limited};
use parking_lot::Mutex;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The most of a `describe_index` answer read.
const MAX_ANSWER: usize = 64 * 1024;

/// An index's host, as found; and the pool of its data plane.
#[derive(Debug, Clone)]
struct Found {
    host: Authority,
    pool: Pool,
}

/// One index's host. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct IndexHost {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    name: String,
    listen: String,
    outbound: Outbound,
    keys: KeySource,
    /// The control plane: `upstream.url`'s scheme, authority and base path.
    scheme: Scheme,
    control: String,
    api_version: HeaderValue,
    timeout: Duration,
    found: Mutex<Option<Found>>,
    last_error: Mutex<Option<String>>,
    /// One lookup at a time.
    looking: tokio::sync::Mutex<()>,
    /// When a request (a connect failure, a 404, a host not known) last made the proxy
    /// look again.
    rechecked: Mutex<Option<tokio::time::Instant>>,
}

/// How often requests may make the proxy look the host up again.
const RECHECK_EVERY: Duration = Duration::from_secs(10);

/// What `/status` shows of an index.
#[derive(Debug, serde::Serialize)]
pub(crate) struct IndexStatus {
    pub(crate) name: String,
    pub(crate) listen: String,
    pub(crate) host: Option<String>,
    pub(crate) last_error: Option<String>,
}

impl IndexHost {
    pub(crate) fn new(
        name: &str,
        listen: &str,
        outbound: Outbound,
        keys: KeySource,
        upstream: &crate::config::UpstreamConfig,
    ) -> Self {
        let control = format!("{}://{}{}", upstream.scheme, upstream.authority, upstream.base_path);
        let inner = Inner {
            name: name.to_owned(),
            listen: listen.to_owned(),
            outbound,
            keys,
            scheme: upstream.scheme.clone(),
            control,
            api_version: upstream.api_version.clone(),
            timeout: upstream.timeout,
            found: Mutex::new(None),
            last_error: Mutex::new(None),
            looking: tokio::sync::Mutex::new(()),
            rechecked: Mutex::new(None),
        };
        Self { inner: Arc::new(inner) }
    }

    /// The data plane's pool: the host found, or one looked up now; while the last lookup
    /// failed less than [`RECHECK_EVERY`] ago, its error.
    pub(crate) async fn pool(&self) -> Result<Pool, String> {
        if let Some(found) = self.inner.found.lock().clone() {
            return Ok(found.pool);
        }
        let _one = self.inner.looking.lock().await;
        // Another request may have found it while this one waited.
        if let Some(found) = self.inner.found.lock().clone() {
            return Ok(found.pool);
        }
        // Forgotten after a connect failure (no error yet): look now; after a failed lookup,
        // only when one is due again.
        let failed = self.inner.last_error.lock().clone();
        match failed {
            Some(error) if !self.due() => Err(error),
            _ => self.look_up().await,
        }
    }

    /// Whether a request may make the proxy look again now ([`RECHECK_EVERY`] since the
    /// last time); if so, it counts as done.
    fn due(&self) -> bool {
        let now = tokio::time::Instant::now();
        let mut last = self.inner.rechecked.lock();
        if last.is_some_and(|at| now < at + RECHECK_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// After a 404 from the host: looks the host up again in the background (at most one
    /// lookup at a time, and once every [`RECHECK_EVERY`]), and moves to the new host if the
    /// index has one; the request that saw the 404 gets it as it came.
    pub(crate) fn recheck(&self) {
        if !self.due() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let Ok(_one) = this.inner.looking.try_lock() else { return };
            let current = this.inner.found.lock().as_ref().map(|f| f.host.clone());
            if let Ok(found) = this.describe().await
                && Some(&found.host) != current.as_ref()
            {
                tracing::info!(index = %this.inner.name, host = %found.host, "index host moved");
                *this.inner.found.lock() = Some(found);
            }
        });
    }

    /// After a connect failure: the next request looks the host up again (the index may
    /// have moved), unless a request made the proxy look less than [`RECHECK_EVERY`] ago
    /// (then the host is down, not moved, and the proxy keeps it).
    pub(crate) fn forget(&self) {
        if self.due() {
            self.inner.found.lock().take();
        }
    }

    /// Whether the host is known (for `/readyz`).
    pub(crate) fn ready(&self) -> bool {
        self.inner.found.lock().is_some()
    }

    pub(crate) fn name(&self) -> &str {
        &self.inner.name
    }

    pub(crate) fn status(&self) -> IndexStatus {
        IndexStatus {
            name: self.inner.name.clone(),
            listen: self.inner.listen.clone(),
            host: self.inner.found.lock().as_ref().map(|f| f.host.to_string()),
            last_error: self.inner.last_error.lock().clone(),
        }
    }

    /// Looks the host up until it is found (at start, so that `/readyz` can wait for it),
    /// every `retry` after a failure, whatever requests are due.
    pub(crate) async fn find(self, retry: Duration) {
        loop {
            {
                let _one = self.inner.looking.lock().await;
                if self.inner.found.lock().is_some() || self.look_up().await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// `describe_index` with the managed key: the index's `host`, and its pool.
    async fn look_up(&self) -> Result<Pool, String> {
        let result = self.describe().await;
        let inner = &self.inner;
        match &result {
            Ok(found) => {
                tracing::info!(index = %inner.name, host = %found.host, listen = %inner.listen, "index host found");
                *inner.found.lock() = Some(found.clone());
                inner.last_error.lock().take();
            }
            Err(e) => {
                tracing::warn!(index = %inner.name, error = %e, "describe_index failed; the index's host is not known");
                *inner.last_error.lock() = Some(e.clone());
            }
        }
        result.map(|found| found.pool)
    }

    async fn describe(&self) -> Result<Found, String> {
        let inner = &self.inner;
        let key = inner.keys.get().await.map_err(|_| "no usable managed API key".to_owned())?;
        let uri: Uri = format!("{}/indexes/{}", inner.control, inner.name)
            .parse()
            .map_err(|_| format!("{} is not a valid index name in a path", inner.name))?;
        let mut request = Request::get(uri).body(empty()).expect("a valid request");
        let headers = request.headers_mut();
        headers.insert("api-key", key.header().clone());
        headers.insert("x-pinecone-api-version", inner.api_version.clone());
        let response = inner.outbound.send(request, inner.timeout).await.map_err(|e| match e {
            SendError::Timeout => "describe_index: no answer in time".to_owned(),
            SendError::Unreachable(e) => format!("describe_index: {e}"),
        })?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            inner.keys.invalidate(key.generation);
        }
        let read: Pin<Box<dyn Future<Output = Result<Collected<Bytes>, BoxError>> + Send>> =
            Box::pin(Limited::new(response.into_body(), MAX_ANSWER).collect());
        let body = tokio::time::timeout(inner.timeout, read)
            .await
            .map_err(|_| "describe_index: the answer took too long".to_owned())?
            .map_err(|e| format!("describe_index: the answer could not be read ({e})"))?
            .to_bytes();
        if status != StatusCode::OK {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let message = v["error"]["message"].as_str().unwrap_or("no message").chars().take(300).collect::<String>();
            return Err(format!("describe_index answered {status}: {message}"));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| "describe_index: the answer is not JSON".to_owned())?;
        let host = index_host(v["host"].as_str().ok_or("describe_index: the answer has no host")?)?;
        let loopback = crate::net::is_loopback_host(host.host());
        if inner.scheme == Scheme::HTTP && !loopback {
            return Err(format!("{host} is not a loopback host: the data plane is reached over https only"));
        }
        let pool = inner.outbound.data_pool(&inner.scheme, &host).map_err(|e| e.to_string())?;
        Ok(Found { host, pool })
    }
}

/// The `host` of a `describe_index` answer: a bare host name, with a port at most (Pinecone
/// answers `docs-c01b5b5.svc.us-east1-gcp.pinecone.io`); no user part, path or scheme.
fn index_host(answered: &str) -> Result<Authority, String> {
    let bad = || format!("describe_index: {:?} is not a host", answered.chars().take(300).collect::<String>());
    let host: Authority = answered.parse().map_err(|_| bad())?;
    if host.as_str().contains('@') || host.host().is_empty() {
        return Err(bad());
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::index_host;

    #[test]
    fn an_index_host_is_a_bare_host_name_with_a_port_at_most() {
        assert_eq!(
            index_host("docs-c01b5b5.svc.us-east1-gcp.pinecone.io").unwrap().as_str(),
            "docs-c01b5b5.svc.us-east1-gcp.pinecone.io"
        );
        assert_eq!(index_host("127.0.0.1:8485").unwrap().port_u16(), Some(8485));
        for bad in [
            "",
            "user@evil.example",
            "user:pw@docs.pinecone.io",
            "https://docs.pinecone.io",
            "docs.pinecone.io/x",
            ":443",
            "a b",
        ] {
            let e = index_host(bad).unwrap_err();
            assert!(e.contains("is not a host"), "{bad:?}: {e}");
        }
    }
}
