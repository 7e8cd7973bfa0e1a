//! Upstream discovery by DNS: on routes with `discover = true`, every address an
//! upstream's host name resolves to (A and AAAA) is an instance, so a Kubernetes
//! headless Service scales the pool. Names are resolved at start, then again when their
//! records expire (their TTL), within `[discovery]`'s bounds. A failed lookup keeps the
//! instances known; a name that never resolved stays one instance by its name.

use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

use super::routes::RouteTable;
use super::upstreams::Upstreams;
use crate::settings::DiscoverySettings;

/// Resolves the routes that discover their instances once now, then keeps them fresh.
pub async fn start(routes: &RouteTable, settings: &DiscoverySettings) -> Result<(), String> {
    let discovering: Vec<&Arc<Upstreams>> = routes
        .routes()
        .iter()
        .filter(|r| r.discover)
        .map(|r| &r.upstreams)
        .collect();
    if discovering.is_empty() {
        return Ok(());
    }
    let resolver = Arc::new(resolver(settings)?);
    for upstreams in discovering {
        let next = resolve(&resolver, upstreams).await;
        let task = Refresh {
            upstreams: Arc::downgrade(upstreams),
            resolver: resolver.clone(),
            bounds: (settings.min_interval, settings.max_interval),
        };
        tokio::spawn(task.run(next));
    }
    Ok(())
}

/// The configured resolver: the given name servers, or the system's.
fn resolver(settings: &DiscoverySettings) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let builder = if settings.nameservers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|e| format!("the system's DNS configuration: {e}"))?
    } else {
        let mut config = ResolverConfig::default();
        for server in &settings.nameservers {
            let mut udp = ConnectionConfig::udp();
            udp.port = server.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = server.port();
            config.add_name_server(NameServerConfig::new(server.ip(), true, vec![udp, tcp]));
        }
        TokioResolver::builder_with_config(config, provider)
    };
    builder.build().map_err(|e| e.to_string())
}

/// Resolves every entry of one route and swaps in what was found; returns when to
/// resolve again (the earliest expiry of the records, if any).
async fn resolve(resolver: &TokioResolver, upstreams: &Upstreams) -> Option<Instant> {
    let mut found: Vec<Vec<IpAddr>> = Vec::new();
    let mut expires: Option<Instant> = None;
    let current = upstreams.pool();
    for entry in upstreams.entries() {
        let host = match entry.url.host() {
            Some(url::Host::Domain(name)) => name.to_string(),
            // An address is its own instance.
            _ => {
                found.push(Vec::new());
                continue;
            }
        };
        match resolver.lookup_ip(format!("{host}.")).await {
            Ok(lookup) => {
                let mut addresses: Vec<IpAddr> = lookup.iter().collect();
                addresses.sort();
                addresses.dedup();
                metrics::counter!("intercom_upstream_resolutions_total", "route" => upstreams.route().to_string(), "outcome" => "resolved").increment(1);
                expires =
                    Some(expires.map_or(lookup.valid_until(), |e| e.min(lookup.valid_until())));
                found.push(addresses);
            }
            Err(e) => {
                metrics::counter!("intercom_upstream_resolutions_total", "route" => upstreams.route().to_string(), "outcome" => "failed").increment(1);
                tracing::warn!(route = %upstreams.route(), host = %host, error = %e, "upstream name did not resolve; keeping the instances known");
                found.push(known_addresses(&current, &host));
            }
        }
    }
    upstreams.resolve_to(&found);
    expires
}

/// The addresses the pool holds for `host` now (what a failed lookup keeps).
fn known_addresses(pool: &super::upstreams::Pool, host: &str) -> Vec<IpAddr> {
    (0..pool.len())
        .map(|i| pool.get(i))
        .filter(|i| {
            i.host
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .is_some_and(|h| h.split(':').next() == Some(host))
        })
        .filter_map(|i| i.address())
        .collect()
}

/// Keeps one route's instances fresh while the route lives.
struct Refresh {
    upstreams: Weak<Upstreams>,
    resolver: Arc<TokioResolver>,
    bounds: (Duration, Duration),
}

impl Refresh {
    async fn run(self, mut expires: Option<Instant>) {
        let (min, max) = self.bounds;
        loop {
            let wait = expires
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(max)
                .clamp(min, max);
            tokio::time::sleep(wait).await;
            let Some(upstreams) = self.upstreams.upgrade() else {
                return;
            };
            expires = resolve(&self.resolver, &upstreams).await;
        }
    }
}
