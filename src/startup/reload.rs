//! Hot reload: the configuration read again (on SIGHUP, or when its file changes),
//! validated, and what can change at run time swapped in as one new route table.
//!
//! What a new table carries: the routes (prefixes, upstreams, balancing, health checks,
//! retries, timeouts, headers, scopes, claims, audiences, CORS, injection, exchange
//! targets, rate limits and the tiers they use). A request keeps the table it started with, so
//! requests in flight finish on the old configuration. What the running process built
//! once (listeners, the admin listener, Redis, the secret store, the AS client, the
//! caches, sessions, telemetry) keeps its running value: each such key that changed is
//! named in one log line. A change the running parts cannot honour safely (a claim no
//! token keeps, a first exchange route) rejects the whole reload, as does
//! an invalid file; the running configuration then stays as it was.

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::web;

use crate::broker::claims::ClaimSelection;
use crate::filter::FilterRegistry;
use crate::limits::RateLimiter;
use crate::proxy::routes::{Attachments, RouteTable};
use crate::proxy::{discovery, inject, probes, transport, ProxyState};
use crate::readiness::{Readiness, ReloadReport};
use crate::secrets::registry::SecretRegistry;
use crate::settings::{ProcessEnv, Settings, SettingsError, UpstreamToken};

/// Where the configuration is read from: the profile directory and the `--config` file,
/// then the process environment, as at start.
#[derive(Debug, Clone)]
pub struct SettingsSource {
    pub dir: PathBuf,
    pub file: Option<PathBuf>,
}

impl SettingsSource {
    /// Reads and validates the configuration (and the file secrets it names).
    pub fn load(&self) -> Result<Settings, SettingsError> {
        let settings = Settings::load(&self.dir, self.file.as_deref(), &ProcessEnv)?;
        crate::secrets::file::check_references(&settings)?;
        Ok(settings)
    }

    /// The files whose change triggers a reload when watching.
    pub fn files(&self) -> Vec<PathBuf> {
        let profile = std::env::var("INTERCOM_ENV")
            .ok()
            .map(|p| self.dir.join(format!("{p}.toml")));
        profile.into_iter().chain(self.file.clone()).collect()
    }
}

/// Builds a route table from settings: what start-up and every reload make per route.
pub(super) struct RouteFactory {
    pub secrets: Arc<SecretRegistry>,
    /// The AS's client and token endpoint, for `client_credentials` injection.
    pub token_endpoint: Option<(reqwest::Client, String)>,
    pub limiter: Option<Arc<RateLimiter>>,
    /// The filters this binary offers, for the routes' `filters`.
    pub filters: FilterRegistry,
}

impl RouteFactory {
    /// The table of `settings.routes`, as generation `generation`.
    pub fn table(&self, settings: &Settings, generation: u64) -> Result<RouteTable, SettingsError> {
        let injections = inject::for_routes(settings, &self.secrets, self.token_endpoint.as_ref())?;
        let transports = transport::for_routes(settings, &self.secrets)?;
        let limits = match &self.limiter {
            Some(limiter) => limiter.route_policies(settings),
            None => match settings.routes.iter().position(|r| r.rate_limit.is_some()) {
                Some(i) => {
                    return Err(SettingsError::new(
                        format!("routes[{i}].rate_limit"),
                        "rate limiting was off at start (no limited route, no budget): turning it on takes a restart",
                    ))
                }
                None => settings.routes.iter().map(|_| None).collect(),
            },
        };
        let chains = self.filters.chains(&settings.routes)?;
        let attachments = injections
            .into_iter()
            .zip(transports)
            .zip(limits)
            .zip(chains)
            .map(|(((inject, transport), rate_limit), filters)| Attachments {
                inject,
                transport,
                rate_limit,
                filters,
            })
            .collect();
        let table = RouteTable::new(
            &settings.routes,
            settings.server.upstream_cooldown,
            settings.server.max_body_bytes,
            attachments,
        );
        Ok(table.with_generation(generation))
    }
}

