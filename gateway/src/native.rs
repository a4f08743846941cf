//! The native-API channel as the gateway serves it: `[native]` in the config, one policy
//! stack per driver instance (built with [`crate::stack::policy_stack`] and
//! [`crate::stack::endpoint_stack`], so the order of layers stays decided in `stack.rs`),
//! the routes `POST /native/{driver}/{operation}` and `GET /native/jobs/{id}`, and the jobs
//! store that runs `Prefer: respond-async` calls in the background.
//!
//! # Jobs and the process's lifetime
//!
//! The jobs store outlives one config (it sits in [`crate::stack::Shared`], keyed by its
//! URL), so a reload neither fails the jobs running nor opens the database twice. It is
//! opened in the background, retried until it answers; until then `/readyz` shows the
//! native channel `not_ready`, and asynchronous calls wait up to two seconds for it, then
//! get 503 (synchronous calls serve).
//! Jobs are not requests in flight: the shutdown grace period waits for HTTP requests, not
//! for jobs. A job still queued or running when the process stops is abandoned (its
//! process killed with the runtime) and marked failed (`interrupted`), never lost and never
//! run twice: at once when the store opens again under the same `[native] instance` name,
//! otherwise by any instance sharing the store once the owner's lease (`owner_lease`) ran
//! out. An instance never fails the jobs of another live one (see `quartet_native::jobs`).
//!
//! # A driver that cannot start
//!
//! A `qemu-img` driver whose binary is missing does not stop Quartet from serving (the
//! embedded default config names one, and most machines have no `qemu-img`): the driver
//! is listed on `/readyz` with `ready: false` and the reason, and its calls get 503. Every
//! other driver error found while building refuses the config.
//!
//! # Token checks and access rules
//!
//! With `[identity]`, both routes pass the one guard (`crate::identity::guard`): the
//! driver's `caller_auth` token check, then the operation's `access` rule against the
//! call's arguments (see docs/identity.md). A refused call never reaches the driver's
//! stack.

use crate::config::{Invalid, KeyPath, Seg};
use crate::error::BadRequest;
use crate::identity::guard;
use crate::stack::{endpoint_stack, policy_stack, TargetParts};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use quartet_native::jobs::JobsError;
use quartet_native::spec::{validate_drivers, DriverSettings, DriverSpec};
use quartet_native::{
    DriverInstance, Jobs, NativeCall, NativeClassify, NativeReplay, NativeService, Registry,
    UnknownDriver, UnknownOperation,
};
use quartet_policies::breaker::{BreakerHandle, BreakerRegistry};
use quartet_policies::fault::{FaultHandle, FaultRegistry};
use quartet_policies::metrics::Metrics;
use quartet_policies::retry::Budget;
use quartet_policies::spec::PolicySpec;
use quartet_policies::{BoxError, Target};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceExt;

/// The jobs store's default URL: the same SQLite file as the embedded identity's default,
/// so one SQL store holds both.
pub const DEFAULT_DATABASE: &str = "sqlite://quartet.db";

/// `[native]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NativeConfig {
    /// `[[native.drivers]]`: the driver instances.
    pub drivers: Vec<DriverSpec>,
    /// The jobs store (`sqlite://`, `postgres://`, `mysql://`).
    pub database: String,
    /// How long finished jobs stay readable; older ones are deleted.
    #[serde(with = "quartet_policies::duration")]
    pub job_retention: Duration,
    /// The owner id of this instance's jobs: a stable name (a restart under it fails its
    /// unfinished jobs at once); absent, a fresh id per process.
    pub instance: Option<String>,
    /// How long an instance may go without a heartbeat before the other instances sharing
    /// the store take it for gone and fail its unfinished jobs.
    #[serde(with = "quartet_policies::duration")]
    pub owner_lease: Duration,
}

impl Default for NativeConfig {
    fn default() -> Self {
        Self {
            drivers: Vec::new(),
            database: DEFAULT_DATABASE.to_string(),
            job_retention: Duration::from_secs(24 * 3600),
            instance: None,
            owner_lease: quartet_native::jobs::DEFAULT_LEASE,
        }
    }
}

impl NativeConfig {
    /// The owner id of this process's jobs: `instance`, or one fresh id per process (the
    /// same across reloads).
    pub fn owner(&self) -> String {
        static PROCESS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        match &self.instance {
            Some(name) => name.clone(),
            None => PROCESS.get_or_init(quartet_native::jobs::new_owner).clone(),
        }
    }
}

/// `native.drivers[1].root` as a [`KeyPath`].
pub fn key_path(dotted: &str) -> KeyPath {
    let mut path = KeyPath::default();
    for part in dotted.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            path.0.push(Seg::Key(key.to_string()));
        }
        while let Some(end) = rest.find(']') {
            match rest[1..end].parse::<usize>() {
                Ok(i) => path.0.push(Seg::Index(i)),
                Err(_) => path.0.push(Seg::Key(rest[1..end].to_string())),
            }
            rest = &rest[end + 1..];
        }
    }
    path
}

/// The name `GET /native/jobs/{id}` takes: no driver may have it.
pub const RESERVED_NAME: &str = "jobs";

