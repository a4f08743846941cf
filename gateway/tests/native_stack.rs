//! A driver instance behind the policy stack the gateway builds for it
//! (`quartet::native::driver_service`, from `stack.rs`, the one place the order of layers
//! is decided): the concurrency limit refuses at once, a timed-out call's process is
//! killed, retries follow the rules, caller errors do not open the breaker, and an `http`
//! driver's breaker opens on a failing backend and closes after it recovers.

#[path = "../../adapters/native/tests/common/mod.rs"]
mod common;
#[path = "../../adapters/native/tests/vendor/mod.rs"]
mod vendor;

use common::{pid_exists, pid_of, wait_until, TestDriver};
use futures_util::FutureExt;
use quartet_native::spec::{ExecCommandSpec, ExecSpec};
use quartet_native::{
    DriverError, DriverInstance, ErrorKind, NativeCall, NativeService, UnknownOperation,
};
use quartet_policies::breaker::{BreakerHandle, BreakerState};
use quartet_policies::error::{BreakerOpen, Elapsed, Overloaded, TimeoutKind};
use quartet_policies::fault::FaultHandle;
use quartet_policies::metrics::Metrics;
use quartet_policies::spec::{BreakerSpec, PolicySpec, RetrySpec};
use quartet_policies::Target;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower::ServiceExt;
use vendor::{http_driver, serve, start, Backend};

/// The stack the gateway serves `instance` with, and its breaker.
struct Stack {
    service: NativeService,
    breaker: BreakerHandle,
}

fn driver_stack(instance: &DriverInstance, policy: &PolicySpec, metrics: Arc<Metrics>) -> Stack {
    let target = Target::new("native", instance.name());
    let fault = FaultHandle::new(target, policy.fault.clone(), metrics.clone());
    let (service, breaker, _in_flight) =
        quartet::native::driver_service(instance, policy, &metrics, fault);
    Stack { service, breaker }
}

fn policy() -> PolicySpec {
    PolicySpec {
        timeout: Duration::from_secs(20),
        per_try_timeout: Duration::from_secs(10),
        retry: RetrySpec {
            attempts: 3,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            ..RetrySpec::default()
        },
        breaker: BreakerSpec {
            consecutive_failures: 3,
            failure_rate: 2.0,
            ..BreakerSpec::default()
        },
        concurrency: 2,
        ..PolicySpec::default()
    }
}

fn test_instance() -> (TestDriver, DriverInstance) {
    let driver = TestDriver::new();
    let instance = DriverInstance::new("device", None, Arc::new(driver.clone()));
    (driver, instance)
}

fn kind_of(err: &quartet_native::BoxError) -> Option<ErrorKind> {
    quartet_native::error::find_driver_error(&**err).map(DriverError::kind)
}

#[tokio::test]
async fn the_call_over_the_limit_is_refused_at_once() {
    let (driver, instance) = test_instance();
    let stack = driver_stack(&instance, &policy(), Metrics::new());

    let mut held = Vec::new();
    for i in 0..2 {
        let svc = stack.service.clone();
        held.push(tokio::spawn(
            svc.oneshot(NativeCall::new("hold", json!({ "n": i }))),
        ));
    }
    wait_until(
        "both calls reach the driver",
        Duration::from_secs(10),
        || driver.entered() == 2,
    )
    .await;

    // The third call's answer is there on its first poll: refused, not queued.
    let mut svc = stack.service.clone();
    svc.ready().await.expect("ready");
    let third = svc
        .call(NativeCall::new("hold", json!({"n": 2})))
        .now_or_never()
        .expect("answered without waiting");
    let err = third.expect_err("refused");
    assert_eq!(err.downcast_ref::<Overloaded>().map(|o| o.limit), Some(2));
    assert_eq!(
        driver.entered(),
        2,
        "the refused call never reached the driver"
    );

    driver.gate.add_permits(2);
    for h in held {
        h.await.expect("task").expect("held call succeeds");
    }
    // Capacity is back.
    let v = stack
        .service
        .clone()
        .oneshot(NativeCall::new("echo", json!({"x": 1})))
        .await
        .expect("echo");
    assert_eq!(v, json!({"x": 1}));
}

