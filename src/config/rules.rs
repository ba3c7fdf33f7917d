//! The rules: the [`RawConfig`] and the files it names as a typed, validated [`Config`].
//! Every rule is a pure function of values already read, takes the key it checks, and
//! answers with the one error type, [`ConfigError`]; [`validate`] then names where the
//! offending value came from. Reading files is [`super::files`]'s.

use super::files::Files;
use super::raw::{RawConfig, RawCredentials, RawLimits, RawToken, SECRET_ENV, redact_url};
use super::sources::Env;
use super::{
    Config, ConfigError, CredentialSource, CredentialsConfig, IndexListen, Limits, LogConfig, Origin,
    SharedCacheConfig, ShutdownConfig, TokenConfig, UpstreamConfig,
};
use crate::net::Listen;
use crate::secret::Secret;
use bytesize::ByteSize;
use http::uri::Scheme;
use http::{HeaderValue, Uri};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a rule answers.
type Rule<T> = Result<T, ConfigError>;

fn problem(key: &str, text: impl Into<String>) -> ConfigError {
    ConfigError::new(key, text)
}

/// The typed configuration from the raw one and the files it names.
pub(super) fn validate(
    raw: RawConfig,
    origins: &BTreeMap<String, Origin>,
    env: &Env,
    files: &Files,
) -> Result<Config, ConfigError> {
    // Credentials compare two keys' origins in one message, so they name origins themselves.
    let credentials = credentials(&raw.credentials, env, origins)?;
    // The policy is in force once any of its keys is set, even to an empty list.
    let policy = origins.keys().any(|k| k.starts_with("policy."));
    let api_key_set = origins.keys().find(|k| k.starts_with("api_key.")).cloned();
    let api_key = super::api_key::api_key(&raw.api_key, api_key_set.as_deref()).map_err(|e| e.located(origins))?;
    let config = typed(raw, credentials, policy, files).map_err(|e| e.located(origins))?;
    if let (Some(first), None) = (config.indexes.first(), &api_key) {
        let key = format!("indexes.{}", first.name);
        let problem = "needs a managed API key ([api_key] with api_key.project_id): an index's data plane takes a \
                       project API key, which the proxy supplies";
        return Err(ConfigError::new(key, problem).located(origins));
    }
    Ok(Config { origins: origins.clone(), api_key, ..config })
}

fn typed(raw: RawConfig, credentials: CredentialsConfig, policy: bool, files: &Files) -> Rule<Config> {
    let policy = match policy {
        false => None,
        true => Some(
            crate::policy::Policy::new(&raw.policy.allow, &raw.policy.deny, &raw.policy.projects)
                .map_err(|(key, p)| problem(key, p))?,
        ),
    };
    Ok(Config {
        listen: listen("listen", &raw.listen, raw.allow_remote)?,
        listen_mode: mode("listen_mode", &raw.listen_mode)?,
        allow_remote: raw.allow_remote,
        ops_listen: raw.ops_listen.parse().map_err(|p: String| problem("ops_listen", p))?,
        credentials,
        token: token(&raw.token, files)?,
        upstream: upstream(&raw, files)?,
        shutdown: ShutdownConfig { delay: raw.shutdown.delay, grace: raw.shutdown.grace },
        log: LogConfig { format: raw.log.format, level: log_filter("log.level", &raw.log.level)? },
        limits: limits(&raw.limits)?,
        policy,
        api_key: None,
        indexes: indexes(&raw)?,
        file: None,
        origins: BTreeMap::new(),
        unknown_env: Vec::new(),
        raw,
    })
}

fn token(t: &RawToken, files: &Files) -> Rule<TokenConfig> {
    refresh(t.refresh_at, t.refresh_jitter)?;
    Ok(TokenConfig {
        url: url("token.url", &t.url)?,
        audience: non_empty("token.audience", &t.audience)?,
        request_format: t.request_format,
        refresh_at: t.refresh_at,
        refresh_jitter: t.refresh_jitter,
        timeout: positive("token.timeout", t.timeout)?,
        max_requests_per_minute: in_range("token.max_requests_per_minute", t.max_requests_per_minute, 1, 6000)?,
        shared_cache: shared_cache(t, files)?,
    })
}

