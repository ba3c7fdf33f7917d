//! HTTP/1.1 to the upstream, on one connection at a time: writing a request, reading its
//! response head, and streaming its body with the framing RFC 9112 §6 gives it. The pool
//! (which connection, when to connect, timeouts, retries) is [`crate::upstream`]'s business.
//!
//! It exists because hyper's client connection costs a task, a request channel and a
//! oneshot per request, about a quarter of the proxy's instructions per request; here the
//! request's own future writes the request and reads the response. The parsing is hyper's
//! parser (httparse), strict: no obsolete line folding, no bare LF in chunked framing, one
//! agreed `Content-Length` or none, `Transfer-Encoding` that does not end in `chunked` read
//! to the connection's close. A connection is reused only after a response whose end its
//! framing marked, to a request written in full, with nothing unasked-for after it: so a
//! response the upstream framed wrongly can never be read as the next request's.

use crate::client::{Body, BoxError};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body as _, Frame, SizeHint};
use parking_lot::Mutex;
use std::future::Future;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// The largest response head (status line and headers) accepted: Pinecone's are well under
/// 2 KiB; hyper's client allows about 400 KiB, which no API response needs.
const MAX_HEAD: usize = 64 * 1024;
/// The most response headers, or trailers, accepted (hyper's client default is 100).
const MAX_HEADERS: usize = 128;
/// The longest chunk-size line, extensions included (hyper allows 16 KiB of extensions per
/// body; one line of 4 KiB is far beyond any real server's).
const MAX_CHUNK_LINE: usize = 4096;
/// The largest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;
/// Request bytes gathered before a write: the head and the body frames already at hand go
/// out in one write, up to this much.
const WRITE_BATCH: usize = 64 * 1024;
/// Reads start at this size and double (up to `MAX_READ`) while they fill the buffer, so a
/// small response costs one small read and a large download few system calls.
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 256 * 1024;

/// The idle HTTP/1.1 connections, most recently used last.
pub type Idle = Arc<Mutex<Vec<Conn>>>;

/// A connection's byte stream: plain TCP (a loopback `http://` upstream) or rustls.
#[derive(Debug)]
pub enum Io {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(io).poll_shutdown(cx),
        }
    }
}

/// An HTTP/1.1 connection between requests: its stream, its read buffer (which may hold
/// nothing between responses), a write buffer kept for its capacity, and the timer that
/// bounds the wait for each response. Between requests the timer stays registered with its
/// last deadline and the last request's waker, so a finished client connection's task
/// record can stay allocated for up to `upstream.timeout` (its buffers are freed): bounded
/// by the number of pooled connections.
pub struct Conn {
    io: Io,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    read_size: usize,
    pub timer: Pin<Box<Sleep>>,
    /// When its last request was sent.
    pub used: Instant,
}

/// Without the buffers' bytes: the last request written, with its bearer token, may be there.
impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("tls", &matches!(self.io, Io::Tls(_)))
            .field("buffered", &self.rbuf.len())
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

impl Conn {
    pub fn new(io: Io, deadline: Instant) -> Self {
        Conn {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            read_size: MIN_READ,
            timer: Box::pin(tokio::time::sleep_until(deadline)),
            used: Instant::now(),
        }
    }

    /// Whether an idle connection can take a request: the upstream has neither closed it
    /// nor sent anything unasked. Costs no system call unless the socket has become
    /// readable since its last response was read (tokio clears readiness on a read that
    /// does not fill the buffer).
    pub fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = ReadBuf::new(&mut byte);
        match Pin::new(&mut self.io).poll_read(&mut cx, &mut buf) {
            Poll::Pending => self.rbuf.is_empty(),
            // Closed (nothing read), or bytes no request asked for: either way, not usable.
            Poll::Ready(_) => false,
        }
    }

    /// The write buffer, for its capacity.
    pub fn wbuf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.wbuf
    }

    /// Reads more of the stream into the read buffer: the number of bytes, 0 at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 2 {
            self.rbuf.reserve(self.read_size);
        }
        let spare = self.rbuf.capacity() - self.rbuf.len();
        let n = ready!(std::pin::pin!(self.io.read_buf(&mut self.rbuf)).poll(cx))?;
        if n == spare && self.read_size < MAX_READ {
            self.read_size *= 2;
        } else if n < self.read_size / 8 && self.read_size > MIN_READ {
            self.read_size /= 2;
        }
        Poll::Ready(Ok(n))
    }
}

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes remain.
    Length(u64),
    Chunked(Chunk),
    /// Until the connection closes: the connection cannot be reused.
    Close,
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// In a chunk's data, this many bytes remain.
    Data(u64),
    /// At the CRLF that ends a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer section and the final CRLF.
    Trailers,
}

/// A failure of one exchange, with what the pool may do about it.
#[derive(Debug)]
pub struct ExchangeError {
    /// One line for the client and the logs: never request or response data.
    pub message: String,
    /// Nothing of a response arrived, and either nothing of the request was taken by the
    /// connection or the request is idempotent: it may be sent again on another connection
    /// (if it can be: see [`Outgoing::replayable`]).
    pub may_retry: bool,
}

