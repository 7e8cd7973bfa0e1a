//! `[telemetry]`: logging.

use serde::Deserialize;

use super::*;

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// `json` for machines, `pretty` for people.
    pub log_format: LogFormat,
    /// A `tracing` filter such as `info` or `intercom=debug,info`.
    pub log_level: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Json,
            log_level: "info".into(),
        }
    }
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
        Ok(())
    }
}