fn upstream(raw: &RawConfig, files: &Files) -> Rule<UpstreamConfig> {
    let u = &raw.upstream;
    let url = url("upstream.url", &u.url)?;
    if url.query().is_some() {
        return Err(problem("upstream.url", "must not have a query"));
    }
    Ok(UpstreamConfig {
        scheme: url.scheme().cloned().unwrap_or(Scheme::HTTPS),
        authority: url.authority().cloned().expect("parse_url requires a host"),
        base_path: url.path().trim_end_matches('/').to_owned(),
        url,
        api_version: api_version("upstream.api_version", &u.api_version)?,
        override_api_version: u.override_api_version,
        connect_timeout: positive("upstream.connect_timeout", u.connect_timeout)?,
        timeout: positive("upstream.timeout", u.timeout)?,
        extra_roots: match files.get("upstream.ca_file") {
            None => Vec::new(),
            Some(read) => roots("upstream.ca_file", &read.path, &read.bytes)?,
        },
        replay_limit: replay_limit("upstream.replay_limit", u.replay_limit)?,
        max_connections: in_range("upstream.max_connections", u.max_connections, 1, 10_000)? as usize,
    })
}

fn listen(key: &str, text: &str, allow_remote: bool) -> Rule<Listen> {
    let listen: Listen = text.parse().map_err(|p: String| problem(key, p))?;
    match &listen {
        Listen::Tcp(addr) if !allow_remote && !addr.ip().is_loopback() => Err(problem(
            key,
            format!(
                "{addr} is not a loopback address: whoever reaches it acts with the service account's \
                 rights; set allow_remote = true (or --allow-remote) if you mean it"
            ),
        )),
        _ => Ok(listen),
    }
}

/// `[indexes]`: each name a valid index name, each address a listen address under the
/// loopback rule, and no two listeners (nor `listen`, nor `ops_listen`) on one address.
fn indexes(raw: &RawConfig) -> Rule<Vec<IndexListen>> {
    let mut taken: Vec<(String, Listen)> = Vec::new();
    for (key, text) in [("listen", &raw.listen), ("ops_listen", &raw.ops_listen)] {
        if let Ok(l) = text.parse::<Listen>() {
            taken.push((key.to_owned(), l));
        }
    }
    let mut out = Vec::new();
    for (name, text) in &raw.indexes {
        let key = format!("indexes.{name}");
        index_name(name).map_err(|p| problem(&key, p))?;
        let listen = listen(&key, text, raw.allow_remote)?;
        // Port 0 (any free port, in tests) is never the same address twice.
        let any_port = matches!(&listen, Listen::Tcp(a) if a.port() == 0);
        if let Some((other, _)) = taken.iter().find(|(_, l)| *l == listen && !any_port) {
            return Err(problem(&key, format!("{listen} is {other}'s address too: each listener needs its own")));
        }
        taken.push((key, listen.clone()));
        out.push(IndexListen { name: name.clone(), listen });
    }
    Ok(out)
}

/// The control plane's rule for index names: 1 to 45 characters of `a-z 0-9 -`, starting
/// and ending with a letter or digit.
fn index_name(name: &str) -> Result<(), String> {
    let allowed = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if (1..=45).contains(&name.len()) && allowed && !name.starts_with('-') && !name.ends_with('-') {
        return Ok(());
    }
    Err(format!(
        "{name:?} is not an index name: 1 to 45 characters of a-z, 0-9 and -, starting and ending with a letter or digit"
    ))
}

fn mode(key: &str, text: &str) -> Rule<u32> {
    u32::from_str_radix(text.trim(), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| problem(key, format!("must be octal permissions such as \"0600\", at most 0777, got {text:?}")))
}

