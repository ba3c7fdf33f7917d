//! Auth0's token quotas, as its token responses report them: the
//! `Auth0-Client-Quota-Limit` header (`b=per_hour;q=10;r=7;t=3540,b=per_day;q=50;r=47;t=43200`:
//! bucket, quota, remaining, seconds to reset) and the rate limit's `x-ratelimit-limit`,
//! `x-ratelimit-remaining` and `x-ratelimit-reset` (a UNIX time), which become the bucket
//! `rate` (PRODUCT.md, "Token economy").
//!
//! [`parse`] is a pure function of the headers and the clock. What it cannot read is
//! ignored, never an error: a quota header is advice, and a garbled one must not stop a
//! token from being used. Nor may a skewed clock or a hostile header hold token requests
//! for hours: an absolute reset is read against the response's own `Date` (the endpoint's
//! clock, not ours), and a reset further off than its bucket's window is cut back to one
//! window and marked `clamped`. A 429's `Retry-After` wins over any reset ([`cap_resets`]). [`Quotas`] keeps the newest reading of each bucket and answers the
//! two questions the refresh loop asks: is a bucket spent (no request before its reset), and
//! is one low (refresh as late as is safe).

use http::{HeaderMap, header};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// The buckets we know, in the order they are shown.
pub const BUCKETS: [&str; 3] = ["per_hour", "per_day", "rate"];

/// The longest a bucket's reset can be away: its window. A reset further off is a skewed
/// clock, a units mix-up or a hostile header, and believing it would stop token requests
/// for longer than the bucket can. Auth0's rate limits on its Authentication API are
/// counted per minute, so `rate` resets within a minute.
pub fn window(bucket: &str) -> Duration {
    match bucket {
        "per_hour" => Duration::from_secs(3600),
        "per_day" => Duration::from_secs(24 * 3600),
        _ => Duration::from_secs(60),
    }
}

/// A bucket is low when at most this fraction of it is left.
pub const LOW_FRACTION: f64 = 0.1;

/// One bucket as one response reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// One of [`BUCKETS`].
    pub name: &'static str,
    pub limit: u64,
    pub remaining: u64,
    /// When the bucket fills again.
    pub reset: SystemTime,
    /// The reported reset was further off than [`window`] and was cut back to it.
    pub clamped: bool,
}

impl Bucket {
    /// A reading whose reset is `ahead` of `now`, at most one window.
    fn new(name: &'static str, limit: u64, remaining: u64, ahead: Duration, now: SystemTime) -> Self {
        let clamped = ahead > window(name);
        Bucket { name, limit, remaining, reset: now + ahead.min(window(name)), clamped }
    }
}

/// Brings every reset forward to `until` at the latest: a 429's `Retry-After` is the
/// endpoint's own word on when to come back, and wins over a bucket's reset.
pub fn cap_resets(readings: &mut [Bucket], until: SystemTime) {
    for bucket in readings {
        bucket.reset = bucket.reset.min(until);
    }
}

/// The buckets that `headers` report, read at `now`. Unreadable parts are left out.
pub fn parse(headers: &HeaderMap, now: SystemTime) -> Vec<Bucket> {
    let mut out = Vec::new();
    for value in headers.get_all("auth0-client-quota-limit") {
        let Ok(text) = value.to_str() else { continue };
        for item in text.split(',') {
            if let Some(bucket) = quota_item(item, now)
                && !out.iter().any(|b: &Bucket| b.name == bucket.name)
            {
                out.push(bucket);
            }
        }
    }
    if let Some(bucket) = rate_limit(headers, now) {
        out.push(bucket);
    }
    out
}

