//! [`Refresher`]: the one background loop that fetches tokens into a [`TokenSource`].
//!
//! Only the refresher ever sends a token request, so at most one is in flight by
//! construction, and the request budget is enforced in one place. The loop only sleeps and
//! calls: [`schedule::next_fetch`] decides when the next request is due, [`Budget`] whether
//! it may go, `held` whether the shared cache is worth a look meanwhile; `fetch_once` asks
//! (the shared cache first, then the token endpoint) and `settle` books the answer.
//! Shutdown cancels a turn wherever it waits, never the booking of an answer.

use super::Token;
use super::fetch::{Answer, Fetch, FetchError, Fetched};
use super::quota::{self, Bucket, Timed};
use super::schedule::{self, Budget, Hold, Plan, PlanToken};
use super::shared::{Cached, Held, Look, SharedCache};
use super::source::{LastError, TokenSource, unix_secs};
use crate::config::TokenConfig;
use crate::credentials::{CredentialSet, Credentials};
use crate::logging::Human;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;

/// The background loop that keeps a usable token in a [`TokenSource`].
#[derive(Debug)]
pub struct Refresher<F> {
    source: TokenSource,
    fetcher: F,
    credentials: Credentials,
    refresh_at: f64,
    refresh_jitter: f64,
    timeout: Duration,
    max_per_minute: u32,
    jitter: bool,
    cache: Option<SharedCache>,
}

/// What the loop keeps between turns. What others read of it is published to the
/// [`TokenSource`]'s status as it changes.
#[derive(Debug)]
struct Local {
    credentials: watch::Receiver<Arc<CredentialSet>>,
    cache: Option<SharedCache>,
    refresh_due: Option<Instant>,
    failures: u32,
    hold: Option<Hold>,
    generation: u64,
    budget_blocked: bool,
    /// The last quota condition warned about, so that each is logged once.
    quota_warned: Option<(&'static str, SystemTime)>,
    /// When the shared cache may next be read while token requests are held back.
    next_peek: Option<Instant>,
}

/// One turn's plan: when the next token request is wanted, and when it may go.
#[derive(Debug)]
struct Step {
    now: Instant,
    token: Option<Arc<Token>>,
    plan: Plan,
    next: Instant,
}

/// A token request's answer, with what `settle` needs to book it.
#[derive(Debug)]
struct Answered {
    answer: Answer,
    /// Why it was asked for ([`schedule::why_fetch`]).
    why: &'static str,
    creds: Arc<CredentialSet>,
    issued: Instant,
    issued_wall: SystemTime,
    lock: Option<Held>,
}

/// How often the shared cache is read while token requests are held back.
const PEEK_EVERY: Duration = Duration::from_secs(1);

/// While token requests are held back (`next` is later than `now`): whether to read the
/// shared cache now, and when to wake. A spent quota bucket or the budget holds token
/// requests back, not cache reads: the fleet's token may be there. It is looked for at most
/// once every [`PEEK_EVERY`]; a backoff holds the reads back too, until it ends.
fn held(step: &Step, next_peek: Option<Instant>) -> (bool, Instant) {
    let ungated = schedule::next_fetch(&Plan { quota_spent_until: None, ..step.plan });
    if ungated > step.now {
        return (false, step.next.min(ungated));
    }
    let peek = next_peek.is_none_or(|t| step.now >= t);
    let next_peek = if peek { step.now + PEEK_EVERY } else { next_peek.unwrap_or(step.next) };
    (peek, step.next.min(next_peek))
}

impl<F: Fetch> Refresher<F> {
    pub fn new(source: TokenSource, fetcher: F, credentials: Credentials, cfg: &TokenConfig) -> Self {
        Self {
            source,
            fetcher,
            credentials,
            refresh_at: cfg.refresh_at,
            refresh_jitter: cfg.refresh_jitter,
            timeout: cfg.timeout,
            max_per_minute: cfg.max_requests_per_minute,
            jitter: true,
            cache: None,
        }
    }

    /// Shares tokens with the fleet through `cache` (`token.shared_cache`).
    pub fn with_shared_cache(mut self, cache: SharedCache) -> Self {
        self.source.shared.status.lock().shared_cache = Some(cache.status());
        self.cache = Some(cache);
        self
    }

