//! A listener's backends: where they are, which one is primary (a health task asks each
//! `SELECT pg_is_in_recovery()` with sqlx on an interval), and connecting through the
//! policy pieces: a circuit breaker per backend, retries with jittered backoff, a timeout.
//!
//! When is a retry safe: connecting never sends a client's statement, so every connect
//! failure may be tried again (on the next backend, then after a backoff). Once a server
//! connection is handed to a client nothing is retried: the client gets the error.

use crate::config::Role;
use crate::pg::server::{ConnectError, Login, ServerConn};
use crate::tls::{ServerTls, SslMode, TlsError};
use futures_util::future::BoxFuture;
use quartet_policies::breaker::{BreakerHandle, BreakerState, CircuitBreaker, CircuitBreakerLayer};
use quartet_policies::classify::{classify_policy_error, Class, Classify};
use quartet_policies::fault::FaultHandle;
use quartet_policies::retry::Backoff;
use quartet_policies::BoxError;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

/// A parsed `postgres://user:password@host:port/database` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendUrl {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: Option<String>,
    /// `?sslmode=`: TLS toward this server (see [`crate::tls`]); `disable` when absent.
    pub sslmode: SslMode,
    /// `?sslrootcert=PATH`: the root certificates `verify-ca` and `verify-full` check
    /// the server's chain against.
    pub sslrootcert: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid backend url")]
pub struct UrlError;

impl BackendUrl {
    /// A `postgres://` or `postgresql://` URL (default port 5432).
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        Self::parse_with(url, &["postgres://", "postgresql://"], 5432)
    }

    /// A `mysql://` or `mariadb://` URL (default port 3306).
    pub fn parse_mysql(url: &str) -> Result<Self, UrlError> {
        Self::parse_with(url, &["mysql://", "mariadb://"], 3306)
    }

    fn parse_with(url: &str, schemes: &[&str], default_port: u16) -> Result<Self, UrlError> {
        let rest = schemes
            .iter()
            .find_map(|s| url.strip_prefix(s))
            .ok_or(UrlError)?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let mut sslmode = SslMode::Disable;
        let mut sslrootcert = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("sslmode", v)) => sslmode = SslMode::parse(v).ok_or(UrlError)?,
                Some(("sslrootcert", v)) if !v.is_empty() => sslrootcert = Some(PathBuf::from(v)),
                // Other libpq parameters mean nothing to Quartet's server connections.
                _ => {}
            }
        }
        if sslmode.verifies() && sslrootcert.is_none() {
            return Err(UrlError);
        }
        let (authority, database) = match rest.split_once('/') {
            Some((a, d)) => (a, (!d.is_empty()).then(|| d.to_string())),
            None => (rest, None),
        };
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(u.to_string()), None),
            },
            None => (None, None),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse().map_err(|_| UrlError)?)
            }
            _ => (hostport, default_port),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(UrlError);
        }
        Ok(Self {
            host: host.to_string(),
            port,
            user: user.filter(|u| !u.is_empty()),
            password,
            database,
            sslmode,
            sslrootcert,
        })
    }

    /// `host:port/database`, never the password: used in logs, metrics and the admin API.
    pub fn display(&self) -> String {
        format!(
            "{}:{}/{}",
            self.host,
            self.port,
            self.database.as_deref().unwrap_or("")
        )
    }
}

/// What the health check found a backend to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendRole {
    Primary,
    Replica,
    /// Not checked yet.
    Unknown,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Health {
    pub role: BackendRole,
    /// `None` until the first check.
    pub healthy: Option<bool>,
}

impl Health {
    /// One byte, so that every checkout reads it with a load, not a lock.
    fn pack(self) -> u8 {
        let role = match self.role {
            BackendRole::Primary => 0,
            BackendRole::Replica => 1,
            BackendRole::Unknown => 2,
        };
        let healthy = match self.healthy {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        };
        role | healthy << 2
    }

    fn unpack(v: u8) -> Self {
        Health {
            role: match v & 3 {
                0 => BackendRole::Primary,
                1 => BackendRole::Replica,
                _ => BackendRole::Unknown,
            },
            healthy: match v >> 2 {
                0 => None,
                1 => Some(false),
                _ => Some(true),
            },
        }
    }
}

