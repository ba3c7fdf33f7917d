//! A managed key's lease, as pure functions of times and names, so that the loop that runs
//! them only sleeps and calls (STYLE.md habit 3).
//!
//! A key is named `<name_prefix>-<lease end, UNIX seconds>-<6 random [a-z0-9]>`: its name
//! says when it stops being used, so that a proxy that never saw it (its creator was killed)
//! can still tell an orphan from a key in use, and never touches a key with any other name.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How soon a creation that Pinecone refused with `403` (a quota, or a role the service
/// account may not grant) is tried again: a refusal does not pass by itself, and each try
/// is an Admin API call and a log line (PRODUCT.md: "no more than once every 10 minutes").
pub const REFUSED_RETRY: Duration = Duration::from_secs(600);

/// The random part of a name: 6 characters of `[a-z0-9]`.
const RANDOM_LEN: usize = 6;

/// What the lease of every key is: from `[api_key]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lease {
    /// How long a key is used at most (`api_key.lifetime`).
    pub lifetime: Duration,
    /// The fraction of the lifetime after which the next key is minted (`api_key.rotate_at`).
    pub rotate_at: f64,
    /// How long a replaced key is kept before it is deleted (`api_key.grace`): requests that
    /// carried it finish meanwhile.
    pub grace: Duration,
}

/// A key's name: `<prefix>-<lease end, UNIX seconds>-<random>`. `random` supplies the six
/// characters (each byte taken modulo 36 into `[a-z0-9]`).
pub fn name(prefix: &str, lease_end: SystemTime, random: [u8; RANDOM_LEN]) -> String {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let end = lease_end.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let tail: String = random.iter().map(|b| char::from(ALPHABET[usize::from(*b) % 36])).collect();
    format!("{prefix}-{end}-{tail}")
}

/// The lease end a key's name carries, if the name is exactly one of ours for `prefix`:
/// the prefix, a dash, the lease end in decimal digits, a dash, six characters of `[a-z0-9]`,
/// and nothing else.
pub fn lease_end(prefix: &str, name: &str) -> Option<SystemTime> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (end, tail) = rest.split_once('-')?;
    let digits = !end.is_empty() && end.len() <= 12 && end.bytes().all(|b| b.is_ascii_digit());
    let random = tail.len() == RANDOM_LEN && tail.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !digits || !random {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_secs(end.parse().ok()?))
}

/// Whether the janitor deletes the key named `name`: one of ours for `prefix` whose lease
/// end plus `grace` has passed at `now`. A key with any other name is never deleted.
pub fn is_orphan(prefix: &str, name: &str, grace: Duration, now: SystemTime) -> bool {
    lease_end(prefix, name).is_some_and(|end| end + grace <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn names_carry_their_lease_end_and_only_ours_are_read() {
        let name = name("pinecone-admin-proxy", at(1_800_086_400), [0, 1, 25, 26, 35, 36]);
        assert_eq!(name, "pinecone-admin-proxy-1800086400-abz09a");
        assert!(name.len() <= 80);
        assert_eq!(lease_end("pinecone-admin-proxy", &name), Some(at(1_800_086_400)));
        for other in [
            "pinecone-admin-proxy",
            "pinecone-admin-proxy-1800086400",
            "pinecone-admin-proxy-1800086400-abz09",
            "pinecone-admin-proxy-1800086400-abz09aa",
            "pinecone-admin-proxy-1800086400-ABZ09A",
            "pinecone-admin-proxy-staging-1800086400-abz09a",
            "pinecone-admin-proxy--1800086400-abz09a",
            "pinecone-admin-proxy-18000864x0-abz09a",
            "pinecone-admin-proxyx-1800086400-abz09a",
            "other-1800086400-abz09a",
            "pinecone-cli-abz09a",
            "my-key",
        ] {
            assert_eq!(lease_end("pinecone-admin-proxy", other), None, "{other}");
        }
        // Another prefix's keys are not ours, even when it starts with ours.
        let staging = super::name("pinecone-admin-proxy-staging", at(1_700_000_000), [1; 6]);
        assert_eq!(lease_end("pinecone-admin-proxy", &staging), None);
    }

    #[test]
    fn the_janitor_deletes_only_our_keys_past_their_lease_and_grace() {
        let prefix = "app";
        let ended = name(prefix, at(1_000), [7; 6]);
        let grace = Duration::from_secs(300);
        assert!(!is_orphan(prefix, &ended, grace, at(1_299)), "within the grace");
        assert!(is_orphan(prefix, &ended, grace, at(1_300)));
        assert!(!is_orphan(prefix, &name(prefix, at(5_000), [7; 6]), grace, at(1_300)), "in use");
        assert!(!is_orphan(prefix, "ProjectEditor key", grace, at(u32::MAX.into())), "never another name");
        assert!(!is_orphan("other", &ended, grace, at(1_300)), "never another prefix's");
    }
}
