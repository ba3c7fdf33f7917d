//! [`KeySource`]: what requests, `/readyz`, `/status` and `/metrics` read of the managed
//! key (the current key, or a wait for the next), and what the keeper writes into it.
//! One lock read a request, never held across an `.await`.

use crate::metrics::KeyMetrics;
use http::HeaderValue;
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// A key in use: its `Api-Key` header value built once (marked sensitive), and its dates.
pub struct ApiKey {
    header: HeaderValue,
    pub id: String,
    pub name: String,
    /// Counts keys since start: 1 for the first.
    pub generation: u64,
    pub fingerprint: String,
    pub rotate_at: Instant,
    /// The lease end: never used after it.
    pub usable_until: Instant,
    pub created_wall: SystemTime,
    pub rotate_wall: SystemTime,
    pub lease_end_wall: SystemTime,
    /// Created by this proxy (not taken from the fleet's entry).
    pub own: bool,
    /// The fleet's key (in the shared entry): whoever creates the next one deletes it.
    pub shared: bool,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("generation", &self.generation)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// A key from its `Api-Key` value, which is marked sensitive here.
    pub fn new(mut header: HeaderValue, id: String, name: String, generation: u64, fingerprint: String) -> Self {
        header.set_sensitive(true);
        let (now, wall) = (Instant::now(), SystemTime::now());
        Self {
            header,
            id,
            name,
            generation,
            fingerprint,
            rotate_at: now,
            usable_until: now,
            created_wall: wall,
            rotate_wall: wall,
            lease_end_wall: wall,
            own: true,
            shared: false,
        }
    }

    /// Sets its lease, counted from `from` (when its creation began, so that the lease end
    /// its name carries is never before its last use): rotated after `rotate_after`, never
    /// used after `lifetime`.
    pub fn leased(mut self, from: (Instant, SystemTime), rotate_after: Duration, lifetime: Duration) -> Self {
        let (start, wall) = from;
        self.rotate_at = start + rotate_after;
        self.usable_until = start + lifetime;
        self.rotate_wall = wall + rotate_after;
        self.lease_end_wall = wall + lifetime;
        self
    }

    /// The `Api-Key` value.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    pub fn usable(&self, now: Instant) -> bool {
        now < self.usable_until
    }
}

/// Why a request got no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUnavailable {
    /// When the next creation is due.
    pub retry_after: Duration,
}

#[derive(Debug, Default)]
pub(super) struct Status {
    pub(super) invalidated: u64,
    pub(super) next_create: Option<Instant>,
    /// The last failure, and when.
    pub(super) last_error: Option<(String, SystemTime)>,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) key: Mutex<Option<Arc<ApiKey>>>,
    pub(super) status: Mutex<Status>,
    pub(super) wake: Notify,
    pub(super) changed: watch::Sender<u64>,
    pub(super) metrics: KeyMetrics,
    wait: Duration,
    project: String,
    roles: Vec<String>,
}

/// The handle requests use. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KeySource {
    pub(super) shared: Arc<Shared>,
}

/// What `/status` shows of the managed key: never its value.
#[derive(Debug, Serialize)]
pub struct KeySnapshot {
    pub project_id: String,
    pub roles: Vec<String>,
    pub usable: bool,
    pub id: Option<String>,
    pub name: Option<String>,
    pub generation: u64,
    pub created_at: Option<String>,
    pub lease_end: Option<String>,
    pub next_rotation: Option<String>,
    /// SHA-256 of the value, first 12 hex digits.
    pub fingerprint: Option<String>,
    /// Whether this proxy created it (with a fleet, one proxy creates and the others take it).
    pub created_here: Option<bool>,
    pub last_error: Option<LastKeyError>,
}

