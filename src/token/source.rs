//! [`TokenSource`]: what requests, `/readyz` and `/status` read of the token engine. The
//! [`super::refresher::Refresher`] is the only writer.
//!
//! Requests never fetch: they read the current token (a read lock held for one `Arc`
//! clone, never across an `.await`), or, when none is usable, wait for the refresher's next
//! result, up to `token.timeout`. A failed fetch never touches the current token.

use super::Token;
use super::quota::Quotas;
use super::schedule::Budget;
use super::shared::CacheStatus;
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
    /// The token endpoint rejected the request and no usable token is left: the credentials,
    /// or (`audience`) the audience asked for.
    CredentialsRejected { audience: bool },
}

/// The last failed token request, for `/status` and `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastError {
    /// When, in RFC 3339 (UTC, seconds), as every time in `/status`.
    pub at: String,
    /// `transient_error` or `rejected`.
    pub kind: &'static str,
    pub message: String,
}

#[derive(Debug, Default)]
pub(super) struct Status {
    pub(super) rejected: bool,
    /// The rejection was of the audience, not the credentials.
    pub(super) rejected_audience: bool,
    pub(super) last_error: Option<LastError>,
    pub(super) next_fetch: Option<SystemTime>,
    pub(super) invalidated: u64,
    pub(super) ever: bool,
    pub(super) credentials_in_use: u64,
    pub(super) credentials_tried: u64,
    /// The quota buckets the token endpoint last reported, and the fingerprint of the
    /// client id they belong to (a quota is per application).
    pub(super) quotas: Quotas,
    pub(super) quota_client: Option<String>,
    pub(super) shared_cache: Option<Arc<Mutex<CacheStatus>>>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) token: RwLock<Option<Arc<Token>>>,
    pub(super) status: Mutex<Status>,
    /// Tells the refresher to look again (a 401 invalidated the token).
    pub(super) wake: Notify,
    /// Bumped after every token request, so waiters look again.
    pub(super) changed: watch::Sender<u64>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) timeout: Duration,
    /// The token request budget. Kept here, not in the loop, so that the 60-second
    /// window survives anything that restarts the loop.
    pub(super) budget: Mutex<Option<Budget>>,
}

/// The handle shared by the request path, the ops endpoints and the refresher.
#[derive(Debug, Clone)]
pub struct TokenSource {
    pub(super) shared: Arc<Shared>,
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
            let (rejected, audience) = {
                let status = self.shared.status.lock();
                (status.rejected, status.rejected_audience)
            };
            if rejected {
                return Err(TokenUnavailable::CredentialsRejected { audience });
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

    pub(super) fn notify_waiters(&self) {
        self.shared.changed.send_modify(|v| *v += 1);
    }
}

pub(super) fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
