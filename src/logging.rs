//! Log output: text (`key=value`) or JSON, one event a line on standard error, with a
//! timestamp whose date and time of day are formatted once a second.
//!
//! The access line is written for every request, so its cost is the request path's.
//! Callgrind put it at about 7,000 instructions a request through tracing-subscriber's
//! field visitors, so it is formatted here by hand, byte for byte as tracing-subscriber
//! would write it (a test holds the two to the same output); with no logger of ours
//! installed (the library inside someone else's program) it is an ordinary `tracing` event.
//!
//! Lines logged on a runtime thread are gathered in one buffer and written with one
//! `write(2)` when a runtime thread is about to go idle (tokio's `on_thread_park`), or when
//! 32 KiB have gathered: under load, one system call carries many lines instead of one a
//! request; at rest, a line is written as soon as the request that caused it is done.
//! Other threads, and a runtime thread before its first park, write what was gathered and
//! their line at once, so that lines keep the order in which they were logged.
//! What is logged, and that secrets never are, is the business of the code that logs.

use crate::config::{LogConfig, LogFormat};
use parking_lot::Mutex;
use std::cell::{Cell, RefCell};
use std::fmt::{self, Write as _};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing_subscriber::field::MakeExt;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

/// The target of the access lines, for filters such as `pinecone_admin_proxy::access=off`.
pub const ACCESS_TARGET: &str = "pinecone_admin_proxy::access";

/// Gathered lines beyond this are written at once: a bound on the memory and on how late a
/// line can be on a thread that stays busy.
const BUFFER_LIMIT: usize = 32 * 1024;

/// The format our subscriber writes, once `init` installed it.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Installs the global subscriber. Call once, from `main`.
pub fn init(config: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::builder().parse_lossy(&config.level);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(Stderr).with_timer(CachedSecondTime);
    match config.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.with_ansi(false).fmt_fields(text_fields()).init(),
    }
    let _ = FORMAT.set(config.format);
}

/// `key=value` fields, values as `Debug` writes them, the message bare.
fn text_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static {
    tracing_subscriber::fmt::format::debug_fn(|w, field, value| {
        if field.name() == "message" { write!(w, "{value:?}") } else { write!(w, "{field}={value:?}") }
    })
    .delimited(" ")
}

/// Runtime hooks that let the runtime's threads gather lines between parks.
pub fn runtime_hooks(builder: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    builder.on_thread_park(flush).on_thread_unpark(|| GATHERING.set(true)).on_thread_stop(|| {
        GATHERING.set(false);
        flush();
    })
}

/// Writes the lines gathered so far. Called when a runtime thread is about to park; call it
/// before writing to standard error by other means, and from a panic hook, so that lines
/// keep their order.
pub fn flush() {
    write_pending(&mut PENDING.lock());
}

/// Lines gathered from every thread, in the order they were logged (one buffer, not one
/// per thread: with several runtime threads, per-thread buffers written at each thread's
/// park would reorder lines across threads).
static PENDING: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// `flush` for a panic hook: a panic on the thread that holds the buffer must not deadlock.
pub fn flush_unless_busy() {
    if let Some(mut pending) = PENDING.try_lock() {
        write_pending(&mut pending);
    }
}

fn write_pending(pending: &mut Vec<u8>) {
    if !pending.is_empty() {
        write_out(pending);
        pending.clear();
    }
}

thread_local! {
    /// Set on a runtime thread once it has come back from a park: it will call `flush`
    /// before it parks again.
    static GATHERING: Cell<bool> = const { Cell::new(false) };
}

/// Writes one line (or several): gathered on a runtime thread, at once (after what was
/// gathered) elsewhere.
fn emit(line: &[u8]) {
    let gathering = GATHERING.try_with(Cell::get).unwrap_or(false);
    let mut pending = PENDING.lock();
    if gathering && pending.len() + line.len() <= BUFFER_LIMIT {
        pending.extend_from_slice(line);
        return;
    }
    write_pending(&mut pending);
    if gathering && line.len() <= BUFFER_LIMIT {
        pending.extend_from_slice(line);
    } else {
        write_out(line);
    }
}

