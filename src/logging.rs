//! Log output: tracing-subscriber's formatter, text or one JSON object a line, on standard
//! error, through tracing-appender's non-blocking writer.
//!
//! Why non-blocking: the access line is logged for every request, and writing it on the
//! request's thread was one `write(2)` per request. Lines now go to tracing-appender's
//! worker thread, which writes everything queued with one system call (a `BufWriter`
//! flushed each time the queue runs empty), so a line waits only while others are being
//! written. The queue is not lossy: when it is full, logging waits rather than drops
//! lines. It holds [`QUEUED_LINES`] at most (tracing-appender's default, 128,000, would let
//! a stalled reader of standard error hold tens of MiB of lines in a sidecar with 64 MiB). [`init`] returns the guard that `main` holds: dropping it writes what is queued,
//! at a clean exit and when a panic unwinds `main`. What is logged, and that secrets never
//! are, is the business of the code that logs.

use crate::config::{LogConfig, LogFormat};
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// The target of the access lines, for filters such as `pinecone_admin_proxy::access=off`.
pub const ACCESS_TARGET: &str = "pinecone_admin_proxy::access";

/// The most lines queued for the writer: about 1 MiB of access lines, and many seconds of
/// them at the request rates of an Admin API.
pub const QUEUED_LINES: usize = 4096;

/// Installs the global subscriber. Call once, from `main`, and hold the guard until the
/// process ends. The filter was checked when the configuration was loaded.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(config: &LogConfig) -> WorkerGuard {
    let filter = EnvFilter::builder().parse_lossy(&config.level);
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("pinecone-admin-proxy-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    match config.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    guard
}