/// `b=per_hour;q=10;r=7;t=3540`.
fn quota_item(item: &str, now: SystemTime) -> Option<Bucket> {
    let (mut name, mut limit, mut remaining, mut reset_in) = (None, None, None, None);
    for field in item.split(';') {
        let (key, value) = field.split_once('=')?;
        let value = value.trim();
        match key.trim() {
            "b" => name = BUCKETS[..2].iter().find(|b| value.eq_ignore_ascii_case(b)).copied(),
            "q" => limit = Some(value.parse::<u64>().ok()?),
            "r" => remaining = Some(value.parse::<u64>().ok()?),
            "t" => reset_in = Some(value.parse::<u64>().ok()?),
            _ => {}
        }
    }
    let (name, limit, remaining, reset_in) = (name?, limit?, remaining?, Duration::from_secs(reset_in?));
    (remaining <= limit).then(|| Bucket::new(name, limit, remaining, reset_in, now))
}

/// `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` (UNIX seconds): all three
/// or nothing. The reset is a time on the endpoint's clock: how far ahead it is comes from
/// the response's `Date` (when it has one), so a clock of ours that is off does not move it.
fn rate_limit(headers: &HeaderMap, now: SystemTime) -> Option<Bucket> {
    let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
    let (limit, remaining, reset) =
        (number("x-ratelimit-limit")?, number("x-ratelimit-remaining")?, number("x-ratelimit-reset")?);
    let reset = UNIX_EPOCH.checked_add(Duration::from_secs(reset))?;
    let their_now = headers
        .get(header::DATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .unwrap_or(now);
    let ahead = reset.duration_since(their_now).unwrap_or(Duration::ZERO);
    (remaining <= limit).then(|| Bucket::new("rate", limit, remaining, ahead, now))
}

/// A bucket and its reset on the monotonic clock.
pub type Timed = (Bucket, Instant);

/// The newest reading of each bucket, each with its reset on the monotonic clock as well
/// (taken when the reading arrived), which is what the refresh loop plans with: a wall clock
/// that jumps must not lift or extend a wait.
#[derive(Debug, Clone, Default)]
pub struct Quotas {
    buckets: Vec<(Bucket, Instant)>,
}

impl Quotas {
    /// Takes a response's readings, read at `now_wall` / `now`; buckets it does not mention
    /// keep their last reading.
    pub fn update(&mut self, readings: &[Bucket], now_wall: SystemTime, now: Instant) {
        for reading in readings {
            let reset_at = now + reading.reset.duration_since(now_wall).unwrap_or_default();
            match self.buckets.iter_mut().find(|(b, _)| b.name == reading.name) {
                Some(entry) => *entry = (*reading, reset_at),
                None => self.buckets.push((*reading, reset_at)),
            }
        }
        self.buckets.sort_by_key(|(b, _)| BUCKETS.iter().position(|n| *n == b.name));
    }

    /// Forgets every reading (the client id changed: its quota is another application's).
    pub fn clear(&mut self) {
        self.buckets.clear();
    }

    /// Each bucket, whether it is spent and whether it is low at `now`.
    pub fn buckets(&self, now: Instant) -> impl Iterator<Item = (Bucket, bool, bool)> + '_ {
        self.buckets.iter().map(move |(b, at)| (*b, b.remaining == 0 && *at > now, low(b) && *at > now))
    }

    /// The spent bucket that resets last, if any, and when: no token request before then.
    pub fn spent(&self, now: Instant) -> Option<Timed> {
        self.buckets.iter().filter(|(b, at)| b.remaining == 0 && *at > now).max_by_key(|(_, at)| *at).copied()
    }

    /// The low bucket that resets first, if any, and when.
    pub fn low(&self, now: Instant) -> Option<Timed> {
        self.buckets.iter().filter(|(b, at)| low(b) && *at > now).min_by_key(|(_, at)| *at).copied()
    }
}

