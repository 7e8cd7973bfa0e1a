//! Coarse scope checks at the gateway: a route names the scopes a caller must hold,
//! any or all of them, with prefix wildcards such as `invoice_*`. And the policy of a
//! downstream audience: who may call it, and which of the caller's scopes it receives.

use std::sync::Arc;

use super::Principal;
use crate::cache::tiered::ExchangeMetrics;
use crate::settings::{ExchangeMode, ExchangeSettings, ScopeMatch};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    /// `invoice_*`: any scope starting with `invoice_`.
    Prefix(String),
}

impl Pattern {
    fn parse(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_string()),
            None => Pattern::Exact(text.to_string()),
        }
    }

    fn held_by(&self, granted: &[String]) -> bool {
        granted.iter().any(|g| match self {
            Pattern::Exact(s) => g == s,
            Pattern::Prefix(p) => g.starts_with(p.as_str()),
        })
    }
}

/// The scopes a route requires.
#[derive(Debug, Clone, Default)]
pub struct ScopePolicy {
    required: Vec<(Pattern, String)>,
    any: bool,
}

impl ScopePolicy {
    pub fn new(required: &[String], mode: ScopeMatch) -> Self {
        Self {
            required: required
                .iter()
                .map(|s| (Pattern::parse(s), s.clone()))
                .collect(),
            any: mode == ScopeMatch::Any,
        }
    }

    /// The scopes required, as configured.
    pub fn required(&self) -> Vec<&str> {
        self.required
            .iter()
            .map(|(_, text)| text.as_str())
            .collect()
    }

    /// One of the required scopes is enough (`scope_match = "any"`).
    pub fn any(&self) -> bool {
        self.any
    }

    /// `Ok` if `granted` satisfies the policy, else the scopes to name in the
    /// `insufficient_scope` challenge.
    pub fn check(&self, granted: &[String]) -> Result<(), Vec<String>> {
        if self.required.is_empty() {
            return Ok(());
        }
        let ok = if self.any {
            self.required.iter().any(|(p, _)| p.held_by(granted))
        } else {
            self.required.iter().all(|(p, _)| p.held_by(granted))
        };
        if ok {
            Ok(())
        } else {
            Err(self
                .required
                .iter()
                .filter(|(p, _)| self.any || !p.held_by(granted))
                .map(|(_, text)| text.clone())
                .collect())
        }
    }
}

/// Why a target grants nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantRefused {
    /// Neither named in `callers` nor holding one of `caller_scopes`.
    CallerNotAllowed,
    /// No scope is left; carries the scopes that would have been needed.
    NothingLeft(Vec<String>),
}

/// The policy of one downstream audience.
#[derive(Debug, Clone)]
pub struct TargetPolicy {
    pub audience: Arc<str>,
    /// Send the audience as `resource` too.
    pub resource: bool,
    pub mode: ExchangeMode,
    pub requested_token_type: Option<String>,
    /// Send Intercom's own token as `actor_token`.
    pub actor: bool,
    /// The exchange cache's metrics for this audience.
    pub metrics: Arc<ExchangeMetrics>,
    allowed: Vec<Pattern>,
    callers: Vec<String>,
    caller_scopes: Vec<String>,
}

impl TargetPolicy {
    pub fn new(settings: &ExchangeSettings) -> Self {
        Self {
            audience: Arc::from(settings.audience.as_str()),
            resource: settings.resource,
            mode: settings.mode,
            requested_token_type: settings.requested_token_type.clone(),
            actor: settings.actor,
            metrics: Arc::new(ExchangeMetrics::new(&settings.audience)),
            allowed: settings
                .allowed_scopes
                .iter()
                .map(|s| Pattern::parse(s))
                .collect(),
            callers: settings.callers.clone(),
            caller_scopes: settings.caller_scopes.clone(),
        }
    }

