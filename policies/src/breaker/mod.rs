//! Circuit breaker, one per backend endpoint. The pure state machine is
//! [`machine::Breaker`]; [`BreakerHandle`] shares one between the service, the balancer
//! (which skips endpoints whose breaker refuses) and the admin API.

pub mod machine;

pub use machine::{AdminState, Breaker, BreakerState};

use crate::classify::Classify;
use crate::metrics::Metrics;
use crate::spec::BreakerSpec;
use crate::{BoxError, Target};
use futures_util::future::BoxFuture;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
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
        Self {
            target,
            endpoint: endpoint.into(),
            machine: Arc::new(Mutex::new(Breaker::new(spec))),
            metrics,
        }
    }
    pub fn target(&self) -> &Target {
        &self.target
    }
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
    pub fn state(&self) -> BreakerState {
        todo!("breaker handle")
    }
    /// Whether a call would be let through now. Does not take a half-open probe slot.
    pub fn allows(&self) -> bool {
        let _ = (&self.machine, &self.metrics);
        todo!("breaker handle")
    }
    pub fn set(&self, state: AdminState) {
        let _ = state;
        todo!("breaker handle")
    }
    pub fn snapshot(&self) -> BreakerSnapshot {
        todo!("breaker handle")
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
        let _ = handle;
        todo!("registry")
    }
    pub fn list(&self) -> Vec<BreakerSnapshot> {
        let _ = &self.handles;
        todo!("registry")
    }
    /// The breakers of a target named `name` or `channel:name`, all endpoints, or the one
    /// endpoint named.
    pub fn find(&self, target: &str, endpoint: Option<&str>) -> Vec<BreakerHandle> {
        let _ = (target, endpoint);
        todo!("registry")
    }
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
        let _ = (&self.handle, &self.classify, req);
        todo!("breaker")
    }
}
