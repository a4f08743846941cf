//! The standard policy stack in front of one driver instance.
//!
//! The gateway's `stack.rs` is the one place where the order of layers is decided; this
//! helper builds the same order for the native channel so the adapter can be tested (and
//! used) as it will run, until `stack.rs` takes it over:
//!
//! ```text
//! observe -> rate limit -> concurrency limit -> fault injection
//!   -> total timeout -> retry -> circuit breaker -> per-try timeout -> driver
//! ```
//!
//! With the gateway's generic `stack::policy_stack` and `stack::endpoint_stack`, the same
//! stack is (a driver instance is a target with one endpoint, itself):
//!
//! ```text
//! let inner = endpoint_stack(breaker, policy.per_try_timeout, NativeClassify::Breaker,
//!                            in_flight, instance.service());
//! policy_stack(&parts, &policy, &metrics, NativeClassify::Retry,
//!              NativeReplay::new(instance.operations()), inner)
//! ```
//!
//! Two views of one result (see [`crate::classify`]): the breaker counts permanent errors
//! as failures, the retry layer does not resend them. The observe layer may take either:
//! it labels both `Sent` and `Local` outcomes `failure`.

use crate::classify::{NativeClassify, NativeReplay};
use crate::driver::NativeCall;
use crate::registry::DriverInstance;
use quartet_policies::breaker::{BreakerHandle, CircuitBreakerLayer};
use quartet_policies::error::TimeoutKind;
use quartet_policies::fault::{FaultHandle, FaultLayer};
use quartet_policies::limit::{ConcurrencyLimitLayer, RateLimitLayer};
use quartet_policies::metrics::Metrics;
use quartet_policies::observe::ObserveLayer;
use quartet_policies::retry::{Budget, RetryLayer};
use quartet_policies::spec::PolicySpec;
use quartet_policies::timeout::TimeoutLayer;
use quartet_policies::{BoxError, Target};
use serde_json::Value;
use std::sync::Arc;
use tower::util::BoxCloneSyncService;
use tower::ServiceBuilder;

/// The boxed service the gateway calls: one per driver instance, cheap to clone; every
/// clone shares the instance's limit, breaker, budget and fault.
pub type NativeService = BoxCloneSyncService<NativeCall, Value, BoxError>;

/// One driver instance behind its policy stack, with the handles the admin API needs.
#[derive(Clone)]
pub struct DriverStack {
    pub service: NativeService,
    /// The instance's one breaker (target `native:{name}`, endpoint `{name}`).
    pub breaker: BreakerHandle,
    pub fault: FaultHandle,
}

/// Builds the stack of `instance` under `policy`. The `spec` must have passed
/// `PolicySpec::validate`.
pub fn driver_stack(
    instance: &DriverInstance,
    policy: &PolicySpec,
    metrics: Arc<Metrics>,
) -> DriverStack {
    let target = Target::new("native", instance.name());
    let breaker = BreakerHandle::new(
        target.clone(),
        instance.name(),
        policy.breaker.clone(),
        metrics.clone(),
    );
    let fault = FaultHandle::new(target.clone(), policy.fault.clone(), metrics.clone());
    let budget = Arc::new(Budget::new(&policy.retry));
    let replay = NativeReplay::new(instance.operations());

    let service = ServiceBuilder::new()
        // Outermost, so every call is counted, refusals included.
        .layer(ObserveLayer::new(
            target.clone(),
            metrics.clone(),
            NativeClassify::Breaker,
        ))
        // Refusals that cost nothing come first: a caller over its rate, a device already
        // busy with `concurrency` calls (refused at once, never queued).
        .option_layer(policy.rate_limit.as_ref().map(RateLimitLayer::new))
        .layer(ConcurrencyLimitLayer::new(policy.concurrency))
        // The total time the caller waits, retries, backoff and injected delays included.
        .layer(TimeoutLayer::new(policy.timeout, TimeoutKind::Total))
        // Injected faults stand for the device failing, so they sit inside the limits.
        .layer(FaultLayer::new(fault.clone()))
        // Transient errors only; after a send, only for idempotent operations.
        .layer(RetryLayer::new(
            &policy.retry,
            budget,
            NativeClassify::Retry,
            replay,
            target,
            metrics,
        ))
        // Per attempt, so each retry asks the breaker again.
        .layer(CircuitBreakerLayer::new(
            breaker.clone(),
            NativeClassify::Breaker,
        ))
        // A hung attempt is dropped here, which kills the process it started.
        .layer(TimeoutLayer::new(
            policy.per_try_timeout,
            TimeoutKind::PerTry,
        ))
        .service(instance.service());
    DriverStack {
        service: BoxCloneSyncService::new(service),
        breaker,
        fault,
    }
}
