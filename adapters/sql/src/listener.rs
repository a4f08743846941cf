//! One `[[sql.listeners]]` entry at run time: the bound socket, its backends and their
//! health tasks, its pools, and the accept loop.

use crate::backend::{health_loop, Backend, BackendState, BackendUrl, Backends};
use crate::config::{ConfigError, ListenerSpec, Protocol};
use crate::metrics::{ListenerMetrics, SqlMetrics};
use crate::mysql::{self, MysqlBackend, MysqlBackends};
use crate::park::{ParkSender, Parking};
use crate::pg::client::{self, CancelSlot, UserSecret};
use crate::pg::codec::{self, Severity, StartupParams};
use crate::pg::server::Login;
use crate::pool::{Pool, PoolKey, PoolLimits, PoolState};
use bytes::Bytes;
use futures_util::FutureExt;
use prometheus::IntGauge;
use quartet_policies::breaker::{BreakerHandle, BreakerRegistry};
use quartet_policies::fault::FaultHandle;
use quartet_policies::metrics::Metrics;
use quartet_policies::retry::Backoff;
use quartet_policies::spec::{BreakerSpec, FaultSpec};
use quartet_policies::Target;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// What the gateway hands a SQL listener from the rest of the config.
#[derive(Clone)]
pub struct SqlContext {
    /// The breaker of the listener's policy, one machine per backend.
    pub breaker: BreakerSpec,
    pub metrics: Arc<Metrics>,
    /// Where the breakers are registered for the admin API, if anywhere.
    pub registry: Option<BreakerRegistry>,
    /// The SQL channel's own metrics, if they are collected.
    pub sql_metrics: Option<Arc<SqlMetrics>>,
    /// The fault set on the listener's target when it starts (the admin API changes it
    /// later through [`SqlHandle::fault`]).
    pub initial_fault: Option<FaultSpec>,
}

impl Default for SqlContext {
    fn default() -> Self {
        Self {
            breaker: BreakerSpec::default(),
            metrics: Metrics::new(),
            registry: None,
            sql_metrics: None,
            initial_fault: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("invalid sql listener config")]
    Config(#[from] ConfigError),
    #[error("tls of the listener or of a backend")]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot make the epoll set for idle clients")]
    Parking(#[source] std::io::Error),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Counters of one listener, for the admin API (like PgBouncer's `SHOW STATS`).
#[derive(Default)]
pub(crate) struct Stats {
    queries: AtomicU64,
    transactions: AtomicU64,
    pub reprepares: AtomicU64,
    pub local_prepares: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    pub metrics: Option<ListenerMetrics>,
}

impl Stats {
    pub fn query(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.query();
        }
    }

    pub fn transaction(&self) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.transaction();
        }
    }

    /// Counts an error sent to a client by its SQLSTATE class (the first two characters).
    pub fn error(&self, sqlstate: &str) {
        let class = sqlstate.get(..2).unwrap_or("??").to_string();
        if let Some(m) = &self.metrics {
            m.error(&class);
        }
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(class)
            .or_default() += 1;
    }

    fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            queries: self.queries.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
            reprepares: self.reprepares.load(Ordering::Relaxed),
            local_prepares: self.local_prepares.load(Ordering::Relaxed),
            errors_by_class: self
                .errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

/// What the admin API shows of a listener's counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StatsSnapshot {
    /// Simple queries and extended-protocol `Sync`s sent to servers.
    pub queries: u64,
    /// Units of work ended with the server idle (`ReadyForQuery` `I`).
    pub transactions: u64,
    /// Named statements prepared again on another server connection (transaction mode).
    pub reprepares: u64,
    /// `Parse`+`Sync` batches answered by Quartet without a server (transaction mode).
    pub local_prepares: u64,
    /// Errors sent to clients (the servers' and Quartet's own) by SQLSTATE class.
    pub errors_by_class: BTreeMap<String, u64>,
}

/// Listener-wide state shared by every client task.
pub(crate) struct Shared {
    pub stats: Stats,
    /// One small lazy sqlx pool per backend for `auth_query`.
    auth_pools: Vec<sqlx::PgPool>,
    pub metrics: Option<ListenerMetrics>,
    /// The listener's fault: a request-level abort or delay applies to each client login.
    pub fault: FaultHandle,
    /// The policy metrics (`quartet_faults_injected_total`).
    pub policy_metrics: Arc<Metrics>,
    pub spec: ListenerSpec,
    pub users: HashMap<String, UserSecret>,
    pub backends: Arc<Backends>,
    /// Set when the listener has `tls`: `SSLRequest` is answered `S`.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Where idle clients park (none when `client_park_after` is 0).
    pub parker: Option<ParkSender>,
    pools: Mutex<FastMap<PoolKey, Arc<Pool>>>,
    cancels: Mutex<FastMap<(i32, i32), Arc<CancelSlot>>>,
    statements: Mutex<FastMap<Bytes, Arc<str>>>,
}

/// The maps looked up on every login (pools, cancel keys) and every `Parse`
/// (statements): foldhash, randomly seeded per process, a fraction of SipHash's cost.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

impl Shared {
    pub fn cancels(&self) -> MutexGuard<'_, FastMap<(i32, i32), Arc<CancelSlot>>> {
        self.cancels.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pools(&self) -> MutexGuard<'_, FastMap<PoolKey, Arc<Pool>>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A user not in the config, looked up with `auth_query` on the backends (in the
    /// order a server connection would try them). `None`: unknown, or no lookup possible.
    pub async fn lookup_user(&self, user: &str) -> Option<UserSecret> {
        let query = self.spec.auth_query.as_deref()?;
        let order = self.backends.lookup_order();
        for i in order {
            let pool = &self.auth_pools[i];
            let found = tokio::time::timeout(
                self.spec.connect_timeout,
                sqlx::query_as::<_, (String, Option<String>)>(query)
                    .bind(user)
                    .fetch_optional(pool),
            )
            .await;
            match found {
                Ok(Ok(Some((_, Some(password))))) => {
                    return Some(UserSecret::new(user, &password));
                }
                Ok(Ok(_)) => return None,
                Ok(Err(e)) => tracing::warn!(error = %e, "auth_query failed"),
                Err(_) => tracing::warn!("auth_query timed out"),
            }
        }
        None
    }

