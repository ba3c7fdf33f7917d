//! Log output: text (`key=value`) or JSON, one event a line on standard error, with a
//! timestamp whose date and time of day are formatted once a second.
//!
//! The access line is written for every request, so its cost is the request path's:
//! callgrind showed the default field formatter (which styles every field name through
//! nu-ansi-term even with colours off) and the per-event calendar arithmetic at about a
//! tenth of the instructions per proxied request. What is logged, and that secrets never
//! are, is the business of the code that logs.

use crate::config::{LogConfig, LogFormat};
use std::cell::RefCell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// Installs the global subscriber. Call once, from `main`.
pub fn init(config: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::builder().parse_lossy(&config.level);
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_timer(CachedSecondTime);
    match config.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder
            .with_ansi(false)
            .fmt_fields(
                tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
                    if field.name() == "message" { write!(w, "{value:?}") } else { write!(w, "{field}={value:?}") }
                })
                .delimited(" "),
            )
            .init(),
    }
}

/// `2026-11-29T07:00:00.123456Z`, as tracing-subscriber writes it, with the part up to
/// the seconds formatted once per second per thread.
#[derive(Debug, Clone, Copy)]
pub struct CachedSecondTime;

thread_local! {
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for CachedSecondTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        let now = SystemTime::now();
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        SECOND.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.0 != since.as_secs() {
                let mut text = crate::timefmt::rfc3339(now);
                text.pop(); // the `Z`, written after the fraction
                *cache = (since.as_secs(), text);
            }
            write!(w, "{}.{:06}Z", cache.1, since.subsec_micros())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_time_looks_like_rfc3339_with_micros() {
        let mut s = String::new();
        CachedSecondTime.format_time(&mut Writer::new(&mut s)).unwrap();
        CachedSecondTime.format_time(&mut Writer::new(&mut s)).unwrap();
        let first = &s[..27];
        assert_eq!(first.len(), 27);
        assert_eq!(&first[4..5], "-");
        assert_eq!(&first[10..11], "T");
        assert_eq!(&first[19..20], ".");
        assert!(first.ends_with('Z'));
    }
}