    /// The scopes the target receives: the subject's ∩ the target's allowed (∩ `asked`
    /// when given), sorted. The caller (the client calling, which may act for another
    /// subject at `/token`) is judged by its own client id and scopes.
    pub fn grant(
        &self,
        caller: &Principal,
        subject: &Principal,
        asked: Option<&[String]>,
    ) -> Result<Vec<String>, GrantRefused> {
        let named = caller
            .client_id
            .as_ref()
            .is_some_and(|c| self.callers.contains(c));
        let by_scope = caller.scopes.iter().any(|s| self.caller_scopes.contains(s));
        if !named && !by_scope {
            return Err(GrantRefused::CallerNotAllowed);
        }
        let mut granted: Vec<String> = subject
            .scopes
            .iter()
            .filter(|s| {
                self.allowed
                    .iter()
                    .any(|p| p.held_by(std::slice::from_ref(*s)))
            })
            .filter(|s| asked.is_none_or(|asked| asked.contains(s)))
            .cloned()
            .collect();
        granted.sort();
        granted.dedup();
        if granted.is_empty() {
            return Err(GrantRefused::NothingLeft(match asked {
                Some(asked) => asked.to_vec(),
                None => self.allowed_scopes(),
            }));
        }
        Ok(granted)
    }

    /// The target's `allowed_scopes`, as configured (`invoice_*` for a prefix).
    fn allowed_scopes(&self) -> Vec<String> {
        self.allowed
            .iter()
            .map(|p| match p {
                Pattern::Exact(s) => s.clone(),
                Pattern::Prefix(p) => format!("{p}*"),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn all_any_and_wildcards() {
        let all = ScopePolicy::new(&scopes("invoice_read orders_read"), ScopeMatch::All);
        assert!(all.check(&scopes("orders_read invoice_read x")).is_ok());
        assert_eq!(
            all.check(&scopes("invoice_read")),
            Err(vec!["orders_read".to_string()])
        );
        let any = ScopePolicy::new(&scopes("invoice_write admin"), ScopeMatch::Any);
        assert!(any.check(&scopes("admin")).is_ok());
        assert_eq!(
            any.check(&scopes("invoice_read")),
            Err(vec!["invoice_write".to_string(), "admin".to_string()])
        );
        let wild = ScopePolicy::new(&scopes("invoice_*"), ScopeMatch::All);
        assert!(wild.check(&scopes("invoice_read")).is_ok());
        assert!(wild.check(&scopes("invoicex")).is_err());
        assert!(ScopePolicy::default().check(&[]).is_ok());
    }

    #[test]
    fn targets_grant_the_intersection_to_allowed_callers_only() {
        let target = TargetPolicy::new(&ExchangeSettings {
            audience: "billing".into(),
            resource: false,
            allowed_scopes: scopes("invoice_* profile"),
            callers: scopes("app"),
            caller_scopes: scopes("billing_caller"),
            mode: ExchangeMode::Exchange,
            requested_token_type: None,
            actor: false,
        });
        let caller = |client: &str, s: &str| Principal {
            client_id: Some(client.into()),
            scopes: scopes(s),
            ..Default::default()
        };
        assert_eq!(
            target.grant(
                &caller("app", ""),
                &caller("app", "orders_read invoice_write invoice_read"),
                None
            ),
            Ok(scopes("invoice_read invoice_write"))
        );
        assert_eq!(
            target.grant(
                &caller("app", ""),
                &caller("app", "invoice_read invoice_write"),
                Some(&scopes("invoice_read admin"))
            ),
            Ok(scopes("invoice_read"))
        );
        let alone = |c: &Principal| target.grant(c, c, None);
        assert_eq!(
            alone(&caller("app", "orders_read")),
            Err(GrantRefused::NothingLeft(vec![
                "invoice_*".into(),
                "profile".into()
            ]))
        );
        assert!(matches!(
            alone(&caller("other", "invoice_read")),
            Err(GrantRefused::CallerNotAllowed)
        ));
        assert!(alone(&caller("other", "invoice_read billing_caller")).is_ok());
        // The caller is judged on its own scopes, not the subject's.
        let subject = caller("user-app", "invoice_read billing_caller");
        assert!(matches!(
            target.grant(&caller("other", ""), &subject, None),
            Err(GrantRefused::CallerNotAllowed)
        ));
    }
}
