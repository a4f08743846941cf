//! Quartet's resilience policies.
//!
//! Every call on every channel (REST, RPC, SQL, native API) passes the same layers, in
//! the order decided by the gateway's `stack.rs`:
//!
//! ```text
//! observe -> rate limit -> concurrency limit (fail fast) -> fault injection
//!   -> total timeout -> retry (budget + jittered backoff, only safe retries)
//!      -> [balancer] -> circuit breaker (one per backend endpoint) -> per-try timeout -> adapter
//! ```
//!
//! This crate never touches a socket and knows no protocol. Each adapter tells it how its
//! results went through [`classify::Classify`], and how to send a request again through
//! [`classify::Replay`]. State machines (breaker, budget) take the current time as an
//! argument so they are tested with plain `#[test]`s or paused tokio time.

pub mod access;
pub mod auth;
pub mod breaker;
pub mod classify;
pub mod duration;
pub mod error;
pub mod fault;
pub mod future;
pub mod head;
pub mod limit;
pub mod metrics;
pub mod observe;
pub mod retry;
pub mod shared;
pub mod spec;
pub mod timeout;

/// The error type that flows through the stack: typed at the leaves, boxed in the trunk,
/// mapped once at the gateway's edge.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub use shared::SharedStack;

/// Calls a service of a policy stack without first waiting for it to be ready.
///
/// Every layer of the stack is always ready: a layer that refuses (an open breaker, a
/// full bulkhead, a rate limit) does so in `call`, at once, and never reserves anything
/// in `poll_ready`, which only walks down the chain to say `Ready`. On the REST hot path
/// that walk, and the `Oneshot` around it, cost as much as a layer. Debug builds check
/// the invariant.
pub fn call_ready<S, Req>(svc: &mut S, req: Req) -> S::Future
where
    S: tower::Service<Req>,
{
    #[cfg(debug_assertions)]
    {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            matches!(svc.poll_ready(&mut cx), std::task::Poll::Ready(Ok(()))),
            "a policy stack's service must always be ready"
        );
    }
    svc.call(req)
}

/// What a policy is attached to: a channel (`"rest"`, `"rpc"`, `"sql"`, `"native"`) and
/// the target's name within it (a route's upstream, an RPC topic, a SQL backend, a driver).
/// Used for metric labels, admin keys and error messages.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub channel: &'static str,
    pub name: std::sync::Arc<str>,
}

impl Target {
    pub fn new(channel: &'static str, name: impl Into<std::sync::Arc<str>>) -> Self {
        Self {
            channel,
            name: name.into(),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.channel, self.name)
    }
}

/// Shared helpers for the unit tests: a response that says how it went, and a request
/// that says whether it can be replayed and whether it is idempotent.
#[cfg(test)]
pub(crate) mod test_util {
    use crate::classify::{classify_policy_error, Class, Classify, Replay};
    use crate::BoxError;

    /// Classifies `Ok(class)` as `class`, our own errors with
    /// [`classify_policy_error`], and any other error as `NotSent`.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct TestClassify;

    impl Classify<Class> for TestClassify {
        fn classify(&self, result: &Result<Class, BoxError>) -> Class {
            match result {
                Ok(class) => *class,
                Err(e) => classify_policy_error(e).unwrap_or(Class::NotSent),
            }
        }
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct TestReq {
        pub idempotent: bool,
        pub replayable: bool,
    }

    #[derive(Clone, Copy, Debug, Default)]
    pub struct TestReplay;

    impl Replay<TestReq> for TestReplay {
        type Kept = TestReq;
        fn replay(&self, req: &TestReq) -> Option<TestReq> {
            req.replayable.then_some(*req)
        }
        fn again(&self, kept: TestReq) -> Option<TestReq> {
            Some(kept)
        }
        fn idempotent(&self, req: &TestReq) -> bool {
            req.idempotent
        }
    }
}
