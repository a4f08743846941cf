//! Circuit breaker, one per backend endpoint. The pure state machine is
//! [`machine::Breaker`]; [`BreakerHandle`] shares one between the service, the balancer
//! (which skips endpoints whose breaker refuses) and the admin API.

pub mod machine;

pub use machine::{AdminState, Breaker, BreakerState, BreakerStats, Permit};

use crate::classify::{classify_policy_error, Class, Classify};
use crate::error::BreakerOpen;
use crate::future::{LayerFuture, OnDone};
use crate::metrics::Metrics;
use crate::spec::BreakerSpec;
use crate::{BoxError, Target};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, Service};

/// What the admin API shows of one breaker.
#[derive(Clone, Debug, Serialize)]
pub struct BreakerSnapshot {
    pub channel: &'static str,
    pub target: String,
    pub endpoint: String,
    pub state: BreakerState,
    /// Failures in a row right now.
    pub consecutive_failures: u32,
    /// Calls and failures in the current window.
    pub window_calls: u32,
    pub window_failures: u32,
    /// Seconds until an open breaker lets a probe through.
    pub retry_after_secs: Option<f64>,
}

#[derive(Clone)]
pub struct BreakerHandle {
    target: Target,
    endpoint: Arc<str>,
    machine: Arc<Mutex<Breaker>>,
    metrics: Arc<Metrics>,
}

impl BreakerHandle {
    pub fn new(target: Target, endpoint: &str, spec: BreakerSpec, metrics: Arc<Metrics>) -> Self {
        let h = Self {
            target,
            endpoint: endpoint.into(),
            machine: Arc::new(Mutex::new(Breaker::new(spec))),
            metrics,
        };
        // Export the gauge from the start, so a dashboard shows closed breakers too.
        h.metrics
            .breaker_state
            .with_label_values(&h.labels())
            .set(BreakerState::Closed.gauge());
        h
    }
    pub fn target(&self) -> &Target {
        &self.target
    }
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
    pub fn state(&self) -> BreakerState {
        self.with(|m, now| m.state(now))
    }
    /// Whether a call would be let through now. Does not take a half-open probe slot.
    pub fn allows(&self) -> bool {
        self.with(|m, now| m.allows(now))
    }
    pub fn set(&self, state: AdminState) {
        self.with(|m, now| m.set(now, state));
    }
    pub fn snapshot(&self) -> BreakerSnapshot {
        let stats = self.with(|m, now| m.stats(now));
        BreakerSnapshot {
            channel: self.target.channel,
            target: self.target.name.to_string(),
            endpoint: self.endpoint.to_string(),
            state: stats.state,
            consecutive_failures: stats.consecutive_failures,
            window_calls: stats.window_calls,
            window_failures: stats.window_failures,
            retry_after_secs: stats.retry_after.map(|d| d.as_secs_f64()),
        }
    }

    /// Asks to let one call through: a permit that records the call's outcome, or
    /// `Err(retry_after)` when the breaker refuses. A permit dropped without an outcome
    /// gives its half-open probe slot back. For callers outside a tower stack (the SQL
    /// proxy's statements); [`CircuitBreaker`] uses it too.
    pub fn try_acquire(&self) -> Result<BreakerPermit, Duration> {
        let permit = self.with(|m, now| m.acquire(now))?;
        Ok(BreakerPermit {
            handle: self.clone(),
            permit: Some(permit),
        })
    }

