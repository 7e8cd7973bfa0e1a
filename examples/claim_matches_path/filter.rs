//! The `claim_matches_path` filter: a path parameter must equal a verified claim.

use std::sync::Arc;

use intercom::filter::{
    async_trait, Filter, FilterRequest, FilterSettings, Phase, Refusal, StatusCode,
};
use serde::Deserialize;

/// `config` of a `claim_matches_path` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The paths the filter governs, one segment a `{parameter}`:
    /// `/invoices/{subscriber_id}` (deeper paths match too).
    pattern: String,
    /// The claim the parameter must equal; the parameter's name by default.
    claim: Option<String>,
}

/// One segment of the pattern.
enum Segment {
    Literal(String),
    Parameter,
}

/// Refuses a caller whose claim is not the path's parameter, on paths of the pattern.
pub struct ClaimMatchesPath {
    segments: Vec<Segment>,
    claim: String,
}

impl ClaimMatchesPath {
    /// Builds the filter from its route entry; says what is wrong with `config`.
    pub fn from_settings(settings: &FilterSettings) -> Result<Arc<dyn Filter>, String> {
        let config: Config = serde_json::from_value(settings.config.clone())
            .map_err(|e| format!("config: {e} (want pattern = \"/things/{{claim}}\")"))?;
        let Some(rest) = config.pattern.strip_prefix('/') else {
            return Err("config.pattern must start with '/'".into());
        };
        let mut parameter = None;
        let segments = rest
            .split('/')
            .map(
                |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some(name) if !name.is_empty() => {
                        parameter.get_or_insert(name.to_string());
                        Segment::Parameter
                    }
                    _ => Segment::Literal(s.to_string()),
                },
            )
            .collect::<Vec<_>>();
        let count = segments
            .iter()
            .filter(|s| matches!(s, Segment::Parameter))
            .count();
        let Some(parameter) = parameter.filter(|_| count == 1) else {
            return Err("config.pattern must hold exactly one {parameter} segment".into());
        };
        let claim = config.claim.unwrap_or(parameter);
        if !settings.claims.contains(&claim) {
            return Err(format!(
                "list {claim:?} in claims: Intercom keeps only the claims a filter names"
            ));
        }
        Ok(Arc::new(Self { segments, claim }))
    }

    /// The parameter's value in `path`, when the path is one the pattern governs.
    fn parameter<'a>(&self, path: &'a str) -> Option<&'a str> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let mut value = None;
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) if literal != part => return None,
                Segment::Literal(_) => {}
                Segment::Parameter => value = Some(part),
            }
        }
        value
    }
}

#[async_trait(?Send)]
impl Filter for ClaimMatchesPath {
    fn phases(&self) -> &[Phase] {
        &[Phase::Authenticated]
    }

    async fn authenticated(&self, request: &FilterRequest<'_>) -> Result<(), Refusal> {
        let Some(wanted) = self.parameter(request.path) else {
            return Ok(());
        };
        let Some(principal) = request.principal else {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "this path needs a verified caller",
            ));
        };
        let held = match principal.claims.get(&self.claim) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        // The values are the caller's and the path's: the refusal names neither.
        match held {
            Some(held) if held == wanted => Ok(()),
            Some(_) => Err(Refusal::forbidden(format!(
                "the token's {} claim does not match this path",
                self.claim
            ))),
            None => Err(Refusal::forbidden(format!(
                "the token carries no {} claim",
                self.claim
            ))),
        }
    }
}
