//! Readiness: each dependency's state and the time of its last check, reported by the
//! module that checks it; unready while a required one is down or while shutting down.
//! The HTTP handlers are in `http::health`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use serde::Serialize;

/// The state of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DependencyState {
    Ok,
    Degraded,
    Down,
}

/// The last check of one dependency.
#[derive(Debug, Clone, Serialize)]
pub struct DependencyReport {
    pub status: DependencyState,
    /// A required dependency that is down makes the instance unready.
    pub required: bool,
    /// RFC 3339 time of the last check.
    pub checked_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What `/health/ready` reports; shared by every module that checks a dependency.
#[derive(Debug, Default)]
pub struct Readiness {
    shutting_down: AtomicBool,
    dependencies: RwLock<BTreeMap<String, DependencyReport>>,
    last_reload: RwLock<Option<ReloadReport>>,
}

/// What the last configuration reload did (`last_reload` in `/health/ready`).
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// `applied`, `unchanged` or `rejected`.
    pub outcome: &'static str,
    /// The configuration in force afterwards.
    pub generation: u64,
    /// RFC 3339 time of the reload.
    pub at: String,
    /// Why it was rejected (the key and the reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Keys that changed in the file but take a restart; their running values are kept.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restart_required: Vec<String>,
}

/// Now, in RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Readiness {
    /// Records the outcome of a dependency check.
    pub fn report(
        &self,
        name: &str,
        status: DependencyState,
        required: bool,
        detail: Option<String>,
    ) {
        let checked_at = now_rfc3339();
        // The state as a number (0 ok, 1 degraded, 2 down), for alerts.
        let level = match status {
            DependencyState::Ok => 0.0,
            DependencyState::Degraded => 1.0,
            DependencyState::Down => 2.0,
        };
        metrics::gauge!("intercom_dependency_state", "dependency" => name.to_string()).set(level);
        let report = DependencyReport {
            status,
            required,
            checked_at,
            detail,
        };
        self.dependencies
            .write()
            .expect("readiness lock is never poisoned")
            .insert(name.to_string(), report);
    }

    /// Drops a dependency that is no longer checked (a route a reload removed).
    pub fn forget(&self, name: &str) {
        self.dependencies
            .write()
            .expect("readiness lock is never poisoned")
            .remove(name);
    }

    /// Records the outcome of a configuration reload, for `last_reload`.
    pub fn record_reload(&self, report: ReloadReport) {
        *self.last_reload.write().expect("never poisoned") = Some(report);
    }

    /// The last configuration reload, if there was one.
    pub fn last_reload(&self) -> Option<ReloadReport> {
        self.last_reload.read().expect("never poisoned").clone()
    }

    /// From now on readiness answers 503, so load balancers drain this instance.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        metrics::gauge!("intercom_ready").set(0.0);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// True when serving traffic makes sense.
    pub fn is_ready(&self) -> bool {
        !self.is_shutting_down()
            && self
                .dependencies
                .read()
                .expect("readiness lock is never poisoned")
                .values()
                .all(|d| !(d.required && d.status == DependencyState::Down))
    }
}

impl Readiness {
    /// Every dependency's last report, for the readiness answer.
    pub fn dependencies(&self) -> BTreeMap<String, DependencyReport> {
        self.dependencies
            .read()
            .expect("readiness lock is never poisoned")
            .clone()
    }
}
