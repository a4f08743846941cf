//! Server connection pools, one per (database, user). A semaphore of `pool_size` permits
//! bounds the server connections of a pool, lent or idle; idle ones wait in a LIFO stack
//! (the most recently used is the warmest), closed when too old or idle too long.

use crate::backend::{BackendError, Backends};
use crate::metrics::{ListenerMetrics, PoolMetrics};
use crate::pg::server::{Login, ServerConn};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PoolKey {
    pub database: String,
    pub user: String,
}

/// Limits a pool keeps to.
#[derive(Clone, Debug)]
pub struct PoolLimits {
    pub size: usize,
    pub min_idle: usize,
    pub wait_timeout: Duration,
    pub lifetime: Duration,
    pub idle_timeout: Duration,
}

/// Why a checkout failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckoutError {
    #[error("no server connection became free within {after:?}")]
    WaitTimeout { after: Duration },
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl CheckoutError {
    pub fn sqlstate(&self) -> String {
        match self {
            CheckoutError::WaitTimeout { .. } => "53300".into(),
            CheckoutError::Backend(e) => e.sqlstate(),
        }
    }
    pub fn client_message(&self) -> String {
        match self {
            CheckoutError::Backend(e) => e.client_message(),
            other => other.to_string(),
        }
    }
}

/// Idle server connections, boxed: each was boxed once when connected and moves between
/// the pool and the clients' leases as a pointer (a lease in a session stays small).
#[allow(clippy::vec_box)]
type Idle = Vec<Box<ServerConn>>;

pub struct Pool {
    pub key: PoolKey,
    login: Login,
    limits: PoolLimits,
    backends: Arc<Backends>,
    permits: Arc<Semaphore>,
    idle: Mutex<Idle>,
    waiting: AtomicUsize,
    max_wait_us: AtomicUsize,
    metrics: Option<ListenerMetrics>,
    /// Queries and transactions of this pool's clients (also counted per listener).
    queries: AtomicU64,
    transactions: AtomicU64,
    counters: Option<PoolMetrics>,
    /// What the last server lent for a login said about itself ([`Pool::welcome`]).
    welcome: Mutex<Option<Arc<Welcome>>>,
}

/// A server's parameters as a login's answer carries them, kept by the pool from the
/// last server connection lent for a login: later logins in transaction mode are
/// answered from it without taking a server, as PgBouncer answers from its pool's
/// cached parameters.
#[derive(Debug)]
pub struct Welcome {
    /// The backend the parameters came from: while it is not known to be down (or a
    /// replica where the primary is wanted), they stand.
    backend: usize,
    /// Every `ParameterStatus` but `application_name` ([`ServerConn::status_block`]).
    pub status_block: bytes::Bytes,
    /// The server's `application_name`, which a client's own replaces.
    pub application_name: Option<String>,
}

/// A server connection lent to a client. Dropped without [`Pool::put`], the connection
/// closes and its permit frees.
pub struct Lease {
    /// Boxed once when connected, so a lease moves between the pool and the clients as
    /// a pointer and an idle client's task stays small.
    pub conn: Box<ServerConn>,
    permit: OwnedSemaphorePermit,
}

/// What the admin API shows of a pool (like PgBouncer's `SHOW POOLS`).
#[derive(Clone, Debug, Serialize)]
pub struct PoolState {
    pub database: String,
    pub user: String,
    pub clients_waiting: usize,
    pub servers_active: usize,
    pub servers_idle: usize,
    pub max_wait_seconds: f64,
    /// Simple queries and extended-protocol `Sync`s this pool's clients sent.
    pub queries: u64,
    /// Units of work of this pool's clients that ended with the server idle.
    pub transactions: u64,
}

impl Pool {
    pub(crate) fn new(
        key: PoolKey,
        login: Login,
        limits: PoolLimits,
        backends: Arc<Backends>,
        metrics: Option<ListenerMetrics>,
    ) -> Self {
        Self {
            counters: metrics.as_ref().map(|m| m.pool(&key.database, &key.user)),
            queries: AtomicU64::new(0),
            transactions: AtomicU64::new(0),
            metrics,
            key,
            login,
            permits: Arc::new(Semaphore::new(limits.size)),
            limits,
            backends,
            idle: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            max_wait_us: AtomicUsize::new(0),
            welcome: Mutex::new(None),
        }
    }

    /// The parameters a login may be answered with without a server: those of the last
    /// server lent for a login, while its backend is usable. `None`: take a server
    /// (the first login of a pool, or after its backend went down) and
    /// [`Pool::remember_welcome`] it.
    pub fn welcome(&self) -> Option<Arc<Welcome>> {
        let w = self.welcome.lock().unwrap_or_else(|e| e.into_inner());
        w.as_ref()
            .filter(|w| self.backends.usable(w.backend))
            .cloned()
    }

    /// Keeps what `conn`, lent for a login, said about itself for the next logins.
    pub fn remember_welcome(&self, conn: &ServerConn) -> Arc<Welcome> {
        let w = Arc::new(Welcome {
            backend: conn.backend,
            status_block: conn.status_block.clone(),
            application_name: conn
                .params
                .iter()
                .find(|(k, _)| k == "application_name")
                .map(|(_, v)| v.clone()),
        });
        *self.welcome.lock().unwrap_or_else(|e| e.into_inner()) = Some(w.clone());
        w
    }

    /// A query (simple, or a `Sync`) sent by one of this pool's clients.
    pub fn count_query(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.counters {
            m.query();
        }
    }

