//! `[rate_limit]`: tiers of windows chosen by a verified claim, and the per-address budgets.

use std::time::Duration;

use serde::Deserialize;

use super::*;

/// Rate limits: tiers of windows, chosen by a verified claim.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    /// The token claim naming the caller's tier (e.g. `plan`).
    pub tier_claim: String,
    /// The tier of callers whose token has no (or an unknown) tier claim.
    pub default_tier: String,
    /// The tier of anonymous callers (keyed by address); `default_tier` when absent.
    pub anonymous_tier: Option<String>,
    /// What to do while Redis fails: `local` (limit per replica), `allow` or `deny`.
    pub on_redis_error: OnRedisError,
    /// Replicas sharing the limits: the local fallback allows `limit / replicas`.
    pub replicas: u32,
    /// Windows per tier.
    pub tiers: std::collections::BTreeMap<String, Vec<WindowSettings>>,
    /// Per client address: how many tokens Intercom has not seen may cost an
    /// introspection (or validation) at the AS; past it, 429. Empty turns it off.
    pub unknown_tokens: Vec<WindowSettings>,
    /// Per client address: calls of `/token`, `/revoke` and `/backchannel-logout`.
    /// Empty turns it off.
    pub endpoints: Vec<WindowSettings>,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            tier_claim: "plan".into(),
            default_tier: "free".into(),
            anonymous_tier: None,
            on_redis_error: OnRedisError::Local,
            replicas: 1,
            tiers: Default::default(),
            unknown_tokens: vec![WindowSettings {
                requests: 600,
                per: Duration::from_secs(60),
                burst: Some(100),
            }],
            endpoints: vec![WindowSettings {
                requests: 600,
                per: Duration::from_secs(60),
                burst: Some(100),
            }],
        }
    }
}

/// The rate limiter's answer while Redis fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    /// Each replica limits alone at `limit / replicas`.
    #[default]
    Local,
    /// Let every request through.
    Allow,
    /// Refuse every request (503).
    Deny,
}

/// One window: `requests` per `per`, at most `burst` of them back to back.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WindowSettings {
    pub requests: u64,
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Requests that may come at once (default: all of `requests`).
    #[serde(default)]
    pub burst: Option<u64>,
}

pub(super) fn validate_windows(key: &str, windows: &[WindowSettings]) -> Result<(), SettingsError> {
    if windows.is_empty() {
        return Err(SettingsError::new(key, "name at least one window"));
    }
    for (w, window) in windows.iter().enumerate() {
        let k = format!("{key}[{w}]");
        if window.requests == 0 {
            return Err(SettingsError::new(
                format!("{k}.requests"),
                "must be at least 1",
            ));
        }
        if window.per < Duration::from_secs(1) {
            return Err(SettingsError::new(
                format!("{k}.per"),
                "must be at least 1s",
            ));
        }
        if window.burst == Some(0) {
            return Err(SettingsError::new(
                format!("{k}.burst"),
                "must be at least 1",
            ));
        }
    }
    Ok(())
}

impl RateLimitSettings {
    /// Checks what serde cannot; every error names its key.
    pub(super) fn validate(&self) -> Result<(), SettingsError> {
        for (tier, windows) in &self.tiers {
            validate_windows(&format!("rate_limit.tiers.{tier}"), windows)?;
        }
        for (key, windows) in [
            ("rate_limit.unknown_tokens", &self.unknown_tokens),
            ("rate_limit.endpoints", &self.endpoints),
        ] {
            if !windows.is_empty() {
                validate_windows(key, windows)?;
            }
        }
        if self.replicas == 0 {
            return Err(SettingsError::new(
                "rate_limit.replicas",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}
