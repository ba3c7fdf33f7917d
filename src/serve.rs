//! Listeners (TCP and Unix sockets), the accept loop, and graceful shutdown.
//!
//! Inbound connections speak HTTP/1.1 or h2c (HTTP/2 with prior knowledge), chosen per
//! connection. [`serve`] accepts until its `stop` future resolves, then lets the open
//! connections finish for up to `grace` and aborts what is left; every connection task is
//! owned by a `JoinSet`, so nothing outlives it. The limits of the request path (how many
//! connections, how long each may take) are applied here and in [`crate::limits`]. What a
//! request means is left to the services ([`crate::proxy`], [`crate::ops`]).

use crate::admission::Admission;
use crate::body::{Body, BoxError};
use crate::config::Limits;
use crate::limits::{ConnState, HeadBudget, Limit, LimitEvents, Tracked, Watched};
use crate::metrics::Metrics;
pub use crate::net::Listen;
pub use crate::shutdown::Trigger;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, UnixListener, UnixSocket, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, UnixSocketFile),
}

/// Removes the socket file when the listener goes away.
#[derive(Debug)]
pub struct UnixSocketFile(PathBuf);

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where a listener is bound, with the port that port 0 became.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for BoundAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoundAddr::Tcp(a) => write!(f, "{a}"),
            BoundAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl BoundAddr {
    /// The TCP address; panics for a Unix socket (for tests and the demo, which use TCP).
    pub fn tcp(&self) -> SocketAddr {
        match self {
            BoundAddr::Tcp(a) => *a,
            BoundAddr::Unix(p) => panic!("{} is a Unix socket", p.display()),
        }
    }
}

/// Binds a listener. A Unix socket gets `mode` permissions; a stale socket file left by a
/// crashed run is replaced, but one that a live process answers on is not.
pub async fn bind(listen: &Listen, mode: u32) -> io::Result<Listener> {
    match listen {
        Listen::Tcp(addr) => bind_tcp(*addr).map(Listener::Tcp),
        Listen::Unix(path) => bind_unix(path, mode).await,
    }
}

/// The kernel's queue of connections not yet accepted, per listener. tokio's `bind` asks
/// for 128 (std's value): a full listener with a crowd at its door overflows that, the
/// kernel drops the handshakes past it, and each client tries again only a second later:
/// a kubelet probe with its 1 s timeout fails (on a Unix socket, the connect fails at once). Linux caps it at `net.core.somaxconn` (4,096
/// since 5.4); each queued connection holds a few KiB of kernel memory, none of ours.
const LISTEN_BACKLOG: u32 = 1024;

/// A TCP listener as tokio's `bind` makes it (`SO_REUSEADDR`, non-blocking), with
/// [`LISTEN_BACKLOG`].
fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

async fn bind_unix(path: &Path, mode: u32) -> io::Result<Listener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        if UnixStream::connect(path).await.is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running process", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    // Bound under a temporary name, given its mode, then renamed into place: nobody can
    // connect while the socket still has the permissions the umask gave it.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let socket = UnixSocket::new_stream()?;
    socket.bind(&tmp)?;
    let listener = socket.listen(LISTEN_BACKLOG)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Listener::Unix(listener, UnixSocketFile(path.to_owned())))
}

impl Listener {
    pub fn local_addr(&self) -> io::Result<BoundAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().map(BoundAddr::Tcp),
            Listener::Unix(_, file) => Ok(BoundAddr::Unix(file.0.clone())),
        }
    }
}

/// How [`serve`] serves: the drain period at shutdown, the limits of the request path,
/// and where to report (the proxy listener's metrics; none for the others).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub grace: Duration,
    pub limits: Limits,
    pub metrics: Option<Arc<Metrics>>,
    /// At most this many connections from one IP address ([`crate::admission`]).
    pub per_peer: Option<usize>,
    /// When full, close the longest idle connection rather than pause accepting.
    pub evict_idle: bool,
    /// A `limits.head_memory` budget shared with other listeners (`listen` and the index
    /// listeners hold one together, so that more indexes do not mean more memory); `None`:
    /// the listener's own, of `limits.head_memory`.
    pub heads: Option<Arc<HeadBudget>>,
}