    /// A unit of work of one of this pool's clients ended with the server idle.
    pub fn count_transaction(&self) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.counters {
            m.transaction();
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an idle connection is past its lifetime or its idle timeout: one
    /// comparison with the deadline [`Pool::put`] worked out.
    fn expired(&self, c: &ServerConn, now: Instant) -> bool {
        c.idle_until.is_some_and(|t| now >= t)
    }

    /// When a connection created at `created` is too old to keep (`None`: never).
    fn retire_at(&self, created: Instant) -> Option<Instant> {
        created.checked_add(self.limits.lifetime)
    }

    /// An idle server connection, at once, when the pool has one and a permit is free;
    /// `None` otherwise (then [`Pool::get`] waits or connects).
    /// `now`: the caller's clock reading (the moment the client's message came).
    pub fn try_get(&self, now: Instant) -> Option<Lease> {
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        let conn = self.pop_idle(now)?;
        Some(Lease { conn, permit })
    }

    /// The most recently used idle connection still fit for use; the others on the way
    /// are closed.
    fn pop_idle(&self, now: Instant) -> Option<Box<ServerConn>> {
        loop {
            let conn = self.idle().pop()?;
            if self.expired(&conn, now)
                || !conn.looks_alive()
                || !self.backends.usable(conn.backend)
            {
                continue;
            }
            return Some(conn);
        }
    }

    /// A server connection: an idle one, or a new one when the pool has room; waits
    /// up to the wait timeout for one to be returned.
    pub async fn get(&self) -> Result<Lease, CheckoutError> {
        let started = Instant::now();
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.waiting.fetch_add(1, Ordering::Relaxed);
                let r = tokio::time::timeout(
                    self.limits.wait_timeout,
                    self.permits.clone().acquire_owned(),
                )
                .await;
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                let waited = started.elapsed();
                self.max_wait_us
                    .fetch_max(waited.as_micros() as usize, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.wait(waited.as_secs_f64());
                }
                match r {
                    Ok(Ok(p)) => p,
                    _ => {
                        return Err(CheckoutError::WaitTimeout {
                            after: self.limits.wait_timeout,
                        })
                    }
                }
            }
        };
        if let Some(conn) = self.pop_idle(Instant::now()) {
            return Ok(Lease { conn, permit });
        }
        let conn = Box::new(self.backends.connect(&self.login).await?);
        Ok(Lease { conn, permit })
    }

    /// Gives a server connection back; closes it when it is too old.
    pub fn put(&self, mut lease: Lease) {
        let now = Instant::now();
        let retire = self.retire_at(lease.conn.created);
        if retire.is_some_and(|t| now >= t) {
            return;
        }
        lease.conn.last_used = now;
        let idle = now.checked_add(self.limits.idle_timeout);
        lease.conn.idle_until = match (retire, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.idle().push(lease.conn);
        drop(lease.permit);
    }

    /// Closes expired idle connections and opens new ones up to `min_idle`.
    pub async fn maintain(&self) {
        let now = Instant::now();
        self.idle().retain(|c| !self.expired(c, now));
        loop {
            if self.idle().len() >= self.limits.min_idle {
                return;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                return;
            };
            let in_use = self.limits.size - self.permits.available_permits();
            if self.idle().len() + in_use > self.limits.size {
                return;
            }
            match self.backends.connect(&self.login).await {
                Ok(conn) => self.put(Lease {
                    conn: Box::new(conn),
                    permit,
                }),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot open min_idle server connection");
                    return;
                }
            }
        }
    }

    pub fn state(&self) -> PoolState {
        let idle = self.idle().len();
        let in_use = self.limits.size - self.permits.available_permits();
        PoolState {
            database: self.key.database.clone(),
            user: self.key.user.clone(),
            clients_waiting: self.waiting.load(Ordering::Relaxed),
            servers_active: in_use,
            servers_idle: idle,
            max_wait_seconds: self.max_wait_us.load(Ordering::Relaxed) as f64 / 1e6,
            queries: self.queries.load(Ordering::Relaxed),
            transactions: self.transactions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendRole;
    use crate::config::Role;

    #[test]
    fn a_welcome_stands_only_while_its_backend_is_usable() {
        let backends = Arc::new(crate::backend::tests::backends(2, Role::Primary));
        let pool = Pool::new(
            PoolKey {
                database: "db".into(),
                user: "u".into(),
            },
            Login {
                user: "u".into(),
                password: None,
                database: "db".into(),
                params: Vec::new(),
            },
            PoolLimits {
                size: 1,
                min_idle: 0,
                wait_timeout: Duration::from_secs(1),
                lifetime: Duration::from_secs(60),
                idle_timeout: Duration::from_secs(60),
            },
            backends.clone(),
            None,
        );
        assert!(
            pool.welcome().is_none(),
            "a pool's first login takes a server"
        );
        *pool.welcome.lock().unwrap() = Some(Arc::new(Welcome {
            backend: 0,
            status_block: bytes::Bytes::from_static(b"S"),
            application_name: None,
        }));
        let first = &backends.list[0];
        assert!(pool.welcome().is_some(), "an unchecked backend is usable");
        first.set_health(true, Some(BackendRole::Primary));
        assert!(pool.welcome().is_some());
        first.set_health(false, None);
        assert!(pool.welcome().is_none(), "its backend is down");
        first.set_health(true, Some(BackendRole::Replica));
        assert!(
            pool.welcome().is_none(),
            "its backend is no longer the primary"
        );
        backends.list[1].set_health(true, Some(BackendRole::Primary));
        assert!(
            pool.welcome().is_none(),
            "another backend's health does not bring it back"
        );
        first.set_health(true, Some(BackendRole::Primary));
        assert!(pool.welcome().is_some(), "its backend is back");
    }
}
