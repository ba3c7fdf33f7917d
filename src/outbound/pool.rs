//! One host's connections: a small pool of hyper client connections
//! (`hyper::client::conn::{http1, http2}`) over rustls (or plain TCP for a loopback
//! `http://` host), HTTP/2 or HTTP/1.1 as ALPN decides.
//!
//! hyper does the protocol; this file decides only which connection a request goes on:
//!
//! - **HTTP/2**: one shared connection. While it is being opened (and while the host's
//!   protocol is not yet known) other requests wait for it instead of opening their own, so
//!   a burst of first requests costs one TLS handshake. Its windows are set so that clients
//!   that stop reading cannot stall the others' answers ([`H2_STREAM_WINDOW`]).
//! - **HTTP/1.1**: a stack of idle connections; a connection goes back once its response
//!   body has been read to the end. A reaper closes any that stayed idle for 90 s, and those
//!   beyond 32 once they have been idle for 10 s (after a burst, not during load). A
//!   response framed by both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.3: a
//!   sign of smuggling) is read as chunked and forwarded without the length, and its
//!   connection is not used again.
//! - **At most `upstream.max_connections`** (busy and idle together): a request that finds
//!   none idle and no room waits for one to come back or to close, within its timeout; a
//!   flood of requests on the listener cannot open a connection each. Requests whose body
//!   streams from the client (too large to keep for a replay) may hold at most
//!   [`streaming_share`] of them at once: a connection carrying a slow upload is busy as
//!   long as the client takes, and uploads must not take the connections every other
//!   request needs.
//! - **Retries**: a request that hyper hands back unwritten (a reused connection closed
//!   under it) is sent once more on a new connection. A request that was written is never
//!   sent twice.
//!
//! Why a pool of our own rather than hyper-util's pooled `Client`: raced side by side in one
//! `bench/run` (BENCHMARKS.md, run 12), hyper-util's (0.1.21, over the same connector, cap
//! and loopback check) forwarded 0.74× nginx's requests a second at 16 connections, at 1.61×
//! its CPU per request, where this pool does 0.86× at 1.34×; and at 64 connections, closing
//! the idle connections beyond its cap at once (it has no grace), it opened 214,024 new
//! upstream connections in the measured windows and fell to 0.35×. It also holds concurrent
//! first connects back only when built `http2_only`, and cannot be told not to reuse a
//! connection without capturing every request's connection.

use super::bodies::{GiveBack, Holding, PooledBody};
use super::{SendError, Settings, error_chain, streaming_share};
use crate::body::{Body, BoxError};
use crate::net::check_resolved;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::BodyExt;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use parking_lot::Mutex;
use rustls_pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// hyper's HTTP/2 keep-alive ping: a dead upstream connection is found within this (and
/// its timeout), not by the next request.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// How much of one HTTP/2 answer the host may send before the proxy's client has taken it.
/// Every client's stream shares the host's one connection, and what a stream holds untaken
/// counts against the connection's window as well (h2 gives the connection's share back only
/// as the stream's data is read): at hyper's 2 MiB a stream and 5 MiB the connection, three
/// clients that stopped reading large answers stopped every other answer from that host
/// until `limits.body_read_timeout` closed them. 128 KiB a stream still carries 125 MiB/s
/// at a millisecond of round trip.
const H2_STREAM_WINDOW: u32 = 128 << 10;

/// The connection's window: 80 streams' worth, so that it takes more stalled answers than
/// one client connection may hold (`limits.max_concurrent_streams`, 64) to close it, and
/// the most of the host's answers the proxy holds for clients that do not read.
const H2_CONNECTION_WINDOW: u32 = 80 * H2_STREAM_WINDOW;

/// What ALPN chose on the last connection.
const UNKNOWN: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

