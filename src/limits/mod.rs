//! Rate limiting by verified identity and tier.
//!
//! A request on a limited route is counted by who the token says it is (`sub`, else
//! `client_id`; never a header the client could set) or, on open routes, by the client
//! address Intercom trusts. Its tier comes from a verified claim. The decision is one
//! atomic Redis script over every window of the tier ([`gcra`]); while Redis fails,
//! `on_redis_error` chooses a per-replica limiter ([`local`]), letting requests through,
//! or refusing them. Redis keys and metric labels never hold an identity.

pub mod gcra;
pub mod lease;
pub mod local;
pub mod policy;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use actix_web::http::header::HeaderValue;

use crate::keyed_hash::SharedHasher;
use crate::redis::SharedRedis;
use crate::settings::{OnRedisError, Settings};
pub use gcra::WindowState;
use gcra::{Ask, Verdict};
use lease::{Leases, Spend};
use local::LocalAnswer;
use policy::{RoutePolicy, TierPolicy};

/// Who a request is counted as.
pub enum Caller<'a> {
    /// A verified token: its `sub` (else `client_id`) and tier claim.
    Identity { id: &'a str, tier: Option<&'a str> },
    /// An anonymous caller, by the address Intercom trusts.
    Address(IpAddr),
}

/// The answer for one request, with what its headers say.
pub struct Decision {
    pub allowed: bool,
    pub retry_after: Duration,
    /// `RateLimit-Policy` and `RateLimit`, unless the limiter could not tell.
    pub headers: Option<(HeaderValue, HeaderValue)>,
}

/// Refusing because Redis fails and `on_redis_error = "deny"`.
#[derive(Debug, thiserror::Error)]
#[error("the rate limiter cannot decide right now")]
pub struct LimiterUnavailable;

/// The shared counters, the budgets, and (weakly) the routes' limits, which each
/// route table holds (a reload makes new ones).
pub struct RateLimiter {
    /// The policies of the route tables alive, for the idle-window cleanup.
    routes: Mutex<Vec<Weak<RoutePolicy>>>,
    redis: Option<Arc<SharedRedis>>,
    on_error: OnRedisError,
    prefix: String,
    /// Cells reserved in Redis for this replica's next requests, per caller.
    leases: Leases,
    replicas: u64,
    /// Callers are keyed hashes under the replicas' shared key: an address or an id in
    /// a Redis key cannot be found again by hashing candidates.
    hasher: SharedHasher,
    /// Per address: unknown tokens that may reach the AS.
    unknown_tokens: Option<RoutePolicy>,
    /// Per address: calls of Intercom's own endpoints.
    endpoints: Option<RoutePolicy>,
}

/// The budgets per client address that are not a route's.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// A token Intercom has not seen: it would cost the AS a call.
    UnknownToken,
    /// `/token`, `/revoke`, `/backchannel-logout`.
    Endpoint,
}

impl RateLimiter {
    /// The limiter, or `None` when no route is limited and no budget is on.
    pub fn new(
        settings: &Settings,
        redis: Option<Arc<SharedRedis>>,
        hasher: SharedHasher,
    ) -> Option<Arc<Self>> {
        let rl = &settings.rate_limit;
        // Indexes no route has, so the budgets' reserved cells are their own.
        let unknown_tokens = RoutePolicy::budget(
            usize::MAX - 1,
            "unknown-tokens",
            &rl.unknown_tokens,
            rl.replicas,
        );
        let endpoints = RoutePolicy::budget(usize::MAX, "endpoints", &rl.endpoints, rl.replicas);
        let any_route = settings.routes.iter().any(|r| r.rate_limit.is_some());
        if !any_route && unknown_tokens.is_none() && endpoints.is_none() {
            return None;
        }
        if redis.is_none() && any_route {
            tracing::warn!(
                "rate limits without [redis]: each replica limits alone at limit / rate_limit.replicas"
            );
        }
        let limiter = Arc::new(Self {
            routes: Mutex::default(),
            redis,
            on_error: settings.rate_limit.on_redis_error,
            prefix: crate::redis::keys::base(settings),
            leases: Leases::default(),
            replicas: u64::from(settings.rate_limit.replicas),
            hasher,
            unknown_tokens,
            endpoints,
        });
        limiter.spawn_local_cleanup();
        Some(limiter)
    }

