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
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_level: "info".into(),
            traces: None,
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