    /// Runs `f` on the machine under the lock (never held across an await), then
    /// reports the transitions it made.
    fn with<T>(&self, f: impl FnOnce(&mut Breaker, Instant) -> T) -> T {
        // The machine never panics while locked; a poisoned lock still guards a valid
        // machine, so keep using it rather than fail every call.
        let mut machine = self.machine.lock().unwrap_or_else(|e| e.into_inner());
        let out = f(&mut machine, Instant::now());
        let transitions = machine.take_transitions();
        if let Some(last) = transitions.last() {
            // Set under the lock so concurrent transitions cannot leave the gauge stale.
            let labels = self.labels();
            self.metrics
                .breaker_state
                .with_label_values(&labels)
                .set(last.gauge());
            for to in &transitions {
                self.metrics
                    .breaker_transitions
                    .with_label_values(&[labels[0], labels[1], labels[2], to.as_str()])
                    .inc();
            }
        }
        drop(machine);
        for to in transitions {
            match to {
                BreakerState::Open | BreakerState::ForcedOpen => tracing::warn!(
                    target = %self.target, endpoint = %self.endpoint, to = to.as_str(),
                    "circuit breaker opened"
                ),
                _ => tracing::info!(
                    target = %self.target, endpoint = %self.endpoint, to = to.as_str(),
                    "circuit breaker state changed"
                ),
            }
        }
        out
    }

    fn labels(&self) -> [&str; 3] {
        [self.target.channel, &self.target.name, &self.endpoint]
    }
}

/// A call let through by a breaker. [`BreakerPermit::record`] reports its outcome;
/// dropping it without one (the call was cancelled) gives a half-open probe slot back.
pub struct BreakerPermit {
    handle: BreakerHandle,
    permit: Option<Permit>,
}

impl BreakerPermit {
    /// Records the call's outcome: a failure of the backend or not, and how long it took
    /// (for the slow-call trigger).
    pub fn record(mut self, failure: bool, elapsed: Duration) {
        if let Some(permit) = self.permit.take() {
            self.handle
                .with(|m, now| m.record_permit(permit, now, failure, elapsed));
        }
    }

    /// Ends the call with no outcome (not counted), giving its probe slot back.
    pub fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.handle.with(|m, now| m.release_permit(permit, now));
        }
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        self.release_now();
    }
}

/// Every breaker of the running config, for the admin API and /readyz.
#[derive(Clone, Default)]
pub struct BreakerRegistry {
    handles: Arc<Mutex<Vec<BreakerHandle>>>,
}