/// What /readyz and the admin API show of a backend.
#[derive(Clone, Debug, Serialize)]
pub struct BackendState {
    pub endpoint: String,
    pub role: BackendRole,
    pub healthy: Option<bool>,
    pub breaker: BreakerState,
}

pub struct Backend {
    pub url: BackendUrl,
    pub endpoint: String,
    breaker: CircuitBreaker<ConnectService, ConnectClassify>,
    handle: BreakerHandle,
    /// A packed [`Health`].
    health: AtomicU8,
}

impl Backend {
    /// A backend without faults; TLS toward it as its URL's `sslmode` says.
    pub fn new(url: BackendUrl, index: usize, handle: BreakerHandle) -> Result<Self, TlsError> {
        Self::with_faults(url, index, handle, None)
    }

    /// A backend whose server connections carry the connection-level faults (toxics)
    /// of `fault`, and TLS as its URL's `sslmode` says (the root certificate of
    /// `verify-ca`/`verify-full` is read now).
    pub fn with_faults(
        url: BackendUrl,
        index: usize,
        handle: BreakerHandle,
        fault: Option<FaultHandle>,
    ) -> Result<Self, TlsError> {
        let endpoint = url.display();
        let service = ConnectService {
            tls: ServerTls::for_url(&url)?.map(Arc::new),
            url: Arc::new(url.clone()),
            index,
            fault,
        };
        Ok(Self {
            breaker: CircuitBreakerLayer::new(handle.clone(), ConnectClassify).layer(service),
            url,
            endpoint,
            handle,
            health: AtomicU8::new(
                Health {
                    role: BackendRole::Unknown,
                    healthy: None,
                }
                .pack(),
            ),
        })
    }

    pub(crate) fn health(&self) -> Health {
        Health::unpack(self.health.load(Ordering::Acquire))
    }

    pub fn set_health(&self, healthy: bool, role: Option<BackendRole>) {
        let _ = self
            .health
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let mut h = Health::unpack(v);
                h.healthy = Some(healthy);
                if let Some(role) = role {
                    h.role = role;
                }
                Some(h.pack())
            });
    }

    pub fn state(&self) -> BackendState {
        let h = self.health();
        BackendState {
            endpoint: self.endpoint.clone(),
            role: h.role,
            healthy: h.healthy,
            breaker: self.handle.state(),
        }
    }

    pub fn breaker(&self) -> &BreakerHandle {
        &self.handle
    }
}

/// One connect attempt to one backend, as a tower service so the policy breaker can
/// wrap it.
#[derive(Clone)]
pub struct ConnectService {
    url: Arc<BackendUrl>,
    index: usize,
    /// The listener's fault handle: its toxics apply to the server connections.
    fault: Option<FaultHandle>,
    tls: Option<Arc<ServerTls>>,
}

/// What [`ConnectService`] is asked for.
#[derive(Clone, Debug)]
pub struct ConnectRequest {
    pub login: Login,
    pub timeout: Duration,
}

impl Service<ConnectRequest> for ConnectService {
    type Response = ServerConn;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<ServerConn, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ConnectRequest) -> Self::Future {
        let url = self.url.clone();
        let index = self.index;
        let fault = self.fault.clone();
        let tls = self.tls.clone();
        let mut login = req.login;
        if let Some(user) = &url.user {
            login.user = user.clone();
            login.password = url.password.clone();
        }
        Box::pin(async move {
            ServerConn::connect_with(
                &url.host,
                url.port,
                &login,
                req.timeout,
                index,
                fault,
                tls.as_deref(),
            )
            .await
            .map_err(BoxError::from)
        })
    }
}

/// Connect results for the breaker: every failure to connect or log in is `NotSent`
/// (no statement of a client reached the server), so always safe to retry.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnectClassify;