impl ExchangeError {
    fn fatal(message: impl Into<String>) -> Self {
        ExchangeError { message: message.into(), may_retry: false }
    }
}

/// A request as bytes to write: its head (and, if it has no body, all of it), then its
/// body's frames. Its `Debug` shows no bytes: they carry the bearer token.
pub struct Outgoing {
    bytes: Vec<u8>,
    body: Option<Body>,
    framing: Framing,
    /// The body's trailers, sent after the last chunk.
    trailers: Option<HeaderMap>,
    /// The body is empty: `bytes` is the whole request and can be written again.
    pub replayable: bool,
    is_head: bool,
    idempotent: bool,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("bytes", &self.bytes.len())
            .field("framing", &self.framing)
            .field("replayable", &self.replayable)
            .finish_non_exhaustive()
    }
}

/// Appends `name: value` and its CRLF.
fn push_field(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    buf.extend_from_slice(name.as_str().as_bytes());
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value.as_bytes());
    buf.extend_from_slice(b"\r\n");
}

impl Outgoing {
    /// Encodes `request` (its URI in origin form) with `host` as its `Host`, into `buf`
    /// (cleared first; its capacity is reused). The request's own `Host` is not sent.
    /// Framing: the request's `Content-Length` if it has one (the body must match it), else
    /// a length the body knows exactly, else chunked. `Transfer-Encoding` has been removed
    /// with the other hop-by-hop headers.
    pub fn encode(request: Request<Body>, host: &HeaderValue, mut buf: Vec<u8>) -> Result<Self, ExchangeError> {
        let (parts, body) = request.into_parts();
        buf.clear();
        buf.extend_from_slice(parts.method.as_str().as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(parts.uri.path_and_query().map_or("/", |pq| pq.as_str()).as_bytes());
        buf.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        buf.extend_from_slice(host.as_bytes());
        buf.extend_from_slice(b"\r\n");
        for (name, value) in &parts.headers {
            if name != header::HOST {
                push_field(&mut buf, name, value);
            }
        }
        let declared = content_length(&parts.headers)
            .map_err(|()| ExchangeError::fatal("the request's content-length is invalid"))?;
        let empty = body.is_end_stream();
        if empty && declared.is_some_and(|n| n > 0) {
            return Err(ExchangeError::fatal("the request body is shorter than its content-length"));
        }
        let framing = match (declared, body.size_hint().exact()) {
            (Some(length), _) => Framing::Length(length),
            (None, _) if empty => Framing::Length(0),
            (None, Some(length)) => {
                let _ = write!(buf, "content-length: {length}\r\n");
                Framing::Length(length)
            }
            (None, None) => {
                buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
                // For a request only the kind of framing matters, not a decoder's state.
                Framing::Chunked(Chunk::Data(0))
            }
        };
        buf.extend_from_slice(b"\r\n");
        let idempotent = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
        );
        Ok(Outgoing {
            bytes: buf,
            body: if empty { None } else { Some(body) },
            framing,
            trailers: None,
            replayable: empty,
            is_head: parts.method == Method::HEAD,
            idempotent,
        })
    }

    /// Appends a body frame's bytes in the request's framing.
    fn push_frame(&mut self, frame: Frame<Bytes>) -> Result<(), ExchangeError> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Trailers: HTTP/1.1 carries them only in chunked framing.
                if let Ok(trailers) = frame.into_trailers() {
                    self.trailers = Some(trailers);
                }
                return Ok(());
            }
        };
        match &mut self.framing {
            Framing::Length(remaining) => {
                *remaining = remaining
                    .checked_sub(data.len() as u64)
                    .ok_or_else(|| ExchangeError::fatal("the request body is longer than its content-length"))?;
                self.bytes.extend_from_slice(&data);
            }
            Framing::Chunked(_) if data.is_empty() => {}
            Framing::Chunked(_) => {
                let _ = write!(self.bytes, "{:x}\r\n", data.len());
                self.bytes.extend_from_slice(&data);
                self.bytes.extend_from_slice(b"\r\n");
            }
            Framing::Close | Framing::Done => unreachable!("requests are framed by length or chunks"),
        }
        Ok(())
    }

    /// Appends the body's end.
    fn push_end(&mut self) -> Result<(), ExchangeError> {
        match self.framing {
            Framing::Length(0) => {}
            Framing::Length(_) => {
                return Err(ExchangeError::fatal("the request body is shorter than its content-length"));
            }
            Framing::Chunked(_) => {
                self.bytes.extend_from_slice(b"0\r\n");
                // Never the fields that frame, route or authorize a message (RFC 9110 §6.5.1).
                for (name, value) in self.trailers.iter().flatten() {
                    if !matches!(
                        *name,
                        header::CONTENT_LENGTH
                            | header::TRANSFER_ENCODING
                            | header::HOST
                            | header::TRAILER
                            | header::AUTHORIZATION
                            | header::CONTENT_TYPE
                            | header::CONNECTION
                            | header::TE
                    ) {
                        push_field(&mut self.bytes, name, value);
                    }
                }
                self.bytes.extend_from_slice(b"\r\n");
            }
            Framing::Close | Framing::Done => unreachable!("requests are framed by length or chunks"),
        }
        self.framing = Framing::Done;
        Ok(())
    }
}

