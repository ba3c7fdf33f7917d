//! Where values come from: the built-in defaults, under the file, under the environment,
//! under the flags, each layer over the one before. The result is a TOML table of the keys
//! that were set and where each came from ([`Layered`]); serde then reads it as the
//! [`RawConfig`]. Reading the file itself is [`super::files`]'s; checking values is
//! [`super::rules`]'s.

use super::files;
use super::raw::{CONFIG_ENV, Kind, MAP_SECTIONS, RawConfig, SECRET_ENV, env_names, keys, map_env_name, sections};
use super::{ConfigError, Origin};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    pub(super) fn values(&self) -> Vec<(&'static str, &'static str, String)> {
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
    /// ours is among them, reading it reports it as unset, and [`super::load`] complains.
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

    /// Takes one variable out of this snapshot; whether it was there.
    pub(super) fn remove(&mut self, name: &str) -> bool {
        self.0.remove(name).is_some()
    }
}

/// The keys that were set, in layers, and where each came from; keys not here have their
/// default.
#[derive(Debug, Clone)]
pub(super) struct Layered {
    table: toml::Table,
    pub(super) origins: BTreeMap<String, Origin>,
    /// The configuration file read, if any.
    pub(super) file: Option<PathBuf>,
}

impl Layered {
    /// Defaults under the file, the environment and the flags, each over the one before.
    pub(super) fn new(flags: &Flags, env: &Env) -> Result<Self, ConfigError> {
        let keys = keys();
        let file = flags.config.clone().or_else(|| env.get(CONFIG_ENV).filter(|p| !p.is_empty()).map(PathBuf::from));
        let mut layered = Self { table: toml::Table::new(), origins: BTreeMap::new(), file: file.clone() };
        if let Some(path) = &file {
            layered.file(path, &files::read_config(path)?, &keys)?;
        }
        for (key, kind) in &keys {
            let found = env_names(key).into_iter().find_map(|n| Some((n.clone(), env.get(&n)?.to_owned())));
            if let Some((name, text)) = found {
                layered.text(key, *kind, &text, Origin::Env(name))?;
            }
        }
        for section in MAP_SECTIONS {
            layered.map_env(section, env)?;
        }
        for (key, flag, text) in flags.values() {
            let kind = keys.iter().find(|(k, _)| k == key).map_or(Kind::Text, |(_, kind)| *kind);
            layered.text(key, kind, &text, Origin::Flag(flag))?;
        }
        Ok(layered)
    }

    /// One value given as text (the environment or a flag), read as its key's kind.
    fn text(&mut self, key: &str, kind: Kind, text: &str, origin: Origin) -> Result<(), ConfigError> {
        let value = typed(text, kind).map_err(|problem| ConfigError::at(key, &origin, problem))?;
        self.set(key, value);
        self.origins.insert(key.to_owned(), origin);
        Ok(())
    }

