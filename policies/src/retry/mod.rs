//! Retry: exponential backoff with full jitter, a budget, and only safe retries.
//!
//! # When is a retry safe
//!
//! Sending a request twice is only harmless when the backend cannot have acted on the
//! first copy, or when acting twice is the same as acting once:
//!
//! 1. **Connect phase, always** ([`Class::NotSent`]): the connection was refused, DNS or
//!    the TLS handshake failed, the broker refused or could not route the message.
//!    Nothing reached the backend, so another attempt cannot double anything.
//! 2. **After a send, only idempotent requests** ([`Class::Sent`] with
//!    [`Replay::idempotent`]): a 5xx, a reset mid-response, a per-try timeout. The backend
//!    may have done the work; a GET or a target the config marks idempotent can be sent
//!    again, a POST or a SQL statement inside a transaction cannot.
//! 3. **Never** for a success or a [`Class::Local`] refusal (breaker open, no endpoint,
//!    an injected fault, the total timeout): the gateway itself said no, and asking again
//!    at once would get the same answer.
//!
//! And even then only when the request can be sent again ([`Replay::replay`] gave a copy
//! before the first send), attempts remain (`attempts` counts the first one), and the
//! [`Budget`] has a retry left.

pub mod backoff;
pub mod budget;

pub use backoff::Backoff;
pub use budget::Budget;

use crate::classify::{classify_policy_error, Class, Classify, Replay};
use crate::metrics::Metrics;
use crate::spec::RetrySpec;
use crate::{BoxError, Target};
use futures_util::future::BoxFuture;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service, ServiceExt};

pub struct RetryLayer<C, R> {
    spec: RetrySpec,
    budget: Arc<Budget>,
    classify: C,
    replay: R,
    target: Target,
    metrics: Arc<Metrics>,
}

impl<C: Clone, R: Clone> Clone for RetryLayer<C, R> {
    fn clone(&self) -> Self {
        Self {
            spec: self.spec.clone(),
            budget: self.budget.clone(),
            classify: self.classify.clone(),
            replay: self.replay.clone(),
            target: self.target.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<C, R> RetryLayer<C, R> {
    /// `budget` is shared by every clone of the target's stack (one budget per target).
    pub fn new(
        spec: &RetrySpec,
        budget: Arc<Budget>,
        classify: C,
        replay: R,
        target: Target,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            spec: spec.clone(),
            budget,
            classify,
            replay,
            target,
            metrics,
        }
    }
}

impl<S, C: Clone, R: Clone> Layer<S> for RetryLayer<C, R> {
    type Service = Retry<S, C, R>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            layer: self.clone(),
            _p: PhantomData,
        }
    }
}

pub struct Retry<S, C, R> {
    inner: S,
    layer: RetryLayer<C, R>,
    _p: PhantomData<fn()>,
}

impl<S: Clone, C: Clone, R: Clone> Clone for Retry<S, C, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
            _p: PhantomData,
        }
    }
}

impl<S, Req, C, R> Service<Req> for Retry<S, C, R>
where
    S: Service<Req, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
    C: Classify<S::Response>,
    R: Replay<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Readiness is awaited inside the future for every attempt (including the first),
        // on a clone, so `poll_ready` never has to reserve anything for us.
        let mut svc = self.inner.clone();
        let layer = self.layer.clone();
        Box::pin(async move {
            let RetryLayer {
                spec,
                budget,
                classify,
                replay,
                target,
                metrics,
            } = layer;
            let labels = [target.channel, &*target.name];
            let attempts = spec.attempts.max(1);
            let backoff = Backoff::new(spec.backoff, spec.max_backoff);
            budget.deposit();

            let mut req = req;
            let mut attempt: u32 = 1;
            loop {
                // The request is moved into the call, so the copy for the next attempt
                // (and whether it is idempotent) must be taken before sending.
                let idempotent = replay.idempotent(&req);
                let next = if attempt < attempts {
                    replay.replay(&req)
                } else {
                    None
                };
                let result = match svc.ready().await {
                    Ok(ready) => ready.call(req).await,
                    Err(e) => Err(e),
                };
                let class = class_of(&classify, &result);
                let Some(next) = next else {
                    return result;
                };
                if !class.retry_safe(idempotent) {
                    return result;
                }
                if !budget.withdraw() {
                    metrics.budget_exhausted.with_label_values(&labels).inc();
                    tracing::debug!(target = %target, attempt, "retry budget exhausted");
                    return result;
                }
                let delay = backoff.delay(attempt);
                tracing::debug!(target = %target, attempt, ?class, ?delay, "retrying");
                drop(result);
                tokio::time::sleep(delay).await;
                metrics.retries.with_label_values(&labels).inc();
                attempt += 1;
                req = next;
            }
        })
    }
}

/// Errors raised by our own layers below (per-try timeout, breaker open) are classified
/// here; everything else by the adapter's [`Classify`].
fn class_of<T, C: Classify<T>>(classify: &C, result: &Result<T, BoxError>) -> Class {
    if let Err(e) = result {
        if let Some(class) = classify_policy_error(e) {
            return class;
        }
    }
    classify.classify(result)
}
