//! Retry: exponential backoff with full jitter, a budget, and only safe retries.
//!
//! # When is a retry safe
//!
//! Sending a request twice is only harmless when the backend cannot have acted on the
//! first copy, or when acting twice is the same as acting once:
//!
//! 1. **Connect phase, always** ([`Class::NotSent`]): the connection was refused, DNS or
//!    the TLS handshake failed, the broker refused or could not route the message.
//!    Nothing reached the backend, so another attempt cannot double anything.
//! 2. **After a send, only idempotent requests** ([`Class::Sent`] with
//!    [`Replay::idempotent`]): a 5xx, a reset mid-response, a per-try timeout. The backend
//!    may have done the work; a GET or a target the config marks idempotent can be sent
//!    again, a POST or a SQL statement inside a transaction cannot.
//! 3. **Never** for a success or a [`Class::Local`] refusal (breaker open, no endpoint,
//!    an injected fault, the total timeout): the gateway itself said no, and asking again
//!    at once would get the same answer.
//!
//! And even then only when the request can be sent again ([`Replay::replay`] kept what
//! that takes before the send, and [`Replay::again`] made the request from it), attempts
//! remain (`attempts` counts the first one), and the [`Budget`] has a retry left.

pub mod backoff;
pub mod budget;

pub use backoff::Backoff;
pub use budget::Budget;

use crate::classify::{classify_policy_error, Class, Classify, Replay};
use crate::metrics::Metrics;
use crate::spec::RetrySpec;
use crate::{BoxError, Target};
use futures_util::future::BoxFuture;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

pub struct RetryLayer<C, R> {
    spec: RetrySpec,
    budget: Arc<Budget>,
    classify: C,
    replay: R,
    target: Target,
    metrics: Arc<Metrics>,
}

impl<C: Clone, R: Clone> Clone for RetryLayer<C, R> {
    fn clone(&self) -> Self {
        Self {
            spec: self.spec.clone(),
            budget: self.budget.clone(),
            classify: self.classify.clone(),
            replay: self.replay.clone(),
            target: self.target.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<C, R> RetryLayer<C, R> {
    /// `budget` is shared by every clone of the target's stack (one budget per target).
    pub fn new(
        spec: &RetrySpec,
        budget: Arc<Budget>,
        classify: C,
        replay: R,
        target: Target,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            spec: spec.clone(),
            budget,
            classify,
            replay,
            target,
            metrics,
        }
    }
}

impl<S, C: Clone, R: Clone> Layer<S> for RetryLayer<C, R> {
    type Service = Retry<S, C, R>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry {
            inner,
            layer: self.clone(),
            _p: PhantomData,
        }
    }
}

pub struct Retry<S, C, R> {
    inner: S,
    layer: RetryLayer<C, R>,
    _p: PhantomData<fn()>,
}

impl<S: Clone, C: Clone, R: Clone> Clone for Retry<S, C, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
            _p: PhantomData,
        }
    }
}

impl<S, Req, C, R> Service<Req> for Retry<S, C, R>
where
    S: Service<Req, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
    C: Classify<S::Response>,
    R: Replay<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Every layer below is always ready (`crate::call_ready`), so each attempt is
        // called on a clone at once. What the future needs is taken here, outside it: a
        // captured value moved into a local inside would take its room twice, and a
        // future over 1 KiB costs the allocator's slow path on every call.
        let mut svc = self.inner.clone();
        let RetryLayer {
            spec,
            budget,
            classify,
            replay,
            target,
            metrics,
        } = self.layer.clone();
        let attempts = spec.attempts.max(1);
        let backoff = Backoff::new(spec.backoff, spec.max_backoff);
        let mut req = req;
        Box::pin(async move {
            let labels = [target.channel, &*target.name];
            budget.deposit();
            let mut attempt: u32 = 1;
            loop {
                // The request is moved into the call, so what the next attempt needs
                // (and whether it is idempotent) must be taken before sending.
                let idempotent = replay.idempotent(&req);
                let kept = if attempt < attempts {
                    replay.replay(&req)
                } else {
                    None
                };
                let result = crate::call_ready(&mut svc, req).await;
                let class = class_of(&classify, &result);
                let Some(kept) = kept else {
                    return result;
                };
                // Safe: nothing was sent (NotSent), or it was sent and sending it twice
                // is harmless (Sent + idempotent). Never a success or a Local refusal.
                if !class.retry_safe(idempotent) {
                    return result;
                }
                let Some(next) = replay.again(kept) else {
                    return result;
                };
                if !budget.withdraw() {
                    metrics.budget_exhausted.with_label_values(&labels).inc();
                    tracing::debug!(target = %target, attempt, "retry budget exhausted");
                    return result;
                }
                let delay = backoff.delay(attempt);
                tracing::debug!(target = %target, attempt, ?class, ?delay, "retrying");
                drop(result);
                // Boxed: only a call that retries pays for the timer's room.
                Box::pin(tokio::time::sleep(delay)).await;
                metrics.retries.with_label_values(&labels).inc();
                attempt += 1;
                req = next;
            }
        })
    }
}

