//! Request bodies kept for one replay: a body of at most `upstream.replay_limit` bytes is
//! read into memory before it is forwarded, so that the request can be sent again with a
//! new token after an upstream 401. A larger body (by its `Content-Length`, or found
//! larger while reading) is streamed, the part already read first, and is not replayable.
//! All the bodies held at once share one [`ReplayBudget`] (`limits.replay_memory`): a body
//! that would pass it streams too, so that clients sending large bodies and stalling cannot
//! make the proxy buffer without bound. What to do after a 401 is [`crate::proxy`]'s
//! decision.
//!
//! The budget counts memory held, not payload bytes. Each chunk is copied into one buffer
//! of the body's own, and the budget is charged with that buffer's capacity: a chunk that
//! hyper hands over is a view into its read buffer (or h2's), and keeping the view would
//! keep that whole buffer alive, so a body sent in one-byte chunks, each in its own read,
//! would hold kilobytes per byte. Copied, a body of one-byte chunks costs what a body of
//! one chunk costs. (The copy is a memcpy of at most `replay_limit` bytes per request.)

use crate::body::{Body, BoxError};
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// The bytes that all replay buffers together may hold (`limits.replay_memory`), shown as
/// `replay_memory_bytes` when a gauge is given.
#[derive(Debug)]
pub(crate) struct ReplayBudget {
    limit: u64,
    used: AtomicU64,
    gauge: Option<prometheus::IntGauge>,
}

impl ReplayBudget {
    /// A budget shown nowhere (for tests).
    #[cfg(test)]
    pub(crate) fn new(limit: u64) -> Arc<Self> {
        Arc::new(Self { limit, used: AtomicU64::new(0), gauge: None })
    }

    pub(crate) fn shown_in(limit: u64, gauge: prometheus::IntGauge) -> Arc<Self> {
        Arc::new(Self { limit, used: AtomicU64::new(0), gauge: Some(gauge) })
    }

    /// Takes `n` bytes if they fit.
    fn take(&self, n: u64) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| used.checked_add(n).filter(|u| *u <= self.limit))
            .is_ok();
        if taken && let Some(g) = &self.gauge {
            g.add(i64::try_from(n).unwrap_or(i64::MAX));
        }
        taken
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
        if let Some(g) = &self.gauge {
            g.sub(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The bytes held now.
    #[cfg(test)]
    fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }
}

/// The part of the budget that one body holds, given back when the last of it goes.
#[derive(Debug)]
struct Held {
    budget: Arc<ReplayBudget>,
    bytes: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// Why a body is streamed rather than kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotKept {
    /// Larger than `upstream.replay_limit`.
    TooLarge,
    /// The bodies held by other requests left no room in `limits.replay_memory`.
    NoBudget,
}

/// A request body as the proxy holds it.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// Entirely in memory: can be sent any number of times.
    Buffered(Buffered),
    /// Streamed from the client: can be sent once.
    Streaming(Body, NotKept),
}

/// A complete body in memory, with its trailers if it had any. Cheap to clone; its part
/// of the budget is given back when the last clone goes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Buffered {
    data: Bytes,
    trailers: Option<HeaderMap>,
    _held: Option<Arc<Held>>,
}

impl Buffered {
    /// A body that yields the data, then the trailers.
    pub(crate) fn to_body(&self) -> Body {
        if self.data.is_empty() && self.trailers.is_none() {
            // No allocation: the common GET.
            return crate::body::empty();
        }
        let data = (!self.data.is_empty()).then(|| self.data.clone());
        Replay { data, trailers: self.trailers.clone() }.boxed_unsync()
    }
}

/// A buffer of a body's own, charged to the budget by its capacity.
struct OwnBuffer {
    buf: BytesMut,
    held: Held,
}

impl OwnBuffer {
    /// Room for `expected` bytes (a `Content-Length`), charged now; `None` if it does not fit.
    fn new(budget: &Arc<ReplayBudget>, expected: u64) -> Option<Self> {
        let mut copy = OwnBuffer { buf: BytesMut::new(), held: Held { budget: budget.clone(), bytes: 0 } };
        copy.reserve(usize::try_from(expected).ok()?).then_some(copy)
    }

    /// Makes room for `more` bytes, charging what the buffer grows by; `false` if the
    /// budget has no room for it (nothing is grown then).
    fn reserve(&mut self, more: usize) -> bool {
        if self.buf.capacity() - self.buf.len() >= more {
            return true;
        }
        // Grown as a Vec grows (doubling, at least to what is needed), charged before it is
        // allocated, by what the new allocation holds.
        let wanted = (self.buf.len() + more).max(self.buf.capacity() * 2);
        let grow = (wanted - self.buf.capacity()) as u64;
        if !self.held.budget.take(grow) {
            return false;
        }
        self.held.bytes += grow;
        let mut grown = BytesMut::with_capacity(wanted);
        grown.extend_from_slice(&self.buf);
        self.buf = grown;
        true
    }
}

