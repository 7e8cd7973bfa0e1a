//! Liveness and readiness over HTTP; the state is [`crate::readiness::Readiness`].

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::readiness::{DependencyReport, Readiness, ReloadReport};

#[derive(Serialize)]
struct ReadyBody {
    status: &'static str,
    dependencies: BTreeMap<String, DependencyReport>,
    /// The last configuration reload, once there was one.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_reload: Option<ReloadReport>,
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
        dependencies: readiness.dependencies(),
        last_reload: readiness.last_reload(),
    };
    metrics::gauge!("intercom_ready").set(if ready { 1.0 } else { 0.0 });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