/// One `write(2)` to standard error (more if it writes only a part).
#[cfg(not(test))]
fn write_out(bytes: &[u8]) {
    use std::io::Write as _;
    let _ = std::io::stderr().lock().write_all(bytes);
}

#[cfg(test)]
thread_local! {
    /// What this thread wrote, each write apart.
    static WRITTEN: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
fn write_out(bytes: &[u8]) {
    WRITTEN.with(|w| w.borrow_mut().push(bytes.to_vec()));
}

/// tracing-subscriber's writer: each event arrives as one `write_all` of a whole line.
#[derive(Debug, Clone, Copy)]
struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        emit(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Stderr {
        Stderr
    }
}

/// What the access line says of a request.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub upstream_status: Option<u16>,
    pub duration: Duration,
    /// The fingerprint of the token the request was sent with.
    pub token: Option<&'a str>,
    pub error: Option<&'a str>,
    pub replayed: bool,
}

impl Access<'_> {
    /// Logs the access line at `info` on `ACCESS_TARGET`.
    pub fn log(&self) {
        if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
            return;
        }
        match FORMAT.get() {
            Some(format) => LINE.with(|line| {
                let Ok(mut line) = line.try_borrow_mut() else { return self.event() };
                line.0.clear();
                self.format(*format, SystemTime::now(), &mut line);
                emit(&line.0);
            }),
            None => self.event(),
        }
    }

    /// The same line through `tracing`, for a subscriber that is not ours.
    fn event(&self) {
        tracing::info!(
            target: ACCESS_TARGET,
            method = %self.method,
            path = %self.path,
            status = self.status,
            upstream_status = self.upstream_status,
            duration_ms = %Millis(self.duration),
            token = self.token,
            error = self.error,
            replayed = self.replayed,
            "request",
        );
    }

    /// The line tracing-subscriber would write for `event`, with `now` as its timestamp.
    fn format(&self, format: LogFormat, now: SystemTime, out: &mut Line) {
        let _ = match format {
            LogFormat::Text => self.text(now, out),
            LogFormat::Json => self.json(now, out),
        };
    }

    fn text(&self, now: SystemTime, out: &mut Line) -> fmt::Result {
        timestamp(now, out)?;
        out.push_str("  INFO ");
        out.push_str(ACCESS_TARGET);
        out.push_str(": request method=");
        out.push_str(self.method);
        out.push_str(" path=");
        out.push_str(self.path);
        out.push_str(" status=");
        push_u64(out, self.status.into());
        if let Some(status) = self.upstream_status {
            out.push_str(" upstream_status=");
            push_u64(out, status.into());
        }
        out.push_str(" duration_ms=");
        Millis(self.duration).push(out);
        if let Some(token) = self.token {
            out.push_str(" token=");
            debug_str(out, token)?;
        }
        if let Some(error) = self.error {
            out.push_str(" error=");
            debug_str(out, error)?;
        }
        out.push_str(if self.replayed { " replayed=true\n" } else { " replayed=false\n" });
        Ok(())
    }

    fn json(&self, now: SystemTime, out: &mut Line) -> fmt::Result {
        out.push_str("{\"timestamp\":\"");
        timestamp(now, out)?;
        out.push_str("\",\"level\":\"INFO\",\"message\":\"request\",\"method\":");
        json_str(out, self.method);
        out.push_str(",\"path\":");
        json_str(out, self.path);
        out.push_str(",\"status\":");
        push_u64(out, self.status.into());
        if let Some(status) = self.upstream_status {
            out.push_str(",\"upstream_status\":");
            push_u64(out, status.into());
        }
        out.push_str(",\"duration_ms\":\"");
        Millis(self.duration).push(out);
        out.push('"');
        if let Some(token) = self.token {
            out.push_str(",\"token\":");
            json_str(out, token);
        }
        if let Some(error) = self.error {
            out.push_str(",\"error\":");
            json_str(out, error);
        }
        out.push_str(if self.replayed { ",\"replayed\":true" } else { ",\"replayed\":false" });
        out.push_str(",\"target\":\"");
        out.push_str(ACCESS_TARGET);
        out.push_str("\"}\n");
        Ok(())
    }
}