impl NativeConfig {
    /// Checks the driver entries and that each named policy exists.
    pub fn validate(&self, policies: &BTreeMap<String, PolicySpec>) -> Result<(), Invalid> {
        let root = KeyPath::root("native");
        validate_drivers(&self.drivers).map_err(|e| Invalid {
            path: key_path(&e.key),
            message: e.message,
        })?;
        for (i, spec) in self.drivers.iter().enumerate() {
            let path = root.clone().key("drivers").index(i);
            if spec.name == RESERVED_NAME {
                return Err(Invalid {
                    path: path.key("name"),
                    message: format!("{RESERVED_NAME:?} is reserved for /native/jobs"),
                });
            }
            if let Some(p) = &spec.policy {
                if !policies.contains_key(p) {
                    return Err(Invalid {
                        path: path.key("policy"),
                        message: format!("no policy named {p:?}"),
                    });
                }
            }
        }
        let db = &self.database;
        let known = ["sqlite:", "postgres:", "postgresql:", "mysql:", "mariadb:"];
        if !known.iter().any(|k| db.starts_with(k)) {
            return Err(Invalid {
                path: root.clone().key("database"),
                message: "must be a sqlite:, postgres: or mysql: URL".to_string(),
            });
        }
        if let Some(name) = &self.instance {
            let ok = !name.is_empty()
                && name.len() <= 255
                && !name.chars().any(|c| c.is_whitespace() || c.is_control());
            if !ok {
                return Err(Invalid {
                    path: root.clone().key("instance"),
                    message: "must be 1 to 255 characters without spaces".to_string(),
                });
            }
        }
        if self.owner_lease < Duration::from_secs(1) {
            return Err(Invalid {
                path: root.clone().key("owner_lease"),
                message: "must be at least 1s".to_string(),
            });
        }
        if self.job_retention.is_zero() {
            return Err(Invalid {
                path: root.key("job_retention"),
                message: "must be greater than zero".to_string(),
            });
        }
        Ok(())
    }
}

/// A driver instance that could not start, and why (its calls get 503).
#[derive(Debug, thiserror::Error)]
#[error("driver {driver} is not ready")]
pub struct DriverNotReady {
    pub driver: String,
    #[source]
    pub source: quartet_native::ConfigError,
}

/// `Prefer: respond-async` while the jobs store is not open. Edge: 503.
#[derive(Debug, thiserror::Error)]
#[error("the jobs store is not open yet")]
pub struct JobsUnavailable;

/// No job has this id. Edge: 404.
#[derive(Debug, thiserror::Error)]
#[error("no job {id}")]
pub struct UnknownJob {
    pub id: String,
}

/// One driver instance as built: its stack and the handles `/readyz` reads.
pub struct NativeDriver {
    pub name: String,
    pub kind: &'static str,
    pub state: DriverState,
}

pub enum DriverState {
    Ready {
        instance: DriverInstance,
        service: NativeService,
        breaker: BreakerHandle,
        fault: FaultHandle,
        in_flight: Arc<AtomicUsize>,
    },
    /// The driver could not be built (a `qemu-img` binary missing).
    NotReady(Arc<DriverNotReady>),
}

/// The native channel of one built config.
pub struct Native {
    pub drivers: BTreeMap<String, NativeDriver>,
    /// `None` when no driver is configured (no store is opened then).
    pub store: Option<Arc<JobStore>>,
}

