//! Asynchronous driver calls (`Prefer: respond-async`): a job store in SQL (sqlx; SQLite by
//! default, PostgreSQL or MySQL by URL), so jobs survive a restart.
//!
//! A job is `queued` when stored, `running` once its call starts, then `succeeded` with the
//! result or `failed` with the error's kind and message.
//!
//! # Owners: several instances on one database
//!
//! Every job belongs to the store that made it: its `owner`, one per process (a fresh id
//! per start by default, or a stable instance name). A job is only ever run by its owner's
//! process, so when that process is gone the job's outcome is unknown: it is marked
//! `failed` with the kind `interrupted`, which beats losing it or running a non-idempotent
//! call twice. A job is marked so in exactly two cases:
//!
//! 1. **its owner opens the store again** (a restart under the same stable name): the jobs
//!    it left `queued` or `running` are marked at once ([`INTERRUPTED`]);
//! 2. **its owner's lease ran out**: every open store writes a heartbeat into
//!    `quartet_native_owners` every third of its lease, and every store, when it opens
//!    and at each heartbeat, marks the unfinished jobs of owners whose last heartbeat is
//!    older than the lease ([`OWNER_GONE`]). A process that crashed, was killed, or stopped
//!    gets its jobs marked within about one lease of its last heartbeat.
//!
//! So one instance's start never touches the jobs another live instance is running on the
//! same database. The lease compares the clocks of the instances: keep them in sync (NTP)
//! well within the lease. An instance cut off from the database for longer than its lease
//! loses its jobs to case 2; when such a job ends later, its outcome is not written over
//! the `failed` state (a job never changes its mind once it is finished).
//!
//! Queries are checked at run time (no database at build time) and written in the SQL the
//! three databases share; only the placeholders differ (`?` or `$1`).

use crate::driver::NativeCall;
use crate::error::{find_driver_error, UnknownOperation};
use crate::stack::NativeService;
use quartet_policies::error::{
    BreakerOpen, Elapsed, FaultAbort, NoEndpoint, Overloaded, RateLimited,
};
use quartet_policies::BoxError;
use serde::Serialize;
use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinSet;
use tower::ServiceExt;
use uuid::Uuid;

/// The schema, the same text for SQLite, PostgreSQL and MySQL.
pub const MIGRATION: &str = "CREATE TABLE IF NOT EXISTS quartet_native_jobs (
    id VARCHAR(36) NOT NULL PRIMARY KEY,
    owner VARCHAR(255) NOT NULL,
    driver VARCHAR(64) NOT NULL,
    operation VARCHAR(64) NOT NULL,
    args TEXT NOT NULL,
    state VARCHAR(16) NOT NULL,
    result TEXT,
    error_kind VARCHAR(32),
    error_message TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
)";

/// The owners' heartbeats, the same text for SQLite, PostgreSQL and MySQL.
pub const OWNERS_MIGRATION: &str = "CREATE TABLE IF NOT EXISTS quartet_native_owners (
    owner VARCHAR(255) NOT NULL PRIMARY KEY,
    heartbeat_at BIGINT NOT NULL
)";

/// The error message of a job its own owner found unfinished when it opened the store again.
pub const INTERRUPTED: &str = "interrupted by restart";

/// The error message of a job whose owner's lease ran out (the process stopped or crashed).
pub const OWNER_GONE: &str = "interrupted: the instance running it stopped";

/// The default lease of an owner: its jobs are taken for abandoned when it has not written
/// a heartbeat for this long.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            _ => return None,
        })
    }
}

/// Why a job failed, as stored: a kind the edge can map (`invalid_input`, `not_found`,
/// `conflict`, `permanent`, `transient`, `timeout`, `breaker_open`, `overloaded`, ...,
/// `interrupted`) and the error's message with its causes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct JobError {
    pub kind: String,
    pub message: String,
}

impl JobError {
    /// The stored form of an error from a driver's stack.
    pub fn from_error(err: &BoxError) -> Self {
        let mut message = err.to_string();
        let mut cause = err.source();
        while let Some(e) = cause {
            message.push_str(": ");
            message.push_str(&e.to_string());
            cause = e.source();
        }
        Self {
            kind: error_kind(err).to_string(),
            message,
        }
    }
}

/// The kind name of an error from a driver's stack.
pub fn error_kind(err: &BoxError) -> &'static str {
    if let Some(d) = find_driver_error(&**err) {
        return d.kind().as_str();
    }
    if err.is::<UnknownOperation>() {
        "unknown_operation"
    } else if err.is::<Elapsed>() {
        "timeout"
    } else if err.is::<BreakerOpen>() {
        "breaker_open"
    } else if err.is::<Overloaded>() {
        "overloaded"
    } else if err.is::<RateLimited>() {
        "rate_limited"
    } else if err.is::<FaultAbort>() {
        "fault"
    } else if err.is::<NoEndpoint>() {
        "no_endpoint"
    } else {
        "internal"
    }
}

