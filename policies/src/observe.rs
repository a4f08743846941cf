//! The outermost layer: counts calls by outcome, times them, tracks calls in flight.

use crate::classify::{Class, Classify};
use crate::error::{BreakerOpen, Elapsed, FaultAbort, NoEndpoint, Overloaded, RateLimited};
use crate::metrics::Metrics;
use crate::{BoxError, Target};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
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
    if let Err(err) = result {
        // Our own errors may arrive wrapped by another layer: look down the source chain.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&**err);
        while let Some(e) = cause {
            if e.is::<Elapsed>() {
                return "timeout";
            }
            if e.is::<BreakerOpen>() {
                return "breaker_open";
            }
            if e.is::<Overloaded>() {
                return "overloaded";
            }
            if e.is::<RateLimited>() {
                return "rate_limited";
            }
            if e.is::<FaultAbort>() {
                return "fault";
            }
            if e.is::<NoEndpoint>() {
                return "no_endpoint";
            }
            cause = e.source();
        }
    }
    match classify.classify(result) {
        Class::Success => "success",
        // A `Local` that is none of ours above is still a call that did not succeed.
        Class::NotSent | Class::Sent | Class::Local => "failure",
    }
}

/// Takes a call out of `quartet_in_flight` when it ends, however it ends (dropped too).
struct InFlight {
    gauge: prometheus::IntGauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.dec();
    }
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
        let ObserveLayer {
            target,
            metrics,
            classify,
        } = self.layer.clone();
        let labels = [target.channel, &*target.name];
        let gauge = metrics.in_flight.with_label_values(&labels);
        gauge.inc();
        let in_flight = InFlight { gauge };
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            let labels = [target.channel, &*target.name];
            metrics
                .duration
                .with_label_values(&labels)
                .observe(start.elapsed().as_secs_f64());
            let outcome = outcome(&classify, &result);
            metrics
                .requests
                .with_label_values(&[labels[0], labels[1], outcome])
                .inc();
            drop(in_flight);
            result
        })
    }
}
