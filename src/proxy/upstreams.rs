//! The instances of one route and their health: which one takes the next request
//! (weighted round robin, or the less busy of two drawn at random), which are out (an
//! active probe's verdict, or an ejection after failed requests that grows while the
//! instance keeps failing), and the retry budget that keeps retries from multiplying an
//! outage. The instances are a snapshot swapped whole when discovery finds other
//! addresses; an instance that stays keeps its health.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use url::Url;

use super::transport::Transport;
use crate::settings::{Balance, RetrySettings, UpstreamSetting};

/// One upstream instance: where it is, and its health.
#[derive(Debug)]
pub struct Instance {
    /// `scheme://authority/base-path` without a trailing '/', to which the path is
    /// appended, in the scheme awc sends by (see [`Transport::scheme`]).
    pub base: String,
    /// The same in the URL's own scheme, for probes.
    pub probe_base: String,
    /// The URL as configured, its host name kept where discovery found an address:
    /// what hyper's client is given (it dials `authority`, see `multiplexed`).
    pub named_base: String,
    /// Authority (`host:port`): for logs and the `instance` metric label.
    pub authority: String,
    /// The authority as the `Host` value sent, made once (a URL's host is a valid value).
    pub host: Option<http::HeaderValue>,
    weight: u32,
    /// Requests sent whose answer has not ended (its body included), for
    /// `least_request`; mirrored in `intercom_upstream_requests_in_flight`.
    in_flight: AtomicU32,
    in_flight_gauge: metrics::Gauge,
    /// The active probe's verdict (healthy until a probe says otherwise).
    probe_healthy: AtomicBool,
    /// Probe results in a row: > 0 healthy ones, < 0 unhealthy ones.
    probe_streak: AtomicI32,
    /// Failed requests in a row.
    failures: AtomicU32,
    /// Ejections in a row, each twice as long as the one before.
    ejections: AtomicU32,
    ejected_until_ms: AtomicU64,
}

/// When an instance is ejected and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Ejection {
    /// Failed requests in a row that eject (0: only refused connections do).
    pub consecutive_failures: u32,
    pub first: Duration,
    pub max: Duration,
}

/// The instances of a route at one moment, and their round-robin schedule.
#[derive(Debug)]
pub struct Pool {
    instances: Vec<Arc<Instance>>,
    /// Weighted round robin: positions, each as often as its weight, spread out.
    schedule: Vec<usize>,
}

impl Pool {
    fn new(instances: Vec<Arc<Instance>>) -> Self {
        let weights: Vec<u32> = instances.iter().map(|i| i.weight).collect();
        Self {
            schedule: smooth_schedule(&weights),
            instances,
        }
    }

    pub fn get(&self, index: usize) -> &Arc<Instance> {
        &self.instances[index]
    }

    pub fn len(&self) -> usize {
        self.instances.len()
    }

    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }
}

/// The instances of a route, shared by all workers, and its retry budget.
#[derive(Debug)]
pub struct Upstreams {
    route: Arc<str>,
    /// The configured entries, which discovery resolves to instances.
    entries: Vec<UpstreamSetting>,
    scheme: &'static str,
    pool: ArcSwap<Pool>,
    next: AtomicUsize,
    balance: Balance,
    ejection: Ejection,
    epoch: Instant,
    pub budget: RetryBudget,
    /// Its route table was replaced by a reload: the probes and lookups stop (requests
    /// still in flight keep using it).
    retired: AtomicBool,
}

