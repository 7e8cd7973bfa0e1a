//! Answers from the services Intercom calls (the authorization server, Vault), read
//! with a size limit: a hostile or broken peer costs an error, not a worker's memory.

/// The largest answer read from a peer (token, introspection, JWKS, revocation, a
/// Vault secret).
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the answer is larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    #[error("the answer broke off")]
    Broken,
}

/// Reads a whole answer of at most [`MAX_ANSWER_BYTES`], refusing a larger one as soon
/// as its length (announced or received) passes the limit.
pub async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, ReadError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER_BYTES as u64)
    {
        return Err(ReadError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|_| ReadError::Broken)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(ReadError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