impl RequestBody {
    /// Reads `body` into memory if it is at most `limit` bytes and `budget` has room for
    /// it; otherwise streams it. `hint` is the client's body's size as it came (its
    /// `Content-Length`), passed apart because wrappers such as a read timeout hide it.
    /// Fails only if the client's body fails while being read.
    pub(crate) async fn read<B>(
        body: B,
        hint: SizeHint,
        limit: u64,
        budget: &Arc<ReplayBudget>,
    ) -> Result<Self, BoxError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if hint.upper() == Some(0) {
            return Ok(RequestBody::Buffered(Buffered::default()));
        }
        let mut body = body.map_err(Into::into).boxed_unsync();
        if hint.lower() > limit {
            return Ok(RequestBody::Streaming(body, NotKept::TooLarge));
        }
        // A known length is reserved (and charged) once; otherwise the buffer grows.
        let Some(mut copy) = OwnBuffer::new(budget, hint.exact().unwrap_or(0)) else {
            return Ok(RequestBody::Streaming(body, NotKept::NoBudget));
        };
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            match frame.into_data() {
                Ok(data) => {
                    let why = if (copy.buf.len() + data.len()) as u64 > limit {
                        NotKept::TooLarge
                    } else if !copy.reserve(data.len()) {
                        NotKept::NoBudget
                    } else {
                        copy.buf.extend_from_slice(&data);
                        continue;
                    };
                    // What was read stays counted until it has been sent on.
                    let prefix = [copy.buf.freeze(), data].into_iter().filter(|b| !b.is_empty()).collect();
                    let prefix = Prefixed { prefix, rest: body, held: Some(copy.held) };
                    return Ok(RequestBody::Streaming(prefix.boxed_unsync(), why));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Ok(RequestBody::Buffered(copy.finish(Some(trailers))));
                    }
                }
            }
        }
        Ok(RequestBody::Buffered(copy.finish(None)))
    }

    /// The body to send, and what is kept for a replay (or why nothing is).
    pub(crate) fn into_parts(self) -> (Body, Result<Buffered, NotKept>) {
        match self {
            RequestBody::Buffered(b) => (b.to_body(), Ok(b)),
            RequestBody::Streaming(body, why) => (body, Err(why)),
        }
    }
}

impl OwnBuffer {
    /// The body read whole: its data, and the budget held until the last clone goes.
    fn finish(self, trailers: Option<HeaderMap>) -> Buffered {
        Buffered { data: self.buf.freeze(), trailers, _held: Some(Arc::new(self.held)) }
    }
}

/// Data already in memory, then trailers.
struct Replay {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// The chunks read while deciding, then the rest of the client's body.
struct Prefixed {
    prefix: VecDeque<Bytes>,
    rest: Body,
    /// The prefix's part of the budget, until it has been sent.
    held: Option<Held>,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        self.held = None;
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    /// [`RequestBody::read`] with the body's own size hint.
    async fn read_<B>(body: B, limit: u64, budget: &Arc<ReplayBudget>) -> Result<RequestBody, BoxError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let hint = body.size_hint();
        RequestBody::read(body, hint, limit, budget).await
    }
    use http_body_util::{Full, StreamBody};

    async fn collect(body: Body) -> (Bytes, Option<HeaderMap>) {
        let c = body.collect().await.unwrap();
        let trailers = c.trailers().cloned();
        (c.to_bytes(), trailers)
    }

