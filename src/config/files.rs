//! The only file reads of the configuration: the file itself, and the files its keys name
//! (the shared cache's URL, the certificate authorities). Each is read once, before the
//! rules run, so that [`super::rules`] stays a pure function of what was read. The
//! credential files are not here: [`crate::credentials`] reads them, and reads them again
//! when they change.

use super::ConfigError;
use super::raw::RawConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The configuration file's text.
pub(super) fn read_config(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("--config", format!("cannot read {}: {e}", path.display())))
}

/// One file a key names, and what reading it gave.
#[derive(Debug)]
pub(super) struct Read {
    pub(super) path: PathBuf,
    /// The bytes, or why they could not be read (said by the rule that needs them, so that
    /// a file the configuration would refuse anyway is not the first complaint).
    pub(super) bytes: Result<Vec<u8>, String>,
}

/// The files the configuration's keys name, by key.
#[derive(Debug, Default)]
pub(super) struct Files(BTreeMap<&'static str, Read>);

impl Files {
    /// Reads each file that a key of `raw` names.
    pub(super) fn read(raw: &RawConfig) -> Self {
        let named = [
            ("upstream.ca_file", &raw.upstream.ca_file),
            ("token.shared_cache_file", &raw.token.shared_cache_file),
            ("token.shared_cache_ca_file", &raw.token.shared_cache_ca_file),
        ];
        let mut files = BTreeMap::new();
        for (key, path) in named {
            if let Some(path) = path {
                let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()));
                files.insert(key, Read { path: path.clone(), bytes });
            }
        }
        Self(files)
    }

    /// What reading the file of `key` gave, if that key names one.
    pub(super) fn get(&self, key: &str) -> Option<&Read> {
        self.0.get(key)
    }
}