/// One request on one connection until its response head has come. Dropped, it closes the
/// connection; [`crate::upstream`] instead finishes an exchange whose request was written
/// in full ([`Exchange::is_written`]) in the background, so the connection can go back.
#[derive(Debug)]
pub struct Exchange {
    conn: Conn,
    out: Outgoing,
    /// Bytes of `out.bytes` written.
    written: usize,
    /// Whether the connection has taken any of the request.
    sent_any: bool,
    /// The request is written and flushed.
    write_done: bool,
    /// A write failed; the response may still come (an upstream that answers early and
    /// closes), so reading goes on, and this is the error if it does not.
    write_error: Option<String>,
    received_any: bool,
}

/// A response head, and how its body is framed.
#[derive(Debug)]
pub struct Head {
    response: Response<()>,
    framing: Framing,
    reusable: bool,
}

impl Exchange {
    pub fn new(conn: Conn, out: Outgoing) -> Self {
        Exchange { conn, out, written: 0, sent_any: false, write_done: false, write_error: None, received_any: false }
    }

    pub fn conn_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }

    /// The request back, to be written on another connection; the connection is dropped.
    pub fn into_outgoing(self) -> Outgoing {
        self.out
    }

    /// Writes the request and reads the response head. Both go on together: an upstream
    /// may answer before it has read the whole body.
    pub fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Head, ExchangeError>> {
        if !self.write_done && self.write_error.is_none() {
            match self.poll_write(cx) {
                Poll::Ready(Ok(())) => self.write_done = true,
                Poll::Ready(Err(WriteError::Body(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Err(WriteError::Io(e))) => self.write_error = Some(e),
                Poll::Pending => {}
            }
        }
        loop {
            if let Some(head) = self.parse_head()? {
                return Poll::Ready(Ok(head));
            }
            let error = match ready!(self.conn.poll_fill(cx)) {
                Ok(0) => "the connection was closed before a response".to_owned(),
                Ok(_) => {
                    self.received_any = true;
                    continue;
                }
                Err(e) => format!("the connection failed before a response: {e}"),
            };
            let may_retry = !self.received_any && (!self.sent_any || self.out.idempotent);
            let message = self.write_error.take().unwrap_or(error);
            return Poll::Ready(Err(ExchangeError { message, may_retry }));
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), WriteError>> {
        loop {
            if self.written == self.out.bytes.len() && !self.out.replayable {
                self.out.bytes.clear();
                self.written = 0;
            }
            // Gather the body frames already at hand, so they go out with the head.
            while self.out.bytes.len() < WRITE_BATCH {
                let Some(body) = self.out.body.as_mut() else { break };
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => self.out.push_frame(frame).map_err(WriteError::Body)?,
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(WriteError::Body(ExchangeError::fatal(format!(
                            "the request body could not be read: {e}"
                        )))));
                    }
                    Poll::Ready(None) => {
                        self.out.body = None;
                        self.out.push_end().map_err(WriteError::Body)?;
                    }
                    Poll::Pending => break,
                }
            }
            if self.written < self.out.bytes.len() {
                match Pin::new(&mut self.conn.io).poll_write(cx, &self.out.bytes[self.written..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(WriteError::Io("the connection took no bytes".into())));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.written += n;
                        self.sent_any = true;
                        continue;
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(WriteError::Io(format!("writing the request failed: {e}"))));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
            if self.out.body.is_some() {
                // Waiting for the client's next body frame; what was written goes out
                // meanwhile (rustls may hold it).
                if let Poll::Ready(Err(e)) = Pin::new(&mut self.conn.io).poll_flush(cx) {
                    return Poll::Ready(Err(WriteError::Io(format!("writing the request failed: {e}"))));
                }
                return Poll::Pending;
            }
            return Pin::new(&mut self.conn.io)
                .poll_flush(cx)
                .map_err(|e| WriteError::Io(format!("writing the request failed: {e}")));
        }
    }

    /// A complete response head from the read buffer, skipping interim (1xx) responses.
    fn parse_head(&mut self) -> Result<Option<Head>, ExchangeError> {
        loop {
            // Most responses have a handful of headers: a small table first, the full one
            // only for a response with more.
            let parsed = match parse_response::<24>(&mut self.conn.rbuf) {
                Err(Parse::TooManyHeaders) => parse_response::<MAX_HEADERS>(&mut self.conn.rbuf),
                parsed => parsed,
            };
            let response = match parsed {
                Ok(Some(response)) => response,
                Ok(None) => return Ok(None),
                Err(Parse::Interim) => continue,
                Err(Parse::TooManyHeaders) => {
                    return Err(ExchangeError::fatal(format!("the response has more than {MAX_HEADERS} headers")));
                }
                Err(Parse::Invalid(message)) => return Err(ExchangeError::fatal(message)),
            };
            return response_framing(response, self.out.is_head).map(|(response, framing, reusable)| {
                Some(Head { response, framing, reusable: reusable && self.write_done })
            });
        }
    }

    /// The response body, streaming from the connection, which goes back to `idle` once the
    /// body has been read to its end (if the exchange allows reuse).
    pub fn into_response(self, head: Head, idle: Idle) -> Response<Body> {
        let Exchange { mut conn, out, .. } = self;
        // Kept for its capacity; what it held (the token too) is not kept reachable.
        conn.wbuf = out.bytes;
        conn.wbuf.clear();
        let body = ResponseBody { conn: Some(conn), framing: head.framing, reusable: head.reusable, idle };
        head.response.map(|()| http_body_util::BodyExt::boxed_unsync(body))
    }

    /// Whether the request can be written again on another connection: it has no body.
    pub fn is_replayable(&self) -> bool {
        self.out.replayable
    }

    /// Whether the request has been written in full, so that its response will come.
    pub fn is_written(&self) -> bool {
        self.write_done
    }
}

