//! Errors of the HTTP adapter.

/// The upstream could not be reached: nothing was sent (safe to retry). Edge: 502.
#[derive(Debug, thiserror::Error)]
#[error("upstream {endpoint} unreachable")]
pub struct ConnectError {
    pub endpoint: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// The request failed after it may have reached the upstream. Edge: 502.
#[derive(Debug, thiserror::Error)]
#[error("upstream {endpoint} failed")]
pub struct UpstreamError {
    pub endpoint: String,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// An upstream spec that cannot be built (bad URL, unreadable CA file).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct BuildError {
    pub key: String,
    pub message: String,
}

/// The client's request body failed while it was being read for the replay buffer (the
/// client went away or sent a malformed body). Nothing was sent upstream. Edge: 400.
#[derive(Debug, thiserror::Error)]
#[error("client request body failed")]
pub struct BodyError {
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}