impl Upstreams {
    /// The instances of `upstreams`, their base URLs in the scheme the transport sends by.
    pub fn new(
        route: &str,
        upstreams: &[UpstreamSetting],
        transport: &Transport,
        balance: Balance,
        ejection: Ejection,
        retry: &RetrySettings,
    ) -> Arc<Self> {
        let scheme = transport.scheme();
        let instances = upstreams
            .iter()
            .map(|u| Arc::new(Instance::new(route, &u.url, None, u.weight, scheme)))
            .collect();
        Arc::new(Self {
            route: Arc::from(route),
            entries: upstreams.to_vec(),
            scheme,
            pool: ArcSwap::from_pointee(Pool::new(instances)),
            next: AtomicUsize::new(0),
            balance,
            ejection,
            epoch: Instant::now(),
            budget: RetryBudget::new(retry.budget),
            retired: AtomicBool::new(false),
        })
    }

    /// Ends the background work on these instances (probes, DNS lookups, reports).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// The instances behind `weak`, unless they are gone or retired.
    pub fn live(weak: &std::sync::Weak<Upstreams>) -> Option<Arc<Upstreams>> {
        weak.upgrade()
            .filter(|u| !u.retired.load(Ordering::Relaxed))
    }

    /// The instances now; a request keeps one snapshot for all its attempts.
    pub fn pool(&self) -> Arc<Pool> {
        self.pool.load_full()
    }

    /// The configured entries (`upstreams`), in order.
    pub fn entries(&self) -> &[UpstreamSetting] {
        &self.entries
    }

    /// Makes each address found for entry `i` (`found[i]`) an instance; an entry with
    /// none found stays one instance by its name. Instances that stay keep their state.
    /// `true` when the set of instances changed.
    pub fn resolve_to(&self, found: &[Vec<IpAddr>]) -> bool {
        let current = self.pool.load();
        let mut instances = Vec::new();
        for (entry, addresses) in self.entries.iter().zip(found) {
            let fresh: Vec<Instance> = match addresses.is_empty() {
                true => vec![Instance::new(
                    &self.route,
                    &entry.url,
                    None,
                    entry.weight,
                    self.scheme,
                )],
                false => addresses
                    .iter()
                    .map(|ip| {
                        Instance::new(
                            &self.route,
                            &entry.url,
                            Some(*ip),
                            entry.weight,
                            self.scheme,
                        )
                    })
                    .collect(),
            };
            for instance in fresh {
                let kept = current.instances.iter().find(|i| i.base == instance.base);
                instances.push(kept.cloned().unwrap_or_else(|| Arc::new(instance)));
            }
        }
        let same = instances.len() == current.instances.len()
            && instances
                .iter()
                .zip(&current.instances)
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            let names: Vec<&str> = instances.iter().map(|i| i.authority.as_str()).collect();
            tracing::info!(route = %self.route, instances = ?names, "upstream instances changed");
            self.pool.store(Arc::new(Pool::new(instances)));
        }
        !same
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Picks, in `pool`, the instance for the next attempt among the healthy ones not
    /// in `tried`.
    pub fn pick(&self, pool: &Pool, tried: &[usize]) -> Option<usize> {
        let now = self.now_ms();
        let open = |i: usize| !tried.contains(&i) && pool.instances[i].available(now);
        match self.balance {
            Balance::RoundRobin => {
                let n = pool.schedule.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| pool.schedule[(start + k) % n])
                    .find(|&i| open(i))
            }
            Balance::LeastRequest => least_request(pool, open),
        }
    }
}