/// One job as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Job {
    pub id: Uuid,
    pub driver: String,
    pub operation: String,
    pub args: Value,
    pub state: JobState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("job store database failed")]
    Database(#[from] sqlx::Error),
    #[error("job store URL {url:?} is not sqlite:, postgres: or mysql:")]
    UnsupportedUrl { url: String },
    #[error("job {id} is stored in a form this version cannot read: {what}")]
    Corrupt { id: String, what: String },
    #[error("cannot encode a job's JSON")]
    Encode(#[from] serde_json::Error),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    Postgres,
    Mysql,
}

/// The job store. Clones share the pool and the running calls; when the last clone is
/// dropped, calls still running are aborted (as they would be if the process stopped) and
/// the next store to open marks them failed.
#[derive(Clone)]
pub struct Jobs {
    db: Db,
    owner: Arc<str>,
    tasks: Arc<Mutex<JoinSet<()>>>,
    /// The heartbeat task, stopped with the store's last clone.
    _heartbeat: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("dialect", &self.db.dialect)
            .field("owner", &self.owner)
            .finish()
    }
}

impl Jobs {
    /// Opens the store at `url` under a fresh owner id (`process-<uuid>`) and the default
    /// lease; see [`Jobs::open_with`].
    pub async fn open(url: &str) -> Result<Self, JobsError> {
        Self::open_with(url, &new_owner(), DEFAULT_LEASE).await
    }

    /// [`Jobs::open_with`] with the default lease.
    pub async fn open_as(url: &str, owner: &str) -> Result<Self, JobsError> {
        Self::open_with(url, owner, DEFAULT_LEASE).await
    }

    /// Opens the store at `url` (`sqlite://path`, created when missing; `postgres://...`;
    /// `mysql://...`) as `owner`, creates the tables when missing, marks `owner`'s own
    /// unfinished jobs failed (a restart under a stable name) and those of owners whose
    /// `lease` ran out, then keeps `owner`'s lease alive while the store is open (see the
    /// module's documentation). `owner` must not be used by another live process.
    pub async fn open_with(url: &str, owner: &str, lease: Duration) -> Result<Self, JobsError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else if url.starts_with("mysql:") || url.starts_with("mariadb:") {
            Dialect::Mysql
        } else {
            return Err(JobsError::UnsupportedUrl {
                url: url.to_string(),
            });
        };
        let url = if dialect == Dialect::Sqlite && !url.contains("mode=") {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if dialect == Dialect::Sqlite { 1 } else { 5 })
            .connect(&url)
            .await?;
        sqlx::query(MIGRATION).execute(&pool).await?;
        sqlx::query(OWNERS_MIGRATION).execute(&pool).await?;
        let db = Db { pool, dialect };
        let owner: Arc<str> = owner.into();
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX).max(1);
        let interrupted = db.recover_own(&owner).await?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                owner = %owner,
                "jobs left unfinished by this instance's previous process marked failed"
            );
        }
        db.heartbeat(&owner).await?;
        db.recover_gone(&owner, lease_ms).await?;
        let heartbeat = tokio::spawn({
            let (db, owner) = (db.clone(), owner.clone());
            let every = (lease / 3).max(Duration::from_millis(10));
            async move {
                loop {
                    tokio::time::sleep(every).await;
                    if let Err(e) = db.heartbeat(&owner).await {
                        tracing::warn!(owner = %owner, error = %e, "jobs store: heartbeat not written");
                        continue;
                    }
                    if let Err(e) = db.recover_gone(&owner, lease_ms).await {
                        tracing::warn!(error = %e, "jobs store: cannot check other instances' jobs");
                    }
                }
            }
        });
        Ok(Self {
            db,
            owner,
            tasks: Arc::new(Mutex::new(JoinSet::new())),
            _heartbeat: Arc::new(AbortOnDrop(heartbeat)),
        })
    }

    /// The owner id jobs made by this store carry.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Stores a `queued` job; its id.
    pub async fn create(
        &self,
        driver: &str,
        operation: &str,
        args: &Value,
    ) -> Result<Uuid, JobsError> {
        let id = Uuid::new_v4();
        let now = now_ms();
        let sql = format!(
            "INSERT INTO quartet_native_jobs \
             (id, owner, driver, operation, args, state, created_at, updated_at) \
             VALUES ({}, {}, {}, {}, {}, 'queued', {}, {})",
            self.ph(1),
            self.ph(2),
            self.ph(3),
            self.ph(4),
            self.ph(5),
            self.ph(6),
            self.ph(7)
        );
        sqlx::query(&sql)
            .bind(id.to_string())
            .bind(&*self.owner)
            .bind(driver)
            .bind(operation)
            .bind(serde_json::to_string(args)?)
            .bind(now)
            .bind(now)
            .execute(&self.db.pool)
            .await?;
        Ok(id)
    }

    /// Marks a job `running`.
    pub async fn start(&self, id: Uuid) -> Result<(), JobsError> {
        self.db.start(id).await
    }

    /// Records a job's outcome: `succeeded` with the value, or `failed` with the error.
    pub async fn finish(
        &self,
        id: Uuid,
        outcome: &Result<Value, BoxError>,
    ) -> Result<(), JobsError> {
        self.db.finish(id, outcome).await
    }

    /// Stores a job for `call` to driver `driver` and runs it in the background through
    /// `service` (the driver's policy stack); the job's id at once.
    pub async fn submit(
        &self,
        driver: &str,
        service: NativeService,
        call: NativeCall,
    ) -> Result<Uuid, JobsError> {
        let id = self.create(driver, &call.operation, &call.args).await?;
        let db = self.db.clone();
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the calls that ended.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            if let Err(e) = db.start(id).await {
                tracing::error!(job = %id, error = %e, "cannot mark a job running");
            }
            let outcome = service.oneshot(call).await;
            if let Err(e) = db.finish(id, &outcome).await {
                tracing::error!(job = %id, error = %e, "cannot record a job's outcome");
            }
        });
        Ok(id)
    }

    /// Deletes this owner's finished (`succeeded` or `failed`) jobs last updated before
    /// `before` (milliseconds since the Unix epoch), and those of owners that are gone (no
    /// live lease: owners are one per process, so their jobs would be kept forever
    /// otherwise); how many. Unfinished jobs are kept. The table grows by one row per job
    /// until this is called.
    pub async fn forget_finished_before(&self, before: i64) -> Result<u64, JobsError> {
        let sql = format!(
            "DELETE FROM quartet_native_jobs WHERE updated_at < {} \
             AND state IN ('succeeded', 'failed') \
             AND (owner = {} OR owner NOT IN (SELECT owner FROM quartet_native_owners))",
            self.ph(1),
            self.ph(2)
        );
        let done = sqlx::query(&sql)
            .bind(before)
            .bind(&*self.owner)
            .execute(&self.db.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// One job, or `None` when no job has this id.
    pub async fn get(&self, id: Uuid) -> Result<Option<Job>, JobsError> {
        let sql = format!(
            "SELECT id, driver, operation, args, state, result, error_kind, error_message, \
             created_at, updated_at FROM quartet_native_jobs WHERE id = {}",
            self.ph(1)
        );
        let row = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.db.pool)
            .await?;
        row.map(|r| job_from_row(&r)).transpose()
    }

    fn ph(&self, n: usize) -> String {
        self.db.ph(n)
    }
}