/// One host's connection pool. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
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
    idle_timeout: Duration,
    max_idle: usize,
    excess_idle: Duration,
    protocol: AtomicU8,
    h2: Mutex<Option<http2::SendRequest<Body>>>,
    /// Held while a connection is opened to an upstream that speaks, or may speak, HTTP/2.
    opening: tokio::sync::Mutex<()>,
    idle: Mutex<IdleStack>,
    /// Wakes the reaper when the stack grows past the cap while it sleeps towards an
    /// idle timeout 90 s away.
    over_cap: Arc<tokio::sync::Notify>,
    /// One per open connection, busy or idle (`upstream.max_connections`).
    slots: Arc<Semaphore>,
    /// One per request whose body streams from the client, until its response is over.
    streaming: Arc<Semaphore>,
    /// Told when a connection goes back on the stack.
    released: tokio::sync::Notify,
}

#[derive(Default)]
struct IdleStack {
    conns: Vec<(http1::SendRequest<Body>, Instant)>,
    reaping: bool,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("authority", &self.authority).finish_non_exhaustive()
    }
}

enum Conn {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Pool {
    /// The pool of `authority` over `scheme`, with the stack's settings. `h2c`: over plain
    /// TCP, speak HTTP/2 with prior knowledge instead of HTTP/1.1 (a loopback index host's
    /// data plane, whose gRPC needs HTTP/2; over TLS, ALPN decides anyway).
    pub(super) fn new(
        scheme: &Scheme,
        authority: &Authority,
        settings: &Settings,
        h2c: bool,
    ) -> Result<Self, rustls::Error> {
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        let https = *scheme == Scheme::HTTPS;
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https {
            let name = ServerName::try_from(host.clone())
                .map_err(|_| rustls::Error::General(format!("{host} is not a valid TLS server name")))?;
            Some((settings.tls.clone(), name))
        } else {
            None
        };
        Ok(Self {
            inner: Arc::new(Inner {
                host_header: HeaderValue::from_str(authority.as_str()).expect("an authority is a valid header"),
                host,
                port,
                // Plain TCP is HTTP/1.1, unless the pool is for h2c.
                protocol: AtomicU8::new(match (https, h2c) {
                    (true, _) => UNKNOWN,
                    (false, true) => HTTP2,
                    (false, false) => HTTP1,
                }),
                tls,
                scheme: scheme.clone(),
                authority: authority.clone(),
                connect_timeout: settings.connect_timeout,
                idle_timeout: settings.idle_timeout,
                max_idle: settings.max_idle,
                excess_idle: settings.excess_idle,
                h2: Mutex::new(None),
                opening: tokio::sync::Mutex::new(()),
                idle: Mutex::new(IdleStack::default()),
                over_cap: Arc::new(tokio::sync::Notify::new()),
                slots: Arc::new(Semaphore::new(settings.max_connections)),
                streaming: Arc::new(Semaphore::new(streaming_share(settings.max_connections))),
                released: tokio::sync::Notify::new(),
            }),
        })
    }

    /// Sends `request` (its URI in origin form: path and query) and returns the response
    /// headers, or [`SendError::Timeout`] if they have not come within `timeout`; the body
    /// streams from the connection.
    /// A request whose body `streaming` from the client first waits for its share of the
    /// connections ([`streaming_share`]), within the same timeout, and holds it until its
    /// response body is over.
    pub(crate) async fn send(
        &self,
        request: Request<Body>,
        timeout: Duration,
        streaming: bool,
    ) -> Result<Response<Body>, SendError> {
        // The streaming case is boxed out of the common one's future.
        let result = if streaming {
            tokio::time::timeout(timeout, Box::pin(self.exchange_streaming(request))).await
        } else {
            tokio::time::timeout(timeout, self.exchange(request)).await
        };
        result.unwrap_or(Err(SendError::Timeout))
    }

    /// [`Pool::exchange`] within the streaming share, held until the response is over.
    async fn exchange_streaming(&self, request: Request<Body>) -> Result<Response<Body>, SendError> {
        let share = self.inner.streaming.clone().acquire_owned().await.expect("the semaphore is never closed");
        let response = self.exchange(request).await?;
        Ok(response.map(|body| Holding { body, _share: share }.boxed_unsync()))
    }

