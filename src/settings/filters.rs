//! `[[routes.filters]]`: filters a team's own binary registered, run by name on a route.

use serde::Deserialize;

/// One filter a route runs, at the phases the filter declares, in the order listed.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FilterSettings {
    /// The name the binary registered the filter under (`intercom::filter::FilterRegistry`).
    pub name: String,
    /// Top-level claims of the caller's verified token the filter reads: Intercom keeps
    /// only the claims something asks for, so a filter names its own.
    #[serde(default)]
    pub claims: Vec<String>,
    /// The filter's own settings, handed to its factory as they are written.
    #[serde(default)]
    pub config: serde_json::Value,
}
