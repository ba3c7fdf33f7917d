//! Configuration: built-in defaults, the TOML file, environment variables and flags, merged
//! in that order of precedence into one [`RawConfig`] (serde, one struct per section), then
//! turned into a typed, validated [`Config`] before any socket is bound.
//!
//! A key is defined once: as a field of a raw section struct, with its default in that
//! struct's `Default`. The list of keys, their environment variables
//! (`PINECONE_PROXY_<SECTION>_<KEY>`, and the Pinecone SDKs' names in [`ENV_ALIASES`]), the
//! unknown-key check and `check-config`'s output are derived from it. Every problem becomes a
//! [`ConfigError`] that names the key, where its value came from and what is wrong, in one
//! line; `main` prints it and exits 64. The client secret is never part of the configuration:
//! it comes from [`SECRET_ENV`] or a file, and reading credential files is
//! [`crate::credentials`]'s business.

use crate::net::Listen;
use crate::secret::Secret;
use bytesize::ByteSize;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable that names the configuration file.
pub const CONFIG_ENV: &str = "PINECONE_PROXY_CONFIG";
/// The only place the client secret itself may come from.
pub const SECRET_ENV: &str = "PINECONE_CLIENT_SECRET";

/// The environment variables that are not `PINECONE_PROXY_<SECTION>_<KEY>`: the names the
/// Pinecone SDKs, CLI and tracing read. The `PINECONE_PROXY_…` name wins over these.
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("credentials.client_id", "PINECONE_CLIENT_ID"),
    ("credentials.client_id_file", "PINECONE_CLIENT_ID_FILE"),
    ("credentials.client_secret_file", "PINECONE_CLIENT_SECRET_FILE"),
    ("upstream.api_version", "PINECONE_API_VERSION"),
    ("log.level", "RUST_LOG"),
];

/// The configuration as written: every key with its default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub listen: String,
    /// Octal permissions of a Unix socket `listen`.
    pub listen_mode: String,
    pub allow_remote: bool,
    pub ops_listen: String,
    pub credentials: RawCredentials,
    pub token: RawToken,
    pub upstream: RawUpstream,
    pub shutdown: RawShutdown,
    pub log: RawLog,
    pub limits: RawLimits,
    pub policy: RawPolicy,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8484".into(),
            listen_mode: "0600".into(),
            allow_remote: false,
            ops_listen: "127.0.0.1:9484".into(),
            credentials: RawCredentials::default(),
            token: RawToken::default(),
            upstream: RawUpstream::default(),
            shutdown: RawShutdown::default(),
            log: RawLog::default(),
            limits: RawLimits::default(),
            policy: RawPolicy::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCredentials {
    pub client_id: Option<String>,
    pub client_id_file: Option<PathBuf>,
    pub client_secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawToken {
    pub url: String,
    pub audience: String,
    pub request_format: RequestFormat,
    pub refresh_at: f64,
    pub refresh_jitter: f64,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub max_requests_per_minute: u32,
    /// `redis://…` or `rediss://…`: the fleet's shared token cache. May hold a password, so
    /// it is a [`RedisUrl`]: redacted in `Debug` and `check-config`.
    pub shared_cache: Option<RedisUrl>,
    /// A file holding that URL (a Kubernetes Secret), instead of `shared_cache`.
    pub shared_cache_file: Option<PathBuf>,
    /// PEM certificates to trust for `rediss://` instead of the web PKI roots.
    pub shared_cache_ca_file: Option<PathBuf>,
}

/// A Redis URL as written. It may carry a password, so it is kept as a [`Secret`], shown
/// only as [`redact_url`] makes it, and never quoted in an error.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(pub Secret);

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", redact_url(self.0.expose()))
    }
}

impl Serialize for RedisUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&redact_url(self.0.expose()))
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self(Secret::new(String::deserialize(d)?.trim())))
    }
}

/// A URL with the password of its user information replaced by `<redacted>` (all of the
/// user information, when it has no `user:` part, since some write the password alone).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "<redacted: not a URL>".into() };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        None => url.to_owned(),
        Some((info, host)) => match info.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}{tail}"),
            None => format!("{scheme}://<redacted>@{host}{tail}"),
        },
    }
}

