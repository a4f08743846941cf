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
use tower::Service;

pub type EndpointStack =
    quartet_policies::SharedStack<http::Request<ProxyBody>, http::Response<ProxyBody>>;

/// One endpoint as the balancer sees it: its stack (breaker and per-try timeout around the
/// endpoint service, as `stack.rs` built it), its breaker, its health flag.
pub struct EndpointSlot {
    pub name: String,
    pub service: EndpointStack,
    pub breaker: Option<BreakerHandle>,
    pub healthy: Arc<AtomicBool>,
    /// Attempts outstanding at the endpoint, counted by the balancer from the pick to
    /// the response head; share it to see the endpoint's load across balancers (every
    /// route to an upstream has its own).
    pub in_flight: Arc<AtomicUsize>,
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
                in_flight: s.in_flight,
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
        // One endpoint (most upstreams): steps 1 to 5 come down to whether its breaker
        // lets the attempt through, and nothing needs a list. A refusal takes the long
        // way, for its error.
        if self.shared.slots.len() == 1 && self.shared.slots[0].allows() {
            return Ok(0);
        }
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
            // With one endpoint there is nowhere else to go: nothing to remember.
            if self.shared.slots.len() > 1 {
                info.tried
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(index);
            }
        }
        let guard = InFlight::new(&slot.in_flight);
        let attempt = slot.service.call(req);
        // A combinator, not an async block: the latter trips the compiler's Send check on
        // the boxed service's higher-ranked error type.
        Box::pin(attempt.map(move |result| {
            drop(guard);
            result
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::empty;
    use quartet_policies::breaker::AdminState;
    use quartet_policies::metrics::Metrics;
    use quartet_policies::spec::BreakerSpec;
    use std::collections::HashMap;
    use tokio::sync::Notify;
    use tower::ServiceExt;

    /// An endpoint stack answering 200 with `x-endpoint: NAME`; it waits for `gate` first
    /// when one is given.
    fn stack(name: &'static str, gate: Option<Arc<Notify>>) -> EndpointStack {
        EndpointStack::boxing(tower::service_fn(move |_req: http::Request<ProxyBody>| {
            let gate = gate.clone();
            async move {
                if let Some(gate) = gate {
                    gate.notified().await;
                }
                Ok::<_, BoxError>(
                    http::Response::builder()
                        .header("x-endpoint", name)
                        .body(empty())
                        .unwrap(),
                )
            }
        }))
    }

    struct Ep {
        name: &'static str,
        healthy: bool,
        breaker: Option<AdminState>,
        gate: Option<Arc<Notify>>,
    }

    fn ep(name: &'static str) -> Ep {
        Ep {
            name,
            healthy: true,
            breaker: None,
            gate: None,
        }
    }

    fn balancer(strategy: BalanceStrategy, eps: Vec<Ep>) -> Balancer {
        let target = Target::new("rest", "compute");
        let metrics = Metrics::new();
        let slots = eps
            .into_iter()
            .map(|e| {
                let breaker = e.breaker.map(|state| {
                    let h = BreakerHandle::new(
                        target.clone(),
                        e.name,
                        BreakerSpec::default(),
                        metrics.clone(),
                    );
                    h.set(state);
                    h
                });
                EndpointSlot {
                    name: e.name.into(),
                    service: stack(e.name, e.gate),
                    breaker,
                    healthy: Arc::new(AtomicBool::new(e.healthy)),
                    in_flight: Arc::default(),
                }
            })
            .collect();
        Balancer::new(target, strategy, slots)
    }

    fn request(info: &Arc<CallInfo>) -> http::Request<ProxyBody> {
        let mut req = http::Request::get("/").body(empty()).unwrap();
        req.extensions_mut().insert(info.clone());
        req
    }

    async fn call(b: &Balancer) -> Result<String, BoxError> {
        call_with(b, &Arc::new(CallInfo::default())).await
    }

    async fn call_with(b: &Balancer, info: &Arc<CallInfo>) -> Result<String, BoxError> {
        let resp = b.clone().oneshot(request(info)).await?;
        Ok(resp.headers()["x-endpoint"].to_str().unwrap().to_owned())
    }

    async fn spread(b: &Balancer, calls: usize) -> HashMap<String, usize> {
        let mut seen = HashMap::new();
        for _ in 0..calls {
            *seen.entry(call(b).await.unwrap()).or_default() += 1;
        }
        seen
    }

    #[tokio::test]
    async fn round_robin_spreads_evenly() {
        let b = balancer(BalanceStrategy::RoundRobin, vec![ep("a"), ep("b"), ep("c")]);
        let seen = spread(&b, 30).await;
        assert_eq!(seen.len(), 3);
        assert!(seen.values().all(|&n| n == 10), "{seen:?}");
    }

    #[tokio::test]
    async fn p2c_uses_every_endpoint() {
        let b = balancer(BalanceStrategy::P2c, vec![ep("a"), ep("b"), ep("c")]);
        let seen = spread(&b, 200).await;
        assert_eq!(seen.len(), 3, "{seen:?}");
    }

    #[tokio::test]
    async fn p2c_prefers_the_less_loaded() {
        let gate = Arc::new(Notify::new());
        let mut a = ep("a");
        a.gate = Some(gate.clone());
        let b = balancer(BalanceStrategy::P2c, vec![a, ep("b")]);
        // Hold requests in flight on `a` (the only pick while `b` is out of the pool).
        b.shared.slots[1].healthy.store(false, Ordering::Relaxed);
        let pending: Vec<_> = (0..3)
            .map(|_| b.clone().call(request(&Arc::new(CallInfo::default()))))
            .collect();
        assert_eq!(b.endpoints()[0].in_flight, 3);
        b.shared.slots[1].healthy.store(true, Ordering::Relaxed);
        let seen = spread(&b, 50).await;
        assert_eq!(seen.get("b"), Some(&50), "{seen:?}");
        drop(pending);
        assert_eq!(b.endpoints()[0].in_flight, 0);
    }

    #[tokio::test]
    async fn in_flight_counts_until_the_response() {
        let gate = Arc::new(Notify::new());
        let mut a = ep("a");
        a.gate = Some(gate.clone());
        let b = balancer(BalanceStrategy::RoundRobin, vec![a]);
        let fut = b.clone().oneshot(request(&Arc::new(CallInfo::default())));
        let handle = tokio::spawn(fut);
        while b.endpoints()[0].in_flight != 1 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        handle.await.unwrap().unwrap();
        assert_eq!(b.endpoints()[0].in_flight, 0);
    }

    #[tokio::test]
    async fn skips_an_open_breaker() {
        for strategy in [BalanceStrategy::RoundRobin, BalanceStrategy::P2c] {
            let b = balancer(
                strategy,
                vec![
                    Ep {
                        breaker: Some(AdminState::ForcedOpen),
                        ..ep("a")
                    },
                    ep("b"),
                    Ep {
                        breaker: Some(AdminState::Closed),
                        ..ep("c")
                    },
                ],
            );
            let seen = spread(&b, 40).await;
            assert!(!seen.contains_key("a"), "{seen:?}");
            assert_eq!(seen.len(), 2, "{seen:?}");
        }
    }

    #[tokio::test]
    async fn every_breaker_open_is_breaker_open() {
        let open = |name| Ep {
            breaker: Some(AdminState::ForcedOpen),
            ..ep(name)
        };
        let b = balancer(BalanceStrategy::P2c, vec![open("a"), open("b")]);
        let err = call(&b).await.unwrap_err();
        let open = err.downcast_ref::<BreakerOpen>().expect("BreakerOpen");
        assert_eq!(open.target, "rest:compute");
        assert!(open.retry_after > Duration::ZERO);
        assert!(!b.is_ready());
    }

    #[tokio::test]
    async fn no_endpoint_configured() {
        let b = balancer(BalanceStrategy::RoundRobin, vec![]);
        let err = call(&b).await.unwrap_err();
        assert!(err.is::<NoEndpoint>(), "{err}");
    }

    #[tokio::test]
    async fn skips_unhealthy_endpoints() {
        let b = balancer(
            BalanceStrategy::RoundRobin,
            vec![
                Ep {
                    healthy: false,
                    ..ep("a")
                },
                ep("b"),
                ep("c"),
            ],
        );
        let seen = spread(&b, 20).await;
        assert!(!seen.contains_key("a"), "{seen:?}");
        assert_eq!(seen.len(), 2);
    }

    #[tokio::test]
    async fn panic_mode_when_none_is_healthy() {
        let b = balancer(
            BalanceStrategy::RoundRobin,
            vec![
                Ep {
                    healthy: false,
                    ..ep("a")
                },
                Ep {
                    healthy: false,
                    breaker: Some(AdminState::ForcedOpen),
                    ..ep("b")
                },
                Ep {
                    healthy: false,
                    ..ep("c")
                },
            ],
        );
        let seen = spread(&b, 20).await;
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(!seen.contains_key("b"), "breakers still count: {seen:?}");
    }

    #[tokio::test]
    async fn open_breakers_on_the_healthy_do_not_fall_back_to_the_unhealthy() {
        let b = balancer(
            BalanceStrategy::RoundRobin,
            vec![
                Ep {
                    healthy: false,
                    ..ep("a")
                },
                Ep {
                    breaker: Some(AdminState::ForcedOpen),
                    ..ep("b")
                },
            ],
        );
        let err = call(&b).await.unwrap_err();
        assert!(err.is::<BreakerOpen>(), "{err}");
    }

    #[tokio::test]
    async fn a_retry_avoids_the_endpoints_tried() {
        for strategy in [BalanceStrategy::RoundRobin, BalanceStrategy::P2c] {
            let b = balancer(strategy, vec![ep("a"), ep("b"), ep("c")]);
            let info = Arc::new(CallInfo::default());
            let mut names = Vec::new();
            for _ in 0..3 {
                names.push(call_with(&b, &info).await.unwrap());
            }
            names.sort();
            assert_eq!(names, ["a", "b", "c"], "{strategy:?}");
            assert_eq!(info.attempts.load(Ordering::Relaxed), 3);
            let mut tried = info.tried.lock().unwrap().clone();
            tried.sort();
            assert_eq!(tried, [0, 1, 2]);
            // All tried: any endpoint again.
            let fourth = call_with(&b, &info).await.unwrap();
            assert_eq!(
                info.endpoint.lock().unwrap().as_deref(),
                Some(fourth.as_str())
            );
            assert_eq!(info.attempts.load(Ordering::Relaxed), 4);
        }
    }

    #[tokio::test]
    async fn reports_endpoints() {
        let b = balancer(
            BalanceStrategy::P2c,
            vec![
                Ep {
                    breaker: Some(AdminState::ForcedOpen),
                    ..ep("a")
                },
                Ep {
                    healthy: false,
                    ..ep("b")
                },
            ],
        );
        let eps = b.endpoints();
        assert_eq!(eps[0].name, "a");
        assert_eq!(eps[0].breaker, Some(BreakerState::ForcedOpen));
        assert!(eps[0].healthy);
        assert_eq!(eps[1].breaker, None);
        assert!(!eps[1].healthy);
        assert_eq!(eps[1].in_flight, 0);
    }
}
