//! What one inbound connection may take, in time: how long it may send nothing, take over a
//! request head, or sit idle (`limits.first_byte_timeout`, `header_read_timeout`,
//! `idle_timeout`); and the rate-limited log lines and counters when a limit bites.
//!
//! hyper has a header-read timeout of its own, but on HTTP/1.1 it also runs while a
//! kept-alive connection waits for its next request, so it cannot be 10 s for a head and
//! 90 s for an idle connection; and hyper-util's version detection (HTTP/1.1 or h2c) has no
//! timeout at all. So each connection carries a [`ConnState`]: its IO notes the bytes that
//! arrive ([`Watched`]), its service notes when a request starts and when its response is
//! over ([`Tracked`]), and one timer per connection ([`expired`]) compares them with the
//! limits. No byte is parsed here except the 24 of the h2c preface, to know which protocol
//! a connection speaks (and which of the limits applies). What a limit then does (close, or
//! hyper's graceful shutdown, a GOAWAY on h2c) is [`crate::serve`]'s business.

use crate::config::Limits;
use crate::metrics::Metrics;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The client connection preface of HTTP/2 (RFC 9113 §3.4): how h2c is told apart.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// At most one log line per limit in this long, with the count since the last one.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// A limit of the request path, named as its configuration key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    MaxConnections,
    FirstByteTimeout,
    HeaderReadTimeout,
    IdleTimeout,
    BodyReadTimeout,
    MaxHeadBytes,
    HeadMemory,
    /// Not a key: accepting failed (out of file descriptors and the like).
    AcceptErrors,
    /// Not a key: the ops listener's connections from one peer.
    PeerConnections,
}

impl Limit {
    pub(crate) const ALL: [Limit; 9] = [
        Limit::MaxConnections,
        Limit::FirstByteTimeout,
        Limit::HeaderReadTimeout,
        Limit::IdleTimeout,
        Limit::BodyReadTimeout,
        Limit::MaxHeadBytes,
        Limit::HeadMemory,
        Limit::AcceptErrors,
        Limit::PeerConnections,
    ];

    /// The `limit` label of `limit_hits_total`: the key without its section.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Limit::MaxConnections => "max_connections",
            Limit::FirstByteTimeout => "first_byte_timeout",
            Limit::HeaderReadTimeout => "header_read_timeout",
            Limit::IdleTimeout => "idle_timeout",
            Limit::BodyReadTimeout => "body_read_timeout",
            Limit::MaxHeadBytes => "max_head_bytes",
            Limit::HeadMemory => "head_memory",
            Limit::AcceptErrors => "accept_errors",
            Limit::PeerConnections => "connections_per_peer",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Limit::MaxConnections => {
                "the listener's connection limit reached: accepting paused until a connection closes (ops: the longest idle one is closed)"
            }
            Limit::FirstByteTimeout => {
                "closed connections that sent nothing, or too little to tell HTTP/1.1 from h2c, within limits.first_byte_timeout"
            }
            Limit::HeaderReadTimeout => {
                "closed connections whose request head was not complete within limits.header_read_timeout"
            }
            Limit::IdleTimeout => "closed connections idle for limits.idle_timeout",
            Limit::BodyReadTimeout => "failed requests whose body stalled for limits.body_read_timeout",
            Limit::MaxHeadBytes => "refused request heads larger than limits.max_head_bytes (431)",
            Limit::HeadMemory => {
                "closed connections whose large request heads would have taken the buffers of all connections past limits.head_memory"
            }
            Limit::AcceptErrors => "accepting connections failed; pausing accepts with backoff",
            Limit::PeerConnections => "closed new connections from a peer that already holds its share of them",
        }
    }
}

/// Creates every limit's `limit_hits_total` series at zero.
pub(crate) fn show_at_zero(metrics: &Metrics) {
    for limit in Limit::ALL {
        metrics.limit_at_zero(limit.label());
    }
}

/// Where the listener reports a limit that bit: the `limit_hits_total` counter, and a
/// warning at most once per [`LOG_EVERY`] per limit, with how many since the last one.
/// Idle connections closing is the normal end of keep-alive: counted, logged at debug.
#[derive(Debug)]
pub(crate) struct LimitEvents {
    listener: &'static str,
    metrics: Option<Arc<Metrics>>,
    lines: Mutex<[Throttle; Limit::ALL.len()]>,
}

