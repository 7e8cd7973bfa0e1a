//! The registry of referenced secrets: each resolved once at start, then watched (KV v2
//! versions, file changes) and swapped atomically when it changes. The previous value is
//! kept, so a credential mid-roll can be retried with the other one; a failed refresh
//! keeps the last-known value serving.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::{Secret, SecretError, SecretRef, SecretStore, Stores, Versioned};

struct CellState {
    current: Secret,
    previous: Option<Secret>,
    version: String,
    checked: Instant,
}

/// One referenced secret, kept fresh.
pub struct SecretCell {
    pub reference: SecretRef,
    /// The reference as text: the only name it has in logs and metric labels.
    pub name: String,
    state: ArcSwap<CellState>,
    refresh: tokio::sync::Mutex<()>,
    /// When a refusal by an upstream last made Intercom ask the store.
    refused_check: std::sync::Mutex<Option<Instant>>,
}

impl SecretCell {
    /// A cell that no store backs (a per-process random key, say); it never rotates.
    pub fn fixed(value: Secret) -> Self {
        Self {
            reference: SecretRef::File("(generated)".into()),
            name: "(generated)".into(),
            state: ArcSwap::from_pointee(CellState {
                current: value,
                previous: None,
                version: String::new(),
                checked: Instant::now(),
            }),
            refresh: tokio::sync::Mutex::new(()),
            refused_check: std::sync::Mutex::new(None),
        }
    }

    /// Rotates to `value` as a store rotation would (for unit tests).
    #[cfg(test)]
    pub fn replace_for_test(&self, value: Secret) {
        let old = self.state.load();
        self.state.store(Arc::new(CellState {
            current: value,
            previous: Some(old.current.clone()),
            version: format!("{}+", old.version),
            checked: Instant::now(),
        }));
    }

    pub fn current(&self) -> Secret {
        self.state.load().current.clone()
    }

    /// The value before the last rotation, if any.
    pub fn previous(&self) -> Option<Secret> {
        self.state.load().previous.clone()
    }

    /// True when `candidate` is the current value or, while a rotation rolls out, the
    /// previous one; both are compared, in constant time, whatever the first says.
    pub fn accepts(&self, candidate: &[u8]) -> bool {
        let state = self.state.load();
        let current = state.current.matches(candidate);
        let previous = state
            .previous
            .as_ref()
            .is_some_and(|p| p.matches(candidate));
        current | previous
    }

    /// Time since the value was last confirmed with its store.
    pub fn age(&self) -> Duration {
        self.state.load().checked.elapsed()
    }
}

/// What a refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    Unchanged,
    Rotated,
    Failed,
}

/// All referenced secrets and the stores behind them.
pub struct SecretRegistry {
    stores: Stores,
    cells: HashMap<String, Arc<SecretCell>>,
}

impl SecretRegistry {
    /// Resolves every reference now; the first that fails stops start-up, named.
    pub async fn resolve(stores: Stores, references: &[SecretRef]) -> Result<Self, SecretError> {
        let mut cells = HashMap::new();
        for reference in references {
            let name = reference.to_string();
            if cells.contains_key(&name) {
                continue;
            }
            let Versioned { value, version } = stores.read(reference).await?;
            let cell = SecretCell {
                reference: reference.clone(),
                name: name.clone(),
                state: ArcSwap::from_pointee(CellState {
                    current: value,
                    previous: None,
                    version,
                    checked: Instant::now(),
                }),
                refresh: tokio::sync::Mutex::new(()),
                refused_check: std::sync::Mutex::new(None),
            };
            cells.insert(name, Arc::new(cell));
        }
        Ok(Self { stores, cells })
    }

    /// The cell of a reference resolved at start.
    pub fn cell(&self, reference: &str) -> Option<Arc<SecretCell>> {
        self.cells.get(reference).cloned()
    }

    /// The cell of an optional reference of the configuration (resolved at start).
    pub fn stored(&self, reference: Option<&crate::secret::SecretRef>) -> Option<Arc<SecretCell>> {
        self.cell(&reference?.to_string())
    }

    /// Checks one secret with its store now and swaps in a new value. Concurrent
    /// callers for one cell share the check.
    pub async fn refresh(&self, cell: &SecretCell) -> Refresh {
        let seen = cell.state.load().version.clone();
        let _guard = cell.refresh.lock().await;
        if cell.state.load().version != seen {
            return Refresh::Rotated; // someone refreshed while we waited
        }
        self.check_and_swap(cell).await
    }

    /// As [`SecretRegistry::refresh`] for a refusal by an upstream, at most once per
    /// `backoff` per cell (concurrent refusals share the one check): an upstream
    /// refusing every value cannot make each request ask the store.
    pub async fn refresh_after_refusal(&self, cell: &SecretCell, backoff: Duration) -> Refresh {
        {
            let mut last = cell.refused_check.lock().expect("never poisoned");
            if last.is_some_and(|at| at.elapsed() < backoff) {
                return Refresh::Unchanged;
            }
            *last = Some(Instant::now());
        }
        self.refresh(cell).await
    }

    async fn check_and_swap(&self, cell: &SecretCell) -> Refresh {
        let outcome = match self.check(cell).await {
            Ok(Some(Versioned { value, version })) => {
                let old = cell.state.load();
                cell.state.store(Arc::new(CellState {
                    current: value,
                    previous: Some(old.current.clone()),
                    version,
                    checked: Instant::now(),
                }));
                tracing::info!(secret = %cell.name, "secret rotated");
                Refresh::Rotated
            }
            Ok(None) => {
                let old = cell.state.load();
                cell.state.store(Arc::new(CellState {
                    current: old.current.clone(),
                    previous: old.previous.clone(),
                    version: old.version.clone(),
                    checked: Instant::now(),
                }));
                Refresh::Unchanged
            }
            Err(e) => {
                tracing::warn!(secret = %cell.name, error = %e, "secret refresh failed; serving the last-known value");
                Refresh::Failed
            }
        };
        let label = match outcome {
            Refresh::Unchanged => "unchanged",
            Refresh::Rotated => "rotated",
            Refresh::Failed => "error",
        };
        metrics::counter!("intercom_secret_refresh_total", "outcome" => label).increment(1);
        metrics::gauge!("intercom_secret_age_seconds", "secret" => cell.name.clone())
            .set(cell.age().as_secs_f64());
        outcome
    }

    /// `Some` with the new value when the secret changed.
    async fn check(&self, cell: &SecretCell) -> Result<Option<Versioned>, SecretError> {
        let known = cell.state.load().version.clone();
        if let Some(version) = self.stores.version(&cell.reference).await? {
            if version == known {
                return Ok(None);
            }
        }
        let fresh = self.stores.read(&cell.reference).await?;
        Ok((fresh.version != known).then_some(fresh))
    }

    /// Refreshes every secret each `interval`; `report` hears whether all refreshes
    /// succeeded and the age of the oldest value.
    pub fn spawn_watch(
        self: &Arc<Self>,
        interval: Duration,
        report: impl Fn(bool, Duration) + Send + 'static,
    ) {
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(registry) = registry.upgrade() else {
                    return;
                };
                let mut all_ok = true;
                for cell in registry.cells.values() {
                    all_ok &= registry.refresh(cell).await != Refresh::Failed;
                }
                if let Some(vault) = &registry.stores.vault {
                    all_ok &= vault.healthy().await;
                }
                let oldest = registry
                    .cells
                    .values()
                    .map(|c| c.age())
                    .max()
                    .unwrap_or_default();
                report(all_ok, oldest);
            }
        });
    }
}