impl Default for RawToken {
    fn default() -> Self {
        Self {
            url: "https://login.pinecone.io/oauth/token".into(),
            // The trailing slash matters: without it Auth0 answers 403 (FACTS.md).
            audience: "https://api.pinecone.io/".into(),
            request_format: RequestFormat::Json,
            refresh_at: 0.5,
            refresh_jitter: 0.1,
            timeout: Duration::from_secs(10),
            // Real lifetimes are minutes to a day: 6 a minute is room for retries, and a
            // hard stop for a loop that burns Auth0's quota (PRODUCT.md, "The token").
            max_requests_per_minute: 6,
            shared_cache: None,
            shared_cache_file: None,
            shared_cache_ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    pub api_version: String,
    pub override_api_version: bool,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub replay_limit: ByteSize,
    /// Connections to the upstream, busy and idle together.
    pub max_connections: u32,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            url: "https://api.pinecone.io".into(),
            api_version: "2025-10".into(),
            override_api_version: false,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(60),
            ca_file: None,
            replay_limit: ByteSize::mib(1),
            // An HTTP/2 upstream needs one; over HTTP/1.1 each request in flight needs its
            // own, about 40 KiB each: 128 keep a flood of requests within the memory limit.
            max_connections: 128,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawShutdown {
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Under Kubernetes' default 30 s termination grace, so we exit before the SIGKILL.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for RawShutdown {
    fn default() -> Self {
        Self { delay: Duration::ZERO, grace: Duration::from_secs(25) }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    pub format: LogFormat,
    /// A tracing filter.
    pub level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: "info".into() }
    }
}

/// What this application may do (PRODUCT.md, "Policy"). In force once any of its keys is
/// set; without, everything is forwarded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawPolicy {
    /// Operation names (`operationId`s), `read_only`, `*`, `unknown`.
    pub allow: Vec<String>,
    /// The same names; wins over `allow`.
    pub deny: Vec<String>,
    /// Project ids: project-scoped operations only in these.
    pub projects: Vec<String>,
}

/// What a client of `listen` may take (PRODUCT.md, "Limits on the request path").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub first_byte_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    pub max_head_bytes: ByteSize,
    /// What all connections' read buffers may have grown by, together, for heads larger
    /// than hyper's first 8 KiB buffer.
    pub head_memory: ByteSize,
    pub max_concurrent_streams: u32,
    pub replay_memory: ByteSize,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            // The usual soft limit of open files; more is clamped to what the limit allows.
            max_connections: 1024,
            first_byte_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            // Longer than clients keep idle connections (so they close first and never
            // write into one we are closing), shorter than cloud load balancers' 120 s.
            idle_timeout: Duration::from_secs(90),
            body_read_timeout: Duration::from_secs(30),
            max_head_bytes: ByteSize::kib(64),
            // A thousand connections with 64 KiB heads would hold 64 MiB: the manifests'
            // whole memory limit. Heads of real Admin API requests are under 8 KiB.
            head_memory: ByteSize::mib(8),
            max_concurrent_streams: 64,
            replay_memory: ByteSize::mib(16),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestFormat {
    Json,
    Form,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The command-line flags that set configuration keys (shared by `run`, `demo` and
/// `check-config`). Each one is the highest-precedence source for its key.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Flags {
    /// The TOML configuration file [env: PINECONE_PROXY_CONFIG]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Where applications connect: HOST:PORT or unix:/path [env: PINECONE_PROXY_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Allow a non-loopback `listen` address
    #[arg(long)]
    pub allow_remote: bool,
    /// The operations listener (health, metrics, status) [env: PINECONE_PROXY_OPS_LISTEN]
    #[arg(long, value_name = "ADDR")]
    pub ops_listen: Option<String>,
    /// The OAuth2 token endpoint [env: PINECONE_PROXY_TOKEN_URL]
    #[arg(long, value_name = "URL")]
    pub token_url: Option<String>,
    /// The Admin API base URL [env: PINECONE_PROXY_UPSTREAM_URL]
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
    /// X-Pinecone-Api-Version to send [env: PINECONE_API_VERSION]
    #[arg(long, value_name = "VERSION")]
    pub api_version: Option<String>,
    /// text or json [env: PINECONE_PROXY_LOG_FORMAT]
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// A tracing filter, e.g. info or pinecone_admin_proxy=debug [env: RUST_LOG]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

impl Flags {
    /// `(key, flag, value)` for each flag given.
    fn values(&self) -> Vec<(&'static str, &'static str, String)> {
        let given = [
            ("listen", "--listen", &self.listen),
            ("ops_listen", "--ops-listen", &self.ops_listen),
            ("token.url", "--token-url", &self.token_url),
            ("upstream.url", "--upstream", &self.upstream),
            ("upstream.api_version", "--api-version", &self.api_version),
            ("log.format", "--log-format", &self.log_format),
            ("log.level", "--log-level", &self.log_level),
        ];
        let mut v: Vec<_> = given.into_iter().filter_map(|(k, f, value)| Some((k, f, value.clone()?))).collect();
        if self.allow_remote {
            v.push(("allow_remote", "--allow-remote", "true".to_owned()));
        }
        v
    }
}

/// A snapshot of the environment variables, so that tests need not touch the process's.
#[derive(Debug, Default, Clone)]
pub struct Env(BTreeMap<String, String>);

impl Env {
    /// The process environment. Variables that are not valid UTF-8 are kept out; if one of
    /// ours is among them, reading it reports it as unset, and [`load`] complains.
    pub fn from_process() -> Self {
        Self(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// For tests and the demo: sets one variable in this snapshot.
    pub fn set(&mut self, name: &str, value: &str) -> &mut Self {
        self.0.insert(name.to_owned(), value.to_owned());
        self
    }
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
        limits(&RawLimits::default()).expect("the defaults are valid")
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
    /// Where each key that was set came from; keys not here have their default.
    pub origins: BTreeMap<String, Origin>,
    /// `PINECONE_PROXY_…` variables that matched no key: reported as warnings, not errors,
    /// because Kubernetes injects `<SERVICE>_PORT`-style variables for a Service named
    /// `pinecone-proxy`, and a sidecar must not crash-loop on them.
    pub unknown_env: Vec<String>,
    /// The effective values as written, for [`Config::describe`].
    raw: RawConfig,
}

/// What a key's value is, from its default: it decides how a value from the environment
/// or a flag (always text) is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Float,
    Integer,
    Text,
    /// A list of names: comma-separated in the environment or a flag.
    List,
}

/// Every key, dotted (`token.timeout`), with its kind: the fields of [`RawConfig`].
fn keys() -> Vec<(String, Kind)> {
    let defaults = serde_json::to_value(RawConfig::default()).expect("the defaults serialise");
    flatten(&defaults)
        .into_iter()
        .map(|(key, value)| {
            let kind = match value {
                Json::Bool(_) => Kind::Bool,
                Json::Number(n) if n.is_f64() => Kind::Float,
                Json::Number(_) => Kind::Integer,
                Json::Array(_) => Kind::List,
                _ => Kind::Text,
            };
            (key, kind)
        })
        .collect()
}

/// The leaves of a JSON object as dotted keys, in field order.
fn flatten(value: &Json) -> Vec<(String, &Json)> {
    let mut out = Vec::new();
    if let Json::Object(map) = value {
        for (name, v) in map {
            match v {
                Json::Object(_) => out.extend(flatten(v).into_iter().map(|(k, leaf)| (format!("{name}.{k}"), leaf))),
                leaf => out.push((name.clone(), leaf)),
            }
        }
    }
    out
}

/// The sections (tables) of the file.
fn sections() -> Vec<String> {
    let mut s: Vec<String> = keys().into_iter().filter_map(|(k, _)| Some(k.split_once('.')?.0.to_owned())).collect();
    s.dedup();
    s
}

/// `PINECONE_PROXY_<SECTION>_<KEY>` for a dotted key.
pub fn env_name(key: &str) -> String {
    format!("PINECONE_PROXY_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// The environment variables that set `key`, the one that wins first.
fn env_names(key: &str) -> Vec<String> {
    let aliases = ENV_ALIASES.iter().filter(|(k, _)| *k == key).map(|(_, name)| (*name).to_owned());
    std::iter::once(env_name(key)).chain(aliases).collect()
}

/// Loads the configuration from the file named by the flags or the environment, the
/// environment and the flags, and validates it.
pub fn load(flags: &Flags, env: &Env) -> Result<Config, ConfigError> {
    let keys = keys();
    let (table, origins) = layers(&keys, flags, env)?;
    finish(&keys, table, &origins, env)
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
    let keys = keys();
    let mut env = env.clone();
    let mut set_aside = Vec::new();
    for name in ["PINECONE_CLIENT_SECRET", "PINECONE_CLIENT_SECRET_FILE"] {
        if env.0.remove(name).is_some() {
            set_aside.push(format!("the client secret (env {name})"));
        }
    }
    env.set("PINECONE_CLIENT_SECRET", secret);
    let (mut table, mut origins) = layers(&keys, flags, &env)?;
    let credentials = ["credentials.client_id", "credentials.client_id_file", "credentials.client_secret_file"];
    for key in fixed.iter().map(|(key, _)| *key).chain(credentials).chain(["token.audience", "upstream.ca_file"]) {
        if let Some(origin) = origins.remove(key) {
            set_aside.push(format!("{key} ({origin})"));
            unset(&mut table, key);
        }
    }
    for (key, value) in fixed {
        set(&mut table, key, toml::Value::String((*value).to_owned()));
    }
    Ok((finish(&keys, table, &origins, &env)?, set_aside))
}

/// Defaults under the file, the environment and the flags, each over the one before: the
/// keys that are set, and where each came from.
fn layers(
    keys: &[(String, Kind)],
    flags: &Flags,
    env: &Env,
) -> Result<(toml::Table, BTreeMap<String, Origin>), ConfigError> {
    let mut table = toml::Table::new();
    let mut origins = BTreeMap::new();

    let file = flags.config.clone().or_else(|| env.get(CONFIG_ENV).filter(|p| !p.is_empty()).map(PathBuf::from));
    if let Some(path) = &file {
        read_file(path, keys, &mut table, &mut origins)?;
    }
    for (key, kind) in keys {
        if let Some((name, text)) = env_names(key).into_iter().find_map(|n| Some((n.clone(), env.get(&n)?.to_owned())))
        {
            let origin = Origin::Env(name);
            let value = typed(&text, *kind).map_err(|problem| at(key, &origin, problem))?;
            set(&mut table, key, value);
            origins.insert(key.clone(), origin);
        }
    }
    for (key, flag, text) in flags.values() {
        let kind = keys.iter().find(|(k, _)| k == key).map_or(Kind::Text, |(_, kind)| *kind);
        let origin = Origin::Flag(flag);
        let value = typed(&text, kind).map_err(|problem| at(key, &origin, problem))?;
        set(&mut table, key, value);
        origins.insert(key.to_owned(), origin);
    }
    Ok((table, origins))
}

/// The layered keys as a validated [`Config`].
fn finish(
    keys: &[(String, Kind)],
    table: toml::Table,
    origins: &BTreeMap<String, Origin>,
    env: &Env,
) -> Result<Config, ConfigError> {
    let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let origin = origins.get(&key).cloned().unwrap_or(Origin::Default);
        let mut problem = e.into_inner().message().to_owned();
        if problem.ends_with("expected a duration") {
            problem.push_str(" (write e.g. 500ms, 5s, 2m, 1h)");
        }
        at(&key, &origin, problem)
    })?;
    let mut config = validate(raw, origins, env)?;
    let known: Vec<String> = keys.iter().flat_map(|(k, _)| env_names(k)).collect();
    config.unknown_env = env
        .0
        .keys()
        .filter(|k| k.starts_with("PINECONE_PROXY_") && k.as_str() != CONFIG_ENV && !known.contains(k))
        .cloned()
        .collect();
    Ok(config)
}

fn at(key: &str, origin: &Origin, problem: impl Into<String>) -> ConfigError {
    ConfigError { key: key.to_owned(), origin: Some(origin.clone()), problem: problem.into() }
}

/// Text from the environment or a flag as the value its key takes.
fn typed(text: &str, kind: Kind) -> Result<toml::Value, String> {
    let t = text.trim();
    Ok(match kind {
        Kind::Bool => match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
            "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
            _ => return Err(format!("must be true or false, got {text:?}")),
        },
        Kind::Float => toml::Value::Float(
            t.parse().ok().filter(|f: &f64| f.is_finite()).ok_or(format!("must be a number, got {text:?}"))?,
        ),
        Kind::Integer => toml::Value::Integer(t.parse().map_err(|_| format!("must be a whole number, got {text:?}"))?),
        Kind::Text => toml::Value::String(text.to_owned()),
        Kind::List => toml::Value::Array(
            t.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| toml::Value::String(s.to_owned())).collect(),
        ),
    })
}

fn set(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        Some((section, name)) => {
            let section = table.entry(section).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(section) = section {
                section.insert(name.to_owned(), value);
            }
        }
        None => {
            table.insert(key.to_owned(), value);
        }
    }
}

/// Takes a key out of `table`, whatever layer set it.
fn unset(table: &mut toml::Table, key: &str) {
    match key.split_once('.') {
        Some((section, name)) => {
            if let Some(toml::Value::Table(section)) = table.get_mut(section) {
                section.remove(name);
            }
        }
        None => {
            table.remove(key);
        }
    }
}

/// Reads the file into `table`, refusing unknown keys, and the client secret by name.
fn read_file(
    path: &Path,
    keys: &[(String, Kind)],
    table: &mut toml::Table,
    origins: &mut BTreeMap<String, Origin>,
) -> Result<(), ConfigError> {
    let origin = Origin::File(path.to_owned());
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("--config", format!("cannot read {}: {e}", path.display())))?;
    let parsed: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // The TOML error quotes the offending line, which could hold a secret: keep only
        // the message and the position.
        let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let pos = line.map(|l| format!(" at line {l}")).unwrap_or_default();
        ConfigError::new("--config", format!("{} is not valid TOML{pos}: {}", path.display(), e.message()))
    })?;
    let sections = sections();
    let mut check = |key: String| {
        if key == "client_secret" || key == "credentials.client_secret" {
            return Err(at(
                &key,
                &origin,
                format!(
                    "the client secret is never read from the configuration file; set the environment \
                     variable {SECRET_ENV}, or credentials.client_secret_file (env PINECONE_CLIENT_SECRET_FILE)"
                ),
            ));
        }
        if !keys.iter().any(|(k, _)| *k == key) {
            return Err(at(&key, &origin, "unknown key"));
        }
        origins.insert(key, origin.clone());
        Ok(())
    };
    for (name, value) in &parsed {
        if sections.contains(name) {
            let toml::Value::Table(section) = value else {
                return Err(at(name, &origin, "must be a table ([section])"));
            };
            for sub in section.keys() {
                check(format!("{name}.{sub}"))?;
            }
        } else {
            check(name.clone())?;
        }
    }
    *table = parsed;
    Ok(())
}