impl LimitEvents {
    pub(crate) fn new(listener: &'static str, metrics: Option<Arc<Metrics>>) -> Self {
        Self { listener, metrics, lines: Mutex::new(Default::default()) }
    }

    /// Counts one hit; `detail` (an error, a value) goes on the log line if one is due.
    pub(crate) fn hit(&self, limit: Limit, detail: &dyn std::fmt::Display) {
        if let Some(m) = &self.metrics {
            m.limit_hit(limit.label());
        }
        let Some(count) = self.lines.lock()[limit as usize].hit(Instant::now()) else { return };
        if limit == Limit::IdleTimeout {
            tracing::debug!(listener = self.listener, limit = limit.label(), count, detail = %detail, "{}", limit.what());
        } else {
            tracing::warn!(listener = self.listener, limit = limit.label(), count, detail = %detail, "{}", limit.what());
        }
    }
}

/// One limit's log lines: at most one per [`LOG_EVERY`].
#[derive(Debug, Default)]
struct Throttle {
    logged: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// Counts a hit; the hits since the last line if a line is due now.
    fn hit(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self.logged.is_some_and(|at| now.saturating_duration_since(at) < LOG_EVERY) {
            return None;
        }
        self.logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Which protocol a connection speaks, as far as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Fewer bytes than tell them apart; how many matched the h2c preface so far.
    Unknown(usize),
    Http1,
    H2c,
}

/// One connection's timeline, as its IO and its service see it.
#[derive(Debug)]
pub(crate) struct ConnState {
    inner: Mutex<Timeline>,
    heads: Arc<HeadBudget>,
}

impl Drop for ConnState {
    fn drop(&mut self) {
        self.heads.give(self.inner.get_mut().charged);
    }
}

/// hyper's first read buffer of a connection (`INIT_BUFFER_SIZE`): every connection has
/// one, and a head that fits costs nothing more.
const HYPER_READ_BUFFER: usize = 8 << 10;

/// What an h2c connection may make the process hold of what it sends, charged to
/// `limits.head_memory` for the connection's life: h2 reads DATA frames as they come, up
/// to the connection's receive window (65,535 bytes, RFC 9113's floor), whether or not the
/// request reading them is ready (one waiting for a token, or for a slow upstream), and
/// keeps each with its framing (measured: 1,000 h2c connections that each filled the
/// window while their requests waited for a token held 103 MiB in 16 KiB frames, 156 MiB
/// in 300-byte frames; h2 itself closes connections whose frames are smaller still).
const H2C_RECEIVE: usize = 160 << 10;

/// What all connections' read buffers may hold beyond hyper's first 8 KiB
/// (`limits.head_memory`): the growth for large request heads (with `max_head_bytes` of
/// 64 KiB, a thousand connections could otherwise hold 64 MiB of heads), and each h2c
/// connection's [`H2C_RECEIVE`].
#[derive(Debug)]
pub struct HeadBudget {
    limit: usize,
    used: AtomicUsize,
}

impl HeadBudget {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, used: AtomicUsize::new(0) })
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| used.checked_add(n).filter(|u| *u <= self.limit))
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone)]
struct Timeline {
    accepted: Instant,
    protocol: Protocol,
    /// Requests whose response is not over yet.
    in_flight: usize,
    /// HTTP/1.1: the bytes of a request head have started to arrive.
    in_head: bool,
    /// When the connection last became idle, or (`in_head`) when the head started.
    since: Instant,
    /// Bytes of the request head being read (HTTP/1.1, and before the protocol is known).
    head_bytes: usize,
    /// What this connection holds of the head budget: the most its read buffer had to grow
    /// for a head beyond hyper's first 8 KiB. hyper keeps a grown buffer for the
    /// connection's life, so it is given back only when the connection goes.
    charged: usize,
    /// The last read was refused for the head budget.
    over_budget: bool,
    /// Responses whose last frame went to the connection and that it has not asked for
    /// another since (the client is not reading, or its flow-control window is shut): by
    /// response id, since when.
    awaiting_client: Vec<(u64, Instant)>,
    next_response: u64,
}