thread_local! {
    static LINE: RefCell<Line> = const { RefCell::new(Line(Vec::new())) };
}

/// A line being built, as bytes: what is pushed is `str`, so it stays UTF-8 without being
/// checked again.
struct Line(Vec<u8>);

impl Line {
    fn push_str(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    fn push(&mut self, c: char) {
        self.push_str(c.encode_utf8(&mut [0; 4]));
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

/// A duration in milliseconds with three decimals, rounded to the microsecond.
struct Millis(Duration);

impl Millis {
    fn push(&self, out: &mut Line) {
        let micros = (self.0.as_nanos() + 500) / 1000;
        push_u64(out, u64::try_from(micros / 1000).unwrap_or(u64::MAX));
        let frac = (micros % 1000) as u16;
        out.push('.');
        out.push(char::from(b'0' + (frac / 100) as u8));
        out.push(char::from(b'0' + (frac / 10 % 10) as u8));
        out.push(char::from(b'0' + (frac % 10) as u8));
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = Line(Vec::with_capacity(24));
        self.push(&mut line);
        f.write_str(std::str::from_utf8(&line.0).map_err(|_| fmt::Error)?)
    }
}

fn push_u64(out: &mut Line, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.0.extend_from_slice(&digits[at..]);
}

/// A string as `Debug` writes it, without the formatting machinery when nothing needs
/// escaping.
fn debug_str(out: &mut Line, s: &str) -> fmt::Result {
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\' && b != b'\'') {
        out.push('"');
        out.push_str(s);
        out.push('"');
        Ok(())
    } else {
        write!(out, "{s:?}")
    }
}

/// A string as serde_json writes it.
fn json_str(out: &mut Line, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else if let Ok(quoted) = serde_json::to_string(s) {
        out.push_str(&quoted);
    }
}

/// `2026-11-29T07:00:00.123456Z`, as tracing-subscriber writes it, with the part up to
/// the seconds formatted once per second per thread.
#[derive(Debug, Clone, Copy)]
pub struct CachedSecondTime;

thread_local! {
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

fn timestamp(now: SystemTime, w: &mut impl fmt::Write) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    SECOND.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != since.as_secs() {
            let mut text = crate::timefmt::rfc3339(now);
            text.pop(); // the `Z`, written after the fraction
            *cache = (since.as_secs(), text);
        }
        let mut micros = since.subsec_micros();
        let mut digits = [b'0'; 6];
        for d in digits.iter_mut().rev() {
            *d += (micros % 10) as u8;
            micros /= 10;
        }
        w.write_str(&cache.1)?;
        w.write_char('.')?;
        w.write_str(std::str::from_utf8(&digits).unwrap_or("000000"))?;
        w.write_char('Z')
    })
}

impl FormatTime for CachedSecondTime {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        timestamp(SystemTime::now(), w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

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
        let at = UNIX_EPOCH + Duration::from_micros(1_795_935_600_000_042);
        let mut s = String::new();
        timestamp(at, &mut s).unwrap();
        assert_eq!(s, "2026-11-29T07:00:00.000042Z");
    }

    #[test]
    fn millis_round_to_the_microsecond() {
        let ms = |nanos| Millis(Duration::from_nanos(nanos)).to_string();
        assert_eq!(ms(0), "0.000");
        assert_eq!(ms(332_499), "0.332");
        assert_eq!(ms(332_500), "0.333");
        assert_eq!(ms(1_000_000), "1.000");
        assert_eq!(ms(12_345_678_900), "12345.679");
    }