#[derive(Debug, Serialize)]
pub struct LastKeyError {
    pub message: String,
    pub at: String,
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl KeySource {
    /// A source for keys of `project` with `roles`; requests wait up to `wait` for one.
    pub fn new(project: &str, roles: &[String], wait: Duration, metrics: KeyMetrics) -> Self {
        let (changed, _) = watch::channel(0);
        let shared = Shared {
            key: Mutex::default(),
            status: Mutex::default(),
            wake: Notify::new(),
            changed,
            metrics,
            wait,
            project: project.to_owned(),
            roles: roles.to_vec(),
        };
        Self { shared: Arc::new(shared) }
    }

    /// The current key, if usable now.
    pub fn current(&self) -> Option<Arc<ApiKey>> {
        self.shared.key.lock().clone().filter(|k| k.usable(Instant::now()))
    }

    /// A usable key: the current one, or the next the keeper makes, within the wait.
    pub async fn get(&self) -> Result<Arc<ApiKey>, KeyUnavailable> {
        if let Some(key) = self.current() {
            return Ok(key);
        }
        self.newer_than(0).await
    }

    /// A usable key newer than `generation`, waiting up to the wait.
    pub async fn newer_than(&self, generation: u64) -> Result<Arc<ApiKey>, KeyUnavailable> {
        let mut changed = self.shared.changed.subscribe();
        let deadline = Instant::now() + self.shared.wait;
        loop {
            if let Some(key) = self.current().filter(|k| k.generation > generation) {
                return Ok(key);
            }
            if tokio::time::timeout_at(deadline, changed.changed()).await.is_err() {
                let next = self.shared.status.lock().next_create;
                let wait = next.map_or(Duration::ZERO, |t| t.saturating_duration_since(Instant::now()));
                return Err(KeyUnavailable { retry_after: Duration::from_secs(wait.as_secs() + 1) });
            }
        }
    }

    /// Reports that the control or data plane answered 401 to a request that carried key
    /// `generation`: one new key for all such reports; reports about an older key are ignored.
    /// Answers whether this report was the one that asked for the new key.
    pub fn invalidate(&self, generation: u64) -> bool {
        let current = self.shared.key.lock().as_ref().map(|k| k.generation);
        if current != Some(generation) {
            return false;
        }
        let mut status = self.shared.status.lock();
        if generation <= status.invalidated {
            return false;
        }
        status.invalidated = generation;
        drop(status);
        self.shared.wake.notify_one();
        true
    }

    /// Told after every creation attempt, whatever its outcome.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// The last failure's message, for logs and tests.
    pub fn last_error(&self) -> Option<String> {
        self.shared.status.lock().last_error.as_ref().map(|(message, _)| message.clone())
    }

    /// Why `/readyz` says not ready, if it does: no usable key.
    pub fn not_ready_reason(&self) -> Option<String> {
        if self.current().is_some() {
            return None;
        }
        Some(match self.last_error() {
            Some(error) => format!("no usable managed API key: {error}"),
            None => "no managed API key yet".to_owned(),
        })
    }

    /// Sets `api_key_usable` as of now (a lease may have ended since the keeper last ran).
    pub fn update_gauges(&self) {
        self.shared.metrics.usable.set(i64::from(self.current().is_some()));
    }

    /// What `/status` shows.
    pub fn snapshot(&self) -> KeySnapshot {
        let key = self.shared.key.lock().clone();
        let usable = key.as_ref().is_some_and(|k| k.usable(Instant::now()));
        let last_error = self.shared.status.lock().last_error.clone();
        KeySnapshot {
            project_id: self.shared.project.clone(),
            roles: self.shared.roles.clone(),
            usable,
            id: key.as_ref().map(|k| k.id.clone()),
            name: key.as_ref().map(|k| k.name.clone()),
            generation: key.as_ref().map_or(0, |k| k.generation),
            created_at: key.as_ref().map(|k| rfc3339(k.created_wall)),
            lease_end: key.as_ref().map(|k| rfc3339(k.lease_end_wall)),
            next_rotation: key.as_ref().map(|k| rfc3339(k.rotate_wall)),
            fingerprint: key.as_ref().map(|k| k.fingerprint.clone()),
            created_here: key.as_ref().map(|k| k.own),
            last_error: last_error.map(|(message, at)| LastKeyError { message, at: rfc3339(at) }),
        }
    }

    /// Makes `key` the current one; answers the one it replaces.
    pub(super) fn install(&self, key: ApiKey) -> Option<Arc<ApiKey>> {
        let lease_end = key.lease_end_wall.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let replaced = self.shared.key.lock().replace(Arc::new(key));
        self.shared.metrics.usable.set(1);
        self.shared.metrics.lease_end.set(lease_end);
        replaced
    }

    /// Takes the current key away (at shutdown).
    pub(super) fn take(&self) -> Option<Arc<ApiKey>> {
        self.shared.metrics.usable.set(0);
        self.shared.key.lock().take()
    }
}