impl Timeline {
    fn new(accepted: Instant) -> Self {
        Self {
            accepted,
            protocol: Protocol::Unknown(0),
            in_flight: 0,
            in_head: false,
            since: accepted,
            head_bytes: 0,
            charged: 0,
            over_budget: false,
            awaiting_client: Vec::new(),
            next_response: 0,
        }
    }

    /// When this connection is due to be closed, and by which limit. While a request is in
    /// flight, only if a response has waited `body_read_timeout` for the client to take
    /// its next part (its request body and the upstream have timeouts of their own).
    fn deadline(&self, limits: &Limits) -> Option<(Instant, Limit)> {
        match self.protocol {
            Protocol::Unknown(_) => Some((self.accepted + limits.first_byte_timeout, Limit::FirstByteTimeout)),
            _ if self.in_flight > 0 => {
                let oldest = self.awaiting_client.iter().map(|(_, since)| *since).min()?;
                Some((oldest + limits.body_read_timeout, Limit::BodyReadTimeout))
            }
            Protocol::Http1 if self.in_head => {
                Some((self.since + limits.header_read_timeout, Limit::HeaderReadTimeout))
            }
            _ => Some((self.since + limits.idle_timeout, Limit::IdleTimeout)),
        }
    }

    /// Notes bytes that arrived; `false` if they would take the head budget past its limit.
    fn read(&mut self, bytes: &[u8], now: Instant, heads: &HeadBudget) -> bool {
        let was_h2c = self.protocol == Protocol::H2c;
        self.note(bytes, now);
        if self.protocol == Protocol::H2c && !was_h2c {
            // Known to be h2c now: its receive window is charged once, for its life.
            if !heads.take(H2C_RECEIVE) {
                self.over_budget = true;
                return false;
            }
            self.charged += H2C_RECEIVE;
        }
        if !(self.in_head || matches!(self.protocol, Protocol::Unknown(_))) {
            return true;
        }
        self.head_bytes += bytes.len();
        let wanted = self.head_bytes.saturating_sub(HYPER_READ_BUFFER);
        if wanted <= self.charged {
            return true;
        }
        if !heads.take(wanted - self.charged) {
            self.over_budget = true;
            return false;
        }
        self.charged = wanted;
        true
    }

    fn note(&mut self, bytes: &[u8], now: Instant) {
        match self.protocol {
            Protocol::Unknown(matched) => {
                let n = bytes.len().min(H2_PREFACE.len() - matched);
                if bytes[..n] != H2_PREFACE[matched..matched + n] {
                    self.protocol = Protocol::Http1;
                    self.in_head = true;
                    self.since = now;
                } else if matched + n == H2_PREFACE.len() {
                    self.protocol = Protocol::H2c;
                    self.since = now;
                } else {
                    self.protocol = Protocol::Unknown(matched + n);
                }
            }
            Protocol::Http1 if self.in_flight == 0 && !self.in_head => {
                self.in_head = true;
                self.since = now;
            }
            _ => {}
        }
    }
}

impl ConnState {
    pub(crate) fn new(heads: Arc<HeadBudget>) -> Arc<Self> {
        Arc::new(Self { inner: Mutex::new(Timeline::new(Instant::now())), heads })
    }

    /// Notes a request in flight; the id of its response, for [`ConnState::awaiting_client`].
    pub(crate) fn request_started(&self) -> u64 {
        let mut t = self.inner.lock();
        t.in_flight += 1;
        t.in_head = false;
        t.head_bytes = 0;
        t.next_response += 1;
        t.next_response
    }

    /// Since when the connection has had no request in flight (sending nothing, a head in
    /// progress, or kept alive between requests); `None` while a request is in flight.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        let t = self.inner.lock();
        (t.in_flight == 0).then_some(t.since)
    }

    /// Notes that response `id` handed a frame to the connection at `now` (`Some`), or was
    /// asked for its next (`None`).
    fn awaiting_client(&self, id: u64, now: Option<Instant>) {
        let mut t = self.inner.lock();
        t.awaiting_client.retain(|(r, _)| *r != id);
        if let Some(now) = now {
            t.awaiting_client.push((id, now));
        }
    }

    /// Whether the connection was closed for the head budget.
    pub(crate) fn over_budget(&self) -> bool {
        self.inner.lock().over_budget
    }

    fn request_over(&self) {
        let mut t = self.inner.lock();
        t.in_flight -= 1;
        if t.in_flight == 0 {
            t.since = Instant::now();
        }
    }
}

