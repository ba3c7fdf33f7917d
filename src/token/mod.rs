//! The access token: what one is ([`Token`]), how one is fetched ([`fetch`]), when the next
//! one is fetched ([`schedule`]), and the engine that keeps one usable and hands it to
//! requests: [`refresher`], the one loop that fetches, and [`source`], what requests and
//! `/status` read. Beside them: [`quota`], the token endpoint's quota headers; [`shared`],
//! the fleet's token cache on Redis, over [`redis_link`] (bounded replies) and `seal` (the
//! entries' names and sealing).

pub mod fetch;
pub mod quota;
pub mod redis_link;
pub mod refresher;
pub mod schedule;
pub(crate) mod seal;
pub mod shared;
pub mod source;

pub use fetch::{Answer, Fetch, FetchError, Fetched, HttpFetcher};
pub use refresher::Refresher;
pub use source::{StatusSnapshot, TokenSource, TokenUnavailable};

use http::HeaderValue;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// A token in use: its `Authorization` value built once, and its dates.
#[derive(Clone)]
pub struct Token {
    authorization: HeaderValue,
    /// Counts tokens since start: 1 for the first.
    pub generation: u64,
    /// A short SHA-256 fingerprint of the token, for logs and `/status`.
    pub fingerprint: String,
    pub lifetime: Duration,
    /// When the request that got it was sent: the lifetime counts from there, which errs
    /// on the early side by the request's duration.
    pub issued: Instant,
    pub expires: Instant,
    pub usable_until: Instant,
    pub issued_wall: SystemTime,
    pub expires_wall: SystemTime,
    usable_until_wall: SystemTime,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("generation", &self.generation)
            .field("fingerprint", &self.fingerprint)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Dates a fetched token. `issued` and `issued_wall` are when its request was sent.
    pub fn new(fetched: &Fetched, generation: u64, issued: Instant, issued_wall: SystemTime) -> Self {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", fetched.access_token.expose()))
            .expect("checked by fetch::classify");
        authorization.set_sensitive(true);
        let usable_for = fetched.lifetime - schedule::usable_margin(fetched.lifetime);
        Self {
            authorization,
            generation,
            fingerprint: fetched.access_token.fingerprint(),
            lifetime: fetched.lifetime,
            issued,
            expires: issued + fetched.lifetime,
            usable_until: issued + usable_for,
            issued_wall,
            expires_wall: issued_wall + fetched.lifetime,
            usable_until_wall: issued_wall + usable_for,
        }
    }

    /// Dates a token read from the shared cache, which expires at `expires` by Redis's
    /// clock (its entry's remaining TTL), whenever it was issued.
    pub fn from_cache(fetched: &Fetched, generation: u64, expires: Instant) -> Self {
        let now = Instant::now();
        let wall = SystemTime::now();
        let remaining = expires.saturating_duration_since(now);
        let age = fetched.lifetime.saturating_sub(remaining);
        let mut token = Self::new(fetched, generation, now.checked_sub(age).unwrap_or(now), wall - age);
        // Exact whatever the subtraction did: the entry's TTL decides.
        let usable_for = remaining.saturating_sub(schedule::usable_margin(fetched.lifetime));
        token.expires = expires;
        token.usable_until = now + usable_for;
        token.expires_wall = wall + remaining;
        token.usable_until_wall = wall + usable_for;
        token
    }

    /// The `Authorization` header value (marked sensitive).
    pub fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }

    /// Whether the token may still be sent. Both clocks must agree: the monotonic clock
    /// stops while a machine is suspended, the wall clock does not, so a laptop that slept
    /// through the expiry never presents the token. A wall clock that jumps ahead only
    /// makes us fetch early (once: the fetch is single-flight and budgeted).
    pub fn usable(&self, now: Instant) -> bool {
        now < self.usable_until && SystemTime::now() < self.usable_until_wall
    }
}