/// The keys read once at start, by the name a log line gives them, and how to read each
/// (compared by their debug form: every settings type has one, and secrets are
/// references there, never values).
fn restart_only(s: &Settings) -> Vec<(&'static str, String)> {
    let server = &s.server;
    let rl = &s.rate_limit;
    vec![
        ("server.listen", format!("{:?}", server.listen)),
        ("server.admin_listen", format!("{:?}", server.admin_listen)),
        ("server.tls", format!("{:?}", server.tls)),
        ("server.workers", format!("{:?}", server.workers)),
        (
            "server.trusted_proxies",
            format!("{:?}", server.trusted_proxies),
        ),
        (
            "server.client_request_timeout",
            format!("{:?}", server.client_request_timeout),
        ),
        (
            "server.shutdown_delay",
            format!("{:?}", server.shutdown_delay),
        ),
        (
            "server.drain_timeout",
            format!("{:?}", server.drain_timeout),
        ),
        (
            "server.upstream_pool_size",
            format!("{:?}", server.upstream_pool_size),
        ),
        ("server.reload_watch", format!("{:?}", server.reload_watch)),
        ("telemetry", format!("{:?}", s.telemetry)),
        ("secrets", format!("{:?}", s.secrets)),
        ("auth_server", format!("{:?}", s.auth_server)),
        ("tokens", format!("{:?}", s.tokens)),
        ("compression", format!("{:?}", s.compression)),
        ("redis", format!("{:?}", s.redis)),
        ("rate_limit.tier_claim", format!("{:?}", rl.tier_claim)),
        ("rate_limit.replicas", format!("{:?}", rl.replicas)),
        (
            "rate_limit.on_redis_error",
            format!("{:?}", rl.on_redis_error),
        ),
        (
            "rate_limit.unknown_tokens",
            format!("{:?}", rl.unknown_tokens),
        ),
        ("rate_limit.endpoints", format!("{:?}", rl.endpoints)),
        ("exchange", format!("{:?}", s.exchange)),
        ("revocation", format!("{:?}", s.revocation)),
        ("token_endpoint", format!("{:?}", s.token_endpoint)),
        ("replicas", format!("{:?}", s.replicas)),
        ("session", format!("{:?}", s.session)),
        ("discovery", format!("{:?}", s.discovery)),
    ]
}

/// `new` with every key read once at start put back to its running value.
fn effective(running: &Settings, new: &Settings) -> Settings {
    let mut s = running.clone();
    s.routes = new.routes.clone();
    s.rate_limit.tiers = new.rate_limit.tiers.clone();
    s.rate_limit.default_tier = new.rate_limit.default_tier.clone();
    s.rate_limit.anonymous_tier = new.rate_limit.anonymous_tier.clone();
    s.server.upstream_cooldown = new.server.upstream_cooldown;
    s.server.max_body_bytes = new.server.max_body_bytes;
    s
}

/// The parts start-up built once that a new table must still fit.
pub(super) struct Fixed {
    /// Claims the tokens keep (`required_claims`, `denied_claims`).
    pub claims: ClaimSelection,
    /// Whether the AS's own JWT is kept for routes with `upstream_token`.
    pub keep_as_jwt: bool,
    /// Whether exchanged tokens have a cache and an exchanger.
    pub exchanges: bool,
}

impl Fixed {
    pub fn of(settings: &Settings) -> Self {
        Self {
            claims: ClaimSelection::new(&settings.rate_limit.tier_claim, &settings.routes),
            keep_as_jwt: keeps_as_jwt(settings),
            exchanges: settings.routes.iter().any(|r| r.exchange.is_some()),
        }
    }

    /// Refuses what the running parts cannot serve as asked.
    fn admits(&self, new: &Settings) -> Result<(), SettingsError> {
        let claims = ClaimSelection::new(&new.rate_limit.tier_claim, &new.routes);
        if let Some(claim) = claims.kept.iter().find(|c| !self.claims.kept.contains(c)) {
            return Err(SettingsError::new(
                "routes[].required_claims",
                format!("claim {claim:?} is not kept from tokens since start (required_claims, denied_claims and claims_to_headers read only those; a denied claim would go unseen): it takes a restart"),
            ));
        }
        if keeps_as_jwt(new) && !self.keep_as_jwt {
            return Err(SettingsError::new(
                "routes[].upstream_token",
                "no route forwarded the AS's JWT at start, so it is not kept: it takes a restart",
            ));
        }
        if new.routes.iter().any(|r| r.exchange.is_some()) && !self.exchanges {
            return Err(SettingsError::new(
                "routes[].exchange",
                "no route exchanged tokens at start (no exchange cache, no /token): it takes a restart",
            ));
        }
        Ok(())
    }
}

fn keeps_as_jwt(settings: &Settings) -> bool {
    settings
        .routes
        .iter()
        .any(|r| r.upstream_token == UpstreamToken::AuthorizationServer)
}

/// What one reload did.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The new table is in force.
    Applied { generation: u64 },
    /// Nothing that can change at run time changed.
    Unchanged,
    /// The configuration is invalid or cannot be applied; nothing changed.
    Rejected(SettingsError),
}

/// Reads the configuration again and swaps in what may change; one reload at a time.
pub struct Reloader {
    factory: RouteFactory,
    fixed: Fixed,
    proxy: web::Data<ProxyState>,
    readiness: Arc<Readiness>,
    /// The configuration in force (routes from the last reload applied, the rest from
    /// start).
    running: tokio::sync::Mutex<Settings>,
    source: std::sync::OnceLock<SettingsSource>,
}

impl Reloader {
    pub(super) fn new(
        factory: RouteFactory,
        settings: &Settings,
        proxy: web::Data<ProxyState>,
        readiness: Arc<Readiness>,
    ) -> Self {
        metrics::gauge!("intercom_config_generation").set(1.0);
        Self {
            factory,
            fixed: Fixed::of(settings),
            proxy,
            readiness,
            running: tokio::sync::Mutex::new(settings.clone()),
            source: std::sync::OnceLock::new(),
        }
    }

