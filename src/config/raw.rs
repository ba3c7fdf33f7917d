//! The configuration as written: one serde struct per section, each key defined once as a
//! field with its default in the struct's `Default`. Everything else that names keys is
//! derived from these structs: the list of keys and their kinds ([`keys`]), their
//! environment variables (`PINECONE_PROXY_<SECTION>_<KEY>`, and the Pinecone SDKs' names in
//! [`ENV_ALIASES`]), the unknown-key check and `check-config`'s rows. Turning these values
//! into typed ones is [`super::rules`]'s business.

use crate::secret::Secret;
use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::fmt;
use std::path::PathBuf;
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
    pub api_key: RawApiKey,
    /// `indexes.<name> = "127.0.0.1:8485"`: a local listener for each index's data plane.
    /// A table of names the user chooses, so not a struct: see [`MAP_SECTIONS`].
    pub indexes: std::collections::BTreeMap<String, String>,
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
            api_key: RawApiKey::default(),
            indexes: std::collections::BTreeMap::new(),
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

/// The managed API key (PRODUCT.md, "The control plane and the data plane: a managed API
/// key"). Without `project_id` there is none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawApiKey {
    pub project_id: Option<String>,
    pub roles: Vec<String>,
    pub name_prefix: String,
    #[serde(with = "humantime_serde")]
    pub lifetime: Duration,
    pub rotate_at: f64,
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    pub max_creates_per_hour: u32,
    pub delete_on_shutdown: bool,
}

impl Default for RawApiKey {
    fn default() -> Self {
        Self {
            project_id: None,
            // Enough to find an index and use its data; not enough to create or delete one.
            roles: vec!["ControlPlaneViewer".into(), "DataPlaneEditor".into()],
            name_prefix: "pinecone-admin-proxy".into(),
            lifetime: Duration::from_secs(24 * 3600),
            rotate_at: 0.5,
            grace: Duration::from_secs(300),
            max_creates_per_hour: 10,
            delete_on_shutdown: true,
        }
    }
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

/// What a key's value is, from its default: it decides how a value from the environment
/// or a flag (always text) is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Bool,
    Float,
    Integer,
    Text,
    /// A list of names: comma-separated in the environment or a flag.
    List,
}

/// Every key, dotted (`token.timeout`), with its kind: the fields of [`RawConfig`].
pub(super) fn keys() -> Vec<(String, Kind)> {
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
pub(super) fn flatten(value: &Json) -> Vec<(String, &Json)> {
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

/// The sections whose keys are names the user chooses (`indexes.docs`), each a text value:
/// their keys are not in [`keys`], and the environment sets them all at once, in one
/// variable of `name=value` pairs ([`map_env_name`]).
pub const MAP_SECTIONS: &[&str] = &["indexes"];

/// The variable that sets a map section: `PINECONE_PROXY_INDEXES`.
pub fn map_env_name(section: &str) -> String {
    format!("PINECONE_PROXY_{}", section.to_ascii_uppercase())
}

/// The sections (tables) of the file.
pub(super) fn sections() -> Vec<String> {
    let mut s: Vec<String> = keys().into_iter().filter_map(|(k, _)| Some(k.split_once('.')?.0.to_owned())).collect();
    s.dedup();
    s.extend(MAP_SECTIONS.iter().map(|m| (*m).to_owned()));
    s
}

/// `PINECONE_PROXY_<SECTION>_<KEY>` for a dotted key.
pub fn env_name(key: &str) -> String {
    format!("PINECONE_PROXY_{}", key.replace('.', "_").to_ascii_uppercase())
}

/// The environment variables that set `key`, the one that wins first.
pub(super) fn env_names(key: &str) -> Vec<String> {
    let aliases = ENV_ALIASES.iter().filter(|(k, _)| *k == key).map(|(_, name)| (*name).to_owned());
    std::iter::once(env_name(key)).chain(aliases).collect()
}