impl ServeOptions {
    /// The default limits, no metrics, no per-peer cap, no eviction.
    pub fn new(grace: Duration) -> Self {
        Self { grace, limits: Limits::default(), metrics: None, per_peer: None, evict_idle: false, heads: None }
    }
}

/// Serves connections on `listener` with services made by `make_service(peer)` until
/// `stop` resolves, then drains for up to `grace`: every connection is told to finish its
/// requests and close (hyper's graceful shutdown: an idle keep-alive connection closes at
/// once, h2c gets a GOAWAY), and what is still open when `grace` is over is aborted.
///
/// The limits: at most `max_connections` at once (accepting pauses, and the kernel's
/// backlog holds the rest); accept errors (out of file descriptors) pause accepting with
/// a backoff up to 1 s; each connection's time limits are [`crate::limits`]'s, and the
/// request head and h2c settings are hyper's.
pub async fn serve<S, F>(
    name: &'static str,
    listener: Listener,
    make_service: F,
    stop: impl Future<Output = ()>,
    options: ServeOptions,
) where
    F: Fn(Option<SocketAddr>) -> S,
    S: tower::Service<http::Request<Incoming>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let grace = options.grace;
    let mut open = Connections::new(name, options);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = open.accept(&listener) => accepted,
        };
        match accepted {
            Ok((slot, stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                open.spawn(slot, stream, peer, make_service(peer));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning;
                // the connections that are open go on being served meanwhile.
                open.events.hit(Limit::AcceptErrors, &e);
                tokio::select! {
                    () = &mut stop => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    drop(listener);
    open.drain(grace).await;
}

/// One listener's open connections, what they share, and the tasks that serve them.
struct Connections {
    name: &'static str,
    admission: Arc<Admission>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    events: Arc<LimitEvents>,
    gauge: Option<prometheus::IntGauge>,
    /// One permit a connection: `limits.max_connections`.
    slots: Arc<Semaphore>,
    heads: Arc<HeadBudget>,
    evict_idle: bool,
    draining: Trigger,
    tasks: JoinSet<()>,
}

impl Connections {
    fn new(name: &'static str, options: ServeOptions) -> Self {
        let ServeOptions { grace: _, limits, metrics, per_peer, evict_idle, heads } = options;
        Self {
            name,
            admission: Admission::new(per_peer),
            builder: Arc::new(builder(&limits)),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            heads: heads.unwrap_or_else(|| HeadBudget::new(limits.head_memory)),
            limits: Arc::new(limits),
            events: Arc::new(LimitEvents::new(name, metrics.clone())),
            gauge: metrics.as_ref().map(|m| m.open_connections.clone()),
            evict_idle,
            draining: Trigger::default(),
            tasks: JoinSet::new(),
        }
    }

    /// The next connection, with its slot: a free slot first (at the limit, connections
    /// wait in the kernel's backlog, or the longest idle is evicted to make room), then
    /// the accept. Cancel-safe: a slot or stream not returned is let go.
    async fn accept(&mut self, listener: &Listener) -> io::Result<(OwnedSemaphorePermit, Stream, Option<SocketAddr>)> {
        // The tasks that ended are reaped here, so the set stays as large as what is open.
        while self.tasks.try_join_next().is_some() {}
        let slot = match self.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                self.events.hit(Limit::MaxConnections, &self.limits.max_connections);
                if self.evict_idle {
                    // Its slot comes back as soon as its task ends.
                    self.admission.evict_longest_idle();
                }
                self.slots.clone().acquire_owned().await.expect("the semaphore is never closed")
            }
        };
        let (stream, peer) = accept(listener).await?;
        Ok((slot, stream, peer))
    }

    /// Serves one accepted connection in a task of its own, unless its peer is over its
    /// share ([`crate::admission`]).
    fn spawn<S>(&mut self, slot: OwnedSemaphorePermit, stream: Stream, peer: Option<SocketAddr>, service: S)
    where
        S: tower::Service<http::Request<Incoming>, Response = http::Response<Body>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let conn = ConnState::new(self.heads.clone());
        let close = Trigger::default();
        let Some(admitted) = self.admission.admit(peer.map(|p| p.ip()), conn.clone(), close.clone()) else {
            let peer = peer.map_or(String::new(), |p| p.ip().to_string());
            self.events.hit(Limit::PeerConnections, &format_args!("{peer}"));
            return;
        };
        let io = TokioIo::new(Watched::new(stream, conn.clone()));
        let service = TowerToHyperService::new(Tracked::new(service, conn.clone()));
        let connection = self.builder.serve_connection(io, service).into_owned();
        let (limits, events, gauge) = (self.limits.clone(), self.events.clone(), self.gauge.clone());
        let stopping = self.draining.wait();
        if let Some(g) = &gauge {
            g.inc();
        }
        self.tasks.spawn(async move {
            let (_slot, _admitted) = (slot, admitted);
            let stopping = async {
                tokio::select! {
                    () = stopping => Stop::Drain,
                    () = close.wait() => Stop::Now,
                }
            };
            drive(connection, |c| c.graceful_shutdown(), &conn, &limits, &events, stopping).await;
            if let Some(g) = gauge {
                g.dec();
            }
        });
    }

    /// Tells every connection to finish, waits up to `grace` for them, and aborts the rest.
    async fn drain(mut self, grace: Duration) {
        let open = self.tasks.len();
        if open > 0 {
            tracing::info!(listener = self.name, connections = open, grace = ?grace, "draining connections");
        }
        self.draining.fire();
        let drained = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(listener = self.name, "shutdown grace period over; closing the remaining connections");
        }
        self.tasks.shutdown().await;
    }
}