enum WriteError {
    /// The request body failed or broke its framing: nothing more to do.
    Body(ExchangeError),
    /// The connection failed: a response may still be readable.
    Io(String),
}

enum Parse {
    /// A 1xx response was consumed; the real one follows.
    Interim,
    TooManyHeaders,
    Invalid(String),
}

/// Parses a response head from the front of `rbuf` with room for `N` headers, and removes
/// it from the buffer; `Ok(None)` until it is complete.
fn parse_response<const N: usize>(rbuf: &mut BytesMut) -> Result<Option<Response<()>>, Parse> {
    let mut slots = [httparse::EMPTY_HEADER; N];
    let mut parsed = httparse::Response::new(&mut slots);
    let len = match parsed.parse(rbuf) {
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Partial) if rbuf.len() <= MAX_HEAD => return Ok(None),
        Ok(_) => return Err(Parse::Invalid(format!("the response head is larger than {} KiB", MAX_HEAD / 1024))),
        Err(httparse::Error::TooManyHeaders) => return Err(Parse::TooManyHeaders),
        Err(e) => return Err(Parse::Invalid(format!("the response head is invalid: {e}"))),
    };
    let code = parsed.code.expect("complete");
    if code == 101 {
        return Err(Parse::Invalid("the upstream switched protocols, which the proxy never asks for".into()));
    }
    if (100..200).contains(&code) {
        rbuf.advance(len);
        return Err(Parse::Interim);
    }
    let status =
        StatusCode::from_u16(code).map_err(|_| Parse::Invalid(format!("the response status {code} is invalid")))?;
    let version = if parsed.version == Some(1) { Version::HTTP_11 } else { Version::HTTP_10 };
    // Where each name and value lies in the head (which is at most MAX_HEAD long), so that
    // the values can share the head's bytes: one allocation for all of them.
    let base = rbuf.as_ptr() as usize;
    // (An empty value need not point into the buffer.)
    let offset = |s: &[u8]| if s.is_empty() { 0 } else { (s.as_ptr() as usize - base) as u32 };
    let mut spans = [(0u32, 0u32, 0u32, 0u32); N];
    let count = parsed.headers.len();
    for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
        *span = (offset(h.name.as_bytes()), h.name.len() as u32, offset(h.value), h.value.len() as u32);
    }
    // A reason phrase other than the status's own is kept, and hyper's server sends it on.
    let reason = parsed.reason.filter(|r| Some(*r) != status.canonical_reason()).map(|r| r.as_bytes().to_vec());
    let head = rbuf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(name_at, name_len, value_at, value_len) in &spans[..count] {
        let (name_at, value_at) = (name_at as usize, value_at as usize);
        let name = HeaderName::from_bytes(&head[name_at..name_at + name_len as usize])
            .map_err(|_| Parse::Invalid("a response header name is invalid".into()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_at + value_len as usize))
            .map_err(|_| Parse::Invalid("a response header value is invalid".into()))?;
        headers.append(name, value);
    }
    let mut response = Response::new(());
    if let Some(reason) = reason.and_then(|r| hyper::ext::ReasonPhrase::try_from(r).ok()) {
        response.extensions_mut().insert(reason);
    }
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(response))
}

/// The framing and reusability of a response (RFC 9112 §6.3). A `Content-Length` that a
/// `Transfer-Encoding` overrides is removed, and the connection is not reused after such a
/// response (it "ought to be handled as an error", and may be a splitting attempt).
fn response_framing(mut response: Response<()>, is_head: bool) -> Result<(Response<()>, Framing, bool), ExchangeError> {
    let (status, version) = (response.status(), response.version());
    let headers = response.headers_mut();
    let mut reusable = version == Version::HTTP_11 && !has_token(headers, header::CONNECTION, "close");
    let framing = if is_head || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        Framing::Length(0)
    } else if headers.contains_key(header::TRANSFER_ENCODING) {
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            reusable = false;
        }
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        if version == Version::HTTP_11 && last.is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
            Framing::Chunked(Chunk::Size)
        } else {
            reusable = false;
            Framing::Close
        }
    } else {
        match content_length(headers) {
            Ok(Some(length)) => Framing::Length(length),
            Ok(None) => {
                reusable = false;
                Framing::Close
            }
            Err(()) => return Err(ExchangeError::fatal("the response's content-length is invalid")),
        }
    };
    Ok((response, framing, reusable))
}

