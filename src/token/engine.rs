//! The token engine: [`TokenSource`], the handle requests use to get a usable token, and
//! [`Refresher`], the one background loop that fetches tokens.
//!
//! Only the refresher ever sends a token request, so at most one is in flight by
//! construction, and the request budget is enforced in one place. Requests never fetch:
//! they read the current token (a read lock held for one `Arc` clone, never across an
//! `.await`), or, when none is usable, wait for the refresher's next result, up to
//! `token.timeout`. A failed fetch never touches the current token.

use super::Token;
use super::fetch::{Answer, Fetch, FetchError};
use super::quota::{self, Bucket, Quotas, Timed};
use super::schedule::{self, Budget, Plan, PlanToken};
use super::shared::{CacheStatus, Cached, Look, SharedCache};
use crate::config::TokenConfig;
use crate::credentials::Credentials;
use crate::metrics::Metrics;
use parking_lot::{Mutex, RwLock};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Why a request got no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenUnavailable {
    /// None arrived within `token.timeout`; the next attempt is due in `retry_after`.
    Timeout { retry_after: Duration },
    /// The token endpoint rejected the credentials and no usable token is left.
    CredentialsRejected,
}

/// The last failed token request, for `/status` and `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastError {
    /// UNIX seconds.
    pub at: u64,
    /// `transient_error` or `rejected`.
    pub kind: &'static str,
    pub message: String,
}

#[derive(Debug, Default)]
struct Status {
    rejected: bool,
    last_error: Option<LastError>,
    next_fetch: Option<SystemTime>,
    invalidated: u64,
    ever: bool,
    credentials_in_use: u64,
    credentials_tried: u64,
    /// The quota buckets the token endpoint last reported, and the fingerprint of the
    /// client id they belong to (a quota is per application).
    quotas: Quotas,
    quota_client: Option<String>,
    shared_cache: Option<Arc<Mutex<CacheStatus>>>,
}

#[derive(Debug)]
struct Shared {
    token: RwLock<Option<Arc<Token>>>,
    status: Mutex<Status>,
    /// Tells the refresher to look again (a 401 invalidated the token).
    wake: Notify,
    /// Bumped after every token request, so waiters look again.
    changed: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// The token request budget. Kept here, not in the loop, so that the 60-second
    /// window survives anything that restarts the loop.
    budget: Mutex<Option<Budget>>,
}

/// The handle shared by the request path, the ops endpoints and the refresher.
#[derive(Debug, Clone)]
pub struct TokenSource {
    shared: Arc<Shared>,
}

/// What `/status` shows of the token engine. No token, only its fingerprint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusSnapshot {
    pub usable: bool,
    pub generation: Option<u64>,
    pub fingerprint: Option<String>,
    pub issued_at: Option<String>,
    pub expires_at: Option<String>,
    pub lifetime_seconds: Option<f64>,
    pub next_refresh_at: Option<String>,
    pub credentials_rejected: bool,
    pub credential_generation_in_use: u64,
    pub credential_generation_tried: u64,
    pub last_error: Option<LastError>,
    /// The token quota buckets, as the token endpoint last reported them.
    pub quota: Vec<QuotaSnapshot>,
    /// The shared token cache, if one is set.
    pub shared_cache: Option<CacheStatus>,
}

/// One quota bucket in `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuotaSnapshot {
    pub bucket: &'static str,
    pub limit: u64,
    pub remaining: u64,
    pub resets_at: String,
    /// No request left until `resets_at`.
    pub spent: bool,
    /// A tenth or less left: refreshes are put off to the latest safe point.
    pub low: bool,
    /// The reported reset was further away than the bucket's window allows (a skewed clock
    /// or a hostile header), and was cut back to one window from the reading.
    pub clamped: bool,
}