    /// A map section from its one variable (`PINECONE_PROXY_INDEXES=docs=127.0.0.1:8485,…`),
    /// over the file's entries of that section.
    fn map_env(&mut self, section: &str, env: &Env) -> Result<(), ConfigError> {
        let name = map_env_name(section);
        let Some(text) = env.get(&name).filter(|t| !t.trim().is_empty()) else { return Ok(()) };
        let origin = Origin::Env(name.clone());
        let mut entries = toml::Table::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').map(|(k, v)| (k.trim(), v.trim())).ok_or_else(|| {
                ConfigError::at(section, &origin, format!("{pair:?} is not name=address (e.g. docs=127.0.0.1:8485)"))
            })?;
            if key.is_empty() || value.is_empty() || entries.contains_key(key) {
                let problem = format!("{pair:?}: each entry is name=address, each name once");
                return Err(ConfigError::at(section, &origin, problem));
            }
            entries.insert(key.to_owned(), toml::Value::String(value.to_owned()));
            self.origins.insert(format!("{section}.{key}"), origin.clone());
        }
        self.origins.retain(|k, o| !(k.starts_with(&format!("{section}.")) && matches!(o, Origin::File(_))));
        self.table.insert(section.to_owned(), toml::Value::Table(entries));
        Ok(())
    }

    /// The file's keys, refusing unknown ones, and the client secret by name.
    fn file(&mut self, path: &Path, text: &str, keys: &[(String, Kind)]) -> Result<(), ConfigError> {
        let origin = Origin::File(path.to_owned());
        let parsed: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            // The TOML error quotes the offending line, which could hold a secret: keep only
            // the message and the position.
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let pos = line.map(|l| format!(" at line {l}")).unwrap_or_default();
            ConfigError::new("--config", format!("{} is not valid TOML{pos}: {}", path.display(), e.message()))
        })?;
        for key in file_keys(&parsed).map_err(|name| ConfigError::at(&name, &origin, "must be a table ([section])"))? {
            known_file_key(&key, keys).map_err(|problem| ConfigError::at(&key, &origin, problem))?;
            self.origins.insert(key, origin.clone());
        }
        self.table = parsed;
        Ok(())
    }

    /// Sets one key, over whatever layer set it before.
    pub(super) fn set(&mut self, key: &str, value: toml::Value) {
        match key.split_once('.') {
            Some((section, name)) => {
                let section = self.table.entry(section).or_insert_with(|| toml::Value::Table(toml::Table::new()));
                if let toml::Value::Table(section) = section {
                    section.insert(name.to_owned(), value);
                }
            }
            None => {
                self.table.insert(key.to_owned(), value);
            }
        }
    }

    /// Takes a key out, whatever layer set it, and says where it had come from.
    pub(super) fn unset(&mut self, key: &str) -> Option<Origin> {
        match key.split_once('.') {
            Some((section, name)) => {
                if let Some(toml::Value::Table(section)) = self.table.get_mut(section) {
                    section.remove(name);
                }
            }
            None => {
                self.table.remove(key);
            }
        }
        self.origins.remove(key)
    }

    /// The layers read as the [`RawConfig`]: a value of the wrong type names its key and
    /// where it came from.
    pub(super) fn raw(&self) -> Result<RawConfig, ConfigError> {
        serde_path_to_error::deserialize(toml::Value::Table(self.table.clone())).map_err(|e| {
            let key = e.path().to_string();
            let origin = self.origins.get(&key).cloned().unwrap_or(Origin::Default);
            let mut problem = e.into_inner().message().to_owned();
            if problem.ends_with("expected a duration") {
                problem.push_str(" (write e.g. 500ms, 5s, 2m, 1h)");
            }
            ConfigError::at(&key, &origin, problem)
        })
    }
}

/// The dotted keys of a parsed file, or the name of a section that is not a table.
fn file_keys(parsed: &toml::Table) -> Result<Vec<String>, String> {
    let sections = sections();
    let mut out = Vec::new();
    for (name, value) in parsed {
        if !sections.contains(name) {
            out.push(name.clone());
            continue;
        }
        let toml::Value::Table(section) = value else { return Err(name.clone()) };
        out.extend(section.keys().map(|sub| format!("{name}.{sub}")));
    }
    Ok(out)
}

/// Whether a key may be written in the file: a known key, and never the client secret.
fn known_file_key(key: &str, keys: &[(String, Kind)]) -> Result<(), String> {
    if key == "client_secret" || key == "credentials.client_secret" {
        return Err(format!(
            "the client secret is never read from the configuration file; set the environment \
             variable {SECRET_ENV}, or credentials.client_secret_file (env PINECONE_CLIENT_SECRET_FILE)"
        ));
    }
    let in_map = key.split_once('.').is_some_and(|(section, _)| MAP_SECTIONS.contains(&section));
    if !in_map && !keys.iter().any(|(k, _)| k == key) {
        // The closest key by edit distance, if it is close: a typo, not another key.
        let closest = keys.iter().map(|(k, _)| (strsim::levenshtein(key, k), k)).min();
        return Err(match closest {
            Some((distance, k)) if distance <= 3.max(key.len() / 4) => format!("unknown key; did you mean {k}?"),
            _ => "unknown key".into(),
        });
    }
    Ok(())
}

/// `PINECONE_PROXY_…` variables that match no key.
pub(super) fn unknown_env(env: &Env) -> Vec<String> {
    let mut known: Vec<String> = keys().iter().flat_map(|(k, _)| env_names(k)).collect();
    known.extend(MAP_SECTIONS.iter().map(|s| map_env_name(s)));
    env.0
        .keys()
        .filter(|k| k.starts_with("PINECONE_PROXY_") && k.as_str() != CONFIG_ENV && !known.contains(k))
        .cloned()
        .collect()
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
