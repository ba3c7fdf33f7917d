//! The managed key's engine: [`Keeper`], the one loop that creates, rotates and deletes keys
//! in a [`KeySource`] (what requests read).
//!
//! Only the keeper calls `create_api_key`, so at most one creation is in flight and the
//! hourly budget (`api_key.max_creates_per_hour`) is kept in one place. The loop only sleeps
//! and calls: [`next_create`] decides when the next key is due (at once without one, or
//! after a 401 to the current one; at `rotate_at` of the lease otherwise; never inside a
//! backoff or the 10 minutes after a refusal), the budget whether it may go. A rotation
//! overlaps: the new key is used by every new request at once, the old one is deleted
//! `grace` later. On shutdown the keys still held are deleted unless they are shared.

use super::admin::{Created, KeyError, Listed};
use super::fleet::{Found, KeyCache, Named, SharedKey};
use super::lease::{self, Lease};
use super::source::{ApiKey, KeySource};
use crate::metrics::KeyOperation;
use crate::token::schedule::{self, Budget};
use http::HeaderValue;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The Admin API calls the keeper makes ([`super::admin::AdminKeys`], or a test's).
pub trait Keys: Send + Sync + 'static {
    fn create(
        &self,
        project: &str,
        name: &str,
        roles: &[String],
    ) -> impl Future<Output = Result<Created, KeyError>> + Send;
    fn delete(&self, id: &str) -> impl Future<Output = Result<(), KeyError>> + Send;
    fn list(&self, project: &str) -> impl Future<Output = Result<Vec<Listed>, KeyError>> + Send;
    /// Resolves once the calls can be made (a usable access token is held), so that waiting
    /// for the token spends none of the creation budget.
    fn ready(&self) -> impl Future<Output = ()> + Send;
}

impl Keys for super::admin::AdminKeys {
    fn create(
        &self,
        project: &str,
        name: &str,
        roles: &[String],
    ) -> impl Future<Output = Result<Created, KeyError>> + Send {
        super::admin::AdminKeys::create(self, project, name, roles)
    }
    fn delete(&self, id: &str) -> impl Future<Output = Result<(), KeyError>> + Send {
        super::admin::AdminKeys::delete(self, id)
    }
    fn list(&self, project: &str) -> impl Future<Output = Result<Vec<Listed>, KeyError>> + Send {
        super::admin::AdminKeys::list(self, project)
    }
    fn ready(&self) -> impl Future<Output = ()> + Send {
        super::admin::AdminKeys::token_ready(self)
    }
}

/// What `[api_key]` says of the keys to keep.
#[derive(Debug, Clone)]
pub struct KeyPlan {
    pub project: String,
    pub roles: Vec<String>,
    pub prefix: String,
    pub lease: Lease,
    pub max_creates_per_hour: u32,
    pub delete_on_shutdown: bool,
}

/// What the keeper knows when it decides when to create the next key.
#[derive(Debug, Clone, Copy)]
pub struct CreatePlan {
    pub now: Instant,
    /// The current key's generation, rotation point and lease end.
    pub current: Option<(u64, Instant, Instant)>,
    /// The newest generation that a plane rejected with 401.
    pub invalidated: u64,
    /// No creation before this, after a failure.
    pub hold: Option<Instant>,
}

/// When the next key is due: at once without a usable key or after a 401 to the current
/// one, at its rotation point otherwise; never inside a hold. The budget applies on top.
pub fn next_create(p: &CreatePlan) -> Instant {
    let wanted = match p.current {
        None => p.now,
        Some((generation, _, usable_until)) if generation <= p.invalidated || p.now >= usable_until => p.now,
        Some((_, rotate_at, _)) => rotate_at,
    };
    p.hold.map_or(wanted, |until| wanted.max(until))
}

/// A key being let go: deleted when `at` comes.
#[derive(Debug)]
struct Retiring {
    id: String,
    name: String,
    at: Instant,
}