    /// Each route's policy (`result[i]` for `settings.routes[i]`, `None` when it is not
    /// limited), with the tiers of `settings.rate_limit`. Reserved cells are forgotten:
    /// a new table's policies start afresh.
    pub fn route_policies(&self, settings: &Settings) -> Vec<Option<Arc<RoutePolicy>>> {
        let policies: Vec<Option<Arc<RoutePolicy>>> = settings
            .routes
            .iter()
            .enumerate()
            .map(|(i, r)| RoutePolicy::new(i, r, &settings.rate_limit).map(Arc::new))
            .collect();
        let mut known = self.routes.lock().expect("never poisoned");
        known.retain(|w| w.strong_count() > 0);
        known.extend(policies.iter().flatten().map(Arc::downgrade));
        drop(known);
        self.leases.clear();
        policies
    }

    /// Counts one call against a budget of the client address `ip`; `Ok(None)` when that
    /// budget is off.
    pub async fn check_budget(
        &self,
        budget: Budget,
        ip: IpAddr,
    ) -> Result<Option<Decision>, LimiterUnavailable> {
        let policy = match budget {
            Budget::UnknownToken => &self.unknown_tokens,
            Budget::Endpoint => &self.endpoints,
        };
        match policy {
            Some(policy) => self.check(policy, Caller::Address(ip)).await.map(Some),
            None => Ok(None),
        }
    }

    /// The caller's tier on the route and what each window would allow it now (the
    /// requests left, and when the next is allowed: `reset`), spending nothing: read
    /// from Redis (`None` per window without Redis: the in-memory buckets cannot be read
    /// without spending), with the cells this replica holds in reserve for the caller,
    /// or none while a refusal it remembers stands.
    pub async fn peek(
        &self,
        policy: &RoutePolicy,
        caller: Caller<'_>,
    ) -> Result<(Arc<TierPolicy>, Vec<Option<WindowState>>), LimiterUnavailable> {
        let (tier, hashed) = self.tier_and_caller(policy, caller);
        let Some(redis) = &self.redis else {
            return Ok((tier.clone(), tier.windows.iter().map(|_| None).collect()));
        };
        let key = (policy.index, Arc::as_ptr(tier) as usize, hashed.short);
        let (held, refused) = self.leases.held(key);
        let windows = gcra::peek(redis, &self.prefix, &policy.route, tier, &hashed.hex())
            .await
            .map_err(|_| LimiterUnavailable)?
            .into_iter()
            .map(|w| match refused {
                Some(wait) => WindowState {
                    remaining: 0,
                    reset: wait,
                },
                None => WindowState {
                    remaining: w.remaining + held,
                    reset: w.reset,
                },
            })
            .map(Some)
            .collect();
        Ok((tier.clone(), windows))
    }

