//! Configuration: built-in defaults, the TOML file, environment variables and flags, merged
//! in that order of precedence, then turned into a typed, validated [`Config`] before any
//! socket is bound. Every problem becomes a [`ConfigError`] that names the key, where its
//! value came from and what is wrong, in one line; `main` prints it and exits 64. The
//! client secret is never part of the configuration: it comes from [`SECRET_ENV`] or a
//! file, and reading credential files is [`crate::credentials`]'s business.
//!
//! Four rooms, each with one job:
//!
//! - `raw`: the configuration as written, one serde struct per section; the one
//!   definition of each key and its default, and the names derived from them.
//! - `sources`: defaults, file, environment and flags, layered.
//! - `files`: the only file reads (the file, and the files its keys name).
//! - `rules`: pure validation into the typed values below, with one error type (and
//!   `api_key`, the rules of `[api_key]`).
//!
//! This file holds the typed values the rest of the crate reads, and [`load`], which runs
//! the four in order.

mod api_key;
mod files;
mod raw;
mod rules;
mod sources;
#[cfg(test)]
mod tests;

pub use api_key::{API_KEY_ROLES, ApiKeyConfig, MAX_PREFIX, check_prefix};
pub use raw::{
    CONFIG_ENV, ENV_ALIASES, LogFormat, MAP_SECTIONS, RawConfig, RawCredentials, RawLimits, RawLog, RawPolicy,
    RawShutdown, RawToken, RawUpstream, RedisUrl, RequestFormat, SECRET_ENV, env_name, map_env_name, redact_url,
};
pub use rules::parse_url;
pub use sources::{Env, Flags};

use crate::net::Listen;
use crate::secret::Secret;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};
use raw::flatten;
use rustls_pki_types::CertificateDer;
use serde_json::Value as Json;
use sources::Layered;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Loads the configuration from the file named by the flags or the environment, the
/// environment and the flags, and validates it.
pub fn load(flags: &Flags, env: &Env) -> Result<Config, ConfigError> {
    finish(&Layered::new(flags, env)?, env)
}

/// What `demo` runs with: the caller's configuration (file, environment, flags), with the
/// keys that must name the built-in fake set to `fixed` and the credentials the fake's own.
/// Also says which of the caller's settings it set aside, and where each came from, so that
/// the demo can name them instead of ignoring them silently.
pub fn load_demo(
    flags: &Flags,
    env: &Env,
    fixed: &[(&str, &str)],
    secret: &str,
) -> Result<(Config, Vec<String>), ConfigError> {
    let mut env = env.clone();
    let mut set_aside = Vec::new();
    for name in ["PINECONE_CLIENT_SECRET", "PINECONE_CLIENT_SECRET_FILE"] {
        if env.remove(name) {
            set_aside.push(format!("the client secret (env {name})"));
        }
    }
    env.set("PINECONE_CLIENT_SECRET", secret);
    let mut layered = Layered::new(flags, &env)?;
    let credentials = ["credentials.client_id", "credentials.client_id_file", "credentials.client_secret_file"];
    for key in fixed.iter().map(|(key, _)| *key).chain(credentials).chain(["token.audience", "upstream.ca_file"]) {
        if let Some(origin) = layered.unset(key) {
            set_aside.push(format!("{key} ({origin})"));
        }
    }
    for (key, value) in fixed {
        layered.set(key, toml::Value::String((*value).to_owned()));
    }
    // The demo's managed key may create and delete indexes (so that every control-plane
    // example works), unless the caller chose its roles.
    if !layered.origins.contains_key("api_key.roles") && fixed.iter().any(|(key, _)| *key == "api_key.project_id") {
        let roles = DEMO_ROLES.iter().map(|r| toml::Value::String((*r).to_owned())).collect();
        layered.set("api_key.roles", toml::Value::Array(roles));
    }
    Ok((finish(&layered, &env)?, set_aside))
}

/// The roles of the demo's managed key.
const DEMO_ROLES: [&str; 2] = ["ControlPlaneEditor", "DataPlaneEditor"];

/// The layered keys, with the files they name, as a validated [`Config`].
fn finish(layered: &Layered, env: &Env) -> Result<Config, ConfigError> {
    let raw = layered.raw()?;
    let files = files::Files::read(&raw);
    let mut config = rules::validate(raw, &layered.origins, env, &files)?;
    config.unknown_env = sources::unknown_env(env);
    config.file = layered.file.clone();
    Ok(config)
}

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "file {}", p.display()),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::Flag(flag) => write!(f, "flag {flag}"),
        }
    }
}