/// The first pause after a failed accept, and the longest (PRODUCT.md: up to 1 s).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// hyper's HTTP/2 keep-alive ping on an h2c connection: a peer that stops answering is
/// closed after the ping interval and its timeout (PRODUCT.md: pings every 30 s).
const H2_KEEP_ALIVE: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// h2c flow-control windows: what a client may send before the proxy reads it. HTTP/2's
/// own default (RFC 9113 §6.9.2), not hyper's 1 MiB, so that a thousand connections that
/// send and stall hold at most 64 MiB in the worst case, not a gigabyte.
const H2_WINDOW: u32 = 65_535;
/// What one h2c stream may have queued towards a client that does not read.
const H2_SEND_BUFFER: usize = 64 << 10;

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Our own per-connection timer judges heads and idle connections apart
        // (crate::limits); hyper's would close idle keep-alive connections after the
        // header-read timeout.
        .header_read_timeout(None)
        // The read buffer never grows past the head limit: a larger head gets hyper's 431.
        .max_buf_size(limits.max_head_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX))
        .initial_stream_window_size(H2_WINDOW)
        .initial_connection_window_size(H2_WINDOW)
        .max_send_buf_size(H2_SEND_BUFFER)
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    builder
}

/// Why a connection is told to stop from outside.
enum Stop {
    /// The listener drains: finish what is in flight.
    Drain,
    /// Evicted ([`crate::admission`]): closed at once.
    Now,
}

