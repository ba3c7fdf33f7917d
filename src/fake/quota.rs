//! The fake token endpoint's optional quota, as Auth0 meters machine-to-machine tokens per
//! application (FACTS.md): buckets `per_hour` and `per_day` count the tokens issued to a
//! client id, and `rate` counts every token request; each is a fixed window that starts with
//! its first use. While a quota is set, every token response reports it, in
//! `Auth0-Client-Quota-Limit: b=per_hour;q=10;r=7;t=3540,…` and, for `rate`,
//! `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset` (a UNIX time); a
//! spent bucket answers 429 `too_many_requests`, with no `Retry-After` (Auth0 does not
//! document one).
//!
//! A quota is written `per_hour=10,per_day=50,rate=30`, each optionally with its window:
//! `per_hour=2/3s` (for tests that cannot wait an hour).

use http::{HeaderMap, HeaderValue};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// One bucket's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub name: &'static str,
    pub limit: u64,
    pub window: Duration,
}

/// A quota: its rules, and per client id (or, for `rate`, for everyone) the use of each
/// bucket in its current window.
#[derive(Debug, Clone, Default)]
pub struct Quota {
    rules: Vec<Rule>,
    used: HashMap<(String, &'static str), (Instant, u64)>,
}

/// What a token request may do, as the quota decides.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Go on; these headers go on the answer.
    Go(HeaderMap),
    /// Answer 429 with these headers; the bucket named is spent.
    Spent(&'static str, HeaderMap),
}

impl Quota {
    /// Reads `per_hour=10,per_day=50,rate=30` (windows optional: `per_hour=2/3s`).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item.split_once('=').ok_or(format!("{item:?}: expected BUCKET=LIMIT"))?;
            let (name, default_window) = match name.trim() {
                "per_hour" => ("per_hour", 3600),
                "per_day" => ("per_day", 86_400),
                "rate" => ("rate", 60),
                other => return Err(format!("unknown bucket {other:?}: use per_hour, per_day or rate")),
            };
            let (limit, window) = match value.split_once('/') {
                Some((limit, window)) => {
                    (limit, humantime::parse_duration(window.trim()).map_err(|e| format!("{item:?}: {e}"))?)
                }
                None => (value, Duration::from_secs(default_window)),
            };
            let limit = limit.trim().parse().map_err(|_| format!("{item:?}: the limit must be a whole number"))?;
            if window.is_zero() {
                return Err(format!("{item:?}: the window must be longer than 0"));
            }
            rules.push(Rule { name, limit, window });
        }
        if rules.is_empty() {
            return Err("no bucket given: write e.g. per_hour=10,per_day=50".into());
        }
        Ok(Self { rules, used: HashMap::new() })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Counts a token request against `rate`, before anything else is looked at.
    pub(crate) fn request(&mut self, now: Instant) -> Verdict {
        self.take(None, now)
    }

    /// Counts a token about to be issued to `client_id` against `per_hour` and `per_day`.
    pub(crate) fn issue(&mut self, client_id: &str, now: Instant) -> Verdict {
        self.take(Some(client_id), now)
    }

    /// Takes one from each bucket of the kind (rate: `client` is `None`), unless one is
    /// spent; the headers report the buckets after that.
    fn take(&mut self, client: Option<&str>, now: Instant) -> Verdict {
        let rules: Vec<Rule> = self.rules.iter().filter(|r| (r.name == "rate") == client.is_none()).copied().collect();
        let key = |r: &Rule| (client.unwrap_or("").to_owned(), r.name);
        for rule in &rules {
            let entry = self.used.entry(key(rule)).or_insert((now, 0));
            if now >= entry.0 + rule.window {
                *entry = (now, 0);
            }
        }
        let spent = rules.iter().find(|r| self.used[&key(r)].1 >= r.limit).map(|r| r.name);
        if spent.is_none() {
            for rule in &rules {
                self.used.get_mut(&key(rule)).expect("just inserted").1 += 1;
            }
        }
        let headers = self.headers(client, &rules, now);
        match spent {
            Some(name) => Verdict::Spent(name, headers),
            None => Verdict::Go(headers),
        }
    }

