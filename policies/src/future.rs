//! The future a policy layer returns: the inner call's own future, not boxed, and what the
//! layer does when it ends.
//!
//! Most layers do their work around the call, not during it: a permit taken before and
//! given back after (bulkhead, breaker), a metric recorded after (observe), an error
//! mapped (timeout). Such a layer returns a [`LayerFuture`] holding the inner future and
//! an [`OnDone`], so a call through the stack allocates once for the whole stack (where
//! [`crate::SharedStack`] boxes it) instead of once per layer, and each poll goes down
//! the layers by direct calls. A layer with asynchronous work of its own (an injected
//! delay; the retry loop) boxes that work, as before.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;

use crate::BoxError;

/// What a layer does with the inner call's output, once, when it ends. Whatever it holds
/// (a permit, a gauge) is dropped with the future if the call never ends.
pub trait OnDone<T> {
    type Output;
    fn done(self, output: T) -> Self::Output;
}

/// Passes the output on unchanged.
pub struct Pass;

impl<T> OnDone<T> for Pass {
    type Output = T;
    fn done(self, output: T) -> T {
        output
    }
}

/// Passes the output on unchanged, holding `T` (a permit, a count's guard) until the
/// call ends or its future is dropped, whichever comes first.
pub struct Hold<T>(pub T);

impl<T, O> OnDone<O> for Hold<T> {
    type Output = O;
    fn done(self, output: O) -> O {
        output
    }
}

pin_project_lite::pin_project! {
    /// A layer's answer to one call.
    #[project = Proj]
    pub enum LayerFuture<F, D, R> {
        /// Answered at once, without calling the inner service (a refusal).
        Now { output: Option<Result<R, BoxError>> },
        /// The inner call; `on` is applied to its output.
        Calling { #[pin] fut: F, on: Option<D> },
        /// The layer's own asynchronous work, boxed.
        Boxed { fut: BoxFuture<'static, Result<R, BoxError>> },
    }
}

impl<F, D, R> LayerFuture<F, D, R> {
    /// The inner call's future, and what to do when it ends.
    pub fn calling(fut: F, on: D) -> Self {
        Self::Calling { fut, on: Some(on) }
    }

    /// An answer that needs no call.
    pub fn now(output: Result<R, BoxError>) -> Self {
        Self::Now {
            output: Some(output),
        }
    }

    /// A refusal.
    pub fn refused(err: impl Into<BoxError>) -> Self {
        Self::now(Err(err.into()))
    }

    pub fn boxed(fut: BoxFuture<'static, Result<R, BoxError>>) -> Self {
        Self::Boxed { fut }
    }
}

impl<F, D, R> Future for LayerFuture<F, D, R>
where
    F: Future,
    D: OnDone<F::Output, Output = Result<R, BoxError>>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Now { output } => Poll::Ready(output.take().expect(POLLED_AFTER_END)),
            Proj::Calling { fut, on } => {
                let output = std::task::ready!(fut.poll(cx));
                Poll::Ready(on.take().expect(POLLED_AFTER_END).done(output))
            }
            Proj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

/// A future polled again after it answered breaks `Future`'s contract; `async` blocks
/// panic then too.
const POLLED_AFTER_END: &str = "a policy layer's future polled after it ended";

#[cfg(test)]
mod tests {
    use super::*;

    struct AddOne;

    impl OnDone<Result<u32, BoxError>> for AddOne {
        type Output = Result<u32, BoxError>;
        fn done(self, output: Result<u32, BoxError>) -> Self::Output {
            output.map(|n| n + 1)
        }
    }

    #[tokio::test]
    async fn each_kind_answers() {
        let calling: LayerFuture<_, _, u32> =
            LayerFuture::calling(async { Ok::<u32, BoxError>(1) }, AddOne);
        assert_eq!(calling.await.unwrap(), 2);

        let refused: LayerFuture<std::future::Ready<Result<u32, BoxError>>, Pass, u32> =
            LayerFuture::refused("full");
        assert_eq!(refused.await.unwrap_err().to_string(), "full");

        let boxed: LayerFuture<std::future::Ready<Result<u32, BoxError>>, Pass, u32> =
            LayerFuture::boxed(Box::pin(async { Ok(7) }));
        assert_eq!(boxed.await.unwrap(), 7);
    }

    #[test]
    fn what_on_done_holds_is_dropped_with_an_unfinished_call() {
        let dropped = std::sync::Arc::new(());
        let fut: LayerFuture<_, _, u32> = LayerFuture::calling(
            std::future::pending::<Result<u32, BoxError>>(),
            Hold(dropped.clone()),
        );
        assert_eq!(std::sync::Arc::strong_count(&dropped), 2);
        drop(fut);
        assert_eq!(std::sync::Arc::strong_count(&dropped), 1);
    }
}
