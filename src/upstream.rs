//! The forwarding client: keep-alive connections to the one upstream, over rustls (or plain
//! TCP for a loopback `http://` upstream), HTTP/2 or HTTP/1.1 as ALPN decides.
//!
//! It exists because hyper-util's general-purpose pooled client cost about a fifth of the
//! proxy's instructions per request (a keyed pool behind SipHash, a race between checkout
//! and a new connection on every request, several future layers). With one upstream, a
//! pool is a stack: an HTTP/1.1 connection is taken from it for a request and put back
//! when the response body has been read to its end; an HTTP/2 connection is shared.
//! HTTP/1.1 exchanges are [`crate::h1`]'s; HTTP/2 is hyper's. An idle connection the
//! upstream has closed is found (and dropped) when it is taken from the stack. A request
//! without a body that a reused connection lost unanswered is sent again on a new
//! connection, once, if that is safe (see [`crate::h1::ExchangeError`]). A request whose
//! client went away before its response came is finished in the background (its response
//! read and discarded, up to a limit) so that its connection goes back to the pool rather
//! than being closed. Each HTTP/1.1 connection carries one timer for `upstream.timeout`,
//! moved to each request's deadline in turn. What to send and what an error means to the
//! client is [`crate::proxy`]'s business.

use crate::client::{Body, BoxError, error_chain};
use crate::config::UpstreamConfig;
use crate::h1::{Conn, Exchange, Idle, Io, Outgoing};
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::BodyExt;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use rustls_pki_types::ServerName;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;

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
    idle: Idle,
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
                idle: Idle::default(),
                h2: Mutex::new(None),
            }),
        })
    }

    /// Sends `request` (its URI in origin form: path and query) and returns the response
    /// headers, or [`SendError::Timeout`] if they have not come within `timeout`; the body
    /// streams from the connection.
    pub async fn send(&self, request: Request<Body>, timeout: Duration) -> Result<Response<Body>, SendError> {
        let now = Instant::now();
        let deadline = now + timeout;
        let mut request = Some(request);
        // A request with no body that a reused connection failed to deliver, encoded.
        let mut again: Option<Outgoing> = None;
        loop {
            // Connecting is rare and its future (DNS, TLS, HTTP/2 handshakes) is large: boxed,
            // it does not inflate, and get copied with, every request's future.
            let pooled = if again.is_some() { None } else { self.checkout(now) };
            let reused = pooled.is_some();
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
                Sender::H2(sender) => {
                    let Some(request) = request.take() else {
                        return Err(SendError::Unreachable("the connection was closed before a response".into()));
                    };
                    return Box::pin(self.send_h2(sender, request, deadline)).await;
                }
            };
            // One timer per connection, moved to this request's deadline: extending a
            // registered deadline is a store, where a timer per request is an insertion into
            // and a removal from the runtime's timer wheel.
            conn.timer.as_mut().reset(deadline);
            conn.used = now;
            let out = match (again.take(), request.take()) {
                (Some(out), _) => out,
                (None, Some(request)) => {
                    let buf = std::mem::take(conn.wbuf_mut());
                    Outgoing::encode(request, &self.inner.host_header, buf)
                        .map_err(|e| SendError::Unreachable(e.message))?
                }
                (None, None) => unreachable!("a request or its encoding is always at hand"),
            };
            // If this future is dropped (the client went away) before the response has come,
            // the exchange finishes in the background and then puts the connection back:
            // otherwise every abandoned request would cost a new connection.
            let mut exchange = Abandonable { exchange: Some(Exchange::new(conn, out)), idle: self.inner.idle.clone() };
            let result = std::future::poll_fn(|cx| {
                let exchange = exchange.exchange.as_mut().expect("held until the head");
                if let Poll::Ready(head) = exchange.poll_head(cx) {
                    return Poll::Ready(Some(head));
                }
                exchange.conn_mut().timer.as_mut().poll(cx).map(|()| None)
            })
            .await;
            let exchange = exchange.exchange.take().expect("held until the head");
            match result {
                Some(Ok(head)) => return Ok(exchange.into_response(head, self.inner.idle.clone())),
                // The connection is dropped with the request it is still busy with.
                None => return Err(SendError::Timeout),
                // A reused connection the upstream had closed, or closed as the request went
                // out: sent again, once, on a new connection, if nothing can have been done
                // with it (see `ExchangeError::may_retry`). A new connection that fails is the
                // upstream's answer.
                Some(Err(e)) if e.may_retry && reused && exchange.is_replayable() => {
                    again = Some(exchange.into_outgoing());
                }
                Some(Err(e)) => return Err(SendError::Unreachable(e.message)),
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
            let mut conn = self.inner.idle.lock().pop()?;
            if now.saturating_duration_since(conn.used) <= IDLE_TIMEOUT && conn.is_usable() {
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
        let Some((connector, name)) = &inner.tls else { return Ok(Sender::H1(Conn::new(Io::Tcp(tcp), deadline))) };
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
        Ok(Sender::H1(Conn::new(Io::Tls(Box::new(tls)), deadline)))
    }
}

/// What abandoned exchanges may read of their responses before the connection is put back;
/// beyond it, or beyond `DRAIN_TIMEOUT`, the connection is closed instead (unless the rest
/// of the response has already been read into its buffer, when it can go back after all).
const DRAIN_LIMIT: usize = 1024 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// An exchange in progress. Dropped with its request written and no response yet (the
/// client went away), it reads the response in the background, up to `DRAIN_LIMIT` and
/// `DRAIN_TIMEOUT`, and the connection goes back to the pool; else the connection closes.
struct Abandonable {
    exchange: Option<Exchange>,
    idle: Idle,
}

impl Drop for Abandonable {
    fn drop(&mut self) {
        let Some(mut exchange) = self.exchange.take() else { return };
        if !exchange.is_written() {
            return;
        }
        // Outside a runtime (or in one shutting down) there is nothing to finish.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let idle = self.idle.clone();
        runtime.spawn(async move {
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
                let head = std::future::poll_fn(|cx| exchange.poll_head(cx)).await.ok()?;
                let mut body = exchange.into_response(head, idle).into_body();
                let mut read = 0;
                while let Some(frame) = body.frame().await {
                    read += frame.ok()?.data_ref().map_or(0, Bytes::len);
                    if read > DRAIN_LIMIT {
                        return None;
                    }
                }
                Some(())
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Env, Flags};
    use hyper::body::Incoming;
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
                    let big = Bytes::from(vec![b'x'; 4 * DRAIN_LIMIT]);
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