    async fn exchange(&self, mut request: Request<Body>) -> Result<Response<Body>, SendError> {
        let mut retried = false;
        loop {
            let pooled = if retried { None } else { self.checkout() };
            let reused = pooled.is_some();
            let conn = match pooled {
                Some(conn) => conn,
                None => Box::pin(self.connect(retried)).await?,
            };
            let sent = match conn {
                Conn::H1(sender) => self.send_h1(sender, request).await,
                Conn::H2(sender) => Box::pin(self.send_h2(sender, request)).await,
            };
            match sent {
                Sent::Response(response) => return Ok(response),
                // Never written: the reused connection was closed under it.
                Sent::Unsent(unsent, _) if reused && !retried => {
                    request = unsent;
                    retried = true;
                }
                Sent::Unsent(_, e) | Sent::Failed(e) => return Err(SendError::Unreachable(e)),
            }
        }
    }

    async fn send_h1(&self, mut sender: http1::SendRequest<Body>, mut request: Request<Body>) -> Sent {
        request.headers_mut().insert(header::HOST, self.inner.host_header.clone());
        if request.uri().scheme().is_some() {
            // Handed back by an HTTP/2 attempt: origin form again.
            let pq = request.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(pq);
        }
        // A pooled connection is ready once hyper has finished with its last response.
        if let Err(e) = sender.ready().await {
            return Sent::Unsent(request, error_chain(&e));
        }
        let mut response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(e) => return e.into(),
        };
        // Framed twice: hyper decodes it as chunked, as RFC 9112 §6.3 says; the length is
        // not forwarded (it would contradict the body) and the connection is not reused.
        let headers = response.headers_mut();
        let twice_framed =
            headers.contains_key(header::CONTENT_LENGTH) && headers.contains_key(header::TRANSFER_ENCODING);
        if twice_framed {
            headers.remove(header::CONTENT_LENGTH);
        }
        let pool = (!twice_framed).then(|| Arc::downgrade(&self.inner) as Weak<dyn GiveBack>);
        Sent::Response(response.map(|body| PooledBody { body, conn: Some(sender), pool }.boxed_unsync()))
    }

    async fn send_h2(&self, mut sender: http2::SendRequest<Body>, mut request: Request<Body>) -> Sent {
        let pq = request.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let uri =
            Uri::builder().scheme(self.inner.scheme.clone()).authority(self.inner.authority.clone()).path_and_query(pq);
        *request.uri_mut() = uri.build().expect("scheme, authority and path are valid");
        // `:authority` names the upstream; the client's `Host` is not forwarded.
        request.headers_mut().remove(header::HOST);
        if let Err(e) = sender.ready().await {
            return Sent::Unsent(request, error_chain(&e));
        }
        match sender.try_send_request(request).await {
            Ok(response) => Sent::Response(response.map(|body| body.map_err(BoxError::from).boxed_unsync())),
            Err(e) => e.into(),
        }
    }

    /// The shared HTTP/2 connection, or an idle HTTP/1.1 one; `None` if a new one is needed.
    fn checkout(&self) -> Option<Conn> {
        self.shared_h2().map(Conn::H2).or_else(|| self.idle_h1().map(Conn::H1))
    }

