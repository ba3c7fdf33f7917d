//! The fleet's shared token cache on Redis (`token.shared_cache`): all proxies with the same
//! client id, secret and audience share one token, and one of them fetches it.
//!
//! Only the refresher uses it, when a token request is due:
//!
//! 1. It reads the entry. A token there that is usable and newer than the one it holds is
//!    taken, and no token request is sent.
//! 2. Otherwise it takes the fleet's lock (`SET … NX PX token.timeout`). The holder fetches,
//!    writes the entry and releases the lock (compare-and-delete, so an expired lock that
//!    another proxy took over is not released by the first). A holder that dies leaves the
//!    lock to expire after `token.timeout`; another proxy then takes it.
//! 3. The others poll the entry every 100 ms, up to the lock's TTL and a second, and read
//!    the holder's token.
//!
//! The entry's name and its key both come from HKDF-SHA256 over the client secret (salt: the
//! client id; info: the audience and what the output is for). The value is the token, its
//! lifetime and its expiry (UNIX milliseconds), sealed with AES-256-GCM under a random
//! nonce, with the entry's name as associated data ([`super::seal`]). Whoever reads Redis
//! without the secret learns nothing usable; a rotated secret means another name and key.
//!
//! Only what is sealed is trusted. A token's expiry is the one sealed with it; Redis's TTL
//! (which any Redis writer controls) can only bring it closer, never push it out: an old
//! entry written back with a long TTL is never adopted past its sealed expiry, and is
//! counted (`stale`) and overwritten. A lock with no TTL, or one longer than
//! `token.timeout`, cannot be a proxy's: it is not waited for (`bad_lock`). What Redis
//! sends is bounded as it arrives ([`super::redis_link`]): a reply over [`MAX_REPLY`]
//! fails the connection (`oversized`).
//!
//! Every Redis command is bounded by 500 ms. A failure (unreachable, slow, an error answer,
//! an unreadable entry, a lock that never came free) is counted in
//! `shared_cache_errors_total{reason}` and logged, and the proxy fetches for itself within
//! its own request budget; after a connection failure, a timeout or an error answer the
//! cache is skipped for 5 s, then tried again. Nothing here is on the request path, and readiness never waits on it.

use super::fetch::Fetched;
use super::redis_link::{Allowance, Target};
use super::seal::{Keys, derive, open, seal};
pub use super::seal::{PREFIX, entry_names};
use crate::config::SharedCacheConfig;
use crate::credentials::CredentialSet;
use crate::metrics::Metrics;
use crate::secret::Secret;
use redis::aio::MultiplexedConnection;

use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// The most any one Redis command may take (PRODUCT.md: "slow (over 500 ms)").
pub const OP_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a proxy waiting for another's fetch reads the entry.
pub const POLL: Duration = Duration::from_millis(100);
/// How long the cache is skipped after a connection failure, a timeout or an error answer.
pub const SKIP_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// How much later than its sealed expiry Redis may keep an entry before it counts as
/// written back (`stale`): clock skew between the writer's pod and ours.
const STALE_SLACK: Duration = Duration::from_secs(5);

/// Why the cache was not used: the `reason` label of `shared_cache_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection (refused, reset, DNS, TLS).
    Unreachable,
    /// A command took longer than 500 ms.
    Timeout,
    /// Redis answered with an error (a wrong password, a read-only replica, …).
    Error,
    /// The entry could not be opened: garbage, or sealed under another key.
    Unreadable,
    /// Another proxy held the lock longer than its TTL allows, and wrote no token.
    LockWait,
    /// The entry opens, but its sealed expiry has passed while Redis keeps it: written back.
    Stale,
    /// The lock has no TTL, or a longer one than `token.timeout`: no proxy set it.
    BadLock,
    /// A reply larger than [`MAX_REPLY`].
    Oversized,
}

impl Failure {
    pub const ALL: [Failure; 8] = [
        Failure::Unreachable,
        Failure::Timeout,
        Failure::Error,
        Failure::Unreadable,
        Failure::LockWait,
        Failure::Stale,
        Failure::BadLock,
        Failure::Oversized,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Unreachable => "unreachable",
            Failure::Timeout => "timeout",
            Failure::Error => "error",
            Failure::Unreadable => "unreadable",
            Failure::LockWait => "lock_wait",
            Failure::Stale => "stale",
            Failure::BadLock => "bad_lock",
            Failure::Oversized => "oversized",
        }
    }
}