/// The typed configuration from the raw one: each rule a pure function of its values.
fn validate(raw: RawConfig, origins: &BTreeMap<String, Origin>, env: &Env) -> Result<Config, ConfigError> {
    let err = |key: &str, problem: String| at(key, origins.get(key).unwrap_or(&Origin::Default), problem);
    let listen = check_listen(&raw.listen, raw.allow_remote).map_err(|p| err("listen", p))?;
    let listen_mode = parse_mode(&raw.listen_mode).map_err(|p| err("listen_mode", p))?;
    let ops_listen: Listen = raw.ops_listen.parse().map_err(|p| err("ops_listen", p))?;
    let credentials = credentials(&raw.credentials, env, origins)?;

    let t = &raw.token;
    let token = TokenConfig {
        url: parse_url(&t.url).map_err(|p| err("token.url", p))?,
        audience: non_empty(&t.audience).map_err(|p| err("token.audience", p))?,
        request_format: t.request_format,
        refresh_at: t.refresh_at,
        refresh_jitter: t.refresh_jitter,
        timeout: positive(t.timeout).map_err(|p| err("token.timeout", p))?,
        max_requests_per_minute: in_range(t.max_requests_per_minute, 1, 6000)
            .map_err(|p| err("token.max_requests_per_minute", p))?,
        shared_cache: shared_cache(t).map_err(|(key, p)| err(key, p))?,
    };
    check_refresh(t.refresh_at, t.refresh_jitter).map_err(|(key, p)| err(key, p))?;

    let u = &raw.upstream;
    let url = parse_url(&u.url).and_then(no_query).map_err(|p| err("upstream.url", p))?;
    let upstream = UpstreamConfig {
        scheme: url.scheme().cloned().unwrap_or(Scheme::HTTPS),
        authority: url.authority().cloned().expect("parse_url requires a host"),
        base_path: url.path().trim_end_matches('/').to_owned(),
        url,
        api_version: api_version(&u.api_version).map_err(|p| err("upstream.api_version", p))?,
        override_api_version: u.override_api_version,
        connect_timeout: positive(u.connect_timeout).map_err(|p| err("upstream.connect_timeout", p))?,
        timeout: positive(u.timeout).map_err(|p| err("upstream.timeout", p))?,
        extra_roots: match &u.ca_file {
            None => Vec::new(),
            Some(path) => read_roots(path).map_err(|p| err("upstream.ca_file", p))?,
        },
        replay_limit: replay_limit(u.replay_limit).map_err(|p| err("upstream.replay_limit", p))?,
        max_connections: in_range(u.max_connections, 1, 10_000).map_err(|p| err("upstream.max_connections", p))?
            as usize,
    };
    let log = LogConfig { format: raw.log.format, level: log_filter(&raw.log.level).map_err(|p| err("log.level", p))? };
    let limits = limits(&raw.limits).map_err(|(key, p)| err(key, p))?;
    let policy = match origins.keys().any(|k| k.starts_with("policy.")) {
        false => None,
        true => Some(
            crate::policy::Policy::new(&raw.policy.allow, &raw.policy.deny, &raw.policy.projects)
                .map_err(|(key, p)| err(key, p))?,
        ),
    };
    Ok(Config {
        listen,
        listen_mode,
        allow_remote: raw.allow_remote,
        ops_listen,
        credentials,
        token,
        upstream,
        shutdown: ShutdownConfig { delay: raw.shutdown.delay, grace: raw.shutdown.grace },
        log,
        limits,
        policy,
        origins: origins.clone(),
        unknown_env: Vec::new(),
        raw,
    })
}

