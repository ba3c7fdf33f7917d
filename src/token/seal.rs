//! The shared cache's entries, sealed: their names in Redis and their key, both derived
//! from the client secret with HKDF-SHA256 (salt: the client id; info: the audience and
//! what the output is for), and the value, the token with its lifetime and its expiry
//! sealed with AES-256-GCM under a random nonce, the entry's name as associated data.
//! Whoever reads Redis without the secret learns nothing usable. Talking to Redis is
//! [`super::shared`]'s.

use super::fetch::Fetched;
use crate::credentials::CredentialSet;
use crate::secret::Secret;
use ring::{aead, hkdf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The prefix of every key we write. v2: the expiry is sealed in the value (v1 proxies,
/// which trusted Redis's TTL, use entries of their own during a rolling upgrade).
pub const PREFIX: &str = "pinecone-admin-proxy:v2:";

/// The entry name, the lock name and the key of one set of credentials and audience (or,
/// for the managed API key, of one key plan).
pub(crate) struct Keys {
    pub(crate) generation: u64,
    pub(crate) entry: String,
    pub(crate) lock: String,
    pub(crate) key: aead::LessSafeKey,
}

/// A length for HKDF output that is not a ring key type.
struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// The entry's and the lock's names in Redis for these credentials and audience:
/// `pinecone-admin-proxy:v1:<32 hex digits>:token` and `…:lock`.
pub fn entry_names(client_id: &str, client_secret: &str, audience: &str) -> (String, String) {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, client_id.as_bytes()).extract(client_secret.as_bytes());
    let info = [b"pinecone-admin-proxy v1 entry name\0".as_slice(), audience.as_bytes()];
    let mut id = [0u8; 16];
    prk.expand(&info, Len(16)).and_then(|okm| okm.fill(&mut id)).expect("16 bytes is a valid HKDF length");
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    (format!("{PREFIX}{hex}:token"), format!("{PREFIX}{hex}:lock"))
}

pub(super) fn derive(c: &CredentialSet, audience: &str) -> Keys {
    let (entry, lock) = entry_names(c.client_id.expose(), c.client_secret.expose(), audience);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, c.client_id.expose().as_bytes())
        .extract(c.client_secret.expose().as_bytes());
    let info = [b"pinecone-admin-proxy v1 aes-256-gcm key\0".as_slice(), audience.as_bytes()];
    let okm = prk.expand(&info, &aead::AES_256_GCM).expect("32 bytes is a valid HKDF length");
    Keys { generation: c.generation, entry, lock, key: aead::LessSafeKey::new(aead::UnboundKey::from(okm)) }
}

/// The entry, lock and key of the fleet's managed API key: derived like the token's, from
/// the client secret (salt: the client id), with `context` (the project, the roles and the
/// name prefix) in the info, so that another plan or another secret is another entry and
/// another key. Named `pinecone-admin-proxy:v2:<32 hex>:api-key` and `…:api-key-lock`.
pub(crate) fn derive_api_key(c: &CredentialSet, context: &str) -> Keys {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, c.client_id.expose().as_bytes())
        .extract(c.client_secret.expose().as_bytes());
    let info = [b"pinecone-admin-proxy v1 api-key entry name\0".as_slice(), context.as_bytes()];
    let mut id = [0u8; 16];
    prk.expand(&info, Len(16)).and_then(|okm| okm.fill(&mut id)).expect("16 bytes is a valid HKDF length");
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let info = [b"pinecone-admin-proxy v1 api-key aes-256-gcm key\0".as_slice(), context.as_bytes()];
    let okm = prk.expand(&info, &aead::AES_256_GCM).expect("32 bytes is a valid HKDF length");
    Keys {
        generation: c.generation,
        entry: format!("{PREFIX}{hex}:api-key"),
        lock: format!("{PREFIX}{hex}:api-key-lock"),
        key: aead::LessSafeKey::new(aead::UnboundKey::from(okm)),
    }
}

/// Seals `plain` for the entry `entry`: version, nonce, ciphertext and tag.
pub(crate) fn seal_bytes(key: &aead::LessSafeKey, entry: &str, mut data: Vec<u8>) -> Vec<u8> {
    let nonce: [u8; aead::NONCE_LEN] = rand::random();
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(entry.as_bytes()),
        &mut data,
    )
    .expect("in-memory sealing does not fail");
    let mut out = Vec::with_capacity(1 + nonce.len() + data.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&data);
    out
}

/// Opens a value of the entry `entry`, or says it cannot be read.
pub(crate) fn open_bytes(key: &aead::LessSafeKey, entry: &str, value: &[u8]) -> Option<Vec<u8>> {
    let (&version, rest) = value.split_first()?;
    if version != VERSION || rest.len() < aead::NONCE_LEN + aead::AES_256_GCM.tag_len() {
        return None;
    }
    let (nonce, sealed) = rest.split_at(aead::NONCE_LEN);
    let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut sealed = sealed.to_vec();
    let len = key.open_in_place(nonce, aead::Aad::from(entry.as_bytes()), &mut sealed).ok()?.len();
    sealed.truncate(len);
    Some(sealed)
}

/// The version byte that starts every value.
const VERSION: u8 = 2;

#[derive(serde::Serialize, serde::Deserialize)]
struct Plain {
    access_token: String,
    lifetime: f64,
    /// When the token expires, in UNIX milliseconds by the writer's clock.
    expires_at_ms: u64,
}

/// Seals a token that expires at `expires_at` for the entry `entry`: version, nonce,
/// ciphertext and tag.
pub(super) fn seal(key: &aead::LessSafeKey, entry: &str, token: &Fetched, expires_at: SystemTime) -> Vec<u8> {
    let expires_at_ms = expires_at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let plain = Plain {
        access_token: token.access_token.expose().to_owned(),
        lifetime: token.lifetime.as_secs_f64(),
        expires_at_ms,
    };
    let data = serde_json::to_vec(&plain).expect("serialises");
    // The plain copy of the token is gone with `plain`; the sealed bytes are all that leave.
    seal_bytes(key, entry, data)
}

/// Opens a value of the entry `entry`: the token and its sealed expiry; or says it cannot
/// be read.
pub(super) fn open(key: &aead::LessSafeKey, entry: &str, value: &[u8]) -> Option<(Fetched, SystemTime)> {
    let plain: Plain = serde_json::from_slice(&open_bytes(key, entry, value)?).ok()?;
    // The same checks as a token endpoint's answer: a sealed value is ours, but be strict.
    let valid = http::HeaderValue::from_str(&format!("Bearer {}", plain.access_token)).is_ok()
        && !plain.access_token.is_empty()
        && plain.lifetime.is_finite()
        && plain.lifetime >= 1.0
        && plain.lifetime <= super::schedule::MAX_LIFETIME.as_secs_f64();
    let expires_at = UNIX_EPOCH.checked_add(Duration::from_millis(plain.expires_at_ms))?;
    valid.then(|| {
        let fetched = Fetched {
            access_token: Secret::new(plain.access_token),
            lifetime: Duration::from_secs_f64(plain.lifetime),
        };
        (fetched, expires_at)
    })
}
