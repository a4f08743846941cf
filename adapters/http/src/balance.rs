//! Load balancing over an upstream's endpoints: round robin or power of two choices
//! (least outstanding requests). Skips endpoints whose breaker refuses or whose health
//! check failed; a retry avoids the endpoints already tried when it can.
//!
//! How one endpoint is picked, for every attempt:
//!
//! 1. No endpoint configured: [`NoEndpoint`].
//! 2. The pool is the healthy endpoints; when none is healthy, all of them (panic mode, as
//!    in Envoy: a health check that fails everywhere is more likely wrong than every
//!    endpoint).
//! 3. Endpoints of the pool whose breaker refuses are left out; when that leaves none:
//!    [`BreakerOpen`], with the shortest time until one of them lets a probe through.
//! 4. Endpoints already tried by this call (`CallInfo::tried`) are left out, unless that
//!    leaves none.
//! 5. Round robin takes the next in turn; p2c takes two distinct candidates at random and
//!    the one with fewer requests in flight.
//! 6. The attempt is recorded in the request's `Arc<CallInfo>` (`attempts += 1`, the
//!    endpoint's name, its index in `tried`).

use crate::body::ProxyBody;
use crate::classify::CallInfo;
use crate::spec::BalanceStrategy;
use crate::BoxError;
use futures_util::future::{BoxFuture, FutureExt};
use quartet_policies::breaker::{BreakerHandle, BreakerState};
use quartet_policies::error::{BreakerOpen, NoEndpoint};
use quartet_policies::Target;
use rand::Rng;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

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

/// What `/readyz` and the admin API show of one endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointStatus {
    pub name: String,
    pub healthy: bool,
    /// `None` when the endpoint has no breaker.
    pub breaker: Option<BreakerState>,
    pub in_flight: usize,
}

/// When no open breaker says when it lets a probe through.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

struct Slot {
    name: Arc<str>,
    service: EndpointStack,
    breaker: Option<BreakerHandle>,
    healthy: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
}

impl Slot {
    fn allows(&self) -> bool {
        self.breaker.as_ref().is_none_or(BreakerHandle::allows)
    }
    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

struct Shared {
    slots: Vec<Slot>,
    next: AtomicUsize,
}

#[derive(Clone)]
pub struct Balancer {
    target: Target,
    strategy: BalanceStrategy,
    shared: Arc<Shared>,
}

impl Balancer {
    pub fn new(target: Target, strategy: BalanceStrategy, slots: Vec<EndpointSlot>) -> Self {
        let slots = slots
            .into_iter()
            .map(|s| Slot {
                name: s.name.into(),
                service: s.service,
                breaker: s.breaker,
                healthy: s.healthy,
                in_flight: Arc::new(AtomicUsize::new(0)),
            })
            .collect();
        Self {
            target,
            strategy,
            shared: Arc::new(Shared {
                slots,
                next: AtomicUsize::new(0),
            }),
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Every endpoint's name, health, breaker state and requests in flight, in config
    /// order.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        self.shared
            .slots
            .iter()
            .map(|s| EndpointStatus {
                name: s.name.to_string(),
                healthy: s.healthy(),
                breaker: s.breaker.as_ref().map(BreakerHandle::state),
                in_flight: s.in_flight(),
            })
            .collect()
    }

    /// Whether an attempt sent now would find an endpoint (steps 1 to 3 above).
    pub fn is_ready(&self) -> bool {
        self.candidates().is_ok()
    }

    /// Steps 1 to 3: the usable endpoints' indexes.
    fn candidates(&self) -> Result<Vec<usize>, BoxError> {
        let slots = &self.shared.slots;
        if slots.is_empty() {
            return Err(NoEndpoint {
                target: self.target.to_string(),
            }
            .into());
        }
        let any_healthy = slots.iter().any(Slot::healthy);
        let pool: Vec<usize> = (0..slots.len())
            .filter(|&i| !any_healthy || slots[i].healthy())
            .collect();
        let allowed: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|&i| slots[i].allows())
            .collect();
        if allowed.is_empty() {
            let retry_after = pool
                .iter()
                .filter_map(|&i| slots[i].breaker.as_ref()?.snapshot().retry_after_secs)
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64)
                .min()
                .unwrap_or(DEFAULT_RETRY_AFTER);
            return Err(BreakerOpen {
                target: self.target.to_string(),
                retry_after,
            }
            .into());
        }
        Ok(allowed)
    }

    /// Steps 1 to 5: the index of the endpoint for this attempt.
    fn pick(&self, info: Option<&CallInfo>) -> Result<usize, BoxError> {
        let mut candidates = self.candidates()?;
        if let Some(info) = info {
            let tried = info.tried.lock().unwrap_or_else(|e| e.into_inner());
            if candidates.iter().any(|i| !tried.contains(i)) {
                candidates.retain(|i| !tried.contains(i));
            }
        }
        let slots = &self.shared.slots;
        Ok(match (self.strategy, candidates.len()) {
            (_, 1) => candidates[0],
            (BalanceStrategy::RoundRobin, n) => {
                candidates[self.shared.next.fetch_add(1, Ordering::Relaxed) % n]
            }
            (BalanceStrategy::P2c, n) => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let mut b = rng.random_range(0..n - 1);
                if b >= a {
                    b += 1;
                }
                let (a, b) = (candidates[a], candidates[b]);
                if slots[b].in_flight() < slots[a].in_flight() {
                    b
                } else {
                    a
                }
            }
        })
    }
}

/// Counts a request in flight on one endpoint until it is dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
        let info = req.extensions().get::<Arc<CallInfo>>().cloned();
        let index = match self.pick(info.as_deref()) {
            Ok(i) => i,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        let slot = &self.shared.slots[index];
        if let Some(info) = &info {
            info.attempts.fetch_add(1, Ordering::Relaxed);
            *info.endpoint.lock().unwrap_or_else(|e| e.into_inner()) = Some(slot.name.clone());
            info.tried
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(index);
        }
        let guard = InFlight::new(&slot.in_flight);
        let attempt = slot.service.clone().oneshot(req);
        // A combinator, not an async block: the latter trips the compiler's Send check on
        // the boxed service's higher-ranked error type.
        Box::pin(attempt.map(move |result| {
            drop(guard);
            result
        }))
    }
}
