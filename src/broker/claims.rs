//! Route access by verified claims (plan tiers, roles, groups): a route names claims the
//! caller's token must carry with one of some values, and values that refuse it.
//!
//! The claims are only ever those Intercom verified (an introspection answer, a validated
//! JWT), kept on the principal when the token is checked, so a cache hit re-checks them
//! without asking anyone; a header never supplies one.

use serde_json::{Map, Value};

use crate::settings::{ClaimPath, ClaimRule, ClaimRules, RouteSettings};

/// The claims kept on a principal: only those some route's rules read.
pub type KeptClaims = Map<String, Value>;

/// Which claims of a verified token Intercom keeps beyond the ones it always reads.
#[derive(Debug, Clone, Default)]
pub struct ClaimSelection {
    /// The claim naming the caller's rate-limit tier (`rate_limit.tier_claim`).
    pub tier: String,
    /// Top-level claims the routes' `required_claims`, `denied_claims`,
    /// `claims_to_headers` and filters read.
    pub kept: Vec<String>,
}

impl ClaimSelection {
    pub fn new(tier: &str, routes: &[RouteSettings]) -> Self {
        let mut kept: Vec<String> = routes
            .iter()
            .flat_map(|r| r.required_claims.0.iter().chain(&r.denied_claims.0))
            .map(|rule| rule.path.claim().to_string())
            .chain(routes.iter().flat_map(|r| {
                r.claims_to_headers
                    .0
                    .iter()
                    .map(|(_, path)| path.claim().to_string())
            }))
            .chain(
                routes
                    .iter()
                    .flat_map(|r| r.filters.iter().flat_map(|f| f.claims.iter().cloned())),
            )
            .collect();
        kept.sort();
        kept.dedup();
        Self {
            tier: tier.to_string(),
            kept,
        }
    }
}

/// Why a caller's claims refuse it; names the claim, never the caller's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimRefusal {
    /// The claim is absent or holds none of the values the route admits.
    Missing(String),
    /// The claim holds a value the route refuses.
    Denied(String),
}

impl std::fmt::Display for ClaimRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimRefusal::Missing(claim) => write!(
                f,
                "the token's {claim} claim holds none of the values this route requires"
            ),
            ClaimRefusal::Denied(claim) => {
                write!(
                    f,
                    "the token's {claim} claim holds a value this route refuses"
                )
            }
        }
    }
}

/// The counters of one route's claim decisions, registered once.
#[derive(Debug)]
struct Outcomes {
    admitted: metrics::Counter,
    missing: metrics::Counter,
    denied: metrics::Counter,
}

/// A route's claim rules, ready to check.
#[derive(Debug, Default)]
pub struct ClaimPolicy {
    required: Vec<ClaimRule>,
    denied: Vec<ClaimRule>,
    /// `None` on routes without rules (nothing to count).
    outcomes: Option<Outcomes>,
}

impl ClaimPolicy {
    pub fn new(route: &str, required: &ClaimRules, denied: &ClaimRules) -> Self {
        let counter = |outcome: &'static str| metrics::counter!("intercom_claim_checks_total", "route" => route.to_string(), "outcome" => outcome);
        let outcomes = (!required.is_empty() || !denied.is_empty()).then(|| Outcomes {
            admitted: counter("admitted"),
            missing: counter("missing"),
            denied: counter("denied"),
        });
        Self {
            required: required.0.clone(),
            denied: denied.0.clone(),
            outcomes,
        }
    }

    /// `Ok` when every required claim holds one of its values and no denied value is
    /// held.
    pub fn check(&self, claims: &KeptClaims) -> Result<(), ClaimRefusal> {
        let Some(outcomes) = &self.outcomes else {
            return Ok(());
        };
        let verdict = self.decide(claims);
        match &verdict {
            Ok(()) => outcomes.admitted.increment(1),
            Err(ClaimRefusal::Missing(_)) => outcomes.missing.increment(1),
            Err(ClaimRefusal::Denied(_)) => outcomes.denied.increment(1),
        }
        verdict
    }

    fn decide(&self, claims: &KeptClaims) -> Result<(), ClaimRefusal> {
        if let Some(rule) = self.denied.iter().find(|r| holds_any(claims, r)) {
            return Err(ClaimRefusal::Denied(rule.path.to_string()));
        }
        match self.required.iter().find(|r| !holds_any(claims, r)) {
            Some(rule) => Err(ClaimRefusal::Missing(rule.path.to_string())),
            None => Ok(()),
        }
    }
}