    /// Reloads read `source` from now on (set once).
    pub(super) fn read_from(&self, source: SettingsSource) {
        let _ = self.source.set(source);
    }

    pub(super) fn has_source(&self) -> bool {
        self.source.get().is_some()
    }

    /// The generation in force.
    pub fn generation(&self) -> u64 {
        self.proxy.routes.load().generation
    }

    /// Reads the configuration from its source and applies it.
    pub async fn reload(&self) -> ReloadOutcome {
        let loaded = match self.source.get() {
            Some(source) => source.load(),
            None => Err(SettingsError::new(
                "--config",
                "this instance was not started from files",
            )),
        };
        match loaded {
            Ok(settings) => self.apply(settings).await,
            Err(error) => {
                let generation = self.generation();
                self.record(ReloadOutcome::Rejected(error), generation, Vec::new())
            }
        }
    }

    /// Applies `new` (already validated): reports the keys that take a restart, refuses
    /// what the running parts cannot serve, builds the new table (resolving its names
    /// first), and swaps it in.
    pub async fn apply(&self, new: Settings) -> ReloadOutcome {
        let mut running = self.running.lock().await;
        let generation = self.generation();
        let before = restart_only(&running);
        let kept: Vec<String> = restart_only(&new)
            .into_iter()
            .zip(before)
            .filter(|(now, was)| now.1 != was.1)
            .map(|(now, _)| now.0.to_string())
            .collect();
        for key in &kept {
            tracing::warn!(key = %key, "reload: this key takes a restart; its running value is kept");
        }
        let next = effective(&running, &new);
        if format!("{next:?}") == format!("{:?}", *running) {
            return self.record(ReloadOutcome::Unchanged, generation, kept);
        }
        if let Err(error) = self.fixed.admits(&next) {
            return self.record(ReloadOutcome::Rejected(error), generation, kept);
        }
        let table = match self.factory.table(&next, generation + 1) {
            Ok(table) => table,
            Err(error) => return self.record(ReloadOutcome::Rejected(error), generation, kept),
        };
        if let Err(message) = discovery::start(&table, &next.discovery).await {
            let error = SettingsError::new("discovery", message);
            return self.record(ReloadOutcome::Rejected(error), generation, kept);
        }
        probes::spawn(&table, &self.readiness);
        let table = Arc::new(table);
        let old = self.proxy.routes.swap(table.clone());
        for route in old.routes() {
            route.upstreams.retire();
            if !table.routes().iter().any(|r| r.name == route.name) {
                self.readiness.forget(&format!("upstream:{}", route.name));
            }
        }
        *running = next;
        let outcome = ReloadOutcome::Applied {
            generation: table.generation,
        };
        self.record(outcome, table.generation, kept)
    }

    /// Logs, counts and reports one reload's outcome.
    fn record(&self, outcome: ReloadOutcome, generation: u64, kept: Vec<String>) -> ReloadOutcome {
        let (label, error) = match &outcome {
            ReloadOutcome::Applied { generation } => {
                tracing::info!(generation, "configuration reloaded");
                metrics::gauge!("intercom_config_generation").set(*generation as f64);
                ("applied", None)
            }
            ReloadOutcome::Unchanged => {
                tracing::info!(
                    generation,
                    "configuration reloaded: nothing that can change at run time changed"
                );
                ("unchanged", None)
            }
            ReloadOutcome::Rejected(error) => {
                tracing::error!(key = %error.key, reason = %error.reason, "configuration reload rejected; the running configuration stays");
                ("rejected", Some(error.to_string()))
            }
        };
        metrics::counter!("intercom_config_reloads_total", "outcome" => label).increment(1);
        self.readiness.record_reload(ReloadReport {
            outcome: label,
            generation,
            at: crate::readiness::now_rfc3339(),
            error,
            restart_required: kept,
        });
        outcome
    }
}

/// Reloads on every SIGHUP.
pub(super) async fn on_hangup(reloader: Arc<Reloader>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(e) => {
            tracing::error!(error = %e, "no SIGHUP handler: reloads only by file watch");
            return;
        }
    };
    while hangup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the configuration");
        reloader.reload().await;
    }
}

/// Checks the configuration files every `every` and reloads when one changed (its
/// modification time, size or presence).
pub(super) async fn watch(reloader: Arc<Reloader>, every: std::time::Duration) {
    let Some(source) = reloader.source.get().cloned() else {
        return;
    };
    let stamp = || {
        source
            .files()
            .iter()
            .map(|f| {
                std::fs::metadata(f)
                    .ok()
                    .map(|m| (m.modified().ok(), m.len()))
            })
            .collect::<Vec<_>>()
    };
    let mut seen = stamp();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = stamp();
        if now != seen {
            seen = now;
            tracing::info!("a configuration file changed: reloading");
            reloader.reload().await;
        }
    }
}
