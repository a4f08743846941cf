//! Concurrency limit (a bulkhead that rejects at once when full) and token-bucket rate
//! limit (governor).
//!
//! Why neither one queues: a queue in front of a slow backend turns a backend problem into
//! latency for everyone and memory in the gateway, and hides the overload from the
//! callers that could back off. Refusing at once (503 / 429 with `Retry-After`) keeps the
//! gateway's own latency flat and tells the caller the truth.

use crate::error::{Overloaded, RateLimited};
use crate::future::{Hold, LayerFuture, Pass};
use crate::spec::RateLimitSpec;
use crate::BoxError;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Semaphore;
use tower::{Layer, Service};

/// One semaphore per target: every clone of the layer and its services shares it.
#[derive(Clone)]
pub struct ConcurrencyLimitLayer {
    semaphore: Arc<Semaphore>,
    max: usize,
}

impl ConcurrencyLimitLayer {
    pub fn new(max: usize) -> Self {
        // `Semaphore::new` panics above MAX_PERMITS; a limit that high is no limit anyway.
        let max = max.min(Semaphore::MAX_PERMITS);
        Self {
            semaphore: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            semaphore: self.semaphore.clone(),
            max: self.max,
        }
    }
}

#[derive(Clone)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    semaphore: Arc<Semaphore>,
    max: usize,
}

impl<S, Req> Service<Req> for ConcurrencyLimit<S>
where
    S: Service<Req, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, Hold<tokio::sync::OwnedSemaphorePermit>, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // `try_acquire_owned`, not `acquire`: when full, refuse now instead of waiting.
        let permit = match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => return LayerFuture::refused(Overloaded { limit: self.max }),
        };
        // Held until the response is there (or the future is dropped).
        LayerFuture::calling(self.inner.call(req), Hold(permit))
    }
}

/// One token bucket per target: the limiter is created here and shared by every clone of
/// the layer and of its services, so the limit holds for the target as a whole.
#[derive(Clone)]
pub struct RateLimitLayer {
    spec: RateLimitSpec,
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl RateLimitLayer {
    pub fn new(spec: &RateLimitSpec) -> Self {
        // Zeros are rejected by `PolicySpec::validate`; should one get here anyway, the
        // tightest real limit (1) is the safe reading.
        let per_second = NonZeroU32::new(spec.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(spec.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Self {
            spec: spec.clone(),
            limiter: Arc::new(RateLimiter::direct(quota)),
        }
    }

    pub fn spec(&self) -> &RateLimitSpec {
        &self.spec
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = LayerFuture<S::Future, Pass, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // governor keeps its own (real) clock, not tokio's: paused tokio time does not
        // refill the bucket, which is acceptable for a limit on real traffic.
        if let Err(not_until) = self.limiter.check() {
            let retry_after = not_until.wait_time_from(self.limiter.clock().now());
            return LayerFuture::refused(RateLimited { retry_after });
        }
        LayerFuture::calling(self.inner.call(req), Pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Overloaded, RateLimited};
    use std::time::Duration;
    use tokio::sync::oneshot;
    use tower::{service_fn, ServiceExt};

    #[tokio::test]
    async fn bulkhead_refuses_at_once_when_full_and_frees_on_completion() {
        let layer = ConcurrencyLimitLayer::new(2);
        let backend = service_fn(|rx: oneshot::Receiver<u32>| async move {
            rx.await.map_err(|e| Box::new(e) as BoxError)
        });
        let mut svc = layer.layer(backend);

        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        let first = svc.ready().await.expect("ready").call(rx1);
        // A clone made from the layer shares the same semaphore.
        let mut other = layer.layer(service_fn(|rx: oneshot::Receiver<u32>| async move {
            rx.await.map_err(|e| Box::new(e) as BoxError)
        }));
        let second = other.ready().await.expect("ready").call(rx2);

        let (_tx3, rx3) = oneshot::channel();
        let err = svc
            .ready()
            .await
            .expect("ready")
            .call(rx3)
            .await
            .expect_err("full");
        assert_eq!(
            err.downcast_ref::<Overloaded>().expect("Overloaded").limit,
            2
        );

        tx1.send(1).expect("receiver alive");
        assert_eq!(first.await.expect("first"), 1);
        // The first call finished: a new one fits again.
        let (tx4, rx4) = oneshot::channel();
        let fourth = svc.ready().await.expect("ready").call(rx4);
        tx4.send(4).expect("receiver alive");
        assert_eq!(fourth.await.expect("fourth"), 4);

        // A dropped call gives its slot back too.
        drop(second);
        drop(tx2);
        let (tx5, rx5) = oneshot::channel();
        let (tx6, rx6) = oneshot::channel();
        let f5 = svc.ready().await.expect("ready").call(rx5);
        let f6 = svc.ready().await.expect("ready").call(rx6);
        tx5.send(5).expect("alive");
        tx6.send(6).expect("alive");
        assert_eq!(f5.await.expect("5"), 5);
        assert_eq!(f6.await.expect("6"), 6);
    }

    #[tokio::test]
    async fn rate_limit_lets_the_burst_through_then_refuses() {
        let layer = RateLimitLayer::new(&RateLimitSpec {
            per_second: 1,
            burst: 5,
        });
        let backend = service_fn(|()| async { Ok::<_, BoxError>(()) });
        let mut passed = 0;
        let mut refused = Vec::new();
        for i in 0..6 {
            // Each call goes through a new service made by the layer: one bucket for all.
            let svc = layer.layer(backend);
            match svc.oneshot(()).await {
                Ok(()) => passed += 1,
                Err(e) => refused.push((i, e)),
            }
        }
        assert_eq!(passed, 5);
        assert_eq!(refused.len(), 1);
        let (index, err) = &refused[0];
        assert_eq!(*index, 5);
        let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
        assert!(limited.retry_after > Duration::ZERO);
        assert!(limited.retry_after <= Duration::from_secs(1));
    }

    #[tokio::test]
    async fn huge_concurrency_does_not_panic() {
        let svc = ConcurrencyLimitLayer::new(usize::MAX)
            .layer(service_fn(|()| async { Ok::<_, BoxError>(()) }));
        assert!(svc.oneshot(()).await.is_ok());
    }

    #[tokio::test]
    async fn zero_rate_spec_does_not_panic() {
        let layer = RateLimitLayer::new(&RateLimitSpec {
            per_second: 0,
            burst: 0,
        });
        let svc = layer.layer(service_fn(|()| async { Ok::<_, BoxError>(()) }));
        assert!(svc.clone().oneshot(()).await.is_ok());
        assert!(svc.oneshot(()).await.is_err());
    }
}