/// Errors building the native channel that `validate` cannot see (a root that cannot be
/// created, an `exec` executable missing, an `http` driver's CA file).
#[derive(Debug, thiserror::Error)]
#[error("cannot build native driver")]
pub struct NativeBuildError(#[source] pub quartet_native::ConfigError);

/// The stack of one driver instance: the instance is a target (`native:NAME`) with one
/// endpoint, itself, so it gets the REST stack's order from the same two functions.
pub fn driver_service(
    instance: &DriverInstance,
    policy: &PolicySpec,
    metrics: &Arc<Metrics>,
    fault: FaultHandle,
) -> (NativeService, BreakerHandle, Arc<AtomicUsize>) {
    let target = Target::new("native", instance.name());
    let breaker = BreakerHandle::new(
        target.clone(),
        instance.name(),
        policy.breaker.clone(),
        metrics.clone(),
    );
    let in_flight = Arc::new(AtomicUsize::new(0));
    let inner = endpoint_stack(
        breaker.clone(),
        policy.per_try_timeout,
        NativeClassify::Breaker,
        Some(in_flight.clone()),
        instance.service(),
    );
    let parts = TargetParts {
        target,
        fault,
        budget: Arc::new(Budget::new(&policy.retry)),
    };
    let service = policy_stack(
        &parts,
        policy,
        metrics,
        NativeClassify::Retry,
        NativeReplay::new(instance.operations()),
        inner,
    );
    (service, breaker, in_flight)
}

/// Builds one driver instance from its entry (index `i` in `[[native.drivers]]`).
fn build_instance(
    i: usize,
    spec: &DriverSpec,
) -> Result<DriverInstance, quartet_native::ConfigError> {
    let registry = Registry::build(std::slice::from_ref(spec)).map_err(|e| {
        let key = e
            .key
            .strip_prefix("native.drivers[0]")
            .unwrap_or(&e.key)
            .to_string();
        quartet_native::ConfigError::new(format!("native.drivers[{i}]{key}"), e.message)
    })?;
    registry.get(&spec.name).cloned().map_err(|e| {
        quartet_native::ConfigError::new(format!("native.drivers[{i}].name"), e.to_string())
    })
}

/// Whether a build error is a missing `qemu-img` binary (served as a driver not ready).
fn is_missing_binary(spec: &DriverSpec, err: &quartet_native::ConfigError) -> bool {
    matches!(&spec.settings, DriverSettings::QemuImg(s) if !s.qemu_img.exists())
        && err.key.ends_with(".qemu_img")
}

/// Builds the native channel: each driver's stack, its breaker and fault registered with
/// the REST channel's, so the admin API and `/readyz` see native targets too.
pub fn build(
    config: &crate::config::Config,
    shared: &crate::stack::Shared,
    breakers: &BreakerRegistry,
    faults: &FaultRegistry,
) -> Result<Native, NativeBuildError> {
    let drivers = build_drivers(config, shared, breakers, faults)?;
    let native = &config.native;
    // No driver, no store: a config without [native] opens no database.
    let store = (!drivers.is_empty()).then(|| shared.job_store(native));
    Ok(Native { drivers, store })
}

/// Each driver of `config` with its stack, without the jobs store.
pub fn build_drivers(
    config: &crate::config::Config,
    shared: &crate::stack::Shared,
    breakers: &BreakerRegistry,
    faults: &FaultRegistry,
) -> Result<BTreeMap<String, NativeDriver>, NativeBuildError> {
    let native = &config.native;
    let metrics = &shared.metrics;
    let mut drivers = BTreeMap::new();
    for (i, spec) in native.drivers.iter().enumerate() {
        let state = match build_instance(i, spec) {
            Ok(instance) => {
                let policy = config.policy(
                    spec.policy
                        .as_deref()
                        .unwrap_or(crate::config::DEFAULT_POLICY),
                );
                let target = Target::new("native", spec.name.as_str());
                let initial_fault = shared
                    .runtime_fault(&target)
                    .or_else(|| policy.fault.clone());
                let fault = FaultHandle::new(target, initial_fault, metrics.clone());
                faults.register(fault.clone());
                let (service, breaker, in_flight) =
                    driver_service(&instance, &policy, metrics, fault.clone());
                breakers.register(breaker.clone());
                DriverState::Ready {
                    instance,
                    service,
                    breaker,
                    fault,
                    in_flight,
                }
            }
            Err(e) if is_missing_binary(spec, &e) => {
                tracing::warn!(driver = %spec.name, error = %e, "native driver not ready");
                DriverState::NotReady(Arc::new(DriverNotReady {
                    driver: spec.name.clone(),
                    source: e,
                }))
            }
            Err(e) => return Err(NativeBuildError(e)),
        };
        drivers.insert(
            spec.name.clone(),
            NativeDriver {
                name: spec.name.clone(),
                kind: spec.settings.kind(),
                state,
            },
        );
    }
    Ok(drivers)
}

/// The jobs store of one database URL, opened in the background and kept across reloads.
pub struct JobStore {
    pub url: String,
    jobs: tokio::sync::watch::Sender<Option<Jobs>>,
    last_error: Mutex<Option<Arc<JobsError>>>,
    retention_ms: AtomicU64,
}

/// How long a request waits for the jobs store to open before 503.
const STORE_WAIT: Duration = Duration::from_secs(2);

/// How often finished jobs older than the retention are deleted (at most).
const CLEANUP_EVERY: Duration = Duration::from_secs(60);

impl JobStore {
    /// Creates the store and starts opening it (retrying while the database is down), then
    /// deletes finished jobs older than the retention every minute. Needs a tokio runtime.
    pub fn start(url: &str, retention: Duration, owner: String, lease: Duration) -> Arc<Self> {
        let store = Arc::new(Self {
            url: url.to_string(),
            jobs: tokio::sync::watch::Sender::new(None),
            last_error: Mutex::new(None),
            retention_ms: AtomicU64::new(0),
        });
        store.set_retention(retention);
        let weak = Arc::downgrade(&store);
        let url = url.to_string();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            let jobs = loop {
                match Jobs::open_with(&url, &owner, lease).await {
                    Ok(jobs) => break jobs,
                    Err(e) => {
                        let Some(store) = weak.upgrade() else { return };
                        tracing::warn!(url = %crate::config::redact_url(&url), error = %crate::error::Chain(&e), "jobs store not open; retrying");
                        store.set_last_error(Some(Arc::new(e)));
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            };
            {
                let Some(store) = weak.upgrade() else { return };
                store.jobs.send_replace(Some(jobs.clone()));
                store.set_last_error(None);
                tracing::info!(url = %crate::config::redact_url(&url), %owner, "jobs store open");
            }
            loop {
                let Some(store) = weak.upgrade() else { return };
                let retention = store.retention_ms.load(Ordering::Relaxed);
                drop(store);
                let before = now_ms().saturating_sub(i64::try_from(retention).unwrap_or(i64::MAX));
                match jobs.forget_finished_before(before).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(forgotten = n, "finished jobs past their retention deleted")
                    }
                    Err(e) => {
                        tracing::warn!(error = %crate::error::Chain(&e), "cannot delete old jobs")
                    }
                }
                let every = Duration::from_millis(retention).min(CLEANUP_EVERY);
                tokio::time::sleep(every.max(Duration::from_millis(100))).await;
            }
        });
        store
    }

    pub fn set_retention(&self, retention: Duration) {
        let ms = u64::try_from(retention.as_millis()).unwrap_or(u64::MAX);
        self.retention_ms.store(ms, Ordering::Relaxed);
    }

    /// The open store, if it is open.
    pub fn jobs(&self) -> Option<Jobs> {
        self.jobs.borrow().clone()
    }

    /// The store once it is open, waiting at most `limit` (a call right after the start
    /// waits for the store rather than being refused).
    pub async fn open_within(&self, limit: Duration) -> Option<Jobs> {
        let mut rx = self.jobs.subscribe();
        let opened = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
        match opened {
            Ok(Ok(jobs)) => jobs.clone(),
            _ => None,
        }
    }

    fn set_last_error(&self, error: Option<Arc<JobsError>>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = error;
        }
    }

    fn last_error(&self) -> Option<Arc<JobsError>> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The job stores by URL, kept in [`crate::stack::Shared`] across reloads.