fn non_empty(key: &str, text: &str) -> Rule<String> {
    if text.trim().is_empty() { Err(problem(key, "must not be empty")) } else { Ok(text.to_owned()) }
}

fn positive(key: &str, d: Duration) -> Rule<Duration> {
    if d.is_zero() { Err(problem(key, "must be greater than 0")) } else { Ok(d) }
}

fn in_range(key: &str, n: u32, min: u32, max: u32) -> Rule<u32> {
    if (min..=max).contains(&n) {
        Ok(n)
    } else {
        Err(problem(key, format!("must be between {min} and {max}, got {n}")))
    }
}

fn api_version(key: &str, text: &str) -> Rule<HeaderValue> {
    HeaderValue::from_str(text.trim())
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| problem(key, format!("must be a version such as 2025-10, got {text:?}")))
}

fn replay_limit(key: &str, size: ByteSize) -> Rule<u64> {
    if size.as_u64() > 64 << 20 {
        return Err(problem(key, "must be at most 64MiB: each replayable request holds this much memory"));
    }
    Ok(size.as_u64())
}

/// hyper's smallest read buffer: a head limit below it could not be kept.
const MIN_HEAD_BYTES: u64 = 8 << 10;

pub(super) fn limits(raw: &RawLimits) -> Rule<Limits> {
    let head = raw.max_head_bytes.as_u64();
    if !(MIN_HEAD_BYTES..=16 << 20).contains(&head) {
        return Err(problem(
            "limits.max_head_bytes",
            format!("must be between 8KiB and 16MiB, got {}", raw.max_head_bytes),
        ));
    }
    Ok(Limits {
        max_connections: in_range("limits.max_connections", raw.max_connections, 1, 1_000_000)? as usize,
        first_byte_timeout: positive("limits.first_byte_timeout", raw.first_byte_timeout)?,
        header_read_timeout: positive("limits.header_read_timeout", raw.header_read_timeout)?,
        idle_timeout: positive("limits.idle_timeout", raw.idle_timeout)?,
        body_read_timeout: positive("limits.body_read_timeout", raw.body_read_timeout)?,
        max_head_bytes: head as usize,
        head_memory: usize::try_from(raw.head_memory.as_u64()).unwrap_or(usize::MAX),
        max_concurrent_streams: in_range("limits.max_concurrent_streams", raw.max_concurrent_streams, 1, 1000)?,
        replay_memory: raw.replay_memory.as_u64(),
    })
}

fn log_filter(key: &str, level: &str) -> Rule<String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| level.to_owned())
        .map_err(|e| problem(key, format!("is not a valid filter: {e}")))
}

