//! The filter API: a team's own code on the request path, for what the configuration
//! cannot express (a claim that must match a path parameter, a header computed from the
//! principal, a call to a policy service).
//!
//! A team builds its own binary from the `intercom` library: it implements [`Filter`],
//! registers a factory under a name in a [`FilterRegistry`], and hands the registry to
//! [`crate::cli::run`]. A route then runs the filter by that name:
//!
//! ```toml
//! [[routes]]
//! name = "invoices"
//! prefix = "/invoices"
//! auth = "bearer"
//! upstreams = ["http://127.0.0.1:9000"]
//! [[routes.filters]]
//! name = "claim_matches_path"
//! claims = ["subscriber_id"]          # the claims the filter reads (kept on the principal)
//! config = { pattern = "/invoices/{subscriber_id}" }
//! ```
//!
//! Filters run at the phases they declare ([`Filter::phases`]), in the order the route
//! lists them:
//! - [`Phase::Authenticated`]: after the caller was authenticated and passed the route's
//!   own scope, audience and claim rules, before the rate limit; may refuse.
//! - [`Phase::BeforeForwarding`]: on the request the upstream will receive (identity
//!   headers, internal JWT, claim headers set; the injected credential not yet); may
//!   refuse, add and remove headers.
//! - [`Phase::Response`]: on the upstream's answer (not on Intercom's own error answers,
//!   not on a WebSocket handshake); may add and remove headers.
//!
//! A route without filters pays nothing for the API: the chain is three empty lists,
//! checked once each.

use std::collections::BTreeMap;
use std::sync::Arc;

pub use crate::broker::Principal;
pub use crate::settings::FilterSettings;
pub use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
pub use actix_web::http::{Method, StatusCode};
/// The attribute a [`Filter`] implementation carries: `#[async_trait(?Send)]`.
pub use async_trait::async_trait;

/// A named point of the request path where filters run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// After authentication and the route's own authorization, before the rate limit.
    Authenticated,
    /// On the outbound request, just before the credential is injected and it is sent.
    BeforeForwarding,
    /// On the upstream's answer, before it goes to the client.
    Response,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Authenticated => "authenticated",
            Phase::BeforeForwarding => "before_forwarding",
            Phase::Response => "response",
        }
    }
}

/// What a filter sees of the request: read-only, the same at every phase.
pub struct FilterRequest<'a> {
    /// The route's name.
    pub route: &'a str,
    pub method: &'a Method,
    /// The canonical path (decoded, dot segments resolved), without the query.
    pub path: &'a str,
    /// The headers as the client sent them (before Intercom strips or sets any):
    /// `Authorization` and `Cookie` included, so never log them.
    pub headers: &'a HeaderMap,
    /// The verified caller on `bearer` and `session` routes; `None` on `auth = "none"`.
    pub principal: Option<&'a Principal>,
}

/// A filter's refusal: a 4xx answer in problem+json, with `detail` for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    status: StatusCode,
    detail: String,
}

impl Refusal {
    /// A refusal with a client-error status; any other status becomes 403 (a filter
    /// refuses the caller, it does not fail the server).
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status: if status.is_client_error() {
                status
            } else {
                StatusCode::FORBIDDEN
            },
            detail: detail.into(),
        }
    }

    /// 403 Forbidden.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, detail)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What the client reads; never put a token or a secret in it.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

/// A filter. Implement the methods of the phases it declares; the others are never
/// called. Futures need not be `Send` (each worker runs its requests on one thread).
#[async_trait::async_trait(?Send)]
pub trait Filter: Send + Sync {
    /// The phases this filter runs at.
    fn phases(&self) -> &[Phase];

    /// [`Phase::Authenticated`]: `Err` refuses the request.
    async fn authenticated(&self, _request: &FilterRequest<'_>) -> Result<(), Refusal> {
        Ok(())
    }

    /// [`Phase::BeforeForwarding`]: `upstream` is what the upstream will receive.
    async fn before_forwarding(
        &self,
        _request: &FilterRequest<'_>,
        _upstream: &mut HeaderMap,
    ) -> Result<(), Refusal> {
        Ok(())
    }