/// A configuration problem: the key, where its value came from, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}{}: {problem}", origin.as_ref().map(|o| format!(" ({o})")).unwrap_or_default())]
pub struct ConfigError {
    pub key: String,
    pub origin: Option<Origin>,
    pub problem: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { key: key.into(), origin: None, problem: problem.into() }
    }

    /// A problem with a value that came from `origin`.
    pub(crate) fn at(key: &str, origin: &Origin, problem: impl Into<String>) -> Self {
        Self { key: key.to_owned(), origin: Some(origin.clone()), problem: problem.into() }
    }

    /// Names where the key's value came from (`default` when no layer set it).
    pub(crate) fn located(mut self, origins: &BTreeMap<String, Origin>) -> Self {
        self.origin = Some(origins.get(&self.key).cloned().unwrap_or(Origin::Default));
        self
    }
}

/// An index's local listener: its data plane, REST and gRPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexListen {
    /// The index's name, as `describe_index` takes it.
    pub name: String,
    pub listen: Listen,
}

/// Where a credential comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// Given directly (the client id in the file or env, the secret in `PINECONE_CLIENT_SECRET`).
    Value(Secret),
    /// Read from a file, and re-read when it changes.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsConfig {
    pub client_id: CredentialSource,
    pub client_secret: CredentialSource,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub url: Uri,
    pub audience: String,
    pub request_format: RequestFormat,
    pub refresh_at: f64,
    pub refresh_jitter: f64,
    pub timeout: Duration,
    pub max_requests_per_minute: u32,
    /// The fleet's shared token cache, if one is set.
    pub shared_cache: Option<SharedCacheConfig>,
}

/// Where the shared token cache is.
#[derive(Debug, Clone)]
pub struct SharedCacheConfig {
    /// The URL, which may hold a password.
    pub url: Secret,
    /// The URL with its password redacted, for logs and `/status`.
    pub shown: String,
    /// The certificates of `token.shared_cache_ca_file` (trusted instead of the web PKI),
    /// if set.
    pub roots: Vec<CertificateDer<'static>>,
    /// Whether a password travels in clear text to a host off this machine (`redis://` with a
    /// password to a non-loopback host): warned about at start.
    pub clear_text_password: bool,
}

/// The upstream base URL, split once so the request path only concatenates.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub url: Uri,
    pub scheme: Scheme,
    pub authority: Authority,
    /// The URL's path without its trailing slash; usually empty.
    pub base_path: String,
    pub api_version: HeaderValue,
    pub override_api_version: bool,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    /// The certificates of `upstream.ca_file`, parsed at load time.
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub replay_limit: u64,
    pub max_connections: usize,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    pub delay: Duration,
    pub grace: Duration,
}

/// The validated `[limits]`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub first_byte_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    pub max_head_bytes: usize,
    pub head_memory: usize,
    pub max_concurrent_streams: u32,
    pub replay_memory: u64,
}

impl Default for Limits {
    fn default() -> Self {
        rules::limits(&RawLimits::default()).expect("the defaults are valid")
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Listen,
    pub listen_mode: u32,
    pub allow_remote: bool,
    pub ops_listen: Listen,
    pub credentials: CredentialsConfig,
    pub token: TokenConfig,
    pub upstream: UpstreamConfig,
    pub shutdown: ShutdownConfig,
    pub log: LogConfig,
    pub limits: Limits,
    /// `None` without a `[policy]`: everything is forwarded.
    pub policy: Option<crate::policy::Policy>,
    /// `None` without `api_key.project_id`: no managed key.
    pub api_key: Option<ApiKeyConfig>,
    /// One local listener per index (`[indexes]`), in name order.
    pub indexes: Vec<IndexListen>,
    /// The configuration file read, if any.
    pub file: Option<PathBuf>,
    /// Where each key that was set came from; keys not here have their default.
    pub origins: BTreeMap<String, Origin>,
    /// `PINECONE_PROXY_…` variables that matched no key: reported as warnings, not errors,
    /// because Kubernetes injects `<SERVICE>_PORT`-style variables for a Service named
    /// `pinecone-proxy`, and a sidecar must not crash-loop on them.
    pub unknown_env: Vec<String>,
    /// The effective values as written, for [`Config::describe`].
    pub(crate) raw: RawConfig,
}

impl Config {
    /// Every key with its effective value and where it came from, for `check-config`, in
    /// the order of [`RawConfig`]. The client secret is never shown; file paths are.
    pub fn describe(&self) -> Vec<(String, String, String)> {
        let raw = serde_json::to_value(&self.raw).expect("the configuration serialises");
        let mut rows: Vec<(String, String, String)> = flatten(&raw)
            .into_iter()
            .map(|(key, value)| {
                let text = match value {
                    Json::Null => "(none)".to_owned(),
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let origin = self.origins.get(&key).unwrap_or(&Origin::Default).to_string();
                (key, text, origin)
            })
            .collect();
        if let CredentialSource::Value(_) = self.credentials.client_secret {
            let at = rows.iter().rposition(|(k, _, _)| k.starts_with("credentials.")).map_or(rows.len(), |i| i + 1);
            rows.insert(at, (SECRET_ENV.into(), "<redacted>".into(), Origin::Env(SECRET_ENV.into()).to_string()));
        }
        rows
    }
}
