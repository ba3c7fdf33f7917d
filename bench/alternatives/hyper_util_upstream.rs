// The forwarding pool over hyper-util's legacy `Client`, raced against ours in BENCHMARKS.md run 12
// (issue 23). Not compiled here. To reproduce: `git worktree add /tmp/hu f231eae`, copy this
// file over /tmp/hu/src/upstream.rs, make `client::LoopbackChecked`'s field `pub(crate)`, build
// it with `cargo build --release`, and run `BENCH_ALSO="hyper-util=/tmp/hu/target/release/pinecone-admin-proxy" bench/run`.

//! EXPERIMENT: the forwarding client over hyper-util's pooled `Client`, for the side-by-side
//! benchmark of issue 23. Same interface as the own pool.

use crate::body::{Body, BoxError};
use crate::client::{LoopbackChecked, error_chain};
use crate::config::UpstreamConfig;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, header};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::dns::GaiResolver;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub(crate) const MAX_IDLE: usize = 32;
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

type Https = hyper_rustls::HttpsConnector<Capped>;

#[derive(Debug, Clone)]
pub(crate) struct Upstream {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: Client<Https, Body>,
    scheme: Scheme,
    authority: Authority,
    streaming: Arc<Semaphore>,
}

#[derive(Debug)]
pub(crate) enum SendError {
    Timeout,
    Unreachable(String),
}

/// hyper-util's HTTP connector, with a slot of `upstream.max_connections` held by each
/// connection for its life.
#[derive(Debug, Clone)]
pub(crate) struct Capped {
    http: HttpConnector<LoopbackChecked>,
    slots: Arc<Semaphore>,
    wait: Duration,
}

impl tower::Service<Uri> for Capped {
    type Response = CappedIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<CappedIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(BoxError::from)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (mut http, slots, wait) = (self.http.clone(), self.slots.clone(), self.wait);
        Box::pin(async move {
            let slot = tokio::time::timeout(wait, slots.acquire_owned())
                .await
                .map_err(|_| "no upstream connection free (upstream.max_connections)")?
                .expect("never closed");
            let io = tower::Service::call(&mut http, uri).await?;
            Ok(CappedIo { io, _slot: slot })
        })
    }
}

pub(crate) struct CappedIo {
    io: TokioIo<TcpStream>,
    _slot: OwnedSemaphorePermit,
}

impl Connection for CappedIo {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl hyper::rt::Read for CappedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for CappedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Upstream {
    pub(crate) fn new(cfg: &UpstreamConfig) -> Result<Self, rustls::Error> {
        Self::with_idle(cfg, IDLE_TIMEOUT, MAX_IDLE)
    }

    pub(crate) fn with_idle(cfg: &UpstreamConfig, idle: Duration, max_idle: usize) -> Result<Self, rustls::Error> {
        let mut http = HttpConnector::new_with_resolver(LoopbackChecked(GaiResolver::new()));
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        let capped = Capped { http, slots: Arc::new(Semaphore::new(cfg.max_connections)), wait: cfg.timeout };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(crate::client::tls_config(cfg)?)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(capped);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(idle)
            .pool_max_idle_per_host(max_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .http2_keep_alive_interval(H2_KEEP_ALIVE)
            .build(connector);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                scheme: cfg.scheme.clone(),
                authority: cfg.authority.clone(),
                streaming: Arc::new(Semaphore::new(streaming_share(cfg.max_connections))),
            }),
        })
    }

    pub(crate) async fn send(
        &self,
        request: Request<Body>,
        timeout: Duration,
        streaming: bool,
    ) -> Result<Response<Body>, SendError> {
        let result = if streaming {
            tokio::time::timeout(timeout, Box::pin(self.exchange_streaming(request))).await
        } else {
            tokio::time::timeout(timeout, self.exchange(request)).await
        };
        result.unwrap_or(Err(SendError::Timeout))
    }

    async fn exchange_streaming(&self, request: Request<Body>) -> Result<Response<Body>, SendError> {
        let share = self.inner.streaming.clone().acquire_owned().await.expect("the semaphore is never closed");
        let response = self.exchange(request).await?;
        Ok(response.map(|body| Holding { body, _share: share }.boxed_unsync()))
    }

    async fn exchange(&self, mut request: Request<Body>) -> Result<Response<Body>, SendError> {
        let inner = &self.inner;
        let pq = request.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri = Uri::builder().scheme(inner.scheme.clone()).authority(inner.authority.clone()).path_and_query(pq);
        *request.uri_mut() = uri.build().expect("scheme, authority and path are valid");
        request.headers_mut().remove(header::HOST);
        let captured = capture_connection(&mut request);
        let mut response =
            inner.client.request(request).await.map_err(|e| SendError::Unreachable(error_chain(&e)))?;
        let headers = response.headers_mut();
        if headers.contains_key(header::CONTENT_LENGTH) && headers.contains_key(header::TRANSFER_ENCODING) {
            headers.remove(header::CONTENT_LENGTH);
            if let Some(connected) = captured.connection_metadata().as_ref() {
                connected.poison();
            }
        }
        Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()))
    }
}

pub(crate) fn streaming_share(max: usize) -> usize {
    if max <= 1 { max } else { max - (max / 4).max(1) }
}

struct Holding {
    body: Body,
    _share: OwnedSemaphorePermit,
}

impl http_body::Body for Holding {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
