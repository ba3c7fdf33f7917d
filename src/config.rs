//! Configuration: built-in defaults, the TOML file, environment variables and flags,
//! merged in that order of precedence and turned into a typed, validated [`Config`] before
//! any socket is bound.
//!
//! Every problem becomes a [`ConfigError`] that names the key, where its value came from
//! and what is wrong, in one line; `main` prints it and exits 64. Values that could be
//! secrets are never echoed. Reading the credential files themselves is left to
//! [`crate::credentials`].

use crate::secret::Secret;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The crate version, sent as `User-Agent` and shown in `/status` and `build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The environment variable that names the configuration file.
pub const CONFIG_ENV: &str = "PINECONE_PROXY_CONFIG";
/// The only place the client secret itself may come from.
pub const SECRET_ENV: &str = "PINECONE_CLIENT_SECRET";

/// One configuration key: its dotted name and the environment variables that set it, the
/// `PINECONE_PROXY_…` name first (it wins over the aliases the Pinecone SDKs read).
struct KeyDef {
    key: &'static str,
    aliases: &'static [&'static str],
}

const KEYS: &[KeyDef] = &[
    KeyDef { key: "listen", aliases: &[] },
    KeyDef { key: "listen_mode", aliases: &[] },
    KeyDef { key: "allow_remote", aliases: &[] },
    KeyDef { key: "ops_listen", aliases: &[] },
    KeyDef { key: "credentials.client_id", aliases: &["PINECONE_CLIENT_ID"] },
    KeyDef { key: "credentials.client_id_file", aliases: &["PINECONE_CLIENT_ID_FILE"] },
    KeyDef { key: "credentials.client_secret_file", aliases: &["PINECONE_CLIENT_SECRET_FILE"] },
    KeyDef { key: "token.url", aliases: &[] },
    KeyDef { key: "token.audience", aliases: &[] },
    KeyDef { key: "token.request_format", aliases: &[] },
    KeyDef { key: "token.refresh_at", aliases: &[] },
    KeyDef { key: "token.refresh_jitter", aliases: &[] },
    KeyDef { key: "token.timeout", aliases: &[] },
    KeyDef { key: "token.max_requests_per_minute", aliases: &[] },
    KeyDef { key: "upstream.url", aliases: &[] },
    KeyDef { key: "upstream.api_version", aliases: &["PINECONE_API_VERSION"] },
    KeyDef { key: "upstream.override_api_version", aliases: &[] },
    KeyDef { key: "upstream.connect_timeout", aliases: &[] },
    KeyDef { key: "upstream.timeout", aliases: &[] },
    KeyDef { key: "upstream.ca_file", aliases: &[] },
    KeyDef { key: "upstream.replay_limit", aliases: &[] },
    KeyDef { key: "shutdown.delay", aliases: &[] },
    KeyDef { key: "shutdown.grace", aliases: &[] },
    KeyDef { key: "log.format", aliases: &[] },
    KeyDef { key: "log.level", aliases: &["RUST_LOG"] },
];

/// The sections of the file; every other table is an unknown key.
const SECTIONS: &[&str] = &["credentials", "token", "upstream", "shutdown", "log"];

/// `PINECONE_PROXY_<SECTION>_<KEY>` for a dotted key.
pub fn env_name(key: &str) -> String {
    format!("PINECONE_PROXY_{}", key.replace('.', "_").to_ascii_uppercase())
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
    fn values(&self) -> Vec<(&'static str, &'static str, String)> {
        let mut v = Vec::new();
        let mut push = |key, flag, value: &Option<String>| {
            if let Some(value) = value {
                v.push((key, flag, value.clone()));
            }
        };
        push("listen", "--listen", &self.listen);
        push("ops_listen", "--ops-listen", &self.ops_listen);
        push("token.url", "--token-url", &self.token_url);
        push("upstream.url", "--upstream", &self.upstream);
        push("upstream.api_version", "--api-version", &self.api_version);
        push("log.format", "--log-format", &self.log_format);
        push("log.level", "--log-level", &self.log_level);
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

    /// `PINECONE_PROXY_…` variables that set no key (a typo, or something else's).
    fn unknown_proxy_vars(&self) -> Vec<String> {
        self.0
            .keys()
            .filter(|k| k.starts_with("PINECONE_PROXY_") && k.as_str() != CONFIG_ENV)
            .filter(|k| !KEYS.iter().any(|d| env_name(d.key) == **k))
            .cloned()
            .collect()
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

    fn at(key: &str, origin: &Origin, problem: impl Into<String>) -> Self {
        Self { key: key.to_owned(), origin: Some(origin.clone()), problem: problem.into() }
    }
}

/// Where applications connect, or where the ops endpoints listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFormat {
    Json,
    Form,
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
    pub ca_file: Option<PathBuf>,
    /// The certificates of `ca_file`, parsed at load time.
    pub extra_roots: Vec<CertificateDer<'static>>,
    pub replay_limit: u64,
}

#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    pub delay: Duration,
    pub grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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
    /// Where each key's value came from, for `check-config` and error messages.
    pub origins: BTreeMap<&'static str, Origin>,
    /// `PINECONE_PROXY_…` variables that matched no key: reported as warnings, not errors,
    /// because Kubernetes injects `<SERVICE>_PORT`-style variables for a Service named
    /// `pinecone-proxy`, and a sidecar must not crash-loop on them.
    pub unknown_env: Vec<String>,
}

/// The merged raw values, each with where it came from.
struct Raw {
    values: BTreeMap<&'static str, (toml::Value, Origin)>,
}

impl Raw {
    fn get(&self, key: &'static str) -> Option<(&toml::Value, &Origin)> {
        self.values.get(key).map(|(v, o)| (v, o))
    }

    fn origin(&self, key: &'static str) -> Origin {
        self.values.get(key).map(|(_, o)| o.clone()).unwrap_or(Origin::Default)
    }

    fn string(&self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        match self.get(key) {
            None => Ok(default.to_owned()),
            Some((toml::Value::String(s), _)) => Ok(s.clone()),
            Some((_, o)) => Err(ConfigError::at(key, o, "must be a string")),
        }
    }

    fn opt_string(&self, key: &'static str) -> Result<Option<(String, Origin)>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some((toml::Value::String(s), o)) => Ok(Some((s.clone(), o.clone()))),
            Some((_, o)) => Err(ConfigError::at(key, o, "must be a string")),
        }
    }

    fn bool(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some((toml::Value::Boolean(b), _)) => Ok(*b),
            Some((toml::Value::String(s), o)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(ConfigError::at(key, o, format!("must be true or false, got {s:?}"))),
            },
            Some((_, o)) => Err(ConfigError::at(key, o, "must be true or false")),
        }
    }

    fn float(&self, key: &'static str, default: f64) -> Result<f64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some((toml::Value::Float(f), _)) => Ok(*f),
            Some((toml::Value::Integer(i), _)) => Ok(*i as f64),
            Some((toml::Value::String(s), o)) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .ok_or_else(|| ConfigError::at(key, o, format!("must be a number, got {s:?}"))),
            Some((_, o)) => Err(ConfigError::at(key, o, "must be a number")),
        }
    }

    fn integer(&self, key: &'static str, default: i64) -> Result<i64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some((toml::Value::Integer(i), _)) => Ok(*i),
            Some((toml::Value::String(s), o)) => s
                .trim()
                .parse::<i64>()
                .map_err(|_| ConfigError::at(key, o, format!("must be a whole number, got {s:?}"))),
            Some((_, o)) => Err(ConfigError::at(key, o, "must be a whole number")),
        }
    }

    fn duration(&self, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some((toml::Value::String(s), o)) => parse_duration(s)
                .map_err(|e| ConfigError::at(key, o, format!("{e}, got {s:?} (write e.g. 500ms, 5s, 2m, 1h)"))),
            Some((_, o)) => {
                Err(ConfigError::at(key, o, "must be a duration string such as \"500ms\", \"5s\", \"2m\" or \"1h\""))
            }
        }
    }

    fn size(&self, key: &'static str, default: u64) -> Result<u64, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some((toml::Value::Integer(i), o)) => {
                u64::try_from(*i).map_err(|_| ConfigError::at(key, o, "must not be negative"))
            }
            Some((toml::Value::String(s), o)) => {
                parse_size(s).map_err(|e| ConfigError::at(key, o, format!("{e}, got {s:?} (write e.g. 1MiB, 64KiB)")))
            }
            Some((_, o)) => Err(ConfigError::at(key, o, "must be a size such as \"1MiB\"")),
        }
    }
}

/// Loads the configuration from the file named by the flags or the environment, the
/// environment and the flags, and validates it.
pub fn load(flags: &Flags, env: &Env) -> Result<Config, ConfigError> {
    let mut values: BTreeMap<&'static str, (toml::Value, Origin)> = BTreeMap::new();

    let file = match (&flags.config, env.get(CONFIG_ENV)) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(p)) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => None,
    };
    if let Some(path) = &file {
        read_file(path, &mut values)?;
    }

    for def in KEYS {
        let primary = env_name(def.key);
        let names = std::iter::once(primary.as_str()).chain(def.aliases.iter().copied());
        for name in names {
            if let Some(value) = env.get(name) {
                values.insert(def.key, (toml::Value::String(value.to_owned()), Origin::Env(name.to_owned())));
                break;
            }
        }
    }

    for (key, flag, value) in flags.values() {
        values.insert(key, (toml::Value::String(value), Origin::Flag(flag)));
    }

    let raw = Raw { values };
    let mut config = validate(&raw, env)?;
    config.unknown_env = env.unknown_proxy_vars();
    Ok(config)
}

fn read_file(path: &Path, values: &mut BTreeMap<&'static str, (toml::Value, Origin)>) -> Result<(), ConfigError> {
    let origin = Origin::File(path.to_owned());
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("--config", format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        // The TOML error quotes the offending line, which could hold a secret: keep only
        // the message and the position.
        let pos = e.span().map(|s| line_of(&text, s.start)).map(|l| format!(" at line {l}")).unwrap_or_default();
        ConfigError::new("--config", format!("{} is not valid TOML{pos}: {}", path.display(), e.message()))
    })?;
    for (name, value) in table {
        if SECTIONS.contains(&name.as_str()) {
            let toml::Value::Table(section) = value else {
                return Err(ConfigError::at(&name, &origin, "must be a table ([section])"));
            };
            for (sub, value) in section {
                let dotted = format!("{name}.{sub}");
                insert_file_key(&dotted, value, &origin, values)?;
            }
        } else {
            insert_file_key(&name, value, &origin, values)?;
        }
    }
    Ok(())
}

fn insert_file_key(
    dotted: &str,
    value: toml::Value,
    origin: &Origin,
    values: &mut BTreeMap<&'static str, (toml::Value, Origin)>,
) -> Result<(), ConfigError> {
    if dotted == "credentials.client_secret" || dotted == "client_secret" {
        return Err(ConfigError::at(
            dotted,
            origin,
            format!(
                "the client secret is never read from the configuration file; set the environment \
                 variable {SECRET_ENV}, or credentials.client_secret_file (env PINECONE_CLIENT_SECRET_FILE)"
            ),
        ));
    }
    let Some(def) = KEYS.iter().find(|d| d.key == dotted) else {
        return Err(ConfigError::at(dotted, origin, "unknown key"));
    };
    values.insert(def.key, (value, origin.clone()));
    Ok(())
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn validate(raw: &Raw, env: &Env) -> Result<Config, ConfigError> {
    let allow_remote = raw.bool("allow_remote", false)?;

    let listen = parse_listen_key(raw, "listen", "127.0.0.1:8484")?;
    if let Listen::Tcp(addr) = &listen {
        if !allow_remote && !addr.ip().is_loopback() {
            return Err(ConfigError::at(
                "listen",
                &raw.origin("listen"),
                format!(
                    "{addr} is not a loopback address: whoever reaches it acts with the service \
                     account's rights; set allow_remote = true (or --allow-remote) if you mean it"
                ),
            ));
        }
    }
    let listen_mode = parse_mode(raw)?;
    let ops_listen = parse_listen_key(raw, "ops_listen", "127.0.0.1:9484")?;

    let credentials = credentials(raw, env)?;

    let token_url = parse_url_key(raw, "token.url", "https://login.pinecone.io/oauth/token")?;
    let audience = raw.string("token.audience", "https://api.pinecone.io/")?;
    if audience.trim().is_empty() {
        return Err(ConfigError::at("token.audience", &raw.origin("token.audience"), "must not be empty"));
    }
    let request_format = match raw.string("token.request_format", "json")?.as_str() {
        "json" => RequestFormat::Json,
        "form" => RequestFormat::Form,
        other => {
            return Err(ConfigError::at(
                "token.request_format",
                &raw.origin("token.request_format"),
                format!("must be \"json\" or \"form\", got {other:?}"),
            ));
        }
    };
    let refresh_at = raw.float("token.refresh_at", 0.5)?;
    let refresh_jitter = raw.float("token.refresh_jitter", 0.1)?;
    check_refresh(refresh_at, refresh_jitter, raw)?;
    let token_timeout = positive(raw, "token.timeout", Duration::from_secs(10))?;
    let max_rpm = raw.integer("token.max_requests_per_minute", 6)?;
    if !(1..=6000).contains(&max_rpm) {
        return Err(ConfigError::at(
            "token.max_requests_per_minute",
            &raw.origin("token.max_requests_per_minute"),
            format!("must be between 1 and 6000, got {max_rpm}"),
        ));
    }

    let upstream_url = parse_url_key(raw, "upstream.url", "https://api.pinecone.io")?;
    if upstream_url.query().is_some() {
        return Err(ConfigError::at("upstream.url", &raw.origin("upstream.url"), "must not have a query"));
    }
    let api_version_text = raw.string("upstream.api_version", "2025-10")?;
    let api_version =
        HeaderValue::from_str(api_version_text.trim()).ok().filter(|v| !v.is_empty()).ok_or_else(|| {
            ConfigError::at(
                "upstream.api_version",
                &raw.origin("upstream.api_version"),
                format!("must be a version such as 2025-10, got {api_version_text:?}"),
            )
        })?;
    let ca_file = raw.opt_string("upstream.ca_file")?;
    let extra_roots = match &ca_file {
        None => Vec::new(),
        Some((path, origin)) => {
            read_roots(Path::new(path)).map_err(|problem| ConfigError::at("upstream.ca_file", origin, problem))?
        }
    };
    let replay_limit = raw.size("upstream.replay_limit", 1 << 20)?;
    if replay_limit > 64 << 20 {
        return Err(ConfigError::at(
            "upstream.replay_limit",
            &raw.origin("upstream.replay_limit"),
            "must be at most 64MiB: each replayable request holds this much memory",
        ));
    }
    let upstream = UpstreamConfig {
        scheme: upstream_url.scheme().cloned().unwrap_or(Scheme::HTTPS),
        authority: upstream_url.authority().cloned().expect("validated to have a host"),
        base_path: upstream_url.path().trim_end_matches('/').to_owned(),
        url: upstream_url,
        api_version,
        override_api_version: raw.bool("upstream.override_api_version", false)?,
        connect_timeout: positive(raw, "upstream.connect_timeout", Duration::from_secs(5))?,
        timeout: positive(raw, "upstream.timeout", Duration::from_secs(60))?,
        ca_file: ca_file.map(|(p, _)| PathBuf::from(p)),
        extra_roots,
        replay_limit,
    };

    let shutdown = ShutdownConfig {
        delay: raw.duration("shutdown.delay", Duration::ZERO)?,
        grace: raw.duration("shutdown.grace", Duration::from_secs(25))?,
    };

    let format = match raw.string("log.format", "text")?.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(ConfigError::at(
                "log.format",
                &raw.origin("log.format"),
                format!("must be \"text\" or \"json\", got {other:?}"),
            ));
        }
    };
    let level = raw.string("log.level", "info")?;
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
        return Err(ConfigError::at("log.level", &raw.origin("log.level"), format!("is not a valid filter: {e}")));
    }

    Ok(Config {
        listen,
        listen_mode,
        allow_remote,
        ops_listen,
        credentials,
        token: TokenConfig {
            url: token_url,
            audience,
            request_format,
            refresh_at,
            refresh_jitter,
            timeout: token_timeout,
            max_requests_per_minute: max_rpm as u32,
        },
        upstream,
        shutdown,
        log: LogConfig { format, level },
        origins: raw.values.iter().map(|(k, (_, o))| (*k, o.clone())).collect(),
        unknown_env: Vec::new(),
    })
}

fn credentials(raw: &Raw, env: &Env) -> Result<CredentialsConfig, ConfigError> {
    let id = raw.opt_string("credentials.client_id")?;
    let id_file = raw.opt_string("credentials.client_id_file")?;
    let client_id = match (id, id_file) {
        (Some(_), Some((_, o))) => {
            return Err(ConfigError::at(
                "credentials.client_id_file",
                &o,
                format!(
                    "set only one of credentials.client_id ({}) and credentials.client_id_file",
                    raw.origin("credentials.client_id")
                ),
            ));
        }
        (Some((v, o)), None) => {
            let v = v.trim();
            if v.is_empty() {
                return Err(ConfigError::at("credentials.client_id", &o, "must not be empty"));
            }
            CredentialSource::Value(Secret::new(v))
        }
        (None, Some((p, o))) => {
            if p.trim().is_empty() {
                return Err(ConfigError::at("credentials.client_id_file", &o, "must not be empty"));
            }
            CredentialSource::File(PathBuf::from(p))
        }
        (None, None) => {
            return Err(ConfigError::new(
                "credentials.client_id",
                "is required: set PINECONE_CLIENT_ID, PINECONE_CLIENT_ID_FILE, or credentials.client_id in the file",
            ));
        }
    };

    let secret_file = raw.opt_string("credentials.client_secret_file")?;
    let secret_env = env.get(SECRET_ENV);
    let client_secret = match (secret_env, secret_file) {
        (Some(_), Some((_, o))) => {
            return Err(ConfigError::at(
                "credentials.client_secret_file",
                &o,
                format!("set only one of {SECRET_ENV} and credentials.client_secret_file"),
            ));
        }
        (Some(v), None) => {
            let v = v.trim();
            if v.is_empty() {
                return Err(ConfigError::at(SECRET_ENV, &Origin::Env(SECRET_ENV.into()), "must not be empty"));
            }
            CredentialSource::Value(Secret::new(v))
        }
        (None, Some((p, o))) => {
            if p.trim().is_empty() {
                return Err(ConfigError::at("credentials.client_secret_file", &o, "must not be empty"));
            }
            CredentialSource::File(PathBuf::from(p))
        }
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

fn check_refresh(at: f64, jitter: f64, raw: &Raw) -> Result<(), ConfigError> {
    if !(at > 0.0 && at < 1.0) {
        return Err(ConfigError::at(
            "token.refresh_at",
            &raw.origin("token.refresh_at"),
            format!("must be greater than 0 and less than 1 (a fraction of the lifetime), got {at}"),
        ));
    }
    if !(0.0..0.5).contains(&jitter) {
        return Err(ConfigError::at(
            "token.refresh_jitter",
            &raw.origin("token.refresh_jitter"),
            format!("must be at least 0 and less than 0.5, got {jitter}"),
        ));
    }
    // A token stops being usable at the latest at 90 % of its lifetime (see
    // token::schedule::usable_margin), so the refresh must be due before then.
    if at - jitter <= 0.0 || at + jitter > 0.9 {
        return Err(ConfigError::at(
            "token.refresh_jitter",
            &raw.origin("token.refresh_jitter"),
            format!(
                "token.refresh_at ± token.refresh_jitter must stay above 0 and at most 0.9 (a token \
                 is no longer used after 90% of its lifetime), got {at} ± {jitter}"
            ),
        ));
    }
    Ok(())
}

fn positive(raw: &Raw, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    let d = raw.duration(key, default)?;
    if d.is_zero() {
        return Err(ConfigError::at(key, &raw.origin(key), "must be greater than 0"));
    }
    Ok(d)
}

fn parse_mode(raw: &Raw) -> Result<u32, ConfigError> {
    let key = "listen_mode";
    let mode = match raw.get(key) {
        None => 0o600,
        Some((toml::Value::String(s), o)) => u32::from_str_radix(s.trim(), 8)
            .map_err(|_| ConfigError::at(key, o, format!("must be octal permissions such as \"0600\", got {s:?}")))?,
        Some((toml::Value::Integer(i), o)) => u32::try_from(*i)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| ConfigError::at(key, o, "write the permissions as an octal string, e.g. \"0600\""))?,
        Some((_, o)) => return Err(ConfigError::at(key, o, "must be octal permissions such as \"0600\"")),
    };
    if mode > 0o777 {
        return Err(ConfigError::at(key, &raw.origin(key), "must be at most 0777"));
    }
    Ok(mode)
}

fn parse_listen_key(raw: &Raw, key: &'static str, default: &str) -> Result<Listen, ConfigError> {
    let text = raw.string(key, default)?;
    parse_listen(&text).map_err(|problem| ConfigError::at(key, &raw.origin(key), problem))
}

/// `HOST:PORT` with an IP address, `localhost:PORT`, or `unix:/path`.
pub fn parse_listen(text: &str) -> Result<Listen, String> {
    let text = text.trim();
    if let Some(path) = text.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a path, e.g. unix:/run/pinecone/proxy.sock".into());
        }
        return Ok(Listen::Unix(PathBuf::from(path)));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Listen::Tcp(addr));
    }
    if let Some(port) = text.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(Listen::Tcp(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)));
        }
    }
    Err(format!("must be IP:PORT (e.g. 127.0.0.1:8484), localhost:PORT or unix:/path/to.sock, got {text:?}"))
}

fn parse_url_key(raw: &Raw, key: &'static str, default: &str) -> Result<Uri, ConfigError> {
    let text = raw.string(key, default)?;
    parse_url(&text).map_err(|problem| ConfigError::at(key, &raw.origin(key), problem))
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
        "http" if is_loopback_host(authority.host()) => Ok(uri),
        "http" => Err(format!(
            "plain http:// is allowed only for loopback hosts (a bearer token never crosses a \
             network in clear text); use https://{}",
            authority
        )),
        other => Err(format!("must be an https:// URL, got scheme {other:?}")),
    }
}

/// `localhost`, or an IPv4 or IPv6 loopback address (with or without brackets).
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
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

/// `500ms`, `5s`, `2m`, `1h`, combinations such as `1m30s`, or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err("must be a number followed by a unit (ms, s, m, h)".into());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| "number too large".to_owned())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "" => return Err("needs a unit (ms, s, m, h)".into()),
            u => return Err(format!("has an unknown unit {u:?} (use ms, s, m, h)")),
        };
        total = total.checked_add(part).ok_or_else(|| "is too long".to_owned())?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// `1048576`, `512KiB`, `1MiB`, `1MB` (decimal units are powers of 1000).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    if digits == 0 {
        return Err("must be a number of bytes, optionally with a unit (KiB, MiB, GiB)".into());
    }
    let n: u64 = text[..digits].parse().map_err(|_| "number too large".to_owned())?;
    let mult: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => return Err(format!("has an unknown unit {u:?} (use B, KiB, MiB, GiB, KB, MB, GB)")),
    };
    n.checked_mul(mult).ok_or_else(|| "is too large".to_owned())
}

/// Formats a duration the way the configuration writes them: `0s`, `5s`, `1h`, `32m47s821ms`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let parts = [(ms / 3_600_000, "h"), (ms / 60_000 % 60, "m"), (ms / 1000 % 60, "s"), (ms % 1000, "ms")];
    parts.iter().filter(|(n, _)| *n > 0).map(|(n, unit)| format!("{n}{unit}")).collect()
}

fn format_size(n: u64) -> String {
    if n > 0 && n % (1 << 20) == 0 {
        format!("{}MiB", n >> 20)
    } else if n > 0 && n % (1 << 10) == 0 {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}")
    }
}

impl Config {
    /// Every key with its effective value and where it came from, for `check-config`.
    /// The client secret is never shown; file paths are.
    pub fn describe(&self) -> Vec<(&'static str, String, String)> {
        let source = |s: &CredentialSource, file_key: &'static str| match s {
            CredentialSource::Value(_) => None,
            CredentialSource::File(p) => Some((file_key, p.display().to_string())),
        };
        let mut rows: Vec<(&'static str, String)> = vec![
            ("listen", self.listen.to_string()),
            ("listen_mode", format!("{:04o}", self.listen_mode)),
            ("allow_remote", self.allow_remote.to_string()),
            ("ops_listen", self.ops_listen.to_string()),
        ];
        match &self.credentials.client_id {
            CredentialSource::Value(v) => rows.push(("credentials.client_id", v.expose().to_owned())),
            s => rows.extend(source(s, "credentials.client_id_file")),
        }
        match &self.credentials.client_secret {
            CredentialSource::Value(_) => rows.push(("PINECONE_CLIENT_SECRET", "<redacted>".into())),
            s => rows.extend(source(s, "credentials.client_secret_file")),
        }
        let t = &self.token;
        let u = &self.upstream;
        rows.extend([
            ("token.url", t.url.to_string()),
            ("token.audience", t.audience.clone()),
            ("token.request_format", if t.request_format == RequestFormat::Json { "json" } else { "form" }.into()),
            ("token.refresh_at", t.refresh_at.to_string()),
            ("token.refresh_jitter", t.refresh_jitter.to_string()),
            ("token.timeout", format_duration(t.timeout)),
            ("token.max_requests_per_minute", t.max_requests_per_minute.to_string()),
            ("upstream.url", u.url.to_string()),
            ("upstream.api_version", u.api_version.to_str().unwrap_or_default().to_owned()),
            ("upstream.override_api_version", u.override_api_version.to_string()),
            ("upstream.connect_timeout", format_duration(u.connect_timeout)),
            ("upstream.timeout", format_duration(u.timeout)),
            (
                "upstream.ca_file",
                u.ca_file.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(none)".into()),
            ),
            ("upstream.replay_limit", format_size(u.replay_limit)),
            ("shutdown.delay", format_duration(self.shutdown.delay)),
            ("shutdown.grace", format_duration(self.shutdown.grace)),
            ("log.format", if self.log.format == LogFormat::Json { "json" } else { "text" }.into()),
            ("log.level", self.log.level.clone()),
        ]);
        rows.into_iter()
            .map(|(k, v)| {
                let origin = match k {
                    "PINECONE_CLIENT_SECRET" => Origin::Env(SECRET_ENV.into()),
                    _ => self.origins.get(k).cloned().unwrap_or(Origin::Default),
                };
                (k, v, origin.to_string())
            })
            .collect()
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
        for def in KEYS {
            assert!(env_name(def.key).starts_with("PINECONE_PROXY_"));
        }
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
            (Some("[token]\nrequest_format = \"xml\""), &[], "token.request_format"),
            (Some("[upstream]\nurl = \"http://api.pinecone.io\""), &[], "upstream.url"),
            (Some("[upstream]\nurl = \"not a url\""), &[], "upstream.url"),
            (Some("[upstream]\nreplay_limit = \"1 lightyear\""), &[], "upstream.replay_limit"),
            (Some("[upstream]\nca_file = \"/nonexistent/ca.pem\""), &[], "upstream.ca_file"),
            (Some("[log]\nformat = \"yaml\""), &[], "log.format"),
            (Some("listen_mode = 600"), &[], "listen_mode"),
            (Some("listen = \"0.0.0.0:8484\""), &[], "listen"),
            (Some("token = 3"), &[], "token"),
            (None, &[("PINECONE_PROXY_TOKEN_URL", "http://login.example.com/oauth/token")], "token.url"),
            (None, &[("PINECONE_PROXY_LISTEN", "10.0.0.1:80")], "listen"),
            (None, &[("PINECONE_PROXY_OPS_LISTEN", "nonsense")], "ops_listen"),
            (None, &[("PINECONE_PROXY_SHUTDOWN_GRACE", "-1s")], "shutdown.grace"),
            (None, &[("PINECONE_CLIENT_ID_FILE", "/x")], "credentials.client_id_file"),
        ];
        for (file, env, key) in cases {
            let err = load_with(*file, env, Flags::default()).expect_err(&format!("{key} should be refused"));
            assert_eq!(err.key, *key, "{err}");
            assert!(!err.to_string().contains("topsecret"), "{err}");
            assert!(!err.to_string().contains("s3cret"), "{err}");
        }
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
    fn durations_and_sizes() {
        let table = [
            ("500ms", 500),
            ("5s", 5000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("0", 0),
            ("1h1s5ms", 3_601_005),
        ];
        for (text, ms) in table {
            assert_eq!(parse_duration(text).unwrap(), Duration::from_millis(ms), "{text}");
            assert_eq!(parse_duration(&format_duration(Duration::from_millis(ms))).unwrap(), Duration::from_millis(ms));
        }
        for bad in ["", "5", "s", "5 s", "-1s", "1d", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1000").unwrap(), 1000);
        assert_eq!(parse_size("2MB").unwrap(), 2_000_000);
        assert!(parse_size("1 furlong").is_err());
    }

    #[test]
    fn listen_forms() {
        assert_eq!(parse_listen("unix:/tmp/p.sock").unwrap(), Listen::Unix("/tmp/p.sock".into()));
        assert_eq!(parse_listen("localhost:80").unwrap(), Listen::Tcp("127.0.0.1:80".parse().unwrap()));
        assert_eq!(parse_listen("[::1]:80").unwrap(), Listen::Tcp("[::1]:80".parse().unwrap()));
        assert!(parse_listen("example.com:80").is_err());
        assert!(parse_listen("unix:").is_err());
    }

    #[test]
    fn describe_redacts_the_secret() {
        let c = load_with(None, &[], Flags::default()).unwrap();
        let text = format!("{:?}", c.describe());
        assert!(!text.contains("s3cret"));
        assert!(text.contains("<redacted>"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
