//! MariaDB/MySQL: each client connection is proxied whole to the current writer of a set
//! of backends (clients log in to the backend itself; no pooling).
//!
//! A health task per backend decides with sqlx whether it may take writes: on a Galera
//! node (`@@wsrep_on`) `wsrep_local_state = 4` (Synced) and `wsrep_ready = ON`; otherwise
//! `@@global.read_only = 0`. One writer at a time: the current writer stays while it
//! qualifies; when it stops qualifying the first qualifying backend in list order takes
//! over, and connections proxied to the old writer are closed so their clients reconnect.
//! Connecting goes through a circuit breaker per backend and retries with backoff, like
//! the PostgreSQL side. A client that no writer can take gets an `ERR` packet at once.

use crate::backend::{BackendRole, BackendState, BackendUrl};
use crate::config::ListenerSpec;
use futures_util::future::BoxFuture;
use quartet_policies::breaker::{BreakerHandle, CircuitBreaker, CircuitBreakerLayer};
use quartet_policies::classify::{classify_policy_error, Class, Classify};
use quartet_policies::fault::toxic::relay;
use quartet_policies::fault::FaultHandle;
use quartet_policies::metrics::Metrics;
use quartet_policies::retry::Backoff;
use quartet_policies::BoxError;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tower::{Layer, Service, ServiceExt};

/// A failed TCP connect to a backend. Nothing was sent: always safe to retry.
#[derive(Debug, thiserror::Error)]
pub enum TcpConnectError {
    #[error("cannot connect to {addr}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
}

/// One TCP connect, as a tower service for the policy breaker.
#[derive(Clone)]
pub struct TcpConnect {
    addr: Arc<str>,
}

impl Service<Duration> for TcpConnect {
    type Response = TcpStream;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<TcpStream, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, timeout: Duration) -> Self::Future {
        let addr = self.addr.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, TcpStream::connect(&*addr)).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    Ok(s)
                }
                Ok(Err(source)) => Err(TcpConnectError::Io {
                    addr: addr.to_string(),
                    source,
                }
                .into()),
                Err(_) => Err(TcpConnectError::Timeout {
                    addr: addr.to_string(),
                    after: timeout,
                }
                .into()),
            }
        })
    }
}

/// Connect results: a refused or unreachable backend is `NotSent`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpClassify;