/// The one `Content-Length` of a message: every field and list member must be the same
/// decimal number (RFC 9110 §8.6); `Err` if not.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut found = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for member in value.as_bytes().split(|&b| b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() || member.len() > 19 || !member.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = member.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
            if found.is_some_and(|f| f != n) {
                return Err(());
            }
            found = Some(n);
        }
    }
    Ok(found)
}

/// Whether a comma-separated header has `token` among its members, in any case.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// What one step of decoding the buffered bytes gave.
enum Step {
    Frame(Frame<Bytes>),
    /// The body has ended.
    End,
    /// More bytes are needed.
    More,
}

/// A response body read from its connection, which goes back to the pool when the body
/// has ended (if reusable). Dropped before its end, it finishes from what is already
/// buffered if it can (a small body usually is all there), and otherwise closes the
/// connection: what is left of the response is unknown.
struct ResponseBody {
    conn: Option<Conn>,
    framing: Framing,
    reusable: bool,
    idle: Idle,
}

impl ResponseBody {
    /// Decodes the next frame from the buffered bytes.
    fn step(&mut self) -> Result<Step, BoxError> {
        let rbuf = &mut self.conn.as_mut().expect("held until the end").rbuf;
        loop {
            match &mut self.framing {
                Framing::Done => return Ok(Step::End),
                Framing::Length(0) => {
                    self.framing = Framing::Done;
                }
                Framing::Length(remaining) => {
                    if rbuf.is_empty() {
                        return Ok(Step::More);
                    }
                    let n = rbuf.len().min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= n as u64;
                    return Ok(Step::Frame(Frame::data(rbuf.split_to(n).freeze())));
                }
                Framing::Close => {
                    if rbuf.is_empty() {
                        return Ok(Step::More);
                    }
                    return Ok(Step::Frame(Frame::data(rbuf.split().freeze())));
                }
                Framing::Chunked(chunk) => match *chunk {
                    Chunk::Size => {
                        let Some(size) = chunk_size(rbuf)? else { return Ok(Step::More) };
                        *chunk = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                    }
                    Chunk::Data(remaining) => {
                        if rbuf.is_empty() {
                            return Ok(Step::More);
                        }
                        let n = rbuf.len().min(usize::try_from(remaining).unwrap_or(usize::MAX));
                        let left = remaining - n as u64;
                        *chunk = if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) };
                        return Ok(Step::Frame(Frame::data(rbuf.split_to(n).freeze())));
                    }
                    Chunk::DataEnd => {
                        if rbuf.len() < 2 {
                            return Ok(Step::More);
                        }
                        if &rbuf[..2] != b"\r\n" {
                            return Err("a chunk of the response body does not end in CRLF".into());
                        }
                        rbuf.advance(2);
                        *chunk = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        match httparse::parse_headers(rbuf, &mut slots) {
                            Ok(httparse::Status::Complete((len, fields))) => {
                                let mut trailers = HeaderMap::new();
                                for field in fields {
                                    let name = HeaderName::from_bytes(field.name.as_bytes())?;
                                    trailers.append(name, HeaderValue::from_bytes(field.value)?);
                                }
                                rbuf.advance(len);
                                self.framing = Framing::Done;
                                if !trailers.is_empty() {
                                    return Ok(Step::Frame(Frame::trailers(trailers)));
                                }
                            }
                            Ok(httparse::Status::Partial) if rbuf.len() > MAX_TRAILERS => {
                                return Err("the response's trailers are too large".into());
                            }
                            Ok(httparse::Status::Partial) => return Ok(Step::More),
                            Err(e) => return Err(format!("the response's trailers are invalid: {e}").into()),
                        }
                    }
                },
            }
        }
    }

    /// The body has ended: the connection goes back if it may (nothing unasked-for follows).
    fn release(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.rbuf.is_empty() {
                self.idle.lock().push(conn);
            }
        }
    }
}

