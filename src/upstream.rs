//! The forwarding client: keep-alive connections to the one upstream, over rustls (or plain
//! TCP for a loopback `http://` upstream), HTTP/2 or HTTP/1.1 as ALPN decides.
//!
//! It exists because hyper-util's general-purpose pooled client cost about a fifth of the
//! proxy's instructions per request (a keyed pool behind SipHash, a race between checkout
//! and a new connection on every request, several future layers). With one upstream, a
//! pool is a stack: an HTTP/1.1 connection is taken from it for a request and put back
//! when the response body has been read to its end; an HTTP/2 connection is shared.
//! A request that a pooled connection could not even start sending (the upstream had
//! closed it) is sent again on a new connection, once. A request whose client went away
//! before its response came is finished in the background (its response read and
//! discarded, up to a limit) so that its connection goes back to the pool rather than being
//! closed. Each HTTP/1.1 connection carries one timer for `upstream.timeout`, moved to
//! each request's deadline in turn. What to send and what an error means to the client is
//! [`crate::proxy`]'s business.

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
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// How long an idle connection is kept: shorter than the ~120 s after which cloud load
/// balancers drop idle connections, so we close first. Counted from when its last request
/// was sent (which is never later than when it went idle): one clock read per request
/// serves for this and for the request's deadline.
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
    idle: Mutex<Vec<Conn>>,
    h2: Mutex<Option<http2::SendRequest<Body>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("authority", &self.authority).field("idle", &self.idle.lock().len()).finish()
    }
}

enum Sender {
    H1(Conn),
    H2(http2::SendRequest<Body>),
}

/// An HTTP/1.1 connection and the timer that bounds the wait for each of its responses.
/// Between requests the timer stays registered with its last deadline and the last
/// request's waker, so a finished client connection's task record can stay allocated for up
/// to `upstream.timeout` (its buffers are freed): bounded by the number of pooled connections.
struct Conn {
    sender: http1::SendRequest<Body>,
    timer: Pin<Box<Sleep>>,
    /// When its last request was sent.
    used: Instant,
}

/// Why a request got no response from the upstream.
#[derive(Debug)]
pub enum SendError {
    /// No response headers within the timeout.
    Timeout,
    /// Not sent, or the connection failed: one line for the client.
    Unreachable(String),
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
    /// headers, or [`SendError::Timeout`] if they have not come within `timeout`; the body
    /// streams from the connection.
    pub async fn send(&self, mut request: Request<Body>, timeout: Duration) -> Result<Response<Body>, SendError> {
        let now = Instant::now();
        let deadline = now + timeout;
        let mut fresh = false;
        loop {
            // Connecting is rare and its future (DNS, TLS, HTTP/2 handshakes) is large: boxed,
            // it does not inflate, and get copied with, every request's future.
            let pooled = if fresh { None } else { self.checkout(now) };
            let connected = pooled.is_none();
            let sender = match pooled {
                Some(sender) => sender,
                None => match Box::pin(tokio::time::timeout_at(deadline, self.connect(deadline))).await {
                    Ok(connected) => connected.map_err(SendError::Unreachable)?,
                    Err(_) => return Err(SendError::Timeout),
                },
            };
            let mut conn = match sender {
                Sender::H1(conn) => conn,
                // HTTP/2 is boxed out of the HTTP/1.1 request's future, which it would double.
                Sender::H2(sender) => return Box::pin(self.send_h2(sender, request, deadline)).await,
            };
            // One timer per connection, moved to this request's deadline: extending a
            // registered deadline is a store, where a timer per request is an insertion into
            // and a removal from the runtime's timer wheel.
            conn.timer.as_mut().reset(deadline);
            conn.used = now;
            // Usually ready at once: put back the moment its last response ended.
            let ready = std::future::poll_fn(|cx| match conn.sender.poll_ready(cx) {
                Poll::Ready(ready) => Poll::Ready(Some(ready)),
                Poll::Pending => conn.timer.as_mut().poll(cx).map(|()| None),
            })
            .await;
            match ready {
                Some(Ok(())) => {}
                // A pooled connection closed under us: nothing was sent, so the next idle one
                // (or a new one) may be tried. A new one that closes is the upstream's answer.
                Some(Err(e)) if connected => return Err(SendError::Unreachable(error_chain(&e))),
                Some(Err(_)) => continue,
                None => return Err(SendError::Timeout),
            }
            request.headers_mut().insert(header::HOST, self.inner.host_header.clone());
            // If this future is dropped (the client went away) before the response has come,
            // the exchange finishes in the background and then puts the connection back: hyper
            // closes a connection whose queued request was abandoned, and every abandoned
            // request would cost a new connection.
            let mut exchange = Exchange {
                response: Some(Box::pin(conn.sender.try_send_request(request))),
                conn: Some(conn),
                inner: self.inner.clone(),
            };
            let sent = std::future::poll_fn(|cx| exchange.poll_response(cx)).await;
            exchange.response = None;
            let conn = exchange.conn.take().expect("still held");
            match sent {
                Some(Ok(response)) => {
                    let inner = self.inner.clone();
                    return Ok(response.map(|body| PooledBody::new(body, conn, inner).boxed_unsync()));
                }
                // The connection is dropped with the request it is still busy with.
                None => return Err(SendError::Timeout),
                Some(Err(mut e)) => match e.take_message() {
                    // Never sent: the pooled connection was closed under us.
                    Some(unsent) if !fresh => {
                        request = unsent;
                        fresh = true;
                    }
                    _ => return Err(SendError::Unreachable(error_chain(&e.into_error()))),
                },
            }
        }
    }

