//! Where the client id and secret come from, and noticing that they changed.
//!
//! A credential is a value (the environment) or a file. Files are re-read on SIGHUP
//! ([`Credentials::reload`]) and polled every second ([`Credentials::watch`]): reading two
//! small files a second costs nothing, and unlike inotify it sees every way a file can be
//! replaced, including Kubernetes' atomic swap of the `..data` symlink in a secret volume.
//! A value is trimmed of surrounding whitespace; an empty or unreadable file is reported
//! and ignored, so the last good credentials stay in use. Whether new credentials work is
//! for [`crate::token`] to find out: it watches [`Credentials::subscribe`].

use crate::config::{CredentialSource, CredentialsConfig};
use crate::secret::Secret;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The credentials in force, with a generation that counts changes.
#[derive(Debug, Clone)]
pub struct CredentialSet {
    pub client_id: Secret,
    pub client_secret: Secret,
    /// 1 for the credentials read at start, +1 for each change.
    pub generation: u64,
}

/// Why a credential could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read {what} from {path}: {reason}")]
    Unreadable { what: &'static str, path: PathBuf, reason: String },
    #[error("{what} in {path} is empty")]
    Empty { what: &'static str, path: PathBuf },
}

impl CredentialError {
    /// The configuration key the error is about, for exit-64 messages.
    pub fn key(&self) -> &'static str {
        let what = match self {
            CredentialError::Unreadable { what, .. } | CredentialError::Empty { what, .. } => *what,
        };
        if what == "client id" { "credentials.client_id_file" } else { "credentials.client_secret_file" }
    }
}

/// What a reload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Changed { generation: u64 },
}

/// The credential holder, shared by the token engine, the reload paths and `/status`.
#[derive(Debug, Clone)]
pub struct Credentials {
    config: Arc<CredentialsConfig>,
    tx: Arc<watch::Sender<Arc<CredentialSet>>>,
    /// Why the files could not be used the last time they were read, and since when; `None`
    /// once they read well again.
    last_error: Arc<parking_lot::Mutex<Option<(CredentialError, std::time::SystemTime)>>>,
}

impl Credentials {
    /// Reads the credentials once; an unreadable or empty file is an error here, at start.
    pub fn load(config: &CredentialsConfig) -> Result<Self, CredentialError> {
        let (client_id, client_secret) = read_pair(config)?;
        let set = CredentialSet { client_id, client_secret, generation: 1 };
        let (tx, _) = watch::channel(Arc::new(set));
        Ok(Self { config: Arc::new(config.clone()), tx: Arc::new(tx), last_error: Default::default() })
    }

    /// The credentials in force now.
    pub fn current(&self) -> Arc<CredentialSet> {
        self.tx.borrow().clone()
    }

    /// A receiver that is told of every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CredentialSet>> {
        self.tx.subscribe()
    }

    /// Whether anything is read from a file (and so worth watching).
    pub fn has_files(&self) -> bool {
        matches!(self.config.client_id, CredentialSource::File(_))
            || matches!(self.config.client_secret, CredentialSource::File(_))
    }

    /// Where the credentials come from, for `/status` and logs: paths and variable names,
    /// never values.
    pub fn describe(&self) -> String {
        let d = |s: &CredentialSource, env: &str| match s {
            CredentialSource::Value(_) => format!("env {env}"),
            CredentialSource::File(p) => format!("file {}", p.display()),
        };
        format!(
            "client id: {}; client secret: {}",
            match &self.config.client_id {
                CredentialSource::Value(_) => "set directly (config or env)".to_owned(),
                s => d(s, ""),
            },
            d(&self.config.client_secret, crate::config::SECRET_ENV)
        )
    }

    /// Why the credential files could not be used when last read (the current credentials
    /// stay in use meanwhile), and since when: for `/status`. Never a value.
    pub fn last_error(&self) -> Option<(CredentialError, std::time::SystemTime)> {
        self.last_error.lock().clone()
    }

    /// Re-reads the files now (SIGHUP). New values become current at once.
    pub fn reload(&self) -> Result<Reload, CredentialError> {
        let (id, secret) = self.read()?;
        Ok(self.apply(id, secret))
    }

    /// Reads the files, and notes how it went for [`Credentials::last_error`].
    fn read(&self) -> Result<(Secret, Secret), CredentialError> {
        let result = read_pair(&self.config);
        let mut last = self.last_error.lock();
        match &result {
            Ok(_) => *last = None,
            Err(e) if last.as_ref().is_some_and(|(was, _)| was == e) => {}
            Err(e) => *last = Some((e.clone(), std::time::SystemTime::now())),
        }
        result
    }

    fn apply(&self, client_id: Secret, client_secret: Secret) -> Reload {
        let mut result = Reload::Unchanged;
        self.tx.send_if_modified(|cur| {
            if cur.client_id == client_id && cur.client_secret == client_secret {
                return false;
            }
            let generation = cur.generation + 1;
            *cur = Arc::new(CredentialSet { client_id, client_secret, generation });
            result = Reload::Changed { generation };
            true
        });
        if let Reload::Changed { generation } = result {
            tracing::info!(generation, "credentials changed; fetching a token with them");
        }
        result
    }

    /// Polls the credential files every `interval` until `shutdown` resolves. A new value
    /// is taken once two polls in a row read it, so a file caught half-written is not.
    pub async fn watch(self, interval: Duration, shutdown: impl Future<Output = ()>) {
        if !self.has_files() {
            return;
        }
        tokio::pin!(shutdown);
        let mut candidate: Option<(Secret, Secret)> = None;
        let mut last_error: Option<CredentialError> = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = &mut shutdown => return,
            }
            match self.read() {
                Err(e) => {
                    if last_error.as_ref() != Some(&e) {
                        tracing::warn!(error = %e, "credential file unusable; keeping the current credentials");
                    }
                    last_error = Some(e);
                    candidate = None;
                }
                Ok(pair) => {
                    last_error = None;
                    let cur = self.current();
                    if cur.client_id == pair.0 && cur.client_secret == pair.1 {
                        candidate = None;
                    } else if candidate.as_ref() == Some(&pair) {
                        candidate = None;
                        self.apply(pair.0, pair.1);
                    } else {
                        candidate = Some(pair);
                    }
                }
            }
        }
    }
}