    /// Runs until `shutdown` resolves. The first token request goes out at once.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        self.source.shared.budget.lock().get_or_insert_with(|| Budget::new(self.max_per_minute));
        let mut local = Local {
            credentials: self.credentials.subscribe(),
            cache: self.cache.take(),
            refresh_due: None,
            failures: 0,
            hold: None,
            generation: 0,
            budget_blocked: false,
            quota_warned: None,
            next_peek: None,
        };
        loop {
            let turn = tokio::select! {
                turn = self.turn(&mut local) => turn,
                () = &mut shutdown => return,
            };
            if let Some(answered) = turn {
                self.settle(&mut local, answered).await;
            }
        }
    }

    /// One turn: plan, then wait (reading the shared cache if that may help) or ask. An
    /// answer to book when a token request went out.
    async fn turn(&self, local: &mut Local) -> Option<Answered> {
        let step = self.plan(local);
        if step.next <= step.now {
            return self.fetch_once(local, &step).await;
        }
        let mut wake_at = step.next;
        if local.cache.is_some() {
            let (peek, wake) = held(&step, local.next_peek);
            wake_at = wake;
            if peek {
                local.next_peek = Some(step.now + PEEK_EVERY);
                let generation = local.credentials.borrow().generation;
                if let Some(cached) = self.peek(local, &step).await {
                    self.adopt(local, &cached, generation);
                    return None;
                }
            }
        }
        self.wait(local, wake_at).await;
        None
    }

    /// When the next token request is wanted and when the budget lets it go; published to
    /// `/status` and the metrics, and warned about when a quota or the budget moves it.
    fn plan(&self, local: &mut Local) -> Step {
        let shared = &self.source.shared;
        let now = Instant::now();
        let (credentials, client) = {
            let c = local.credentials.borrow_and_update();
            (c.generation, c.client_id.fingerprint())
        };
        let token = shared.token.read().clone();
        let (spent, low) = self.quota_state(&client, now);
        let (invalidated, credentials_tried) = {
            let status = shared.status.lock();
            (status.invalidated, status.credentials_tried)
        };
        let plan = Plan {
            now,
            token: token.as_ref().map(|t| self.plan_token(t, local.refresh_due.unwrap_or(now), now)),
            invalidated,
            credentials,
            credentials_tried,
            hold: local.hold,
            quota_spent_until: spent.map(|(_, at)| at),
            quota_low_until: low.map(|(_, at)| at),
        };
        let wanted = schedule::next_fetch(&plan);
        self.warn_quota(local, spent, low, token.as_deref(), wanted, now);
        let next = shared.budget.lock().as_ref().map_or(wanted, |b| b.earliest(wanted));
        if next > wanted && wanted <= now && !local.budget_blocked {
            local.budget_blocked = true;
            shared.metrics.token_budget_exhausted.inc();
            tracing::warn!(
                max_per_minute = self.max_per_minute,
                wait = %Human(next - now),
                token_usable = token.as_ref().is_some_and(|t| t.usable(now)),
                "token request budget exhausted (token.max_requests_per_minute); holding the next request back",
            );
        }
        let next_wall = SystemTime::now() + next.saturating_duration_since(now);
        shared.status.lock().next_fetch = Some(next_wall);
        shared.metrics.token_refresh.set(unix_secs(next_wall));
        Step { now, token, plan, next }
    }

    fn plan_token(&self, t: &Token, refresh_due: Instant, now: Instant) -> PlanToken {
        PlanToken {
            generation: t.generation,
            refresh_due,
            latest_refresh: schedule::latest_refresh(refresh_due, t.usable_until, self.timeout),
            usable_until: t.usable_until,
            usable_now: t.usable(now),
        }
    }

    /// Sleeps until `at`, or until a 401, a waiting request or new credentials say to look again.
    async fn wait(&self, local: &mut Local, at: Instant) {
        tokio::select! {
            () = tokio::time::sleep_until(at) => {}
            () = self.source.shared.wake.notified() => {}
            _ = local.credentials.changed() => {}
        }
    }

    /// A usable token in the shared cache, newer than ours, if there is one.
    async fn peek(&self, local: &mut Local, step: &Step) -> Option<Cached> {
        let creds = local.credentials.borrow().clone();
        let cache = local.cache.as_mut()?;
        cache.peek(&creds, step.token.as_ref().map(|t| t.expires)).await
    }