#[tokio::test]
async fn transient_errors_are_retried_for_idempotent_operations_only() {
    let (driver, instance) = test_instance();
    let mut spec = policy();
    // Keep the breaker out of this test: it would open after the first call's three tries.
    spec.breaker.consecutive_failures = 100;
    let stack = driver_stack(&instance, &spec, Metrics::new());

    let err = stack
        .service
        .clone()
        .oneshot(NativeCall::new("fail_transient", json!({})))
        .await
        .expect_err("fails");
    assert_eq!(kind_of(&err), Some(ErrorKind::Transient));
    assert_eq!(driver.entered(), 3, "idempotent: three attempts");

    let before = driver.entered();
    let err = stack
        .service
        .clone()
        .oneshot(NativeCall::new("fail_transient_post", json!({})))
        .await
        .expect_err("fails");
    assert_eq!(kind_of(&err), Some(ErrorKind::Transient));
    assert_eq!(driver.entered() - before, 1, "not idempotent: one attempt");

    let before = driver.entered();
    let err = stack
        .service
        .clone()
        .oneshot(NativeCall::new("fail_permanent", json!({})))
        .await
        .expect_err("fails");
    assert_eq!(kind_of(&err), Some(ErrorKind::Permanent));
    assert_eq!(driver.entered() - before, 1, "permanent: never retried");
}

#[tokio::test]
async fn caller_errors_do_not_open_the_breaker_and_backend_errors_do() {
    let (driver, instance) = test_instance();
    let mut spec = policy();
    spec.retry.attempts = 1;
    let stack = driver_stack(&instance, &spec, Metrics::new());

    for _ in 0..5 {
        let err = stack
            .service
            .clone()
            .oneshot(NativeCall::new("fail_invalid", json!({})))
            .await
            .expect_err("invalid");
        assert_eq!(kind_of(&err), Some(ErrorKind::InvalidInput));
        let err = stack
            .service
            .clone()
            .oneshot(NativeCall::new("no_such_operation", json!({})))
            .await
            .expect_err("unknown");
        assert!(err.is::<UnknownOperation>(), "{err}");
    }
    assert_eq!(stack.breaker.state(), BreakerState::Closed);
    assert_eq!(
        driver.entered(),
        5,
        "unknown operations never reach the driver"
    );

    for _ in 0..3 {
        let err = stack
            .service
            .clone()
            .oneshot(NativeCall::new("fail_permanent", json!({})))
            .await
            .expect_err("permanent");
        assert_eq!(kind_of(&err), Some(ErrorKind::Permanent));
    }
    assert_eq!(stack.breaker.state(), BreakerState::Open);
}

/// A duration no other process on the machine is likely to sleep for.
fn unique_seconds() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_micros();
    format!("30.{micros:06}")
}

/// Runs `executable args` as an exec command under a 2 s per-try timeout, waits until the
/// process whose command line is `watched` runs, and checks the call gets `Elapsed` and that
/// process is gone afterwards.
async fn timed_out_call_leaves_no_process(
    executable: &str,
    patterns: &[&str],
    args: &[&str],
    watched: &[&str],
) {
    let mut commands = BTreeMap::new();
    commands.insert(
        "run".to_string(),
        ExecCommandSpec {
            executable: executable.into(),
            args: patterns.iter().map(|p| p.to_string()).collect(),
            idempotent: false,
        },
    );
    let exec = quartet_native::drivers::exec::ExecDriver::new(&ExecSpec { commands })
        .expect("exec driver");
    let instance = DriverInstance::new("tools", None, Arc::new(exec));
    let mut spec = policy();
    spec.per_try_timeout = Duration::from_secs(2);
    spec.retry.attempts = 1;
    let stack = driver_stack(&instance, &spec, Metrics::new());

    let call = tokio::spawn(
        stack
            .service
            .clone()
            .oneshot(NativeCall::new("run", json!({ "args": args }))),
    );
    let mut pid = None;
    wait_until("the process has started", Duration::from_secs(10), || {
        pid = pid_of(watched);
        pid.is_some()
    })
    .await;
    let pid = pid.expect("pid");

    let err = call.await.expect("task").expect_err("timed out");
    let elapsed = err.downcast_ref::<Elapsed>().expect("an Elapsed");
    assert_eq!(elapsed.kind, TimeoutKind::PerTry);
    wait_until(
        "the killed process is gone",
        Duration::from_secs(10),
        || !pid_exists(pid),
    )
    .await;
}

#[tokio::test]
async fn a_call_outliving_its_timeout_is_cut_and_its_process_killed() {
    let secs = unique_seconds();
    timed_out_call_leaves_no_process(
        "/bin/sleep",
        &[r"[0-9]{1,2}\.[0-9]{1,6}"],
        &[&secs],
        &["/bin/sleep", &secs],
    )
    .await;
}

