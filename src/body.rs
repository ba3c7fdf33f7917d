//! The body type of every request the proxy sends and every response it answers, and the
//! small constructors for bodies already in memory.

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

/// Errors inside bodies: hyper's, or our own.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A boxed body: streamed from a client or the upstream, or built in memory.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body of bytes already in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}