    /// A fresh (pid, key) pair for a client, registered for cancels.
    pub fn register_cancel(&self, slot: Arc<CancelSlot>) -> (i32, i32) {
        let mut cancels = self.cancels();
        loop {
            let k: (i32, i32) = (rand::random::<i32>() & 0x7fff_ffff, rand::random());
            if k.0 != 0 && !cancels.contains_key(&k) {
                cancels.insert(k, slot);
                return k;
            }
        }
    }

    /// The server-side name of a prepared statement, shared by every client that
    /// prepares the same query with the same parameter types.
    pub fn statement_name(&self, rest: &Bytes) -> Arc<str> {
        let mut map = self.statements.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get(rest) {
            return n.clone();
        }
        let name: Arc<str> = format!("QUARTET_{}", map.len() + 1).into();
        map.insert(rest.clone(), name.clone());
        name
    }

    /// The pool of (`database`, `user`), made on first use with the session parameters
    /// of `startup` that a server connection is opened with.
    pub fn pool(&self, database: &str, user: &str, startup: &StartupParams) -> Arc<Pool> {
        let key = PoolKey {
            database: database.to_string(),
            user: user.to_string(),
        };
        let mut pools = self.pools();
        if let Some(p) = pools.get(&key) {
            return p.clone();
        }
        // Each backend replaces user and password with those of its url, if any.
        let login = Login {
            user: user.to_string(),
            password: None,
            database: database.to_string(),
            params: startup
                .iter()
                .filter(|(k, _)| SERVER_PARAMS.contains(k))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let limits = PoolLimits {
            size: self.spec.pool_size,
            min_idle: self.spec.min_idle,
            wait_timeout: self.spec.query_wait_timeout,
            lifetime: self.spec.server_lifetime,
            idle_timeout: self.spec.server_idle_timeout,
        };
        let pool = Arc::new(Pool::new(
            key.clone(),
            login,
            limits,
            self.backends.clone(),
            self.metrics.clone(),
        ));
        pools.insert(key, pool.clone());
        pool
    }
}

/// The startup parameters a pool's server connections are opened with (the client's
/// session settings); the others (`user`, `database`, anything else) are not passed on.
const SERVER_PARAMS: [&str; 5] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "options",
];

/// What /readyz and the admin API show of a listener.
#[derive(Clone, Debug, Serialize)]
pub struct ListenerState {
    pub listen: SocketAddr,
    pub clients: usize,
    /// Of `clients`, those parked: idle, with no task and no place in tokio's reactor.
    pub clients_parked: usize,
    pub backends: Vec<BackendState>,
    pub pools: Vec<PoolState>,
    pub stats: StatsSnapshot,
}

impl ListenerState {
    /// Ready when some backend is healthy (or not checked yet) and its breaker lets
    /// calls through.
    pub fn ready(&self) -> bool {
        use quartet_policies::breaker::BreakerState as B;
        self.backends.iter().any(|b| {
            b.healthy != Some(false) && matches!(b.breaker, B::Closed | B::HalfOpen | B::Disabled)
        })
    }
}

/// A cheap handle on a running listener, for /readyz and the admin API.
#[derive(Clone)]
pub struct SqlHandle {
    kind: HandleKind,
    target: Target,
    fault: FaultHandle,
    clients: Arc<Semaphore>,
    max_clients: usize,
    local: SocketAddr,
}

#[derive(Clone)]
enum HandleKind {
    Postgres(Arc<Shared>),
    Mysql(Arc<MysqlBackends>),
}

impl SqlHandle {
    /// `sql:NAME`, or `sql:ADDRESS` (the bound one) for a listener without a name.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The listener's fault handle, for the admin API's fault registry.
    pub fn fault(&self) -> FaultHandle {
        self.fault.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn state(&self) -> ListenerState {
        let clients = self.max_clients - self.clients.available_permits();
        match &self.kind {
            HandleKind::Postgres(shared) => {
                let mut pools: Vec<PoolState> =
                    shared.pools().values().map(|p| p.state()).collect();
                pools.sort_by(|a, b| (&a.database, &a.user).cmp(&(&b.database, &b.user)));
                ListenerState {
                    listen: self.local,
                    clients,
                    clients_parked: shared.parker.as_ref().map_or(0, ParkSender::parked),
                    backends: shared.backends.states(),
                    pools,
                    stats: shared.stats.snapshot(),
                }
            }
            HandleKind::Mysql(backends) => ListenerState {
                listen: self.local,
                clients,
                clients_parked: 0,
                backends: backends.states(),
                pools: Vec::new(),
                stats: StatsSnapshot::default(),
            },
        }
    }

    pub fn breakers(&self) -> Vec<BreakerHandle> {
        match &self.kind {
            HandleKind::Postgres(shared) => shared
                .backends
                .list
                .iter()
                .map(|b| b.breaker().clone())
                .collect(),
            HandleKind::Mysql(backends) => {
                backends.list.iter().map(|b| b.breaker().clone()).collect()
            }
        }
    }
}

/// `sql:NAME` when the listener has a name, else `sql:` and its bound address.
fn listener_target(spec: &ListenerSpec, local: SocketAddr) -> Target {
    match &spec.name {
        Some(name) => Target::new("sql", name.as_str()),
        None => Target::new("sql", local.to_string()),
    }
}

fn breaker_for(ctx: &SqlContext, target: &Target, endpoint: &str) -> BreakerHandle {
    let handle = BreakerHandle::new(
        target.clone(),
        endpoint,
        ctx.breaker.clone(),
        ctx.metrics.clone(),
    );
    if let Some(r) = &ctx.registry {
        r.register(handle.clone());
    }
    handle
}

async fn bind_socket(spec: &ListenerSpec) -> Result<(TcpListener, SocketAddr), SqlError> {
    let listener = TcpListener::bind(spec.listen)
        .await
        .map_err(|source| SqlError::Bind {
            addr: spec.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| SqlError::Bind {
        addr: spec.listen,
        source,
    })?;
    Ok((listener, local))
}

/// The listening socket, registered with the reactor of the runtime this is called on:
/// a listener is bound on the gateway's runtime and may be served on a thread of its
/// own (`[sql] runtime`), whose reactor must be the one that wakes its accept loop.
fn listen_here(listener: TcpListener) -> Option<TcpListener> {
    match listener.into_std().and_then(TcpListener::from_std) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::error!(error = %e, "cannot serve the sql listener on this runtime");
            None
        }
    }
}

/// What a client holds until it ends or is dropped (at shutdown): its place under
/// `max_clients` and its count in the clients gauge. It moves with a parked client.
pub(crate) struct ClientGuard {
    _permit: OwnedSemaphorePermit,
    gauge: Option<IntGauge>,
}

impl ClientGuard {
    fn new(permit: OwnedSemaphorePermit, gauge: Option<IntGauge>) -> Self {
        if let Some(g) = &gauge {
            g.inc();
        }
        Self {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

/// Finished sessions waiting to be reaped before the accept loop wakes up for them
/// alone (each holds its task's memory until then).
const REAP_AFTER: usize = 64;

/// The tasks of a listener's sessions. One that ends counts itself finished rather
/// than waking the accept loop (a `JoinSet` wakes its joiner for every task): the loop
/// reaps the finished ones when it next accepts, or once [`REAP_AFTER`] of them wait.
/// With a connection per transaction, that is one task wake-up fewer per connection.
#[derive(Default)]
struct Sessions {
    set: JoinSet<()>,
    finished: Arc<AtomicUsize>,
}

impl Sessions {
    fn spawn(&mut self, session: impl Future<Output = ()> + Send + 'static) {
        let finished = self.finished.clone();
        self.set.spawn(session.map(move |()| {
            finished.fetch_add(1, Ordering::Relaxed);
        }));
    }

    fn finished(&self) -> usize {
        self.finished.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// A task taken out of the set: one finished fewer, unless it never counted
    /// itself (it panicked or was aborted).
    fn count(&self, r: Result<(), tokio::task::JoinError>) {
        if r.is_ok() {
            self.finished.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Takes out every task that has ended, without waiting.
    fn reap(&mut self) {
        if self.finished() == 0 {
            return;
        }
        while let Some(r) = self.set.try_join_next() {
            self.count(r);
        }
    }
}

/// Accepts until `shutdown`, giving each client and its guard to `serve_client` under
/// the `max_clients` limit (more are refused with `refusal`), and resumes the parked
/// clients of `parking` that woke up as tasks of the same set; then ends every task.
// Private, called from two places; a struct for the arguments would only rename them.
#[allow(clippy::too_many_arguments)]
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    clients: Arc<Semaphore>,
    mut background: JoinSet<()>,
    refusal: Vec<u8>,
    metrics: Option<ListenerMetrics>,
    serve_client: F,
    mut parking: Option<Parking>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    F: Fn(tokio::net::TcpStream, ClientGuard) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut tasks = Sessions::default();
    let clients_gauge = metrics.map(|m| m.clients());
    let mut woken = Vec::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            // A batch of ended sessions with no client connecting meanwhile, in one
            // wake-up; a session that ends does not wake the loop by itself.
            Some(r) = tasks.set.join_next(), if tasks.finished() >= REAP_AFTER => {
                tasks.count(r);
                tasks.reap();
            }
            () = async { parking.as_mut()?.turn(&mut woken).await; Some(()) }
                .map(|o| o.unwrap_or(())), if parking.is_some() => {
                for client in woken.drain(..) {
                    tasks.spawn(client.resume());
                }
            }
            r = listener.accept() => {
                let (mut stream, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                tasks.reap();
                match clients.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let guard = ClientGuard::new(permit, clients_gauge.clone());
                        tasks.spawn(serve_client(stream, guard));
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "too many clients");
                        let refusal = refusal.clone();
                        tasks.spawn(async move {
                            let _ = stream.write_all(&refusal).await;
                        });
                    }
                }
            }
        }
    }
    // Stop accepting, then let the sessions end by themselves within the grace period
    // (parked clients that wake up are served too); whatever is left is closed.
    drop(listener);
    let parked = |p: &Option<Parking>| p.as_ref().map_or(0, Parking::len);
    if !grace.is_zero() && (!tasks.is_empty() || parked(&parking) > 0) {
        let drain = async {
            while !tasks.is_empty() || parked(&parking) > 0 {
                tokio::select! {
                    Some(_) = tasks.set.join_next(), if !tasks.is_empty() => {}
                    () = async { parking.as_mut()?.turn(&mut woken).await; Some(()) }
                        .map(|o| o.unwrap_or(())), if parking.is_some() => {
                        for client in woken.drain(..) {
                            tasks.spawn(client.resume());
                        }
                    }
                }
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::info!(
                sessions = tasks.set.len() + parked(&parking),
                "grace period over: closing sql sessions"
            );
        }
    }
    tasks.set.shutdown().await;
    // Parked clients are closed with their sockets.
    drop(parking);
    background.shutdown().await;
}

/// The listener's request-level fault, applied to each client login (PostgreSQL: once
/// its startup packet is read; MySQL: when it connects): a delay holds the login, an
/// abort refuses it (after the delay, if both are drawn), as a server that is starting
/// up would. `true`: refuse this login.
pub(crate) async fn login_fault(fault: &FaultHandle, metrics: &Metrics) -> bool {
    let Some(spec) = fault.current() else {
        return false;
    };
    let target = fault.target();
    let count = |kind: &str| {
        metrics
            .faults_injected
            .with_label_values(&[target.channel, &*target.name, kind])
            .inc()
    };
    if let Some(delay) = spec.delay.filter(|_| chance(spec.delay_percent)) {
        count("delay");
        tokio::time::sleep(delay).await;
    }
    if chance(spec.abort_percent) {
        count("abort");
        return true;
    }
    false
}

/// True with probability `percent / 100` (NaN or below 0: never; 100 or above: always).
fn chance(percent: f64) -> bool {
    let p = percent / 100.0;
    if p.is_nan() || p <= 0.0 {
        false
    } else if p >= 1.0 {
        true
    } else {
        rand::random::<f64>() < p
    }
}

/// A PostgreSQL listener, bound and not yet serving.
pub struct PgListener {
    listener: TcpListener,
    handle: SqlHandle,
    /// The table of parked idle clients (none when `client_park_after` is 0).
    parking: Option<Parking>,
}

impl PgListener {
    /// Validates the spec, binds the socket (port 0 picks one) and builds backends and
    /// breakers. Nothing runs until [`PgListener::run`].
    pub async fn bind(spec: ListenerSpec, ctx: SqlContext) -> Result<Self, SqlError> {
        spec.validate()?;
        if spec.protocol != Protocol::Postgres {
            return Err(ConfigError {
                key: "protocol",
                message: "this listener speaks postgres only",
            }
            .into());
        }
        let tls = match &spec.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
                &t.cert, &t.key,
            )?)),
            None => None,
        };
        let (listener, local) = bind_socket(&spec).await?;
        let target = listener_target(&spec, local);
        let fault = FaultHandle::new(
            target.clone(),
            ctx.initial_fault.clone(),
            ctx.metrics.clone(),
        );
        let mut list = Vec::new();
        for (i, url) in spec.backends.iter().enumerate() {
            let url = BackendUrl::parse(url).map_err(|_| ConfigError {
                key: "backends",
                message: "each must be a postgres://user@host:port/database url",
            })?;
            let handle = breaker_for(&ctx, &target, &url.display());
            list.push(Backend::with_faults(url, i, handle, Some(fault.clone()))?);
        }
        let backends = Arc::new(Backends {
            list,
            metrics: Default::default(),
            role: spec.role,
            attempts: spec.connect_attempts,
            backoff: Backoff::new(spec.connect_backoff, Duration::from_secs(1)),
            connect_timeout: spec.connect_timeout,
        });
        let users = spec
            .users
            .iter()
            .map(|u| (u.name.clone(), UserSecret::new(&u.name, &u.password)))
            .collect();
        let clients = Arc::new(Semaphore::new(spec.max_clients));
        let max_clients = spec.max_clients;
        let listener_metrics = ctx
            .sql_metrics
            .clone()
            .map(|metrics| ListenerMetrics::new(local.to_string(), metrics));
        backends_metrics(&backends, listener_metrics.clone());
        let auth_pools = backends
            .list
            .iter()
            .map(|b| {
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(spec.connect_timeout)
                    .idle_timeout(Some(Duration::from_secs(60)))
                    .connect_lazy_with(crate::backend::pg_options(&b.url, "quartet-auth"))
            })
            .collect();
        let (parking, parker) = if spec.client_park_after.is_zero() {
            (None, None)
        } else {
            let (parking, parker) = Parking::new().map_err(SqlError::Parking)?;
            (Some(parking), Some(parker))
        };
        let shared = Arc::new(Shared {
            parker,
            auth_pools,
            stats: Stats {
                metrics: listener_metrics.clone(),
                ..Stats::default()
            },
            metrics: listener_metrics,
            fault: fault.clone(),
            policy_metrics: ctx.metrics.clone(),
            spec,
            users,
            backends,
            tls,
            pools: Mutex::new(FastMap::default()),
            cancels: Mutex::new(FastMap::default()),
            statements: Mutex::new(FastMap::default()),
        });
        Ok(Self {
            listener,
            parking,
            handle: SqlHandle {
                kind: HandleKind::Postgres(shared),
                target,
                fault,
                clients,
                max_clients,
                local,
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local
    }

    pub fn handle(&self) -> SqlHandle {
        self.handle.clone()
    }

    /// Serves until `shutdown` completes; then stops accepting and ends every client
    /// and background task of this listener.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.run_with_grace(shutdown, Duration::ZERO).await
    }

    /// Like [`PgListener::run`], but after `shutdown` the open sessions get up to `grace`
    /// to end by themselves before they are closed.
    pub async fn run_with_grace(self, shutdown: impl Future<Output = ()>, grace: Duration) {
        let HandleKind::Postgres(shared) = self.handle.kind.clone() else {
            return;
        };
        let Some(listener) = listen_here(self.listener) else {
            return;
        };
        let mut parking = self.parking;
        if let Some(p) = parking.as_mut() {
            p.watch_here();
        }
        let mut background = JoinSet::new();
        for i in 0..shared.backends.list.len() {
            background.spawn(health_loop(
                shared.backends.clone(),
                i,
                shared.spec.health_interval,
            ));
        }
        let maint = shared.clone();
        background.spawn(async move {
            let period = maint.spec.health_interval;
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let pools: Vec<Arc<Pool>> = maint.pools().values().cloned().collect();
                let (mut active, mut idle, mut waiting) = (0, 0, 0);
                for p in pools {
                    p.maintain().await;
                    let st = p.state();
                    active += st.servers_active;
                    idle += st.servers_idle;
                    waiting += st.clients_waiting;
                }
                if let Some(m) = &maint.metrics {
                    m.pools(active, idle, waiting);
                }
            }
        });
        let refusal =
            codec::error_response(Severity::Fatal, "53300", "sorry, too many clients already")
                .to_vec();
        accept_loop(
            listener,
            self.handle.clients.clone(),
            background,
            refusal,
            shared.metrics.clone(),
            move |stream, guard| client::handle(shared.clone(), stream, guard),
            parking,
            shutdown,
            grace,
        )
        .await;
    }
}