impl TokenSource {
    /// `timeout` is how long a request waits for a token when none is usable.
    pub fn new(metrics: Arc<Metrics>, timeout: Duration) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            shared: Arc::new(Shared {
                token: RwLock::new(None),
                status: Mutex::new(Status::default()),
                wake: Notify::new(),
                changed,
                metrics,
                timeout,
                budget: Mutex::new(None),
            }),
        }
    }

    /// The current token if it is usable now. This is the request path's fast path.
    pub fn current(&self) -> Option<Arc<Token>> {
        let token = self.shared.token.read().clone()?;
        token.usable(Instant::now()).then_some(token)
    }

    /// A usable token: the current one, or the next one the refresher gets, within
    /// `token.timeout`. Never starts a token request of its own.
    pub async fn get(&self) -> Result<Arc<Token>, TokenUnavailable> {
        if let Some(token) = self.current() {
            return Ok(token);
        }
        // Boxed: the waiting path is rare, and inline it would enlarge every request's future.
        Box::pin(self.wait_for(0)).await
    }

    /// Reports that the upstream answered 401 to a request that carried token
    /// `generation`. The refresher fetches one new token for all such reports; the old
    /// token stays in use until it arrives. Reports about an older token are ignored.
    pub fn invalidate(&self, generation: u64) {
        let current = self.shared.token.read().as_ref().map(|t| t.generation);
        if current != Some(generation) {
            return;
        }
        let mut status = self.shared.status.lock();
        if generation > status.invalidated {
            status.invalidated = generation;
            drop(status);
            self.shared.wake.notify_one();
        }
    }

    /// A usable token newer than `generation`, waiting up to `token.timeout`.
    pub async fn newer_than(&self, generation: u64) -> Result<Arc<Token>, TokenUnavailable> {
        Box::pin(self.wait_for(generation)).await
    }

    async fn wait_for(&self, after: u64) -> Result<Arc<Token>, TokenUnavailable> {
        let mut changed = self.shared.changed.subscribe();
        // Let the refresher look again: after a suspend its monotonic sleep has not ended,
        // though the wall clock says the token has. It decides; it never fetches twice.
        self.shared.wake.notify_one();
        let deadline = Instant::now() + self.shared.timeout;
        loop {
            if let Some(token) = self.current().filter(|t| t.generation > after) {
                return Ok(token);
            }
            if self.shared.status.lock().rejected {
                return Err(TokenUnavailable::CredentialsRejected);
            }
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                return Err(TokenUnavailable::Timeout { retry_after: self.retry_after() });
            }
        }
    }

    /// Whole seconds until the next token request is due, at least 1.
    fn retry_after(&self) -> Duration {
        let next = self.shared.status.lock().next_fetch;
        let secs = next.and_then(|t| t.duration_since(SystemTime::now()).ok()).map_or(1, |d| d.as_secs() + 1);
        Duration::from_secs(secs.max(1))
    }

    /// A receiver that is told after every token request, whatever its outcome.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// Whether a token ever arrived (`/startupz`).
    pub fn ever_had_token(&self) -> bool {
        self.shared.status.lock().ever
    }

    /// Why no usable token is held, for `/readyz`; `None` when one is.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.current().is_some() {
            return None;
        }
        let status = self.shared.status.lock();
        if let Some((b, _)) = status.quotas.spent(Instant::now()) {
            return Some(format!(
                "no usable token: the token quota is spent (bucket {}, {} requests), no token request before it resets at {}",
                b.name,
                b.limit,
                humantime::format_rfc3339_seconds(b.reset),
            ));
        }
        Some(match (&status.last_error, status.ever) {
            (Some(e), _) => format!("no usable token; last token request failed: {}", e.message),
            (None, true) => "no usable token: the current one is about to expire and its refresh is pending".into(),
            (None, false) => "no token yet: the first token request is in flight".into(),
        })
    }

    /// Sets the gauges that depend on the clock; called before metrics are rendered.
    pub fn update_gauges(&self) {
        self.shared.metrics.token_usable.set(i64::from(self.current().is_some()));
    }

    pub fn snapshot(&self) -> StatusSnapshot {
        let token = self.shared.token.read().clone();
        let status = self.shared.status.lock();
        StatusSnapshot {
            usable: token.as_ref().is_some_and(|t| t.usable(Instant::now())),
            generation: token.as_ref().map(|t| t.generation),
            fingerprint: token.as_ref().map(|t| t.fingerprint.clone()),
            issued_at: token.as_ref().map(|t| humantime::format_rfc3339_seconds(t.issued_wall).to_string()),
            expires_at: token.as_ref().map(|t| humantime::format_rfc3339_seconds(t.expires_wall).to_string()),
            lifetime_seconds: token.as_ref().map(|t| t.lifetime.as_secs_f64()),
            next_refresh_at: status.next_fetch.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            credentials_rejected: status.rejected,
            credential_generation_in_use: status.credentials_in_use,
            credential_generation_tried: status.credentials_tried,
            last_error: status.last_error.clone(),
            quota: {
                let quota = status.quotas.buckets(Instant::now()).map(|(b, spent, low)| QuotaSnapshot {
                    bucket: b.name,
                    limit: b.limit,
                    remaining: b.remaining,
                    resets_at: humantime::format_rfc3339_seconds(b.reset).to_string(),
                    spent,
                    low,
                    clamped: b.clamped,
                });
                quota.collect()
            },
            shared_cache: status.shared_cache.as_ref().map(|s| s.lock().clone()),
        }
    }

    fn notify_waiters(&self) {
        self.shared.changed.send_modify(|v| *v += 1);
    }
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

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