impl BreakerRegistry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn register(&self, handle: BreakerHandle) {
        self.lock().push(handle);
    }
    pub fn list(&self) -> Vec<BreakerSnapshot> {
        // Snapshot the handles first: each snapshot takes its breaker's lock.
        let handles = self.lock().clone();
        handles.iter().map(BreakerHandle::snapshot).collect()
    }
    /// The breakers of a target named `name` or `channel:name`, all endpoints, or the one
    /// endpoint named.
    pub fn find(&self, target: &str, endpoint: Option<&str>) -> Vec<BreakerHandle> {
        self.lock()
            .iter()
            .filter(|h| target_matches(&h.target, target))
            .filter(|h| endpoint.is_none_or(|e| h.endpoint() == e))
            .cloned()
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<BreakerHandle>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `key` names `target`, as `name` or `channel:name`.
pub(crate) fn target_matches(target: &Target, key: &str) -> bool {
    if *target.name == *key {
        return true;
    }
    key.split_once(':')
        .is_some_and(|(channel, name)| channel == target.channel && name == &*target.name)
}

#[derive(Clone)]
pub struct CircuitBreakerLayer<C> {
    handle: BreakerHandle,
    classify: C,
}

impl<C> CircuitBreakerLayer<C> {
    pub fn new(handle: BreakerHandle, classify: C) -> Self {
        Self { handle, classify }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker {
            inner,
            handle: self.handle.clone(),
            classify: self.classify.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CircuitBreaker<S, C> {
    inner: S,
    handle: BreakerHandle,
    classify: C,
}

impl<S, Req, C> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req, Error = BoxError>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, Verdict<C>, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Fail fast: an open breaker answers now, it never queues the call.
        let permit = match self.handle.try_acquire() {
            Ok(permit) => permit,
            Err(retry_after) => {
                return LayerFuture::refused(BreakerOpen {
                    target: self.handle.target().to_string(),
                    retry_after,
                })
            }
        };
        let verdict = Verdict {
            permit,
            classify: self.classify.clone(),
            start: Instant::now(),
        };
        LayerFuture::calling(self.inner.call(req), verdict)
    }
}

/// What the breaker records when a call ends. If the call's future is dropped first, the
/// permit drops too and gives its probe slot back.
pub struct Verdict<C> {
    permit: BreakerPermit,
    classify: C,
    start: Instant,
}

impl<R, C: Classify<R>> OnDone<Result<R, BoxError>> for Verdict<C> {
    type Output = Result<R, BoxError>;

    fn done(self, result: Result<R, BoxError>) -> Self::Output {
        let elapsed = self.start.elapsed();
        let class = match &result {
            Err(e) => classify_policy_error(e).unwrap_or_else(|| self.classify.classify(&result)),
            Ok(_) => self.classify.classify(&result),
        };
        match class {
            Class::Success => self.permit.record(false, elapsed),
            Class::NotSent | Class::Sent => self.permit.record(true, elapsed),
            // The gateway's own refusal says nothing about the backend.
            Class::Local => self.permit.release(),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Elapsed, TimeoutKind};
    use crate::test_util::TestClassify;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::{service_fn, ServiceExt};

    fn spec() -> BreakerSpec {
        BreakerSpec {
            consecutive_failures: 2,
            failure_rate: 2.0,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
            ..BreakerSpec::default()
        }
    }

    fn handle(metrics: &Arc<Metrics>) -> BreakerHandle {
        BreakerHandle::new(
            Target::new("rest", "compute"),
            "http://a:1",
            spec(),
            metrics.clone(),
        )
    }

    fn gauge(metrics: &Metrics) -> i64 {
        metrics
            .breaker_state
            .with_label_values(&["rest", "compute", "http://a:1"])
            .get()
    }

    fn transitions(metrics: &Metrics, to: &str) -> u64 {
        metrics
            .breaker_transitions
            .with_label_values(&["rest", "compute", "http://a:1", to])
            .get()
    }

    /// A backend answering with the class it is given, counting the calls it sees.
    fn backend(
        calls: Arc<AtomicU32>,
    ) -> impl Service<Class, Response = Class, Error = BoxError, Future: Send> + Clone {
        service_fn(move |class: Class| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match class {
                    Class::Local => Err::<Class, BoxError>(Box::new(Elapsed {
                        kind: TimeoutKind::Total,
                        after: Duration::from_secs(1),
                    })),
                    other => Ok(other),
                }
            }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_fails_fast_then_probes_and_closes() {
        let metrics = Metrics::new();
        let h = handle(&metrics);
        let calls = Arc::new(AtomicU32::new(0));
        let svc = CircuitBreakerLayer::new(h.clone(), TestClassify).layer(backend(calls.clone()));
        assert_eq!(gauge(&metrics), 0);

        for _ in 0..2 {
            let r = svc.clone().oneshot(Class::Sent).await.expect("5xx-like");
            assert_eq!(r, Class::Sent);
        }
        assert_eq!(h.state(), BreakerState::Open);
        assert_eq!(gauge(&metrics), 1);
        assert_eq!(transitions(&metrics, "open"), 1);

        let err = svc.clone().oneshot(Class::Success).await.expect_err("open");
        let open = err.downcast_ref::<BreakerOpen>().expect("BreakerOpen");
        assert_eq!(open.target, "rest:compute");
        assert_eq!(open.retry_after, Duration::from_secs(5));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "refused without calling");

        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(h.allows());
        assert_eq!(h.state(), BreakerState::HalfOpen);
        assert_eq!(gauge(&metrics), 2);
        svc.clone().oneshot(Class::Success).await.expect("probe");
        assert_eq!(h.state(), BreakerState::Closed);
        assert_eq!(gauge(&metrics), 0);
        assert_eq!(transitions(&metrics, "half_open"), 1);
        assert_eq!(transitions(&metrics, "closed"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn local_outcomes_and_not_sent_are_classified() {
        let metrics = Metrics::new();
        let h = handle(&metrics);
        let svc = CircuitBreakerLayer::new(h.clone(), TestClassify)
            .layer(backend(Arc::new(AtomicU32::new(0))));
        // Local (a total timeout from below) is not counted: many of them keep it closed.
        for _ in 0..5 {
            let _ = svc.clone().oneshot(Class::Local).await;
        }
        assert_eq!(h.snapshot().window_calls, 0);
        assert_eq!(h.state(), BreakerState::Closed);
        let _ = svc.clone().oneshot(Class::NotSent).await;
        let snap = h.snapshot();
        assert_eq!((snap.window_calls, snap.window_failures), (1, 1));
        assert_eq!(snap.consecutive_failures, 1);
        let _ = svc.clone().oneshot(Class::NotSent).await;
        assert_eq!(h.state(), BreakerState::Open);
        let snap = h.snapshot();
        assert_eq!(snap.retry_after_secs, Some(5.0));
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_releases_its_slot() {
        let metrics = Metrics::new();
        let h = handle(&metrics);
        h.set(AdminState::ForcedOpen);
        assert_eq!(gauge(&metrics), 3);
        h.set(AdminState::Closed);
        // Trip it, then wait for half-open.
        for _ in 0..2 {
            h.try_acquire()
                .expect("closed")
                .record(true, Duration::ZERO);
        }
        tokio::time::advance(Duration::from_secs(5)).await;

        let hang = service_fn(|()| std::future::pending::<Result<Class, BoxError>>());
        let mut svc = CircuitBreakerLayer::new(h.clone(), TestClassify).layer(hang);
        let probe = svc.call(());
        assert!(!h.allows(), "the only probe slot is taken");
        assert!(svc.call(()).await.is_err(), "second probe refused");
        drop(probe);
        assert!(h.allows(), "slot given back by the dropped call");
        assert_eq!(h.state(), BreakerState::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_counts_nothing_and_gauges_it() {
        let metrics = Metrics::new();
        let h = handle(&metrics);
        h.set(AdminState::Disabled);
        assert_eq!(gauge(&metrics), 4);
        let svc = CircuitBreakerLayer::new(h.clone(), TestClassify)
            .layer(backend(Arc::new(AtomicU32::new(0))));
        for _ in 0..10 {
            svc.clone().oneshot(Class::Sent).await.expect("let through");
        }
        assert_eq!(h.state(), BreakerState::Disabled);
        assert_eq!(transitions(&metrics, "disabled"), 1);
    }

    #[test]
    fn registry_finds_by_name_channel_and_endpoint() {
        let metrics = Metrics::new();
        let reg = BreakerRegistry::new();
        for (channel, name, ep) in [
            ("rest", "compute", "a"),
            ("rest", "compute", "b"),
            ("rpc", "compute", "broker"),
            ("sql", "main", "pg1"),
        ] {
            reg.register(BreakerHandle::new(
                Target::new(channel, name),
                ep,
                spec(),
                metrics.clone(),
            ));
        }
        assert_eq!(reg.list().len(), 4);
        assert_eq!(reg.find("compute", None).len(), 3);
        assert_eq!(reg.find("rest:compute", None).len(), 2);
        assert_eq!(reg.find("rest:compute", Some("b")).len(), 1);
        assert_eq!(reg.find("rpc:compute", Some("b")).len(), 0);
        assert_eq!(reg.find("sql:main", None)[0].endpoint(), "pg1");
        assert!(reg.find("nope", None).is_empty());
        assert!(reg.find("rest:", None).is_empty());
        reg.find("sql:main", None)[0].set(AdminState::ForcedOpen);
        let snap = reg
            .list()
            .into_iter()
            .find(|s| s.channel == "sql")
            .expect("sql breaker listed");
        assert_eq!(snap.state, BreakerState::ForcedOpen);
        assert_eq!(snap.target, "main");
    }
}
