//! When to fetch the next token: pure functions of the clock and what happened so far.
//!
//! The refresh loop in [`super::refresher`] only sleeps and calls these, so every decision is
//! tested here with plain values, without sockets or clocks (STYLE.md habit 3).

use std::collections::VecDeque;
use std::time::Duration;
use tokio::time::Instant;

/// The longest lifetime we believe. A token endpoint that claims more (a bug, or a units
/// mix-up) would otherwise leave us holding a token long after it was revoked.
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long before its expiry a token stops being used: `min(60 s, lifetime / 10)`.
/// 60 s covers clock skew between us and Pinecone and a slow request in flight; the tenth
/// keeps short test lifetimes (seconds) usable for most of their life. (PRODUCT.md, "The
/// token"; gcp_auth uses a fixed 20 s, linkerd's identity client a fraction.)
pub fn usable_margin(lifetime: Duration) -> Duration {
    Duration::from_secs(60).min(lifetime / 10)
}

/// How long after issue a token is refreshed: `lifetime × (refresh_at + refresh_jitter × u)`
/// with `u` uniform in [-1, 1], drawn once per token so that many proxies started together
/// spread out. Clamped to at most 0.9 of the lifetime, where the token stops being usable.
pub fn refresh_after(lifetime: Duration, refresh_at: f64, refresh_jitter: f64, u: f64) -> Duration {
    let fraction = (refresh_at + refresh_jitter * u.clamp(-1.0, 1.0)).clamp(0.0, 0.9);
    lifetime.mul_f64(fraction)
}

/// The first retry waits 1 s; the cap is 60 s.
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// A `Retry-After` longer than this is not believed (the endpoint may be confused).
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(600);
/// After the token endpoint rejects the credentials, they are tried again no sooner
/// than this, unless they change: the same request would get the same answer, and
/// rejected requests still count against Auth0's quota.
pub const REJECTED_RETRY: Duration = Duration::from_secs(60);

/// Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And
/// Jitter"), floored at the base: after the `failures`-th consecutive failure, wait a
/// uniform time between 1 s and `min(60 s, 2^(failures-1) s)`. `u` is uniform in [0, 1).
pub fn backoff(failures: u32, u: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let ceiling = BACKOFF_BASE.saturating_mul(1 << exp).min(BACKOFF_CAP);
    BACKOFF_BASE + (ceiling - BACKOFF_BASE).mul_f64(u.clamp(0.0, 1.0))
}

/// The wait after a transient failure: the backoff, or the server's `Retry-After` if that
/// is longer (capped at 10 minutes).
pub fn transient_delay(failures: u32, u: f64, retry_after: Option<Duration>) -> Duration {
    let b = backoff(failures, u);
    match retry_after {
        Some(r) => b.max(r.min(RETRY_AFTER_CAP)),
        None => b,
    }
}

/// What the loop knows when it decides when to fetch next.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub now: Instant,
    /// The current token, if any.
    pub token: Option<PlanToken>,
    /// The newest generation that the upstream rejected with 401.
    pub invalidated: u64,
    /// The generation of the credentials in force, and of those last tried.
    pub credentials: u64,
    pub credentials_tried: u64,
    /// No fetch before a time, after a failure.
    pub hold: Option<Hold>,
    /// A quota bucket is spent until then: no fetch before it, whatever else is due.
    pub quota_spent_until: Option<Instant>,
    /// A quota bucket is low until then: the refresh waits for that reset, or for the
    /// token's latest safe refresh point, whichever comes first.
    pub quota_low_until: Option<Instant>,
}

/// Why, and until when, token requests are held back after a failed one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// A transient failure: a backoff, or the endpoint's `Retry-After`. New credentials do
    /// not lift it: the endpoint was failing, not the credentials.
    Backoff(Instant),
    /// The credentials were rejected: lifted when they change, since the new ones may work.
    Rejected(Instant),
}