    async fn send_h2(
        &self,
        mut sender: http2::SendRequest<Body>,
        mut request: Request<Body>,
        deadline: Instant,
    ) -> Result<Response<Body>, SendError> {
        let pq = request.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        *request.uri_mut() = Uri::builder()
            .scheme(self.inner.scheme.clone())
            .authority(self.inner.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(|e| SendError::Unreachable(e.to_string()))?;
        // `:authority` names the upstream; the client's `Host` is not forwarded.
        request.headers_mut().remove(header::HOST);
        let exchange = async {
            sender.ready().await.map_err(|e| error_chain(&e))?;
            sender.send_request(request).await.map_err(|e| error_chain(&e))
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(response)) => Ok(response.map(|body| body.map_err(BoxError::from).boxed_unsync())),
            Ok(Err(e)) => Err(SendError::Unreachable(e)),
            Err(_) => Err(SendError::Timeout),
        }
    }

    /// A connection to send on: the shared HTTP/2 one or an idle HTTP/1.1 one; `None` if a
    /// new one is needed.
    fn checkout(&self, now: Instant) -> Option<Sender> {
        let h2 = self.inner.h2.lock().clone();
        if let Some(h2) = h2 {
            if !h2.is_closed() {
                return Some(Sender::H2(h2));
            }
            *self.inner.h2.lock() = None;
        }
        loop {
            let conn = self.inner.idle.lock().pop()?;
            if !conn.sender.is_closed() && now.saturating_duration_since(conn.used) <= IDLE_TIMEOUT {
                return Some(Sender::H1(conn));
            }
        }
    }

    async fn connect(&self, deadline: Instant) -> Result<Sender, String> {
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
        let Some((connector, name)) = &inner.tls else { return handshake_h1(tcp, deadline).await };
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
        handshake_h1(tls, deadline).await
    }
}

async fn handshake_h1<T>(io: T, deadline: Instant) -> Result<Sender, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) =
        http1::Builder::new().writev(false).handshake(TokioIo::new(io)).await.map_err(|e| error_chain(&e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    sender.ready().await.map_err(|e| error_chain(&e))?;
    Ok(Sender::H1(Conn { sender, timer: Box::pin(tokio::time::sleep_until(deadline)), used: Instant::now() }))
}

/// What abandoned exchanges may read of their responses before the connection is put back;
/// beyond it, or beyond `DRAIN_TIMEOUT`, the connection is closed instead.
const DRAIN_LIMIT: usize = 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A request sent on an HTTP/1.1 connection, until its response headers arrive.
struct Exchange<F>
where
    F: Future<Output = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>>> + Send + 'static,
{
    response: Option<Pin<Box<F>>>,
    conn: Option<Conn>,
    inner: Arc<Inner>,
}

impl<F> Exchange<F>
where
    F: Future<Output = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>>> + Send + 'static,
{
    /// The response, or `None` when the connection's timer ran out first.
    fn poll_response(&mut self, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        if let Poll::Ready(response) = self.response.as_mut().expect("polled after completion").as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        let conn = self.conn.as_mut().expect("held until the response");
        conn.timer.as_mut().poll(cx).map(|()| None)
    }
}

impl<F> Drop for Exchange<F>
where
    F: Future<Output = Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>>> + Send + 'static,
{
    fn drop(&mut self) {
        let (Some(response), Some(conn)) = (self.response.take(), self.conn.take()) else { return };
        // Outside a runtime (or in one shutting down) there is nothing to finish.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let inner = self.inner.clone();
        runtime.spawn(async move {
            let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
                let Ok(response) = response.await else { return false };
                let mut body = response.into_body();
                let mut read = 0;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(frame) => read += frame.data_ref().map_or(0, Bytes::len),
                        Err(_) => return false,
                    }
                    if read > DRAIN_LIMIT {
                        return false;
                    }
                }
                true
            })
            .await;
            if drained == Ok(true) && !conn.sender.is_closed() {
                inner.idle.lock().push(conn);
            }
        });
    }
}

