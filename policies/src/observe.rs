//! The outermost layer: counts calls by outcome, times them, tracks calls in flight.

use crate::classify::Classify;
use crate::metrics::Metrics;
use crate::{BoxError, Target};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

#[derive(Clone)]
pub struct ObserveLayer<C> {
    target: Target,
    metrics: Arc<Metrics>,
    classify: C,
}

impl<C> ObserveLayer<C> {
    pub fn new(target: Target, metrics: Arc<Metrics>, classify: C) -> Self {
        Self {
            target,
            metrics,
            classify,
        }
    }
}

impl<S, C: Clone> Layer<S> for ObserveLayer<C> {
    type Service = Observe<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S, C> {
    inner: S,
    layer: ObserveLayer<C>,
}

/// The `outcome` label for a finished call.
pub fn outcome<T, C: Classify<T>>(classify: &C, result: &Result<T, BoxError>) -> &'static str {
    let _ = (classify, result);
    todo!("outcome")
}

impl<S, Req, C> Service<Req> for Observe<S, C>
where
    S: Service<Req, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let _ = (&self.layer, req);
        todo!("observe")
    }
}