/// A chunk-size line (RFC 9112 §7.1): hex digits, then optional whitespace and extensions,
/// which are ignored; `None` until the line is complete.
fn chunk_size(rbuf: &mut BytesMut) -> Result<Option<u64>, BoxError> {
    let Some(lf) = rbuf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
        if rbuf.len() >= MAX_CHUNK_LINE {
            return Err("a chunk-size line of the response body is too long".into());
        }
        return Ok(None);
    };
    if lf == 0 || rbuf[lf - 1] != b'\r' {
        return Err("a chunk-size line of the response body does not end in CRLF".into());
    }
    let line = &rbuf[..lf - 1];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest = &line[digits..];
    let rest_ok = rest.iter().all(|&b| b != b'\r' && (b == b'\t' || !b.is_ascii_control()))
        && (rest.is_empty() || rest.trim_ascii_start().first() == Some(&b';'));
    if digits == 0 || digits > 16 || !rest_ok {
        return Err("a chunk-size line of the response body is invalid".into());
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| (n << 4) | u64::from((d as char).to_digit(16).expect("hex")));
    rbuf.advance(lf + 1);
    Ok(Some(size))
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.conn.is_none() {
            return Poll::Ready(None);
        }
        loop {
            match this.step() {
                Ok(Step::Frame(frame)) => {
                    if this.framing == Framing::Length(0) {
                        this.framing = Framing::Done;
                        this.release();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(Step::End) => {
                    this.release();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let conn = this.conn.as_mut().expect("held until the end");
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::Close => {
                    this.framing = Framing::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err("the connection was closed before the response body ended".into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(format!("reading the response body failed: {e}").into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) if self.conn.is_some() => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if self.conn.is_none() || !self.reusable {
            return;
        }
        // Finish from what is buffered; the bytes are discarded.
        loop {
            match self.step() {
                Ok(Step::Frame(_)) => {}
                Ok(Step::End) => return self.release(),
                Ok(Step::More) | Err(_) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Env, Flags};
    use crate::upstream::{SendError, Upstream};
    use http_body_util::BodyExt;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::sync::mpsc;

    /// What the scripted upstream does after reading a request: write these bytes, then
    /// keep the connection or close it.
    struct Reply {
        bytes: &'static [u8],
        close: bool,
    }

    fn keep(bytes: &'static [u8]) -> Reply {
        Reply { bytes, close: false }
    }

    fn close(bytes: &'static [u8]) -> Reply {
        Reply { bytes, close: true }
    }

    /// A raw TCP upstream that answers requests with the replies in order, byte for byte,
    /// and hands the test every request it read (head and body) and its connection count.
    struct Script {
        pool: Upstream,
        addr: std::net::SocketAddr,
        accepted: Arc<AtomicUsize>,
        requests: mpsc::UnboundedReceiver<Vec<u8>>,
    }

    async fn script(replies: Vec<Reply>) -> Script {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        let (tx, requests) = mpsc::unbounded_channel();
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (replies, tx) = (replies.clone(), tx.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(request) = read_request(&mut stream, &mut buf).await {
                        let _ = tx.send(request);
                        let Some(reply) = replies.lock().pop_front() else { return };
                        stream.write_all(reply.bytes).await.unwrap();
                        if reply.close {
                            return;
                        }
                    }
                });
            }
        });
        let mut env = Env::default();
        env.set("PINECONE_CLIENT_ID", "id")
            .set("PINECONE_CLIENT_SECRET", "secret")
            .set("PINECONE_PROXY_UPSTREAM_URL", &format!("http://{addr}"));
        let pool = Upstream::new(&crate::config::load(&Flags::default(), &env).unwrap().upstream).unwrap();
        Script { pool, addr, accepted, requests }
    }

    /// One request from the stream: its head, and its body by `content-length` or chunks.
    async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
        let find = |buf: &[u8], what: &[u8]| buf.windows(what.len()).position(|w| w == what);
        let head = loop {
            if let Some(at) = find(buf, b"\r\n\r\n") {
                break at + 4;
            }
            if stream.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        };
        let text = String::from_utf8_lossy(&buf[..head]).to_lowercase();
        let end = if let Some(at) = text.find("content-length: ") {
            head + text[at + 16..].split("\r\n").next().unwrap().parse::<usize>().unwrap()
        } else if text.contains("transfer-encoding: chunked") {
            loop {
                // The last chunk, then the trailers up to an empty line.
                let last = find(&buf[head..], b"\r\n0\r\n").map(|at| head + at + 3);
                if let Some(end) = last.and_then(|at| find(&buf[at..], b"\r\n\r\n").map(|end| at + end + 4)) {
                    break end;
                }
                if stream.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
        } else {
            head
        };
        while buf.len() < end {
            if stream.read_buf(buf).await.ok()? == 0 {
                return None;
            }
        }
        Some(buf.drain(..end).collect())
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(crate::client::empty()).unwrap()
    }

    /// The response's status, headers and whole body, or the send error's message.
    async fn fetch(pool: &Upstream, request: Request<Body>) -> Result<(Response<()>, Result<Bytes, String>), String> {
        match pool.send(request, TIMEOUT).await {
            Ok(response) => {
                let (parts, body) = response.into_parts();
                let body = body.collect().await.map(|b| b.to_bytes()).map_err(|e| e.to_string());
                Ok((Response::from_parts(parts, ()), body))
            }
            Err(SendError::Unreachable(message)) => Err(message),
            Err(SendError::Timeout) => Err("timeout".into()),
        }
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    #[tokio::test]
    async fn a_chunked_response_is_decoded_and_its_connection_reused() {
        let mut s = script(vec![
            keep(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"),
            keep(OK),
        ])
        .await;
        let (response, body) = fetch(&s.pool, get("/a")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.extensions().get::<hyper::ext::ReasonPhrase>().is_none(), "the canonical reason");
        assert_eq!(body.unwrap(), "hello, world");
        let (_, body) = fetch(&s.pool, get("/b")).await.unwrap();
        assert_eq!(body.unwrap(), "ok");
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1, "one connection for both");
        assert!(s.requests.recv().await.unwrap().starts_with(b"GET /a HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn trailers_after_the_last_chunk_are_a_trailers_frame() {
        let s = script(vec![keep(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n",
        )])
        .await;
        let body = s.pool.send(get("/"), TIMEOUT).await.unwrap().into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(body.to_bytes(), "ok");
    }

    #[tokio::test]
    async fn a_response_without_length_is_read_to_the_close_and_its_connection_not_reused() {
        let s = script(vec![close(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"), keep(OK)]).await;
        let (_, body) = fetch(&s.pool, get("/")).await.unwrap();
        assert_eq!(body.unwrap(), "until the end");
        assert_eq!(fetch(&s.pool, get("/")).await.unwrap().1.unwrap(), "ok");
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn content_length_beside_transfer_encoding_is_dropped_and_the_connection_not_reused() {
        // Framed by the chunks (RFC 9112 §6.3); the 100 would have split the response.
        let s = script(vec![
            keep(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"),
            keep(OK),
        ])
        .await;
        let (response, body) = fetch(&s.pool, get("/")).await.unwrap();
        assert!(response.headers().get(header::CONTENT_LENGTH).is_none());
        assert_eq!(body.unwrap(), "ok");
        fetch(&s.pool, get("/")).await.unwrap().1.unwrap();
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2, "not reused after a doubly framed response");
    }

    #[tokio::test]
    async fn bytes_after_a_response_close_its_connection() {
        // What follows the 2 bytes is no response to anything sent: the connection is not
        // reused, so it can never be read as the next request's response.
        let s = script(vec![
            keep(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 204 No Content\r\n\r\n"),
            keep(OK),
        ])
        .await;
        assert_eq!(fetch(&s.pool, get("/")).await.unwrap().1.unwrap(), "ok");
        let (response, body) = fetch(&s.pool, get("/")).await.unwrap();
        assert_eq!((response.status(), body.unwrap()), (StatusCode::OK, Bytes::from("ok")));
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn malformed_responses_are_errors_that_say_what_is_wrong() {
        for (reply, expected) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"[..], "content-length is invalid"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\n", "content-length is invalid"),
            (b"HTTP/1.1 200 OK\r\nfolded: a\r\n b\r\n\r\n", "response head is invalid"),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "switched protocols"),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "response head is invalid"),
            (b"not http\r\n\r\n", "response head is invalid"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n", "closed before a response"),
        ] {
            let s = script(vec![close(reply)]).await;
            let error = fetch(&s.pool, get("/")).await.map(|_| ()).unwrap_err();
            assert!(error.contains(expected), "{error:?} should say {expected:?}");
        }
    }

    #[tokio::test]
    async fn malformed_bodies_fail_the_body() {
        for (reply, expected) in [
            (
                &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"[..],
                "chunk-size line of the response body is invalid",
            ),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n11111111111111111\r\n", "is invalid"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n", "does not end in CRLF"),
            (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokk\r\n0\r\n\r\n", "does not end in CRLF"),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", "closed before the response body ended"),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n",
                "closed before the response body ended",
            ),
        ] {
            let s = script(vec![close(reply)]).await;
            let (_, body) = fetch(&s.pool, get("/")).await.unwrap();
            let error = body.unwrap_err();
            assert!(error.contains(expected), "{error:?} should say {expected:?}");
        }
    }

    #[tokio::test]
    async fn a_head_too_large_is_refused() {
        let mut big = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        big.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
        let s = script(vec![keep(big.leak())]).await;
        let error = fetch(&s.pool, get("/")).await.map(|_| ()).unwrap_err();
        assert!(error.contains("larger than 64 KiB"), "{error}");
    }

    #[tokio::test]
    async fn interim_responses_are_skipped_and_bodiless_responses_end_at_their_head() {
        let s = script(vec![
            keep(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
            // A HEAD response's content-length is the GET's, with no body.
            keep(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"),
            keep(b"HTTP/1.1 204 Nothing Here\r\nx-empty:\r\n\r\n"),
            keep(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 1000\r\n\r\n"),
            keep(OK),
        ])
        .await;
        assert_eq!(fetch(&s.pool, get("/")).await.unwrap().1.unwrap(), "ok");
        let head = Request::head("/").body(crate::client::empty()).unwrap();
        let (response, body) = fetch(&s.pool, head).await.unwrap();
        assert_eq!(
            (response.headers()[header::CONTENT_LENGTH].as_bytes(), body.unwrap()),
            (&b"1000"[..], Bytes::new())
        );
        let (response, _) = fetch(&s.pool, get("/")).await.unwrap();
        assert_eq!(
            (response.status(), &response.headers()["x-empty"]),
            (StatusCode::NO_CONTENT, &HeaderValue::from_static(""))
        );
        let reason = response.extensions().get::<hyper::ext::ReasonPhrase>().unwrap();
        assert_eq!(reason.as_bytes(), b"Nothing Here");
        assert_eq!(fetch(&s.pool, get("/")).await.unwrap().0.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(fetch(&s.pool, get("/")).await.unwrap().1.unwrap(), "ok");
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1, "all on one connection");
    }

    #[tokio::test]
    async fn requests_are_framed_by_their_length_or_by_chunks() {
        let mut s = script(vec![keep(OK), keep(OK), keep(OK), keep(OK)]).await;
        // No body: no framing header. The request's own Host is replaced.
        let mut request = get("/p?q=1");
        request.headers_mut().insert(header::HOST, HeaderValue::from_static("client.example"));
        request.headers_mut().insert("x-one", HeaderValue::from_static("1"));
        fetch(&s.pool, request).await.unwrap().1.unwrap();
        let sent = String::from_utf8(s.requests.recv().await.unwrap()).unwrap();
        let host = format!("host: {}\r\n", s.addr);
        assert!(sent.starts_with(&format!("GET /p?q=1 HTTP/1.1\r\n{host}")), "{sent}");
        assert!(sent.ends_with("x-one: 1\r\n\r\n") && !sent.contains("client.example"), "{sent}");
        assert!(!sent.contains("content-length") && !sent.contains("transfer-encoding"), "{sent}");

        // A body of known length: content-length.
        let request = Request::post("/").body(crate::client::full("hello")).unwrap();
        fetch(&s.pool, request).await.unwrap().1.unwrap();
        let sent = String::from_utf8(s.requests.recv().await.unwrap()).unwrap();
        assert!(sent.ends_with("content-length: 5\r\n\r\nhello"), "{sent}");

        // A streamed body of unknown length: chunked, with the client's frames as chunks.
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        let request = Request::post("/").body(body.boxed_unsync()).unwrap();
        let sending = tokio::spawn(async move {
            tx.send_data(Bytes::from("abc")).await.unwrap();
            tx.send_data(Bytes::from("defghijklmnopq")).await.unwrap();
            let mut trailers = HeaderMap::new();
            trailers.insert("x-checksum", HeaderValue::from_static("abc"));
            trailers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
            tx.send_trailers(trailers).await.unwrap();
        });
        fetch(&s.pool, request).await.unwrap().1.unwrap();
        sending.await.unwrap();
        let sent = String::from_utf8(s.requests.recv().await.unwrap()).unwrap();
        assert!(
            sent.ends_with(
                "transfer-encoding: chunked\r\n\r\n3\r\nabc\r\ne\r\ndefghijklmnopq\r\n0\r\nx-checksum: abc\r\n\r\n"
            ),
            "{sent}"
        );

        // A body longer than the content-length it came with: refused, nothing sent on.
        let mut request = Request::post("/").body(crate::client::full("too long")).unwrap();
        request.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        let error = fetch(&s.pool, request).await.map(|_| ()).unwrap_err();
        assert!(error.contains("longer than its content-length"), "{error}");
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_early_response_is_forwarded_while_the_body_is_still_coming() {
        let s =
            script(vec![close(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")])
                .await;
        // The scripted upstream answers once it has read a head; this body never ends.
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(1);
        let mut request = Request::post("/").body(body.boxed_unsync()).unwrap();
        request.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        tx.send_data(Bytes::new()).await.unwrap();
        let response = s.pool.send(request, TIMEOUT).await.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        drop(tx);
    }

    #[tokio::test]
    async fn a_request_the_upstream_dropped_unanswered_is_sent_again_only_if_safe() {
        // The connection's first request is answered; the second is read and the connection
        // closed without an answer, as a server closing an idle connection does.
        let s = script(vec![keep(OK), Reply { bytes: b"", close: true }, keep(OK)]).await;
        fetch(&s.pool, get("/")).await.unwrap().1.unwrap();
        let (_, body) = fetch(&s.pool, get("/again")).await.unwrap();
        assert_eq!(body.unwrap(), "ok", "a GET is sent again on a new connection");
        assert_eq!(s.accepted.load(Ordering::SeqCst), 2);

        let s = script(vec![keep(OK), Reply { bytes: b"", close: true }, keep(OK)]).await;
        fetch(&s.pool, get("/")).await.unwrap().1.unwrap();
        let post = Request::post("/projects").body(crate::client::empty()).unwrap();
        let error = fetch(&s.pool, post).await.map(|_| ()).unwrap_err();
        assert!(error.contains("closed before a response"), "{error}");
        assert_eq!(s.accepted.load(Ordering::SeqCst), 1, "a POST that may have been acted on is not sent again");
    }

    #[tokio::test]
    async fn debug_output_never_shows_the_request_bytes() {
        let tcp = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            TcpStream::connect(listener.local_addr().unwrap()).await.unwrap()
        };
        let mut request = get("/");
        request.headers_mut().insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer the-token"));
        let out = Outgoing::encode(request, &HeaderValue::from_static("upstream"), Vec::new()).unwrap();
        assert!(String::from_utf8_lossy(&out.bytes).contains("the-token"), "the request carries it");
        let exchange = Exchange::new(Conn::new(Io::Tcp(tcp), Instant::now()), out);
        let shown = format!("{exchange:?}");
        assert!(!shown.contains("the-token") && !shown.contains("116, 104, 101"), "{shown}");
    }

    #[test]
    fn content_length_must_be_one_number() {
        let of = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CONTENT_LENGTH, HeaderValue::from_str(v).unwrap());
            }
            content_length(&h)
        };
        assert_eq!(of(&[]), Ok(None));
        assert_eq!(of(&["42"]), Ok(Some(42)));
        assert_eq!(of(&["42", "42"]), Ok(Some(42)));
        assert_eq!(of(&["42, 42"]), Ok(Some(42)));
        assert_eq!(of(&["42", "43"]), Err(()));
        assert_eq!(of(&["+42"]), Err(()));
        assert_eq!(of(&["-1"]), Err(()));
        assert_eq!(of(&["0x10"]), Err(()));
        assert_eq!(of(&[""]), Err(()));
        assert_eq!(of(&["99999999999999999999"]), Err(()));
    }
}