/// Power of two choices: two instances drawn by weight, the one with fewer requests in
/// flight per unit of weight.
fn least_request(pool: &Pool, open: impl Fn(usize) -> bool) -> Option<usize> {
    let instances = &pool.instances;
    let candidates: Vec<usize> = (0..instances.len()).filter(|&i| open(i)).collect();
    let draw = || {
        let total: u64 = candidates
            .iter()
            .map(|&i| u64::from(instances[i].weight))
            .sum();
        let mut at = rand::random_range(0..total.max(1));
        for &i in &candidates {
            let w = u64::from(instances[i].weight);
            if at < w {
                return i;
            }
            at -= w;
        }
        candidates[0]
    };
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0]),
        _ => {
            let (a, b) = (draw(), draw());
            let load = |i: usize| {
                let instance = &instances[i];
                f64::from(instance.in_flight.load(Ordering::Relaxed)) / f64::from(instance.weight)
            };
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

impl Upstreams {
    /// Counts a request in flight on the instance until the guard is dropped (with the
    /// answer's body, when it is streamed on).
    pub fn begin(&self, instance: &Arc<Instance>) -> InFlight {
        instance.in_flight.fetch_add(1, Ordering::Relaxed);
        instance.in_flight_gauge.increment(1.0);
        InFlight(instance.clone())
    }

    /// The instance answered (not with a 5xx): its failures in a row end.
    pub fn succeeded(&self, instance: &Instance) {
        if instance.failures.load(Ordering::Relaxed) != 0 {
            instance.failures.store(0, Ordering::Relaxed);
        }
        if instance.ejections.load(Ordering::Relaxed) != 0 {
            instance.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// The instance failed a request; `at_once` (a refused connection, a failed TLS
    /// handshake) ejects it now, anything else after `consecutive_failures` in a row.
    pub fn failed(&self, instance: &Instance, at_once: bool) {
        let threshold = self.ejection.consecutive_failures;
        let in_a_row = instance.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if at_once || (threshold > 0 && in_a_row >= threshold) {
            instance.failures.store(0, Ordering::Relaxed);
            self.eject(instance);
        }
    }

    fn eject(&self, instance: &Instance) {
        let before = instance.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let length = self
            .ejection
            .first
            .saturating_mul(1 << before)
            .min(self.ejection.max);
        let until = self.now_ms() + length.as_millis() as u64;
        instance.ejected_until_ms.store(until, Ordering::Relaxed);
        metrics::counter!("intercom_upstream_ejections_total", "route" => self.route.to_string(), "instance" => instance.authority.clone()).increment(1);
        tracing::warn!(route = %self.route, instance = %instance.authority, seconds = length.as_secs_f64(), "upstream instance ejected");
    }

    /// Records a probe's result; `true` when the instance's verdict changed.
    pub fn probed(&self, instance: &Instance, healthy: bool, thresholds: (u32, u32)) -> bool {
        let streak = instance.probe_streak.load(Ordering::Relaxed);
        let streak = match (healthy, streak) {
            (true, s) if s > 0 => s.saturating_add(1),
            (true, _) => 1,
            (false, s) if s < 0 => s.saturating_sub(1),
            (false, _) => -1,
        };
        instance.probe_streak.store(streak, Ordering::Relaxed);
        let was = instance.probe_healthy.load(Ordering::Relaxed);
        let (up, down) = thresholds;
        let now = match was {
            true => streak > -(down as i32),
            false => streak >= up as i32,
        };
        if now != was {
            instance.probe_healthy.store(now, Ordering::Relaxed);
            if now {
                // A recovered instance starts afresh.
                instance.ejected_until_ms.store(0, Ordering::Relaxed);
                instance.ejections.store(0, Ordering::Relaxed);
            }
            tracing::warn!(route = %self.route, instance = %instance.authority, healthy = now, "upstream instance health changed");
        }
        now != was
    }

    /// Instances that may take requests now, and all of them.
    pub fn healthy(&self) -> (usize, usize) {
        let now = self.now_ms();
        let pool = self.pool.load();
        let up = pool.instances.iter().filter(|i| i.available(now)).count();
        (up, pool.instances.len())
    }

    pub fn route(&self) -> &str {
        &self.route
    }
}

impl Instance {
    /// The instance of `url`, at `address` when discovery found one (the URL's host
    /// then goes in `Host` only).
    fn new(route: &str, url: &Url, address: Option<IpAddr>, weight: u32, scheme: &str) -> Self {
        let host = url.host_str().unwrap_or_default();
        let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let named = format!("{host}{port}");
        let authority = match address {
            Some(IpAddr::V4(ip)) => format!("{ip}{port}"),
            Some(IpAddr::V6(ip)) => format!("[{ip}]{port}"),
            None => named.clone(),
        };
        let path = url.path().trim_end_matches('/');
        Instance {
            base: format!("{scheme}://{authority}{path}"),
            probe_base: format!("{}://{authority}{path}", url.scheme()),
            named_base: format!("{}://{named}{path}", url.scheme()),
            host: http::HeaderValue::from_str(&named).ok(),
            in_flight_gauge: metrics::gauge!(
                "intercom_upstream_requests_in_flight",
                "route" => route.to_string(),
                "instance" => authority.clone()
            ),
            authority,
            weight,
            in_flight: AtomicU32::new(0),
            probe_healthy: AtomicBool::new(true),
            probe_streak: AtomicI32::new(0),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }
}

impl Instance {
    fn available(&self, now: u64) -> bool {
        self.probe_healthy.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= now
    }
}

/// A request in flight on an instance.
pub struct InFlight(Arc<Instance>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.in_flight_gauge.decrement(1.0);
    }
}

/// Positions `0..weights.len()`, each as often as its weight, interleaved (nginx's
/// smooth weighted round robin): weights 5, 1, 1 give a a b a c a a, not a a a a a b c.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .map(|_| {
            for (c, &w) in current.iter_mut().zip(weights) {
                *c += i64::from(w);
            }
            let best = (0..weights.len())
                .max_by_key(|&i| (current[i], std::cmp::Reverse(i)))
                .unwrap_or(0);
            current[best] -= total;
            best
        })
        .collect()
}