/// Resolves when a limit closes the connection, with the limit. One timer per connection:
/// it sleeps to the deadline, or to the shortest of the timeouts if that is sooner (a
/// deadline can only come sooner than that through a change that starts one of them).
pub(crate) async fn expired(conn: &ConnState, limits: &Limits) -> Limit {
    let recheck = limits
        .first_byte_timeout
        .min(limits.header_read_timeout)
        .min(limits.idle_timeout)
        .min(limits.body_read_timeout);
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        let due = conn.inner.lock().deadline(limits);
        let wake = match due {
            Some((at, limit)) if at <= now => return limit,
            Some((at, _)) => at.min(now + recheck),
            None => now + recheck,
        };
        sleep.as_mut().reset(wake);
        sleep.as_mut().await;
    }
}

/// A connection's IO, noting the bytes that arrive.
#[derive(Debug)]
pub(crate) struct Watched<S> {
    io: S,
    conn: Arc<ConnState>,
}

impl<S> Watched<S> {
    pub(crate) fn new(io: S, conn: Arc<ConnState>) -> Self {
        Self { io, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.io).poll_read(cx, buf))?;
        let arrived = &buf.filled()[before..];
        if !arrived.is_empty() && !self.conn.inner.lock().read(arrived, Instant::now(), &self.conn.heads) {
            return Poll::Ready(Err(io::Error::other("request heads in progress are at limits.head_memory")));
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A connection's service, noting when each request starts and when its response is over.
#[derive(Debug, Clone)]
pub(crate) struct Tracked<S> {
    inner: S,
    conn: Arc<ConnState>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, conn: Arc<ConnState>) -> Self {
        Self { inner, conn }
    }
}

/// A request in flight until dropped: with the response body once there is one.
#[derive(Debug)]
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_over();
    }
}

impl<B> Drop for Over<B> {
    fn drop(&mut self) {
        if self.awaiting {
            self.in_flight.0.awaiting_client(self.id, None);
        }
    }
}

impl<S, R, B> tower::Service<R> for Tracked<S>
where
    S: tower::Service<R, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
{
    type Response = http::Response<Over<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let id = self.conn.request_started();
        let in_flight = InFlight(self.conn.clone());
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Over { body, id, awaiting: false, in_flight }))
        })
    }
}

/// A response body that ends the request's time in flight when it is dropped (hyper drops
/// it once it has been sent, or when the connection goes), and notes when it waits for the
/// client: hyper asks a body for its next frame only once the last one could be written,
/// so a response not asked for more since its last frame is one the client does not take
/// (a full socket, an h2c window at zero). After `limits.body_read_timeout` of that, the
/// connection is closed ([`expired`]): hyper has no way to reset one h2c stream from
/// outside, and what the response holds (its frame, the upstream's side) must go.
#[derive(Debug)]
pub(crate) struct Over<B> {
    body: B,
    id: u64,
    /// A frame was handed over and no other asked for since.
    awaiting: bool,
    in_flight: InFlight,
}