/// Errors raised by our own layers below (per-try timeout, breaker open) are classified
/// here; everything else by the adapter's [`Classify`].
fn class_of<T, C: Classify<T>>(classify: &C, result: &Result<T, BoxError>) -> Class {
    if let Err(e) = result {
        if let Some(class) = classify_policy_error(e) {
            return class;
        }
    }
    classify.classify(result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{BreakerOpen, Elapsed, TimeoutKind};
    use crate::test_util::{TestClassify, TestReplay, TestReq};
    use std::sync::Mutex;
    use std::time::Duration;
    use tokio::time::Instant;
    use tower::service_fn;
    use tower::ServiceExt;

    /// What the scripted backend does on each call; the last step repeats.
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Answer(Class),
        Refused,
        PerTryTimeout,
        BreakerOpen,
    }

    struct Run {
        metrics: Arc<Metrics>,
        calls: Arc<Mutex<Vec<Instant>>>,
        result: Result<Class, BoxError>,
    }

    impl Run {
        fn calls(&self) -> usize {
            self.calls.lock().expect("lock").len()
        }
        fn retries(&self) -> u64 {
            self.metrics
                .retries
                .with_label_values(&["rpc", "compute"])
                .get()
        }
        fn exhausted(&self) -> u64 {
            self.metrics
                .budget_exhausted
                .with_label_values(&["rpc", "compute"])
                .get()
        }
    }

    fn spec() -> RetrySpec {
        RetrySpec {
            attempts: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            budget: 0.2,
            min_per_second: 10,
            ..RetrySpec::default()
        }
    }

    async fn run(spec: RetrySpec, req: TestReq, script: &[Step]) -> Run {
        let budget = Arc::new(Budget::new(&spec));
        run_with(spec, budget, req, script).await
    }

    async fn run_with(spec: RetrySpec, budget: Arc<Budget>, req: TestReq, script: &[Step]) -> Run {
        let metrics = Metrics::new();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<[Step]> = script.into();
        let seen = calls.clone();
        let backend = service_fn(move |_req: TestReq| {
            let n = {
                let mut seen = seen.lock().expect("lock");
                seen.push(Instant::now());
                seen.len() - 1
            };
            let step = script[n.min(script.len() - 1)];
            async move {
                match step {
                    Step::Answer(class) => Ok(class),
                    Step::Refused => Err::<Class, BoxError>("connection refused".into()),
                    Step::PerTryTimeout => Err(Elapsed {
                        kind: TimeoutKind::PerTry,
                        after: Duration::from_secs(1),
                    }
                    .into()),
                    Step::BreakerOpen => Err(BreakerOpen {
                        target: "rpc:compute".into(),
                        retry_after: Duration::from_secs(1),
                    }
                    .into()),
                }
            }
        });
        let layer = RetryLayer::new(
            &spec,
            budget,
            TestClassify,
            TestReplay,
            Target::new("rpc", "compute"),
            metrics.clone(),
        );
        let result = layer.layer(backend).oneshot(req).await;
        Run {
            metrics,
            calls,
            result,
        }
    }

    const GET: TestReq = TestReq {
        idempotent: true,
        replayable: true,
    };
    const POST: TestReq = TestReq {
        idempotent: false,
        replayable: true,
    };
    const STREAM: TestReq = TestReq {
        idempotent: true,
        replayable: false,
    };

    #[tokio::test(start_paused = true)]
    async fn retries_a_not_sent_failure_even_when_not_idempotent() {
        let r = run(
            spec(),
            POST,
            &[Step::Refused, Step::Refused, Step::Answer(Class::Success)],
        )
        .await;
        assert_eq!(*r.result.as_ref().expect("third attempt"), Class::Success);
        assert_eq!(r.calls(), 3);
        assert_eq!(r.retries(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_sent_only_when_idempotent() {
        let r = run(spec(), POST, &[Step::Answer(Class::Sent)]).await;
        assert_eq!(r.calls(), 1);
        assert_eq!(*r.result.as_ref().expect("answer as is"), Class::Sent);
        assert_eq!(r.retries(), 0);

        let r = run(
            spec(),
            GET,
            &[Step::Answer(Class::Sent), Step::Answer(Class::Success)],
        )
        .await;
        assert_eq!(r.calls(), 2);
        assert_eq!(r.result.expect("second attempt"), Class::Success);
    }

    #[tokio::test(start_paused = true)]
    async fn per_try_timeout_is_a_sent_failure() {
        let r = run(spec(), POST, &[Step::PerTryTimeout]).await;
        assert_eq!(r.calls(), 1);
        assert!(r.result.expect_err("timeout").is::<Elapsed>());
        let r = run(
            spec(),
            GET,
            &[Step::PerTryTimeout, Step::Answer(Class::Success)],
        )
        .await;
        assert_eq!(r.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_after_attempts_and_returns_the_last_result() {
        let r = run(spec(), GET, &[Step::Refused]).await;
        assert_eq!(r.calls(), 3);
        assert_eq!(r.retries(), 2);
        assert_eq!(
            r.result.expect_err("all failed").to_string(),
            "connection refused"
        );

        let r = run(
            RetrySpec {
                attempts: 1,
                ..spec()
            },
            GET,
            &[Step::Refused],
        )
        .await;
        assert_eq!(r.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_without_a_replay_copy() {
        let r = run(spec(), STREAM, &[Step::Refused]).await;
        assert_eq!(r.calls(), 1);
        assert_eq!(r.retries(), 0);
        assert_eq!(r.exhausted(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn never_retries_success_or_local_refusals() {
        let r = run(spec(), GET, &[Step::Answer(Class::Success)]).await;
        assert_eq!(r.calls(), 1);
        let r = run(spec(), GET, &[Step::BreakerOpen]).await;
        assert_eq!(r.calls(), 1);
        assert!(r.result.expect_err("open").is::<BreakerOpen>());
        let r = run(spec(), GET, &[Step::Answer(Class::Local)]).await;
        assert_eq!(r.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_exhaustion_is_counted_and_stops_retries() {
        let spec = RetrySpec {
            budget: 0.0,
            min_per_second: 0,
            ..spec()
        };
        let r = run(spec.clone(), GET, &[Step::Refused]).await;
        assert_eq!(r.calls(), 1);
        assert_eq!(r.retries(), 0);
        assert_eq!(r.exhausted(), 1);

        // A ratio of 0.5 with one deposit per call: the first call gets no retry
        // (0.5 rounds down), the second call's deposit makes one retry available.
        let spec = RetrySpec {
            budget: 0.5,
            ..spec
        };
        let budget = Arc::new(Budget::new(&spec));
        let r = run_with(spec.clone(), budget.clone(), GET, &[Step::Refused]).await;
        assert_eq!((r.calls(), r.exhausted()), (1, 1));
        let r = run_with(spec, budget, GET, &[Step::Refused]).await;
        assert_eq!((r.calls(), r.retries(), r.exhausted()), (2, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_between_attempts_within_the_jitter_bounds() {
        let backoff = Backoff::new(spec().backoff, spec().max_backoff);
        let mut total = Duration::ZERO;
        for _ in 0..20 {
            let r = run(
                RetrySpec {
                    min_per_second: 1000,
                    ..spec()
                },
                GET,
                &[Step::Refused],
            )
            .await;
            let calls = r.calls.lock().expect("lock").clone();
            assert_eq!(calls.len(), 3);
            for (i, pair) in calls.windows(2).enumerate() {
                let gap = pair[1] - pair[0];
                assert!(gap <= backoff.cap(i as u32 + 1), "gap {gap:?} above cap");
                total += gap;
            }
        }
        assert!(total > Duration::ZERO, "retries must actually sleep");
    }
}
