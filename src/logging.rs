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
/// The target of the audit lines (every request that changes something, PRODUCT.md
/// "Policy"), at `info`: `log.level = "warn,pinecone_admin_proxy::audit=info"` keeps them
/// alone.
pub const AUDIT_TARGET: &str = "pinecone_admin_proxy::audit";

/// `key=value` fields, values as `Debug` writes them, the message bare: what
/// tracing-subscriber's default writes without colours, without its default's cost of
/// styling every field name (about a third of the access line's instructions, measured
/// with bench/profile, even with colours off).
fn text_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        if field.name() == "message" { write!(w, "{value:?}") } else { write!(w, "{field}={value:?}") }
    })
    .delimited(" ")
}

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
        LogFormat::Text => builder.with_ansi(false).fmt_fields(text_fields()).init(),
    }
    guard
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The text fields are the ones tracing-subscriber's default writes without colours,
    /// for every kind of field the access line has.
    #[test]
    fn text_fields_are_the_default_ones_without_colours() {
        let line = |cheap: bool| {
            let capture = Capture::default();
            let writer = capture.clone();
            let builder = tracing_subscriber::fmt().without_time().with_ansi(false).with_writer(move || writer.clone());
            let dispatch = match cheap {
                true => tracing::Dispatch::new(builder.fmt_fields(text_fields()).finish()),
                false => tracing::Dispatch::new(builder.finish()),
            };
            tracing::dispatcher::with_default(&dispatch, || {
                let none: Option<&str> = None;
                tracing::info!(
                    target: ACCESS_TARGET,
                    method = %"GET",
                    path = %"/admin/projects?x=\"y\"",
                    status = 200u16,
                    upstream_status = Some(201u16),
                    duration_ms = 0.59,
                    token = Some("02b2572ba5e0f971"),
                    error = none,
                    replayed = false,
                    "request",
                );
            });
            String::from_utf8(capture.0.lock().clone()).unwrap()
        };
        let ours = line(true);
        assert!(
            ours.contains(" path=/admin/projects?x=\"y\" status=200 upstream_status=201 duration_ms=0.59"),
            "{ours}"
        );
        assert_eq!(ours, line(false));
    }
}