fn check_listen(text: &str, allow_remote: bool) -> Result<Listen, String> {
    let listen: Listen = text.parse()?;
    match &listen {
        Listen::Tcp(addr) if !allow_remote && !addr.ip().is_loopback() => Err(format!(
            "{addr} is not a loopback address: whoever reaches it acts with the service account's \
             rights; set allow_remote = true (or --allow-remote) if you mean it"
        )),
        _ => Ok(listen),
    }
}

fn parse_mode(text: &str) -> Result<u32, String> {
    u32::from_str_radix(text.trim(), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("must be octal permissions such as \"0600\", at most 0777, got {text:?}"))
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.trim().is_empty() { Err("must not be empty".into()) } else { Ok(text.to_owned()) }
}

fn positive(d: Duration) -> Result<Duration, String> {
    if d.is_zero() { Err("must be greater than 0".into()) } else { Ok(d) }
}

fn in_range(n: u32, min: u32, max: u32) -> Result<u32, String> {
    if (min..=max).contains(&n) { Ok(n) } else { Err(format!("must be between {min} and {max}, got {n}")) }
}

fn no_query(uri: Uri) -> Result<Uri, String> {
    if uri.query().is_some() { Err("must not have a query".into()) } else { Ok(uri) }
}

fn api_version(text: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(text.trim())
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("must be a version such as 2025-10, got {text:?}"))
}

fn replay_limit(size: ByteSize) -> Result<u64, String> {
    if size.as_u64() > 64 << 20 {
        return Err("must be at most 64MiB: each replayable request holds this much memory".into());
    }
    Ok(size.as_u64())
}

/// hyper's smallest read buffer: a head limit below it could not be kept.
const MIN_HEAD_BYTES: u64 = 8 << 10;

fn limits(raw: &RawLimits) -> Result<Limits, Problem> {
    let timeout = |key: &'static str, d: Duration| positive(d).map_err(|p| (key, p));
    let head = raw.max_head_bytes.as_u64();
    if !(MIN_HEAD_BYTES..=16 << 20).contains(&head) {
        return Err(("limits.max_head_bytes", format!("must be between 8KiB and 16MiB, got {}", raw.max_head_bytes)));
    }
    Ok(Limits {
        max_connections: in_range(raw.max_connections, 1, 1_000_000).map_err(|p| ("limits.max_connections", p))?
            as usize,
        first_byte_timeout: timeout("limits.first_byte_timeout", raw.first_byte_timeout)?,
        header_read_timeout: timeout("limits.header_read_timeout", raw.header_read_timeout)?,
        idle_timeout: timeout("limits.idle_timeout", raw.idle_timeout)?,
        body_read_timeout: timeout("limits.body_read_timeout", raw.body_read_timeout)?,
        max_head_bytes: head as usize,
        head_memory: usize::try_from(raw.head_memory.as_u64()).unwrap_or(usize::MAX),
        max_concurrent_streams: in_range(raw.max_concurrent_streams, 1, 1000)
            .map_err(|p| ("limits.max_concurrent_streams", p))?,
        replay_memory: raw.replay_memory.as_u64(),
    })
}

fn log_filter(level: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| level.to_owned())
        .map_err(|e| format!("is not a valid filter: {e}"))
}