/// The most of an entry we read: a sealed token is about 1.5 KiB.
pub const MAX_VALUE: usize = 16 * 1024;
/// The most one reply may be: the entry's part, and room for the rest of a pipeline's
/// answers (two integers) and the handshake's.
pub const MAX_REPLY: usize = MAX_VALUE + 4096;

/// What a read entry is worth, by its sealed expiry and Redis's remaining TTL (`pttl`, in
/// ms: -1 for none): when it expires on our clock (the sooner of the two; Redis can only
/// bring it closer), whether it is still usable, and whether Redis kept it past its sealed
/// expiry (written back: `stale`).
fn judge(lifetime: Duration, sealed_left: Duration, pttl: i64, now: Instant) -> (Instant, bool, bool) {
    let left = match u64::try_from(pttl) {
        Ok(ms) => sealed_left.min(Duration::from_millis(ms)),
        Err(_) => sealed_left,
    };
    let expires = now + left;
    let usable = expires.checked_sub(super::schedule::usable_margin(lifetime)).is_some_and(|u| u > now);
    let kept_past_expiry = pttl < 0 || Duration::from_millis(pttl as u64) > sealed_left + STALE_SLACK;
    (expires, usable, !usable && kept_past_expiry)
}

/// A token read from the cache: what it is, and when it expires by Redis's clock.
#[derive(Debug)]
pub struct Cached {
    pub fetched: Fetched,
    pub expires: Instant,
}

/// What [`SharedCache::obtain`] (or [`SharedCache::obtain_entry`]) found.
#[derive(Debug)]
pub enum Look<T = Cached> {
    /// A usable entry newer than ours (a token, a key): take it, ask for none.
    Hit(T),
    /// We hold the fleet's lock: fetch (or create), then store and [`SharedCache::release`].
    Lock(Held),
    /// The cache cannot help now (counted and logged): fetch for ourselves.
    Fallback,
}

/// The fleet's lock, held: its name and our random value.
#[derive(Debug)]
pub struct Held {
    name: String,
    value: String,
}

/// What `/status` shows of the cache.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CacheStatus {
    /// The URL, password redacted.
    pub url: String,
    /// Tokens taken from the cache, and tokens this proxy fetched and wrote there.
    pub tokens_read: u64,
    pub tokens_written: u64,
    /// The last failure, if any: its reason label and message.
    pub last_error: Option<CacheError>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheError {
    /// When, in RFC 3339 (UTC, seconds), as every time in `/status`.
    pub at: String,
    pub reason: &'static str,
    pub message: String,
}

/// The refresher's handle on the shared cache.
pub struct SharedCache {
    target: Target,
    /// What the connection may still read for the command under way.
    allowance: Arc<Allowance>,
    /// The task that drives the connection, aborted when it is replaced or dropped.
    driver: Option<tokio::task::JoinHandle<()>>,
    shown: String,
    /// The URL's password, to scrub from any error message before it is logged.
    password: Option<Secret>,
    audience: String,
    lock_ttl: Duration,
    conn: Option<MultiplexedConnection>,
    keys: Option<Keys>,
    skip_until: Option<Instant>,
    metrics: Arc<Metrics>,
    status: Arc<parking_lot::Mutex<CacheStatus>>,
}

impl std::fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCache").field("url", &self.shown).finish_non_exhaustive()
    }
}

const RELEASE: &str =
    r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;

impl SharedCache {
    /// Sets up the client; connects only when first used. `lock_ttl` is `token.timeout`.
    pub fn new(
        cfg: &SharedCacheConfig,
        audience: &str,
        lock_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let target = Target::new(cfg.url.expose(), &cfg.roots)
            .map_err(|e| format!("token.shared_cache: cannot set up the Redis client: {e}"))?;
        let password = target.password().map(Secret::new);
        for failure in Failure::ALL {
            metrics.shared_cache_errors_at_zero(failure.label());
        }
        let status = CacheStatus { url: cfg.shown.clone(), ..CacheStatus::default() };
        Ok(Self {
            target,
            allowance: Arc::new(Allowance::default()),
            driver: None,
            shown: cfg.shown.clone(),
            password,
            audience: audience.to_owned(),
            lock_ttl,
            conn: None,
            keys: None,
            skip_until: None,
            metrics,
            status: Arc::new(parking_lot::Mutex::new(status)),
        })
    }

