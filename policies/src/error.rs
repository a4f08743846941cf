//! Errors raised by the policy layers themselves. Small types with `is`-able identities;
//! the gateway's edge maps each to a status (see `gateway/src/error.rs`).

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The whole call, retries included.
    Total,
    /// One attempt.
    PerTry,
}

impl std::fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutKind::Total => "total",
            TimeoutKind::PerTry => "per try",
        })
    }
}

/// A timeout elapsed. Edge: 504.
#[derive(Debug, thiserror::Error)]
#[error("{kind} timeout of {after:?} elapsed")]
pub struct Elapsed {
    pub kind: TimeoutKind,
    pub after: Duration,
}

/// The circuit breaker of every usable endpoint is open. Edge: 503 with `Retry-After`.
#[derive(Debug, thiserror::Error)]
#[error("circuit breaker open for {target}")]
pub struct BreakerOpen {
    pub target: String,
    pub retry_after: Duration,
}

/// No endpoint is usable (all unhealthy, or none configured). Edge: 503.
#[derive(Debug, thiserror::Error)]
#[error("no healthy endpoint for {target}")]
pub struct NoEndpoint {
    pub target: String,
}

/// The concurrency limit (bulkhead) is full. Edge: 503 with `Retry-After`.
#[derive(Debug, thiserror::Error)]
#[error("concurrency limit of {limit} reached")]
pub struct Overloaded {
    pub limit: usize,
}

/// The rate limit refused the call. Edge: 429 with `Retry-After`.
#[derive(Debug, thiserror::Error)]
#[error("rate limit exceeded")]
pub struct RateLimited {
    pub retry_after: Duration,
}

/// A fault was injected. Edge: `status` when set, 500 otherwise (for HTTP); other
/// channels map it to their own error form.
#[derive(Debug, thiserror::Error)]
#[error("fault injected: {message}")]
pub struct FaultAbort {
    pub status: Option<u16>,
    pub message: String,
}