/// The database half of the store: what a running job's task holds (the pool, not the
/// store, so the store's last clone going away aborts the tasks rather than being kept
/// alive by them).
#[derive(Clone)]
struct Db {
    pool: AnyPool,
    dialect: Dialect,
}

impl Db {
    fn ph(&self, n: usize) -> String {
        match self.dialect {
            Dialect::Postgres => format!("${n}"),
            Dialect::Sqlite | Dialect::Mysql => "?".to_string(),
        }
    }

    /// Marks `owner`'s own `queued` and `running` jobs failed; how many there were.
    async fn recover_own(&self, owner: &str) -> Result<u64, JobsError> {
        let sql = format!(
            "UPDATE quartet_native_jobs SET state = 'failed', error_kind = 'interrupted', \
             error_message = {}, updated_at = {} \
             WHERE owner = {} AND state IN ('queued', 'running')",
            self.ph(1),
            self.ph(2),
            self.ph(3)
        );
        let done = sqlx::query(&sql)
            .bind(INTERRUPTED)
            .bind(now_ms())
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Writes `owner`'s heartbeat (insert or update, in the SQL the three share).
    async fn heartbeat(&self, owner: &str) -> Result<(), JobsError> {
        let now = now_ms();
        let sql = format!(
            "UPDATE quartet_native_owners SET heartbeat_at = {} WHERE owner = {}",
            self.ph(1),
            self.ph(2)
        );
        let done = sqlx::query(&sql)
            .bind(now)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            let sql = format!(
                "INSERT INTO quartet_native_owners (owner, heartbeat_at) VALUES ({}, {})",
                self.ph(1),
                self.ph(2)
            );
            let inserted = sqlx::query(&sql)
                .bind(owner)
                .bind(now)
                .execute(&self.pool)
                .await;
            // MySQL counts an update to the same value as no row: the row is there.
            if let Err(e) = inserted {
                let duplicate = matches!(&e, sqlx::Error::Database(d) if d.is_unique_violation());
                if !duplicate {
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Marks failed the unfinished jobs of every owner but `me` whose lease ran out (or
    /// that has no heartbeat at all: jobs of a version without owners' leases), then
    /// forgets those owners; how many jobs.
    async fn recover_gone(&self, me: &str, lease_ms: i64) -> Result<u64, JobsError> {
        let now = now_ms();
        let cutoff = now.saturating_sub(lease_ms);
        let sql = format!(
            "UPDATE quartet_native_jobs SET state = 'failed', error_kind = 'interrupted', \
             error_message = {}, updated_at = {} \
             WHERE state IN ('queued', 'running') AND owner <> {} AND owner NOT IN \
             (SELECT owner FROM quartet_native_owners WHERE heartbeat_at >= {})",
            self.ph(1),
            self.ph(2),
            self.ph(3),
            self.ph(4)
        );
        let done = sqlx::query(&sql)
            .bind(OWNER_GONE)
            .bind(now)
            .bind(me)
            .bind(cutoff)
            .execute(&self.pool)
            .await?;
        let n = done.rows_affected();
        if n > 0 {
            tracing::warn!(
                interrupted = n,
                "jobs of instances whose lease ran out marked failed"
            );
        }
        let sql = format!(
            "DELETE FROM quartet_native_owners WHERE heartbeat_at < {} AND owner <> {}",
            self.ph(1),
            self.ph(2)
        );
        sqlx::query(&sql)
            .bind(cutoff)
            .bind(me)
            .execute(&self.pool)
            .await?;
        Ok(n)
    }

    async fn start(&self, id: Uuid) -> Result<(), JobsError> {
        let sql = format!(
            "UPDATE quartet_native_jobs SET state = 'running', updated_at = {} \
             WHERE id = {} AND state = 'queued'",
            self.ph(1),
            self.ph(2)
        );
        sqlx::query(&sql)
            .bind(now_ms())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn finish(&self, id: Uuid, outcome: &Result<Value, BoxError>) -> Result<(), JobsError> {
        let (state, result, error) = match outcome {
            Ok(v) => (JobState::Succeeded, Some(serde_json::to_string(v)?), None),
            Err(e) => (JobState::Failed, None, Some(JobError::from_error(e))),
        };
        let sql = format!(
            "UPDATE quartet_native_jobs SET state = {}, result = {}, error_kind = {}, \
             error_message = {}, updated_at = {} WHERE id = {} \
             AND state IN ('queued', 'running')",
            self.ph(1),
            self.ph(2),
            self.ph(3),
            self.ph(4),
            self.ph(5),
            self.ph(6)
        );
        sqlx::query(&sql)
            .bind(state.as_str())
            .bind(result)
            .bind(error.as_ref().map(|e| e.kind.clone()))
            .bind(error.map(|e| e.message))
            .bind(now_ms())
            .bind(id.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn job_from_row(row: &AnyRow) -> Result<Job, JobsError> {
    let id_text: String = row.try_get("id")?;
    let corrupt = |what: &str| JobsError::Corrupt {
        id: id_text.clone(),
        what: what.to_string(),
    };
    let id = Uuid::parse_str(&id_text).map_err(|_| corrupt("id is not a uuid"))?;
    let state_text: String = row.try_get("state")?;
    let state = JobState::parse(&state_text).ok_or_else(|| corrupt("unknown state"))?;
    let args_text = text(row, "args")?.ok_or_else(|| corrupt("args are null"))?;
    let args = serde_json::from_str(&args_text).map_err(|_| corrupt("args are not JSON"))?;
    let result_text = text(row, "result")?;
    let result = result_text
        .map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|_| corrupt("result is not JSON"))?;
    let error_kind: Option<String> = row.try_get("error_kind")?;
    let error_message = text(row, "error_message")?;
    let error = match (error_kind, error_message) {
        (Some(kind), message) => Some(JobError {
            kind,
            message: message.unwrap_or_default(),
        }),
        (None, _) => None,
    };
    Ok(Job {
        id,
        driver: row.try_get("driver")?,
        operation: row.try_get("operation")?,
        args,
        state,
        result,
        error,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// A `TEXT` column: a string on SQLite and PostgreSQL; MySQL sends `TEXT` as a `BLOB` with
/// a character set, which the `Any` driver only decodes as bytes.
fn text(row: &AnyRow, column: &str) -> Result<Option<String>, JobsError> {
    if let Ok(s) = row.try_get::<Option<String>, _>(column) {
        return Ok(s);
    }
    let bytes: Option<Vec<u8>> = row.try_get(column)?;
    bytes
        .map(String::from_utf8)
        .transpose()
        .map_err(|e| JobsError::Database(sqlx::Error::Decode(Box::new(e))))
}

/// A fresh owner id for one process.
pub fn new_owner() -> String {
    format!("process-{}", Uuid::new_v4())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