    fn shared_h2(&self) -> Option<http2::SendRequest<Body>> {
        let mut h2 = self.inner.h2.lock();
        match h2.as_ref() {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }

    fn idle_h1(&self) -> Option<http1::SendRequest<Body>> {
        let now = Instant::now();
        let mut idle = self.inner.idle.lock();
        while let Some((sender, since)) = idle.conns.pop() {
            if !sender.is_closed() && now.saturating_duration_since(since) < self.inner.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    /// Opens a connection, or finds one that another request opened meanwhile. Towards an
    /// upstream that speaks HTTP/2, or whose protocol is not known yet, one request opens
    /// at a time and who waited takes the shared HTTP/2 connection (a request sent again
    /// after its connection died too: it is a new one by then). HTTP/1.1 connections open
    /// in parallel; `fresh` (a request sent again) skips idle ones, which may be as dead as
    /// the one that failed.
    async fn connect(&self, fresh: bool) -> Result<Conn, SendError> {
        let inner = &self.inner;
        if inner.protocol.load(Ordering::Acquire) != HTTP1 {
            let _opening = inner.opening.lock().await;
            if let Some(h2) = self.shared_h2() {
                return Ok(Conn::H2(h2));
            }
            if inner.protocol.load(Ordering::Acquire) != HTTP1 {
                return self.open().await;
            }
        }
        match (!fresh).then(|| self.idle_h1()).flatten() {
            Some(h1) => Ok(Conn::H1(h1)),
            None => self.open().await,
        }
    }

    async fn open(&self) -> Result<Conn, SendError> {
        let inner = &self.inner;
        let slot = match inner.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => match Box::pin(self.wait_for_slot()).await {
                Ok(slot) => slot,
                Err(conn) => return Ok(conn),
            },
        };
        let tcp = self.tcp().await.map_err(SendError::Unreachable)?;
        let Some((connector, name)) = &inner.tls else {
            if inner.protocol.load(Ordering::Acquire) == HTTP2 {
                tracing::debug!(host = %inner.authority, protocol = "h2c", "outbound connection opened");
                return self.handshake_h2(tcp, slot).await;
            }
            tracing::debug!(host = %inner.authority, protocol = "http/1.1", "outbound connection opened");
            return handshake_h1(tcp, slot).await;
        };
        let tls = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|e| SendError::Unreachable(format!("TLS handshake failed: {}", error_chain(&e))))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let protocol = if h2 { "h2" } else { "http/1.1" };
        tracing::debug!(host = %inner.authority, protocol, tls = true, "outbound connection opened");
        if !h2 {
            inner.protocol.store(HTTP1, Ordering::Release);
            return handshake_h1(tls, slot).await;
        }
        inner.protocol.store(HTTP2, Ordering::Release);
        self.handshake_h2(tls, slot).await
    }

    /// An HTTP/2 connection over `io` (TLS, or plain TCP for h2c), shared from then on.
    async fn handshake_h2<T>(&self, io: T, slot: OwnedSemaphorePermit) -> Result<Conn, SendError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEP_ALIVE)
            .initial_stream_window_size(H2_STREAM_WINDOW)
            .initial_connection_window_size(H2_CONNECTION_WINDOW)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Unreachable(error_chain(&e)))?;
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
            }
        });
        *self.inner.h2.lock() = Some(sender.clone());
        Ok(Conn::H2(sender))
    }

    /// At `upstream.max_connections`: waits for a connection to close (its slot), or for
    /// one to come back idle (taken at once). The request's `upstream.timeout` bounds it.
    async fn wait_for_slot(&self) -> Result<OwnedSemaphorePermit, Conn> {
        let inner = &self.inner;
        loop {
            let released = inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if let Some(h1) = self.idle_h1() {
                return Err(Conn::H1(h1));
            }
            tokio::select! {
                slot = inner.slots.clone().acquire_owned() => return Ok(slot.expect("the semaphore is never closed")),
                () = released => {}
            }
        }
    }

    async fn tcp(&self) -> Result<TcpStream, String> {
        let inner = &self.inner;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((inner.host.as_str(), inner.port))
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", inner.host))?
            .collect();
        check_resolved(&inner.host, &addrs)?;
        let mut last = format!("{} resolved to no address", inner.host);
        for addr in addrs {
            match tokio::time::timeout(inner.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Ok(Err(e)) => last = format!("tcp connect error: {e} ({addr})"),
                Err(_) => last = format!("tcp connect to {addr} timed out after {:?}", inner.connect_timeout),
            }
        }
        Err(last)
    }
}

/// How one attempt to send a request ended.
enum Sent {
    Response(Response<Body>),
    /// Never written (hyper handed it back, or the connection was closed before): it may go
    /// again on another connection.
    Unsent(Request<Body>, String),
    Failed(String),
}

