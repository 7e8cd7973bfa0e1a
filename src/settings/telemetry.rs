//! `[telemetry]`: logging and traces.

use std::time::Duration;

use serde::Deserialize;

use super::*;

/// Logging and traces.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `json` for machines, `pretty` for people.
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `intercom=debug,info`.
    pub log_level: String,
    /// OpenTelemetry traces over OTLP/HTTP; off unless set.
    pub traces: Option<TraceSettings>,
    /// Per-client traffic metrics and anomaly detection.
    pub clients: ClientInsightSettings,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_level: "info".into(),
            traces: None,
            clients: ClientInsightSettings::default(),
        }
    }
}

/// `[telemetry.clients]`: traffic by verified `client_id`, with a cap on the labels, and
/// the anomalies found in it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientInsightSettings {
    pub enabled: bool,
    /// The clients with the most traffic keep a `client` label; the rest are `other`.
    pub top: usize,
    /// How often the top clients are chosen again.
    #[serde(with = "humantime_serde")]
    pub rank_every: Duration,
    /// Most clients whose baselines are kept in memory (the least recent go first).
    pub tracked: u64,
    /// The length of one window of the moving averages.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Windows of history a client needs before its volume and error ratio are judged.
    pub warmup_windows: u32,
    /// A window with more than this many times the client's average volume is a spike.
    pub volume_factor: f64,
    /// A window with fewer requests is never a volume or error anomaly.
    pub min_requests: u64,
    /// An error ratio this much (absolute, 0 to 1) over the client's average is a jump.
    pub error_ratio_jump: f64,
}

impl Default for ClientInsightSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            top: 50,
            rank_every: Duration::from_secs(60),
            tracked: 10_000,
            window: Duration::from_secs(60),
            warmup_windows: 5,
            volume_factor: 5.0,
            min_requests: 20,
            error_ratio_jump: 0.3,
        }
    }
}

/// `[telemetry.traces]`: where spans go, how many, and whose trace context is believed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceSettings {
    /// The OTLP/HTTP traces endpoint, e.g. `http://otel-collector:4318/v1/traces`.
    pub endpoint: url::Url,
    /// The share of new traces kept (0 to 1); a caller's sampled flag is followed when
    /// its context is accepted.
    #[serde(default = "default_sample_ratio")]
    pub sample_ratio: f64,
    /// `service.name` of the spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Whose `traceparent` / `tracestate` continue their trace: `trusted_proxies` (the
    /// peers in `server.trusted_proxies`), `all`, or `none` (every request starts one).
    #[serde(default)]
    pub accept_context_from: TraceContextSource,
    /// Deadline of one export.
    #[serde(default = "default_export_timeout", with = "humantime_serde")]
    pub export_timeout: Duration,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceContextSource {
    #[default]
    TrustedProxies,
    All,
    None,
}

fn default_sample_ratio() -> f64 {
    0.1
}
fn default_service_name() -> String {
    "intercom".into()
}
fn default_export_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

impl TelemetrySettings {
    /// Checks what serde cannot; every error names its key.
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        tracing_subscriber::EnvFilter::try_new(&self.log_level).map_err(|e| {
            SettingsError::new(
                "telemetry.log_level",
                format!("{:?} is not a valid filter: {e}", self.log_level),
            )
        })?;
        let c = &self.clients;
        let key = |k: &str| format!("telemetry.clients.{k}");
        if c.window.is_zero() || c.rank_every.is_zero() {
            let k = if c.window.is_zero() {
                "window"
            } else {
                "rank_every"
            };
            return Err(SettingsError::new(key(k), "must be longer than 0"));
        }
        if c.tracked == 0 {
            return Err(SettingsError::new(key("tracked"), "must be at least 1"));
        }
        if c.volume_factor.is_nan() || c.volume_factor <= 1.0 {
            return Err(SettingsError::new(
                key("volume_factor"),
                "must be more than 1",
            ));
        }
        if !(0.0..=1.0).contains(&c.error_ratio_jump) || c.error_ratio_jump == 0.0 {
            return Err(SettingsError::new(
                key("error_ratio_jump"),
                "must be in (0, 1]",
            ));
        }
        if let Some(traces) = &self.traces {
            if !(0.0..=1.0).contains(&traces.sample_ratio) {
                return Err(SettingsError::new(
                    "telemetry.traces.sample_ratio",
                    format!("{} is not between 0 and 1", traces.sample_ratio),
                ));
            }
            if !matches!(traces.endpoint.scheme(), "http" | "https") {
                return Err(SettingsError::new(
                    "telemetry.traces.endpoint",
                    "must be an http:// or https:// URL (OTLP/HTTP)",
                ));
            }
            if traces.service_name.is_empty() {
                return Err(SettingsError::new(
                    "telemetry.traces.service_name",
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }
}
