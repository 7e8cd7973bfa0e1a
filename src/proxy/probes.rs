//! Upstream health in the open: active probes of every instance of the routes that
//! configure `health_check`, and each route's healthy and total instances in readiness
//! (`upstream:<route>`), which turns unready only for a `required` route with none.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::routes::RouteTable;
use super::transport::Transport;
use super::upstreams::{Instance, Upstreams};
use crate::readiness::{DependencyState, Readiness};
use crate::settings::HealthCheckSettings;

/// How often readiness hears each route's instance count.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Starts the probes and the readiness report; both end when the routes are dropped.
pub fn spawn(routes: &RouteTable, readiness: &Arc<Readiness>) {
    let mut reported = Vec::new();
    for route in routes.routes() {
        reported.push((Arc::downgrade(&route.upstreams), route.required));
        let Some(check) = &route.health_check else {
            continue;
        };
        match probe_client(&route.transport, check) {
            Ok(client) => {
                let probe = Probe {
                    upstreams: Arc::downgrade(&route.upstreams),
                    check: check.clone(),
                    client,
                };
                tokio::spawn(probe.run());
            }
            Err(e) => {
                tracing::error!(route = %route.name, error = %e, "the health check's client cannot be built; no probes")
            }
        }
    }
    report(&reported, readiness);
    let readiness = Arc::downgrade(readiness);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(REPORT_EVERY).await;
            let Some(readiness) = readiness.upgrade() else {
                return;
            };
            if !report(&reported, &readiness) {
                return;
            }
        }
    });
}

/// Reports every route still alive; `false` once none is.
fn report(routes: &[(Weak<Upstreams>, bool)], readiness: &Readiness) -> bool {
    let mut alive = false;
    for (upstreams, required) in routes {
        let Some(upstreams) = Upstreams::live(upstreams) else {
            continue;
        };
        alive = true;
        let (healthy, total) = upstreams.healthy();
        let state = match healthy {
            0 => DependencyState::Down,
            n if n < total => DependencyState::Degraded,
            _ => DependencyState::Ok,
        };
        let route = upstreams.route().to_string();
        metrics::gauge!("intercom_upstream_healthy_instances", "route" => route.clone())
            .set(healthy as f64);
        metrics::gauge!("intercom_upstream_instances", "route" => route).set(total as f64);
        readiness.report(
            &format!("upstream:{}", upstreams.route()),
            state,
            *required,
            Some(format!("{healthy} of {total} instances healthy")),
        );
    }
    alive
}

/// The client the probes of one route use: its TLS config (roots, client certificate),
/// or HTTP/2 with prior knowledge for h2c.
fn probe_client(
    transport: &Transport,
    check: &HealthCheckSettings,
) -> Result<reqwest::Client, reqwest::Error> {
    let builder = reqwest::Client::builder()
        .timeout(check.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0);
    match transport {
        Transport::Plain => builder.http1_only(),
        Transport::Tls(config) => builder.use_preconfigured_tls((**config).clone()),
        Transport::H2c => builder.http2_prior_knowledge(),
    }
    .build()
}

/// The probes of one route's instances.
struct Probe {
    upstreams: Weak<Upstreams>,
    check: HealthCheckSettings,
    client: reqwest::Client,
}

impl Probe {
    async fn run(self) {
        let thresholds = (self.check.healthy_threshold, self.check.unhealthy_threshold);
        loop {
            let Some(upstreams) = Upstreams::live(&self.upstreams) else {
                return;
            };
            let pool = upstreams.pool();
            let results =
                futures_util::future::join_all((0..pool.len()).map(|i| self.probe(pool.get(i))))
                    .await;
            for (index, healthy) in results.into_iter().enumerate() {
                let instance = pool.get(index);
                let result = if healthy { "healthy" } else { "unhealthy" };
                metrics::counter!("intercom_upstream_probes_total", "route" => upstreams.route().to_string(), "instance" => instance.authority.clone(), "result" => result).increment(1);
                upstreams.probed(instance, healthy, thresholds);
            }
            drop((pool, upstreams));
            tokio::time::sleep(self.check.interval).await;
        }
    }

    /// One probe: a `GET` of the path, healthy when the status is expected.
    async fn probe(&self, instance: &Instance) -> bool {
        let url = format!("{}{}", instance.probe_base, self.check.path);
        let mut request = self.client.get(&url);
        if let Some(host) = &instance.host {
            // A discovered address is probed for the name it stands for.
            request = request.header(reqwest::header::HOST, host.as_bytes());
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                match self.check.expected_status.is_empty() {
                    true => (200..300).contains(&status),
                    false => self.check.expected_status.contains(&status),
                }
            }
            Err(_) => false,
        }
    }
}
