//! The jobs store through a restart: finished jobs keep their outcome, unfinished ones are
//! marked failed, nothing is lost.

mod common;

use common::{wait_until_async, TestDriver};
use quartet_native::jobs::{JobState, Jobs, INTERRUPTED};
use quartet_native::{DriverInstance, NativeCall, NativeService};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

async fn state_of(jobs: &Jobs, id: uuid::Uuid) -> JobState {
    jobs.get(id).await.expect("get").expect("stored").state
}

/// Submits jobs that succeed, fail, hang and never start; "restarts" (drops the store and
/// its running calls, opens a new one on the same database); checks each job's state.
async fn restart_scenario(url: &str, owner: &str) {
    let driver = TestDriver::new();
    let instance = DriverInstance::new("device", None, Arc::new(driver.clone()));
    // The jobs store runs whatever service it is given (the gateway gives the driver's
    // policy stack); the bare driver is enough here.
    let service = NativeService::boxing(instance.service());

    let jobs = Jobs::open_as(url, owner).await.expect("open");
    let done = jobs
        .submit(
            "device",
            service.clone(),
            NativeCall::new("echo", json!({"id": "v1", "size_gb": 1})),
        )
        .await
        .expect("submit");
    let failed = jobs
        .submit(
            "device",
            service.clone(),
            NativeCall::new("fail_invalid", json!({})),
        )
        .await
        .expect("submit");
    let held = jobs
        .submit(
            "device",
            service.clone(),
            NativeCall::new("hold", json!({})),
        )
        .await
        .expect("submit");
    let queued = jobs
        .create("device", "echo", &json!({"never": "started"}))
        .await
        .expect("create");

    wait_until_async("the jobs settle", Duration::from_secs(10), || async {
        state_of(&jobs, done).await == JobState::Succeeded
            && state_of(&jobs, failed).await == JobState::Failed
            && state_of(&jobs, held).await == JobState::Running
    })
    .await;
    let job = jobs.get(done).await.expect("get").expect("stored");
    assert_eq!(job.result, Some(json!({"id": "v1", "size_gb": 1})));
    assert_eq!(job.operation, "echo");
    assert_eq!(job.driver, "device");
    let job = jobs.get(failed).await.expect("get").expect("stored");
    let error = job.error.expect("an error");
    assert_eq!(error.kind, "invalid_input");
    assert!(error.message.contains("bad arguments"), "{}", error.message);
    assert_eq!(state_of(&jobs, queued).await, JobState::Queued);

    // "Restart": the store and its running call go away; a new store opens the same
    // database.
    drop(jobs);
    let jobs = Jobs::open_as(url, owner).await.expect("reopen");
    for id in [held, queued] {
        let job = jobs.get(id).await.expect("get").expect("kept");
        assert_eq!(job.state, JobState::Failed, "{id}");
        let error = job.error.expect("an error");
        assert_eq!(error.kind, "interrupted");
        assert_eq!(error.message, INTERRUPTED);
    }
    let job = jobs.get(done).await.expect("get").expect("kept");
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.result, Some(json!({"id": "v1", "size_gb": 1})));
    assert_eq!(state_of(&jobs, failed).await, JobState::Failed);
    assert_eq!(jobs.get(uuid::Uuid::new_v4()).await.expect("get"), None);

    // The new store runs jobs as the old one did.
    let again = jobs
        .submit(
            "device",
            service.clone(),
            NativeCall::new("echo", json!({"n": 2})),
        )
        .await
        .expect("submit");
    wait_until_async("the new job succeeds", Duration::from_secs(10), || async {
        state_of(&jobs, again).await == JobState::Succeeded
    })
    .await;

    // Finished jobs can be forgotten; this also leaves a shared database as it was.
    let running = jobs
        .submit(
            "device",
            service.clone(),
            NativeCall::new("hold", json!({})),
        )
        .await
        .expect("submit");
    wait_until_async("the held job runs", Duration::from_secs(10), || async {
        state_of(&jobs, running).await == JobState::Running
    })
    .await;
    let forgotten = jobs.forget_finished_before(i64::MAX).await.expect("forget");
    // This owner's five, and perhaps those of owners gone from a shared database.
    assert!(forgotten >= 5, "{forgotten}");
    assert_eq!(jobs.get(done).await.expect("get"), None);
    assert_eq!(state_of(&jobs, running).await, JobState::Running);
    driver.gate.add_permits(1);
    wait_until_async("the held job ends", Duration::from_secs(10), || async {
        state_of(&jobs, running).await == JobState::Succeeded
    })
    .await;
    assert_eq!(
        jobs.forget_finished_before(i64::MAX).await.expect("forget"),
        1
    );
}

#[tokio::test]
async fn jobs_survive_a_restart_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    restart_scenario(&url, "default").await;
}

/// A fresh owner per run, so runs sharing the database never touch each other's jobs.
fn fresh_owner() -> String {
    format!("test-{}", uuid::Uuid::new_v4())
}

/// The real PostgreSQL on 127.0.0.1:5432 (as in compose.yaml): same migration, same queries.
#[tokio::test]
async fn jobs_survive_a_restart_on_postgresql() {
    restart_scenario("postgres://postgres@127.0.0.1:5432/test", &fresh_owner()).await;
}

/// The real MariaDB on 127.0.0.1:3306 (as in compose.yaml): same migration, same queries.
#[tokio::test]
async fn jobs_survive_a_restart_on_mysql() {
    restart_scenario("mysql://root@127.0.0.1:3306/test", &fresh_owner()).await;
}

#[tokio::test]
async fn owners_do_not_fail_each_others_jobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let a = Jobs::open_as(&url, "node-a").await.expect("open a");
    let id = a.create("d", "op", &json!({})).await.expect("create");
    drop(a);
    let b = Jobs::open_as(&url, "node-b").await.expect("open b");
    assert_eq!(state_of(&b, id).await, JobState::Queued);
    drop(b);
    let a = Jobs::open_as(&url, "node-a").await.expect("reopen a");
    assert_eq!(state_of(&a, id).await, JobState::Failed);
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let err = Jobs::open("redis://localhost").await.expect_err("refused");
    assert!(err.to_string().contains("redis://localhost"), "{err}");
}
