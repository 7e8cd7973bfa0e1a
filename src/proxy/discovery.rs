//! Upstream discovery by DNS: on routes with `discover = true`, every address an
//! upstream's host name resolves to (A and AAAA) is an instance, so a Kubernetes
//! headless Service scales the pool. Names are resolved at start, then again when their
//! records expire (their TTL), within `[discovery]`'s bounds. A failed lookup keeps the
//! instances known; a name that never resolved stays one instance by its name.

use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
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
        let mut known = Vec::new();
        let next = resolve(&resolver, upstreams, &mut known).await;
        let task = Refresh {
            upstreams: Arc::downgrade(upstreams),
            resolver: resolver.clone(),
            bounds: (settings.min_interval, settings.max_interval),
            known,
        };
        tokio::spawn(task.run(next));
    }
    Ok(())
}

/// The configured resolver: the given name servers, or the system's.
fn resolver(settings: &DiscoverySettings) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if settings.nameservers.is_empty() {
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
    // Both families, asked together: every address is an instance. (The crate's default
    // has been "IPv4, and IPv6 only when there is none" in other versions.)
    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder.build().map_err(|e| e.to_string())
}

/// Resolves every entry of one route and swaps in what was found; an entry whose lookup
/// fails keeps what `known` held for it. `known` becomes what was found. Returns when to
/// resolve again (the earliest expiry of the records, if any).
async fn resolve(
    resolver: &TokioResolver,
    upstreams: &Upstreams,
    known: &mut Vec<Vec<IpAddr>>,
) -> Option<Instant> {
    known.resize(upstreams.entries().len(), Vec::new());
    let mut expires: Option<Instant> = None;
    for (entry, addresses) in upstreams.entries().iter().zip(known.iter_mut()) {
        // An address is its own instance.
        let Some(url::Host::Domain(host)) = entry.url.host() else {
            continue;
        };
        match resolver.lookup_ip(format!("{host}.")).await {
            Ok(lookup) => {
                let mut found: Vec<IpAddr> = lookup.iter().collect();
                found.sort();
                found.dedup();
                metrics::counter!("intercom_upstream_resolutions_total", "route" => upstreams.route().to_string(), "outcome" => "resolved").increment(1);
                expires =
                    Some(expires.map_or(lookup.valid_until(), |e| e.min(lookup.valid_until())));
                *addresses = found;
            }
            Err(e) => {
                metrics::counter!("intercom_upstream_resolutions_total", "route" => upstreams.route().to_string(), "outcome" => "failed").increment(1);
                tracing::warn!(route = %upstreams.route(), host = %host, error = %e, "upstream name did not resolve; keeping the instances known");
            }
        }
    }
    upstreams.resolve_to(known);
    expires
}

/// Keeps one route's instances fresh while the route lives.
struct Refresh {
    upstreams: Weak<Upstreams>,
    resolver: Arc<TokioResolver>,
    bounds: (Duration, Duration),
    /// The addresses found last, per entry.
    known: Vec<Vec<IpAddr>>,
}

impl Refresh {
    async fn run(mut self, mut expires: Option<Instant>) {
        let (min, max) = self.bounds;
        loop {
            let wait = expires
                .map(|at| at.saturating_duration_since(Instant::now()))
                .unwrap_or(max)
                .clamp(min, max);
            tokio::time::sleep(wait).await;
            let Some(upstreams) = Upstreams::live(&self.upstreams) else {
                return;
            };
            expires = resolve(&self.resolver, &upstreams, &mut self.known).await;
        }
    }
}