/// What the loop remembers between iterations.
#[derive(Debug, Default)]
struct Local {
    refresh_due: Option<Instant>,
    failures: u32,
    hold: Option<(Instant, bool)>,
    credentials_tried: u64,
    generation: u64,
    budget_blocked: bool,
    /// The last quota condition warned about, so that each is logged once.
    quota_warned: Option<(&'static str, SystemTime)>,
    /// When the shared cache may next be read while token requests are held back.
    next_peek: Option<Instant>,
}

/// How often the shared cache is read while token requests are held back.
const PEEK_EVERY: Duration = Duration::from_secs(1);

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
        let wait =
            |at: Instant| humantime::format_duration(Duration::from_secs(at.saturating_duration_since(now).as_secs()));
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
        } else if let (Some((b, _)), Some(t)) = (low, token) {
            if local.quota_warned != Some((b.name, b.reset)) && wanted > local.refresh_due.unwrap_or(now) {
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
    }

    /// Runs until `shutdown` resolves. The first token request goes out at once.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut cache = self.cache.take();
        let mut credentials = self.credentials.subscribe();
        let mut local = Local::default();
        let shared = self.source.shared.clone();
        shared.budget.lock().get_or_insert_with(|| Budget::new(self.max_per_minute));
        loop {
            let now = Instant::now();
            let (credentials_generation, client) = {
                let c = credentials.borrow_and_update();
                (c.generation, c.client_id.fingerprint())
            };
            let token = shared.token.read().clone();
            let (spent, low) = self.quota_state(&client, now);
            let plan = Plan {
                now,
                token: token.as_ref().map(|t| {
                    let refresh_due = local.refresh_due.unwrap_or(now);
                    PlanToken {
                        generation: t.generation,
                        refresh_due,
                        latest_refresh: schedule::latest_refresh(refresh_due, t.usable_until, self.timeout),
                        usable_until: t.usable_until,
                        usable_now: t.usable(now),
                    }
                }),
                invalidated: shared.status.lock().invalidated,
                credentials: credentials_generation,
                credentials_tried: local.credentials_tried,
                hold: local.hold,
                quota_spent_until: spent.map(|(_, at)| at),
                quota_low_until: low.map(|(_, at)| at),
            };
            let wanted = schedule::next_fetch(&plan);
            self.warn_quota(&mut local, spent, low, token.as_deref(), wanted, now);
            let next = shared.budget.lock().as_ref().map_or(wanted, |b| b.earliest(wanted));
            if next > wanted && wanted <= now && !local.budget_blocked {
                local.budget_blocked = true;
                shared.metrics.token_budget_exhausted.inc();
                tracing::warn!(
                    max_per_minute = self.max_per_minute,
                    wait = %humantime::format_duration(next - now),
                    token_usable = token.as_ref().is_some_and(|t| t.usable(now)),
                    "token request budget exhausted (token.max_requests_per_minute); holding the next request back",
                );
            }
            let next_wall = SystemTime::now() + next.saturating_duration_since(now);
            shared.status.lock().next_fetch = Some(next_wall);
            shared.metrics.token_refresh.set(unix_secs(next_wall));

            // A spent quota bucket or the budget holds token requests back, not cache reads:
            // the fleet's token may be there. Looked for at most once a second while held.
            let mut wake_at = next;
            if let Some(cache) = cache.as_mut().filter(|_| next > now) {
                let ungated = schedule::next_fetch(&Plan { quota_spent_until: None, ..plan });
                if ungated <= now {
                    if local.next_peek.is_none_or(|t| now >= t) {
                        local.next_peek = Some(now + PEEK_EVERY);
                        let creds = credentials.borrow().clone();
                        let current = token.as_ref().map(|t| t.expires);
                        let found = tokio::select! {
                            found = cache.peek(&creds, current) => found,
                            () = &mut shutdown => return,
                        };
                        if let Some(cached) = found {
                            self.adopt(&mut local, &cached, creds.generation);
                            continue;
                        }
                    }
                    wake_at = next.min(local.next_peek.unwrap_or(next));
                } else {
                    // Held by a backoff too: look again when that ends.
                    wake_at = next.min(ungated);
                }
            }

            if next > now {
                tokio::select! {
                    () = tokio::time::sleep_until(wake_at) => {}
                    () = shared.wake.notified() => {}
                    _ = credentials.changed() => {}
                    () = &mut shutdown => return,
                }
                continue;
            }

            local.budget_blocked = false;
            let creds = credentials.borrow_and_update().clone();
            let mut held = None;
            if let Some(cache) = cache.as_mut() {
                let current = token.as_ref().map(|t| t.expires);
                let look = tokio::select! {
                    look = cache.obtain(&creds, current) => look,
                    () = &mut shutdown => return,
                };
                match look {
                    Look::Hit(cached) => {
                        self.adopt(&mut local, &cached, creds.generation);
                        continue;
                    }
                    Look::Lock(lock) => held = Some(lock),
                    Look::Fallback => {}
                }
            }
            if let Some(budget) = shared.budget.lock().as_mut() {
                budget.record(now);
            }
            local.credentials_tried = creds.generation;
            shared.status.lock().credentials_tried = creds.generation;
            let issued = Instant::now();
            let issued_wall = SystemTime::now();
            let answer = tokio::select! {
                r = tokio::time::timeout(self.timeout, self.fetcher.fetch(&creds)) => r.unwrap_or_else(|_| {
                    Answer::from(Err(FetchError::transient(format!("token request timed out after {}", humantime::format_duration(self.timeout)))))
                }),
                () = &mut shutdown => return,
            };
            shared.metrics.token_request_duration.observe(issued.elapsed().as_secs_f64());
            if !answer.quota.is_empty() {
                let mut readings = answer.quota.clone();
                if let Err(FetchError::Transient { retry_after: Some(wait), .. }) = &answer.result {
                    // The endpoint's own word on when to come back wins over a bucket's reset.
                    quota::cap_resets(&mut readings, SystemTime::now() + *wait);
                }
                self.record_quota(&readings, creds.client_id.fingerprint());
            }

            match answer.result {
                Ok(fetched) => {
                    local.generation += 1;
                    let token = Arc::new(Token::new(&fetched, local.generation, issued, issued_wall));
                    shared.metrics.token_success.inc();
                    let expires = token.expires;
                    self.install(&mut local, token, creds.generation, "token fetched");
                    if let Some(cache) = cache.as_mut() {
                        cache.store(&creds, &fetched, expires.saturating_duration_since(Instant::now())).await;
                    }
                }
                Err(error) => {
                    local.failures += 1;
                    let (delay, rejected) = match &error {
                        FetchError::Rejected { .. } => (schedule::REJECTED_RETRY, true),
                        FetchError::Transient { retry_after, .. } => {
                            (schedule::transient_delay(local.failures, self.random(), *retry_after), false)
                        }
                    };
                    local.hold = Some((Instant::now() + delay, rejected));
                    let counter =
                        if rejected { &shared.metrics.token_rejected } else { &shared.metrics.token_transient };
                    counter.inc();
                    let usable = self.source.current().is_some();
                    tracing::warn!(
                        error = %error,
                        result = error.result_label(),
                        failures = local.failures,
                        retry_in = %humantime::format_duration(delay),
                        token_usable = usable,
                        credential_generation = creds.generation,
                        "token request failed{}",
                        if usable { "; the current token stays in use" } else { "" },
                    );
                    let mut status = shared.status.lock();
                    if rejected {
                        status.rejected = true;
                    }
                    status.last_error = Some(LastError {
                        at: unix_secs(SystemTime::now()) as u64,
                        kind: error.result_label(),
                        message: error.to_string(),
                    });
                }
            }
            if let (Some(cache), Some(lock)) = (cache.as_mut(), held) {
                cache.release(lock).await;
            }
            self.source.notify_waiters();
        }
    }

    /// Takes a token read from the shared cache.
    fn adopt(&self, local: &mut Local, cached: &Cached, credential_generation: u64) {
        local.generation += 1;
        let token = Arc::new(Token::from_cache(&cached.fetched, local.generation, cached.expires));
        local.credentials_tried = credential_generation;
        self.source.shared.status.lock().credentials_tried = credential_generation;
        self.install(local, token, credential_generation, "token read from the shared cache");
        self.source.notify_waiters();
    }

    /// Makes `token` the current one, whether fetched or read from the shared cache, and
    /// sets when it is refreshed.
    fn install(&self, local: &mut Local, token: Arc<Token>, credential_generation: u64, message: &'static str) {
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
            lifetime = %humantime::format_duration(token.lifetime),
            expires_in = %humantime::format_duration(Duration::from_secs(token.expires.saturating_duration_since(Instant::now()).as_secs())),
            refresh_in = %humantime::format_duration(Duration::from_secs(
                (token.issued + refresh_in).saturating_duration_since(Instant::now()).as_secs()
            )),
            credential_generation,
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
mod tests {
    //! The engine against an in-memory token source, under paused tokio time: no sockets,
    //! no real waiting, jitter off.

    use super::*;
    use crate::config::{CredentialSource, CredentialsConfig, RequestFormat};
    use crate::secret::Secret;
    use crate::token::Fetched;
    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Answers token requests from a script (then successes), after `delay`.
    #[derive(Debug, Clone, Default)]
    struct Scripted {
        calls: Arc<AtomicU64>,
        script: Arc<Mutex<VecDeque<Result<Duration, FetchError>>>>,
        /// The quota readings each answer reports, in order (then none).
        quota: Arc<Mutex<VecDeque<Vec<Bucket>>>>,
        delay: Duration,
        lifetime: Duration,
    }

    impl Scripted {
        fn new(lifetime: Duration) -> Self {
            Self { lifetime, ..Self::default() }
        }
        fn then(self, r: Result<Duration, FetchError>) -> Self {
            self.script.lock().push_back(r);
            self
        }
        fn calls(&self) -> u64 {
            self.calls.load(Ordering::SeqCst)
        }
        /// The next answer reports one bucket.
        fn quota(self, name: &'static str, limit: u64, remaining: u64, reset_in: Duration) -> Self {
            let reset = SystemTime::now() + reset_in;
            self.quota.lock().push_back(vec![Bucket { name, limit, remaining, reset, clamped: false }]);
            self
        }
    }

    impl Fetch for Scripted {
        async fn fetch(&self, _: &crate::credentials::CredentialSet) -> Answer {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(self.delay).await;
            let next = self.script.lock().pop_front().unwrap_or(Ok(self.lifetime));
            let quota = self.quota.lock().pop_front().unwrap_or_default();
            let result = next.map(|lifetime| Fetched { access_token: Secret::new(format!("token-{n}")), lifetime });
            Answer { result, quota }
        }
    }

    fn config(max_per_minute: u32) -> TokenConfig {
        TokenConfig {
            url: "http://127.0.0.1/oauth/token".parse().unwrap(),
            audience: "https://api.pinecone.io/".into(),
            request_format: RequestFormat::Json,
            refresh_at: 0.5,
            refresh_jitter: 0.1,
            timeout: Duration::from_secs(10),
            max_requests_per_minute: max_per_minute,
            shared_cache: None,
        }
    }

    fn credentials() -> Credentials {
        Credentials::load(&CredentialsConfig {
            client_id: CredentialSource::Value(Secret::new("id")),
            client_secret: CredentialSource::Value(Secret::new("secret")),
        })
        .unwrap()
    }

    fn start(fetcher: Scripted, max_per_minute: u32) -> (TokenSource, tokio::task::JoinHandle<()>) {
        let source = TokenSource::new(Arc::new(Metrics::new()), Duration::from_secs(10));
        let refresher =
            Refresher::new(source.clone(), fetcher, credentials(), &config(max_per_minute)).without_jitter();
        (source, tokio::spawn(refresher.run(std::future::pending())))
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[tokio::test(start_paused = true)]
    async fn first_token_at_once_then_refresh_at_half_life() {
        let fetcher = Scripted::new(S(100));
        let (source, _task) = start(fetcher.clone(), 6);
        let t0 = Instant::now();
        let token = source.get().await.unwrap();
        assert_eq!(token.generation, 1);
        assert_eq!(fetcher.calls(), 1);
        assert_eq!(Instant::now(), t0, "the first request goes out at once");
        tokio::time::sleep(S(49)).await;
        assert_eq!(fetcher.calls(), 1, "no refresh before refresh_at");
        tokio::time::sleep(S(2)).await;
        assert_eq!(fetcher.calls(), 2, "refreshed at half the lifetime");
        assert_eq!(source.current().unwrap().generation, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_share_one_request() {
        let mut fetcher = Scripted::new(S(100));
        fetcher.delay = Duration::from_millis(500);
        let (source, _task) = start(fetcher.clone(), 6);
        let waiters: Vec<_> = (0..100)
            .map(|_| {
                tokio::spawn({
                    let s = source.clone();
                    async move { s.get().await }
                })
            })
            .collect();
        for w in waiters {
            assert_eq!(w.await.unwrap().unwrap().generation, 1);
        }
        assert_eq!(fetcher.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_refresh_keeps_the_usable_token() {
        let fetcher = Scripted::new(S(100)).then(Ok(S(100))).then(Err(FetchError::transient("HTTP 503")));
        let (source, _task) = start(fetcher.clone(), 6);
        source.get().await.unwrap();
        tokio::time::sleep(S(51)).await;
        assert_eq!(fetcher.calls(), 2, "the refresh was tried");
        let token = source.current().expect("the old token is still usable");
        assert_eq!(token.generation, 1);
        assert_eq!(source.snapshot().last_error.unwrap().kind, "transient_error");
        // The retry (after a 1 s backoff) replaces it.
        tokio::time::sleep(S(2)).await;
        assert_eq!(fetcher.calls(), 3);
        assert_eq!(source.current().unwrap().generation, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn no_token_after_its_usable_window() {
        // Every refresh fails: the token must stop being handed out at 90 s
        // (lifetime 100 s, margin 10 s), never later.
        let fetcher = Scripted::new(S(100)).then(Ok(S(100)));
        for _ in 0..100 {
            fetcher.script.lock().push_back(Err(FetchError::transient("down")));
        }
        let (source, _task) = start(fetcher.clone(), 60);
        source.get().await.unwrap();
        tokio::time::sleep(Duration::from_millis(89_900)).await;
        assert!(source.current().is_some());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(source.current().is_none());
        match source.get().await {
            Err(TokenUnavailable::Timeout { retry_after }) => assert!(retry_after >= S(1)),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rejected_credentials_fail_waiters_at_once_and_retry_after_a_minute() {
        let rejected =
            FetchError::Rejected { status: 401, error: "access_denied".into(), description: "Unauthorized".into() };
        let fetcher = Scripted::new(S(100)).then(Err(rejected));
        let (source, _task) = start(fetcher.clone(), 6);
        let t0 = Instant::now();
        assert_eq!(source.get().await.unwrap_err(), TokenUnavailable::CredentialsRejected);
        assert!(Instant::now() - t0 < S(1), "not held for token.timeout");
        tokio::time::sleep(S(59)).await;
        assert_eq!(fetcher.calls(), 1, "no retry within a minute");
        tokio::time::sleep(S(2)).await;
        assert_eq!(fetcher.calls(), 2);
        assert_eq!(source.current().unwrap().generation, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn invalidation_fetches_once_for_many_reports() {
        let fetcher = Scripted::new(S(1000));
        let (source, _task) = start(fetcher.clone(), 6);
        let first = source.get().await.unwrap();
        for _ in 0..50 {
            source.invalidate(first.generation);
        }
        let newer = source.newer_than(first.generation).await.unwrap();
        assert_eq!(newer.generation, 2);
        // A late report about the old generation changes nothing.
        source.invalidate(first.generation);
        tokio::time::sleep(S(10)).await;
        assert_eq!(fetcher.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spent_bucket_holds_every_request_until_its_reset() {
        // The first answer says the hourly bucket is spent for 200 s. The token (100 s) is
        // used to the end of its usable window (90 s), then no token is had, but nothing
        // is asked of the endpoint before the reset.
        let fetcher = Scripted::new(S(100)).quota("per_hour", 2, 0, S(200));
        let (source, _task) = start(fetcher.clone(), 6);
        assert_eq!(source.get().await.unwrap().generation, 1);
        let quota = source.snapshot().quota;
        assert_eq!((quota[0].bucket, quota[0].remaining, quota[0].spent), ("per_hour", 0, true));
        tokio::time::sleep(S(60)).await;
        assert_eq!(fetcher.calls(), 1, "no refresh at the refresh point");
        assert_eq!(source.current().unwrap().generation, 1, "the token stays in use");
        tokio::time::sleep(S(31)).await;
        assert!(source.current().is_none(), "not past its usable window");
        assert!(source.not_ready_reason().unwrap().contains("quota is spent (bucket per_hour"));
        match source.get().await {
            Err(TokenUnavailable::Timeout { .. }) => {}
            other => panic!("expected a timeout, got {other:?}"),
        }
        tokio::time::sleep_until(Instant::now() + S(199) - S(101)).await;
        assert_eq!(fetcher.calls(), 1, "nothing sent into the spent bucket");
        tokio::time::sleep(S(2)).await;
        assert_eq!(fetcher.calls(), 2, "sent at the reset");
        assert_eq!(source.current().unwrap().generation, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_waits_for_its_retry_after_whatever_the_reset_says() {
        let too_many = FetchError::Transient { reason: "HTTP 429".into(), retry_after: Some(S(30)) };
        let fetcher = Scripted::new(S(1000)).then(Err(too_many)).quota("rate", 30, 0, S(120));
        let (source, _task) = start(fetcher.clone(), 6);
        assert!(source.current().is_none());
        tokio::time::sleep(S(29)).await;
        assert_eq!(fetcher.calls(), 1, "not before Retry-After");
        tokio::time::sleep(S(2)).await;
        assert_eq!(fetcher.calls(), 2, "Retry-After (30 s) wins over the bucket's reset at 120 s");
        assert!(source.current().is_some());
        // A Retry-After longer than the reset wins too.
        let longer = FetchError::Transient { reason: "HTTP 429".into(), retry_after: Some(S(300)) };
        let fetcher = Scripted::new(S(1000)).then(Err(longer));
        let fetcher = fetcher.quota("rate", 30, 0, S(120));
        let (_source, _task) = start(fetcher.clone(), 6);
        tokio::time::sleep_until(Instant::now() + S(299)).await;
        assert_eq!(fetcher.calls(), 1);
        tokio::time::sleep(S(2)).await;
        assert_eq!(fetcher.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_low_bucket_puts_the_refresh_off_to_the_latest_safe_point() {
        // Lifetime 1000 s: refresh due at 500 s, usable until 940 s, token.timeout 10 s, so
        // the latest safe point is 930 s. 3 of 50 left is low.
        let fetcher = Scripted::new(S(1000)).quota("per_day", 50, 3, S(5000));
        let (source, _task) = start(fetcher.clone(), 6);
        source.get().await.unwrap();
        assert!(source.snapshot().quota[0].low);
        tokio::time::sleep(S(929)).await;
        assert_eq!(fetcher.calls(), 1, "not at the refresh point");
        tokio::time::sleep(S(2)).await;
        assert_eq!(fetcher.calls(), 2, "at the latest safe point");
        assert_eq!(source.current().unwrap().generation, 2, "before the old token stopped being usable");
        // That answer said nothing of quotas: the reading stays, so the next refresh is
        // put off the same way.
        tokio::time::sleep(S(600)).await;
        assert_eq!(fetcher.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_holds_when_everything_fails() {
        let fetcher = Scripted::new(S(100));
        for _ in 0..1000 {
            fetcher.script.lock().push_back(Err(FetchError::transient("down")));
        }
        let (_source, _task) = start(fetcher.clone(), 3);
        // Backoff alone would allow more than 3 requests in the first minute (1+2+4+8+…).
        tokio::time::sleep(S(60) - Duration::from_millis(1)).await;
        assert!(fetcher.calls() <= 3, "{} requests in a minute", fetcher.calls());
        tokio::time::sleep(S(600)).await;
        assert!(fetcher.calls() <= 3 * 11, "{}", fetcher.calls());
    }

    mod property {
        //! For any lifetime, any pattern of failures, any fetch latency and any 401s: a token
        //! handed out is never past its real expiry, and no 60-second window holds more
        //! token requests than the budget.

        use super::*;
        use proptest::prelude::*;
        use std::collections::HashMap;

        #[derive(Debug, Clone)]
        enum Outcome {
            Ok,
            Transient(Option<u64>),
            Rejected,
        }

        fn outcome() -> impl Strategy<Value = Outcome> {
            prop_oneof![
                2 => Just(Outcome::Ok),
                3 => proptest::option::of(0u64..900).prop_map(Outcome::Transient),
                1 => Just(Outcome::Rejected),
            ]
        }

        /// Records when each request was sent and when each token really expires (its
        /// lifetime counted from the answer, which comes `delay` after the request).
        #[derive(Debug, Default)]
        struct Truth {
            calls: Mutex<Vec<Instant>>,
            expiries: Mutex<HashMap<String, Instant>>,
            script: Mutex<VecDeque<Outcome>>,
            lifetime: Duration,
            delay: Duration,
        }

        impl Fetch for Arc<Truth> {
            async fn fetch(&self, _: &crate::credentials::CredentialSet) -> Answer {
                Answer::from(self.answer().await)
            }
        }

        impl Truth {
            async fn answer(&self) -> Result<Fetched, FetchError> {
                let n = {
                    let mut calls = self.calls.lock();
                    calls.push(Instant::now());
                    calls.len()
                };
                tokio::time::sleep(self.delay).await;
                match self.script.lock().pop_front().unwrap_or(Outcome::Ok) {
                    Outcome::Ok => {
                        let name = format!("token-{n}");
                        self.expiries.lock().insert(name.clone(), Instant::now() + self.lifetime);
                        Ok(Fetched { access_token: Secret::new(name), lifetime: self.lifetime })
                    }
                    Outcome::Transient(retry_after) => Err(FetchError::Transient {
                        reason: "scripted".into(),
                        retry_after: retry_after.map(Duration::from_secs),
                    }),
                    Outcome::Rejected => Err(FetchError::Rejected {
                        status: 401,
                        error: "access_denied".into(),
                        description: "Unauthorized".into(),
                    }),
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn no_expired_token_is_handed_out_and_the_budget_holds(
                lifetime in 1u64..172_800,
                script in proptest::collection::vec(outcome(), 0..200),
                max_per_minute in 1u32..12,
                steps in proptest::collection::vec((0.0f64..0.3, any::<bool>()), 1..300),
                delay_ms in 0u64..3_000,
            ) {
                let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
                rt.block_on(async move {
                    let truth = Arc::new(Truth {
                        script: Mutex::new(script.into()),
                        lifetime: Duration::from_secs(lifetime),
                        delay: Duration::from_millis(delay_ms),
                        ..Truth::default()
                    });
                    let source = TokenSource::new(Arc::new(Metrics::new()), Duration::from_secs(10));
                    let refresher = Refresher::new(source.clone(), truth.clone(), credentials(), &config(max_per_minute));
                    let task = tokio::spawn(refresher.run(std::future::pending()));
                    // Steps of up to 0.3 lifetimes; at each, a request looks at the token,
                    // and sometimes the upstream rejects it.
                    for (fraction, reject) in steps {
                        let gap = Duration::from_secs(lifetime).mul_f64(fraction).max(Duration::from_millis(1));
                        tokio::time::sleep(gap).await;
                        if let Some(token) = source.current() {
                            let name = token.authorization().to_str().unwrap().trim_start_matches("Bearer ").to_owned();
                            let expires = truth.expiries.lock()[&name];
                            assert!(Instant::now() < expires, "{name} handed out after its real expiry");
                            if reject {
                                source.invalidate(token.generation);
                            }
                        }
                    }
                    task.abort();
                    let calls = truth.calls.lock().clone();
                    let max = max_per_minute as usize;
                    for window in calls.windows(max + 1) {
                        assert!(
                            window[max] - window[0] >= schedule::BUDGET_WINDOW,
                            "{} requests within {:?}", max + 1, window[max] - window[0]
                        );
                    }
                });
            }
        }
    }
}