fn read_pair(config: &CredentialsConfig) -> Result<(Secret, Secret), CredentialError> {
    Ok((read(&config.client_id, "client id")?, read(&config.client_secret, "client secret")?))
}

fn read(source: &CredentialSource, what: &'static str) -> Result<Secret, CredentialError> {
    match source {
        CredentialSource::Value(v) => Ok(v.clone()),
        CredentialSource::File(path) => read_file(path, what),
    }
}

/// Reads a credential file, trimming surrounding whitespace (the trailing newline that
/// `echo` and editors leave). The error never includes the file's content.
pub fn read_file(path: &Path, what: &'static str) -> Result<Secret, CredentialError> {
    let bytes = std::fs::read(path).map_err(|e| CredentialError::Unreadable {
        what,
        path: path.to_owned(),
        reason: e.kind().to_string(),
    })?;
    let text = String::from_utf8(bytes).map_err(|_| CredentialError::Unreadable {
        what,
        path: path.to_owned(),
        reason: "not UTF-8 text".into(),
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(CredentialError::Empty { what, path: path.to_owned() });
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(id: &str, secret: &str) -> (tempfile::TempDir, CredentialsConfig) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("id"), id).unwrap();
        std::fs::write(dir.path().join("secret"), secret).unwrap();
        let cfg = CredentialsConfig {
            client_id: CredentialSource::File(dir.path().join("id")),
            client_secret: CredentialSource::File(dir.path().join("secret")),
        };
        (dir, cfg)
    }

    #[test]
    fn values_are_trimmed_and_empty_files_refused() {
        let (dir, cfg) = files("  my-id\n", "sec\n");
        let c = Credentials::load(&cfg).unwrap();
        assert_eq!(c.current().client_id.expose(), "my-id");
        assert_eq!(c.current().client_secret.expose(), "sec");
        std::fs::write(dir.path().join("secret"), "\n  \n").unwrap();
        let err = Credentials::load(&cfg).unwrap_err();
        assert_eq!(err.key(), "credentials.client_secret_file");
        assert!(matches!(err, CredentialError::Empty { .. }));
    }

    #[test]
    fn reload_bumps_the_generation_only_on_change() {
        let (dir, cfg) = files("id", "one");
        let c = Credentials::load(&cfg).unwrap();
        assert_eq!(c.reload().unwrap(), Reload::Unchanged);
        std::fs::write(dir.path().join("secret"), "two\n").unwrap();
        assert_eq!(c.reload().unwrap(), Reload::Changed { generation: 2 });
        assert_eq!(c.current().client_secret.expose(), "two");
        // An empty file is an error and the current credentials stay.
        std::fs::write(dir.path().join("secret"), "").unwrap();
        assert!(c.reload().is_err());
        assert_eq!(c.current().client_secret.expose(), "two");
    }

    #[test]
    fn errors_never_carry_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bin");
        std::fs::write(&p, [0xff, 0xfe, b's']).unwrap();
        let e = read_file(&p, "client secret").unwrap_err();
        assert!(e.to_string().contains("not UTF-8"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_watcher_takes_a_value_read_twice_and_never_an_empty_file() {
        let (dir, cfg) = files("id", "one");
        let c = Credentials::load(&cfg).unwrap();
        let stop = crate::serve::Trigger::default();
        let task = tokio::spawn(c.clone().watch(Duration::from_secs(1), stop.wait()));
        let tick = || tokio::time::sleep(Duration::from_millis(1000));
        // Act half-way between polls (at 0.5 s, 1.5 s, ...), so the order is never a tie.
        tokio::time::sleep(Duration::from_millis(500)).await;

        // An empty file (a writer caught between truncate and write) is never taken.
        std::fs::write(dir.path().join("secret"), "").unwrap();
        for _ in 0..3 {
            tick().await;
        }
        assert_eq!(c.current().generation, 1);
        assert_eq!(c.current().client_secret.expose(), "one");

        // A new value is taken on the second poll that reads it.
        std::fs::write(dir.path().join("secret"), "two").unwrap();
        tick().await;
        assert_eq!(c.current().generation, 1, "read once: not yet");
        tick().await;
        assert_eq!(c.current().generation, 2);
        assert_eq!(c.current().client_secret.expose(), "two");

        // A value seen once and then replaced (half-written) is not taken.
        std::fs::write(dir.path().join("secret"), "thr").unwrap();
        tick().await;
        std::fs::write(dir.path().join("secret"), "three").unwrap();
        tick().await;
        assert_eq!(c.current().client_secret.expose(), "two");
        tick().await;
        assert_eq!(c.current().client_secret.expose(), "three");
        assert_eq!(c.current().generation, 3);
        stop.fire();
        task.await.unwrap();
    }
}
