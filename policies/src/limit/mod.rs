//! Concurrency limit (a bulkhead that rejects at once when full) and token-bucket rate
//! limit (governor).
//!
//! Why neither one queues: a queue in front of a slow backend turns a backend problem into
//! latency for everyone and memory in the gateway, and hides the overload from the
//! callers that could back off. Refusing at once (503 / 429 with `Retry-After`) keeps the
//! gateway's own latency flat and tells the caller the truth.

use crate::error::{Overloaded, RateLimited};
use crate::spec::RateLimitSpec;
use crate::BoxError;
use futures_util::future::BoxFuture;
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
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // `try_acquire_owned`, not `acquire`: when full, refuse now instead of waiting.
        let permit = match self.semaphore.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let err = Overloaded { limit: self.max };
                return Box::pin(async move { Err(err.into()) });
            }
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            // Held until the response is there (or this future is dropped).
            drop(permit);
            result
        })
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
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // governor keeps its own (real) clock, not tokio's: paused tokio time does not
        // refill the bucket, which is acceptable for a limit on real traffic.
        if let Err(not_until) = self.limiter.check() {
            let retry_after = not_until.wait_time_from(self.limiter.clock().now());
            let err = RateLimited { retry_after };
            return Box::pin(async move { Err(err.into()) });
        }
        Box::pin(self.inner.call(req))
    }
}