impl Classify<ServerConn> for ConnectClassify {
    fn classify(&self, result: &Result<ServerConn, BoxError>) -> Class {
        match result {
            Ok(_) => Class::Success,
            Err(e) => {
                if let Some(c) = classify_policy_error(e) {
                    return c;
                }
                match e.downcast_ref::<ConnectError>() {
                    // The server answered and refused: the backend itself works.
                    Some(ce) if !ce.is_transient() => Class::Success,
                    _ => Class::NotSent,
                }
            }
        }
    }
}

/// Why no server connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no backend is available")]
    Unavailable {
        #[source]
        last: Option<BoxError>,
    },
    #[error("no primary backend is available")]
    NoPrimary,
    #[error("the server refused the login")]
    Refused(#[source] ConnectError),
}

impl BackendError {
    /// The SQLSTATE a client gets.
    pub fn sqlstate(&self) -> String {
        match self {
            BackendError::Unavailable { last } => {
                let breaker_open = last
                    .as_ref()
                    .is_some_and(|e| e.is::<quartet_policies::error::BreakerOpen>());
                if breaker_open { "08001" } else { "08006" }.to_string()
            }
            BackendError::NoPrimary => "57P03".to_string(),
            BackendError::Refused(ConnectError::Server { fields }) => fields.code.clone(),
            BackendError::Refused(_) => "08001".to_string(),
        }
    }

    /// What a client is told (never a password or internal detail beyond the server's
    /// own message).
    pub fn client_message(&self) -> String {
        match self {
            BackendError::Refused(ConnectError::Server { fields }) => fields.message.clone(),
            BackendError::Refused(ConnectError::Tls { .. }) => {
                "tls with the server failed (its certificate was not accepted, or the handshake broke)"
                    .to_string()
            }
            BackendError::Refused(ConnectError::TlsRefused { .. }) => {
                "the server does not accept tls and the backend url requires it".to_string()
            }
            other => other.to_string(),
        }
    }
}

/// Every backend of one listener.
pub struct Backends {
    pub list: Vec<Backend>,
    /// Set once when the listener collects metrics.
    pub(crate) metrics: std::sync::OnceLock<crate::metrics::ListenerMetrics>,
    pub role: Role,
    pub attempts: u32,
    pub backoff: Backoff,
    pub connect_timeout: Duration,
}

impl Backends {
    /// Backends in the order to try for this listener's role.
    fn candidates(&self) -> Result<Vec<usize>, BackendError> {
        let healths: Vec<Health> = self.list.iter().map(|b| b.health()).collect();
        let mut out: Vec<(u8, usize)> = Vec::new();
        let mut replicas_only = true;
        for (i, h) in healths.iter().enumerate() {
            let rank = match (self.role, h.healthy, h.role) {
                (Role::Primary, Some(true), BackendRole::Primary) => 0,
                (Role::Primary, Some(true), BackendRole::Replica) => continue,
                (Role::Replica, Some(true), BackendRole::Replica) => 0,
                (Role::Replica, Some(true), _) => 1,
                (Role::Any, Some(true), _) => 0,
                (_, None, _) | (_, Some(true), BackendRole::Unknown) => 2,
                (_, Some(false), _) => 3,
            };
            if !(h.healthy == Some(true) && h.role == BackendRole::Replica) {
                replicas_only = false;
            }
            out.push((rank, i));
        }
        if out.is_empty() && replicas_only && !self.list.is_empty() {
            return Err(BackendError::NoPrimary);
        }
        out.sort();
        Ok(out.into_iter().map(|(_, i)| i).collect())
    }