/// How long the retry budget counts a route's requests and retries.
const BUDGET_WINDOW_MS: u64 = 10_000;
/// Retries always allowed per window, so a quiet route can still retry.
const BUDGET_FLOOR: u64 = 3;

/// Retries may be at most `ratio` of a route's requests in the current window.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    epoch: Instant,
    window: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    fn new(ratio: f64) -> Self {
        Self {
            ratio,
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    fn roll(&self) {
        let window = self.epoch.elapsed().as_millis() as u64 / BUDGET_WINDOW_MS;
        if self.window.load(Ordering::Relaxed) != window
            && self.window.swap(window, Ordering::Relaxed) != window
        {
            self.requests.store(0, Ordering::Relaxed);
            self.retries.store(0, Ordering::Relaxed);
        }
    }

    /// Counts one request to the route.
    pub fn request(&self) {
        self.roll();
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if it has one left.
    pub fn take(&self) -> bool {
        self.roll();
        let requests = self.requests.load(Ordering::Relaxed);
        let allowed = BUDGET_FLOOR.max((requests as f64 * self.ratio) as u64);
        let taken = self.retries.fetch_add(1, Ordering::Relaxed);
        if taken < allowed {
            return true;
        }
        self.retries.fetch_sub(1, Ordering::Relaxed);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(weights: &[u32], balance: Balance, failures: u32) -> Arc<Upstreams> {
        let upstreams: Vec<UpstreamSetting> = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| UpstreamSetting {
                url: Url::parse(&format!("http://h{i}:8080/base/")).unwrap(),
                weight,
            })
            .collect();
        let ejection = Ejection {
            consecutive_failures: failures,
            first: Duration::from_secs(60),
            max: Duration::from_secs(600),
        };
        Upstreams::new(
            "r",
            &upstreams,
            &Transport::Plain,
            balance,
            ejection,
            &RetrySettings::default(),
        )
    }

    #[test]
    fn weighted_round_robin_spreads_by_weight_and_skips_ejected_instances() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        let ups = pool(&[1, 2], Balance::RoundRobin, 3);
        let p = ups.pool();
        let picks: Vec<usize> = (0..6).map(|_| ups.pick(&p, &[]).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 4);
        ups.failed(p.get(1), true);
        assert!((0..4).all(|_| ups.pick(&p, &[]) == Some(0)));
        assert_eq!(ups.pick(&p, &[0]), None);
        assert_eq!(ups.healthy(), (1, 2));
        assert_eq!(p.get(1).base, "http://h1:8080/base");
        let url = Url::parse("http://a:1").unwrap();
        let h2c = Instance::new("r", &url, None, 1, Transport::H2c.scheme());
        assert_eq!(
            (h2c.base.as_str(), h2c.probe_base.as_str()),
            ("https://a:1", "http://a:1")
        );
    }

    #[test]
    fn failures_in_a_row_eject_and_each_ejection_lasts_twice_as_long() {
        let ups = pool(&[1, 1], Balance::RoundRobin, 3);
        let p = ups.pool();
        let a = p.get(0);
        ups.failed(a, false);
        ups.failed(a, false);
        ups.succeeded(a);
        ups.failed(a, false);
        ups.failed(a, false);
        assert_eq!(ups.healthy(), (2, 2), "a success ends the run of failures");
        ups.failed(a, false);
        assert_eq!(ups.healthy(), (1, 2));
        let first = a.ejected_until_ms.load(Ordering::Relaxed);
        ups.failed(a, true);
        let second = a.ejected_until_ms.load(Ordering::Relaxed);
        assert!(second >= first + 60_000, "{first} then {second}");
    }

    #[test]
    fn probes_need_their_thresholds_in_a_row() {
        let ups = pool(&[1], Balance::RoundRobin, 0);
        let p = ups.pool();
        assert!(!ups.probed(p.get(0), false, (2, 2)));
        assert!(ups.probed(p.get(0), false, (2, 2)));
        assert_eq!(ups.pick(&p, &[]), None);
        assert!(!ups.probed(p.get(0), true, (2, 2)));
        assert!(ups.probed(p.get(0), true, (2, 2)));
        assert_eq!(ups.pick(&p, &[]), Some(0));
    }

    #[test]
    fn least_request_prefers_the_idle_instance() {
        let ups = pool(&[1, 1], Balance::LeastRequest, 0);
        let p = ups.pool();
        let _busy: Vec<InFlight> = (0..5).map(|_| ups.begin(p.get(0))).collect();
        // Two draws land on the same instance a quarter of the time; otherwise the
        // idle one wins.
        let idle = (0..200).filter(|_| ups.pick(&p, &[]) == Some(1)).count();
        assert!(idle > 120, "{idle} of 200");
    }

    #[test]
    fn discovered_addresses_become_instances_that_keep_their_state() {
        let ups = pool(&[1, 2], Balance::RoundRobin, 1);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(ups.resolve_to(&[vec![ip("10.0.0.1"), ip("::1")], vec![]]));
        let p = ups.pool();
        let names: Vec<&str> = p.instances.iter().map(|i| i.authority.as_str()).collect();
        assert_eq!(names, ["10.0.0.1:8080", "[::1]:8080", "h1:8080"]);
        assert_eq!(p.get(1).base, "http://[::1]:8080/base");
        assert_eq!(p.get(1).host.as_ref().unwrap(), "h0:8080");
        assert_eq!(p.schedule.len(), 4, "each address keeps its entry's weight");
        ups.failed(p.get(0), true);
        // The same answer again changes nothing; a new one keeps the ejected instance.
        assert!(!ups.resolve_to(&[vec![ip("10.0.0.1"), ip("::1")], vec![]]));
        assert!(ups.resolve_to(&[vec![ip("10.0.0.1")], vec![]]));
        assert_eq!(ups.healthy(), (1, 2));
    }

    #[test]
    fn the_retry_budget_allows_a_share_of_requests() {
        let budget = RetryBudget::new(0.2);
        assert!((0..3).all(|_| budget.take()), "the floor");
        assert!(!budget.take());
        for _ in 0..100 {
            budget.request();
        }
        let more = (0..30).filter(|_| budget.take()).count();
        assert_eq!(more, 17, "20 % of 100, less the 3 taken");
    }
}