    fn headers(&self, client: Option<&str>, rules: &[Rule], now: Instant) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let state = |r: &Rule| {
            let (start, used) = self.used[&(client.unwrap_or("").to_owned(), r.name)];
            let left = (start + r.window).saturating_duration_since(now);
            (r.limit.saturating_sub(used), left.as_secs() + u64::from(left.subsec_nanos() > 0))
        };
        if client.is_some() {
            let text: Vec<String> = rules
                .iter()
                .map(|r| {
                    let (remaining, t) = state(r);
                    format!("b={};q={};r={remaining};t={t}", r.name, r.limit)
                })
                .collect();
            if !text.is_empty() {
                headers.insert("auth0-client-quota-limit", HeaderValue::from_str(&text.join(",")).expect("ascii"));
            }
        } else if let Some(r) = rules.first() {
            let (remaining, t) = state(r);
            let reset = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + t;
            headers.insert("x-ratelimit-limit", HeaderValue::from(r.limit));
            headers.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
            headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::quota;

    #[test]
    fn spec() {
        let q = Quota::parse("per_hour=10, per_day=50,rate=30/5s").unwrap();
        assert_eq!(
            q.rules(),
            [
                Rule { name: "per_hour", limit: 10, window: Duration::from_secs(3600) },
                Rule { name: "per_day", limit: 50, window: Duration::from_secs(86_400) },
                Rule { name: "rate", limit: 30, window: Duration::from_secs(5) },
            ]
        );
        for bad in ["", "per_week=3", "per_hour", "per_hour=x", "per_hour=3/soon", "per_hour=3/0s"] {
            assert!(Quota::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn buckets_count_reset_and_report_what_the_proxy_reads() {
        let mut q = Quota::parse("per_hour=2/10s,per_day=3/100s").unwrap();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let read = |v: &Verdict| {
            let h = match v {
                Verdict::Go(h) | Verdict::Spent(_, h) => h,
            };
            quota::parse(h, wall).into_iter().map(|b| (b.name, b.limit, b.remaining)).collect::<Vec<_>>()
        };
        let v = q.issue("a", t0);
        assert!(matches!(v, Verdict::Go(_)));
        assert_eq!(read(&v), [("per_hour", 2, 1), ("per_day", 3, 2)]);
        assert_eq!(read(&q.issue("a", t0)), [("per_hour", 2, 0), ("per_day", 3, 1)]);
        let v = q.issue("a", t0 + Duration::from_secs(1));
        assert!(matches!(v, Verdict::Spent("per_hour", _)));
        assert_eq!(read(&v), [("per_hour", 2, 0), ("per_day", 3, 1)], "a refusal takes nothing");
        assert!(matches!(q.issue("b", t0), Verdict::Go(_)), "another client id has its own quota");
        // The hour resets; the day does not.
        assert_eq!(read(&q.issue("a", t0 + Duration::from_secs(10))), [("per_hour", 2, 1), ("per_day", 3, 0)]);
        assert!(matches!(q.issue("a", t0 + Duration::from_secs(11)), Verdict::Spent("per_day", _)));
        // No rate rule: the request is not counted, and nothing is reported for it.
        assert!(matches!(q.request(t0), Verdict::Go(ref h) if h.is_empty()));
    }

    #[test]
    fn the_rate_bucket_counts_every_request() {
        let mut q = Quota::parse("rate=1/60s").unwrap();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        let Verdict::Go(h) = q.request(t0) else { panic!("the first goes") };
        let b = quota::parse(&h, wall);
        assert_eq!((b[0].name, b[0].limit, b[0].remaining), ("rate", 1, 0));
        assert!(b[0].reset >= wall + Duration::from_secs(59));
        assert!(matches!(q.request(t0), Verdict::Spent("rate", _)));
        assert!(matches!(q.issue("a", t0), Verdict::Go(ref h) if h.is_empty()), "no per-application rule");
    }
}
