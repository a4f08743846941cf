//! Classify once, react many times: each adapter turns its own results into a [`Class`];
//! retry, breaker and metrics read only the class, never the protocol.

use crate::BoxError;

/// How one call to a backend went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// The backend did its job (for HTTP: any status below 500, the client's 4xx included).
    Success,
    /// A backend failure where nothing reached the backend (connection refused, DNS,
    /// TLS handshake, a broker that refused or could not route the message).
    /// Always safe to retry.
    NotSent,
    /// A backend failure after the request may have reached it (5xx, reset mid-response,
    /// per-try timeout). Safe to retry only when the request is idempotent.
    Sent,
    /// Neither a success nor a failure of the backend: the gateway itself refused
    /// (breaker open, no endpoint available, a fault injected above, cancellation).
    /// Not counted by the breaker, never retried.
    Local,
}

impl Class {
    /// Whether the breaker counts this as a failure of the backend.
    pub fn is_failure(self) -> bool {
        matches!(self, Class::NotSent | Class::Sent)
    }

    /// Whether another attempt is safe for a request that is (or is not) idempotent.
    pub fn retry_safe(self, idempotent: bool) -> bool {
        match self {
            Class::NotSent => true,
            Class::Sent => idempotent,
            Class::Success | Class::Local => false,
        }
    }
}

/// Implemented by each adapter for its own response type. Errors raised by this crate's
/// own layers (see [`crate::error`]) should be classified with [`classify_policy_error`]
/// first.
pub trait Classify<T>: Clone + Send + Sync + 'static {
    fn classify(&self, result: &Result<T, BoxError>) -> Class;
}

/// Implemented by each adapter for its own request type: how to send a request again.
///
/// In two steps, so an adapter can defer the copy until a retry needs it: before an
/// attempt that may be followed by another, [`Replay::replay`] says whether the request
/// can be sent again and keeps what that takes (most adapters: a copy); after the
/// attempt failed and a retry is decided, [`Replay::again`] makes the request from it.
pub trait Replay<Req>: Clone + Send + Sync + 'static {
    /// What is kept, before an attempt, to send the request again after it.
    type Kept: Send + 'static;
    /// What the next attempt will need, or `None` when the request cannot be sent again
    /// (for HTTP: a streaming body larger than the replay buffer).
    fn replay(&self, req: &Req) -> Option<Self::Kept>;
    /// The request for the next attempt, from what [`Replay::replay`] kept; `None` when
    /// it cannot be made after all (then the failed attempt's result stands).
    fn again(&self, kept: Self::Kept) -> Option<Req>;
    /// Whether sending this request twice is harmless (idempotent method, or a target the
    /// config marks `idempotent = true`).
    fn idempotent(&self, req: &Req) -> bool;
}

/// The class of an error raised by one of this crate's layers, or `None` when the error
/// is not one of ours (the adapter classifies it then).
pub fn classify_policy_error(err: &BoxError) -> Option<Class> {
    use crate::error::*;
    if let Some(e) = err.downcast_ref::<Elapsed>() {
        return Some(match e.kind {
            TimeoutKind::PerTry => Class::Sent,
            TimeoutKind::Total => Class::Local,
        });
    }
    if err.is::<BreakerOpen>()
        || err.is::<Overloaded>()
        || err.is::<RateLimited>()
        || err.is::<FaultAbort>()
        || err.is::<NoEndpoint>()
    {
        return Some(Class::Local);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::*;
    use std::time::Duration;

    fn boxed(e: impl std::error::Error + Send + Sync + 'static) -> BoxError {
        Box::new(e)
    }

    #[test]
    fn policy_errors_have_their_class() {
        let per_try = Elapsed {
            kind: TimeoutKind::PerTry,
            after: Duration::from_secs(1),
        };
        assert_eq!(classify_policy_error(&boxed(per_try)), Some(Class::Sent));
        let total = Elapsed {
            kind: TimeoutKind::Total,
            after: Duration::from_secs(1),
        };
        assert_eq!(classify_policy_error(&boxed(total)), Some(Class::Local));
        let locals = [
            boxed(BreakerOpen {
                target: "t".into(),
                retry_after: Duration::ZERO,
            }),
            boxed(Overloaded { limit: 1 }),
            boxed(RateLimited {
                retry_after: Duration::ZERO,
            }),
            boxed(FaultAbort {
                status: Some(500),
                message: "m".into(),
            }),
            boxed(NoEndpoint { target: "t".into() }),
        ];
        for e in &locals {
            assert_eq!(classify_policy_error(e), Some(Class::Local), "{e}");
        }
        assert_eq!(classify_policy_error(&"other".into()), None);
    }

    #[test]
    fn retry_safety_follows_the_class() {
        assert!(Class::NotSent.retry_safe(false));
        assert!(Class::Sent.retry_safe(true));
        assert!(!Class::Sent.retry_safe(false));
        assert!(!Class::Success.retry_safe(true));
        assert!(!Class::Local.retry_safe(true));
        assert!(Class::Sent.is_failure() && Class::NotSent.is_failure());
        assert!(!Class::Local.is_failure() && !Class::Success.is_failure());
    }
}