/// Some requests left, but at most a tenth.
fn low(b: &Bucket) -> bool {
    b.remaining > 0 && (b.remaining as f64) <= b.limit as f64 * LOW_FRACTION
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn parse_table() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |s: u64| now + Duration::from_secs(s);
        let b = |name, limit, remaining, reset| Bucket { name, limit, remaining, reset, clamped: false };
        let clamped = |name, limit, remaining, reset| Bucket { name, limit, remaining, reset, clamped: true };
        let (ahead, behind) =
            (httpdate::fmt_http_date(at(7200)), httpdate::fmt_http_date(now - Duration::from_secs(7200)));
        let q = "auth0-client-quota-limit";
        type Case<'a> = (Vec<(&'static str, &'a str)>, Vec<Bucket>);
        let table: Vec<Case> = vec![
            // PRODUCT.md's example: two buckets in one header.
            (
                vec![(q, "b=per_hour;q=10;r=7;t=3540,b=per_day;q=50;r=47;t=43200")],
                vec![b("per_hour", 10, 7, at(3540)), b("per_day", 50, 47, at(43200))],
            ),
            // One bucket; spaces and field order do not matter; names in any case.
            (vec![(q, " t=60 ; r=0 ; q=10 ; b=PER_HOUR ")], vec![b("per_hour", 10, 0, at(60))]),
            // The rate limit headers alone.
            (
                vec![("x-ratelimit-limit", "30"), ("x-ratelimit-remaining", "29"), ("x-ratelimit-reset", "1800000010")],
                vec![b("rate", 30, 29, at(10))],
            ),
            // Both kinds; a reset already past counts as now.
            (
                vec![
                    (q, "b=per_day;q=50;r=0;t=100"),
                    ("x-ratelimit-limit", "30"),
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1799999990"),
                ],
                vec![b("per_day", 50, 0, at(100)), b("rate", 30, 0, now)],
            ),
            // The same bucket twice: the first counts.
            (vec![(q, "b=per_hour;q=10;r=7;t=5"), (q, "b=per_hour;q=10;r=1;t=5")], vec![b("per_hour", 10, 7, at(5))]),
            // Missing fields: that bucket is left out, the others kept.
            (vec![(q, "b=per_hour;q=10;t=5,b=per_day;q=50;r=3;t=9")], vec![b("per_day", 50, 3, at(9))]),
            (vec![(q, "q=10;r=7;t=5")], vec![]),
            (vec![("x-ratelimit-limit", "30"), ("x-ratelimit-reset", "1800000010")], vec![]),
            // Garbage: ignored, never an error.
            (vec![(q, "")], vec![]),
            (vec![(q, ",,;;==")], vec![]),
            (vec![(q, "b=per_hour;q=ten;r=7;t=5")], vec![]),
            (vec![(q, "b=per_hour;q=10;r=-1;t=5")], vec![]),
            (vec![(q, "b=per_week;q=10;r=7;t=5")], vec![]),
            (vec![(q, "b=per_hour;q=10;r=11;t=5")], vec![]), // more left than the quota
            (vec![(q, "b=per_hour;q=10;r=7;t=18446744073709551616")], vec![]), // past u64
            (
                vec![("x-ratelimit-limit", "30"), ("x-ratelimit-remaining", "x"), ("x-ratelimit-reset", "1800000010")],
                vec![],
            ),
            // A reset further off than its bucket's window: cut back to one window, marked.
            (vec![(q, "b=per_hour;q=10;r=0;t=99999999999")], vec![clamped("per_hour", 10, 0, at(3600))]),
            (vec![(q, "b=per_day;q=50;r=0;t=86401")], vec![clamped("per_day", 50, 0, at(86400))]),
            (vec![(q, "b=per_day;q=50;r=0;t=86400")], vec![b("per_day", 50, 0, at(86400))]),
            (
                vec![("x-ratelimit-limit", "30"), ("x-ratelimit-remaining", "3"), ("x-ratelimit-reset", "99999999999")],
                vec![clamped("rate", 30, 3, at(60))],
            ),
            // The absolute reset is read on the endpoint's clock: its Date says 2 hours
            // later than ours, its reset is 10 s after its Date.
            (
                vec![
                    ("x-ratelimit-limit", "30"),
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1800007210"),
                    ("date", &ahead),
                ],
                vec![b("rate", 30, 0, at(10))],
            ),
            // An endpoint clock 2 hours behind ours: still 10 s.
            (
                vec![
                    ("x-ratelimit-limit", "30"),
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1799992810"),
                    ("date", &behind),
                ],
                vec![b("rate", 30, 0, at(10))],
            ),
            // A Date that cannot be read: our clock.
            (
                vec![
                    ("x-ratelimit-limit", "30"),
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1800000010"),
                    ("date", "yesterday"),
                ],
                vec![b("rate", 30, 0, at(10))],
            ),
            (vec![], vec![]),
        ];
        for (input, expected) in table {
            assert_eq!(parse(&headers(&input), now), expected, "{input:?}");
        }
        // A 429's Retry-After wins over a later reset, and leaves an earlier one.
        let mut readings = vec![b("per_hour", 10, 0, at(3000)), b("rate", 30, 0, at(5))];
        cap_resets(&mut readings, at(30));
        assert_eq!(readings, vec![b("per_hour", 10, 0, at(30)), b("rate", 30, 0, at(5))]);
        // Bytes that are not text.
        let mut h = HeaderMap::new();
        h.insert(q, HeaderValue::from_bytes(b"b=per_hour;q=\xff").unwrap());
        assert_eq!(parse(&h, now), vec![]);
    }

    #[test]
    fn spent_and_low() {
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let now = Instant::now();
        let at = |s: u64| wall + Duration::from_secs(s);
        let later = |s: u64| now + Duration::from_secs(s);
        let name = |r: Option<(Bucket, Instant)>| r.map(|(b, _)| b.name);
        let mut q = Quotas::default();
        assert_eq!(q.spent(now), None);
        q.update(
            &[
                Bucket { name: "per_day", limit: 50, remaining: 20, reset: at(600), clamped: false },
                Bucket { name: "per_hour", limit: 10, remaining: 1, reset: at(60), clamped: false },
            ],
            wall,
            now,
        );
        assert_eq!(name(q.low(now)), Some("per_hour"), "1 of 10 is low");
        assert_eq!(q.low(now).unwrap().1, later(60), "the reset on the monotonic clock");
        assert_eq!(q.spent(now), None);
        assert_eq!(q.low(later(61)), None, "low only until its reset");
        // A later reading replaces a bucket's; the others stay.
        q.update(&[Bucket { name: "per_hour", limit: 10, remaining: 0, reset: at(60), clamped: false }], wall, now);
        assert_eq!(q.spent(now).map(|(_, at)| at), Some(later(60)));
        assert_eq!(q.low(now), None, "spent is not low");
        assert_eq!(q.spent(later(60)), None, "spent until its reset, not after");
        // Of two spent buckets, the one that resets last decides.
        q.update(&[Bucket { name: "per_day", limit: 50, remaining: 0, reset: at(600), clamped: false }], wall, now);
        assert_eq!(name(q.spent(now)), Some("per_day"));
        let shown: Vec<_> = q.buckets(now).map(|(b, spent, low)| (b.name, spent, low)).collect();
        assert_eq!(shown, [("per_hour", true, false), ("per_day", true, false)], "in BUCKETS order");
        // 5 of 50 is a tenth: low; 6 is not.
        q.update(&[Bucket { name: "per_day", limit: 50, remaining: 5, reset: at(600), clamped: false }], wall, now);
        assert_eq!(name(q.low(now)), Some("per_day"));
        q.update(&[Bucket { name: "per_day", limit: 50, remaining: 6, reset: at(600), clamped: false }], wall, now);
        assert_eq!(q.low(now), None);
        q.clear();
        assert_eq!(q.buckets(now).count(), 0);
    }
}
