//! [`SharedStack`]: a built policy stack, its type erased, as a channel keeps it.
//!
//! `tower::util::BoxCloneSyncService` costs two allocations per call on a stack like
//! ours: a clone of the whole stack boxed (its `call` takes `&mut self`, so a shared stack
//! is cloned for each call), and a box around the call's future, which every layer here
//! has boxed already. A `SharedStack` clones the concrete stack on the stack of the
//! caller (reference counts, no allocation) and hands its future on as it is.

use crate::BoxError;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::Service;

/// The future of a call through a [`SharedStack`].
pub type StackFuture<Resp> = BoxFuture<'static, Result<Resp, BoxError>>;

/// A policy stack behind one reference count. Cloning it is one count; calling it needs
/// only `&self`. Every layer of a policy stack is always ready
/// ([`crate::call_ready`]), so a call never waits in `poll_ready`.
pub struct SharedStack<Req, Resp> {
    inner: Arc<dyn CallStack<Req, Resp>>,
}

impl<Req, Resp> Clone for SharedStack<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

trait CallStack<Req, Resp>: Send + Sync {
    fn call(&self, req: Req) -> StackFuture<Resp>;
}

/// A service whose future is boxed already (every policy layer's is), shareable.
pub trait BoxedService<Req, Resp>:
    Service<Req, Response = Resp, Error = BoxError, Future = StackFuture<Resp>>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, Req, Resp> BoxedService<Req, Resp> for S where
    S: Service<Req, Response = Resp, Error = BoxError, Future = StackFuture<Resp>>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A stack whose future is boxed already.
struct Boxed<S>(S);

impl<S: BoxedService<Req, Resp>, Req, Resp> CallStack<Req, Resp> for Boxed<S> {
    fn call(&self, req: Req) -> StackFuture<Resp> {
        crate::call_ready(&mut self.0.clone(), req)
    }
}

/// Any other always-ready service: its future gets boxed.
struct Boxing<S>(S);

impl<S, Req, Resp> CallStack<Req, Resp> for Boxing<S>
where
    S: Service<Req, Response = Resp, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    fn call(&self, req: Req) -> StackFuture<Resp> {
        Box::pin(crate::call_ready(&mut self.0.clone(), req))
    }
}

impl<Req: 'static, Resp: 'static> SharedStack<Req, Resp> {
    /// A stack whose outermost layer returns a boxed future (every policy layer does).
    pub fn new<S: BoxedService<Req, Resp>>(svc: S) -> Self {
        Self {
            inner: Arc::new(Boxed(svc)),
        }
    }

    /// Any always-ready service (a test's `service_fn`, say): its futures are boxed.
    pub fn boxing<S>(svc: S) -> Self
    where
        S: Service<Req, Response = Resp, Error = BoxError> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
    {
        Self {
            inner: Arc::new(Boxing(svc)),
        }
    }

    /// Sends `req` through the stack.
    pub fn call(&self, req: Req) -> StackFuture<Resp> {
        self.inner.call(req)
    }
}

impl<Req: 'static, Resp: 'static> Service<Req> for SharedStack<Req, Resp> {
    type Response = Resp;
    type Error = BoxError;
    type Future = StackFuture<Resp>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> StackFuture<Resp> {
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn calls_through_a_shared_reference_and_its_clones() {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let stack: SharedStack<u32, u32> = SharedStack::boxing(tower::service_fn(move |n: u32| {
            seen.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<_, BoxError>(n * 2) }
        }));
        assert_eq!(stack.call(2).await.unwrap(), 4);
        let mut other = stack.clone();
        assert_eq!(Service::call(&mut other, 5).await.unwrap(), 10);
        // A boxed-future service goes in as it is.
        let again = SharedStack::new(stack.clone());
        assert_eq!(again.call(7).await.unwrap(), 14);
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }
}