    fn tier_and_caller<'p>(
        &self,
        policy: &'p RoutePolicy,
        caller: Caller<'_>,
    ) -> (&'p Arc<TierPolicy>, HashedCaller) {
        match caller {
            Caller::Identity { id, tier } => (policy.tier_for(tier), self.hash_caller("id", id)),
            Caller::Address(ip) => (
                policy.anonymous(),
                self.hash_caller("ip", &anonymous_network(ip)),
            ),
        }
    }

    /// Counts one request of `caller` on the route.
    pub async fn check(
        &self,
        policy: &RoutePolicy,
        caller: Caller<'_>,
    ) -> Result<Decision, LimiterUnavailable> {
        let (tier, hashed) = self.tier_and_caller(policy, caller);
        let verdict = match &self.redis {
            Some(redis) => self.shared_verdict(redis, policy, tier, &hashed).await?,
            None => Some(decide_locally(tier, hashed.short)),
        };
        let Some(verdict) = verdict else {
            tier.decisions.allowed.increment(1);
            return Ok(Decision {
                allowed: true,
                retry_after: Duration::ZERO,
                headers: None,
            });
        };
        if verdict.allowed {
            tier.decisions.allowed.increment(1);
        } else {
            tier.decisions.limited.increment(1);
        }
        Ok(Decision {
            allowed: verdict.allowed,
            retry_after: verdict.retry_after,
            headers: Some((
                tier.policy_header.clone(),
                rate_limit_header(tier, &verdict),
            )),
        })
    }

    /// The shared verdict (spent from this replica's lease while it holds cells), or the
    /// configured fallback while Redis fails; `None` lets the request through.
    async fn shared_verdict(
        &self,
        redis: &SharedRedis,
        policy: &RoutePolicy,
        tier: &Arc<TierPolicy>,
        hashed: &HashedCaller,
    ) -> Result<Option<Verdict>, LimiterUnavailable> {
        let key = (policy.index, Arc::as_ptr(tier) as usize, hashed.short);
        let ask = match self.leases.spend(key) {
            Spend::Local(verdict) => Ok(verdict),
            // Boxed: a Redis round trip is a deep future, and inline it would make every
            // request's future (lease hits too) as large.
            Spend::Ask { want } => Box::pin(gcra::decide(
                redis,
                Ask {
                    prefix: &self.prefix,
                    route: &policy.route,
                    tier,
                    caller: &hashed.hex(),
                    want,
                    divisor: 2 * self.replicas,
                },
            ))
            .await
            .map(|mut verdict| {
                self.leases.settle(key, &verdict);
                // The cells reserved here are this caller's too.
                for window in &mut verdict.windows {
                    window.remaining += verdict.reserved;
                }
                verdict
            }),
        };
        match ask {
            Ok(verdict) => Ok(Some(verdict)),
            Err(_) => {
                // What Redis held may be gone with it: start afresh afterwards.
                self.leases.clear();
                metrics::counter!(
                    "intercom_rate_limit_fallback_total",
                    "route" => policy.route.to_string(),
                    "mode" => mode_label(self.on_error),
                )
                .increment(1);
                match self.on_error {
                    OnRedisError::Local => Ok(Some(decide_locally(tier, hashed.short))),
                    OnRedisError::Allow => Ok(None),
                    OnRedisError::Deny => {
                        tier.decisions.unavailable.increment(1);
                        Err(LimiterUnavailable)
                    }
                }
            }
        }
    }

    fn spawn_local_cleanup(self: &Arc<Self>) {
        let limiter = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let Some(limiter) = limiter.upgrade() else {
                    return;
                };
                let routes: Vec<Arc<RoutePolicy>> = {
                    let known = limiter.routes.lock().expect("never poisoned");
                    known.iter().filter_map(Weak::upgrade).collect()
                };
                let budgets = [&limiter.unknown_tokens, &limiter.endpoints];
                let policies = routes
                    .iter()
                    .map(|p| &**p)
                    .chain(budgets.into_iter().flatten());
                for policy in policies {
                    for tier in policy.tiers() {
                        tier.windows.iter().for_each(|w| w.local.forget_idle());
                    }
                }
            }
        });
    }
}

fn mode_label(mode: OnRedisError) -> &'static str {
    match mode {
        OnRedisError::Local => "local",
        OnRedisError::Allow => "allow",
        OnRedisError::Deny => "deny",
    }
}

/// A caller as the counters know it: never the identity itself.
struct HashedCaller {
    digest: [u8; 32],
    /// For the in-memory buckets and leases.
    short: u64,
}

impl HashedCaller {
    /// For Redis keys (made only when Redis is asked).
    fn hex(&self) -> String {
        hex::encode(&self.digest[..16])
    }
}

impl RateLimiter {
    fn hash_caller(&self, kind: &str, id: &str) -> HashedCaller {
        let digest = self
            .hasher
            .hash(&[b"rate-limit", kind.as_bytes(), id.as_bytes()]);
        HashedCaller {
            digest,
            short: u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")),
        }
    }
}