    /// Asks for a token: the shared cache first (which may answer, or hand us the fleet's
    /// lock), then the token endpoint. `None` when the cache answered.
    async fn fetch_once(&self, local: &mut Local, step: &Step) -> Option<Answered> {
        let shared = &self.source.shared;
        local.budget_blocked = false;
        let creds = local.credentials.borrow_and_update().clone();
        let mut lock = None;
        if let Some(cache) = local.cache.as_mut() {
            match cache.obtain(&creds, step.token.as_ref().map(|t| t.expires)).await {
                Look::Hit(cached) => {
                    self.adopt(local, &cached, creds.generation);
                    return None;
                }
                Look::Lock(held) => lock = Some(held),
                Look::Fallback => {}
            }
        }
        if let Some(budget) = shared.budget.lock().as_mut() {
            budget.record(step.now);
        }
        shared.status.lock().credentials_tried = creds.generation;
        let (issued, issued_wall) = (Instant::now(), SystemTime::now());
        let answer = tokio::time::timeout(self.timeout, self.fetcher.fetch(&creds)).await.unwrap_or_else(|_| {
            let message = format!("token request timed out after {}", humantime::format_duration(self.timeout));
            Answer::from(Err(FetchError::transient(message)))
        });
        Some(Answered { answer, why: schedule::why_fetch(&step.plan), creds, issued, issued_wall, lock })
    }

    /// Books an answer: the quota it reported, the token or the failure; shares the token
    /// and lets the fleet's lock go; tells the waiting requests.
    async fn settle(&self, local: &mut Local, a: Answered) {
        self.source.shared.metrics.token_request_duration.observe(a.issued.elapsed().as_secs_f64());
        if !a.answer.quota.is_empty() {
            let mut readings = a.answer.quota.clone();
            if let Err(FetchError::Transient { retry_after: Some(wait), .. }) = &a.answer.result {
                // The endpoint's own word on when to come back wins over a bucket's reset.
                quota::cap_resets(&mut readings, SystemTime::now() + *wait);
            }
            self.record_quota(&readings, a.creds.client_id.fingerprint());
        }
        match &a.answer.result {
            Ok(fetched) => {
                let expires = self.fetched(local, fetched, &a);
                if let Some(cache) = local.cache.as_mut() {
                    cache.store(&a.creds, fetched, expires.saturating_duration_since(Instant::now())).await;
                }
            }
            Err(error) => self.failed(local, error, a.creds.generation),
        }
        if let (Some(cache), Some(lock)) = (local.cache.as_mut(), a.lock) {
            cache.release(lock).await;
        }
        self.source.notify_waiters();
    }

    /// Installs a fetched token; when it expires.
    fn fetched(&self, local: &mut Local, fetched: &Fetched, a: &Answered) -> Instant {
        local.generation += 1;
        let token = Arc::new(Token::new(fetched, local.generation, a.issued, a.issued_wall));
        self.source.shared.metrics.token_success.inc();
        let expires = token.expires;
        self.install(local, token, (a.creds.generation, a.why), "token fetched");
        expires
    }

    /// Holds token requests back after a failure, and says so.
    fn failed(&self, local: &mut Local, error: &FetchError, credential_generation: u64) {
        let shared = &self.source.shared;
        local.failures += 1;
        let (delay, rejected) = match error {
            FetchError::Rejected { .. } => (schedule::REJECTED_RETRY, true),
            FetchError::Transient { retry_after, .. } => {
                (schedule::transient_delay(local.failures, self.random(), *retry_after), false)
            }
        };
        let now = Instant::now();
        let until = now + delay;
        local.hold = Some(if rejected { Hold::Rejected(until) } else { Hold::Backoff(until) });
        let counter = if rejected { &shared.metrics.token_rejected } else { &shared.metrics.token_transient };
        counter.inc();
        let usable = self.source.current().is_some();
        // The real next attempt: the backoff, or later if the budget holds it back then.
        let next = shared.budget.lock().as_ref().map_or(until, |b| b.earliest(until));
        tracing::warn!(
            error = %error,
            result = error.result_label(),
            failures = local.failures,
            retry_in = %Human(next - now),
            held_by = if next > until { "token.max_requests_per_minute" } else { "backoff" },
            token_usable = usable,
            credential_generation,
            "token request failed{}",
            if usable { "; the current token stays in use" } else { "" },
        );
        let mut status = shared.status.lock();
        status.rejected |= rejected;
        status.rejected_audience = error.is_audience();
        status.last_error = Some(LastError {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            kind: error.result_label(),
            message: error.to_string(),
        });
    }

    /// Switches off the random parts (refresh jitter, backoff jitter) for tests.
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    fn random(&self) -> f64 {
        if self.jitter { rand::random::<f64>() } else { 0.5 }
    }