pub type JobStores = Arc<Mutex<HashMap<String, Arc<JobStore>>>>;

/// One driver as another channel calls it (the RPC reverse bridge): the same stack as
/// `POST /native/{driver}/{operation}` (one limit, one breaker, one budget for both), or
/// why the driver did not start. Cheap to clone.
#[derive(Clone)]
pub struct DriverHandle {
    name: String,
    state: HandleState,
}

#[derive(Clone)]
enum HandleState {
    Ready {
        instance: DriverInstance,
        service: NativeService,
    },
    NotReady(Arc<DriverNotReady>),
}

impl DriverHandle {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The driver's stack for `operation`, or why it cannot be called (an operation the
    /// driver does not declare, a driver that did not start).
    pub fn service(&self, operation: &str) -> Result<NativeService, BoxError> {
        match &self.state {
            HandleState::Ready { instance, service } => {
                if instance.operation(operation).is_none() {
                    return Err(UnknownOperation {
                        driver: self.name.clone(),
                        operation: operation.to_string(),
                    }
                    .into());
                }
                Ok(service.clone())
            }
            HandleState::NotReady(e) => Err(Box::new(NotReadyRef(e.clone()))),
        }
    }

    /// Calls `operation` through the driver's stack.
    pub async fn call(&self, operation: &str, args: Value) -> Result<Value, BoxError> {
        let service = self.service(operation)?;
        service.oneshot(NativeCall::new(operation, args)).await
    }
}

/// The module of the exceptions a driver's failures become over RPC: not importable by an
/// oslo.messaging client, so the client raises `oslo_messaging.RemoteError` with
/// `exc_type` set to the class (see docs/native.md).
pub const REMOTE_MODULE: &str = "quartet.native";

