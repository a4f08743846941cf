//! Fault injection: a delay and/or an abort for a share of calls, per target, set in the
//! config or at run time on the admin API.

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
        let _ = (&self.current, &self.metrics, fault);
        todo!("fault handle")
    }
    pub fn get(&self) -> Option<FaultSpec> {
        todo!("fault handle")
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
        let _ = (&self.handles, handle);
        todo!("fault registry")
    }
    /// The handles of a target named `name` or `channel:name`.
    pub fn find(&self, target: &str) -> Vec<FaultHandle> {
        let _ = target;
        todo!("fault registry")
    }
    /// The targets with a fault set now.
    pub fn active(&self) -> Vec<(Target, FaultSpec)> {
        todo!("fault registry")
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
        let _ = (&self.handle, req);
        todo!("fault")
    }
}