impl Classify<TcpStream> for TcpClassify {
    fn classify(&self, result: &Result<TcpStream, BoxError>) -> Class {
        match result {
            Ok(_) => Class::Success,
            Err(e) => classify_policy_error(e).unwrap_or(Class::NotSent),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Health {
    healthy: Option<bool>,
    writable: bool,
}

pub struct MysqlBackend {
    pub url: BackendUrl,
    pub endpoint: String,
    breaker: CircuitBreaker<TcpConnect, TcpClassify>,
    handle: BreakerHandle,
    health: Mutex<Health>,
}

impl MysqlBackend {
    pub fn new(url: BackendUrl, handle: BreakerHandle) -> Self {
        let endpoint = format!("{}:{}", url.host, url.port);
        let service = TcpConnect {
            addr: endpoint.as_str().into(),
        };
        Self {
            breaker: CircuitBreakerLayer::new(handle.clone(), TcpClassify).layer(service),
            url,
            endpoint,
            handle,
            health: Mutex::new(Health::default()),
        }
    }

    fn health(&self) -> Health {
        *self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_health(&self, healthy: bool, writable: bool) {
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = Health {
            healthy: Some(healthy),
            writable: healthy && writable,
        };
    }

    pub fn breaker(&self) -> &BreakerHandle {
        &self.handle
    }

    /// `writer`: whether this backend is the elected writer (shown as the primary;
    /// every other checked backend shows as a replica).
    fn state(&self, writer: bool) -> BackendState {
        let h = self.health();
        BackendState {
            endpoint: self.endpoint.clone(),
            role: match h.healthy {
                None => BackendRole::Unknown,
                Some(_) if writer => BackendRole::Primary,
                Some(_) => BackendRole::Replica,
            },
            healthy: h.healthy,
            breaker: self.handle.state(),
        }
    }
}

/// Every backend of one MySQL listener and who the writer is.
pub struct MysqlBackends {
    pub list: Vec<MysqlBackend>,
    writer: watch::Sender<Option<usize>>,
    attempts: u32,
    backoff: Backoff,
    connect_timeout: Duration,
}

/// Why a client could not be given a backend.
#[derive(Debug, thiserror::Error)]
#[error("no writable backend is available")]
pub struct NoWriter {
    #[source]
    pub last: Option<BoxError>,
}

impl MysqlBackends {
    pub fn new(list: Vec<MysqlBackend>, spec: &ListenerSpec) -> Self {
        Self {
            list,
            writer: watch::Sender::new(None),
            attempts: spec.connect_attempts,
            backoff: Backoff::new(spec.connect_backoff, Duration::from_secs(1)),
            connect_timeout: spec.connect_timeout,
        }
    }

    pub fn writer(&self) -> Option<usize> {
        *self.writer.borrow()
    }

    pub fn states(&self) -> Vec<BackendState> {
        let writer = self.writer();
        self.list
            .iter()
            .enumerate()
            .map(|(i, b)| b.state(writer == Some(i)))
            .collect()
    }

    /// Keeps the current writer while it qualifies, else takes the first that does.
    fn elect(&self) {
        let qualifies = |i: usize| self.list.get(i).is_some_and(|b| b.health().writable);
        let current = self.writer();
        if current.is_some_and(qualifies) {
            return;
        }
        // The first in list order that qualifies; an earlier backend not checked yet
        // may still qualify, so no election before it has been checked.
        let next = (0..self.list.len())
            .find(|&i| qualifies(i) || self.list[i].health().healthy.is_none())
            .filter(|&i| qualifies(i));
        if next != current {
            tracing::info!(from = ?current, to = ?next, "mysql writer changed");
            self.writer.send_replace(next);
        }
    }

    /// Backends to try: the writer; before the first checks, every backend in order.
    fn candidates(&self) -> Vec<usize> {
        if let Some(w) = self.writer() {
            return vec![w];
        }
        (0..self.list.len())
            .filter(|&i| self.list[i].health().healthy.is_none())
            .collect()
    }

    pub async fn connect(&self) -> Result<(usize, TcpStream), NoWriter> {
        let mut last: Option<BoxError> = None;
        for round in 0..self.attempts {
            if round > 0 {
                tokio::time::sleep(self.backoff.delay(round)).await;
            }
            for i in self.candidates() {
                let b = &self.list[i];
                if !b.handle.allows() {
                    last = Some(Box::new(quartet_policies::error::BreakerOpen {
                        target: b.endpoint.clone(),
                        retry_after: Duration::ZERO,
                    }));
                    continue;
                }
                let mut svc = b.breaker.clone();
                let r = match svc.ready().await {
                    Ok(s) => s.call(self.connect_timeout).await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(s) => return Ok((i, s)),
                    Err(e) => last = Some(e),
                }
            }
        }
        Err(NoWriter { last })
    }
}

/// Checks one backend forever with sqlx, keeping the connection between checks.
pub async fn health_loop(backends: Arc<MysqlBackends>, index: usize, interval: Duration) {
    use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
    use sqlx::{ConnectOptions, Connection};
    let Some(backend) = backends.list.get(index) else {
        return;
    };
    let url = &backend.url;
    // Plain, as before sqlx had TLS here: a mysql:// backend URL says nothing of TLS
    // (clients' TLS is passed through to the writer untouched).
    let mut opts = MySqlConnectOptions::new()
        .host(&url.host)
        .port(url.port)
        .ssl_mode(sqlx::mysql::MySqlSslMode::Disabled);
    if let Some(u) = &url.user {
        opts = opts.username(u);
    }
    if let Some(p) = &url.password {
        opts = opts.password(p);
    }
    let timeout = backends.connect_timeout;
    let mut conn: Option<MySqlConnection> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if conn.is_none() {
            match tokio::time::timeout(timeout, opts.connect()).await {
                Ok(Ok(c)) => conn = Some(c),
                _ => {
                    backend.set_health(false, false);
                    backends.elect();
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match tokio::time::timeout(timeout, writable(c)).await {
            Ok(Ok(w)) => backend.set_health(true, w),
            _ => {
                backend.set_health(false, false);
                if let Some(c) = conn.take() {
                    let _ = tokio::time::timeout(timeout, c.close()).await;
                }
            }
        }
        backends.elect();
    }
}

/// Whether a backend may take writes: Galera Synced and ready, or not read-only.
async fn writable(c: &mut sqlx::mysql::MySqlConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Row;
    let row = sqlx::query(
        "SELECT CAST(@@global.read_only AS SIGNED), CAST(COALESCE(@@global.wsrep_on, 0) AS SIGNED)",
    )
    .fetch_one(&mut *c)
    .await;
    let (read_only, wsrep_on) = match row {
        Ok(r) => (r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?),
        // MySQL without wsrep variables.
        Err(_) => {
            let r = sqlx::query("SELECT CAST(@@global.read_only AS SIGNED)")
                .fetch_one(&mut *c)
                .await?;
            (r.try_get::<i64, _>(0)?, 0)
        }
    };
    if read_only != 0 {
        return Ok(false);
    }
    if wsrep_on == 0 {
        return Ok(true);
    }
    let rows = sqlx::query(
        "SHOW GLOBAL STATUS WHERE Variable_name IN ('wsrep_local_state', 'wsrep_ready')",
    )
    .fetch_all(&mut *c)
    .await?;
    let mut synced = false;
    let mut ready = false;
    for r in rows {
        let name: String = r.try_get(0)?;
        let value: String = r.try_get(1)?;
        match name.to_ascii_lowercase().as_str() {
            "wsrep_local_state" => synced = value == "4",
            "wsrep_ready" => ready = value.eq_ignore_ascii_case("on"),
            _ => {}
        }
    }
    Ok(synced && ready)
}

/// A MySQL `ERR` packet sent in place of the server's greeting.
pub fn err_packet(code: u16, sqlstate: &str, message: &str) -> Vec<u8> {
    let mut payload = vec![0xff];
    payload.extend_from_slice(&code.to_le_bytes());
    payload.push(b'#');
    payload.extend_from_slice(sqlstate.as_bytes());
    payload.extend_from_slice(message.as_bytes());
    let len = payload.len() as u32;
    let mut out = len.to_le_bytes()[..3].to_vec();
    out.push(0);
    out.extend(payload);
    out
}

/// `ER_SERVER_SHUTDOWN`, what a MySQL server answers when it cannot take a connection.
const ER_SERVER_SHUTDOWN: u16 = 1053;

/// Proxies one client to the writer until either side closes or the writer changes.
/// The listener's fault applies: an abort refuses the client with an `ERR` packet, a
/// delay holds it before connecting, and the toxics act on the server side of the
/// relay ([`relay`], the one code path of connection-level faults).
pub(crate) async fn handle(
    backends: Arc<MysqlBackends>,
    mut client: TcpStream,
    fault: FaultHandle,
    metrics: Arc<Metrics>,
) {
    let _ = client.set_nodelay(true);
    if crate::listener::login_fault(&fault, &metrics).await {
        let packet = err_packet(
            ER_SERVER_SHUTDOWN,
            "08S01",
            "the server is not accepting connections (fault injected)",
        );
        let _ = client.write_all(&packet).await;
        return;
    }
    let (index, server) = match backends.connect().await {
        Ok(x) => x,
        Err(e) => {
            tracing::debug!(error = %e, "no mysql writer for client");
            let packet = err_packet(ER_SERVER_SHUTDOWN, "08S01", &e.to_string());
            let _ = client.write_all(&packet).await;
            return;
        }
    };
    let mut writer = backends.writer.subscribe();
    let moved = async {
        loop {
            if writer.changed().await.is_err() {
                return std::future::pending().await;
            }
            let w = *writer.borrow_and_update();
            if w.is_some() && w != Some(index) {
                return;
            }
        }
    };
    let ended = tokio::select! {
        r = relay(&mut client, server, fault) => Some(r),
        _ = moved => None,
    };
    match ended {
        None => tracing::debug!("writer moved: closing a client of the old writer"),
        Some(Err(e)) => {
            tracing::debug!(error = %e, "mysql session ended");
            // A reset fault reaches the client as a reset, not as a clean close.
            if e.kind() == std::io::ErrorKind::ConnectionReset {
                let _ = client.set_zero_linger();
            }
        }
        Some(Ok(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn err_packet_layout() {
        let p = err_packet(1053, "08S01", "x");
        assert_eq!(&p[..4], &[10, 0, 0, 0]);
        assert_eq!(p[4], 0xff);
        assert_eq!(u16::from_le_bytes([p[5], p[6]]), 1053);
        assert_eq!(&p[7..13], b"#08S01");
        assert_eq!(&p[13..], b"x");
    }

    fn backends(n: usize) -> MysqlBackends {
        use quartet_policies::{metrics::Metrics, spec::BreakerSpec, Target};
        let metrics = Metrics::new();
        let list = (0..n)
            .map(|i| {
                let url = BackendUrl::parse_mysql(&format!("mysql://root@127.0.0.1:{}", 4000 + i))
                    .unwrap();
                let handle = BreakerHandle::new(
                    Target::new("sql", "test"),
                    &format!("b{i}"),
                    BreakerSpec::default(),
                    metrics.clone(),
                );
                MysqlBackend::new(url, handle)
            })
            .collect();
        let spec = ListenerSpec::new("127.0.0.1:0".parse().unwrap(), vec![]);
        MysqlBackends::new(list, &spec)
    }

    #[test]
    fn one_writer_in_list_order_and_sticky() {
        let b = backends(2);
        b.list[1].set_health(true, true);
        b.elect();
        assert_eq!(b.writer(), None, "the first backend is not checked yet");
        b.list[0].set_health(false, false);
        b.elect();
        assert_eq!(b.writer(), Some(1));
        b.list[0].set_health(true, true);
        b.elect();
        assert_eq!(b.writer(), Some(1), "the writer stays while it qualifies");
        b.list[1].set_health(true, false);
        b.elect();
        assert_eq!(b.writer(), Some(0));
        b.list[0].set_health(false, false);
        b.elect();
        assert_eq!(b.writer(), None);
        let states = b.states();
        assert!(states.iter().all(|s| s.role != BackendRole::Primary));
    }

    #[test]
    fn mysql_urls() {
        let u = BackendUrl::parse_mysql("mysql://root@127.0.0.1/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 3306));
        assert!(BackendUrl::parse_mysql("postgres://x").is_err());
    }
}
