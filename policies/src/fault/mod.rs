//! Fault injection: a delay and/or an abort for a share of calls, per target, set in the
//! config or at run time on the admin API.

use crate::breaker::target_matches;
use crate::error::FaultAbort;
use crate::future::{LayerFuture, Pass};
use crate::metrics::Metrics;
use crate::spec::FaultSpec;
use crate::{BoxError, Target};
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tower::{Layer, Service};

pub mod toxic;

/// The fault currently set on one target, shared by its stack and the admin API.
#[derive(Clone)]
pub struct FaultHandle {
    target: Target,
    current: Arc<ArcSwapOption<FaultSpec>>,
    /// Bumped after every `set`: a reader that polls often (a connection's toxics)
    /// compares it instead of loading the fault.
    version: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl FaultHandle {
    pub fn new(target: Target, initial: Option<FaultSpec>, metrics: Arc<Metrics>) -> Self {
        let h = Self {
            target,
            current: Arc::new(ArcSwapOption::empty()),
            version: Arc::new(AtomicU64::new(0)),
            metrics,
        };
        h.set(initial);
        h
    }
    pub fn target(&self) -> &Target {
        &self.target
    }
    /// Sets (`Some`) or clears (`None`) the fault; updates `quartet_fault_active`.
    pub fn set(&self, fault: Option<FaultSpec>) {
        let active = i64::from(fault.is_some());
        self.current.store(fault.map(Arc::new));
        self.version.fetch_add(1, Ordering::Release);
        self.metrics
            .fault_active
            .with_label_values(&[self.target.channel, &self.target.name])
            .set(active);
        if active == 1 {
            tracing::warn!(target = %self.target, "fault injection set");
        } else {
            tracing::info!(target = %self.target, "fault injection cleared");
        }
    }
    pub fn get(&self) -> Option<FaultSpec> {
        self.current().map(|f| (*f).clone())
    }
    /// Changes whenever the fault is set or cleared (read before [`FaultHandle::current`]).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
    /// The fault set now, without copying it (read on every call).
    pub fn current(&self) -> Option<Arc<FaultSpec>> {
        self.current.load_full()
    }
}

/// Every target's fault handle, for the admin API and /readyz.
#[derive(Clone, Default)]
pub struct FaultRegistry {
    handles: Arc<Mutex<Vec<FaultHandle>>>,
}

impl FaultRegistry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn register(&self, handle: FaultHandle) {
        self.lock().push(handle);
    }
    /// The handles of a target named `name` or `channel:name`.
    pub fn find(&self, target: &str) -> Vec<FaultHandle> {
        self.lock()
            .iter()
            .filter(|h| target_matches(&h.target, target))
            .cloned()
            .collect()
    }
    /// The targets with a fault set now.
    pub fn active(&self) -> Vec<(Target, FaultSpec)> {
        self.lock()
            .iter()
            .filter_map(|h| h.get().map(|f| (h.target.clone(), f)))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<FaultHandle>> {
        self.handles.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
pub struct FaultLayer {
    handle: FaultHandle,
}

impl FaultLayer {
    pub fn new(handle: FaultHandle) -> Self {
        Self { handle }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = FaultInjection<S>;
    fn layer(&self, inner: S) -> Self::Service {
        FaultInjection {
            inner,
            handle: self.handle.clone(),
        }
    }
}

#[derive(Clone)]
pub struct FaultInjection<S> {
    inner: S,
    handle: FaultHandle,
}

impl<S, Req> Service<Req> for FaultInjection<S>
where
    S: Service<Req, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, Pass, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(fault) = self.handle.current() else {
            return LayerFuture::calling(self.inner.call(req), Pass);
        };
        let labels = [self.handle.target.channel, &*self.handle.target.name];
        let delay = fault.delay.filter(|_| chance(fault.delay_percent));
        if delay.is_some() {
            self.handle
                .metrics
                .faults_injected
                .with_label_values(&[labels[0], labels[1], "delay"])
                .inc();
        }
        // The abort is drawn now, independently of the delay; it happens after the delay,
        // as in Envoy, so a delayed abort looks like a slow failing backend.
        if chance(fault.abort_percent) {
            self.handle
                .metrics
                .faults_injected
                .with_label_values(&[labels[0], labels[1], "abort"])
                .inc();
            let err = FaultAbort {
                status: fault.abort_status,
                message: format!("call to {} aborted", self.handle.target),
            };
            return LayerFuture::boxed(Box::pin(async move {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                Err(err.into())
            }));
        }
        let Some(delay) = delay else {
            return LayerFuture::calling(self.inner.call(req), Pass);
        };
        // The call happens after the delay: take the service that `poll_ready` made
        // ready, and leave a clone in its place (tower's usual pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        LayerFuture::boxed(Box::pin(async move {
            tokio::time::sleep(delay).await;
            inner.call(req).await
        }))
    }
}

