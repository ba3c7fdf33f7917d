//! Listeners (TCP and Unix sockets), the accept loop, and graceful shutdown.
//!
//! Inbound connections speak HTTP/1.1 or h2c (HTTP/2 with prior knowledge), chosen per
//! connection. [`serve`] accepts until its `stop` future resolves, then lets the open
//! connections finish for up to `grace` and aborts what is left; every connection task is
//! owned by a `JoinSet`, so nothing outlives it. What a request means is left to the
//! services ([`crate::proxy`], [`crate::ops`]).

use crate::client::{Body, BoxError};
use crate::config::Listen;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long a client may take to send a request's headers (slow-loris protection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
        Listen::Tcp(addr) => TcpListener::bind(addr).await.map(Listener::Tcp),
        Listen::Unix(path) => bind_unix(path, mode).await,
    }
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
    let listener = UnixListener::bind(&tmp)?;
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

/// A one-way switch that many tasks can wait for.
#[derive(Debug, Clone)]
pub struct Trigger(watch::Sender<bool>);

impl Default for Trigger {
    fn default() -> Self {
        Self(watch::channel(false).0)
    }
}

impl Trigger {
    pub fn fire(&self) {
        self.0.send_replace(true);
    }

    pub fn fired(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once [`Trigger::fire`] has been called (at once if it already was).
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|fired| *fired).await;
        }
    }
}

/// Serves connections on `listener` with services made by `make_service(peer)` until
/// `stop` resolves, then drains for up to `grace`.
pub async fn serve<S, F>(
    name: &'static str,
    listener: Listener,
    make_service: F,
    stop: impl Future<Output = ()>,
    grace: Duration,
) where
    F: Fn(Option<SocketAddr>) -> S,
    S: tower::Service<http::Request<Incoming>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(SpareTimers::default()).header_read_timeout(HEADER_READ_TIMEOUT).writev(false);
    builder.http2().timer(TokioTimer::new());
    let drain = Arc::new(Drain::default());
    let mut tasks = JoinSet::new();
    tokio::pin!(stop);

    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = accept(&listener) => accepted,
        };
        let (io, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(make_service(peer));
        let connection = builder.serve_connection(io, service).into_owned();
        let connection = drain.watch(connection);
        tasks.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(listener = name, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let open = drain.open.load(Ordering::Relaxed);
    if open > 0 {
        tracing::info!(listener = name, connections = open, grace = %crate::config::format_duration(grace), "draining connections");
    }
    drain.start();
    let drained = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, drained).await.is_err() {
        tracing::warn!(
            listener = name,
            connections = tasks.len(),
            "shutdown grace period over; closing the remaining connections"
        );
    }
    tasks.shutdown().await;
}

/// Tells the open connections to finish their requests and close.
///
/// hyper-util's `GracefulShutdown` polls a `watch` channel's `changed()` future each time a
/// connection is polled, a few times per request; here a connection reads one flag, and
/// leaves its waker once, to be woken when the flag is set.
#[derive(Default)]
struct Drain {
    draining: AtomicBool,
    next_id: AtomicU64,
    open: AtomicUsize,
    wakers: Mutex<HashMap<u64, Waker>>,
}

impl Drain {
    fn start(&self) {
        self.draining.store(true, Ordering::Release);
        let wakers = std::mem::take(&mut *self.wakers.lock());
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    /// Serves `connection`, and once [`Drain::start`] is called, shuts it down gracefully.
    fn watch<C: GracefulConnection>(self: &Arc<Self>, connection: C) -> Watched<C> {
        self.open.fetch_add(1, Ordering::Relaxed);
        Watched {
            connection: Box::pin(connection),
            drain: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            told: false,
            registered: None,
        }
    }
}

/// A connection that a [`Drain`] can tell to finish.
struct Watched<C> {
    connection: Pin<Box<C>>,
    drain: Arc<Drain>,
    id: u64,
    told: bool,
    registered: Option<Waker>,
}

impl<C: GracefulConnection> Future for Watched<C> {
    type Output = Result<(), C::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if !this.told {
            if !this.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                this.drain.wakers.lock().insert(this.id, cx.waker().clone());
                this.registered = Some(cx.waker().clone());
            }
            // Read after registering: a drain started in between is not missed.
            if this.drain.draining.load(Ordering::Acquire) {
                this.connection.as_mut().graceful_shutdown();
                this.told = true;
            }
        }
        this.connection.as_mut().poll(cx)
    }
}

impl<C> Drop for Watched<C> {
    fn drop(&mut self) {
        self.drain.open.fetch_sub(1, Ordering::Relaxed);
        if self.registered.is_some() {
            self.drain.wakers.lock().remove(&self.id);
        }
    }
}