    /// [`Phase::Response`]: the upstream's status and the headers the client will get.
    fn on_response(
        &self,
        _request: &FilterRequest<'_>,
        _status: StatusCode,
        _headers: &mut HeaderMap,
    ) {
    }
}

/// Builds a filter from a route's `[[routes.filters]]` entry; `Err` names what is wrong
/// with its `config` (start-up and reload refuse the configuration with it).
pub type FilterFactory =
    dyn Fn(&FilterSettings) -> Result<Arc<dyn Filter>, String> + Send + Sync + 'static;

/// The filters a binary offers, by name.
#[derive(Clone, Default)]
pub struct FilterRegistry {
    factories: BTreeMap<String, Arc<FilterFactory>>,
}

impl FilterRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers `factory` under `name` (a second registration of a name replaces it).
    pub fn register(
        mut self,
        name: &str,
        factory: impl Fn(&FilterSettings) -> Result<Arc<dyn Filter>, String> + Send + Sync + 'static,
    ) -> Self {
        self.factories.insert(name.to_string(), Arc::new(factory));
        self
    }

    /// Every route's chain, in order; the error names the entry that cannot be built
    /// (`routes[i].filters[n]`).
    pub fn chains(
        &self,
        routes: &[crate::settings::RouteSettings],
    ) -> Result<Vec<FilterChain>, crate::settings::SettingsError> {
        routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                self.chain(&r.name, &r.filters).map_err(|(n, why)| {
                    crate::settings::SettingsError::new(format!("routes[{i}].filters[{n}]"), why)
                })
            })
            .collect()
    }

    /// The chain of one route's `filters`; `Err((n, why))` for the `n`-th entry.
    pub fn chain(
        &self,
        route: &str,
        settings: &[FilterSettings],
    ) -> Result<FilterChain, (usize, String)> {
        let mut chain = FilterChain::default();
        for (n, entry) in settings.iter().enumerate() {
            let Some(factory) = self.factories.get(&entry.name) else {
                let offered: Vec<&str> = self.factories.keys().map(String::as_str).collect();
                let offered = match offered.is_empty() {
                    true => "none: filters come with a binary built from the intercom library"
                        .to_string(),
                    false => offered.join(", "),
                };
                return Err((
                    n,
                    format!(
                        "no filter {:?} in this binary (registered: {offered})",
                        entry.name
                    ),
                ));
            };
            let filter = factory(entry).map_err(|why| (n, why))?;
            let refusals = metrics::counter!(
                "intercom_filter_refusals_total",
                "route" => route.to_string(),
                "filter" => entry.name.clone(),
            );
            let named = Named {
                name: Arc::from(entry.name.as_str()),
                filter,
                refusals,
            };
            for phase in named.filter.phases().to_vec() {
                let list = match phase {
                    Phase::Authenticated => &mut chain.authenticated,
                    Phase::BeforeForwarding => &mut chain.before_forwarding,
                    Phase::Response => &mut chain.response,
                };
                if !list.iter().any(|n| Arc::ptr_eq(&n.filter, &named.filter)) {
                    list.push(named.clone());
                }
            }
        }
        Ok(chain)
    }
}

/// A filter with its name and its refusal counter.
#[derive(Clone)]
struct Named {
    name: Arc<str>,
    filter: Arc<dyn Filter>,
    refusals: metrics::Counter,
}

/// A filter's refusal, with the filter's name (for the access log).
#[derive(Debug, Clone)]
pub struct FilterRefusal {
    pub filter: Arc<str>,
    pub phase: Phase,
    pub refusal: Refusal,
}

impl std::fmt::Display for FilterRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.refusal.detail())
    }
}

/// A route's filters by phase, in configuration order.
#[derive(Clone, Default)]
pub struct FilterChain {
    authenticated: Vec<Named>,
    before_forwarding: Vec<Named>,
    response: Vec<Named>,
}

impl std::fmt::Debug for FilterChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |list: &[Named]| list.iter().map(|n| n.name.to_string()).collect::<Vec<_>>();
        f.debug_struct("FilterChain")
            .field("authenticated", &names(&self.authenticated))
            .field("before_forwarding", &names(&self.before_forwarding))
            .field("response", &names(&self.response))
            .finish()
    }
}

