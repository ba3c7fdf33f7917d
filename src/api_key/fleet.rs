//! The fleet's managed key (`[api_key]` with `token.shared_cache`): every proxy with the
//! same service account, project, roles and name prefix uses one key, which one of them
//! creates under the fleet's lock and all of them rotate at the same point of its lease.
//!
//! The entry's name and its AES-256-GCM key are derived from the client secret like the
//! token's ([`crate::token::seal::derive_api_key`]), with the plan in the info; the value is
//! the key's id, name, value and lease end, sealed. Only what is sealed is trusted: the lease
//! end decides whether a key is still used and when it rotates; Redis's TTL only drops the
//! entry sooner. An entry is taken when it opens, its key is not one this proxy wants to
//! leave (the one it holds when rotating, or one a plane rejected with 401), and its
//! rotation point has not come. Otherwise the proxy takes the lock and creates the next key
//! (and deletes the entry's key `grace` later: one delete per rotation, by the creator), or
//! waits for the proxy that holds it. Redis failing is counted and logged by the shared
//! cache, and the proxy creates a key of its own within its own budget.

use super::admin::Created;
use super::lease::Lease;
use super::source::ApiKey;
use crate::credentials::Credentials;
use crate::secret::Secret;
use crate::token::seal::{Keys, derive_api_key, open_bytes, seal_bytes};
use crate::token::shared::{Held, Look, SharedCache};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How much later than the sealed lease end Redis may keep an entry before it counts as
/// written back (`stale`): clock skew between pods.
const STALE_SLACK: Duration = Duration::from_secs(5);

/// A key as the fleet shares it, sealed.
#[derive(Serialize, Deserialize)]
struct Plain {
    id: String,
    name: String,
    value: String,
    /// The lease end, UNIX milliseconds by the writer's clock.
    lease_end_ms: u64,
}

/// A key read from the fleet's entry.
#[derive(Debug)]
pub struct SharedKey {
    pub created: Created,
    pub lease_end: SystemTime,
}

/// A key that a proxy lets go: its id and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub id: String,
    pub name: String,
}

/// What [`KeyCache::find`] found.
#[derive(Debug)]
pub enum Found {
    /// The fleet's key: use it, create none.
    Adopt(SharedKey),
    /// This proxy holds the fleet's lock: create the next key, [`KeyCache::store`] it,
    /// delete `previous` (the entry's key, if any) `grace` later, and release the lock.
    Create { held: Held, previous: Option<Named> },
    /// The cache cannot help now: create a key of this proxy's own.
    Alone,
}

/// Whether a key with this sealed lease end is worth taking at `now`: before its rotation
/// point (a key past it is due to be replaced, which is what the taker is about to do).
pub fn worth_taking(lease_end: SystemTime, lease: &Lease, now: SystemTime) -> bool {
    let rotate_point = lease_end.checked_sub(lease.lifetime.mul_f64(1.0 - lease.rotate_at));
    rotate_point.is_some_and(|point| now < point)
}

/// The keeper's handle on the fleet's entry.
pub struct KeyCache {
    cache: SharedCache,
    credentials: Credentials,
    /// The plan, as the derivation's info: project, roles, prefix.
    context: String,
    lease: Lease,
    keys: Option<Keys>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").field("cache", &self.cache.shown()).finish_non_exhaustive()
    }
}

impl KeyCache {
    /// The fleet's key of `project` with `roles` named with `prefix` (roles in any order).
    pub fn new(
        cache: SharedCache,
        credentials: Credentials,
        project: &str,
        roles: &[String],
        prefix: &str,
        lease: Lease,
    ) -> Self {
        let mut roles = roles.to_vec();
        roles.sort();
        let context = format!("{project}\0{}\0{prefix}", roles.join(","));
        Self { cache, credentials, context, lease, keys: None }
    }

    fn keys(&mut self) -> &Keys {
        let c = self.credentials.current();
        if self.keys.as_ref().is_none_or(|k| k.generation != c.generation) {
            self.keys = Some(derive_api_key(&c, &self.context));
        }
        self.keys.as_ref().expect("just set")
    }