/// A failed driver call as an oslo.messaging failure, for the reverse bridge. The class
/// says what kind of failure it was, the message is what the HTTP edge would say (backend
/// details stay in the log), and `kwargs` carry `status` (the HTTP status the same failure
/// gets on `/native`), `kind`, `driver` and `operation`:
///
/// | failure | class | status |
/// | --- | --- | --- |
/// | an operation the driver does not declare | `NoSuchMethod` (`oslo_messaging.rpc.dispatcher`) | 404 |
/// | invalid arguments | `InvalidInput` | 400 |
/// | the driver's not found | `NotFound` | 404 |
/// | the driver's conflict | `Conflict` | 409 |
/// | permanent backend failure | `DriverError` | 500 |
/// | transient backend failure, breaker open, limits, driver not ready | `DriverUnavailable` | 502, 503, 429 |
/// | total or per-try timeout | `DriverTimeout` | 504 |
pub fn remote_failure(
    driver: &str,
    operation: &str,
    err: &(dyn std::error::Error + 'static),
) -> quartet_amqp::RemoteFailure {
    use quartet_amqp::RemoteFailure;
    use quartet_native::ErrorKind;
    let edge = crate::error::classify(err);
    let status = edge.status.as_u16();
    let unknown_op = {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
        let mut found = false;
        while let Some(e) = cur {
            found |= e.is::<UnknownOperation>();
            cur = e.source();
        }
        found
    };
    let kind = quartet_native::error::find_driver_error(err).map(|d| d.kind());
    let mut failure = if unknown_op {
        RemoteFailure::no_such_method(operation)
    } else {
        let class = match (kind, status) {
            (Some(ErrorKind::InvalidInput), _) => "InvalidInput",
            (Some(ErrorKind::NotFound), _) => "NotFound",
            (Some(ErrorKind::Conflict), _) => "Conflict",
            (Some(ErrorKind::Permanent), _) => "DriverError",
            (Some(ErrorKind::Transient), _) => "DriverUnavailable",
            (None, 504) => "DriverTimeout",
            (None, 400) => "InvalidInput",
            (None, 429 | 502 | 503) => "DriverUnavailable",
            (None, _) => "DriverError",
        };
        RemoteFailure::new(class, REMOTE_MODULE, edge.message.clone())
    };
    let kind = match kind {
        Some(k) => k.as_str(),
        None if unknown_op => "unknown_operation",
        None => "unavailable",
    };
    failure.kwargs.insert("status".to_owned(), json!(status));
    failure.kwargs.insert("kind".to_owned(), json!(kind));
    failure.kwargs.insert("driver".to_owned(), json!(driver));
    failure
        .kwargs
        .insert("operation".to_owned(), json!(operation));
    failure
}

impl Native {
    /// The driver named `driver`, as other channels call it.
    pub fn handle(&self, driver: &str) -> Option<DriverHandle> {
        let d = self.drivers.get(driver)?;
        let state = match &d.state {
            DriverState::Ready {
                instance, service, ..
            } => HandleState::Ready {
                instance: instance.clone(),
                service: service.clone(),
            },
            DriverState::NotReady(e) => HandleState::NotReady(e.clone()),
        };
        Some(DriverHandle {
            name: d.name.clone(),
            state,
        })
    }

    /// The driver's service, or why it cannot be called.
    fn service(&self, driver: &str, operation: &str) -> Result<NativeService, BoxError> {
        let d = self.handle(driver).ok_or_else(|| UnknownDriver {
            name: driver.to_string(),
        })?;
        d.service(operation)
    }

    /// Whether `driver` has `operation` (`true` for a driver that could not start: its
    /// operations are not known).
    pub fn has_operation(&self, driver: &str, operation: &str) -> bool {
        match self.drivers.get(driver).map(|d| &d.state) {
            Some(DriverState::Ready { instance, .. }) => instance.operation(operation).is_some(),
            Some(DriverState::NotReady(_)) => true,
            None => false,
        }
    }

    /// Calls `operation` of `driver` through its stack.
    pub async fn call(
        &self,
        driver: &str,
        operation: &str,
        args: Value,
    ) -> Result<Value, BoxError> {
        let service = self.service(driver, operation)?;
        service.oneshot(NativeCall::new(operation, args)).await
    }

    /// The native channel for `/readyz`: ready when the jobs store is open.
    pub fn readiness(&self) -> (bool, Value) {
        let mut drivers = serde_json::Map::new();
        for (name, d) in &self.drivers {
            let v = match &d.state {
                DriverState::Ready {
                    breaker,
                    fault,
                    in_flight,
                    ..
                } => json!({
                    "kind": d.kind,
                    "ready": true,
                    "breaker": breaker.state(),
                    "in_flight": in_flight.load(Ordering::Relaxed),
                    "fault": fault.get(),
                }),
                DriverState::NotReady(e) => json!({
                    "kind": d.kind,
                    "ready": false,
                    "reason": e.source.to_string(),
                }),
            };
            drivers.insert(name.clone(), v);
        }
        let (ready, jobs) = match &self.store {
            None => (true, json!({"state": "none"})),
            Some(store) => match (store.jobs(), store.last_error()) {
                (Some(_), _) => (true, json!({"state": "open"})),
                (None, Some(e)) => (
                    false,
                    json!({"state": "opening", "reason": crate::error::Chain(e.as_ref()).to_string()}),
                ),
                (None, None) => (false, json!({"state": "opening"})),
            },
        };
        let body = json!({
            "state": if ready { "ready" } else { "not_ready" },
            "jobs": jobs,
            "drivers": drivers,
        });
        (ready, body)
    }
}

/// A shared [`DriverNotReady`] as an error of its own call.
#[derive(Debug)]
struct NotReadyRef(Arc<DriverNotReady>);

impl std::fmt::Display for NotReadyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for NotReadyRef {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// The native routes, merged into the public router.
pub fn router() -> Router<Arc<crate::stack::Built>> {
    // Both handlers pass the identity guard first (`crate::identity::guard`).
    Router::new()
        .route("/native/jobs/{id}", get(get_job))
        .route("/native/{driver}/{operation}", post(call))
}

/// Any error of a native route, answered by the one edge function.
pub struct NativeError(BoxError);

impl<E: Into<BoxError>> From<E> for NativeError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl axum::response::IntoResponse for NativeError {
    fn into_response(self) -> axum::response::Response {
        crate::error::into_response(self.0.as_ref(), None)
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Body::from(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Whether `Prefer` asks for `respond-async` (RFC 7240: comma-separated preferences, each
/// possibly with parameters).
fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            p.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("respond-async"))
        })
}

/// A body that is not JSON. Edge: 400.
fn parse_args(body: &Bytes) -> Result<Value, NativeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(serde_json::Map::new()));
    }
    serde_json::from_slice(body).map_err(|e| {
        NativeError::from(BadRequest {
            message: format!("arguments must be JSON: {e}"),
        })
    })
}

async fn call(
    State(built): State<Arc<crate::stack::Built>>,
    Path((driver, operation)): Path<(String, String)>,
    req: http::Request<Body>,
) -> Result<Response<Body>, NativeError> {
    let (mut parts, body) = req.into_parts();
    let native = &built.native;
    let service = native.service(&driver, &operation)?;
    // The token is checked before the body is read; the operation's access rule after
    // (its target is the arguments, `driver` and `operation`).
    let guard = built.guards.native(&driver, &operation);
    guard::authenticate(guard, &mut parts).await?;
    let headers = &parts.headers;
    // The server's body limit applies here as on REST routes (413 above it).
    let limit = usize::try_from(built.config.server.max_body_bytes).unwrap_or(usize::MAX);
    let body = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit))
        .await?
        .to_bytes();
    let args = parse_args(&body)?;
    guard::authorize(guard, &parts, || {
        guard::call_target(&args, &[("driver", &driver), ("operation", &operation)])
    })?;
    let call = NativeCall::new(operation.as_str(), args);
    if prefers_async(headers) {
        let store = native.store.as_ref().ok_or(JobsUnavailable)?;
        let jobs = store.open_within(STORE_WAIT).await.ok_or(JobsUnavailable)?;
        let id = jobs.submit(&driver, service, call).await?;
        let mut resp = json_response(
            StatusCode::ACCEPTED,
            &json!({"id": id, "driver": driver, "operation": operation, "state": "queued"}),
        );
        let location = HeaderValue::from_str(&format!("/native/jobs/{id}"))
            .map_err(|e| NativeError::from(Box::new(e) as BoxError))?;
        resp.headers_mut().insert(header::LOCATION, location);
        resp.headers_mut().insert(
            "preference-applied",
            HeaderValue::from_static("respond-async"),
        );
        return Ok(resp);
    }
    let result = service.oneshot(call).await?;
    Ok(json_response(StatusCode::OK, &result))
}

