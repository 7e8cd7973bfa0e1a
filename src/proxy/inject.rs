//! Credential injection: a route's upstream gets a credential from the secret store
//! (a bearer token, an API key header, basic auth) in place of whatever the client sent
//! in that header, never merged with it.

use std::sync::Arc;

use actix_web::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use base64::Engine;

use crate::secrets::registry::{SecretCell, SecretRegistry};
use crate::secrets::Secret;
use crate::settings::InjectSettings;

#[derive(Debug, Clone)]
enum Kind {
    Bearer,
    Header(HeaderName),
    Basic(String),
}

/// A route's injected credential.
pub struct Injection {
    kind: Kind,
    pub cell: Arc<SecretCell>,
}

impl std::fmt::Debug for Injection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injection")
            .field("kind", &self.kind)
            .field("secret", &self.cell.name)
            .finish()
    }
}

impl Injection {
    /// `None` if the reference was not resolved (settings validation prevents that).
    pub fn new(settings: &InjectSettings, secrets: &SecretRegistry) -> Option<Self> {
        let reference = crate::secrets::SecretRef::parse(settings.secret()).ok()?;
        let cell = secrets.cell(&reference.to_string())?;
        let kind = match settings {
            InjectSettings::Bearer { .. } => Kind::Bearer,
            InjectSettings::Header { header, .. } => {
                Kind::Header(HeaderName::from_bytes(header.to_ascii_lowercase().as_bytes()).ok()?)
            }
            InjectSettings::Basic { username, .. } => Kind::Basic(username.clone()),
        };
        Some(Self { kind, cell })
    }

    fn header(&self) -> HeaderName {
        match &self.kind {
            Kind::Header(name) => name.clone(),
            _ => header::AUTHORIZATION,
        }
    }

    /// Sets the credential, replacing the client's copy of the header.
    pub fn apply(&self, headers: &mut HeaderMap, secret: &Secret) {
        let text = match &self.kind {
            Kind::Bearer => format!("Bearer {}", secret.expose()),
            Kind::Header(_) => secret.expose().to_string(),
            Kind::Basic(user) => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", secret.expose()))
            ),
        };
        let name = self.header();
        headers.remove(&name);
        if let Ok(mut value) = HeaderValue::from_str(&text) {
            value.set_sensitive(true);
            headers.insert(name, value);
        } else {
            tracing::error!(secret = %self.cell.name, "the secret is not a valid header value; not sent");
        }
    }

    /// After the upstream refused `sent` with 401: the value to try once more, if any.
    /// The store is asked again first (the secret may have rotated since the last
    /// poll); otherwise the value before the last rotation is tried.
    pub async fn retry_value(&self, sent: &Secret, secrets: &SecretRegistry) -> Option<Secret> {
        secrets.refresh(&self.cell).await;
        let current = self.cell.current();
        if current != *sent {
            return Some(current);
        }
        self.cell.previous().filter(|p| p != sent)
    }
}
