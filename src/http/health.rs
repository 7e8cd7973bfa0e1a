//! Liveness and readiness. Readiness lists each dependency with its state and the time
//! of its last check, and turns 503 while a required one is down or while shutting down.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use actix_web::{web, HttpResponse};
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
        let checked_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
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

#[derive(Serialize)]
struct ReadyBody {
    status: &'static str,
    dependencies: BTreeMap<String, DependencyReport>,
}

/// `GET /health/live`: the process answers.
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// `GET /health/ready`: 200 when ready, 503 otherwise, with the dependency list.
pub async fn ready(readiness: web::Data<Readiness>) -> HttpResponse {
    let ready = readiness.is_ready();
    let body = ReadyBody {
        status: if readiness.is_shutting_down() {
            "shutting_down"
        } else if ready {
            "ready"
        } else {
            "unready"
        },
        dependencies: readiness
            .dependencies
            .read()
            .expect("readiness lock is never poisoned")
            .clone(),
    };
    metrics::gauge!("intercom_ready").set(if ready { 1.0 } else { 0.0 });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