async fn get_job(
    State(built): State<Arc<crate::stack::Built>>,
    Path(id): Path<String>,
    req: http::Request<Body>,
) -> Result<Response<Body>, NativeError> {
    let (mut parts, _) = req.into_parts();
    let unknown = || UnknownJob { id: id.clone() };
    let uuid = uuid::Uuid::parse_str(&id).map_err(|_| unknown())?;
    let jobs = built
        .native
        .store
        .as_ref()
        .ok_or_else(unknown)?
        .open_within(STORE_WAIT)
        .await
        .ok_or(JobsUnavailable)?;
    let job = jobs.get(uuid).await?.ok_or_else(unknown)?;
    // A job is read under its call's guard: the driver's token check and the operation's
    // access rule, against the job's arguments (its id is random: a 404 tells nothing).
    let guard = built.guards.native(&job.driver, &job.operation);
    guard::authenticate(guard, &mut parts).await?;
    guard::authorize(guard, &parts, || {
        let mut target = guard::call_target(
            &job.args,
            &[("driver", &job.driver), ("operation", &job.operation)],
        );
        target.insert("job_id", Value::String(id.clone()));
        target
    })?;
    let mut body = json!({
        "id": job.id,
        "driver": job.driver,
        "operation": job.operation,
        "state": job.state.as_str(),
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    });
    if let Some(result) = job.result {
        body["result"] = result;
    }
    if let Some(error) = job.error {
        body["error"] = json!({"kind": error.kind, "message": error.message});
    }
    Ok(json_response(StatusCode::OK, &body))
}