/// What an anonymous caller is counted as: its IPv4 address, or its IPv6 /64 (one
/// host's or one customer's network hands out any number of addresses within it).
pub fn anonymous_network(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// Every window of the tier in this replica's memory: refused if any refuses.
fn decide_locally(tier: &TierPolicy, caller: u64) -> Verdict {
    let mut verdict = Verdict {
        allowed: true,
        retry_after: Duration::ZERO,
        windows: Vec::with_capacity(tier.windows.len()),
        reserved: 0,
    };
    for window in &tier.windows {
        let share = window.local.share();
        let interval = Duration::from_secs(window.per_secs) / share.max(1) as u32;
        let state = match window.local.check(caller) {
            LocalAnswer::Allowed { remaining } => WindowState {
                remaining,
                reset: interval * (share.saturating_sub(remaining)) as u32,
            },
            LocalAnswer::Limited { wait } => {
                verdict.allowed = false;
                verdict.retry_after = verdict.retry_after.max(wait);
                WindowState {
                    remaining: 0,
                    reset: interval * share as u32,
                }
            }
        };
        verdict.windows.push(state);
    }
    verdict
}

/// `RateLimit` for the window closest to running out (draft-ietf-httpapi-ratelimit-headers).
fn rate_limit_header(tier: &TierPolicy, verdict: &Verdict) -> HeaderValue {
    let binding = verdict
        .windows
        .iter()
        .enumerate()
        .min_by_key(|(_, w)| (w.remaining, std::cmp::Reverse(w.reset)))
        .map(|(i, w)| (i, *w));
    let Some((index, state)) = binding else {
        return HeaderValue::from_static("");
    };
    let reset = if verdict.allowed {
        ceil_secs(state.reset)
    } else {
        // As `Retry-After` says.
        ceil_secs(verdict.retry_after).max(1)
    };
    HeaderValue::from_str(&format!(
        "\"{}\";r={};t={}",
        tier.windows[index].name, state.remaining, reset
    ))
    .expect("names and numbers make a valid header")
}

/// Whole seconds, rounded up: a client waiting this long is not refused again.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(key: &str) -> Arc<RateLimiter> {
        let mut settings: Settings = crate::settings::Settings::load(
            std::path::Path::new("/nonexistent"),
            None,
            &Vec::<(String, String)>::new(),
        )
        .expect("the defaults load");
        settings.routes = vec![serde_json::from_value(serde_json::json!({
            "name": "r", "prefix": "/r", "upstreams": ["http://127.0.0.1:1"], "rate_limit": {}
        }))
        .expect("a route")];
        settings.rate_limit.tiers.insert(
            "free".into(),
            serde_json::from_value(serde_json::json!([{ "requests": 1, "per": "1s" }])).unwrap(),
        );
        RateLimiter::new(
            &settings,
            None,
            SharedHasher::new(&crate::secret::Secret::new(key)),
        )
        .expect("a limited route")
    }

    #[actix_web::test]
    async fn callers_are_keyed_hashes_apart_by_kind_and_never_kept_raw() {
        let limiter = limiter("k1");
        let a = limiter.hash_caller("id", "alice");
        let b = limiter.hash_caller("ip", "alice");
        assert_ne!(a.hex(), b.hex());
        assert_eq!(a.hex().len(), 32);
        assert!(!a.hex().contains("alice"));
        assert_eq!(a.hex(), limiter.hash_caller("id", "alice").hex());
        // Under another key the same caller is another hash: without the key, hashing
        // every IPv4 address does not find one.
        assert_ne!(
            a.hex(),
            self::limiter("k2").hash_caller("id", "alice").hex()
        );
    }

    #[test]
    fn anonymous_ipv6_callers_count_per_64() {
        let net = |s: &str| anonymous_network(s.parse().unwrap());
        assert_eq!(net("2001:db8:1:2:aaaa::1"), net("2001:db8:1:2:ffff:1:2:3"));
        assert_ne!(net("2001:db8:1:2::1"), net("2001:db8:1:3::1"));
        assert_eq!(net("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(net("192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
        assert_eq!(ceil_secs(Duration::from_millis(2001)), 3);
    }
}
