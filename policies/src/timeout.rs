//! Total and per-try timeouts. Raise [`crate::error::Elapsed`] with the kind, so the
//! retry layer knows a per-try timeout may be retried and a total one ends the call.

use crate::error::TimeoutKind;
use crate::BoxError;
use futures_util::future::BoxFuture;
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
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let _ = (&self.after, &self.kind, req);
        todo!("timeout")
    }
}
