//! Request bodies kept for one replay: a body of at most `upstream.replay_limit` bytes is
//! read into memory before it is forwarded, so that the request can be sent again with a
//! new token after an upstream 401. A larger body (by its `Content-Length`, or found
//! larger while reading) is streamed, the part already read first, and is not replayable.
//! What to do after a 401 is [`crate::proxy`]'s decision.

use crate::body::{Body, BoxError};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A request body as the proxy holds it.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// Entirely in memory: can be sent any number of times.
    Buffered(Buffered),
    /// Streamed from the client: can be sent once.
    Streaming(Body),
}

/// A complete body in memory, with its trailers if it had any. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Buffered {
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Buffered {
    /// A body that yields these chunks, then the trailers.
    pub(crate) fn to_body(&self) -> Body {
        if self.chunks.is_empty() && self.trailers.is_none() {
            // No allocation: the common GET.
            return crate::body::empty();
        }
        Replay { chunks: self.chunks.iter().cloned().collect(), trailers: self.trailers.clone() }.boxed_unsync()
    }
}

impl RequestBody {
    /// Reads `body` into memory if it is at most `limit` bytes; otherwise streams it.
    /// Fails only if the client's body fails while being read.
    pub(crate) async fn read<B>(body: B, limit: u64) -> Result<Self, BoxError>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if body.is_end_stream() {
            return Ok(RequestBody::Buffered(Buffered::default()));
        }
        let mut body = body.map_err(Into::into).boxed_unsync();
        if body.size_hint().lower() > limit {
            return Ok(RequestBody::Streaming(body));
        }
        let mut chunks = Vec::new();
        let mut read: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            match frame.into_data() {
                Ok(data) => {
                    read += data.len() as u64;
                    chunks.push(data);
                    if read > limit {
                        let prefix = Prefixed { prefix: chunks.into(), rest: body };
                        return Ok(RequestBody::Streaming(prefix.boxed_unsync()));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Ok(RequestBody::Buffered(Buffered { chunks, trailers: Some(trailers) }));
                    }
                }
            }
        }
        Ok(RequestBody::Buffered(Buffered { chunks, trailers: None }))
    }

    /// The body to send, and what is kept for a replay (if anything).
    pub(crate) fn into_parts(self) -> (Body, Option<Buffered>) {
        match self {
            RequestBody::Buffered(b) => (b.to_body(), Some(b)),
            RequestBody::Streaming(body) => (body, None),
        }
    }
}

/// Chunks already in memory, then trailers.
struct Replay {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let len: usize = self.chunks.iter().map(Bytes::len).sum();
        SizeHint::with_exact(len as u64)
    }
}

/// The chunks read while deciding, then the rest of the client's body.
struct Prefixed {
    prefix: VecDeque<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let RequestBody::Buffered(b) = RequestBody::read(body, 10).await.unwrap() else { panic!("not buffered") };
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
        assert!(matches!(RequestBody::read(body, 10).await.unwrap(), RequestBody::Streaming(_)));
        // Found too large while reading a chunked body: the part read comes first.
        let body = frames((0..5).map(|i| Frame::data(Bytes::from(vec![i as u8; 4]))).collect());
        let RequestBody::Streaming(s) = RequestBody::read(body, 10).await.unwrap() else { panic!("buffered") };
        let (bytes, _) = collect(s).await;
        let want: Vec<u8> = (0..5u8).flat_map(|i| vec![i; 4]).collect();
        assert_eq!(&bytes[..], &want[..]);
    }

    #[tokio::test]
    async fn empty_bodies_are_replayable() {
        let body = http_body_util::Empty::<Bytes>::new().map_err(|never| match never {});
        let (body, kept) = RequestBody::read(body, 0).await.unwrap().into_parts();
        assert!(kept.unwrap().to_body().is_end_stream());
        assert!(body.is_end_stream());
    }
}
