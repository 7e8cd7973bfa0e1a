//! Coarse scope checks at the gateway: a route names the scopes a caller must hold,
//! any or all of them, with prefix wildcards such as `invoice_*`.

use crate::settings::ScopeMatch;

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

    /// `Ok` if `granted` satisfies the policy, else the scope string to name in the
    /// `insufficient_scope` challenge.
    pub fn check(&self, granted: &[String]) -> Result<(), String> {
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
            let missing: Vec<&str> = self
                .required
                .iter()
                .filter(|(p, _)| self.any || !p.held_by(granted))
                .map(|(_, text)| text.as_str())
                .collect();
            Err(missing.join(" "))
        }
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
            Err("orders_read".into())
        );
        let any = ScopePolicy::new(&scopes("invoice_write admin"), ScopeMatch::Any);
        assert!(any.check(&scopes("admin")).is_ok());
        assert_eq!(
            any.check(&scopes("invoice_read")),
            Err("invoice_write admin".into())
        );
        let wild = ScopePolicy::new(&scopes("invoice_*"), ScopeMatch::All);
        assert!(wild.check(&scopes("invoice_read")).is_ok());
        assert!(wild.check(&scopes("invoicex")).is_err());
        assert!(ScopePolicy::default().check(&[]).is_ok());
    }
}