/// The value at `path`, through nested objects.
pub fn lookup<'a>(claims: &'a KeptClaims, path: &ClaimPath) -> Option<&'a Value> {
    let (first, rest) = path.names().split_first()?;
    rest.iter().try_fold(claims.get(first)?, |value, name| {
        value.as_object()?.get(name)
    })
}

/// True when the claim holds one of the rule's values: a string equal to one, or
/// holding one as a space-separated word; a list with one as an element; a number or
/// boolean written as one.
fn holds_any(claims: &KeptClaims, rule: &ClaimRule) -> bool {
    let Some(value) = lookup(claims, &rule.path) else {
        return false;
    };
    let is = |v: &Value, want: &str| match v {
        Value::String(s) => s == want,
        Value::Number(n) => n.to_string() == want,
        Value::Bool(b) => b.to_string() == want,
        _ => false,
    };
    rule.values.iter().any(|want| match value {
        Value::String(s) => s == want || s.split_whitespace().any(|word| word == want),
        Value::Array(items) => items.iter().any(|item| is(item, want)),
        other => is(other, want),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(entries: &[(&str, &[&str])]) -> ClaimRules {
        ClaimRules(
            entries
                .iter()
                .map(|(path, values)| ClaimRule {
                    path: ClaimPath::parse(path).unwrap(),
                    values: values.iter().map(|v| v.to_string()).collect(),
                })
                .collect(),
        )
    }

    fn claims(value: Value) -> KeptClaims {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn strings_words_lists_and_nested_claims_match() {
        let policy = ClaimPolicy::new(
            "claims-unit",
            &rules(&[
                ("plan", &["pro", "enterprise"]),
                ("groups", &["billing-admins"]),
                ("realm_access.roles", &["admin"]),
                ("resource_access.\"billing.api\".roles", &["invoice-reader"]),
                ("entitlements", &["export"]),
            ]),
            &rules(&[("groups", &["suspended"])]),
        );
        let alice = json!({
            "plan": "pro",
            "groups": ["staff", "billing-admins"],
            "realm_access": { "roles": ["user", "admin"] },
            "resource_access": { "billing.api": { "roles": ["invoice-reader"] } },
            "entitlements": "read export",
        });
        assert_eq!(policy.check(&claims(alice.clone())), Ok(()));
        let refused = |change: &dyn Fn(&mut Value)| {
            let mut c = alice.clone();
            change(&mut c);
            policy.check(&claims(c)).unwrap_err()
        };
        assert_eq!(
            refused(&|c| c["plan"] = json!("free")),
            ClaimRefusal::Missing("plan".into())
        );
        assert_eq!(
            refused(&|c| {
                c.as_object_mut().unwrap().remove("plan");
            }),
            ClaimRefusal::Missing("plan".into())
        );
        assert_eq!(
            refused(&|c| c["groups"] = json!(["billing-admins", "suspended"])),
            ClaimRefusal::Denied("groups".into())
        );
        assert_eq!(
            refused(&|c| c["realm_access"] = json!({ "roles": "user" })),
            ClaimRefusal::Missing("realm_access.roles".into())
        );
        // A client id with a dot is one name, not two levels.
        assert_eq!(
            refused(&|c| {
                c["resource_access"] =
                    json!({ "billing": { "api": { "roles": ["invoice-reader"] } } })
            }),
            ClaimRefusal::Missing("resource_access.\"billing.api\".roles".into())
        );
        assert_eq!(
            refused(&|c| c["entitlements"] = json!("read exporter")),
            ClaimRefusal::Missing("entitlements".into())
        );
        // Nested values do not count as a list's elements.
        assert_eq!(
            refused(&|c| c["groups"] = json!([["billing-admins"]])),
            ClaimRefusal::Missing("groups".into())
        );
        let numbers = ClaimPolicy::new("claims-unit-n", &rules(&[("level", &["3"])]), &rules(&[]));
        assert!(numbers.check(&claims(json!({ "level": 3 }))).is_ok());
        assert!(numbers.check(&claims(json!({ "level": [2, 3] }))).is_ok());
        assert!(numbers.check(&claims(json!({ "level": 4 }))).is_err());
    }

    #[test]
    fn the_refusal_names_the_claim_and_not_the_values() {
        let text = ClaimRefusal::Missing("plan".into()).to_string();
        assert!(text.contains("plan") && !text.contains("pro"), "{text}");
        assert!(ClaimPolicy::default().check(&KeptClaims::new()).is_ok());
    }
}