/// Serves one connection until it ends, a limit closes it, or the listener drains: a
/// connection that sent nothing of use, or an evicted one, is dropped (closed at once); an
/// idle one, or one at shutdown, is told to finish (`finish`: hyper's graceful shutdown, a
/// GOAWAY on h2c) and served until it ends.
async fn drive<C>(
    connection: C,
    finish: impl FnOnce(Pin<&mut C>),
    conn: &ConnState,
    limits: &Limits,
    events: &LimitEvents,
    stopping: impl Future<Output = Stop>,
) where
    C: Future<Output = Result<(), BoxError>>,
{
    tokio::pin!(connection);
    let ended = tokio::select! {
        result = connection.as_mut() => Some(result),
        limit = crate::limits::expired(conn, limits) => {
            match limit {
                Limit::BodyReadTimeout => {
                    events.hit(limit, &"connection closed: a response the client did not take");
                    return;
                }
                Limit::FirstByteTimeout | Limit::HeaderReadTimeout => {
                    events.hit(limit, &"connection closed");
                    return;
                }
                _ => events.hit(limit, &"connection closed"),
            }
            None
        }
        stop = stopping => match stop {
            Stop::Drain => None,
            Stop::Now => return,
        },
    };
    let result = match ended {
        Some(result) => result,
        None => {
            finish(connection.as_mut());
            match finished_within(connection.as_mut(), conn).await {
                Some(result) => result,
                None => return,
            }
        }
    };
    if let Err(e) = result {
        if conn.over_budget() {
            events.hit(Limit::HeadMemory, &format_args!("at {} bytes", limits.head_memory));
        } else if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_parse_too_large) {
            events.hit(Limit::MaxHeadBytes, &format_args!("over {} bytes", limits.max_head_bytes));
        }
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// How long an idle connection told to finish (hyper's graceful shutdown: a GOAWAY and a
/// ping on h2c) may take to close by itself: a peer that ignores both would otherwise
/// keep it until hyper's keep-alive timers give up.
const FINISH_WHEN_IDLE: Duration = Duration::from_secs(5);

/// Serves a connection that was told to finish until it ends: `None` if it is still open
/// [`FINISH_WHEN_IDLE`] after the last request in flight ended (it is then dropped: closed).
async fn finished_within<C>(mut connection: Pin<&mut C>, conn: &ConnState) -> Option<Result<(), BoxError>>
where
    C: Future<Output = Result<(), BoxError>>,
{
    loop {
        tokio::select! {
            result = connection.as_mut() => return Some(result),
            () = tokio::time::sleep(FINISH_WHEN_IDLE) => {
                if conn.idle_since().is_some_and(|since| since.elapsed() >= FINISH_WHEN_IDLE) {
                    return None;
                }
            }
        }
    }
}

/// One accepted connection, and the peer's address for TCP.
type Stream = Box<dyn AsyncStream>;

trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AsyncStream for T {}

async fn accept(listener: &Listener) -> io::Result<(Stream, Option<SocketAddr>)> {
    match listener {
        Listener::Tcp(l) => {
            let (stream, peer) = l.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok((Box::new(stream), Some(peer)))
        }
        Listener::Unix(l, _) => {
            let (stream, _) = l.accept().await?;
            Ok((Box::new(stream), None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The kernel queues up to [`LISTEN_BACKLOG`] connections that the proxy has not accepted
    /// (a full listener): 600 handshakes complete at once, where tokio's 128 would drop those
    /// past it for the clients to retry a second later.
    #[tokio::test]
    async fn a_listener_queues_hundreds_of_connections_it_has_not_accepted() {
        let Listener::Tcp(listener) = bind(&Listen::Tcp("127.0.0.1:0".parse().unwrap()), 0o600).await.unwrap() else {
            unreachable!("a TCP address")
        };
        let addr = listener.local_addr().unwrap();
        let mut connects = JoinSet::new();
        for _ in 0..600 {
            connects.spawn(tokio::net::TcpStream::connect(addr));
        }
        let all = tokio::time::timeout(Duration::from_millis(900), connects.join_all())
            .await
            .expect("every handshake completes within the backlog, none retried after a second");
        assert!(all.iter().all(Result::is_ok));
        drop(listener);
    }

    /// The same queue on a Unix socket, where a connect past a full queue fails at once.
    #[tokio::test]
    async fn a_unix_socket_listener_queues_hundreds_of_connections_it_has_not_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.sock");
        let listener = bind(&Listen::Unix(path.clone()), 0o600).await.unwrap();
        let mut connects = JoinSet::new();
        for _ in 0..600 {
            connects.spawn(UnixStream::connect(path.clone()));
        }
        let all = connects.join_all().await;
        let failed: Vec<_> = all.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(failed.is_empty(), "{} of 600 refused, the first: {:?}", failed.len(), failed.first());
        drop(listener);
    }

    /// At shutdown, an idle kept-alive connection is closed at once, not left for the
    /// grace period to run out.
    #[tokio::test]
    async fn stopping_closes_idle_connections_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Trigger::default();
        let service = tower::service_fn(|_: http::Request<Incoming>| async {
            Ok::<_, Infallible>(http::Response::new(crate::body::full("ok")))
        });
        let server = tokio::spawn(serve(
            "test",
            Listener::Tcp(listener),
            move |_| service,
            stop.wait(),
            ServeOptions::new(Duration::from_secs(60)),
        ));

        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        while !response.ends_with(b"ok") {
            let mut buf = [0; 1024];
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the response: {}", String::from_utf8_lossy(&response));
            response.extend_from_slice(&buf[..n]);
        }
        assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));

        stop.fire();
        tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("served out well before the 60 s grace")
            .unwrap();
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed without another response");
    }
}