/// The loop that keeps a usable key in a [`KeySource`].
#[derive(Debug)]
pub struct Keeper<K> {
    source: KeySource,
    keys: K,
    plan: KeyPlan,
    generation: u64,
    failures: u32,
    hold: Option<Instant>,
    budget: Budget,
    retiring: Vec<Retiring>,
    /// When the janitor looks for orphans next: at start, then hourly.
    janitor_at: Instant,
    jitter: bool,
    /// The fleet's entry, with `token.shared_cache`.
    cache: Option<KeyCache>,
    /// When the fleet's entry may next be read while this proxy's creations are held back.
    peek_at: Instant,
}

/// How often the fleet's entry is read while this proxy's own creations are held back.
const PEEK_EVERY: Duration = Duration::from_secs(5);

/// How often the janitor looks for orphaned keys (PRODUCT.md: at start and every hour).
const JANITOR_EVERY: Duration = Duration::from_secs(3600);

/// The window of `api_key.max_creates_per_hour`.
const CREATE_WINDOW: Duration = Duration::from_secs(3600);
/// How soon a failed deletion is tried again.
const DELETE_RETRY: Duration = Duration::from_secs(60);

impl<K: Keys> Keeper<K> {
    pub fn new(source: KeySource, keys: K, plan: KeyPlan) -> Self {
        let budget = Budget::per_window(plan.max_creates_per_hour, CREATE_WINDOW);
        Self {
            source,
            keys,
            plan,
            generation: 0,
            failures: 0,
            hold: None,
            budget,
            retiring: Vec::new(),
            janitor_at: Instant::now(),
            jitter: true,
            cache: None,
            peek_at: Instant::now(),
        }
    }