    /// The spent and the low quota bucket, if any, of the client id in force (readings
    /// taken for another client id do not count).
    fn quota_state(&self, client: &str, now: Instant) -> (Option<Timed>, Option<Timed>) {
        let status = self.source.shared.status.lock();
        if status.quota_client.as_deref() != Some(client) {
            return (None, None);
        }
        (status.quotas.spent(now), status.quotas.low(now))
    }

    /// Keeps a response's quota readings, for the plan, `/status` and the metrics.
    fn record_quota(&self, readings: &[Bucket], client: String) {
        let shared = &self.source.shared;
        let mut status = shared.status.lock();
        if status.quota_client.as_deref() != Some(client.as_str()) {
            status.quotas.clear();
            status.quota_client = Some(client);
        }
        status.quotas.update(readings, SystemTime::now(), Instant::now());
        drop(status);
        for b in readings {
            shared.metrics.quota(b.name, b.limit, b.remaining, unix_secs(b.reset));
        }
    }

    /// Logs a spent or low bucket once per condition, when it changes the plan.
    fn warn_quota(
        &self,
        local: &mut Local,
        spent: Option<Timed>,
        low: Option<Timed>,
        token: Option<&Token>,
        wanted: Instant,
        now: Instant,
    ) {
        let wait = |at: Instant| Human(at.saturating_duration_since(now));
        if let Some((b, _)) = spent {
            if local.quota_warned != Some((b.name, b.reset)) {
                local.quota_warned = Some((b.name, b.reset));
                tracing::warn!(
                    bucket = b.name,
                    limit = b.limit,
                    resets_at = %humantime::format_rfc3339_seconds(b.reset),
                    wait = %wait(wanted),
                    token_usable = token.is_some_and(|t| t.usable(now)),
                    "token quota spent: no token request before the bucket resets{}",
                    if token.is_some_and(|t| t.usable(now)) { "; the current token stays in use" } else { "" },
                );
            }
        } else if let (Some((b, _)), Some(t)) = (low, token)
            && local.quota_warned != Some((b.name, b.reset))
            && wanted > local.refresh_due.unwrap_or(now)
        {
            local.quota_warned = Some((b.name, b.reset));
            tracing::warn!(
                bucket = b.name,
                limit = b.limit,
                remaining = b.remaining,
                resets_at = %humantime::format_rfc3339_seconds(b.reset),
                refresh_in = %wait(wanted),
                usable_for = %wait(t.usable_until),
                "token quota low: the next refresh is put off to the latest safe point",
            );
        }
    }

    /// Takes a token read from the shared cache.
    fn adopt(&self, local: &mut Local, cached: &Cached, credential_generation: u64) {
        local.generation += 1;
        let token = Arc::new(Token::from_cache(&cached.fetched, local.generation, cached.expires));
        self.source.shared.status.lock().credentials_tried = credential_generation;
        self.install(
            local,
            token,
            (credential_generation, "read from the shared cache"),
            "token read from the shared cache",
        );
        self.source.notify_waiters();
    }

    /// Makes `token` the current one, whether fetched or read from the shared cache, and
    /// sets when it is refreshed.
    /// `why`: what the token answers (a first token, a refresh, a 401 …).
    fn install(
        &self,
        local: &mut Local,
        token: Arc<Token>,
        (credential_generation, why): (u64, &'static str),
        message: &'static str,
    ) {
        let shared = &self.source.shared;
        let u = if self.jitter { 2.0 * self.random() - 1.0 } else { 0.0 };
        let refresh_in = schedule::refresh_after(token.lifetime, self.refresh_at, self.refresh_jitter, u);
        local.refresh_due = Some(token.issued + refresh_in);
        shared.metrics.token_refresh_due.set(unix_secs(token.issued_wall + refresh_in));
        local.failures = 0;
        local.hold = None;
        shared.metrics.token_expiry.set(unix_secs(token.expires_wall));
        shared.metrics.token_usable.set(1);
        tracing::info!(
            generation = token.generation,
            fingerprint = %token.fingerprint,
            lifetime = %Human(token.lifetime),
            expires_in = %Human(token.expires.saturating_duration_since(Instant::now())),
            refresh_in = %Human((token.issued + refresh_in).saturating_duration_since(Instant::now())),
            credential_generation,
            reason = why,
            "{message}",
        );
        *shared.token.write() = Some(token);
        let mut status = shared.status.lock();
        status.rejected = false;
        status.ever = true;
        status.credentials_in_use = credential_generation;
    }
}

#[cfg(test)]
mod tests;
