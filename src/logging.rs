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

/// `key=value` fields that split as logfmt, the message bare: a value is written as `Debug`
/// writes it (tracing's `%` fields as `Display` does), and quoted (`"`, with `"` and `\`
/// escaped) when it holds a space, a `=`, a quote or a control character and is not quoted
/// already. Without tracing-subscriber's default's cost of styling every field name (about a
/// third of the access line's instructions, measured with bench/profile, even with colours
/// off); each value goes through one reused buffer, not an allocation.
fn text_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        if field.name() == "message" {
            return write!(w, "{value:?}");
        }
        VALUE.with_borrow_mut(|text| {
            text.clear();
            let _ = std::fmt::Write::write_fmt(text, format_args!("{value:?}"));
            if needs_quotes(text) {
                write!(w, "{field}=\"")?;
                for c in text.chars() {
                    match c {
                        '"' | '\\' => write!(w, "\\{c}")?,
                        c if c.is_control() => write!(w, "{}", c.escape_default())?,
                        c => write!(w, "{c}")?,
                    }
                }
                write!(w, "\"")
            } else {
                write!(w, "{field}={text}")
            }
        })
    })
    .delimited(" ")
}

thread_local! {
    /// The buffer each field's value is written into before it is judged.
    static VALUE: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Whether a field's text must be quoted to split as logfmt: it holds a space, a `=`, a
/// quote or a control character, and is not a `Debug` string (quoted, with its inner quotes
/// escaped) already; or it is empty.
fn needs_quotes(text: &str) -> bool {
    let quoted = text.len() >= 2 && text.starts_with('"') && text.ends_with('"');
    !quoted && (text.is_empty() || text.chars().any(|c| c == ' ' || c == '=' || c == '"' || c.is_control()))
}

/// A duration as people read it in a log line, without spaces: `250ms`, `1.3s`, `4m10s`,
/// `2h5m`, `3d4h`; rounded to what matters at its size (never nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Human(pub std::time::Duration);

impl std::fmt::Display for Human {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        let secs = self.0.as_secs();
        let pair = |f: &mut std::fmt::Formatter<'_>, big: u64, bu: &str, small: u64, su: &str| {
            if small == 0 { write!(f, "{big}{bu}") } else { write!(f, "{big}{bu}{small}{su}") }
        };
        match secs {
            _ if ms < 1000 => write!(f, "{ms}ms"),
            0..60 => {
                let tenths = (ms + 50) / 100;
                if tenths.is_multiple_of(10) {
                    write!(f, "{}s", tenths / 10)
                } else {
                    write!(f, "{}.{}s", tenths / 10, tenths % 10)
                }
            }
            60..3600 => pair(f, secs / 60, "m", secs % 60, "s"),
            3600..86_400 => pair(f, secs / 3600, "h", secs % 3600 / 60, "m"),
            _ => pair(f, secs / 86_400, "d", secs % 86_400 / 3600, "h"),
        }
    }
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

    #[test]
    fn durations_read_as_people_write_them() {
        let d = std::time::Duration::from_millis;
        for (ms, text) in [
            (0, "0ms"),
            (250, "250ms"),
            (999, "999ms"),
            (1000, "1s"),
            (1_340, "1.3s"),
            (59_960, "60s"),
            (60_000, "1m"),
            (250_400, "4m10s"),
            (3_600_000, "1h"),
            (7_500_000, "2h5m"),
            (86_400_000, "1d"),
            (273_600_000, "3d4h"),
        ] {
            assert_eq!(Human(d(ms)).to_string(), text, "{ms} ms");
        }
        assert_eq!(Human(std::time::Duration::from_nanos(1_234_567_891)).to_string(), "1.2s", "never nanoseconds");
    }

    #[test]
    fn values_with_spaces_or_quotes_are_quoted_and_others_are_not() {
        assert!(!needs_quotes("GET") && !needs_quotes("/admin/projects") && !needs_quotes("\"a b\""));
        assert!(
            needs_quotes("a b")
                && needs_quotes("k=v")
                && needs_quotes("a\"b")
                && needs_quotes("")
                && needs_quotes("a\nb")
        );
    }

    /// The text fields split as logfmt: every value that holds a space or a quote is quoted,
    /// for every kind of field the access line has and for an error message.
    #[test]
    fn text_fields_split_as_logfmt() {
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
                    cause = %"cannot reach it: refused",
                    "request",
                );
            });
            String::from_utf8(capture.0.lock().clone()).unwrap()
        };
        let ours = line(true);
        assert!(
            ours.contains(r#" path="/admin/projects?x=\"y\"" status=200 upstream_status=201 duration_ms=0.59"#),
            "{ours}"
        );
        assert!(ours.contains(r#" method=GET "#) && ours.contains(r#"cause="cannot reach it: refused""#), "{ours}");
        // Fields are what the default writes, but for the quotes.
        let default = line(false);
        assert_eq!(ours.replace(['"', '\\'], ""), default.replace(['"', '\\'], ""));
    }
}