    /// A new server connection: each candidate backend in turn, skipping those whose
    /// breaker refuses, then again after a backoff, `attempts` rounds at most.
    pub async fn connect(&self, login: &Login) -> Result<ServerConn, BackendError> {
        let req = ConnectRequest {
            login: login.clone(),
            timeout: self.connect_timeout,
        };
        let mut last: Option<BoxError> = None;
        for round in 0..self.attempts {
            if round > 0 {
                tokio::time::sleep(self.backoff.delay(round)).await;
            }
            for i in self.candidates()? {
                let backend = &self.list[i];
                if !backend.handle.allows() {
                    last = Some(Box::new(quartet_policies::error::BreakerOpen {
                        target: backend.endpoint.clone(),
                        retry_after: Duration::ZERO,
                    }));
                    continue;
                }
                let mut svc = backend.breaker.clone();
                let result = match svc.ready().await {
                    Ok(s) => s.call(req.clone()).await,
                    Err(e) => Err(e),
                };
                if let Some(m) = self.metrics.get() {
                    m.connect(result.is_ok());
                }
                match result {
                    Ok(conn) => return Ok(conn),
                    Err(e) => match e.downcast::<ConnectError>() {
                        Ok(ce) if !ce.is_transient() => return Err(BackendError::Refused(*ce)),
                        Ok(ce) => {
                            tracing::debug!(backend = %backend.endpoint, error = %ce, "connect failed");
                            last = Some(ce);
                        }
                        Err(e) => last = Some(e),
                    },
                }
            }
        }
        Err(BackendError::Unavailable { last })
    }

    /// Whether a connection to backend `index` may still serve this listener's clients:
    /// not known to be down, and not known to be a replica when the primary is wanted.
    pub fn usable(&self, index: usize) -> bool {
        let Some(b) = self.list.get(index) else {
            return false;
        };
        let h = b.health();
        h.healthy != Some(false) && !(self.role == Role::Primary && h.role == BackendRole::Replica)
    }

    pub fn states(&self) -> Vec<BackendState> {
        self.list.iter().map(|b| b.state()).collect()
    }

    /// Where to look users up: the connect order, or every backend in list order.
    pub fn lookup_order(&self) -> Vec<usize> {
        self.candidates()
            .unwrap_or_else(|_| (0..self.list.len()).collect())
    }
}

/// sqlx options for side-channel work on a backend (health, auth_query): TLS as the
/// proxy's own server connections do it, from the URL's `sslmode` and `sslrootcert`
/// (set here, never from `PGSSLMODE` and the like in the environment).
pub fn pg_options(url: &BackendUrl, application_name: &str) -> sqlx::postgres::PgConnectOptions {
    use sqlx::postgres::PgSslMode;
    let ssl_mode = match url.sslmode {
        SslMode::Disable => PgSslMode::Disable,
        SslMode::Allow => PgSslMode::Allow,
        SslMode::Prefer => PgSslMode::Prefer,
        SslMode::Require => PgSslMode::Require,
        SslMode::VerifyCa => PgSslMode::VerifyCa,
        SslMode::VerifyFull => PgSslMode::VerifyFull,
    };
    let mut opts = sqlx::postgres::PgConnectOptions::new()
        .host(&url.host)
        .port(url.port)
        .application_name(application_name)
        .ssl_mode(ssl_mode);
    if let Some(root) = &url.sslrootcert {
        opts = opts.ssl_root_cert(root);
    }
    if let Some(u) = &url.user {
        opts = opts.username(u);
    }
    if let Some(p) = &url.password {
        opts = opts.password(p);
    }
    if let Some(d) = &url.database {
        opts = opts.database(d);
    }
    opts
}