/// What the plan needs of the current token.
#[derive(Debug, Clone, Copy)]
pub struct PlanToken {
    pub generation: u64,
    /// When it is due for refresh.
    pub refresh_due: Instant,
    /// The latest point at which a refresh still ends before the token stops being usable:
    /// `usable_until` minus `token.timeout`, never before `refresh_due`.
    pub latest_refresh: Instant,
    /// When it stops being usable by the monotonic clock.
    pub usable_until: Instant,
    /// Whether it is usable now by both clocks (see [`crate::token::Token::usable`]): false
    /// after a suspend or a wall-clock jump that the monotonic clock did not see.
    pub usable_now: bool,
}

/// When the next token request is due (now or in the past means at once). The request
/// budget is applied on top by [`Budget`].
pub fn next_fetch(p: &Plan) -> Instant {
    let credentials_changed = p.credentials != p.credentials_tried;
    let wanted = match p.token {
        None => p.now,
        Some(t) => {
            if credentials_changed || t.generation <= p.invalidated || !t.usable_now || p.now >= t.usable_until {
                p.now
            } else {
                let due = match p.quota_low_until {
                    Some(reset) => t.refresh_due.max(reset.min(t.latest_refresh)),
                    None => t.refresh_due,
                };
                due.min(t.usable_until)
            }
        }
    };
    let wanted = match p.hold {
        Some(Hold::Rejected(_)) if credentials_changed => wanted,
        Some(Hold::Backoff(until) | Hold::Rejected(until)) => wanted.max(until),
        None => wanted,
    };
    // A request into a spent bucket is refused and may count against the quota: wait.
    p.quota_spent_until.map_or(wanted, |until| wanted.max(until))
}

/// Why a token request is sent, for its log line: `first token`, `credentials changed`,
/// `the upstream answered 401`, `token no longer usable` or `refresh`.
pub fn why_fetch(p: &Plan) -> &'static str {
    match p.token {
        None => "first token",
        Some(_) if p.credentials != p.credentials_tried => "credentials changed",
        Some(t) if t.generation <= p.invalidated => "the upstream answered 401",
        Some(t) if !t.usable_now || p.now >= t.usable_until => "token no longer usable",
        Some(_) => "refresh",
    }
}

/// The latest safe refresh point of a token: early enough that a refresh that takes the
/// whole `timeout` still ends before the token stops being usable, and never before its
/// normal refresh point.
pub fn latest_refresh(refresh_due: Instant, usable_until: Instant, timeout: Duration) -> Instant {
    refresh_due.max(usable_until.checked_sub(timeout).unwrap_or(usable_until))
}

/// A hard cap on token requests in any 60-second window: the times of the last
/// `max` requests, and the earliest time the next may start.
#[derive(Debug, Clone)]
pub struct Budget {
    max: usize,
    window: Duration,
    sent: VecDeque<Instant>,
}

pub const BUDGET_WINDOW: Duration = Duration::from_secs(60);

impl Budget {
    pub fn new(max_per_minute: u32) -> Self {
        Self::per_window(max_per_minute, BUDGET_WINDOW)
    }

    /// At most `max` requests in any `window` (the managed key's hourly budget).
    pub fn per_window(max: u32, window: Duration) -> Self {
        let max = max.max(1) as usize;
        Self { max, window, sent: VecDeque::with_capacity(max) }
    }

    /// The earliest instant at or after `at` when a request fits in the budget.
    pub fn earliest(&self, at: Instant) -> Instant {
        if self.sent.len() < self.max {
            return at;
        }
        // The oldest of the last `max` requests must have left the window.
        let oldest = self.sent[self.sent.len() - self.max];
        at.max(oldest + self.window)
    }