#[tokio::test]
async fn helpers_a_timed_out_tool_started_are_killed_too() {
    // The allow-list names the script exactly; the shell is the tool here, the sleep its
    // helper (a grandchild of the gateway).
    let secs = unique_seconds();
    let script = format!("/bin/sleep {secs} & wait");
    timed_out_call_leaves_no_process(
        "/bin/sh",
        &["-c", r"/bin/sleep [0-9]{1,2}\.[0-9]{1,6} & wait"],
        &["-c", &script],
        &["/bin/sleep", &secs],
    )
    .await;
}

#[tokio::test]
async fn idempotent_operations_are_retried_others_are_not() {
    let (addr, backend, _server) = start().await;
    let d = http_driver(addr, r#"{ header = "X-Auth-Token", value = "secret" }"#);
    let instance = DriverInstance::new("array", None, Arc::new(d));
    let policy = PolicySpec {
        retry: RetrySpec {
            attempts: 3,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            ..RetrySpec::default()
        },
        breaker: BreakerSpec {
            consecutive_failures: 100,
            failure_rate: 2.0,
            ..BreakerSpec::default()
        },
        ..PolicySpec::default()
    };
    let stack = driver_stack(&instance, &policy, Metrics::new());
    stack
        .service
        .clone()
        .oneshot(NativeCall::new("flaky_get", json!({})))
        .await
        .expect_err("503");
    assert_eq!(backend.hits(), 3, "GET: three attempts");
    stack
        .service
        .clone()
        .oneshot(NativeCall::new("flaky_post", json!({})))
        .await
        .expect_err("503");
    assert_eq!(backend.hits(), 4, "POST: one attempt");
}

#[tokio::test]
async fn the_breaker_opens_on_a_failing_backend_and_closes_after_it_recovers() {
    let (addr, backend, server) = start().await;
    backend.force.store(500, Ordering::SeqCst);
    let d = http_driver(addr, r#"{ header = "X-Auth-Token", value = "secret" }"#);
    let instance = DriverInstance::new("array", None, Arc::new(d));
    let policy = PolicySpec {
        retry: RetrySpec {
            attempts: 1,
            ..RetrySpec::default()
        },
        breaker: BreakerSpec {
            consecutive_failures: 3,
            failure_rate: 2.0,
            open_for: Duration::from_millis(200),
            half_open_probes: 1,
            ..BreakerSpec::default()
        },
        ..PolicySpec::default()
    };
    let stack = driver_stack(&instance, &policy, Metrics::new());
    let call = || NativeCall::new("get_volume", json!({"id": "v1"}));

    // 1. The backend answers 500: three failures open the breaker.
    for _ in 0..3 {
        let err = stack
            .service
            .clone()
            .oneshot(call())
            .await
            .expect_err("500");
        let kind = quartet_native::error::find_driver_error(&*err).map(DriverError::kind);
        assert_eq!(kind, Some(ErrorKind::Transient));
    }
    assert_eq!(backend.hits(), 3);
    assert_eq!(stack.breaker.state(), BreakerState::Open);

    // 2. Open: refused at once, on the first poll, nothing sent.
    let mut svc = stack.service.clone();
    svc.ready().await.expect("ready");
    let refused = svc
        .call(call())
        .now_or_never()
        .expect("answered without waiting")
        .expect_err("refused");
    assert!(refused.is::<BreakerOpen>(), "{refused}");
    assert_eq!(backend.hits(), 3);

    // 3. The backend stops: a probe after `open_for` cannot connect, and the breaker
    //    opens again.
    drop(server);
    let mut probe_failed = false;
    for _ in 0..250 {
        match stack.service.clone().oneshot(call()).await {
            Err(e) if e.is::<BreakerOpen>() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                let d = quartet_native::error::find_driver_error(&*e).expect("driver error");
                assert_eq!(d.kind(), ErrorKind::Transient);
                probe_failed = true;
                break;
            }
            Ok(v) => panic!("the backend is down, yet: {v}"),
        }
    }
    assert!(probe_failed, "a probe reached the stopped backend");
    assert_eq!(stack.breaker.state(), BreakerState::Open);

    // 4. The backend comes back on the same address and answers: a probe succeeds and the
    //    breaker closes.
    let listener = TcpListener::bind(addr).await.expect("rebind");
    let healthy = Backend::default();
    let _server = serve(listener, healthy.clone());
    let mut recovered = None;
    for _ in 0..500 {
        match stack.service.clone().oneshot(call()).await {
            Ok(v) => {
                recovered = Some(v);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert_eq!(recovered, Some(json!({"path": "/api/v1/volumes/v1"})));
    assert_eq!(stack.breaker.state(), BreakerState::Closed);
    stack
        .service
        .clone()
        .oneshot(call())
        .await
        .expect("closed: calls pass");
}
