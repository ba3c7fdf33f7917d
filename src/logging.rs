//! Log output: tracing-subscriber's formatter, text or one JSON object a line, on standard
//! error. Each event is one `write(2)` of a whole line, so lines from several threads never
//! interleave and none is held back at an exit or a panic. What is logged, and that secrets
//! never are, is the business of the code that logs.

use crate::config::{LogConfig, LogFormat};
use tracing_subscriber::EnvFilter;

/// The target of the access lines, for filters such as `pinecone_admin_proxy::access=off`.
pub const ACCESS_TARGET: &str = "pinecone_admin_proxy::access";

/// Installs the global subscriber. Call once, from `main`. The filter was checked when the
/// configuration was loaded.
pub fn init(config: &LogConfig) {
    let filter = EnvFilter::builder().parse_lossy(&config.level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}
