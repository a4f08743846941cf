//! Retry: exponential backoff with full jitter, a budget, and only safe retries.

pub mod backoff;
pub mod budget;

pub use backoff::Backoff;
pub use budget::Budget;

use crate::classify::{Classify, Replay};
use crate::metrics::Metrics;
use crate::spec::RetrySpec;
use crate::{BoxError, Target};
use futures_util::future::BoxFuture;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

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
        let _ = (&self.inner, &self.layer, req);
        todo!("retry")
    }
}
