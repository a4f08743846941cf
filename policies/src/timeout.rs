//! Total and per-try timeouts. Raise [`crate::error::Elapsed`] with the kind, so the
//! retry layer knows a per-try timeout may be retried and a total one ends the call.

use crate::error::{Elapsed, TimeoutKind};
use crate::future::{LayerFuture, OnDone};
use crate::BoxError;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service};

#[derive(Clone, Debug)]
pub struct TimeoutLayer {
    after: Duration,
    kind: TimeoutKind,
}

impl TimeoutLayer {
    pub fn new(after: Duration, kind: TimeoutKind) -> Self {
        Self { after, kind }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;
    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            after: self.after,
            kind: self.kind,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    after: Duration,
    kind: TimeoutKind,
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = LayerFuture<tokio::time::Timeout<S::Future>, Expiry, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The inner future is created here, outside the timer, so the clock starts when
        // the call is made, not when the returned future is first polled.
        let fut = self.inner.call(req);
        LayerFuture::calling(
            tokio::time::timeout(self.after, fut),
            Expiry {
                after: self.after,
                kind: self.kind,
            },
        )
    }
}

/// A timeout's end of a call: the inner answer, or [`Elapsed`] with the kind.
pub struct Expiry {
    after: Duration,
    kind: TimeoutKind,
}

impl<R, E: Into<BoxError>> OnDone<Result<Result<R, E>, tokio::time::error::Elapsed>> for Expiry {
    type Output = Result<R, BoxError>;

    fn done(self, output: Result<Result<R, E>, tokio::time::error::Elapsed>) -> Self::Output {
        match output {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(Box::new(Elapsed {
                kind: self.kind,
                after: self.after,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{service_fn, ServiceExt};

    #[tokio::test(start_paused = true)]
    async fn raises_elapsed_with_kind_when_too_slow() {
        let svc = TimeoutLayer::new(Duration::from_millis(100), TimeoutKind::PerTry).layer(
            service_fn(|()| async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok::<_, BoxError>(1)
            }),
        );
        let err = svc.oneshot(()).await.expect_err("must time out");
        let e = err.downcast_ref::<Elapsed>().expect("an Elapsed");
        assert_eq!(e.kind, TimeoutKind::PerTry);
        assert_eq!(e.after, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn passes_fast_results_and_errors_through() {
        let svc = TimeoutLayer::new(Duration::from_secs(1), TimeoutKind::Total).layer(service_fn(
            |x: u32| async move {
                if x == 0 {
                    Err::<u32, BoxError>("boom".into())
                } else {
                    Ok(x)
                }
            },
        ));
        assert_eq!(svc.clone().oneshot(7).await.expect("ok"), 7);
        let err = svc.oneshot(0).await.expect_err("inner error");
        assert!(!err.is::<Elapsed>());
        assert_eq!(err.to_string(), "boom");
    }
}