impl FilterChain {
    /// Some filter runs at `phase`.
    pub fn runs_at(&self, phase: Phase) -> bool {
        !match phase {
            Phase::Authenticated => &self.authenticated,
            Phase::BeforeForwarding => &self.before_forwarding,
            Phase::Response => &self.response,
        }
        .is_empty()
    }

    /// The names of the filters that run at `phase`, in order.
    pub fn names(&self, phase: Phase) -> Vec<&str> {
        match phase {
            Phase::Authenticated => &self.authenticated,
            Phase::BeforeForwarding => &self.before_forwarding,
            Phase::Response => &self.response,
        }
        .iter()
        .map(|n| n.name.as_ref())
        .collect()
    }

    /// Runs the [`Phase::Authenticated`] filters; the first refusal ends the chain.
    pub async fn authenticated(&self, request: &FilterRequest<'_>) -> Result<(), FilterRefusal> {
        for named in &self.authenticated {
            named
                .filter
                .authenticated(request)
                .await
                .map_err(|refusal| named.refused(Phase::Authenticated, refusal))?;
        }
        Ok(())
    }

    /// Runs the [`Phase::BeforeForwarding`] filters on the outbound headers.
    pub async fn before_forwarding(
        &self,
        request: &FilterRequest<'_>,
        upstream: &mut HeaderMap,
    ) -> Result<(), FilterRefusal> {
        for named in &self.before_forwarding {
            named
                .filter
                .before_forwarding(request, upstream)
                .await
                .map_err(|refusal| named.refused(Phase::BeforeForwarding, refusal))?;
        }
        Ok(())
    }

    /// Runs the [`Phase::Response`] filters on the answer's headers.
    pub fn on_response(
        &self,
        request: &FilterRequest<'_>,
        status: StatusCode,
        headers: &mut HeaderMap,
    ) {
        for named in &self.response {
            named.filter.on_response(request, status, headers);
        }
    }
}

impl Named {
    fn refused(&self, phase: Phase, refusal: Refusal) -> FilterRefusal {
        self.refusals.increment(1);
        tracing::debug!(filter = %self.name, phase = phase.as_str(), status = refusal.status().as_u16(), "a filter refused the request");
        FilterRefusal {
            filter: self.name.clone(),
            phase,
            refusal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Stamp;

    #[async_trait::async_trait(?Send)]
    impl Filter for Stamp {
        fn phases(&self) -> &[Phase] {
            &[Phase::BeforeForwarding, Phase::Response]
        }
    }

    fn entry(name: &str) -> FilterSettings {
        FilterSettings {
            name: name.into(),
            claims: vec![],
            config: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_filter_goes_only_into_the_phases_it_declares() {
        let registry = FilterRegistry::new().register("stamp", |_| Ok(Arc::new(Stamp)));
        let chain = registry.chain("r", &[entry("stamp")]).unwrap();
        assert!(!chain.runs_at(Phase::Authenticated));
        assert!(chain.runs_at(Phase::BeforeForwarding));
        assert!(chain.runs_at(Phase::Response));
    }

    #[test]
    fn an_unknown_name_or_a_bad_config_names_the_entry() {
        let registry = FilterRegistry::new()
            .register("stamp", |_| Ok(Arc::new(Stamp)))
            .register("picky", |_| Err("config.pattern is required".into()));
        let (n, why) = registry
            .chain("r", &[entry("stamp"), entry("nope")])
            .unwrap_err();
        assert_eq!(n, 1);
        assert!(
            why.contains("\"nope\"") && why.contains("registered: picky, stamp"),
            "{why}"
        );
        let (n, why) = registry.chain("r", &[entry("picky")]).unwrap_err();
        assert_eq!((n, why.as_str()), (0, "config.pattern is required"));
        let (_, why) = FilterRegistry::new().chain("r", &[entry("x")]).unwrap_err();
        assert!(why.contains("registered: none"), "{why}");
    }

    #[test]
    fn a_refusal_is_always_a_client_error() {
        assert_eq!(
            Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "x").status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            Refusal::new(StatusCode::NOT_FOUND, "x").status(),
            StatusCode::NOT_FOUND
        );
    }
}