/// The key a problem is about, and the problem.
type Problem = (&'static str, String);

fn check_refresh(at: f64, jitter: f64) -> Result<(), Problem> {
    if !(at > 0.0 && at < 1.0) {
        return Err((
            "token.refresh_at",
            format!("must be greater than 0 and less than 1 (a fraction of the lifetime), got {at}"),
        ));
    }
    if !(0.0..0.5).contains(&jitter) {
        return Err(("token.refresh_jitter", format!("must be at least 0 and less than 0.5, got {jitter}")));
    }
    // A token stops being usable at the latest at 90 % of its lifetime (see
    // token::schedule::usable_margin), so the refresh must be due before then.
    if at - jitter <= 0.0 || at + jitter > 0.9 {
        return Err((
            "token.refresh_jitter",
            format!(
                "token.refresh_at ± token.refresh_jitter must stay above 0 and at most 0.9 (a token \
                 is no longer used after 90% of its lifetime), got {at} ± {jitter}"
            ),
        ));
    }
    Ok(())
}

fn credentials(
    raw: &RawCredentials,
    env: &Env,
    origins: &BTreeMap<String, Origin>,
) -> Result<CredentialsConfig, ConfigError> {
    let origin = |key: &str| origins.get(key).cloned().unwrap_or(Origin::Default);
    let client_id = match (&raw.client_id, &raw.client_id_file) {
        (Some(_), Some(_)) => {
            return Err(at(
                "credentials.client_id_file",
                &origin("credentials.client_id_file"),
                format!(
                    "set only one of credentials.client_id ({}) and credentials.client_id_file",
                    origin("credentials.client_id")
                ),
            ));
        }
        (Some(v), None) => CredentialSource::Value(Secret::new(
            non_empty(v.trim()).map_err(|p| at("credentials.client_id", &origin("credentials.client_id"), p))?,
        )),
        (None, Some(p)) => CredentialSource::File(
            file_path(p)
                .map_err(|problem| at("credentials.client_id_file", &origin("credentials.client_id_file"), problem))?,
        ),
        (None, None) => {
            return Err(ConfigError::new(
                "credentials.client_id",
                "is required: set PINECONE_CLIENT_ID, PINECONE_CLIENT_ID_FILE, or credentials.client_id in the file",
            ));
        }
    };
    let secret_origin = origin("credentials.client_secret_file");
    let client_secret = match (env.get(SECRET_ENV), &raw.client_secret_file) {
        (Some(_), Some(_)) => {
            return Err(at(
                "credentials.client_secret_file",
                &secret_origin,
                format!("set only one of {SECRET_ENV} and credentials.client_secret_file"),
            ));
        }
        (Some(v), None) => CredentialSource::Value(Secret::new(
            non_empty(v.trim()).map_err(|p| at(SECRET_ENV, &Origin::Env(SECRET_ENV.into()), p))?,
        )),
        (None, Some(p)) => CredentialSource::File(
            file_path(p).map_err(|problem| at("credentials.client_secret_file", &secret_origin, problem))?,
        ),
        (None, None) => {
            return Err(ConfigError::new(
                "credentials.client_secret_file",
                format!(
                    "the client secret is required: set {SECRET_ENV}, or PINECONE_CLIENT_SECRET_FILE / credentials.client_secret_file"
                ),
            ));
        }
    };
    Ok(CredentialsConfig { client_id, client_secret })
}

fn file_path(p: &Path) -> Result<PathBuf, String> {
    if p.as_os_str().to_string_lossy().trim().is_empty() { Err("must not be empty".into()) } else { Ok(p.to_owned()) }
}

/// An `https://` URL, or `http://` to a loopback host only: a bearer token or a client
/// secret never crosses a network in clear text.
pub fn parse_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text.trim().parse().map_err(|e| format!("is not a valid URL ({e}): {text:?}"))?;
    let scheme = uri.scheme_str().ok_or_else(|| format!("must start with https://, got {text:?}"))?;
    let authority = uri.authority().ok_or_else(|| format!("must name a host, got {text:?}"))?;
    if authority.as_str().contains('@') {
        return Err("must not contain user information (user:password@)".into());
    }
    match scheme {
        "https" => Ok(uri),
        "http" if crate::net::is_loopback_host(authority.host()) => Ok(uri),
        "http" => Err(format!(
            "plain http:// is allowed only for loopback hosts (a bearer token never crosses a \
             network in clear text); use https://{authority}"
        )),
        other => Err(format!("must be an https:// URL, got scheme {other:?}")),
    }
}

/// `token.shared_cache` or `token.shared_cache_file`, checked: a `redis://` or `rediss://`
/// URL that the Redis client reads. Problems never quote the URL (it may hold a password).
fn shared_cache(t: &RawToken) -> Result<Option<SharedCacheConfig>, (&'static str, String)> {
    let (key, url) = match (&t.shared_cache, &t.shared_cache_file) {
        (Some(_), Some(_)) => {
            return Err((
                "token.shared_cache_file",
                "set only one of token.shared_cache and token.shared_cache_file".into(),
            ));
        }
        (Some(url), None) => ("token.shared_cache", url.0.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ("token.shared_cache_file", format!("cannot read {}: {e}", path.display())))?;
            ("token.shared_cache_file", Secret::new(text.trim()))
        }
        (None, None) => {
            if t.shared_cache_ca_file.is_some() {
                return Err(("token.shared_cache_ca_file", "is set, but token.shared_cache is not".into()));
            }
            return Ok(None);
        }
    };
    let text = url.expose();
    if text.is_empty() {
        return Err((key, "is empty".into()));
    }
    let tls = text.starts_with("rediss://");
    if !tls && !text.starts_with("redis://") {
        return Err((key, "must be a redis:// or rediss:// URL (redis://[user:password@]host[:port][/db])".into()));
    }
    let info = redis::IntoConnectionInfo::into_connection_info(text).map_err(|e| {
        (
            key,
            format!(
                "is not a Redis URL the client can use ({:?}): write redis://[user:password@]host[:port][/db]",
                e.kind()
            ),
        )
    })?;
    if let redis::ConnectionAddr::TcpTls { insecure: true, .. } = info.addr() {
        return Err((
            key,
            "turns off the certificate check of rediss:// (#insecure): whoever answers in Redis's place would \
             get the password and choose the fleet's lock; trust a private CA with token.shared_cache_ca_file instead"
                .into(),
        ));
    }
    let roots = match &t.shared_cache_ca_file {
        None => Vec::new(),
        Some(_) if !tls => return Err(("token.shared_cache_ca_file", "applies to rediss:// URLs only".into())),
        Some(path) => read_roots(path).map_err(|p| ("token.shared_cache_ca_file", p))?,
    };
    let loopback = match info.addr() {
        redis::ConnectionAddr::Tcp(host, _) | redis::ConnectionAddr::TcpTls { host, .. } => {
            host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        _ => true,
    };
    let clear_text_password = !tls && !loopback && info.redis_settings().password().is_some();
    Ok(Some(SharedCacheConfig { shown: redact_url(text), url, roots, clear_text_password }))
}

fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        let mut e = Env::default();
        for (k, v) in pairs {
            e.set(k, v);
        }
        e
    }

    fn creds() -> Vec<(&'static str, &'static str)> {
        vec![("PINECONE_CLIENT_ID", "id-1"), ("PINECONE_CLIENT_SECRET", "s3cret")]
    }

    fn load_with(file: Option<&str>, extra_env: &[(&str, &str)], flags: Flags) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let mut flags = flags;
        if let Some(text) = file {
            let path = dir.path().join("c.toml");
            std::fs::write(&path, text).unwrap();
            flags.config = Some(path);
        }
        let mut pairs = creds();
        pairs.extend_from_slice(extra_env);
        load(&flags, &env(&pairs))
    }

    #[test]
    fn redis_urls_are_redacted() {
        for (url, shown) in [
            ("redis://:hunter2@cache:6379/0", "redis://:<redacted>@cache:6379/0"),
            ("rediss://app:hunter2@cache.internal:6380/1", "rediss://app:<redacted>@cache.internal:6380/1"),
            ("redis://hunter2@cache", "redis://<redacted>@cache"),
            ("redis://cache:6379/0", "redis://cache:6379/0"),
            ("redis://:p@ss:w@rd@cache/0", "redis://:<redacted>@cache/0"),
            ("hunter2", "<redacted: not a URL>"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn the_shared_cache_url_is_checked_and_never_shown() {
        let env_url = [("PINECONE_PROXY_TOKEN_SHARED_CACHE", "redis://:hunter2@10.0.0.7:6379/0")];
        let c = load_with(None, &env_url, Flags::default()).unwrap();
        let cache = c.token.shared_cache.as_ref().unwrap();
        assert_eq!(cache.url.expose(), "redis://:hunter2@10.0.0.7:6379/0");
        assert_eq!(cache.shown, "redis://:<redacted>@10.0.0.7:6379/0");
        assert!(cache.clear_text_password, "a password in clear text off the machine");
        assert!(!format!("{c:?}").contains("hunter2"));
        let rows = c.describe();
        assert!(!format!("{rows:?}").contains("hunter2"));
        let row = rows.iter().find(|(k, _, _)| k == "token.shared_cache").unwrap();
        assert_eq!(row.1, "redis://:<redacted>@10.0.0.7:6379/0");

        let local =
            load_with(None, &[("PINECONE_PROXY_TOKEN_SHARED_CACHE", "redis://:pw@127.0.0.1:1/0")], Flags::default());
        assert!(!local.unwrap().token.shared_cache.unwrap().clear_text_password, "loopback");
        let tls =
            load_with(None, &[("PINECONE_PROXY_TOKEN_SHARED_CACHE", "rediss://:pw@cache:6380")], Flags::default());
        assert!(!tls.unwrap().token.shared_cache.unwrap().clear_text_password, "TLS");
        assert!(load_with(None, &[], Flags::default()).unwrap().token.shared_cache.is_none());

        // From a file (a Kubernetes Secret), trimmed.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("url");
        std::fs::write(&file, "redis://:hunter2@cache:6379/0\n").unwrap();
        let path = file.to_str().unwrap();
        let c = load_with(None, &[("PINECONE_PROXY_TOKEN_SHARED_CACHE_FILE", path)], Flags::default()).unwrap();
        assert_eq!(c.token.shared_cache.unwrap().url.expose(), "redis://:hunter2@cache:6379/0");

        // Bad values name the key, and never quote the URL.
        for (extra, key) in [
            (vec![("PINECONE_PROXY_TOKEN_SHARED_CACHE", "http://:hunter2@cache")], "token.shared_cache"),
            (vec![("PINECONE_PROXY_TOKEN_SHARED_CACHE", "redis://:hunter2@cache:notaport")], "token.shared_cache"),
            (vec![("PINECONE_PROXY_TOKEN_SHARED_CACHE", " ")], "token.shared_cache"),
            (
                vec![("PINECONE_PROXY_TOKEN_SHARED_CACHE", "rediss://:hunter2@cache:6380/0#insecure")],
                "token.shared_cache",
            ),
            (
                vec![
                    ("PINECONE_PROXY_TOKEN_SHARED_CACHE", "redis://cache"),
                    ("PINECONE_PROXY_TOKEN_SHARED_CACHE_FILE", path),
                ],
                "token.shared_cache_file",
            ),
            (vec![("PINECONE_PROXY_TOKEN_SHARED_CACHE_FILE", "/nonexistent/url")], "token.shared_cache_file"),
            (vec![("PINECONE_PROXY_TOKEN_SHARED_CACHE_CA_FILE", path)], "token.shared_cache_ca_file"),
            (
                vec![
                    ("PINECONE_PROXY_TOKEN_SHARED_CACHE", "redis://cache"),
                    ("PINECONE_PROXY_TOKEN_SHARED_CACHE_CA_FILE", path),
                ],
                "token.shared_cache_ca_file",
            ),
            (
                vec![
                    ("PINECONE_PROXY_TOKEN_SHARED_CACHE", "rediss://cache"),
                    ("PINECONE_PROXY_TOKEN_SHARED_CACHE_CA_FILE", path),
                ],
                "token.shared_cache_ca_file",
            ),
        ] {
            let e = load_with(None, &extra, Flags::default()).expect_err(key);
            assert_eq!(e.key, key, "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = load_with(None, &[], Flags::default()).unwrap();
        assert_eq!(c.listen, Listen::Tcp("127.0.0.1:8484".parse().unwrap()));
        assert_eq!(c.ops_listen, Listen::Tcp("127.0.0.1:9484".parse().unwrap()));
        assert_eq!(c.listen_mode, 0o600);
        assert!(!c.allow_remote);
        assert_eq!(c.token.url, "https://login.pinecone.io/oauth/token");
        assert_eq!(c.token.audience, "https://api.pinecone.io/");
        assert_eq!(c.token.request_format, RequestFormat::Json);
        assert_eq!((c.token.refresh_at, c.token.refresh_jitter), (0.5, 0.1));
        assert_eq!(c.token.timeout, Duration::from_secs(10));
        assert_eq!(c.token.max_requests_per_minute, 6);
        assert_eq!(c.upstream.url, "https://api.pinecone.io");
        assert_eq!(c.upstream.authority.as_str(), "api.pinecone.io");
        assert_eq!(c.upstream.base_path, "");
        assert_eq!(c.upstream.api_version, "2025-10");
        assert!(!c.upstream.override_api_version);
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.upstream.timeout, Duration::from_secs(60));
        assert_eq!(c.upstream.replay_limit, 1 << 20);
        assert_eq!(c.shutdown.delay, Duration::ZERO);
        assert_eq!(c.shutdown.grace, Duration::from_secs(25));
        assert_eq!(c.log.format, LogFormat::Text);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.credentials.client_id, CredentialSource::Value(Secret::new("id-1")));
    }

    #[test]
    fn precedence_is_default_file_env_flag() {
        let file = "listen = \"127.0.0.1:1001\"\n[upstream]\napi_version = \"2025-04\"\ntimeout = \"7s\"\n";
        let c = load_with(Some(file), &[], Flags::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:1001");
        assert_eq!(c.upstream.timeout, Duration::from_secs(7));

        let c = load_with(
            Some(file),
            &[("PINECONE_PROXY_LISTEN", "127.0.0.1:1002"), ("PINECONE_API_VERSION", "2026-07")],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:1002");
        assert_eq!(c.upstream.api_version, "2026-07");
        assert_eq!(c.origins["listen"], Origin::Env("PINECONE_PROXY_LISTEN".into()));

        let flags = Flags { listen: Some("127.0.0.1:1003".into()), ..Flags::default() };
        let c = load_with(Some(file), &[("PINECONE_PROXY_LISTEN", "127.0.0.1:1002")], flags).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:1003");
        assert_eq!(c.origins["listen"], Origin::Flag("--listen"));
    }

    #[test]
    fn the_proxy_specific_env_name_wins_over_the_sdk_alias() {
        let c = load_with(
            None,
            &[("PINECONE_API_VERSION", "2025-04"), ("PINECONE_PROXY_UPSTREAM_API_VERSION", "2026-07")],
            Flags::default(),
        )
        .unwrap();
        assert_eq!(c.upstream.api_version, "2026-07");
    }

    /// The contract's names: every key has `PINECONE_PROXY_<SECTION>_<KEY>`, and the
    /// aliases name real keys.
    #[test]
    fn env_names_are_derived_from_the_keys() {
        let names: Vec<(String, Vec<String>)> = keys().into_iter().map(|(k, _)| (k.clone(), env_names(&k))).collect();
        assert_eq!(names.len(), 41, "{names:?}");
        let find = |key: &str| names.iter().find(|(k, _)| k == key).map(|(_, n)| n.clone()).unwrap();
        assert_eq!(find("listen"), ["PINECONE_PROXY_LISTEN"]);
        assert_eq!(find("token.max_requests_per_minute"), ["PINECONE_PROXY_TOKEN_MAX_REQUESTS_PER_MINUTE"]);
        assert_eq!(find("credentials.client_id"), ["PINECONE_PROXY_CREDENTIALS_CLIENT_ID", "PINECONE_CLIENT_ID"]);
        assert_eq!(find("log.level"), ["PINECONE_PROXY_LOG_LEVEL", "RUST_LOG"]);
        assert_eq!(find("limits.max_head_bytes"), ["PINECONE_PROXY_LIMITS_MAX_HEAD_BYTES"]);
        for (key, _) in ENV_ALIASES {
            assert!(names.iter().any(|(k, _)| k == key), "alias for unknown key {key}");
        }
    }

    #[test]
    fn every_key_has_an_env_variable() {
        let pairs = [
            ("PINECONE_PROXY_LISTEN_MODE", "0640"),
            ("PINECONE_PROXY_ALLOW_REMOTE", "true"),
            ("PINECONE_PROXY_TOKEN_REQUEST_FORMAT", "form"),
            ("PINECONE_PROXY_TOKEN_REFRESH_AT", "0.6"),
            ("PINECONE_PROXY_TOKEN_REFRESH_JITTER", "0.05"),
            ("PINECONE_PROXY_TOKEN_TIMEOUT", "3s"),
            ("PINECONE_PROXY_TOKEN_MAX_REQUESTS_PER_MINUTE", "30"),
            ("PINECONE_PROXY_UPSTREAM_OVERRIDE_API_VERSION", "true"),
            ("PINECONE_PROXY_UPSTREAM_CONNECT_TIMEOUT", "250ms"),
            ("PINECONE_PROXY_UPSTREAM_REPLAY_LIMIT", "64KiB"),
            ("PINECONE_PROXY_SHUTDOWN_DELAY", "2s"),
            ("PINECONE_PROXY_SHUTDOWN_GRACE", "1m"),
            ("PINECONE_PROXY_LOG_FORMAT", "json"),
            ("RUST_LOG", "debug"),
        ];
        let c = load_with(None, &pairs, Flags::default()).unwrap();
        assert_eq!(c.listen_mode, 0o640);
        assert!(c.allow_remote);
        assert_eq!(c.token.request_format, RequestFormat::Form);
        assert_eq!((c.token.refresh_at, c.token.refresh_jitter), (0.6, 0.05));
        assert_eq!(c.token.timeout, Duration::from_secs(3));
        assert_eq!(c.token.max_requests_per_minute, 30);
        assert!(c.upstream.override_api_version);
        assert_eq!(c.upstream.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.upstream.replay_limit, 64 << 10);
        assert_eq!(c.shutdown.delay, Duration::from_secs(2));
        assert_eq!(c.shutdown.grace, Duration::from_secs(60));
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(c.log.level, "debug");
    }

    /// Each bad configuration names the key it is about, and never echoes the secret.
    #[test]
    fn bad_configuration_names_the_key() {
        type Case<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (Some("lisen = \"127.0.0.1:1\""), &[], "lisen"),
            (Some("[token]\nurll = \"x\""), &[], "token.urll"),
            (Some("[bogus]\nx = 1"), &[], "bogus"),
            (Some("[credentials]\nclient_secret = \"topsecret\""), &[], "credentials.client_secret"),
            (Some("client_secret = \"topsecret\""), &[], "client_secret"),
            (Some("[token]\ntimeout = \"5 parsecs\""), &[], "token.timeout"),
            (Some("[token]\ntimeout = 5"), &[], "token.timeout"),
            (Some("[token]\nrefresh_at = 1.5"), &[], "token.refresh_at"),
            (Some("[token]\nrefresh_jitter = 0.45"), &[], "token.refresh_jitter"),
            (Some("[token]\nmax_requests_per_minute = 0"), &[], "token.max_requests_per_minute"),
            (Some("[token]\nmax_requests_per_minute = -1"), &[], "token.max_requests_per_minute"),
            (Some("[token]\nrequest_format = \"xml\""), &[], "token.request_format"),
            (Some("[upstream]\nurl = \"http://api.pinecone.io\""), &[], "upstream.url"),
            (Some("[upstream]\nurl = \"not a url\""), &[], "upstream.url"),
            (Some("[upstream]\nreplay_limit = \"1 lightyear\""), &[], "upstream.replay_limit"),
            (Some("[upstream]\nreplay_limit = \"65MiB\""), &[], "upstream.replay_limit"),
            (Some("[upstream]\nca_file = \"/nonexistent/ca.pem\""), &[], "upstream.ca_file"),
            (Some("[log]\nformat = \"yaml\""), &[], "log.format"),
            (Some("[log]\nlevel = \"info,[\""), &[], "log.level"),
            (Some("listen_mode = \"0999\""), &[], "listen_mode"),
            (Some("listen_mode = 600"), &[], "listen_mode"),
            (Some("listen = \"0.0.0.0:8484\""), &[], "listen"),
            (Some("token = 3"), &[], "token"),
            (None, &[("PINECONE_PROXY_TOKEN_URL", "http://login.example.com/oauth/token")], "token.url"),
            (None, &[("PINECONE_PROXY_LISTEN", "10.0.0.1:80")], "listen"),
            (None, &[("PINECONE_PROXY_OPS_LISTEN", "nonsense")], "ops_listen"),
            (None, &[("PINECONE_PROXY_SHUTDOWN_GRACE", "-1s")], "shutdown.grace"),
            (None, &[("PINECONE_PROXY_ALLOW_REMOTE", "perhaps")], "allow_remote"),
            (None, &[("PINECONE_PROXY_TOKEN_REFRESH_AT", "half")], "token.refresh_at"),
            (None, &[("PINECONE_CLIENT_ID_FILE", "/x")], "credentials.client_id_file"),
            (Some("[limits]\nmax_connections = 0"), &[], "limits.max_connections"),
            (Some("[upstream]\nmax_connections = 0"), &[], "upstream.max_connections"),
            (Some("[policy]\nallow = [\"crate_api_key\"]"), &[], "policy.allow"),
            (None, &[("PINECONE_PROXY_POLICY_DENY", "list_projects,delet_project")], "policy.deny"),
            (Some("[policy]\nprojects = [\"\"]"), &[], "policy.projects"),
            (Some("[policy]\nallow = \"list_projects\""), &[], "policy.allow"),
            (None, &[("PINECONE_PROXY_LIMITS_IDLE_TIMEOUT", "0s")], "limits.idle_timeout"),
            (None, &[("PINECONE_PROXY_LIMITS_FIRST_BYTE_TIMEOUT", "soon")], "limits.first_byte_timeout"),
            (Some("[limits]\nmax_head_bytes = \"4KiB\""), &[], "limits.max_head_bytes"),
            (Some("[limits]\nmax_concurrent_streams = 0"), &[], "limits.max_concurrent_streams"),
            (Some("[limits]\nreplay_memory = \"lots\""), &[], "limits.replay_memory"),
            (Some("[limits]\nmax_conections = 5"), &[], "limits.max_conections"),
        ];
        for (file, env, key) in cases {
            let err = load_with(*file, env, Flags::default()).expect_err(&format!("{key} should be refused"));
            assert_eq!(err.key, *key, "{err}");
            assert!(!err.to_string().contains("topsecret"), "{err}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn a_value_from_the_environment_names_its_variable_when_it_is_wrong() {
        let err = load_with(None, &[("PINECONE_PROXY_TOKEN_TIMEOUT", "5 parsecs")], Flags::default()).unwrap_err();
        assert_eq!(err.origin, Some(Origin::Env("PINECONE_PROXY_TOKEN_TIMEOUT".into())));
        assert!(err.to_string().starts_with("token.timeout (env PINECONE_PROXY_TOKEN_TIMEOUT): "), "{err}");
    }

    #[test]
    fn missing_credentials_are_refused() {
        let e = load(&Flags::default(), &env(&[("PINECONE_CLIENT_SECRET", "x")])).unwrap_err();
        assert_eq!(e.key, "credentials.client_id");
        let e = load(&Flags::default(), &env(&[("PINECONE_CLIENT_ID", "x")])).unwrap_err();
        assert_eq!(e.key, "credentials.client_secret_file");
        let e = load(&Flags::default(), &env(&[("PINECONE_CLIENT_ID", "x"), ("PINECONE_CLIENT_SECRET", "  \n")]))
            .unwrap_err();
        assert_eq!(e.key, "PINECONE_CLIENT_SECRET");
    }

    #[test]
    fn non_loopback_listen_needs_allow_remote() {
        let flags = Flags { listen: Some("0.0.0.0:8484".into()), allow_remote: true, ..Flags::default() };
        assert!(load_with(None, &[], flags).is_ok());
    }

    #[test]
    fn unknown_proxy_env_variables_are_reported_not_fatal() {
        let c = load_with(None, &[("PINECONE_PROXY_PORT", "tcp://10.0.0.1:8484")], Flags::default()).unwrap();
        assert_eq!(c.unknown_env, vec!["PINECONE_PROXY_PORT".to_owned()]);
    }

    #[test]
    fn http_is_allowed_for_loopback_only() {
        for ok in
            ["http://127.0.0.1:1/x", "http://localhost:9/oauth/token", "http://[::1]:80", "https://api.pinecone.io"]
        {
            assert!(parse_url(ok).is_ok(), "{ok}");
        }
        for bad in ["http://api.pinecone.io", "http://10.0.0.1", "ftp://x", "https://u:p@host", "/relative"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_and_sizes_in_the_documented_forms() {
        let file = |key: &str, value: &str| format!("[upstream]\n{key} = \"{value}\"\n");
        for (text, ms) in [("500ms", 500), ("5s", 5000), ("2m", 120_000), ("1h", 3_600_000), ("1m30s", 90_000)] {
            let c = load_with(Some(&file("timeout", text)), &[], Flags::default()).unwrap();
            assert_eq!(c.upstream.timeout, Duration::from_millis(ms), "{text}");
        }
        for (text, bytes) in [("1MiB", 1 << 20), ("64KiB", 65536), ("1000", 1000), ("2MB", 2_000_000)] {
            let c = load_with(Some(&file("replay_limit", text)), &[], Flags::default()).unwrap();
            assert_eq!(c.upstream.replay_limit, bytes, "{text}");
        }
        let c = load_with(Some("[upstream]\nreplay_limit = 4096\n"), &[], Flags::default()).unwrap();
        assert_eq!(c.upstream.replay_limit, 4096, "a plain number of bytes");
        for bad in ["5", "s", "-1s", ""] {
            assert!(load_with(Some(&file("timeout", bad)), &[], Flags::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn describe_lists_every_key_and_redacts_the_secret() {
        let c = load_with(None, &[("PINECONE_PROXY_UPSTREAM_TIMEOUT", "7s")], Flags::default()).unwrap();
        let rows = c.describe();
        let text = format!("{rows:?}");
        assert!(!text.contains("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        let row = |key: &str| rows.iter().find(|(k, _, _)| k == key).cloned().unwrap();
        assert_eq!(row("PINECONE_CLIENT_SECRET").1, "<redacted>");
        assert_eq!(
            row("upstream.timeout"),
            ("upstream.timeout".into(), "7s".into(), "env PINECONE_PROXY_UPSTREAM_TIMEOUT".into())
        );
        assert_eq!(row("token.max_requests_per_minute").2, "default");
        assert_eq!(row("upstream.ca_file").1, "(none)");
        assert_eq!(rows.len(), keys().len() + 1);
    }
}