    /// Records a request sent at `at`.
    pub fn record(&mut self, at: Instant) {
        self.sent.push_back(at);
        while self.sent.len() > self.max {
            self.sent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn usable_margin_is_a_tenth_up_to_a_minute() {
        let table =
            [(S(86400), S(60)), (S(1800), S(60)), (S(600), S(60)), (S(300), S(30)), (S(5), Duration::from_millis(500))];
        for (lifetime, margin) in table {
            assert_eq!(usable_margin(lifetime), margin, "{lifetime:?}");
        }
    }

    #[test]
    fn refresh_point_follows_refresh_at_and_jitter() {
        assert_eq!(refresh_after(S(1000), 0.5, 0.1, 0.0), S(500));
        assert_eq!(refresh_after(S(1000), 0.5, 0.1, -1.0), S(400));
        assert_eq!(refresh_after(S(1000), 0.5, 0.1, 1.0), S(600));
        // Never past the point where the token stops being usable.
        assert_eq!(refresh_after(S(1000), 0.85, 0.1, 1.0), S(900));
    }

    #[test]
    fn backoff_grows_to_the_cap_and_never_below_a_second() {
        let table = [(1, S(1)), (2, S(2)), (3, S(4)), (4, S(8)), (7, S(60)), (30, S(60))];
        for (failures, ceiling) in table {
            assert_eq!(backoff(failures, 0.0), S(1), "floor, failure {failures}");
            assert_eq!(backoff(failures, 1.0), ceiling, "ceiling, failure {failures}");
            let mid = backoff(failures, 0.5);
            assert!(mid >= S(1) && mid <= ceiling);
        }
    }

    #[test]
    fn retry_after_extends_but_is_capped() {
        assert_eq!(transient_delay(1, 0.0, Some(S(30))), S(30));
        assert_eq!(transient_delay(7, 1.0, Some(S(5))), S(60));
        assert_eq!(transient_delay(1, 0.0, Some(S(86400))), S(600));
    }

    fn plan(now: Instant) -> Plan {
        Plan {
            now,
            token: None,
            invalidated: 0,
            credentials: 1,
            credentials_tried: 1,
            hold: None,
            quota_spent_until: None,
            quota_low_until: None,
        }
    }

    fn tok(generation: u64, refresh_due: Instant, usable_until: Instant) -> Option<PlanToken> {
        let latest_refresh = latest_refresh(refresh_due, usable_until, S(10));
        Some(PlanToken { generation, refresh_due, latest_refresh, usable_until, usable_now: true })
    }

    #[test]
    fn why_a_token_is_fetched_table() {
        let t0 = Instant::now();
        let at = |s| t0 + S(s);
        assert_eq!(why_fetch(&plan(t0)), "first token");
        assert_eq!(why_fetch(&Plan { token: tok(1, at(500), at(900)), ..plan(at(600)) }), "refresh");
        assert_eq!(
            why_fetch(&Plan { token: tok(3, at(500), at(900)), invalidated: 3, ..plan(t0) }),
            "the upstream answered 401"
        );
        assert_eq!(
            why_fetch(&Plan { token: tok(1, at(500), at(900)), credentials: 2, ..plan(t0) }),
            "credentials changed"
        );
        assert_eq!(why_fetch(&Plan { token: tok(1, at(500), at(900)), ..plan(at(950)) }), "token no longer usable");
    }

    #[test]
    fn next_fetch_table() {
        let t0 = Instant::now();
        let at = |s| t0 + S(s);
        // No token: at once.
        assert_eq!(next_fetch(&plan(t0)), t0);
        // A usable token: at its refresh point.
        let p = Plan { token: tok(1, at(500), at(900)), ..plan(t0) };
        assert_eq!(next_fetch(&p), at(500));
        // A token that the wall clock says is no longer usable (the machine slept): at once.
        let p = Plan { token: Some(PlanToken { usable_now: false, ..tok(1, at(500), at(900)).unwrap() }), ..plan(t0) };
        assert_eq!(next_fetch(&p), t0);
        // A token past its usable window: at once.
        let p = Plan { token: tok(1, at(500), at(900)), ..plan(at(950)) };
        assert_eq!(next_fetch(&p), at(950));
        // The upstream rejected this generation: at once.
        let p = Plan { token: tok(3, at(500), at(900)), invalidated: 3, ..plan(t0) };
        assert_eq!(next_fetch(&p), t0);
        // ...but not for an older generation.
        let p = Plan { token: tok(3, at(500), at(900)), invalidated: 2, ..plan(t0) };
        assert_eq!(next_fetch(&p), at(500));
        // New credentials: at once.
        let p = Plan { token: tok(1, at(500), at(900)), credentials: 2, ..plan(t0) };
        assert_eq!(next_fetch(&p), t0);
        // A backoff hold delays even an urgent fetch.
        let p = Plan { hold: Some(Hold::Backoff(at(4))), ..plan(t0) };
        assert_eq!(next_fetch(&p), at(4));
        // A rejection hold is lifted by new credentials, a transient one is not.
        let p = Plan { hold: Some(Hold::Rejected(at(60))), credentials: 2, ..plan(t0) };
        assert_eq!(next_fetch(&p), t0);
        let p = Plan { hold: Some(Hold::Backoff(at(8))), credentials: 2, ..plan(t0) };
        assert_eq!(next_fetch(&p), at(8));
        // A hold earlier than the refresh point changes nothing.
        let p = Plan { token: tok(1, at(500), at(900)), hold: Some(Hold::Backoff(at(10))), ..plan(t0) };
        assert_eq!(next_fetch(&p), at(500));

        // A spent quota bucket holds back every fetch until its reset: the first token,
        // an invalidated one, new credentials, a refresh.
        let spent = Some(at(3600));
        assert_eq!(next_fetch(&Plan { quota_spent_until: spent, ..plan(t0) }), at(3600));
        let p = Plan { token: tok(3, at(500), at(900)), invalidated: 3, quota_spent_until: spent, ..plan(t0) };
        assert_eq!(next_fetch(&p), at(3600));
        let p = Plan { token: tok(1, at(500), at(900)), credentials: 2, quota_spent_until: spent, ..plan(t0) };
        assert_eq!(next_fetch(&p), at(3600));
        let p = Plan { token: tok(1, at(500), at(900)), quota_spent_until: Some(at(20)), ..plan(t0) };
        assert_eq!(next_fetch(&p), at(500), "a reset before the refresh point changes nothing");
        // A spent bucket outlasts a shorter Retry-After hold, and a longer hold outlasts it.
        let p = Plan { hold: Some(Hold::Backoff(at(30))), quota_spent_until: Some(at(60)), ..plan(t0) };
        assert_eq!(next_fetch(&p), at(60));
        let p = Plan { hold: Some(Hold::Backoff(at(90))), quota_spent_until: Some(at(60)), ..plan(t0) };
        assert_eq!(next_fetch(&p), at(90));

        // A low bucket puts the refresh off to its reset, or to the latest safe point
        // (usable_until minus token.timeout) if that comes first; never earlier than due.
        let p = Plan { token: tok(1, at(500), at(900)), quota_low_until: Some(at(3600)), ..plan(t0) };
        assert_eq!(next_fetch(&p), at(890));
        let p = Plan { token: tok(1, at(500), at(900)), quota_low_until: Some(at(700)), ..plan(t0) };
        assert_eq!(next_fetch(&p), at(700));
        let p = Plan { token: tok(1, at(500), at(900)), quota_low_until: Some(at(100)), ..plan(t0) };
        assert_eq!(next_fetch(&p), at(500));
        // ...but an urgent fetch stays urgent.
        let p = Plan { token: tok(3, at(500), at(900)), invalidated: 3, quota_low_until: Some(at(3600)), ..plan(t0) };
        assert_eq!(next_fetch(&p), t0);
    }

    #[test]
    fn latest_refresh_leaves_room_for_one_request() {
        let t0 = Instant::now();
        assert_eq!(latest_refresh(t0 + S(500), t0 + S(900), S(10)), t0 + S(890));
        // A token so short that the timeout does not fit after its refresh point.
        assert_eq!(latest_refresh(t0 + S(5), t0 + S(9), S(10)), t0 + S(5));
    }

    #[test]
    fn budget_holds_in_every_window() {
        let t0 = Instant::now();
        let mut b = Budget::new(3);
        for s in [0, 1, 2] {
            assert_eq!(b.earliest(t0 + S(s)), t0 + S(s));
            b.record(t0 + S(s));
        }
        assert_eq!(b.earliest(t0 + S(3)), t0 + S(60));
        b.record(t0 + S(60));
        assert_eq!(b.earliest(t0 + S(60)), t0 + S(61));
        assert_eq!(b.earliest(t0 + S(200)), t0 + S(200));
    }
}