/// A response body that puts its HTTP/1.1 connection back in the pool once it has been
/// read to the end, or when it is dropped before (the next user of the connection waits
/// until hyper has finished with the rest, or finds it closed and discards it).
struct PooledBody {
    body: Incoming,
    conn: Option<Conn>,
    inner: Arc<Inner>,
}

impl PooledBody {
    fn new(body: Incoming, conn: Conn, inner: Arc<Inner>) -> Self {
        Self { body, conn: Some(conn), inner }
    }

    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !conn.sender.is_closed() {
                self.inner.idle.lock().push(conn);
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
            Some(Err(_)) => self.conn = None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Env, Flags};
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::{Notify, mpsc};

    /// An upstream that counts its connections; `/hold` tells the test it arrived and
    /// answers only when the test says so.
    async fn upstream() -> (String, Arc<AtomicU64>, mpsc::UnboundedReceiver<()>, Arc<Notify>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let (arrived_tx, arrived) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let (count, rel) = (accepted.clone(), release.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (arrived_tx, rel) = (arrived_tx.clone(), rel.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let (arrived_tx, rel) = (arrived_tx.clone(), rel.clone());
                        async move {
                            if request.uri().path() == "/hold" {
                                let _ = arrived_tx.send(());
                                rel.notified().await;
                            }
                            Ok::<_, std::convert::Infallible>(Response::new(crate::client::full("late")))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (format!("http://{addr}"), accepted, arrived, release)
    }

    fn pool(url: &str) -> Upstream {
        let mut env = Env::default();
        env.set("PINECONE_CLIENT_ID", "id")
            .set("PINECONE_CLIENT_SECRET", "secret")
            .set("PINECONE_PROXY_UPSTREAM_URL", url);
        Upstream::new(&crate::config::load(&Flags::default(), &env).unwrap().upstream).unwrap()
    }

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(crate::client::empty()).unwrap()
    }

    /// Sends a request and drops it once the upstream says it arrived, before any response.
    async fn abandon(pool: &Upstream, path: &'static str, arrived: &mut mpsc::UnboundedReceiver<()>) {
        let abandoned = tokio::spawn({
            let pool = pool.clone();
            async move { pool.send(get(path), TIMEOUT).await.map(|_| ()) }
        });
        arrived.recv().await.unwrap();
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled(), "dropped before its response");
    }

    #[tokio::test]
    async fn a_request_abandoned_before_its_response_does_not_cost_the_connection() {
        let (url, accepted, mut arrived, release) = upstream().await;
        let pool = pool(&url);
        let response = pool.send(get("/first"), TIMEOUT).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(pool.inner.idle.lock().len(), 1);

        // The client goes away while the upstream is still working on its request.
        abandon(&pool, "/hold", &mut arrived).await;
        assert!(pool.inner.idle.lock().is_empty(), "the connection is still busy with the abandoned request");
        release.notify_one();
        // The response is read to its end in the background; then the connection is back.
        tokio::time::timeout(Duration::from_secs(10), async {
            while pool.inner.idle.lock().is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the connection came back to the pool");

        let response = pool.send(get("/after"), TIMEOUT).await.unwrap();
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "late");
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all three requests");
    }

    #[tokio::test]
    async fn an_abandoned_response_too_large_to_drain_closes_its_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let rel = release.clone();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(move |_: Request<Incoming>| {
                let _ = arrived_tx.send(());
                let rel = rel.clone();
                async move {
                    rel.notified().await;
                    let big = Bytes::from(vec![b'x'; DRAIN_LIMIT + 1]);
                    Ok::<_, std::convert::Infallible>(Response::new(crate::client::full(big)))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
        let pool = pool(&format!("http://{addr}"));
        // Abandoned once the upstream has the request: its response is too large to read.
        abandon(&pool, "/big", &mut arrived).await;
        release.notify_one();
        // The drain gives up and drops the connection; the pool stays empty and the next
        // request opens a new one (which the one-connection upstream never accepts: so
        // only check the pool).
        tokio::time::timeout(Duration::from_secs(10), async {
            while tokio::runtime::Handle::current().metrics().num_alive_tasks() > 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the drain task ended");
        assert!(pool.inner.idle.lock().is_empty());
    }
}
