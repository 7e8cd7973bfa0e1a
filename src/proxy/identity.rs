//! Identity on the way upstream: the client's token replaced with the internal JWT and
//! identity headers (the token itself is found by [`crate::http::credentials`]). Client-sent copies of the
//! identity headers are removed in every spelling, on every route.

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::headers::{normalize_name, remove_spellings};
use crate::broker::edge::Admitted;
use crate::settings::TokenSettings;

/// The names of the identity headers Intercom sets.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    user_id: HeaderName,
    client_id: HeaderName,
    scopes: HeaderName,
    normalized: [String; 3],
}

impl IdentityHeaders {
    pub fn from_settings(t: &TokenSettings) -> Self {
        Self {
            user_id: t.user_id_header.clone(),
            client_id: t.client_id_header.clone(),
            scopes: t.scopes_header.clone(),
            normalized: [
                normalize_name(t.user_id_header.as_str()),
                normalize_name(t.client_id_header.as_str()),
                normalize_name(t.scopes_header.as_str()),
            ],
        }
    }

    /// Removes client-sent identity headers and the route's internal headers.
    pub fn strip(&self, headers: &mut HeaderMap, internal: &[String]) {
        let names = self.normalized.iter().chain(internal).map(String::as_str);
        remove_spellings(headers, names);
    }

    /// Replaces the client's token with the internal JWT and adds identity headers.
    pub fn inject(&self, headers: &mut HeaderMap, admitted: &Admitted) {
        headers.insert(header::AUTHORIZATION, admitted.bearer.clone());
        let values = &admitted.token.identity;
        let mut set = |name: &HeaderName, value: &Option<HeaderValue>| {
            if let Some(v) = value {
                headers.insert(name.clone(), v.clone());
            }
        };
        set(&self.user_id, &values.sub);
        set(&self.client_id, &values.client_id);
        set(&self.scopes, &values.scopes);
    }
}
