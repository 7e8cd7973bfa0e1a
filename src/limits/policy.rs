//! What a route allows: windows per tier, compiled once at start into what the Redis
//! script, the local fallback and the response headers need.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::header::HeaderValue;

use super::local::LocalWindow;
use crate::settings::{RateLimitKey, RateLimitSettings, RouteAuth, RouteSettings, WindowSettings};

/// One window as the GCRA sees it.
#[derive(Debug)]
pub struct Window {
    pub requests: u64,
    pub per_secs: u64,
    /// The policy item's name in the headers, e.g. `free-60`.
    pub name: String,
    /// Microseconds between two requests at the sustained rate.
    pub interval_us: u64,
    /// Microseconds of credit: `burst × interval`.
    pub tolerance_us: u64,
    /// The Redis key's suffix; a changed window starts a fresh bucket.
    pub key_suffix: String,
    pub local: LocalWindow,
}

/// The windows of one tier on one route.
#[derive(Debug)]
pub struct TierPolicy {
    pub tier: Arc<str>,
    pub windows: Vec<Window>,
    /// `RateLimit-Policy`, ready to send.
    pub policy_header: HeaderValue,
    /// `intercom_rate_limit_decisions_total` by outcome, registered once.
    pub decisions: Decisions,
}

/// The decision counters of one route and tier.
#[derive(Debug)]
pub struct Decisions {
    pub allowed: metrics::Counter,
    pub limited: metrics::Counter,
    pub unavailable: metrics::Counter,
}

impl Decisions {
    fn new(route: &str, tier: &str) -> Self {
        let counter = |outcome: &'static str| {
            metrics::counter!(
                "intercom_rate_limit_decisions_total",
                "route" => route.to_string(),
                "tier" => tier.to_string(),
                "outcome" => outcome,
            )
        };
        Self {
            allowed: counter("allowed"),
            limited: counter("limited"),
            unavailable: counter("unavailable"),
        }
    }
}

impl TierPolicy {
    fn new(route: &str, tier: &str, windows: &[WindowSettings], replicas: u32) -> Self {
        let windows: Vec<Window> = windows
            .iter()
            .map(|w| {
                let per_us = w.per.as_micros() as u64;
                let interval_us = (per_us / w.requests).max(1);
                let burst = w.burst.unwrap_or(w.requests);
                let per_secs = w.per.as_secs();
                Window {
                    requests: w.requests,
                    per_secs,
                    name: format!("{tier}-{per_secs}"),
                    interval_us,
                    tolerance_us: interval_us * burst,
                    key_suffix: format!("{}/{}/{}", w.requests, per_secs, burst),
                    local: LocalWindow::new(w, replicas),
                }
            })
            .collect();
        let header = windows
            .iter()
            .map(|w| format!("\"{}\";q={};w={}", w.name, w.requests, w.per_secs))
            .collect::<Vec<_>>()
            .join(", ");
        Self {
            tier: Arc::from(tier),
            windows,
            policy_header: HeaderValue::from_str(&header)
                .expect("tier names and numbers make a valid header"),
            decisions: Decisions::new(route, tier),
        }
    }
}

/// A route's rate limit.
#[derive(Debug)]
pub struct RoutePolicy {
    /// The route's index in the table.
    pub index: usize,
    pub route: Arc<str>,
    pub key: RateLimitKey,
    tiers: HashMap<String, Arc<TierPolicy>>,
    default: Arc<TierPolicy>,
    anonymous: Arc<TierPolicy>,
}

impl RoutePolicy {
    /// The route's policy, or `None` when it has no rate limit. Settings are validated:
    /// the default (and anonymous) tier has windows.
    pub fn new(index: usize, route: &RouteSettings, global: &RateLimitSettings) -> Option<Self> {
        let limit = route.rate_limit.as_ref()?;
        let key = limit.key.unwrap_or(match route.auth {
            RouteAuth::None => RateLimitKey::Address,
            RouteAuth::Bearer | RouteAuth::Session => RateLimitKey::Identity,
        });
        let mut tiers: HashMap<String, Arc<TierPolicy>> = HashMap::new();
        for (tier, windows) in global.tiers.iter().chain(&limit.tiers) {
            tiers.insert(
                tier.clone(),
                Arc::new(TierPolicy::new(&route.name, tier, windows, global.replicas)),
            );
        }
        let pick = |name: &str| tiers.get(name).cloned();
        let default = pick(&global.default_tier);
        let anonymous = global
            .anonymous_tier
            .as_deref()
            .and_then(pick)
            .or_else(|| default.clone());
        // Validation saw to it that the tier each route uses has windows.
        let (default, anonymous) = match (default, anonymous) {
            (Some(default), Some(anonymous)) => (default, anonymous),
            (None, Some(anonymous)) => (anonymous.clone(), anonymous),
            _ => return None,
        };
        Some(Self {
            index,
            route: Arc::from(route.name.as_str()),
            key,
            tiers,
            default,
            anonymous,
        })
    }

    /// A budget per client address that is not a route's (`name` labels its metrics and
    /// keys); `None` when it has no windows.
    pub fn budget(
        index: usize,
        name: &str,
        windows: &[WindowSettings],
        replicas: u32,
    ) -> Option<Self> {
        if windows.is_empty() {
            return None;
        }
        let tier = Arc::new(TierPolicy::new(name, "address", windows, replicas));
        Some(Self {
            index,
            route: Arc::from(name),
            key: RateLimitKey::Address,
            tiers: HashMap::from([("address".to_string(), tier.clone())]),
            default: tier.clone(),
            anonymous: tier,
        })
    }

    /// The tier for a verified tier claim; unknown or missing → the default tier.
    pub fn tier_for(&self, claimed: Option<&str>) -> &Arc<TierPolicy> {
        claimed
            .and_then(|t| self.tiers.get(t))
            .unwrap_or(&self.default)
    }

    /// Every tier this route knows.
    pub fn tiers(&self) -> impl Iterator<Item = &Arc<TierPolicy>> {
        self.tiers.values()
    }

    /// The tier for callers known only by address.
    pub fn anonymous(&self) -> &Arc<TierPolicy> {
        &self.anonymous
    }
}
