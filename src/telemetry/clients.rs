//! Traffic by verified client: requests, 4xx and 5xx per client and route, and the
//! scopes each client's tokens carry, as metrics whose `client` label is capped (the top
//! clients by traffic keep theirs, the rest are `other`); and the anomalies found in
//! that traffic, each reported once (a counter by kind and one `intercom::anomaly` log
//! line) when it begins, not once per request:
//! - `new_scope`: a client's token carries a scope this client never used before (its
//!   first request sets the baseline);
//! - `volume_spike`: a window holds more than `volume_factor` × the client's moving
//!   average of requests per window;
//! - `error_ratio_jump`: a window's share of 4xx and 5xx answers is `error_ratio_jump`
//!   over the client's moving average.
//!
//! A client id is the AS's name for an integration, not a secret; no token is seen here.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Instant;

use metrics::Counter;

use crate::settings::ClientInsightSettings;

/// The maps read on every answer to a verified client, hashed with foldhash (seeded per
/// process) rather than SipHash: their keys are client ids of verified tokens, routes
/// and scopes, and there are at most `tracked` clients and 64 scopes per client.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The label of every client beyond the top ones.
const OTHER: &str = "other";
/// Most scopes remembered per client (a token with more is judged by the first ones).
const SCOPES_PER_CLIENT: usize = 64;
/// Weight of the newest window in the moving averages.
const ALPHA: f64 = 0.3;

/// The per-client traffic of one Intercom.
pub struct ClientInsight {
    settings: ClientInsightSettings,
    clients: moka::sync::Cache<Arc<str>, Arc<Client>, foldhash::fast::RandomState>,
    /// Clients holding a label now (at most `top`).
    labelled: AtomicUsize,
    /// The `other` client's series, per route.
    other: RwLock<HashMap<Arc<str>, Arc<Series>>>,
    epoch: Instant,
    anomalies: Anomalies,
}

/// The anomaly counters, by kind.
struct Anomalies {
    new_scope: Counter,
    volume_spike: Counter,
    error_ratio_jump: Counter,
}

/// One client's label and baselines.
struct Client {
    id: Arc<str>,
    labelled: AtomicBool,
    /// Requests since the last ranking.
    recent: AtomicU64,
    state: Mutex<ClientState>,
}

/// A client's current window and moving averages.
#[derive(Default)]
struct ClientState {
    /// The series of a labelled client, per route.
    series: HashMap<Arc<str>, Arc<Series>>,
    /// Its scope counters, per scope (at most [`SCOPES_PER_CLIENT`]).
    scope_series: HashMap<Arc<str>, Counter>,
    window: u64,
    requests: u64,
    errors: u64,
    /// Closed windows seen.
    windows: u32,
    average_requests: f64,
    average_error_ratio: f64,
    spiking: bool,
    erroring: bool,
    /// Scopes seen; `None` before the first request.
    scopes: Option<Vec<Arc<str>>>,
}

/// The counters of one client on one route.
struct Series {
    ok: Counter,
    client_error: Counter,
    server_error: Counter,
}

impl Series {
    fn new(client: &Arc<str>, route: &str) -> Self {
        let class = |class: &'static str| {
            metrics::counter!(
                "intercom_client_requests_total",
                "client" => client.to_string(),
                "route" => route.to_string(),
                "class" => class,
            )
        };
        Self {
            ok: class("ok"),
            client_error: class("4xx"),
            server_error: class("5xx"),
        }
    }

    fn count(&self, status: u16) {
        match status {
            400..=499 => self.client_error.increment(1),
            500..=599 => self.server_error.increment(1),
            _ => self.ok.increment(1),
        }
    }
}

impl ClientInsight {
    /// The insight of `settings`, re-ranking its clients in the background; `None`
    /// when off.
    pub fn start(settings: &ClientInsightSettings) -> Option<Arc<Self>> {
        if !settings.enabled {
            return None;
        }
        let insight = Arc::new(Self::new(settings));
        let weak = Arc::downgrade(&insight);
        let every = settings.rank_every;
        tokio::spawn(rank_every(weak, every));
        Some(insight)
    }

    fn new(settings: &ClientInsightSettings) -> Self {
        let anomaly =
            |kind: &'static str| metrics::counter!("intercom_anomalies_total", "kind" => kind);
        Self {
            settings: settings.clone(),
            clients: moka::sync::Cache::builder()
                .max_capacity(settings.tracked)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            labelled: AtomicUsize::new(0),
            other: RwLock::new(HashMap::default()),
            epoch: Instant::now(),
            anomalies: Anomalies {
                new_scope: anomaly("new_scope"),
                volume_spike: anomaly("volume_spike"),
                error_ratio_jump: anomaly("error_ratio_jump"),
            },
        }
    }

