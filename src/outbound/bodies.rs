//! The response bodies of the pool: [`PooledBody`] puts its HTTP/1.1 connection back once
//! read to the end, [`Holding`] keeps a streaming request's share until its response is over.

use crate::body::{Body, BoxError};
use bytes::Bytes;
use http_body::Frame;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use tokio::sync::OwnedSemaphorePermit;

/// Where an HTTP/1.1 connection goes back to once its response is read: the pool.
pub(super) trait GiveBack: Send + Sync {
    fn give_back(self: Arc<Self>, sender: http1::SendRequest<Body>);
}

/// A response body that holds a streaming request's share until it is dropped.
pub(super) struct Holding {
    pub(super) body: Body,
    pub(super) _share: OwnedSemaphorePermit,
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

/// A response body that puts its HTTP/1.1 connection back in the pool once it has been
/// read to the end. Dropped before that, the connection goes with it.
pub(super) struct PooledBody {
    pub(super) body: Incoming,
    pub(super) conn: Option<http1::SendRequest<Body>>,
    /// `None` when the connection must not be used again.
    pub(super) pool: Option<Weak<dyn GiveBack>>,
}

impl PooledBody {
    fn release(&mut self) {
        if let (Some(sender), Some(pool)) = (self.conn.take(), self.pool.as_ref().and_then(Weak::upgrade)) {
            pool.give_back(sender);
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

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    /// A body that ends with its head (HEAD, 204, 304, a last frame seen as the end) is
    /// dropped unpolled by whoever sees `is_end_stream`.
    fn drop(&mut self) {
        if http_body::Body::is_end_stream(&self.body) {
            self.release();
        }
    }
}
