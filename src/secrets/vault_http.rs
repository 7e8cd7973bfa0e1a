//! The Vault store's transport: `vaultrs`'s endpoints (the request shapes, the response
//! types, its token and namespace middleware) sent through a reqwest client whose
//! answers are read with a size limit ([`crate::bounded`]). `vaultrs`'s own client reads
//! whole bodies and takes no other transport, so Intercom executes the endpoints itself.

use rustify::endpoint::Endpoint;
use rustify::errors::ClientError as RestError;
use serde::de::DeserializeOwned;
use vaultrs::api::{AuthInfo, EndpointMiddleware, EndpointResult};

/// Why a Vault call failed, with the cause an operator needs; never the body (a secret
/// read's body holds the secret).
#[derive(Debug, thiserror::Error)]
pub enum VaultCallError {
    #[error("not found")]
    NotFound,
    #[error("vault answered {0}")]
    Status(u16),
    #[error("{0}")]
    Transport(String),
    #[error("{0}")]
    Unread(crate::bounded::ReadError),
    #[error("the answer could not be parsed: {0}")]
    Parse(String),
    #[error("the answer has no {0}")]
    Empty(&'static str),
}

impl VaultCallError {
    /// An answer that does not parse, said without quoting it: serde's messages quote
    /// the value they did not expect, and in a secret's answer that value is the secret.
    pub fn unparsable(error: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        let what = match error.classify() {
            Category::Syntax => "is not JSON",
            Category::Data => "does not have the expected shape",
            Category::Eof => "is cut short",
            Category::Io => "could not be read",
        };
        Self::Parse(format!(
            "{what} (line {}, column {})",
            error.line(),
            error.column()
        ))
    }

    /// An endpoint that could not be built from its arguments.
    pub fn unbuilt(e: impl std::fmt::Display) -> Self {
        Self::Transport(format!("the request could not be built: {e}"))
    }
}

impl From<RestError> for VaultCallError {
    fn from(e: RestError) -> Self {
        match e {
            RestError::ServerResponseError { code: 404, .. } => Self::NotFound,
            RestError::ServerResponseError { code, .. } => Self::Status(code),
            RestError::ResponseParseError { source, .. } => match source.downcast_ref() {
                Some(json) => Self::unparsable(json),
                None => Self::Parse("the answer could not be parsed".into()),
            },
            RestError::ResponseError { source } => match source.downcast() {
                Ok(unread) => Self::Unread(unread),
                Err(source) => Self::Transport(format!("{source:#}")),
            },
            RestError::RequestError { source, .. } | RestError::GenericError { source } => {
                Self::Transport(format!("{source:#}"))
            }
            other => Self::Transport(other.to_string()),
        }
    }
}

/// A reqwest client for one Vault address: no redirects, the configured timeout, answers
/// of at most [`crate::bounded::MAX_ANSWER_BYTES`].
pub struct VaultHttp {
    base: String,
    http: reqwest::Client,
}

impl VaultHttp {
    pub fn new(base: &str, http: reqwest::Client) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            http,
        }
    }

    /// `GET /v1/sys/health` as plain HTTP (`vaultrs::sys::health` cannot parse OpenBao's
    /// answer, which lacks `performance_standby`): true when Vault answers unsealed.
    pub async fn healthy(&self) -> bool {
        let url = format!("{}/v1/sys/health", self.base);
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }

    /// Executes an endpoint and reads Vault's usual envelope around its answer.
    async fn wrapped<E>(
        &self,
        middleware: &EndpointMiddleware,
        endpoint: E,
    ) -> Result<EndpointResult<E::Response>, VaultCallError>
    where
        E: Endpoint,
        E::Response: DeserializeOwned,
    {
        Ok(endpoint
            .with_middleware(middleware)
            .exec(self)
            .await?
            .wrap::<EndpointResult<_>>()?)
    }

    /// Executes an endpoint whose answer carries its result in `data`.
    pub async fn data<E>(
        &self,
        middleware: &EndpointMiddleware,
        endpoint: E,
    ) -> Result<E::Response, VaultCallError>
    where
        E: Endpoint,
        E::Response: DeserializeOwned,
    {
        let answer = self.wrapped(middleware, endpoint).await?;
        answer.data.ok_or(VaultCallError::Empty("data"))
    }

    /// Executes an endpoint whose whole answer is its result (KV v1).
    pub async fn raw<E>(
        &self,
        middleware: &EndpointMiddleware,
        endpoint: E,
    ) -> Result<E::Response, VaultCallError>
    where
        E: Endpoint,
    {
        Ok(endpoint
            .with_middleware(middleware)
            .exec(self)
            .await?
            .parse()?)
    }

    /// Executes a login or renewal, whose result is in `auth`.
    pub async fn auth<E>(
        &self,
        middleware: &EndpointMiddleware,
        endpoint: E,
    ) -> Result<AuthInfo, VaultCallError>
    where
        E: Endpoint<Response = ()>,
    {
        let answer = self.wrapped(middleware, endpoint).await?;
        answer.auth.ok_or(VaultCallError::Empty("auth"))
    }
}

#[async_trait::async_trait]
impl rustify::client::Client for VaultHttp {
    fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        request: http1::Request<Vec<u8>>,
    ) -> Result<http1::Response<Vec<u8>>, RestError> {
        let generic = |e: reqwest::Error| RestError::GenericError { source: e.into() };
        let request = reqwest::Request::try_from(request).map_err(generic)?;
        let (url, method) = (
            request.url().path().to_string(),
            request.method().to_string(),
        );
        let response = self
            .http
            .execute(request)
            .await
            .map_err(|e| RestError::RequestError {
                source: anyhow::Error::new(e),
                url,
                method,
            })?;
        let mut answer = http1::Response::builder().status(response.status());
        for (name, value) in response.headers() {
            answer = answer.header(name, value);
        }
        let body = crate::bounded::read_limited(response)
            .await
            .map_err(|e| RestError::ResponseError { source: e.into() })?;
        answer
            .body(body)
            .map_err(|e| RestError::ResponseError { source: e.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parse_error_never_quotes_the_answer() {
        let error = serde_json::from_str::<std::collections::HashMap<String, u32>>(
            r#"{"api_key": "hunter2-secret"}"#,
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("hunter2-secret"),
            "serde quotes it"
        );
        let said = VaultCallError::unparsable(&error).to_string();
        assert!(!said.contains("hunter2"), "{said}");
        assert!(said.contains("expected shape"), "{said}");
    }
}