impl From<TrySendError<Request<Body>>> for Sent {
    fn from(mut e: TrySendError<Request<Body>>) -> Self {
        match e.take_message() {
            Some(request) => Sent::Unsent(request, error_chain(&e.into_error())),
            None => Sent::Failed(error_chain(&e.into_error())),
        }
    }
}

/// The connection task holds `slot` (of `upstream.max_connections`) until it ends.
async fn handshake_h1<T>(io: T, slot: OwnedSemaphorePermit) -> Result<Conn, SendError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) =
        http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(|e| SendError::Unreachable(error_chain(&e)))?;
    tokio::spawn(async move {
        let _slot = slot;
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(Conn::H1(sender))
}

impl GiveBack for Inner {
    fn give_back(self: Arc<Self>, sender: http1::SendRequest<Body>) {
        self.release(sender);
    }
}

impl Inner {
    /// Puts an HTTP/1.1 connection whose exchange is over back on the stack, unless the
    /// stack is full (it is then closed); starts the reaper if none is running.
    fn release(self: &Arc<Self>, sender: http1::SendRequest<Body>) {
        // Outside a runtime (a body dropped as the process ends) nothing is kept.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let mut idle = self.idle.lock();
        if sender.is_closed() {
            return;
        }
        idle.conns.push((sender, Instant::now()));
        // A request waiting at the connection cap takes it.
        self.released.notify_one();
        if !idle.reaping {
            idle.reaping = true;
            runtime.spawn(reap(Arc::downgrade(self), self.over_cap.clone()));
        } else if idle.conns.len() == self.max_idle + 1 {
            // A permit is kept if the reaper is not waiting at this instant.
            self.over_cap.notify_one();
        }
    }
}

/// Closes idle connections once they have been idle for the idle timeout, and those beyond
/// the cap once they have been idle for the excess grace ([`super::EXCESS_IDLE`]) (the least recently used first: the
/// stack's bottom). Ends when the stack is empty (the next connection put back starts it
/// again), or when the pool is gone. `over_cap` wakes it when the stack grows past the cap.
async fn reap(pool: Weak<Inner>, over_cap: Arc<tokio::sync::Notify>) {
    loop {
        let due = {
            let Some(inner) = pool.upgrade() else { return };
            let mut idle = inner.idle.lock();
            let now = Instant::now();
            // Dropping a sender closes its connection.
            idle.conns.retain(|(sender, since)| {
                !sender.is_closed() && now.saturating_duration_since(*since) < inner.idle_timeout
            });
            let excess = idle.conns.len().saturating_sub(inner.max_idle);
            let stale = idle.conns[..excess]
                .iter()
                .take_while(|(_, since)| now.saturating_duration_since(*since) >= inner.excess_idle)
                .count();
            idle.conns.drain(..stale);
            let Some(oldest) = idle.conns.iter().map(|(_, since)| *since).min() else {
                idle.reaping = false;
                return;
            };
            match idle.conns.len() > inner.max_idle {
                true => idle.conns[0].1 + inner.excess_idle,
                false => oldest + inner.idle_timeout,
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(due) => {}
            () = over_cap.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Env, Flags};
    use hyper::body::Incoming;
    use std::sync::atomic::AtomicU64;
    use tokio::sync::{Barrier, watch};

    /// An HTTP/1.1 upstream that holds requests for `/together` until `together` of them
    /// have arrived; how many connections it accepted, and how many are open.
    async fn upstream(together: usize) -> (String, Arc<AtomicU64>, watch::Receiver<i64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let (open_tx, open) = watch::channel(0i64);
        let (open_tx, count, barrier) = (Arc::new(open_tx), accepted.clone(), Arc::new(Barrier::new(together)));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                open_tx.send_modify(|n| *n += 1);
                let (open_tx, barrier) = (open_tx.clone(), barrier.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let barrier = barrier.clone();
                        async move {
                            if request.uri().path() == "/together" {
                                barrier.wait().await;
                            }
                            Ok::<_, std::convert::Infallible>(Response::new(crate::body::full("ok")))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    open_tx.send_modify(|n| *n -= 1);
                });
            }
        });
        (format!("http://{addr}"), accepted, open)
    }

    fn settings(url: &str) -> Settings {
        let mut env = Env::default();
        env.set("PINECONE_CLIENT_ID", "id")
            .set("PINECONE_CLIENT_SECRET", "secret")
            .set("PINECONE_PROXY_UPSTREAM_URL", url);
        Settings::new(&crate::config::load(&Flags::default(), &env).unwrap().upstream).unwrap()
    }

    fn pool(url: &str, settings: &Settings) -> Pool {
        let uri: Uri = url.parse().unwrap();
        Pool::new(uri.scheme().unwrap(), uri.authority().unwrap(), settings, false).unwrap()
    }

    async fn get(pool: &Pool, path: &str) {
        let request = Request::get(path).body(crate::body::empty()).unwrap();
        let response = pool.send(request, Duration::from_secs(10), false).await.unwrap();
        assert_eq!(response.into_body().collect().await.unwrap().to_bytes(), "ok");
    }

    #[test]
    fn streaming_bodies_never_take_the_last_connections() {
        for (max, share) in [(1, 1), (2, 1), (4, 3), (8, 6), (128, 96), (10_000, 7_500)] {
            assert_eq!(streaming_share(max), share, "{max}");
        }
    }

    #[test]
    fn a_loopback_name_must_resolve_to_loopback_addresses_only() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let loopback = [addr("127.0.0.1:80"), addr("[::1]:80")];
        assert_eq!(check_resolved("localhost", &loopback), Ok(()));
        let e = check_resolved("LOCALHOST", &[addr("127.0.0.1:80"), addr("10.0.0.7:80")]).unwrap_err();
        assert!(e.contains("10.0.0.7") && e.contains("not a loopback address"), "{e}");
        // Names other than localhost are not trusted as loopback anywhere, so not checked.
        assert_eq!(check_resolved("api.pinecone.io", &[addr("10.0.0.7:443")]), Ok(()));
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_by_a_timer_after_the_idle_timeout() {
        let (url, _, mut open) = upstream(1).await;
        let idle_timeout = Duration::from_millis(300);
        let pool = pool(&url, &Settings { idle_timeout, ..settings(&url) });
        get(&pool, "/").await;
        let idle_since = Instant::now();
        assert_eq!(*open.borrow(), 1, "kept alive");
        // Nobody takes it: the reaper closes it, not a later checkout.
        tokio::time::timeout(Duration::from_secs(10), open.wait_for(|n| *n == 0)).await.expect("closed").unwrap();
        assert!(idle_since.elapsed() >= idle_timeout, "not before the idle timeout");
        assert!(!pool.inner.idle.lock().reaping, "the reaper stops when nothing is idle");
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_are_closed_after_their_grace() {
        let (url, accepted, mut open) = upstream(8).await;
        let grace = Duration::from_millis(300);
        let pool = pool(&url, &Settings { max_idle: 4, excess_idle: grace, ..settings(&url) });
        // One connection first: the reaper then sleeps towards the 90 s idle timeout, and
        // must be woken when the burst takes the stack past the cap.
        get(&pool, "/first").await;
        let burst: Vec<_> = (0..8)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { get(&pool, "/together").await })
            })
            .collect();
        for request in burst {
            request.await.unwrap();
        }
        let idle_since = Instant::now();
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            8,
            "8 requests at once need 8 connections, one of them the idle one"
        );
        // The pool keeps 4 of them and closes the rest once they have been idle for the grace.
        tokio::time::timeout(Duration::from_secs(10), open.wait_for(|n| *n == 4))
            .await
            .expect("the upstream sees 4 connections closed")
            .unwrap();
        assert!(idle_since.elapsed() >= grace, "not before the grace");
        // The kept ones serve what comes next.
        for _ in 0..5 {
            get(&pool, "/again").await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 8, "no new connection while idle ones are kept");
    }
}