    /// Shares the key with the fleet through `cache`.
    pub fn with_fleet(mut self, cache: KeyCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Switches off the backoff's jitter, for tests.
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// Runs until `shutdown` resolves, then deletes the keys it replaced and the one it holds
    /// (unless `delete_on_shutdown` is off: a fleet's key outlives one proxy), taking at most
    /// `delete_within` for that.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>, delete_within: Duration) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = self.turn() => {}
                () = &mut shutdown => break,
            }
        }
        // Replaced keys go in any case; the current one unless the fleet shares it.
        let current = self.plan.delete_on_shutdown;
        if tokio::time::timeout(delete_within, self.delete_all(current)).await.is_err() {
            tracing::warn!(
                within = %crate::logging::Human(delete_within),
                "managed API key: not all keys were deleted within shutdown.grace; the janitor of the next proxy \
                 of the project deletes them once their lease and grace have passed",
            );
        }
    }

    /// One turn: a new key if due (the fleet's, or one created), else the fleet's entry read
    /// if a new key is wanted but held back, else delete what is due, else sweep for orphans
    /// if due, else wait for the earliest of them.
    async fn turn(&mut self) {
        let now = Instant::now();
        let current = self.source.shared.key.lock().clone();
        let invalidated = self.source.shared.status.lock().invalidated;
        let plan = CreatePlan {
            now,
            current: current.as_ref().map(|k| (k.generation, k.rotate_at, k.usable_until)),
            invalidated,
            hold: None,
        };
        let wanted = next_create(&plan);
        let create_at = self.budget.earliest(next_create(&CreatePlan { hold: self.hold, ..plan }));
        self.source.shared.status.lock().next_create = Some(create_at);
        // The key held, when a new one is wanted: the fleet's entry must bring another.
        let unwanted: Vec<String> = current.iter().map(|k| k.id.clone()).collect();
        if create_at <= now {
            self.keys.ready().await;
            return self.renew(&unwanted).await;
        }
        let peek = self.cache.is_some() && wanted <= now;
        if peek && self.peek_at <= now {
            self.peek_at = now + PEEK_EVERY;
            return self.peek(&unwanted).await;
        }
        if let Some(i) = self.retiring.iter().position(|r| r.at <= now) {
            let retiring = self.retiring.remove(i);
            return self.delete_once(retiring).await;
        }
        if self.janitor_at <= now {
            self.janitor_at = now + JANITOR_EVERY;
            return self.sweep().await;
        }
        let first = if peek { create_at.min(self.peek_at) } else { create_at };
        let wake = self.retiring.iter().map(|r| r.at).fold(first.min(self.janitor_at), Instant::min);
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = self.source.shared.wake.notified() => {}
        }
    }

    /// The next key: the fleet's if it has one worth taking, else one created (under the
    /// fleet's lock, then shared), else, without a fleet or when Redis fails, one of ours.
    async fn renew(&mut self, unwanted: &[String]) {
        let Some(cache) = self.cache.as_mut() else { return self.create_once(Instant::now(), None, false).await };
        match cache.find(unwanted).await {
            Found::Adopt(shared) => self.adopt(shared),
            Found::Create { held, previous } => {
                self.create_once(Instant::now(), previous, true).await;
                let created = self.source.shared.key.lock().clone().filter(|k| k.own && !unwanted.contains(&k.id));
                let cache = self.cache.as_mut().expect("checked above");
                if let Some(key) = created {
                    cache.store(&key).await;
                }
                cache.release(held).await;
            }
            Found::Alone => self.create_once(Instant::now(), None, false).await,
        }
    }

    /// Reads the fleet's entry while this proxy may not create: another proxy's new key is
    /// taken without spending this one's budget.
    async fn peek(&mut self, unwanted: &[String]) {
        let Some(cache) = self.cache.as_mut() else { return };
        if let Some(shared) = cache.peek(unwanted).await {
            self.adopt(shared);
        }
    }

    /// Takes the fleet's key: its lease is the one sealed with it.
    fn adopt(&mut self, shared: SharedKey) {
        let lease = self.plan.lease;
        let start = shared.lease_end.checked_sub(lease.lifetime).unwrap_or(shared.lease_end);
        let elapsed = SystemTime::now().duration_since(start).unwrap_or_default();
        let from = (Instant::now().checked_sub(elapsed).unwrap_or_else(Instant::now), start);
        match self.install(shared.created, from, (false, true)) {
            Ok(()) => {
                self.failures = 0;
                self.hold = None;
                self.source.shared.status.lock().last_error = None;
            }
            Err(error) => tracing::warn!(error = %error, "managed API key: the fleet's key could not be used"),
        }
        self.source.shared.changed.send_modify(|n| *n += 1);
    }

    /// Creates a key and makes it the current one (`shared`: for the fleet's entry);
    /// `previous` (the fleet's key it replaces) is deleted `grace` later.
    async fn create_once(&mut self, now: Instant, previous: Option<Named>, shared: bool) {
        self.budget.record(now);
        let from = (now, SystemTime::now());
        let name = lease::name(&self.plan.prefix, from.1 + self.plan.lease.lifetime, rand::random());
        let result = self.keys.create(&self.plan.project, &name, &self.plan.roles).await;
        let metrics = self.source.shared.metrics.clone();
        match result.and_then(|created| self.install(created, from, (true, shared))) {
            Ok(()) => {
                if let Some(Named { id, name }) = previous.filter(|p| !self.retiring.iter().any(|r| r.id == p.id)) {
                    self.retiring.push(Retiring { id, name, at: Instant::now() + self.plan.lease.grace });
                }
                metrics.operation(KeyOperation::Create, "success");
                self.failures = 0;
                self.hold = None;
                self.source.shared.status.lock().last_error = None;
            }
            Err(error) => {
                metrics.operation(KeyOperation::Create, error.result_label());
                self.failed(&error);
            }
        }
        self.source.shared.changed.send_modify(|n| *n += 1);
    }

    /// Makes a key the current one (`own`: created by this proxy; `shared`: the fleet's);
    /// the one it replaces is deleted `grace` later if it was this proxy's alone (a fleet's
    /// key is deleted by the creator of the next, once).
    fn install(
        &mut self,
        created: Created,
        from: (Instant, SystemTime),
        (own, shared): (bool, bool),
    ) -> Result<(), KeyError> {
        let header = HeaderValue::from_str(created.value.expose()).map_err(|_| KeyError::Transient {
            operation: "create_api_key",
            reason: "the value is not allowed in a header".into(),
        })?;
        let lease = self.plan.lease;
        self.generation += 1;
        let fingerprint = created.value.fingerprint();
        let mut key = ApiKey::new(header, created.id, created.name, self.generation, fingerprint).leased(
            from,
            lease.lifetime.mul_f64(lease.rotate_at),
            lease.lifetime,
        );
        (key.own, key.shared) = (own, shared);
        let previous = self.source.shared.key.lock().as_ref().map(|k| k.generation);
        let invalidated = self.source.shared.status.lock().invalidated;
        tracing::info!(
            target: crate::logging::AUDIT_TARGET,
            action = match (own, previous) {
                (false, _) => "api_key_adopted",
                (true, None) => "api_key_created",
                (true, Some(g)) if g <= invalidated => "api_key_replaced",
                (true, Some(_)) => "api_key_rotated",
            },
            id = %key.id,
            name = %key.name,
            project = %self.plan.project,
            roles = %self.plan.roles.join(","),
            lease_end = %humantime::format_rfc3339_seconds(key.lease_end_wall),
            fingerprint = %key.fingerprint,
            generation = key.generation,
            "audit",
        );
        if let Some(old) = self.source.install(key).filter(|old| old.own && !old.shared) {
            // Requests that carried it finish within the grace.
            let at = Instant::now() + lease.grace;
            self.retiring.push(Retiring { id: old.id.clone(), name: old.name.clone(), at });
        }
        Ok(())
    }

    fn failed(&mut self, error: &KeyError) {
        self.failures += 1;
        let delay = match error {
            KeyError::Rejected { .. } => lease::REFUSED_RETRY,
            KeyError::Transient { .. } => {
                let u = if self.jitter { rand::random::<f64>() } else { 0.5 };
                schedule::backoff(self.failures, u)
            }
        };
        self.hold = Some(Instant::now() + delay);
        tracing::warn!(error = %error, retry_in = %crate::logging::Human(delay), "managed API key: creation failed");
        self.source.shared.status.lock().last_error = Some((error.to_string(), SystemTime::now()));
    }

    async fn delete_once(&mut self, retiring: Retiring) {
        match self.delete_counted(&retiring.id).await {
            Ok(()) => tracing::info!(
                target: crate::logging::AUDIT_TARGET,
                action = "api_key_deleted",
                id = %retiring.id,
                name = %retiring.name,
                project = %self.plan.project,
                "audit",
            ),
            Err(error) => {
                tracing::warn!(error = %error, id = %retiring.id, "managed API key: deleting a replaced key failed; trying again");
                self.retiring.push(Retiring { at: Instant::now() + DELETE_RETRY, ..retiring });
            }
        }
    }

    /// `delete_api_key`, counted in `api_key_operations_total`.
    async fn delete_counted(&self, id: &str) -> Result<(), KeyError> {
        let result = self.keys.delete(id).await;
        let label = result.as_ref().map_or_else(KeyError::result_label, |()| "success");
        self.source.shared.metrics.operation(KeyOperation::Delete, label);
        result
    }

    /// The janitor: deletes the project's keys that are ours by name and past their lease
    /// end plus `grace` (a proxy killed with SIGKILL leaves one). Keys with other names, and
    /// the keys this proxy holds, are never touched.
    async fn sweep(&mut self) {
        let listed = match self.keys.list(&self.plan.project).await {
            Ok(listed) => listed,
            Err(error) => return tracing::warn!(error = %error, "managed API key: listing the project's keys failed"),
        };
        let held: Vec<String> = self.source.shared.key.lock().iter().map(|k| k.id.clone()).collect();
        let now = SystemTime::now();
        let orphans = listed.into_iter().filter(|k| {
            lease::is_orphan(&self.plan.prefix, &k.name, self.plan.lease.grace, now)
                && !held.contains(&k.id)
                && !self.retiring.iter().any(|r| r.id == k.id)
        });
        for orphan in orphans.collect::<Vec<_>>() {
            match self.delete_counted(&orphan.id).await {
                Ok(()) => {
                    self.source.shared.metrics.orphans_deleted.inc();
                    tracing::info!(
                        target: crate::logging::AUDIT_TARGET,
                        action = "api_key_orphan_deleted",
                        id = %orphan.id,
                        name = %orphan.name,
                        project = %self.plan.project,
                        "audit",
                    );
                }
                Err(error) => {
                    tracing::warn!(error = %error, id = %orphan.id, "managed API key: deleting an orphan failed")
                }
            }
        }
    }

    /// Deletes every replaced key, and the current one if `current` (at shutdown).
    async fn delete_all(&mut self, current: bool) {
        let current = if current { self.source.take() } else { None };
        let mut all: Vec<Retiring> = std::mem::take(&mut self.retiring);
        if let Some(key) = current {
            all.push(Retiring { id: key.id.clone(), name: key.name.clone(), at: Instant::now() });
        }
        for retiring in all {
            let id = retiring.id.clone();
            self.delete_once(retiring).await;
            // A failure was put back for later: at shutdown there is no later.
            self.retiring.retain(|r| r.id != id);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The keeper against in-memory keys, under paused tokio time: no sockets, no real waits.

    use super::*;
    use crate::secret::Secret;
    use parking_lot::Mutex;
    use std::collections::VecDeque;
    use std::sync::Arc;

    /// Keys made in memory: answers from a script (then successes), and what was made,
    /// tried and deleted.
    #[derive(Debug, Clone, Default)]
    struct Scripted {
        tried: Arc<Mutex<u32>>,
        created: Arc<Mutex<Vec<String>>>,
        deleted: Arc<Mutex<Vec<String>>>,
        script: Arc<Mutex<VecDeque<KeyError>>>,
        /// What `list` answers (the keys made here are added).
        others: Arc<Mutex<Vec<Listed>>>,
        lists: Arc<Mutex<u32>>,
        /// How many deletions fail (transiently) before they succeed.
        failing_deletes: Arc<Mutex<u32>>,
        /// Whether `list` answers with an error.
        failing_list: Arc<Mutex<bool>>,
    }

    impl Scripted {
        fn failing(self, errors: impl IntoIterator<Item = KeyError>) -> Self {
            self.script.lock().extend(errors);
            self
        }
        fn tried(&self) -> u32 {
            *self.tried.lock()
        }
        fn deleted(&self) -> Vec<String> {
            self.deleted.lock().clone()
        }
    }

    impl Keys for Scripted {
        async fn create(&self, _: &str, name: &str, _: &[String]) -> Result<Created, KeyError> {
            *self.tried.lock() += 1;
            if let Some(error) = self.script.lock().pop_front() {
                return Err(error);
            }
            let mut created = self.created.lock();
            created.push(name.to_owned());
            let n = created.len();
            Ok(Created { id: format!("k-{n}"), name: name.to_owned(), value: Secret::new(format!("pckey_{n}")) })
        }
        async fn delete(&self, id: &str) -> Result<(), KeyError> {
            let mut failing = self.failing_deletes.lock();
            if *failing > 0 {
                *failing -= 1;
                return Err(KeyError::Transient { operation: "delete_api_key", reason: "HTTP 503".into() });
            }
            self.deleted.lock().push(id.to_owned());
            Ok(())
        }
        async fn list(&self, _: &str) -> Result<Vec<Listed>, KeyError> {
            *self.lists.lock() += 1;
            if *self.failing_list.lock() {
                return Err(KeyError::Transient {
                    operation: "list_project_api_keys",
                    reason: "the answer does not parse".into(),
                });
            }
            let deleted = self.deleted.lock().clone();
            let mut all = self.others.lock().clone();
            let made: Vec<String> = self.created.lock().clone();
            all.extend(made.into_iter().enumerate().map(|(i, name)| Listed { id: format!("k-{}", i + 1), name }));
            Ok(all.into_iter().filter(|k| !deleted.contains(&k.id)).collect())
        }
        async fn ready(&self) {}
    }

    fn plan(max_creates_per_hour: u32, delete_on_shutdown: bool) -> KeyPlan {
        KeyPlan {
            project: "p-1".into(),
            roles: vec!["ControlPlaneViewer".into()],
            prefix: "app".into(),
            lease: Lease { lifetime: Duration::from_secs(100), rotate_at: 0.5, grace: Duration::from_secs(10) },
            max_creates_per_hour,
            delete_on_shutdown,
        }
    }

    fn start(keys: Scripted, plan: KeyPlan) -> (KeySource, crate::shutdown::Trigger, tokio::task::JoinHandle<()>) {
        let source = KeySource::new(
            &plan.project,
            &plan.roles,
            Duration::from_secs(5),
            crate::metrics::KeyMetrics::unregistered(),
        );
        let stop = crate::shutdown::Trigger::default();
        let keeper = Keeper::new(source.clone(), keys, plan).without_jitter();
        let task = tokio::spawn(keeper.run(stop.wait(), Duration::from_secs(25)));
        (source, stop, task)
    }

    fn rejected() -> KeyError {
        KeyError::Rejected {
            operation: "create_api_key",
            status: 403,
            message: "quota".into(),
            request_id: String::new(),
        }
    }

    fn transient() -> KeyError {
        KeyError::Transient { operation: "create_api_key", reason: "503".into() }
    }

    async fn pass(secs: u64) {
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_at_once_then_rotation_by_overlap_and_the_old_one_deleted_after_the_grace() {
        let keys = Scripted::default();
        let (source, _stop, _task) = start(keys.clone(), plan(10, true));
        let first = source.get().await.unwrap();
        assert_eq!((first.generation, first.name.starts_with("app-")), (1, true));
        assert!(format!("{first:?}").contains("k-1") && !format!("{first:?}").contains("pckey_1"), "no value in Debug");
        assert!(first.header().is_sensitive());
        for _ in 0..49 {
            pass(1).await;
            assert_eq!(source.current().unwrap().generation, 1, "used until its rotation point");
        }
        pass(2).await;
        assert_eq!(source.current().unwrap().generation, 2, "rotated at half the lease");
        assert!(keys.deleted().is_empty(), "the old key outlives the rotation by the grace");
        pass(8).await;
        assert!(keys.deleted().is_empty());
        pass(2).await;
        assert_eq!(keys.deleted(), ["k-1"]);
        assert_eq!(keys.tried(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_401_to_the_current_key_makes_one_new_key_for_all() {
        let keys = Scripted::default();
        let (source, _stop, _task) = start(keys.clone(), plan(10, true));
        let first = source.get().await.unwrap();
        let asked: Vec<bool> = (0..20).map(|_| source.invalidate(first.generation)).collect();
        assert_eq!(asked.iter().filter(|a| **a).count(), 1, "one report asks; the others join it");
        let second = source.newer_than(first.generation).await.unwrap();
        assert_eq!(second.generation, 2);
        assert!(!source.invalidate(first.generation));
        pass(5).await;
        assert_eq!(keys.tried(), 2, "a report about the old key changes nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_creation_is_tried_again_after_ten_minutes_and_requests_get_unavailable() {
        let keys = Scripted::default().failing([rejected()]);
        let (source, _stop, _task) = start(keys.clone(), plan(10, true));
        let e = source.get().await.unwrap_err();
        assert!(e.retry_after > Duration::from_secs(590), "{e:?}");
        assert!(source.last_error().unwrap().contains("quota"));
        pass(590).await;
        assert_eq!(keys.tried(), 1, "not before ten minutes");
        pass(15).await;
        assert_eq!(keys.tried(), 2);
        assert_eq!(source.get().await.unwrap().generation, 1);
        assert_eq!(source.last_error(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_hourly_budget_holds_when_every_creation_fails() {
        let keys = Scripted::default().failing(std::iter::repeat_with(transient).take(1000));
        let (_source, _stop, _task) = start(keys.clone(), plan(5, true));
        pass(3599).await;
        assert_eq!(keys.tried(), 5, "max_creates_per_hour");
        pass(3600).await;
        assert_eq!(keys.tried(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_deletes_the_replaced_keys_and_the_current_one_unless_shared() {
        for delete_on_shutdown in [true, false] {
            let keys = Scripted::default();
            let (source, stop, task) = start(keys.clone(), plan(10, delete_on_shutdown));
            source.get().await.unwrap();
            pass(51).await;
            assert_eq!(source.current().unwrap().generation, 2);
            stop.fire();
            task.await.unwrap();
            let mut deleted = keys.deleted();
            deleted.sort();
            // k-1 was replaced 1 s ago, within its grace: nobody needs it past the grace.
            let expected: &[&str] = if delete_on_shutdown { &["k-1", "k-2"] } else { &["k-1"] };
            assert_eq!(deleted, expected, "delete_on_shutdown = {delete_on_shutdown}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_janitor_deletes_only_our_orphans_at_start_and_hourly() {
        let keys = Scripted::default();
        let wall = |secs: u64| SystemTime::now().checked_sub(Duration::from_secs(secs)).unwrap();
        let named = |id: &str, name: String| Listed { id: id.into(), name };
        keys.others.lock().extend([
            // Ours, its lease over for longer than the grace: an orphan.
            named("o-1", lease::name("app", wall(3600), [1; 6])),
            // Ours, within the grace after its lease: maybe still in a request's hands.
            named("o-2", lease::name("app", wall(5), [2; 6])),
            // Ours, lease still running (another proxy's key in use).
            named("o-3", lease::name("app", SystemTime::now() + Duration::from_secs(600), [3; 6])),
            // Someone else's keys.
            named("x-1", lease::name("app-staging", wall(3600), [4; 6])),
            named("x-2", "ProjectEditor key".into()),
        ]);
        let (source, _stop, _task) = start(keys.clone(), plan(10, true));
        source.get().await.unwrap();
        pass(1).await;
        assert_eq!(keys.deleted(), ["o-1"], "at start: the orphan only");
        assert_eq!(*keys.lists.lock(), 1);
        // Another proxy killed meanwhile leaves one more (the wall clock does not move under
        // a paused tokio clock, so o-2 stays within its grace).
        keys.others.lock().push(named("o-4", lease::name("app", wall(7200), [5; 6])));
        pass(3600).await;
        assert_eq!(*keys.lists.lock(), 2, "hourly");
        let deleted = keys.deleted();
        let orphans: Vec<&String> = deleted.iter().filter(|id| id.starts_with("o-")).collect();
        assert_eq!(orphans, ["o-1", "o-4"], "{deleted:?}");
        assert!(!deleted.iter().any(|id| id.starts_with("x-")), "never another name: {deleted:?}");
        let held = source.current().unwrap().id.clone();
        assert!(!deleted.contains(&held), "never the key in use");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_deletion_is_counted_and_tried_again_and_a_failed_list_changes_nothing() {
        let keys = Scripted::default();
        *keys.failing_deletes.lock() = 2;
        *keys.failing_list.lock() = true;
        let mut long = plan(10, true);
        long.lease.lifetime = Duration::from_secs(1000);
        let (source, _stop, _task) = start(keys.clone(), long);
        source.get().await.unwrap();
        pass(1).await;
        assert_eq!(*keys.lists.lock(), 1, "the janitor tried, and the key serves regardless");
        pass(510).await;
        assert_eq!(source.current().unwrap().generation, 2, "rotated at 500 s");
        assert!(keys.deleted().is_empty(), "k-1's deletion at 510 s failed");
        pass(60).await;
        assert!(keys.deleted().is_empty(), "tried again a minute later, failed again");
        pass(60).await;
        assert_eq!(keys.deleted(), ["k-1"], "and once more: deleted");
        let metrics = &source.shared.metrics;
        let text = format!("{:?}", metrics);
        assert!(!text.contains("pckey_"), "no key value in what the metrics hold");
        let counts: Vec<u64> =
            ["success", "transient_error"].map(|r| metrics.operation_count(KeyOperation::Delete, r)).to_vec();
        assert_eq!(counts, [keys.deleted().len() as u64, 2]);
    }

    #[test]
    fn the_next_key_is_due_at_once_without_one_after_a_401_or_at_its_rotation() {
        let now = Instant::now();
        let at = |s: u64| now + Duration::from_secs(s);
        let p = CreatePlan { now, current: None, invalidated: 0, hold: None };
        assert_eq!(next_create(&p), now);
        let current = Some((3, at(50), at(100)));
        assert_eq!(next_create(&CreatePlan { current, ..p }), at(50));
        assert_eq!(next_create(&CreatePlan { current, invalidated: 3, ..p }), now);
        assert_eq!(next_create(&CreatePlan { current, invalidated: 2, ..p }), at(50), "an older key's 401");
        assert_eq!(next_create(&CreatePlan { current, hold: Some(at(70)), ..p }), at(70));
        assert_eq!(next_create(&CreatePlan { current: None, hold: Some(at(600)), ..p }), at(600));
        let ended = Some((3, at(50), now));
        assert_eq!(next_create(&CreatePlan { current: ended, ..p }), now, "past its lease");
    }
}