    /// Captures what a subscriber writes.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    /// The hand-written line is the line tracing-subscriber writes for the same event
    /// with the subscriber `init` installs, but for the timestamp.
    #[test]
    fn the_access_line_is_the_one_tracing_subscriber_writes() {
        let cases = [
            Access {
                method: "GET",
                path: "/admin/projects",
                status: 200,
                upstream_status: Some(200),
                duration: Duration::from_micros(590),
                token: Some("02b2572ba5e0f971"),
                error: None,
                replayed: false,
            },
            Access {
                method: "PATCH",
                path: "/admin/projects/a\"b\\c/d\u{e9}",
                status: 503,
                upstream_status: None,
                duration: Duration::from_nanos(12_345_678_901),
                token: None,
                error: Some("token_unavailable"),
                replayed: true,
            },
            Access {
                method: "X-ODD'ONE",
                path: "/",
                status: 401,
                upstream_status: Some(401),
                duration: Duration::from_nanos(1),
                token: Some("it's \"quoted\"\n"),
                error: Some("tab\there"),
                replayed: true,
            },
        ];
        for format in [LogFormat::Text, LogFormat::Json] {
            for access in &cases {
                let capture = Capture::default();
                let builder = tracing_subscriber::fmt().with_writer(capture.clone()).with_timer(CachedSecondTime);
                let dispatch = match format {
                    LogFormat::Json => {
                        tracing::Dispatch::new(builder.json().flatten_event(true).with_current_span(false).finish())
                    }
                    LogFormat::Text => {
                        tracing::Dispatch::new(builder.with_ansi(false).fmt_fields(text_fields()).finish())
                    }
                };
                tracing::dispatcher::with_default(&dispatch, || access.event());
                let theirs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
                let mut line = Line(Vec::new());
                access.format(format, SystemTime::now(), &mut line);
                let ours = String::from_utf8(line.0).unwrap();
                // The timestamps differ; everything after them must not.
                let skip = |s: &str| s.find("Z\"").or_else(|| s.find("Z ")).map(|i| s[i..].to_owned()).unwrap();
                assert_eq!(skip(&ours), skip(&theirs), "{format:?}");
                assert!(ours.ends_with('\n') && ours.matches('\n').count() == 1, "{ours}");
                if format == LogFormat::Json {
                    let v: serde_json::Value = serde_json::from_str(&ours).unwrap();
                    assert_eq!(v["path"], access.path);
                }
            }
        }
    }

    #[test]
    fn lines_gathered_on_a_parking_thread_are_written_in_order_at_the_park() {
        // A thread of our own, so that what it writes is recorded apart.
        std::thread::spawn(|| {
            let written = || WRITTEN.with(|w| w.borrow_mut().drain(..).collect::<Vec<_>>());
            emit(b"zero\n");
            assert_eq!(written(), [b"zero\n".to_vec()], "before its first park a thread writes at once");
            GATHERING.set(true);
            emit(b"one\n");
            emit(b"two\n");
            assert!(written().is_empty());
            let big = vec![b'x'; BUFFER_LIMIT + 1];
            emit(&big);
            assert_eq!(written(), [b"one\ntwo\n".to_vec(), big], "gathered lines go first, then the oversized one");
            emit(b"three\n");
            emit(&[b'y'; BUFFER_LIMIT - 5]);
            assert_eq!(written(), [b"three\n".to_vec()], "a full buffer is written before it grows past the limit");
            flush();
            assert_eq!(written(), [vec![b'y'; BUFFER_LIMIT - 5]]);
            flush();
            assert!(written().is_empty(), "an empty buffer writes nothing");
            // Another thread's line goes after what this one gathered: one order for all.
            emit(b"four\n");
            std::thread::spawn(|| {
                emit(b"five\n");
                let written = WRITTEN.with(|w| w.borrow_mut().drain(..).collect::<Vec<_>>());
                assert_eq!(written, [b"four\n".to_vec(), b"five\n".to_vec()]);
            })
            .join()
            .unwrap();
            assert!(written().is_empty());
            // A panic while the buffer is held: the hook's flush gives way instead of hanging.
            emit(b"six\n");
            let held = PENDING.lock();
            flush_unless_busy();
            drop(held);
            assert!(written().is_empty());
            flush_unless_busy();
            assert_eq!(written(), [b"six\n".to_vec()]);
        })
        .join()
        .unwrap();
    }
}
