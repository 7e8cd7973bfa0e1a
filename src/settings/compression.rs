//! `[compression]`: response compression, off by default.

use serde::Deserialize;

/// Response compression (gzip, brotli, zstd by `Accept-Encoding`). Off by default:
/// compressing answers that mix secrets with attacker-chosen input invites BREACH.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionSettings {
    pub enabled: bool,
    /// Bodies smaller than this (when their size is known) are sent as they are.
    pub min_bytes: u64,
    /// Content types compressed, by prefix (`text/` covers `text/html`).
    pub content_types: Vec<String>,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            min_bytes: 1024,
            content_types: [
                "text/",
                "application/json",
                "application/problem+json",
                "application/javascript",
                "application/xml",
                "image/svg+xml",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}
