//! Load balancing over an upstream's endpoints: round robin or power of two choices
//! (least outstanding requests). Skips endpoints whose breaker refuses or whose health
//! check failed; a retry avoids the endpoints already tried when it can.

use crate::body::ProxyBody;
use crate::spec::BalanceStrategy;
use crate::BoxError;
use futures_util::future::BoxFuture;
use quartet_policies::breaker::BreakerHandle;
use quartet_policies::Target;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::util::BoxCloneSyncService;
use tower::Service;

pub type EndpointStack =
    BoxCloneSyncService<http::Request<ProxyBody>, http::Response<ProxyBody>, BoxError>;

/// One endpoint as the balancer sees it: its stack (breaker and per-try timeout around the
/// endpoint service, as `stack.rs` built it), its breaker, its health flag.
pub struct EndpointSlot {
    pub name: String,
    pub service: EndpointStack,
    pub breaker: Option<BreakerHandle>,
    pub healthy: Arc<AtomicBool>,
}

#[derive(Clone)]
pub struct Balancer {
    target: Target,
    strategy: BalanceStrategy,
}

impl Balancer {
    pub fn new(target: Target, strategy: BalanceStrategy, slots: Vec<EndpointSlot>) -> Self {
        let _ = slots;
        Self { target, strategy }
    }
}

impl Service<http::Request<ProxyBody>> for Balancer {
    type Response = http::Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<ProxyBody>) -> Self::Future {
        let _ = (&self.target, &self.strategy, req);
        todo!("balancer")
    }
}
