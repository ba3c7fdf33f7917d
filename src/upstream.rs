//! The forwarding client: keep-alive connections to the one upstream, over rustls (or plain
//! TCP for a loopback `http://` upstream), HTTP/2 or HTTP/1.1 as ALPN decides.
//!
//! It exists because hyper-util's general-purpose pooled client cost about a fifth of the
//! proxy's instructions per request (a keyed pool behind SipHash, a race between checkout
//! and a new connection on every request, several future layers). With one upstream, a
//! pool is a stack: an HTTP/1.1 connection is taken from it for a request and put back
//! when the response body has been read to its end; an HTTP/2 connection is shared.
//! A request that a pooled connection could not even start sending (the upstream had
//! closed it) is sent again on a new connection, once. What to send and what an error
//! means to the client is [`crate::proxy`]'s business.

use crate::client::{Body, BoxError, error_chain};
use crate::config::UpstreamConfig;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use rustls_pki_types::ServerName;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long an idle connection is kept: shorter than the ~120 s after which cloud load
/// balancers drop idle connections, so we close first.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The upstream connection pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    scheme: Scheme,
    authority: Authority,
    host_header: HeaderValue,
    connect_timeout: Duration,
    idle: Mutex<Vec<(http1::SendRequest<Body>, Instant)>>,
    h2: Mutex<Option<http2::SendRequest<Body>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("authority", &self.authority).field("idle", &self.idle.lock().len()).finish()
    }
}

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, rustls::Error> {
        let host = cfg.authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let https = cfg.scheme == Scheme::HTTPS;
        let port = cfg.authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let mut config = crate::client::tls_config(cfg)?;
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let name = ServerName::try_from(host.clone())
                .map_err(|_| rustls::Error::General(format!("{host} is not a valid TLS server name")))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                host_header: HeaderValue::from_str(cfg.authority.as_str()).expect("an authority is a valid header"),
                host,
                port,
                tls,
                scheme: cfg.scheme.clone(),
                authority: cfg.authority.clone(),
                connect_timeout: cfg.connect_timeout,
                idle: Mutex::new(Vec::new()),
                h2: Mutex::new(None),
            }),
        })
    }

    /// Sends `request` (its URI in origin form: path and query) and returns the response
    /// headers; the body streams from the connection. An error is one line for the client.
    pub async fn send(&self, mut request: Request<Body>) -> Result<Response<Body>, String> {
        let mut fresh = false;
        loop {
            // Connecting is rare and its future (DNS, TLS, HTTP/2 handshakes) is large: boxed,
            // it does not inflate, and get copied with, every request's future.
            let sender = if fresh { Box::pin(self.connect()).await? } else { self.checkout().await? };
            match sender {
                Sender::H1(sender) => {
                    request.headers_mut().insert(header::HOST, self.inner.host_header.clone());
                    // If this future is dropped (the client went away), the lease puts the
                    // connection back: the next request waits until it has read the
                    // abandoned response, instead of opening a new connection.
                    let mut lease = Lease { sender: Some(sender), inner: self.inner.clone() };
                    let sent = lease.sender.as_mut().expect("just leased").try_send_request(request);
                    match sent.await {
                        Ok(response) => {
                            let sender = lease.sender.take().expect("still leased");
                            let inner = self.inner.clone();
                            return Ok(response.map(|body| PooledBody::new(body, sender, inner).boxed_unsync()));
                        }
                        Err(mut e) => match e.take_message() {
                            // Never sent: the pooled connection was closed under us.
                            Some(unsent) if !fresh => {
                                request = unsent;
                                fresh = true;
                            }
                            _ => return Err(error_chain(&e.into_error())),
                        },
                    }
                }
                Sender::H2(mut sender) => {
                    let pq = request.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
                    *request.uri_mut() = Uri::builder()
                        .scheme(self.inner.scheme.clone())
                        .authority(self.inner.authority.clone())
                        .path_and_query(pq)
                        .build()
                        .map_err(|e| e.to_string())?;
                    sender.ready().await.map_err(|e| error_chain(&e))?;
                    let response = sender.send_request(request).await.map_err(|e| error_chain(&e))?;
                    return Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync()));
                }
            }
        }
    }

    /// A connection to send on: the shared HTTP/2 one, an idle HTTP/1.1 one, or a new one.
    async fn checkout(&self) -> Result<Sender, String> {
        let h2 = self.inner.h2.lock().clone();
        if let Some(h2) = h2 {
            if !h2.is_closed() {
                return Ok(Sender::H2(h2));
            }
            *self.inner.h2.lock() = None;
        }
        loop {
            let Some((mut sender, since)) = self.inner.idle.lock().pop() else { break };
            if sender.is_closed() || since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            // Put back the moment its last response ended; ready as soon as the connection
            // task has noticed.
            if sender.ready().await.is_ok() {
                return Ok(Sender::H1(sender));
            }
        }
        Box::pin(self.connect()).await
    }

    async fn connect(&self) -> Result<Sender, String> {
        let inner = &self.inner;
        let addrs = tokio::net::lookup_host((inner.host.as_str(), inner.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", inner.host))?;
        let mut last = format!("{} resolved to no address", inner.host);
        let mut tcp = None;
        for addr in addrs {
            match tokio::time::timeout(inner.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    tcp = Some(stream);
                    break;
                }
                Ok(Err(e)) => last = format!("tcp connect error: {e} ({addr})"),
                Err(_) => last = format!("tcp connect to {addr} timed out after {:?}", inner.connect_timeout),
            }
        }
        let tcp = tcp.ok_or(last)?;
        let _ = tcp.set_nodelay(true);
        let Some((connector, name)) = &inner.tls else { return handshake_h1(tcp).await };
        let tls = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {}", error_chain(&e)))?;
        if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| error_chain(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            *inner.h2.lock() = Some(sender.clone());
            return Ok(Sender::H2(sender));
        }
        handshake_h1(tls).await
    }
}

async fn handshake_h1<T>(io: T) -> Result<Sender, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = http1::handshake(TokioIo::new(io)).await.map_err(|e| error_chain(&e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    sender.ready().await.map_err(|e| error_chain(&e))?;
    Ok(Sender::H1(sender))
}

/// An HTTP/1.1 connection lent to one request; back in the pool when dropped.
struct Lease {
    sender: Option<http1::SendRequest<Body>>,
    inner: Arc<Inner>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            if !sender.is_closed() {
                self.inner.idle.lock().push((sender, Instant::now()));
            }
        }
    }
}

/// A response body that puts its HTTP/1.1 connection back in the pool once it has been
/// read to the end, or when it is dropped before (the next user of the connection waits
/// until hyper has finished with the rest, or finds it closed and discards it).
struct PooledBody {
    body: Incoming,
    sender: Option<http1::SendRequest<Body>>,
    inner: Arc<Inner>,
}

impl PooledBody {
    fn new(body: Incoming, sender: http1::SendRequest<Body>, inner: Arc<Inner>) -> Self {
        Self { body, sender: Some(sender), inner }
    }

    fn release(&mut self) {
        if let Some(sender) = self.sender.take() {
            if !sender.is_closed() {
                self.inner.idle.lock().push((sender, Instant::now()));
            }
        }
    }
}

impl http_body::Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => self.release(),
            Some(Ok(_)) if self.body.is_end_stream() => self.release(),
            Some(Err(_)) => self.sender = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        self.release();
    }
}