    /// Counts one answer to a verified client on `route`, and judges it.
    pub fn record(&self, client_id: &str, route: &Arc<str>, status: u16, scopes: &[String]) {
        let client = match self.clients.get(client_id) {
            Some(client) => client,
            None => self.admit(client_id),
        };
        client.recent.fetch_add(1, Ordering::Relaxed);
        let window =
            (self.epoch.elapsed().as_millis() / self.settings.window.as_millis().max(1)) as u64;
        let labelled = client.labelled.load(Ordering::Relaxed);
        let mut state = client.state.lock().expect("client state lock");
        if labelled {
            match state.series.get(route) {
                Some(series) => series.count(status),
                None => {
                    let series = Arc::new(Series::new(&client.id, route));
                    series.count(status);
                    state.series.insert(route.clone(), series);
                }
            }
            for scope in scopes {
                if let Some(counter) = state.scope_series.get(scope.as_str()) {
                    counter.increment(1);
                } else if state.scope_series.len() < SCOPES_PER_CLIENT {
                    let counter = metrics::counter!(
                        "intercom_client_scope_requests_total",
                        "client" => client.id.to_string(),
                        "scope" => scope.clone(),
                    );
                    counter.increment(1);
                    state
                        .scope_series
                        .insert(Arc::from(scope.as_str()), counter);
                }
            }
        } else {
            if !state.series.is_empty() {
                state.series.clear();
                state.scope_series.clear();
            }
            self.other_series(route).count(status);
        }
        self.judge(&client, &mut state, window, route, status, scopes);
    }

    /// A client seen for the first time: labelled while there is room.
    fn admit(&self, client_id: &str) -> Arc<Client> {
        let id: Arc<str> = Arc::from(client_id);
        self.clients.get_with(id.clone(), || {
            let room = self
                .labelled
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < self.settings.top).then_some(n + 1)
                })
                .is_ok();
            Arc::new(Client {
                id,
                labelled: AtomicBool::new(room),
                recent: AtomicU64::new(0),
                state: Mutex::new(ClientState::default()),
            })
        })
    }

    fn other_series(&self, route: &Arc<str>) -> Arc<Series> {
        if let Some(series) = self.other.read().expect("other series lock").get(route) {
            return series.clone();
        }
        let mut other = self.other.write().expect("other series lock");
        other
            .entry(route.clone())
            .or_insert_with(|| Arc::new(Series::new(&Arc::from(OTHER), route)))
            .clone()
    }

    /// Closes the windows that ended, then looks for the anomalies of this request;
    /// returns those it reported.
    fn judge(
        &self,
        client: &Client,
        state: &mut ClientState,
        window: u64,
        route: &str,
        status: u16,
        scopes: &[String],
    ) -> Vec<&'static str> {
        let mut reported = Vec::new();
        let s = &self.settings;
        if window > state.window {
            self.close_windows(state, window);
        }
        state.requests += 1;
        if status >= 400 {
            state.errors += 1;
        }
        match &mut state.scopes {
            None => {
                state.scopes = Some(
                    scopes
                        .iter()
                        .take(SCOPES_PER_CLIENT)
                        .map(|s| Arc::from(s.as_str()))
                        .collect(),
                )
            }
            Some(seen) => {
                for scope in scopes {
                    if seen.iter().any(|s| s.as_ref() == scope) || seen.len() >= SCOPES_PER_CLIENT {
                        continue;
                    }
                    seen.push(Arc::from(scope.as_str()));
                    self.anomalies.new_scope.increment(1);
                    reported.push("new_scope");
                    tracing::warn!(target: "intercom::anomaly", kind = "new_scope", client = %client.id, route, scope = %scope, "a client used a scope for the first time");
                }
            }
        }
        if state.windows < s.warmup_windows || state.requests < s.min_requests {
            return reported;
        }
        let volume = state.requests as f64;
        let threshold = s.volume_factor * state.average_requests.max(1.0);
        if !state.spiking && volume > threshold {
            state.spiking = true;
            self.anomalies.volume_spike.increment(1);
            reported.push("volume_spike");
            tracing::warn!(target: "intercom::anomaly", kind = "volume_spike", client = %client.id, route, window_requests = state.requests, average_requests = state.average_requests, "a client's volume is far over its average");
        }
        let ratio = state.errors as f64 / volume;
        if !state.erroring && ratio - state.average_error_ratio >= s.error_ratio_jump {
            state.erroring = true;
            self.anomalies.error_ratio_jump.increment(1);
            reported.push("error_ratio_jump");
            tracing::warn!(target: "intercom::anomaly", kind = "error_ratio_jump", client = %client.id, route, window_error_ratio = ratio, average_error_ratio = state.average_error_ratio, "a client's error ratio jumped");
        }
        reported
    }

    /// Folds the closed window (and the empty ones after it) into the averages; an
    /// anomaly that did not last through the closed window may be reported again.
    fn close_windows(&self, state: &mut ClientState, now: u64) {
        let s = &self.settings;
        let closed = (state.requests, state.errors);
        let fold = |state: &mut ClientState, requests: u64, errors: u64| {
            let ratio = if requests == 0 {
                state.average_error_ratio
            } else {
                errors as f64 / requests as f64
            };
            if state.windows == 0 {
                state.average_requests = requests as f64;
                state.average_error_ratio = ratio;
            } else {
                state.average_requests += ALPHA * (requests as f64 - state.average_requests);
                state.average_error_ratio += ALPHA * (ratio - state.average_error_ratio);
            }
            state.windows = state.windows.saturating_add(1);
        };
        let threshold = s.volume_factor * state.average_requests.max(1.0);
        let was_spiking = closed.0 as f64 > threshold && closed.0 >= s.min_requests;
        let was_erroring = closed.0 >= s.min_requests
            && closed.1 as f64 / closed.0.max(1) as f64 - state.average_error_ratio
                >= s.error_ratio_jump;
        fold(state, closed.0, closed.1);
        // Empty windows since then pull the volume down (a handful is enough to decay).
        for _ in 0..(now - state.window - 1).min(16) {
            fold(state, 0, 0);
        }
        state.spiking &= was_spiking;
        state.erroring &= was_erroring;
        state.window = now;
        state.requests = 0;
        state.errors = 0;
    }

    /// Gives the labels to the clients with the most requests since the last ranking.
    fn rank(&self) {
        let mut clients: Vec<(u64, Arc<Client>)> = self
            .clients
            .iter()
            .map(|(_, c)| (c.recent.swap(0, Ordering::Relaxed), c))
            .collect();
        clients.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        let mut labelled = 0;
        for (position, (_, client)) in clients.iter().enumerate() {
            let keep = position < self.settings.top;
            client.labelled.store(keep, Ordering::Relaxed);
            labelled += usize::from(keep);
        }
        self.labelled.store(labelled, Ordering::Relaxed);
    }

    /// The client labels in use.
    #[cfg(test)]
    fn labelled_clients(&self) -> usize {
        self.labelled.load(Ordering::Relaxed)
    }
}