/// A MariaDB/MySQL listener, bound and not yet serving (see [`crate::mysql`]).
pub struct MysqlListener {
    listener: TcpListener,
    handle: SqlHandle,
    health_interval: Duration,
    metrics: Option<ListenerMetrics>,
    policy_metrics: Arc<Metrics>,
}

impl MysqlListener {
    pub async fn bind(spec: ListenerSpec, ctx: SqlContext) -> Result<Self, SqlError> {
        spec.validate()?;
        if spec.protocol != Protocol::Mysql {
            return Err(ConfigError {
                key: "protocol",
                message: "this listener speaks mysql only",
            }
            .into());
        }
        let (listener, local) = bind_socket(&spec).await?;
        let target = listener_target(&spec, local);
        let fault = FaultHandle::new(
            target.clone(),
            ctx.initial_fault.clone(),
            ctx.metrics.clone(),
        );
        let mut list = Vec::new();
        for url in &spec.backends {
            let url = BackendUrl::parse_mysql(url).map_err(|_| ConfigError {
                key: "backends",
                message: "each must be a mysql://user@host:port url",
            })?;
            let handle = breaker_for(&ctx, &target, &format!("{}:{}", url.host, url.port));
            list.push(MysqlBackend::new(url, handle));
        }
        let backends = Arc::new(MysqlBackends::new(list, &spec));
        Ok(Self {
            listener,
            policy_metrics: ctx.metrics.clone(),
            metrics: ctx
                .sql_metrics
                .clone()
                .map(|metrics| ListenerMetrics::new(local.to_string(), metrics)),
            health_interval: spec.health_interval,
            handle: SqlHandle {
                kind: HandleKind::Mysql(backends),
                target,
                fault,
                clients: Arc::new(Semaphore::new(spec.max_clients)),
                max_clients: spec.max_clients,
                local,
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local
    }

    pub fn handle(&self) -> SqlHandle {
        self.handle.clone()
    }

    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.run_with_grace(shutdown, Duration::ZERO).await
    }

    /// Like [`MysqlListener::run`], with a grace period for open sessions.
    pub async fn run_with_grace(self, shutdown: impl Future<Output = ()>, grace: Duration) {
        let HandleKind::Mysql(backends) = self.handle.kind.clone() else {
            return;
        };
        let Some(listener) = listen_here(self.listener) else {
            return;
        };
        let mut background = JoinSet::new();
        for i in 0..backends.list.len() {
            background.spawn(mysql::health_loop(
                backends.clone(),
                i,
                self.health_interval,
            ));
        }
        let fault = self.handle.fault.clone();
        let policy_metrics = self.policy_metrics.clone();
        // ER_CON_COUNT_ERROR, as a MySQL server says it.
        let refusal = mysql::err_packet(1040, "08004", "Too many connections");
        accept_loop(
            listener,
            self.handle.clients.clone(),
            background,
            refusal,
            self.metrics,
            move |stream, guard| {
                // `map`, not `async move { fut.await; drop(guard) }`: an async block
                // keeps the future it captured and the one it awaits apart.
                mysql::handle(
                    backends.clone(),
                    stream,
                    fault.clone(),
                    policy_metrics.clone(),
                )
                .map(move |()| drop(guard))
            },
            None,
            shutdown,
            grace,
        )
        .await;
    }
}

/// A listener of either protocol, as its `protocol` key says.
pub enum SqlListener {
    Postgres(PgListener),
    Mysql(MysqlListener),
}

impl SqlListener {
    pub async fn bind(spec: ListenerSpec, ctx: SqlContext) -> Result<Self, SqlError> {
        Ok(match spec.protocol {
            Protocol::Postgres => SqlListener::Postgres(PgListener::bind(spec, ctx).await?),
            Protocol::Mysql => SqlListener::Mysql(MysqlListener::bind(spec, ctx).await?),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        match self {
            SqlListener::Postgres(l) => l.local_addr(),
            SqlListener::Mysql(l) => l.local_addr(),
        }
    }

    pub fn handle(&self) -> SqlHandle {
        match self {
            SqlListener::Postgres(l) => l.handle(),
            SqlListener::Mysql(l) => l.handle(),
        }
    }

    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        self.run_with_grace(shutdown, Duration::ZERO).await
    }

    /// Serves until `shutdown`; then stops accepting and gives the open sessions up to
    /// `grace` to end before closing them.
    pub async fn run_with_grace(self, shutdown: impl Future<Output = ()>, grace: Duration) {
        match self {
            SqlListener::Postgres(l) => l.run_with_grace(shutdown, grace).await,
            SqlListener::Mysql(l) => l.run_with_grace(shutdown, grace).await,
        }
    }
}

fn backends_metrics(backends: &Arc<Backends>, metrics: Option<ListenerMetrics>) {
    if let Some(m) = metrics {
        let _ = backends.metrics.set(m);
    }
}

/// Binds and serves one listener until `shutdown`.
pub async fn serve(
    spec: ListenerSpec,
    ctx: SqlContext,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SqlError> {
    SqlListener::bind(spec, ctx).await?.run(shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task of an idle client is as big as the largest state of its future: the
    /// rare, deep paths (login, connecting) are boxed so that thousands of idle clients
    /// stay small.
    #[tokio::test]
    async fn a_client_task_is_small() {
        let mut spec = ListenerSpec::new(
            "127.0.0.1:0".parse().unwrap(),
            vec!["postgres://postgres@127.0.0.1:1/test".into()],
        );
        spec.auth = crate::config::AuthMethod::Trust;
        let l = PgListener::bind(spec, SqlContext::default()).await.unwrap();
        let HandleKind::Postgres(shared) = l.handle.kind.clone() else {
            unreachable!()
        };
        let stream = tokio::net::TcpStream::connect(l.local_addr())
            .await
            .unwrap();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let fut = client::handle(shared, stream, ClientGuard::new(permit, None));
        let size = std::mem::size_of_val(&fut);
        eprintln!("client task future: {size} bytes, {:?}", client::sizes());
        assert!(size <= 448, "a client's future takes {size} bytes");
    }
}