/// `quartet native call DRIVER OPERATION [--args JSON] [--config FILE]`: builds the one
/// driver with its policy stack (no listener, no jobs store) and calls it once.
pub fn cli_call(
    config: Option<&std::path::Path>,
    driver: &str,
    operation: &str,
    args: Option<&str>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let loaded = match crate::config::load(config) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("{err}");
            return ExitCode::from(crate::cli::EXIT_CONFIG);
        }
    };
    let args: Value = match args.map(serde_json::from_str).transpose() {
        Ok(v) => v.unwrap_or_else(|| Value::Object(serde_json::Map::new())),
        Err(err) => {
            eprintln!("quartet: --args must be JSON: {err}");
            return ExitCode::from(crate::cli::EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("quartet: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let config = loaded.config;
    let outcome = runtime.block_on(async {
        let native = build_one(&config, driver)?;
        native.call(driver, operation, args).await
    });
    match outcome {
        Ok(value) => {
            match serde_json::to_string_pretty(&value) {
                Ok(text) => println!("{text}"),
                Err(err) => {
                    eprintln!("quartet: {}", crate::error::Chain(&err));
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Err(err) => {
            let edge = crate::error::classify(err.as_ref());
            eprintln!(
                "quartet: {} ({}): {}",
                edge.status.as_u16(),
                edge.status.canonical_reason().unwrap_or("error"),
                crate::error::Chain(err.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

/// The native channel with only `driver` built (an unknown name builds none).
fn build_one(config: &crate::config::Config, driver: &str) -> Result<Native, BoxError> {
    let mut only = config.clone();
    only.native.drivers.retain(|d| d.name == driver);
    let shared = crate::stack::Shared::new(Metrics::new());
    // No jobs store: opening it would mark a running server's jobs interrupted.
    let drivers = build_drivers(
        &only,
        &shared,
        &BreakerRegistry::new(),
        &FaultRegistry::new(),
    )?;
    Ok(Native {
        drivers,
        store: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, DEFAULT_CONFIG, EMBEDDED_NAME};

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn err(src: &str) -> String {
        parse(src, "q.toml", no_env).unwrap_err().to_string()
    }

    const EXEC: &str = "[[native.drivers]]\nname = \"tools\"\nkind = \"exec\"\n\
        [native.drivers.commands.nap]\nexecutable = \"/bin/sleep\"\nargs = [\"[0-9]{1,3}\"]\n";

    #[test]
    fn embedded_default_has_the_volumes_driver_and_the_shared_database() {
        let (c, _) = parse(DEFAULT_CONFIG, EMBEDDED_NAME, no_env).unwrap();
        assert_eq!(c.native.database, DEFAULT_DATABASE);
        assert_eq!(c.native.job_retention, Duration::from_secs(24 * 3600));
        assert_eq!(c.native.drivers.len(), 1);
        let d = &c.native.drivers[0];
        assert_eq!(d.name, "volumes");
        assert_eq!(d.settings.kind(), "qemu-img");
        match &d.settings {
            DriverSettings::QemuImg(q) => {
                assert_eq!(q.root, std::path::Path::new("./data/volumes"));
            }
            other => panic!("not qemu-img: {other:?}"),
        }
    }

    #[test]
    fn no_native_section_means_no_drivers_and_the_defaults() {
        let (c, _) = parse("", "q.toml", no_env).unwrap();
        assert_eq!(c.native, NativeConfig::default());
        let (c, _) = parse("[native]\njob_retention = \"1h\"\n", "q.toml", no_env).unwrap();
        assert_eq!(c.native.job_retention, Duration::from_secs(3600));
        assert_eq!(c.native.database, DEFAULT_DATABASE);
    }

    #[test]
    fn a_driver_entry_parses_with_its_policy() {
        let src = format!("[policies.slow]\ntimeout = \"1m\"\n\n{EXEC}policy = \"slow\"\n");
        // `policy` after the sub-table belongs to it: put it in the entry instead.
        assert!(parse(&src, "q.toml", no_env).is_err());
        let src = "[policies.slow]\ntimeout = \"1m\"\n\n[[native.drivers]]\nname = \"tools\"\n\
            kind = \"exec\"\npolicy = \"slow\"\n[native.drivers.commands.nap]\n\
            executable = \"/bin/sleep\"\nargs = [\"[0-9]{1,3}\"]\n";
        let (c, _) = parse(src, "q.toml", no_env).unwrap();
        assert_eq!(c.native.drivers[0].policy.as_deref(), Some("slow"));
    }

    #[test]
    fn a_missing_policy_is_named_with_its_line() {
        let src = "[[native.drivers]]\nname = \"v\"\nkind = \"qemu-img\"\nroot = \"/tmp/x\"\n\
            policy = \"nope\"\n";
        let e = err(src);
        assert!(e.contains("q.toml:5"), "{e}");
        assert!(e.contains("native.drivers[0].policy"), "{e}");
        assert!(e.contains("no policy named \"nope\""), "{e}");
    }

    #[test]
    fn a_duplicate_driver_name_is_named_with_its_line() {
        let one = "[[native.drivers]]\nname = \"v\"\nkind = \"qemu-img\"\nroot = \"/tmp/x\"\n";
        let e = err(&format!("{one}{one}"));
        assert!(e.contains("native.drivers[1].name"), "{e}");
        assert!(e.contains("q.toml:6"), "{e}");
    }

    #[test]
    fn bad_driver_values_are_named() {
        let e = err("[[native.drivers]]\nname = \"a b\"\nkind = \"qemu-img\"\nroot = \"/tmp/x\"\n");
        assert!(e.contains("native.drivers[0].name"), "{e}");
        let e = err(
            "[[native.drivers]]\nname = \"v\"\nkind = \"qemu-img\"\nroot = \"/tmp/x\"\n\
             qemu_img = \"qemu-img\"\n",
        );
        assert!(e.contains("native.drivers[0].qemu_img"), "{e}");
        assert!(e.contains("q.toml:5"), "{e}");
        let e = err("[[native.drivers]]\nname = \"jobs\"\nkind = \"qemu-img\"\nroot = \"/x\"\n");
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn bad_native_keys_are_refused() {
        let e = err("[native]\ndatabase = \"redis://x\"\n");
        assert!(e.contains("native.database"), "{e}");
        let e = err("[native]\njob_retention = \"0s\"\n");
        assert!(e.contains("native.job_retention"), "{e}");
        let e = err("[native]\nretention = \"1h\"\n");
        assert!(e.contains("retention"), "{e}");
    }

    const BRIDGE: &str = "[amqp]\n\n[[native.drivers]]\nname = \"tools\"\nkind = \"exec\"\n\
        [native.drivers.commands.ok]\nexecutable = \"/bin/true\"\n\n\
        [[rpc.servers]]\ntopic = \"t\"\ndriver = \"tools\"\n";

    #[test]
    fn an_rpc_server_names_a_driver_or_an_upstream_not_both() {
        let (c, _) = parse(BRIDGE, "q.toml", no_env).unwrap();
        assert_eq!(c.rpc.servers[0].driver.as_deref(), Some("tools"));
        let e = err(&BRIDGE.replace("driver = \"tools\"", "driver = \"nope\""));
        assert!(e.contains("q.toml:11: rpc.servers[0].driver"), "{e}");
        assert!(
            e.contains("no [[native.drivers]] entry named \"nope\""),
            "{e}"
        );
        let both = BRIDGE.replace("driver = ", "upstream = \"x\"\ndriver = ");
        let e = err(&format!(
            "[upstreams.x]\nendpoints = [\"http://127.0.0.1:1\"]\n{both}"
        ));
        assert!(
            e.contains("rpc.servers[0].driver: names a driver and an upstream"),
            "{e}"
        );
        let e = err(&BRIDGE.replace("driver = \"tools\"\n", ""));
        assert!(e.contains("needs an upstream or a driver"), "{e}");
    }

    #[test]
    fn instance_and_owner_lease_are_checked() {
        let (c, _) = parse(
            "[native]\ninstance = \"gw-1\"\nowner_lease = \"5s\"\n",
            "q.toml",
            no_env,
        )
        .unwrap();
        assert_eq!(c.native.owner(), "gw-1");
        assert_eq!(c.native.owner_lease, Duration::from_secs(5));
        let (c, _) = parse("", "q.toml", no_env).unwrap();
        assert!(c.native.owner().starts_with("process-"));
        assert_eq!(c.native.owner(), c.native.owner(), "one id per process");
        let e = err("[native]\ninstance = \"a b\"\n");
        assert!(e.contains("native.instance"), "{e}");
        let e = err("[native]\nowner_lease = \"10ms\"\n");
        assert!(e.contains("native.owner_lease: must be at least 1s"), "{e}");
    }

    #[test]
    fn driver_failures_become_oslo_failures_of_one_module() {
        use quartet_native::DriverError;
        let cases: Vec<(BoxError, &str, &str, u16)> = vec![
            (
                DriverError::invalid("id is bad").into(),
                "InvalidInput",
                "quartet.native",
                400,
            ),
            (
                DriverError::not_found("volume v9").into(),
                "NotFound",
                "quartet.native",
                404,
            ),
            (
                DriverError::conflict("has snapshots").into(),
                "Conflict",
                "quartet.native",
                409,
            ),
            (
                DriverError::permanent("exit 3: /secret", None).into(),
                "DriverError",
                "quartet.native",
                500,
            ),
            (
                DriverError::transient_sent("refused", None).into(),
                "DriverUnavailable",
                "quartet.native",
                502,
            ),
            (
                UnknownOperation {
                    driver: "v".into(),
                    operation: "op".into(),
                }
                .into(),
                "NoSuchMethod",
                "oslo_messaging.rpc.dispatcher",
                404,
            ),
            (
                quartet_policies::error::Elapsed {
                    kind: quartet_policies::error::TimeoutKind::Total,
                    after: Duration::from_secs(1),
                }
                .into(),
                "DriverTimeout",
                "quartet.native",
                504,
            ),
        ];
        for (e, class, module, status) in cases {
            let f = remote_failure("v", "op", e.as_ref());
            assert_eq!(
                (f.class.as_str(), f.module.as_str()),
                (class, module),
                "{e}"
            );
            assert_eq!(f.kwargs["status"], status, "{e}");
            assert_eq!(f.kwargs["driver"], "v");
            assert_eq!(f.kwargs["operation"], "op");
            // Backend details stay in the log, as at the HTTP edge.
            assert!(!f.message.contains("/secret"), "{}", f.message);
        }
    }

    #[test]
    fn key_paths_parse_from_the_library_form() {
        let p = key_path("native.drivers[1].operations.create.method");
        assert_eq!(p.to_string(), "native.drivers[1].operations.create.method");
        assert_eq!(
            p.0[..3],
            [
                Seg::Key("native".into()),
                Seg::Key("drivers".into()),
                Seg::Index(1)
            ]
        );
    }

    #[test]
    fn prefer_respond_async_is_found_among_preferences() {
        let mut h = HeaderMap::new();
        assert!(!prefers_async(&h));
        h.insert(
            "prefer",
            HeaderValue::from_static("return=minimal, respond-async; wait=10"),
        );
        assert!(prefers_async(&h));
        h.insert("prefer", HeaderValue::from_static("respond-asyncx"));
        assert!(!prefers_async(&h));
    }

    #[test]
    fn the_edge_maps_each_native_error() {
        use quartet_native::DriverError;
        let cases: Vec<(BoxError, u16, bool)> = vec![
            (DriverError::invalid("id is bad").into(), 400, true),
            (DriverError::not_found("volume v9").into(), 404, true),
            (
                DriverError::conflict("volume v1 has snapshots").into(),
                409,
                true,
            ),
            (
                DriverError::permanent("exit 3: /secret/path", None).into(),
                500,
                false,
            ),
            (
                DriverError::transient_sent("refused by 10.0.0.7", None).into(),
                502,
                false,
            ),
            (UnknownDriver { name: "x".into() }.into(), 404, true),
            (
                UnknownOperation {
                    driver: "x".into(),
                    operation: "y".into(),
                }
                .into(),
                404,
                true,
            ),
            (UnknownJob { id: "j".into() }.into(), 404, true),
            (JobsUnavailable.into(), 503, false),
        ];
        for (err, status, told) in cases {
            let edge = crate::error::classify(err.as_ref());
            assert_eq!(edge.status.as_u16(), status, "{err}");
            // Backend details stay in the log; the caller's mistakes are explained.
            assert_eq!(
                edge.message == err.to_string(),
                told,
                "{err}: {}",
                edge.message
            );
        }
        let edge = crate::error::classify(&JobsUnavailable);
        assert_eq!(edge.retry_after, Some(1));
    }

    #[tokio::test]
    async fn a_reload_keeps_the_jobs_store_and_its_running_jobs() {
        let dir =
            std::env::temp_dir().join(format!("quartet-native-reload-{}", std::process::id()));
        let src = format!(
            "[native]\ndatabase = \"sqlite://{}/jobs.db\"\n[[native.drivers]]\nname = \"t\"\n\
             kind = \"exec\"\n[native.drivers.commands.ok]\nexecutable = \"/bin/true\"\n",
            dir.display()
        );
        std::fs::create_dir_all(&dir).unwrap();
        let (c, _) = parse(&src, "q.toml", no_env).unwrap();
        let shared = crate::stack::Shared::new(Metrics::new());
        let a = crate::stack::Built::build(c.clone(), &shared).unwrap();
        let b = crate::stack::Built::build(c, &shared).unwrap();
        let (sa, sb) = (a.native.store.unwrap(), b.native.store.unwrap());
        assert!(Arc::ptr_eq(&sa, &sb));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_missing_qemu_img_leaves_the_driver_not_ready_and_the_rest_serving() {
        let dir = std::env::temp_dir().join(format!("quartet-native-unit-{}", std::process::id()));
        let src = format!(
            "[native]\ndatabase = \"sqlite://{}/jobs.db\"\n[[native.drivers]]\nname = \"v\"\n\
             kind = \"qemu-img\"\nroot = \"{}/v\"\nqemu_img = \"/nonexistent/qemu-img\"\n",
            dir.display(),
            dir.display()
        );
        let (c, _) = parse(&src, "q.toml", no_env).unwrap();
        let shared = crate::stack::Shared::new(Metrics::new());
        let built = crate::stack::Built::build(c, &shared).unwrap();
        let (_, body) = built.native.readiness();
        assert_eq!(body["drivers"]["v"]["ready"], false);
        let reason = body["drivers"]["v"]["reason"].as_str().unwrap();
        assert!(reason.contains("qemu-img"), "{reason}");
        let err = built
            .native
            .call("v", "get_volume_stats", json!({}))
            .await
            .unwrap_err();
        assert_eq!(
            crate::error::classify(err.as_ref()).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
