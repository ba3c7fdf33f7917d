//! Values that must never be printed: the client secret, and access tokens.
//!
//! [`Secret`] has a redacted `Debug` and no `Display`, so a secret reaches a log line, an
//! error message or a panic only through an explicit [`Secret::expose`], which is easy to
//! find in review. Fingerprints ([`fingerprint`]) are what logs and `/status` show instead.

use sha2::{Digest, Sha256};
use std::fmt;

/// A string that is never printed. Compare and use it only through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value; the caller has already trimmed and checked it.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short fingerprint that identifies the value without revealing it.
    pub fn fingerprint(&self) -> String {
        fingerprint(self.0.as_bytes())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The first 8 bytes of SHA-256, in hex: enough to tell two tokens apart in logs and
/// `/status`, far too little to recover or forge one.
pub fn fingerprint(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn fingerprint_is_short_stable_and_distinct() {
        let a = fingerprint(b"token-a");
        assert_eq!(a.len(), 16);
        assert_eq!(a, fingerprint(b"token-a"));
        assert_ne!(a, fingerprint(b"token-b"));
    }
}
