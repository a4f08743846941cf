//! Helpers shared by the integration tests: bounded waits, processes by command line, a
//! scripted test driver.

#![allow(dead_code)]

use futures_util::future::BoxFuture;
use quartet_native::{Driver, DriverError, Operation};
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pid of the process whose command line is exactly `argv`, if there is one.
pub fn pid_of(argv: &[&str]) -> Option<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| a.bytes().chain(std::iter::once(0)))
        .collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if cmdline == want {
                return Some(pid);
            }
        }
    }
    None
}

/// Whether a process with this pid is in the process table (zombies included).
pub fn pid_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A driver under the test's control: `hold` waits until the test releases it, `echo`
/// answers its arguments, `fail_*` fail with each kind. Counts the calls that reached it.
#[derive(Clone)]
pub struct TestDriver {
    pub entered: Arc<AtomicUsize>,
    pub gate: Arc<Semaphore>,
    operations: Vec<Operation>,
}

impl TestDriver {
    pub fn new() -> Self {
        Self {
            entered: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Semaphore::new(0)),
            operations: vec![
                Operation::new("hold", true),
                Operation::new("echo", true),
                Operation::new("fail_transient", true),
                Operation::new("fail_transient_post", false),
                Operation::new("fail_permanent", true),
                Operation::new("fail_invalid", true),
            ],
        }
    }
    pub fn entered(&self) -> usize {
        self.entered.load(Ordering::SeqCst)
    }
}

impl Driver for TestDriver {
    fn kind(&self) -> &'static str {
        "test"
    }
    fn operations(&self) -> &[Operation] {
        &self.operations
    }
    fn call<'a>(
        &'a self,
        operation: &'a str,
        args: Value,
    ) -> BoxFuture<'a, Result<Value, DriverError>> {
        Box::pin(async move {
            self.entered.fetch_add(1, Ordering::SeqCst);
            match operation {
                "hold" => {
                    let permit = self
                        .gate
                        .acquire()
                        .await
                        .map_err(|e| DriverError::permanent("gate closed", Some(e.into())))?;
                    permit.forget();
                    Ok(args)
                }
                "echo" => Ok(args),
                "fail_transient" | "fail_transient_post" => {
                    Err(DriverError::transient_sent("device busy", None))
                }
                "fail_permanent" => Err(DriverError::permanent("device broken", None)),
                _ => Err(DriverError::invalid("bad arguments")),
            }
        })
    }
}

/// Like [`wait_until`], for a condition that needs to await.
pub async fn wait_until_async<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