    /// The fleet's key, if it is worth taking and not one of `unwanted` (ids); else the lock
    /// to create the next; else [`Found::Alone`].
    pub async fn find(&mut self, unwanted: &[String]) -> Found {
        self.keys();
        let keys = self.keys.as_ref().expect("just set");
        let (entry, lock, key) = (keys.entry.clone(), keys.lock.clone(), &keys.key);
        let lease = self.lease;
        let mut previous = None;
        let accept = |cache: &mut SharedCache, bytes: &[u8], pttl: i64, counted: &mut bool| {
            let shared = judge(cache, key, &entry, bytes, pttl, counted)?;
            previous = Some(Named { id: shared.created.id.clone(), name: shared.created.name.clone() });
            let wanted = !unwanted.contains(&shared.created.id);
            (wanted && worth_taking(shared.lease_end, &lease, SystemTime::now())).then_some(shared)
        };
        match self.cache.obtain_entry(&entry, &lock, accept).await {
            Look::Hit(shared) => Found::Adopt(shared),
            Look::Lock(held) => Found::Create { held, previous },
            Look::Fallback => Found::Alone,
        }
    }

    /// The fleet's key, if it is worth taking and not one of `unwanted`: a read only, for a
    /// proxy whose own creations are held back (its budget, a backoff, a refusal).
    pub async fn peek(&mut self, unwanted: &[String]) -> Option<SharedKey> {
        if self.cache.skipping() {
            return None;
        }
        let entry = self.keys().entry.clone();
        let (bytes, pttl) = self.cache.read_entry(&entry).await.ok().flatten()?;
        let key = &self.keys.as_ref().expect("just set").key;
        let shared = judge(&mut self.cache, key, &entry, &bytes, pttl, &mut false)?;
        let wanted = !unwanted.contains(&shared.created.id);
        (wanted && worth_taking(shared.lease_end, &self.lease, SystemTime::now())).then_some(shared)
    }

    /// Writes the key this proxy created under the lock, to expire at its lease end.
    pub async fn store(&mut self, key: &ApiKey) {
        let Ok(value) = key.header().to_str() else { return };
        let lease_end_ms = key.lease_end_wall.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let plain = Plain { id: key.id.clone(), name: key.name.clone(), value: value.to_owned(), lease_end_ms };
        let ttl = key.lease_end_wall.duration_since(SystemTime::now()).unwrap_or_default();
        let (entry, sealed) = {
            let k = self.keys();
            (k.entry.clone(), seal_bytes(&k.key, &k.entry, serde_json::to_vec(&plain).expect("serialises")))
        };
        self.cache.write_entry(&entry, sealed, ttl).await;
    }

    pub async fn release(&mut self, held: Held) {
        self.cache.release(held).await;
    }
}

/// What an entry holds: the key, if it opens, is well formed and its lease has not ended;
/// an entry that does not open, or that Redis kept past its sealed lease end, is counted.
fn judge(
    cache: &mut SharedCache,
    key: &ring::aead::LessSafeKey,
    entry: &str,
    bytes: &[u8],
    pttl: i64,
    counted: &mut bool,
) -> Option<SharedKey> {
    let Some(plain) = open_bytes(key, entry, bytes).and_then(|b| serde_json::from_slice::<Plain>(&b).ok()) else {
        cache.unreadable(entry, counted);
        return None;
    };
    let well_formed =
        !plain.id.is_empty() && !plain.value.is_empty() && http::HeaderValue::from_str(&plain.value).is_ok();
    let lease_end = UNIX_EPOCH.checked_add(Duration::from_millis(plain.lease_end_ms))?;
    let left = lease_end.duration_since(SystemTime::now()).unwrap_or_default();
    if left.is_zero() {
        let kept_past = pttl < 0 || Duration::from_millis(pttl as u64) > STALE_SLACK;
        if kept_past {
            cache.stale(entry, counted);
        }
        return None;
    }
    if !well_formed {
        cache.unreadable(entry, counted);
        return None;
    }
    let created = Created { id: plain.id, name: plain.name, value: Secret::new(plain.value) };
    Some(SharedKey { created, lease_end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_worth_taking_until_its_rotation_point() {
        let lease = Lease { lifetime: Duration::from_secs(100), rotate_at: 0.5, grace: Duration::from_secs(10) };
        let end = UNIX_EPOCH + Duration::from_secs(1_000);
        let at = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        assert!(worth_taking(end, &lease, at(900)), "just made");
        assert!(worth_taking(end, &lease, at(949)));
        assert!(!worth_taking(end, &lease, at(950)), "its rotation point: the taker makes the next");
        assert!(!worth_taking(end, &lease, at(1_000)), "its lease over");
    }
}