    /// The status `/status` shows; updated as the cache is used.
    pub fn status(&self) -> Arc<parking_lot::Mutex<CacheStatus>> {
        self.status.clone()
    }

    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn keys(&mut self, c: &CredentialSet) -> &Keys {
        if self.keys.as_ref().is_none_or(|k| k.generation != c.generation) {
            self.keys = Some(derive(c, &self.audience));
        }
        self.keys.as_ref().expect("just set")
    }

    /// Runs one command (or pipeline) within [`OP_TIMEOUT`], connecting first if needed;
    /// its reply may be at most [`MAX_REPLY`] bytes.
    async fn run<T: redis::FromRedisValue>(&mut self, what: &str, cmd: impl Query) -> Result<T, (Failure, String)> {
        let mut conn = match &self.conn {
            Some(c) => c.clone(),
            None => self.connect().await?,
        };
        self.allowance.reset(MAX_REPLY);
        match tokio::time::timeout(OP_TIMEOUT, cmd.query(&mut conn)).await {
            Err(_) => {
                self.disconnect();
                Err((Failure::Timeout, format!("{what} took over 500 ms")))
            }
            Ok(Err(e)) => {
                self.disconnect();
                Err(self.classify(what, &e))
            }
            Ok(Ok(value)) => Ok(value),
        }
    }

