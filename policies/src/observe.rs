//! The outermost layer: counts calls by outcome, times them, tracks calls in flight.

use crate::classify::{Class, Classify};
use crate::error::{BreakerOpen, Elapsed, FaultAbort, NoEndpoint, Overloaded, RateLimited};
use crate::future::{LayerFuture, OnDone};
use crate::metrics::Metrics;
use crate::{BoxError, Target};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::time::Instant;
use tower::{Layer, Service};

#[derive(Clone)]
pub struct ObserveLayer<C> {
    target: Target,
    metrics: Arc<Metrics>,
    classify: C,
    /// The target's metric handles, resolved once: a label lookup per call costs a hash
    /// of the labels and a lock in the registry.
    handles: Arc<Handles>,
}

struct Handles {
    in_flight: prometheus::IntGauge,
    duration: prometheus::Histogram,
    success: prometheus::IntCounter,
    failure: prometheus::IntCounter,
}

impl<C> ObserveLayer<C> {
    pub fn new(target: Target, metrics: Arc<Metrics>, classify: C) -> Self {
        let labels = [target.channel, &*target.name];
        let outcome = |o: &str| {
            metrics
                .requests
                .with_label_values(&[labels[0], labels[1], o])
        };
        let handles = Arc::new(Handles {
            in_flight: metrics.in_flight.with_label_values(&labels),
            duration: metrics.duration.with_label_values(&labels),
            success: outcome("success"),
            failure: outcome("failure"),
        });
        Self {
            target,
            metrics,
            classify,
            handles,
        }
    }
}

impl<S, C: Clone> Layer<S> for ObserveLayer<C> {
    type Service = Observe<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            layer: Arc::new(self.clone()),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S, C> {
    inner: S,
    /// One reference count per call, not one per field.
    layer: Arc<ObserveLayer<C>>,
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

impl<S, Req, C> Service<Req> for Observe<S, C>
where
    S: Service<Req, Error = BoxError>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, Record<C>, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.layer.handles.in_flight.inc();
        let record = Record {
            layer: self.layer.clone(),
            start: Instant::now(),
        };
        LayerFuture::calling(self.inner.call(req), record)
    }
}

/// What a call's end is counted and timed with; the call leaves `quartet_in_flight` when
/// this is dropped, however the call ends (the future dropped too).
pub struct Record<C> {
    layer: Arc<ObserveLayer<C>>,
    start: Instant,
}

impl<C> Drop for Record<C> {
    fn drop(&mut self) {
        self.layer.handles.in_flight.dec();
    }
}

impl<R, C: Classify<R>> OnDone<Result<R, BoxError>> for Record<C> {
    type Output = Result<R, BoxError>;

    fn done(self, result: Result<R, BoxError>) -> Self::Output {
        let layer = &self.layer;
        let handles = &layer.handles;
        handles.duration.observe(self.start.elapsed().as_secs_f64());
        match outcome(&layer.classify, &result) {
            "success" => handles.success.inc(),
            "failure" => handles.failure.inc(),
            other => layer
                .metrics
                .requests
                .with_label_values(&[layer.target.channel, &*layer.target.name, other])
                .inc(),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TimeoutKind;
    use crate::test_util::TestClassify;
    use std::time::Duration;
    use tower::{service_fn, ServiceExt};

    /// An error of ours wrapped by another layer (as `tower::buffer` would).
    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped(#[source] BoxError);

    fn err(e: impl std::error::Error + Send + Sync + 'static) -> Result<Class, BoxError> {
        Err(Box::new(e))
    }

    #[test]
    fn outcome_names_our_errors_and_classifies_the_rest() {
        let c = TestClassify;
        let elapsed = Elapsed {
            kind: TimeoutKind::PerTry,
            after: Duration::from_secs(1),
        };
        assert_eq!(outcome(&c, &err(elapsed)), "timeout");
        let open = BreakerOpen {
            target: "rest:x".into(),
            retry_after: Duration::ZERO,
        };
        assert_eq!(outcome(&c, &err(open)), "breaker_open");
        assert_eq!(outcome(&c, &err(Overloaded { limit: 1 })), "overloaded");
        let limited = RateLimited {
            retry_after: Duration::ZERO,
        };
        assert_eq!(outcome(&c, &err(limited)), "rate_limited");
        let abort = FaultAbort {
            status: None,
            message: "x".into(),
        };
        assert_eq!(outcome(&c, &err(abort)), "fault");
        let none = NoEndpoint {
            target: "rest:x".into(),
        };
        assert_eq!(outcome(&c, &err(none)), "no_endpoint");
        let wrapped = Wrapped(Box::new(Overloaded { limit: 1 }));
        assert_eq!(outcome(&c, &err(wrapped)), "overloaded");

        assert_eq!(outcome(&c, &Ok(Class::Success)), "success");
        assert_eq!(outcome(&c, &Ok(Class::Sent)), "failure");
        assert_eq!(outcome(&c, &Ok(Class::NotSent)), "failure");
        assert_eq!(outcome(&c, &Ok(Class::Local)), "failure");
        assert_eq!(outcome(&c, &Err("refused".into())), "failure");
    }

    #[tokio::test(start_paused = true)]
    async fn observe_counts_times_and_tracks_in_flight() {
        let metrics = Metrics::new();
        let layer = ObserveLayer::new(Target::new("sql", "main"), metrics.clone(), TestClassify);
        let svc = layer.layer(service_fn(|class: Class| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, BoxError>(class)
        }));
        let in_flight = || metrics.in_flight.with_label_values(&["sql", "main"]).get();
        let requests = |outcome: &str| {
            metrics
                .requests
                .with_label_values(&["sql", "main", outcome])
                .get()
        };

        svc.clone().oneshot(Class::Success).await.expect("ok");
        svc.clone().oneshot(Class::Sent).await.expect("ok");
        assert_eq!(requests("success"), 1);
        assert_eq!(requests("failure"), 1);
        let hist = metrics.duration.with_label_values(&["sql", "main"]);
        assert_eq!(hist.get_sample_count(), 2);
        assert!(hist.get_sample_sum() >= 0.04);
        assert_eq!(in_flight(), 0);

        let mut svc2 = svc.clone();
        let pending = svc2.call(Class::Success);
        assert_eq!(in_flight(), 1);
        drop(pending);
        assert_eq!(in_flight(), 0, "a dropped call leaves in_flight");
        assert_eq!(hist.get_sample_count(), 2, "and is not timed");
    }
}
