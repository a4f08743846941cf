//! Fault injection: a delay and/or an abort for a share of calls, per target, set in the
//! config or at run time on the admin API.

use crate::breaker::target_matches;
use crate::error::FaultAbort;
use crate::metrics::Metrics;
use crate::spec::FaultSpec;
use crate::{BoxError, Target};
use arc_swap::ArcSwapOption;
use futures_util::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// The fault currently set on one target, shared by its stack and the admin API.
#[derive(Clone)]
pub struct FaultHandle {
    target: Target,
    current: Arc<ArcSwapOption<FaultSpec>>,
    metrics: Arc<Metrics>,
}

impl FaultHandle {
    pub fn new(target: Target, initial: Option<FaultSpec>, metrics: Arc<Metrics>) -> Self {
        let h = Self {
            target,
            current: Arc::new(ArcSwapOption::empty()),
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
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let Some(fault) = self.handle.current() else {
            return Box::pin(self.inner.call(req));
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
            return Box::pin(async move {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                Err(err.into())
            });
        }
        let Some(delay) = delay else {
            return Box::pin(self.inner.call(req));
        };
        // The call happens after the delay: take the service that `poll_ready` made
        // ready, and leave a clone in its place (tower's usual pattern).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            inner.call(req).await
        })
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