    fn frames(parts: Vec<Frame<Bytes>>) -> impl http_body::Body<Data = Bytes, Error = BoxError> + Send + 'static {
        StreamBody::new(IterStream(parts.into_iter().map(Ok).collect()))
    }

    /// A minimal stream over a vector, for building chunked bodies.
    struct IterStream(VecDeque<Result<Frame<Bytes>, BoxError>>);

    impl futures_core::Stream for IterStream {
        type Item = Result<Frame<Bytes>, BoxError>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    #[tokio::test]
    async fn small_bodies_are_buffered_and_replayable_with_trailers() {
        let mut t = HeaderMap::new();
        t.insert("x-sum", "1".parse().unwrap());
        let body = frames(vec![Frame::data(Bytes::from("ab")), Frame::data(Bytes::from("cd")), Frame::trailers(t)]);
        let RequestBody::Buffered(b) = read_(body, 10, &ReplayBudget::new(1 << 20)).await.unwrap() else {
            panic!("not buffered")
        };
        for _ in 0..2 {
            let (bytes, trailers) = collect(b.to_body()).await;
            assert_eq!(&bytes[..], b"abcd");
            assert_eq!(trailers.unwrap()["x-sum"], "1");
        }
    }

    #[tokio::test]
    async fn large_bodies_stream_whole_and_are_not_replayable() {
        // Known too large by its length: streamed untouched.
        let body = Full::new(Bytes::from(vec![7u8; 100])).map_err(|never| match never {});
        assert!(matches!(
            read_(body, 10, &ReplayBudget::new(1 << 20)).await.unwrap(),
            RequestBody::Streaming(_, NotKept::TooLarge)
        ));
        // Found too large while reading a chunked body: the part read comes first.
        let body = frames((0..5).map(|i| Frame::data(Bytes::from(vec![i as u8; 4]))).collect());
        let RequestBody::Streaming(s, NotKept::TooLarge) = read_(body, 10, &ReplayBudget::new(1 << 20)).await.unwrap()
        else {
            panic!("buffered")
        };
        let (bytes, _) = collect(s).await;
        let want: Vec<u8> = (0..5u8).flat_map(|i| vec![i; 4]).collect();
        assert_eq!(&bytes[..], &want[..]);
    }

    #[tokio::test]
    async fn empty_bodies_are_replayable() {
        let body = http_body_util::Empty::<Bytes>::new().map_err(|never| match never {});
        let (body, kept) = read_(body, 0, &ReplayBudget::new(1 << 20)).await.unwrap().into_parts();
        assert!(kept.unwrap().to_body().is_end_stream());
        assert!(body.is_end_stream());
    }

    /// A body of one-byte chunks is charged as one buffer (what it holds), however many
    /// chunks it came in: a million chunks of hyper's cost as much as one of a megabyte.
    #[tokio::test]
    async fn a_body_of_tiny_chunks_costs_what_one_chunk_costs() {
        let n = 100_000;
        let budget = ReplayBudget::new(1 << 20);
        let tiny = frames((0..n).map(|_| Frame::data(Bytes::from_static(b"x"))).collect());
        let RequestBody::Buffered(kept) = read_(tiny, 1 << 20, &budget).await.unwrap() else { panic!("not buffered") };
        let charged = budget.used();
        assert!(charged >= n as u64 && charged <= 2 * n as u64, "{charged}: the buffer's capacity");
        drop(kept);
        let whole = frames(vec![Frame::data(Bytes::from(vec![b'x'; n]))]);
        let RequestBody::Buffered(_kept) = read_(whole, 1 << 20, &budget).await.unwrap() else {
            panic!("not buffered")
        };
        assert!(budget.used() <= charged, "one chunk: {} against {charged}", budget.used());
        // A known length is reserved once, exactly.
        let exact = Full::new(Bytes::from(vec![b'y'; 1000])).map_err(|never| match never {});
        let budget = ReplayBudget::new(1 << 20);
        let RequestBody::Buffered(_kept) = read_(exact, 1 << 20, &budget).await.unwrap() else {
            panic!("not buffered")
        };
        assert_eq!(budget.used(), 1000);
    }

    #[tokio::test]
    async fn bodies_held_at_once_share_the_budget_and_give_it_back() {
        // Charged by the buffer's capacity, which doubles: 3, then 6, then 12 for 9 bytes.
        let budget = ReplayBudget::new(12);
        let chunks = |n: usize| frames((0..n).map(|_| Frame::data(Bytes::from_static(b"abc"))).collect());
        // 6 bytes held, until the body kept for its replay goes.
        let RequestBody::Buffered(first) = read_(chunks(2), 100, &budget).await.unwrap() else {
            panic!("not buffered")
        };
        assert_eq!(budget.used(), 6);
        // 9 more do not fit: streamed whole, the part read first, and not replayable.
        let RequestBody::Streaming(s, NotKept::NoBudget) = read_(chunks(3), 100, &budget).await.unwrap() else {
            panic!("kept past the budget")
        };
        assert_eq!(budget.used(), 12, "the part read (a buffer of 6) is held until it is sent");
        assert_eq!(&collect(s).await.0[..], b"abcabcabc");
        assert_eq!(budget.used(), 6, "and given back once sent");
        let copy = first.clone();
        drop(first);
        assert_eq!(budget.used(), 6, "a clone still holds it");
        drop(copy);
        assert_eq!(budget.used(), 0);
        // With the room back, the same body is kept.
        assert!(matches!(read_(chunks(3), 100, &budget).await.unwrap(), RequestBody::Buffered(_)));
    }
}