/// hyper's header-read timer, one per request, drawn from timers kept for reuse: moving a
/// kept timer's deadline later is a store, where a new one is an insertion into and a
/// removal from the runtime's timer wheel (and an allocation). All of them have the same
/// duration, so a reused timer's deadline only ever moves later.
///
/// A kept timer stays in the wheel until its deadline, holding the waker of the connection
/// that last used it: at most `SPARE_TIMERS` finished connections' task records (their
/// buffers are freed) stay allocated for up to `HEADER_READ_TIMEOUT` longer.
#[derive(Clone, Default)]
struct SpareTimers(Arc<Mutex<Vec<Pin<Box<tokio::time::Sleep>>>>>);

/// Enough for the connections of a busy sidecar; past it, a timer is dropped as before.
const SPARE_TIMERS: usize = 256;

impl hyper::rt::Timer for SpareTimers {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    /// tokio's clock, which tests can pause.
    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let spare = self.0.lock().pop();
        let sleep = match spare {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Box::pin(KeptSleep { sleep: Some(sleep), spare: self.0.clone() })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, deadline: std::time::Instant) {
        match sleep.as_mut().downcast_mut_pin::<KeptSleep>() {
            Some(kept) => kept.get_mut().sleep.as_mut().expect("held until dropped").as_mut().reset(deadline.into()),
            None => *sleep = self.sleep_until(deadline),
        }
    }
}

/// A timer that goes back to its [`SpareTimers`] when hyper drops it.
struct KeptSleep {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    spare: Arc<Mutex<Vec<Pin<Box<tokio::time::Sleep>>>>>,
}

impl Future for KeptSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep.as_mut().expect("held until dropped").as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for KeptSleep {}

impl Drop for KeptSleep {
    fn drop(&mut self) {
        let Some(sleep) = self.sleep.take() else { return };
        let mut spare = self.spare.lock();
        if spare.len() < SPARE_TIMERS {
            spare.push(sleep);
        }
    }
}

/// One accepted connection as a hyper IO, and the peer's address for TCP.
type Io = TokioIo<Box<dyn AsyncStream>>;

trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AsyncStream for T {}

async fn accept(listener: &Listener) -> io::Result<(Io, Option<SocketAddr>)> {
    match listener {
        Listener::Tcp(l) => {
            let (stream, peer) = l.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok((TokioIo::new(Box::new(stream) as Box<dyn AsyncStream>), Some(peer)))
        }
        Listener::Unix(l, _) => {
            let (stream, _) = l.accept().await?;
            Ok((TokioIo::new(Box::new(stream) as Box<dyn AsyncStream>), None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer;
    use std::convert::Infallible;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pending(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> bool {
        sleep.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending()
    }

    /// A kept timer goes back to work with the new deadline, not the one it had, whether
    /// it had fired or not.
    #[tokio::test(start_paused = true)]
    async fn a_reused_header_timer_keeps_its_new_deadline() {
        let timers = SpareTimers::default();
        let mut first = timers.sleep(Duration::from_secs(30));
        assert!(pending(&mut first));
        drop(first);
        assert_eq!(timers.0.lock().len(), 1, "kept");

        tokio::time::advance(Duration::from_secs(10)).await;
        let mut second = timers.sleep(Duration::from_secs(30));
        assert!(timers.0.lock().is_empty(), "reused");
        assert!(pending(&mut second));
        // Past the first deadline (30 s), short of the second (40 s).
        tokio::time::advance(Duration::from_secs(25)).await;
        assert!(pending(&mut second));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!pending(&mut second), "fires at its own deadline");

        // The fired timer, kept and reused, waits again.
        drop(second);
        let mut third = timers.sleep(Duration::from_secs(30));
        assert!(timers.0.lock().is_empty(), "reused");
        assert!(pending(&mut third));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(pending(&mut third));
        // hyper's reset moves it too.
        timers.reset(&mut third, (tokio::time::Instant::now() + Duration::from_secs(10)).into_std());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(pending(&mut third));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!pending(&mut third));
    }

    /// At shutdown, an idle kept-alive connection is closed at once, not left for the
    /// grace period to run out.
    #[tokio::test]
    async fn stopping_closes_idle_connections_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Trigger::default();
        let service = tower::service_fn(|_: http::Request<Incoming>| async {
            Ok::<_, Infallible>(http::Response::new(crate::client::full("ok")))
        });
        let server = tokio::spawn(serve(
            "test",
            Listener::Tcp(listener),
            move |_| service,
            stop.wait(),
            Duration::from_secs(60),
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
