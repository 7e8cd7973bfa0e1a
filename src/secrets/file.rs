//! The embedded default secret store: a local TOML file of `name = "value"` pairs,
//! re-read when its modification time changes. Keep it out of version control and
//! readable only by Intercom.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{Secret, SecretError, SecretRef, SecretStore, Versioned};
use crate::settings::{Settings, SettingsError};

/// The values as of a modification time.
type Snapshot = (Option<SystemTime>, Arc<HashMap<String, Secret>>);

/// Secrets from one local file.
pub struct FileStore {
    path: PathBuf,
    loaded: Mutex<Snapshot>,
}

impl FileStore {
    /// Reads the file; a missing or malformed file is an error naming the path.
    pub fn open(path: &Path) -> Result<Self, SecretError> {
        let store = Self {
            path: path.to_path_buf(),
            loaded: Mutex::new((None, Arc::new(HashMap::new()))),
        };
        store.values()?;
        Ok(store)
    }

    /// The value of `name` now, for start-up checks.
    pub fn lookup(&self, name: &str) -> Result<Option<Secret>, SecretError> {
        Ok(self.values()?.get(name).cloned())
    }

    fn error(&self, reason: impl Into<String>) -> SecretError {
        SecretError::Store {
            store: self.path.display().to_string(),
            reason: reason.into(),
        }
    }

    /// The values, re-read if the file changed since the last read.
    fn values(&self) -> Result<Arc<HashMap<String, Secret>>, SecretError> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .map_err(|e| self.error(e.to_string()))?;
        let mut loaded = self.loaded.lock().expect("file store lock");
        if loaded.0 == Some(modified) {
            return Ok(loaded.1.clone());
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| self.error(e.to_string()))?;
        // The parser's message may quote the file, and so a value: keep it out.
        let table: toml::Table = text
            .parse()
            .map_err(|_| self.error("is not a valid TOML table of name = \"value\""))?;
        let mut values = HashMap::new();
        for (name, value) in table {
            match value {
                toml::Value::String(v) => {
                    values.insert(name, Secret::new(v));
                }
                _ => return Err(self.error(format!("{name} is not a string"))),
            }
        }
        *loaded = (Some(modified), Arc::new(values));
        Ok(loaded.1.clone())
    }
}

impl SecretStore for FileStore {
    async fn read(&self, reference: &SecretRef) -> Result<Versioned, SecretError> {
        let SecretRef::File(name) = reference else {
            return Err(SecretError::BadReference(crate::secret::BadReference));
        };
        let value = self
            .values()?
            .get(name)
            .cloned()
            .ok_or_else(|| SecretError::NotFound {
                reference: reference.to_string(),
                store: self.path.display().to_string(),
            })?;
        Ok(Versioned {
            version: value.fingerprint(),
            value,
        })
    }

    async fn version(&self, _reference: &SecretRef) -> Result<Option<String>, SecretError> {
        Ok(None)
    }
}

/// Checks what can be checked without the network, for `check-config` and before
/// start: every `file:` reference names an entry of the secrets file. `vault:`
/// references are resolved at start.
pub fn check_references(settings: &Settings) -> Result<(), SettingsError> {
    let refs = settings.secret_references();
    let file_refs: Vec<_> = refs
        .iter()
        .filter_map(|(k, r)| match r {
            SecretRef::File(name) => Some((k, r, name)),
            _ => None,
        })
        .collect();
    if file_refs.is_empty() {
        return Ok(());
    }
    let Some(path) = &settings.secrets.file else {
        return Err(SettingsError::new(
            file_refs[0].0.clone(),
            format!(
                "secret {:?}: [secrets] file is not set",
                file_refs[0].1.to_string()
            ),
        ));
    };
    let store =
        FileStore::open(path).map_err(|e| SettingsError::new("secrets.file", e.to_string()))?;
    for (key, reference, name) in file_refs {
        match store.lookup(name) {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(SettingsError::new(
                    key.clone(),
                    format!(
                        "secret {:?} not found in {}",
                        reference.to_string(),
                        path.display()
                    ),
                ))
            }
            Err(e) => return Err(SettingsError::new("secrets.file", e.to_string())),
        }
    }
    Ok(())
}