/// True with probability `percent / 100`; out-of-range or NaN shares never panic
/// (below 0 or NaN: never, 100 or above: always).
fn chance(percent: f64) -> bool {
    let p = percent / 100.0;
    if p.is_nan() || p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rand::Rng::random_bool(&mut rand::rng(), p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    use tokio::time::Instant;
    use tower::{service_fn, ServiceExt};

    fn target() -> Target {
        Target::new("native", "volumes")
    }

    fn injected(metrics: &Metrics, kind: &str) -> u64 {
        metrics
            .faults_injected
            .with_label_values(&["native", "volumes", kind])
            .get()
    }

    fn counting(
        calls: Arc<AtomicU32>,
    ) -> impl Service<(), Response = u32, Error = BoxError, Future: Send> + Clone + Send {
        service_fn(move |()| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, BoxError>(n) }
        })
    }

    #[tokio::test(start_paused = true)]
    async fn full_abort_never_calls_the_backend() {
        let metrics = Metrics::new();
        let fault = FaultSpec {
            abort_percent: 100.0,
            abort_status: Some(503),
            ..FaultSpec::default()
        };
        let handle = FaultHandle::new(target(), Some(fault), metrics.clone());
        let calls = Arc::new(AtomicU32::new(0));
        let svc = FaultLayer::new(handle).layer(counting(calls.clone()));
        for _ in 0..10 {
            let err = svc.clone().oneshot(()).await.expect_err("aborted");
            let abort = err.downcast_ref::<FaultAbort>().expect("FaultAbort");
            assert_eq!(abort.status, Some(503));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(injected(&metrics, "abort"), 10);
        assert_eq!(injected(&metrics, "delay"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_percent_or_no_fault_calls_through() {
        let metrics = Metrics::new();
        let zero = FaultSpec {
            delay: Some(Duration::from_secs(1)),
            ..FaultSpec::default()
        };
        let handle = FaultHandle::new(target(), Some(zero), metrics.clone());
        let calls = Arc::new(AtomicU32::new(0));
        let svc = FaultLayer::new(handle.clone()).layer(counting(calls.clone()));
        let start = Instant::now();
        for _ in 0..10 {
            svc.clone().oneshot(()).await.expect("through");
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        handle.set(None);
        svc.clone().oneshot(()).await.expect("through");
        assert_eq!(calls.load(Ordering::SeqCst), 11);
        assert_eq!(injected(&metrics, "abort") + injected(&metrics, "delay"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn full_delay_sleeps_then_calls_the_backend() {
        let metrics = Metrics::new();
        let fault = FaultSpec {
            delay: Some(Duration::from_secs(2)),
            delay_percent: 100.0,
            ..FaultSpec::default()
        };
        let handle = FaultHandle::new(target(), Some(fault), metrics.clone());
        let calls = Arc::new(AtomicU32::new(0));
        let svc = FaultLayer::new(handle).layer(counting(calls.clone()));
        let start = Instant::now();
        assert_eq!(svc.oneshot(()).await.expect("delayed answer"), 1);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(injected(&metrics, "delay"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_abort_waits_then_fails() {
        let metrics = Metrics::new();
        let fault = FaultSpec {
            delay: Some(Duration::from_millis(300)),
            delay_percent: 100.0,
            abort_percent: 100.0,
            abort_status: None,
            ..FaultSpec::default()
        };
        let handle = FaultHandle::new(target(), Some(fault), metrics.clone());
        let calls = Arc::new(AtomicU32::new(0));
        let svc = FaultLayer::new(handle).layer(counting(calls.clone()));
        let start = Instant::now();
        let err = svc.oneshot(()).await.expect_err("aborted");
        assert!(err.is::<FaultAbort>());
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn partial_abort_hits_some_calls() {
        let metrics = Metrics::new();
        let fault = FaultSpec {
            abort_percent: 50.0,
            ..FaultSpec::default()
        };
        let handle = FaultHandle::new(target(), Some(fault), metrics.clone());
        let calls = Arc::new(AtomicU32::new(0));
        let svc = FaultLayer::new(handle).layer(counting(calls.clone()));
        let mut aborted: u64 = 0;
        for _ in 0..400 {
            if svc.clone().oneshot(()).await.is_err() {
                aborted += 1;
            }
        }
        // 50 % of 400: far from both ends (the chance of leaving 100..300 is negligible).
        assert!((100..300).contains(&aborted), "aborted {aborted}");
        assert_eq!(aborted, injected(&metrics, "abort"));
    }

    #[test]
    fn chance_never_panics_out_of_range() {
        assert!(!chance(f64::NAN));
        assert!(!chance(-5.0));
        assert!(chance(100.0));
        assert!(chance(1e9));
        assert!(!chance(0.0));
    }

    #[test]
    fn handle_sets_the_gauge_and_registry_finds_active_faults() {
        let metrics = Metrics::new();
        let active = |m: &Metrics, channel: &str, name: &str| {
            m.fault_active.with_label_values(&[channel, name]).get()
        };
        let volumes = FaultHandle::new(target(), None, metrics.clone());
        let compute = FaultHandle::new(
            Target::new("rest", "compute"),
            Some(FaultSpec::default()),
            metrics.clone(),
        );
        assert_eq!(active(&metrics, "native", "volumes"), 0);
        assert_eq!(active(&metrics, "rest", "compute"), 1);
        let reg = FaultRegistry::new();
        reg.register(volumes.clone());
        reg.register(compute.clone());
        assert_eq!(reg.active().len(), 1);
        assert_eq!(reg.active()[0].0, Target::new("rest", "compute"));

        let spec = FaultSpec {
            abort_percent: 10.0,
            ..FaultSpec::default()
        };
        reg.find("native:volumes")[0].set(Some(spec.clone()));
        assert_eq!(volumes.get(), Some(spec));
        assert_eq!(active(&metrics, "native", "volumes"), 1);
        assert_eq!(reg.active().len(), 2);
        assert_eq!(reg.find("volumes").len(), 1);
        assert!(reg.find("rest:volumes").is_empty());
        compute.set(None);
        assert_eq!(active(&metrics, "rest", "compute"), 0);
        assert_eq!(compute.get(), None);
        assert_eq!(reg.active().len(), 1);
    }
}