fn refresh(at: f64, jitter: f64) -> Rule<()> {
    if !(at > 0.0 && at < 1.0) {
        return Err(problem(
            "token.refresh_at",
            format!("must be greater than 0 and less than 1 (a fraction of the lifetime), got {at}"),
        ));
    }
    if !(0.0..0.5).contains(&jitter) {
        return Err(problem("token.refresh_jitter", format!("must be at least 0 and less than 0.5, got {jitter}")));
    }
    // A token stops being usable at the latest at 90 % of its lifetime (see
    // token::schedule::usable_margin), so the refresh must be due before then.
    if at - jitter <= 0.0 || at + jitter > 0.9 {
        return Err(problem(
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
            return Err(ConfigError::at(
                "credentials.client_id_file",
                &origin("credentials.client_id_file"),
                format!(
                    "set only one of credentials.client_id ({}) and credentials.client_id_file",
                    origin("credentials.client_id")
                ),
            ));
        }
        (Some(v), None) => CredentialSource::Value(Secret::new(
            non_empty("credentials.client_id", v.trim()).map_err(|e| e.located(origins))?,
        )),
        (None, Some(p)) => {
            CredentialSource::File(file_path("credentials.client_id_file", p).map_err(|e| e.located(origins))?)
        }
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
            return Err(ConfigError::at(
                "credentials.client_secret_file",
                &secret_origin,
                format!("set only one of {SECRET_ENV} and credentials.client_secret_file"),
            ));
        }
        (Some(v), None) => CredentialSource::Value(Secret::new(
            non_empty(SECRET_ENV, v.trim())
                .map_err(|e| ConfigError::at(SECRET_ENV, &Origin::Env(SECRET_ENV.into()), e.problem))?,
        )),
        (None, Some(p)) => {
            CredentialSource::File(file_path("credentials.client_secret_file", p).map_err(|e| e.located(origins))?)
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

fn file_path(key: &str, p: &Path) -> Rule<PathBuf> {
    if p.as_os_str().to_string_lossy().trim().is_empty() {
        Err(problem(key, "must not be empty"))
    } else {
        Ok(p.to_owned())
    }
}

fn url(key: &str, text: &str) -> Rule<Uri> {
    parse_url(text).map_err(|p| problem(key, p))
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
fn shared_cache(t: &RawToken, files: &Files) -> Rule<Option<SharedCacheConfig>> {
    let Some((key, url)) = shared_cache_url(t, files)? else { return Ok(None) };
    let text = url.expose();
    if text.is_empty() {
        return Err(problem(key, "is empty"));
    }
    let tls = text.starts_with("rediss://");
    if !tls && !text.starts_with("redis://") {
        return Err(problem(key, "must be a redis:// or rediss:// URL (redis://[user:password@]host[:port][/db])"));
    }
    let info = redis::IntoConnectionInfo::into_connection_info(text).map_err(|e| {
        problem(
            key,
            format!(
                "is not a Redis URL the client can use ({:?}): write redis://[user:password@]host[:port][/db]",
                e.kind()
            ),
        )
    })?;
    if let redis::ConnectionAddr::TcpTls { insecure: true, .. } = info.addr() {
        return Err(problem(
            key,
            "turns off the certificate check of rediss:// (#insecure): whoever answers in Redis's place would \
             get the password and choose the fleet's lock; trust a private CA with token.shared_cache_ca_file instead",
        ));
    }
    let roots = match files.get("token.shared_cache_ca_file") {
        None => Vec::new(),
        Some(_) if !tls => return Err(problem("token.shared_cache_ca_file", "applies to rediss:// URLs only")),
        Some(read) => roots("token.shared_cache_ca_file", &read.path, &read.bytes)?,
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

/// The shared cache's URL and the key it came from, if one is set.
fn shared_cache_url(t: &RawToken, files: &Files) -> Rule<Option<(&'static str, Secret)>> {
    match (&t.shared_cache, files.get("token.shared_cache_file")) {
        (Some(_), Some(_)) => {
            Err(problem("token.shared_cache_file", "set only one of token.shared_cache and token.shared_cache_file"))
        }
        (Some(url), None) => Ok(Some(("token.shared_cache", url.0.clone()))),
        (None, Some(read)) => {
            let bytes = read.bytes.as_ref().map_err(|p| problem("token.shared_cache_file", p.clone()))?;
            // Not valid UTF-8 is said without quoting: the file holds a password.
            let text = std::str::from_utf8(bytes).map_err(|_| {
                problem("token.shared_cache_file", format!("{} is not UTF-8 text", read.path.display()))
            })?;
            Ok(Some(("token.shared_cache_file", Secret::new(text.trim()))))
        }
        (None, None) if t.shared_cache_ca_file.is_some() => {
            Err(problem("token.shared_cache_ca_file", "is set, but token.shared_cache is not"))
        }
        (None, None) => Ok(None),
    }
}

/// The PEM certificates of a certificate-authority file.
fn roots(key: &str, path: &Path, bytes: &Result<Vec<u8>, String>) -> Rule<Vec<CertificateDer<'static>>> {
    let pem = bytes.as_ref().map_err(|p| problem(key, p.clone()))?;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| problem(key, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(problem(key, format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}