async fn rank_every(insight: Weak<ClientInsight>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(insight) = insight.upgrade() else {
            return;
        };
        insight.rank();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ClientInsightSettings {
        ClientInsightSettings {
            top: 3,
            warmup_windows: 2,
            min_requests: 5,
            ..Default::default()
        }
    }

    #[test]
    fn the_cap_holds_and_ranking_moves_the_labels_to_the_busiest() {
        let insight = ClientInsight::new(&settings());
        let route: Arc<str> = Arc::from("r");
        for i in 0..10_000 {
            insight.record(&format!("c{i}"), &route, 200, &[]);
        }
        assert_eq!(insight.labelled_clients(), 3);
        for _ in 0..5 {
            insight.record("c9999", &route, 200, &[]);
        }
        insight.rank();
        assert_eq!(insight.labelled_clients(), 3);
        let busiest = insight.clients.get("c9999").unwrap();
        assert!(busiest.labelled.load(Ordering::Relaxed));
    }

    /// Runs `requests` answers of `status` in `window`; the anomalies reported.
    fn run(
        insight: &ClientInsight,
        client: &Client,
        state: &mut ClientState,
        (window, requests, status): (u64, u64, u16),
        scopes: &[String],
    ) -> Vec<&'static str> {
        (0..requests)
            .flat_map(|_| insight.judge(client, state, window, "r", status, scopes))
            .collect()
    }

    #[test]
    fn a_spike_or_a_jump_is_reported_once_and_again_only_after_it_ended() {
        let insight = ClientInsight::new(&settings());
        let client = insight.admit("a");
        let mut state = ClientState::default();
        let mut at = |w: (u64, u64, u16)| run(&insight, &client, &mut state, w, &[]);
        for window in 0..3 {
            assert!(at((window, 2, 200)).is_empty());
        }
        assert_eq!(at((3, 40, 200)), ["volume_spike"]);
        assert!(at((4, 40, 200)).is_empty(), "still over: not again");
        assert!(at((5, 2, 200)).is_empty());
        assert!(at((6, 2, 200)).is_empty(), "the spike ended with window 5");
        assert_eq!(at((7, 60, 200)), ["volume_spike"]);
        // Errors at the usual volume: a jump of the error ratio, once.
        for window in 8..20 {
            at((window, 6, 200));
        }
        assert_eq!(at((20, 6, 500)), ["error_ratio_jump"]);
        assert!(at((21, 6, 503)).is_empty());
        // Under min_requests, nothing is judged.
        let quiet = insight.admit("b");
        let mut calm = ClientState::default();
        for window in 0..4 {
            run(&insight, &quiet, &mut calm, (window, 1, 200), &[]);
        }
        assert!(run(&insight, &quiet, &mut calm, (4, 4, 500), &[]).is_empty());
    }

    #[test]
    fn a_new_scope_is_reported_once_after_the_first_request() {
        let insight = ClientInsight::new(&settings());
        let client = insight.admit("a");
        let mut state = ClientState::default();
        let read = vec!["read".to_string()];
        let both = vec!["read".to_string(), "admin".to_string()];
        assert!(run(&insight, &client, &mut state, (0, 3, 200), &read).is_empty());
        assert_eq!(
            run(&insight, &client, &mut state, (0, 3, 200), &both),
            ["new_scope"]
        );
        assert!(run(&insight, &client, &mut state, (1, 3, 200), &both).is_empty());
    }
}