impl<B: Body + Unpin> Body for Over<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        if self.awaiting {
            self.awaiting = false;
            self.in_flight.0.awaiting_client(self.id, None);
        }
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if matches!(&frame, Some(Ok(_))) && !self.body.is_end_stream() {
            self.awaiting = true;
            self.in_flight.0.awaiting_client(self.id, Some(Instant::now()));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            first_byte_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(90),
            ..Limits::default()
        }
    }

    fn timeline(at: Instant) -> Timeline {
        Timeline::new(at)
    }

    fn big() -> Arc<HeadBudget> {
        HeadBudget::new(usize::MAX / 2)
    }

    #[test]
    fn a_connection_is_judged_by_the_limit_of_where_it_stands() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let l = limits();
        let mut t = timeline(t0);
        assert_eq!(t.deadline(&l), Some((t0 + s(10), Limit::FirstByteTimeout)), "nothing sent yet");

        // 10 bytes of the h2c preface do not tell: still the first-byte deadline.
        t.read(&H2_PREFACE[..10], t0 + s(1), &big());
        assert_eq!(t.protocol, Protocol::Unknown(10));
        assert_eq!(t.deadline(&l), Some((t0 + s(10), Limit::FirstByteTimeout)));
        // The rest of it: h2c, idle from then on.
        t.read(&H2_PREFACE[10..], t0 + s(2), &big());
        assert_eq!(t.protocol, Protocol::H2c);
        assert_eq!(t.deadline(&l), Some((t0 + s(92), Limit::IdleTimeout)));

        // HTTP/1.1: the head's deadline runs from its first byte, until the request starts.
        let mut t = timeline(t0);
        t.read(b"GET / HT", t0 + s(3), &big());
        assert_eq!(t.protocol, Protocol::Http1);
        assert_eq!(t.deadline(&l), Some((t0 + s(23), Limit::HeaderReadTimeout)));
        t.read(b"TP/1.1\r\n", t0 + s(4), &big());
        assert_eq!(t.deadline(&l), Some((t0 + s(23), Limit::HeaderReadTimeout)), "more of the same head");
        t.in_flight = 1;
        t.in_head = false;
        assert_eq!(t.deadline(&l), None, "a request in flight has no connection deadline");
        t.read(b"body bytes", t0 + s(5), &big());
        assert_eq!(t.deadline(&l), None, "a request body is not a head");
        t.in_flight = 0;
        t.since = t0 + s(6);
        assert_eq!(t.deadline(&l), Some((t0 + s(96), Limit::IdleTimeout)), "kept alive");
        t.read(b"G", t0 + s(50), &big());
        assert_eq!(t.deadline(&l), Some((t0 + s(70), Limit::HeaderReadTimeout)), "the next head");
    }

    #[test]
    fn a_preface_that_goes_wrong_is_http1() {
        let t0 = Instant::now();
        let mut t = timeline(t0);
        t.read(b"PRI * HTTP/1.1", t0, &big());
        assert_eq!(t.protocol, Protocol::Http1);
    }

    #[test]
    fn heads_past_the_first_buffer_share_the_budget_until_their_connection_goes() {
        let heads = HeadBudget::new(20 << 10);
        let (a, b) = (ConnState::new(heads.clone()), ConnState::new(heads.clone()));
        let now = Instant::now();
        let kib = |n: usize| vec![b'x'; n << 10];
        // Within hyper's first buffer: free.
        assert!(a.inner.lock().read(&kib(8), now, &heads));
        assert_eq!(heads.used.load(Ordering::Relaxed), 0);
        // 12 KiB more: charged for its growth.
        assert!(a.inner.lock().read(&kib(12), now, &heads));
        assert_eq!(heads.used.load(Ordering::Relaxed), 12 << 10);
        // The request starts: the buffer stays grown, so the charge stays; a next head as
        // large costs nothing more.
        let _ = a.request_started();
        a.request_over();
        assert!(a.inner.lock().read(&kib(20), now, &heads));
        assert_eq!(heads.used.load(Ordering::Relaxed), 12 << 10);
        // Another connection's large head does not fit: refused, and marked.
        assert!(!b.inner.lock().read(&kib(30), now, &heads));
        assert!(b.over_budget());
        drop(a);
        assert_eq!(heads.used.load(Ordering::Relaxed), 0, "given back when the connection goes");
        let c = ConnState::new(heads.clone());
        assert!(c.inner.lock().read(&kib(28), now, &heads), "and there for others");
    }

    #[test]
    fn a_limit_is_logged_once_per_interval_with_the_count() {
        let t0 = Instant::now();
        let mut t = Throttle::default();
        assert_eq!(t.hit(t0), Some(1), "the first hit is logged at once");
        for i in 1..157 {
            assert_eq!(t.hit(t0 + Duration::from_millis(50 * i)), None);
        }
        assert_eq!(t.hit(t0 + LOG_EVERY), Some(157), "then one line with all since the last");
        assert_eq!(t.hit(t0 + LOG_EVERY + Duration::from_secs(1)), None);
    }
}
