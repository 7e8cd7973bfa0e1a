//! The embedded default secret store: a local TOML file of `name = "value"` pairs,
//! read at start. Keep it out of version control and readable only by Intercom.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{Secret, SecretError, SecretRef, SecretStore};

/// Secrets from one local file.
pub struct FileStore {
    path: PathBuf,
    values: HashMap<String, Secret>,
}

impl FileStore {
    /// Reads the file; a missing or malformed file is an error naming the path.
    pub fn open(path: &Path) -> Result<Self, SecretError> {
        let store = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SecretError::Store {
            store: store.clone(),
            reason: e.to_string(),
        })?;
        let table: toml::Table = text.parse().map_err(|_| SecretError::Store {
            store: store.clone(),
            // The parser's message may quote the file, and so a value: keep it out.
            reason: "is not a valid TOML table of name = \"value\"".into(),
        })?;
        let mut values = HashMap::new();
        for (name, value) in table {
            match value {
                toml::Value::String(v) => {
                    values.insert(name, Secret::new(v));
                }
                _ => {
                    return Err(SecretError::Store {
                        store,
                        reason: format!("{name} is not a string"),
                    })
                }
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            values,
        })
    }
}

impl SecretStore for FileStore {
    fn resolve(&self, reference: &SecretRef) -> Result<Secret, SecretError> {
        let SecretRef::File(name) = reference;
        self.values
            .get(name)
            .cloned()
            .ok_or_else(|| SecretError::NotFound {
                reference: reference.to_string(),
                store: self.path.display().to_string(),
            })
    }
}