    async fn connect(&mut self) -> Result<MultiplexedConnection, (Failure, String)> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT));
        self.allowance.reset(MAX_REPLY);
        let (conn, driver) = match tokio::time::timeout(OP_TIMEOUT, self.target.connect(config, &self.allowance)).await
        {
            Err(_) => return Err((Failure::Timeout, "connecting took over 500 ms".into())),
            Ok(Err(e)) => return Err(self.classify("connecting", &e)),
            Ok(Ok(connected)) => connected,
        };
        self.conn = Some(conn.clone());
        self.driver = Some(driver);
        Ok(conn)
    }

    fn disconnect(&mut self) {
        self.conn = None;
        if let Some(driver) = self.driver.take() {
            driver.abort();
        }
    }

    /// A Redis error as a reason and a message that never holds the password.
    fn classify(&self, what: &str, e: &redis::RedisError) -> (Failure, String) {
        if self.allowance.exceeded() {
            return (Failure::Oversized, format!("{what}: Redis sent a reply over {MAX_REPLY} bytes"));
        }
        let failure = if e.is_timeout() {
            Failure::Timeout
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            Failure::Unreachable
        } else {
            Failure::Error
        };
        let mut message = format!("{what}: {e}");
        if let Some(p) = self.password.as_ref().filter(|p| !p.expose().is_empty()) {
            message = message.replace(p.expose(), "<redacted>");
        }
        (failure, message)
    }

    pub fn fail(&mut self, failure: Failure, message: String, fallback: bool) {
        // A Redis that cannot be reached, is slow, refuses us (a wrong password) or floods
        // us is not asked again for a while; an unreadable entry or a stuck lock is Redis
        // working.
        if matches!(failure, Failure::Unreachable | Failure::Timeout | Failure::Error | Failure::Oversized) {
            self.skip_until = Some(Instant::now() + SKIP_AFTER_FAILURE);
        }
        self.metrics.shared_cache_error(failure.label());
        tracing::warn!(
            shared_cache = %self.shown,
            reason = failure.label(),
            error = %message,
            "shared token cache failed{}",
            if fallback { "; this proxy fetches for itself" } else { "" },
        );
        self.status.lock().last_error = Some(CacheError {
            at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            reason: failure.label(),
            message,
        });
    }

    /// Looks for a usable token newer than the one that expires at `current_expires`, or
    /// takes the lock to fetch one, or waits for the proxy that holds it.
    pub async fn obtain(&mut self, c: &CredentialSet, current_expires: Option<Instant>) -> Look {
        let (entry, lock) = {
            let k = self.keys(c);
            (k.entry.clone(), k.lock.clone())
        };
        let judge = |cache: &mut Self, bytes: &[u8], pttl: i64, counted: &mut bool| {
            cache.judge_token(c, &entry, bytes, pttl, current_expires, counted)
        };
        self.obtain_entry(&entry, &lock, judge).await
    }

    /// The fleet's way to one value (a token, a managed key): reads `entry` and takes what
    /// `accept` makes of it (given the bytes, Redis's PTTL, and a flag to count a bad entry
    /// once); else takes `lock`; else, while another proxy holds it, reads again every
    /// [`POLL`], up to the lock's TTL and a second. Redis failing, a lock that is not a
    /// proxy's, or one held too long: [`Look::Fallback`] (counted and logged).
    pub async fn obtain_entry<T>(
        &mut self,
        entry: &str,
        lock: &str,
        mut accept: impl FnMut(&mut Self, &[u8], i64, &mut bool) -> Option<T>,
    ) -> Look<T> {
        if self.skipping() {
            return Look::Fallback;
        }
        let value: String = {
            let bytes: [u8; 16] = rand::random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        };
        let ttl_ms = u64::try_from(self.lock_ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let deadline = Instant::now() + self.lock_ttl + Duration::from_secs(1);
        let mut counted = false;
        loop {
            match self.read_entry(entry).await {
                Err(()) => return Look::Fallback,
                Ok(Some((bytes, pttl))) => {
                    if let Some(hit) = accept(self, &bytes, pttl, &mut counted) {
                        return Look::Hit(hit);
                    }
                }
                Ok(None) => {}
            }
            let take =
                redis::pipe().cmd("SET").arg(lock).arg(&value).arg("NX").arg("PX").arg(ttl_ms).pttl(lock).to_owned();
            match self.run::<(Option<String>, i64)>("taking the lock", &take).await {
                Err((failure, message)) => {
                    self.fail(failure, message, true);
                    return Look::Fallback;
                }
                Ok((Some(_), _)) => {
                    let held = Held { name: lock.to_owned(), value };
                    // Another proxy may have written the entry and let its lock go between
                    // our read and our lock: read once more before fetching, not twice.
                    if let Ok(Some((bytes, pttl))) = self.read_entry(entry).await
                        && let Some(hit) = accept(self, &bytes, pttl, &mut counted)
                    {
                        self.release(held).await;
                        return Look::Hit(hit);
                    }
                    return Look::Lock(held);
                }
                // No TTL, or longer than a proxy ever sets: not a fetch in progress. Waiting
                // for it would delay readiness and requests for nothing.
                Ok((None, pttl)) if pttl == -1 || pttl > ttl_ms as i64 => {
                    let message = format!(
                        "the lock {lock} has {}, which no proxy sets (its TTL is {:?}); not waiting for it",
                        if pttl == -1 { "no TTL".to_owned() } else { format!("a TTL of {pttl} ms") },
                        self.lock_ttl
                    );
                    self.fail(Failure::BadLock, message, true);
                    return Look::Fallback;
                }
                Ok((None, _)) => {}
            }
            if Instant::now() >= deadline {
                let message =
                    format!("the lock {lock} stayed held for over {:?} and nothing was written", self.lock_ttl);
                self.fail(Failure::LockWait, message, true);
                return Look::Fallback;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the cache is skipped for now, after a failure.
    pub fn skipping(&self) -> bool {
        self.skip_until.is_some_and(|t| Instant::now() < t)
    }

    /// Reads the entry only: a usable token newer than ours, if there is one. For a proxy
    /// that may not send a token request now (a spent quota bucket, the budget), but may
    /// still take the fleet's token.
    pub async fn peek(&mut self, c: &CredentialSet, current_expires: Option<Instant>) -> Option<Cached> {
        if self.skipping() {
            return None;
        }
        let entry = self.keys(c).entry.clone();
        let (bytes, pttl) = self.read_entry(&entry).await.ok().flatten()?;
        self.judge_token(c, &entry, &bytes, pttl, current_expires, &mut false)
    }

    /// One read of an entry: its bytes (at most [`MAX_VALUE`]; none of a larger one, which
    /// then does not open) and Redis's PTTL; `Ok(None)` for no entry; `Err` when Redis
    /// failed (counted and logged).
    pub async fn read_entry(&mut self, entry: &str) -> Result<Option<(Vec<u8>, i64)>, ()> {
        // At most MAX_VALUE bytes are read, whatever the entry holds: a Redis that holds
        // something huge must not make the proxy hold it too.
        let pipe = redis::pipe()
            .cmd("GETRANGE")
            .arg(entry)
            .arg(0)
            .arg(MAX_VALUE - 1)
            .cmd("STRLEN")
            .arg(entry)
            .pttl(entry)
            .to_owned();
        match self.run::<(Vec<u8>, usize, i64)>("reading the entry", &pipe).await {
            Err((failure, message)) => {
                self.fail(failure, message, true);
                Err(())
            }
            // -2: gone since the read.
            Ok((_, 0, _) | (_, _, -2)) => Ok(None),
            Ok((bytes, len, pttl)) if len <= MAX_VALUE => Ok(Some((bytes, pttl))),
            Ok(_) => Ok(Some((Vec::new(), 0))),
        }
    }

    /// Counts and logs an entry that does not open (garbage, or sealed under another key),
    /// once per `counted`: it is treated as no entry, so that one proxy still writes one for
    /// all and overwrites it.
    pub fn unreadable(&mut self, entry: &str, counted: &mut bool) {
        if !*counted {
            *counted = true;
            self.fail(Failure::Unreadable, format!("the entry {entry} could not be opened"), false);
        }
    }

    /// Counts and logs an entry that opens but whose sealed end has passed while Redis still
    /// holds it (written back), once per `counted`.
    pub fn stale(&mut self, entry: &str, counted: &mut bool) {
        if !*counted {
            *counted = true;
            let message = format!("the entry {entry} has expired by its sealed expiry but Redis still holds it");
            self.fail(Failure::Stale, message, false);
        }
    }

    /// What a token entry is worth: a usable token newer than ours, or none (an older one,
    /// a stale one or one that does not open: counted once per `counted`).
    fn judge_token(
        &mut self,
        c: &CredentialSet,
        entry: &str,
        bytes: &[u8],
        pttl: i64,
        current_expires: Option<Instant>,
        counted: &mut bool,
    ) -> Option<Cached> {
        let now = Instant::now();
        let Some((fetched, expires_at)) = open(&self.keys(c).key, entry, bytes) else {
            self.unreadable(entry, counted);
            return None;
        };
        let sealed_left = expires_at.duration_since(SystemTime::now()).unwrap_or_default();
        let (expires, usable, stale) = judge(fetched.lifetime, sealed_left, pttl, now);
        if stale {
            // Treated as no entry: this proxy (or the lock holder) fetches and overwrites it.
            self.stale(entry, counted);
        }
        let newer = current_expires.is_none_or(|e| expires > e + Duration::from_secs(1));
        if usable && newer {
            self.status.lock().tokens_read += 1;
            return Some(Cached { fetched, expires });
        }
        None
    }

    /// Writes `value` to `entry`, to expire after `ttl`.
    pub async fn write_entry(&mut self, entry: &str, value: Vec<u8>, ttl: Duration) -> bool {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        if self.skipping() || ms == 0 {
            return false;
        }
        let set = redis::cmd("SET").arg(entry).arg(value).arg("PX").arg(ms).to_owned();
        match self.run::<()>("writing the entry", set).await {
            Ok(()) => true,
            Err((failure, message)) => {
                self.fail(failure, message, false);
                false
            }
        }
    }

    /// Writes a token this proxy fetched, to expire with it (`expires_in` from now).
    pub async fn store(&mut self, c: &CredentialSet, token: &Fetched, expires_in: Duration) {
        if self.skipping() || expires_in.is_zero() {
            return;
        }
        let (entry, sealed) = {
            let k = self.keys(c);
            (k.entry.clone(), seal(&k.key, &k.entry, token, SystemTime::now() + expires_in))
        };
        if self.write_entry(&entry, sealed, expires_in).await {
            self.status.lock().tokens_written += 1;
        }
    }

    /// Releases the lock if it is still ours.
    pub async fn release(&mut self, held: Held) {
        let script = redis::cmd("EVAL").arg(RELEASE).arg(1).arg(&held.name).arg(&held.value).to_owned();
        if let Err((failure, message)) = self.run::<i64>("releasing the lock", script).await {
            self.fail(failure, message, false);
        }
    }
}

impl Drop for SharedCache {
    fn drop(&mut self) {
        self.disconnect();
    }
}

/// A command or a pipeline, run the same way.
trait Query {
    fn query<T: redis::FromRedisValue>(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send;
}

impl Query for redis::Cmd {
    fn query<T: redis::FromRedisValue>(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl Query for &redis::Pipeline {
    fn query<T: redis::FromRedisValue>(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn creds(id: &str, secret: &str) -> CredentialSet {
        CredentialSet { client_id: Secret::new(id), client_secret: Secret::new(secret), generation: 1 }
    }

    fn token(t: &str) -> Fetched {
        Fetched { access_token: Secret::new(t), lifetime: Duration::from_secs(86400) }
    }

    #[test]
    fn sealed_values_open_only_with_the_same_secret_and_entry() {
        let aud = "https://api.pinecone.io/";
        let k = derive(&creds("id", "secret"), aud);
        let expires = UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
        let value = seal(&k.key, &k.entry, &token("eyJ.secret-token"), expires);
        let (opened, expires_at) = open(&k.key, &k.entry, &value).expect("opens");
        assert_eq!(opened.access_token.expose(), "eyJ.secret-token");
        assert_eq!(opened.lifetime, Duration::from_secs(86400));
        assert_eq!(expires_at, expires, "the expiry is sealed with the token");
        assert!(!String::from_utf8_lossy(&value).contains("secret-token"), "the token is not in the value");
        // Another secret: another entry and another key; the value does not open.
        let rotated = derive(&creds("id", "secret-2"), aud);
        assert_ne!(rotated.entry, k.entry);
        assert!(open(&rotated.key, &rotated.entry, &value).is_none());
        assert!(open(&rotated.key, &k.entry, &value).is_none(), "under the old name too");
        // The same key, but the value moved to another entry (the AAD): does not open.
        assert!(open(&k.key, "pinecone-admin-proxy:v1:other:token", &value).is_none());
        // Another audience or client id: another entry.
        assert_ne!(derive(&creds("id", "secret"), "https://other/").entry, k.entry);
        assert_ne!(derive(&creds("id2", "secret"), aud).entry, k.entry);
        // Two seals of the same token differ (random nonces).
        assert_ne!(seal(&k.key, &k.entry, &token("eyJ.secret-token"), expires), value);
    }

    #[test]
    fn garbage_never_opens() {
        let k = derive(&creds("id", "secret"), "aud");
        let good = seal(&k.key, &k.entry, &token("t"), SystemTime::now());
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut wrong_version = good.clone();
        wrong_version[0] = 1;
        for bad in [vec![], vec![1], b"hello world".to_vec(), good[..20].to_vec(), flipped, wrong_version] {
            assert!(open(&k.key, &k.entry, &bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn an_entry_is_judged_by_its_sealed_expiry_and_redis_can_only_shorten_it() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let day = s(86400);
        // Redis's TTL agrees with the sealed expiry: usable, expires then.
        assert_eq!(judge(day, s(3600), 3_600_000, now), (now + s(3600), true, false));
        // A shorter TTL brings it closer.
        assert_eq!(judge(day, s(3600), 600_000, now), (now + s(600), true, false));
        // A longer TTL (or none) does not push it out.
        assert_eq!(judge(day, s(3600), 999_999_999, now), (now + s(3600), true, false));
        assert_eq!(judge(day, s(3600), -1, now), (now + s(3600), true, false));
        // Sealed expiry passed, Redis still holds it for an hour: written back, stale.
        assert_eq!(judge(day, s(0), 3_600_000, now), (now, false, true));
        assert_eq!(judge(day, s(0), -1, now), (now, false, true));
        // In its last minute (the usable margin) as Redis agrees: not usable, not stale.
        assert_eq!(judge(day, s(30), 30_000, now), (now + s(30), false, false));
        // Within the slack for clock skew between pods: not stale.
        assert_eq!(judge(day, s(30), 34_000, now), (now + s(30), false, false));
    }

    #[test]
    fn names_are_stable_and_hide_the_credentials() {
        let (entry, lock) = entry_names("my-client", "my-secret", "https://api.pinecone.io/");
        assert_eq!((entry.clone(), lock.clone()), entry_names("my-client", "my-secret", "https://api.pinecone.io/"));
        assert!(entry.starts_with(PREFIX) && entry.ends_with(":token"), "{entry}");
        assert_eq!(entry.len(), PREFIX.len() + 32 + ":token".len());
        assert_eq!(lock, entry.replace(":token", ":lock"));
        assert!(!entry.contains("my-client") && !entry.contains("my-secret"));
    }
}