/// Checks one backend forever: `SELECT pg_is_in_recovery()` every `interval`, keeping the
/// sqlx connection between checks.
pub async fn health_loop(backends: Arc<Backends>, index: usize, interval: Duration) {
    use sqlx::postgres::{PgConnectOptions, PgConnection};
    use sqlx::{ConnectOptions, Connection};
    let Some(backend) = backends.list.get(index) else {
        return;
    };
    let opts: PgConnectOptions = pg_options(&backend.url, "quartet-health");
    let timeout = backends.connect_timeout;
    let mut conn: Option<PgConnection> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if conn.is_none() {
            match tokio::time::timeout(timeout, opts.connect()).await {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e)) => {
                    tracing::debug!(backend = %backend.endpoint, error = %e, "health check cannot connect");
                    backend.set_health(false, None);
                    continue;
                }
                Err(_) => {
                    backend.set_health(false, None);
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let check = sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(&mut *c);
        match tokio::time::timeout(timeout, check).await {
            Ok(Ok(in_recovery)) => {
                let role = if in_recovery {
                    BackendRole::Replica
                } else {
                    BackendRole::Primary
                };
                backend.set_health(true, Some(role));
            }
            _ => {
                backend.set_health(false, None);
                if let Some(c) = conn.take() {
                    let _ = tokio::time::timeout(timeout, c.close()).await;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `n` unchecked backends that nothing connects to, for tests of what reads their
    /// health.
    pub(crate) fn backends(n: usize, role: Role) -> Backends {
        use quartet_policies::{metrics::Metrics, spec::BreakerSpec, Target};
        let metrics = Metrics::new();
        let list = (0..n)
            .map(|i| {
                let url =
                    BackendUrl::parse(&format!("postgres://u@127.0.0.1:{}/db", 4000 + i)).unwrap();
                let handle = BreakerHandle::new(
                    Target::new("sql", "test"),
                    &url.display(),
                    BreakerSpec::default(),
                    metrics.clone(),
                );
                Backend::new(url, i, handle).unwrap()
            })
            .collect();
        Backends {
            list,
            metrics: Default::default(),
            role,
            attempts: 1,
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2)),
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn candidates_follow_role_and_health() {
        let b = backends(3, Role::Primary);
        assert_eq!(
            b.candidates().unwrap(),
            vec![0, 1, 2],
            "unchecked: list order"
        );
        b.list[0].set_health(true, Some(BackendRole::Replica));
        b.list[1].set_health(false, None);
        b.list[2].set_health(true, Some(BackendRole::Primary));
        assert_eq!(
            b.candidates().unwrap(),
            vec![2, 1],
            "never a replica for writes"
        );
        b.list[2].set_health(true, Some(BackendRole::Replica));
        b.list[1].set_health(true, Some(BackendRole::Replica));
        assert!(matches!(b.candidates(), Err(BackendError::NoPrimary)));
        assert_eq!(BackendError::NoPrimary.sqlstate(), "57P03");

        let b = backends(2, Role::Replica);
        b.list[0].set_health(true, Some(BackendRole::Primary));
        b.list[1].set_health(true, Some(BackendRole::Replica));
        assert_eq!(
            b.candidates().unwrap(),
            vec![1, 0],
            "replicas first, then the primary"
        );
    }

    #[test]
    fn connect_results_are_classified() {
        let c = ConnectClassify;
        let refused: BoxError = Box::new(ConnectError::Io {
            addr: "x".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        });
        assert_eq!(c.classify(&Err(refused)), Class::NotSent);
        let starting: BoxError = Box::new(ConnectError::Server {
            fields: crate::pg::codec::ErrorFields {
                code: "57P03".into(),
                ..Default::default()
            },
        });
        assert_eq!(c.classify(&Err(starting)), Class::NotSent);
        let bad_password: BoxError = Box::new(ConnectError::Server {
            fields: crate::pg::codec::ErrorFields {
                code: "28P01".into(),
                ..Default::default()
            },
        });
        assert_eq!(
            c.classify(&Err(bad_password)),
            Class::Success,
            "the backend answered"
        );
        let open: BoxError = Box::new(quartet_policies::error::BreakerOpen {
            target: "x".into(),
            retry_after: Duration::ZERO,
        });
        assert_eq!(c.classify(&Err(open)), Class::Local);
    }

    #[test]
    fn urls_parse() {
        let u = BackendUrl::parse("postgres://postgres@127.0.0.1:5432/test").unwrap();
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 5432);
        assert_eq!(u.user.as_deref(), Some("postgres"));
        assert_eq!(u.database.as_deref(), Some("test"));
        let u = BackendUrl::parse("postgresql://a:b%c@db/x?sslmode=disable").unwrap();
        assert_eq!(u.password.as_deref(), Some("b%c"));
        assert_eq!(u.port, 5432);
        assert_eq!(u.display(), "db:5432/x");
        assert!(BackendUrl::parse("mysql://x").is_err());
        assert!(BackendUrl::parse("postgres://h:notaport/x").is_err());
        assert!(BackendUrl::parse("postgres:///x").is_err());
    }
}
