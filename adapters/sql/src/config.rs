//! `[[sql.listeners]]`: serde types with PgBouncer-like defaults, unknown keys rejected,
//! durations written like `"15s"`, and `validate()` naming the offending key.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// `[sql]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlSpec {
    /// Where the listeners' clients are served (see [`SqlRuntime`]).
    pub runtime: SqlRuntime,
    pub listeners: Vec<ListenerSpec>,
}

/// `[sql] runtime`: where each listener runs its accept loop, sessions and pools.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqlRuntime {
    /// A thread of its own per listener, with a single-threaded tokio runtime, as
    /// PgBouncer is one process with one thread: a session's client and server sockets,
    /// the pool and the timers stay on one thread, with no work stealing and no
    /// wake-ups of another worker (measured in bench/README.md, SQL, fourth round).
    #[default]
    OwnThread,
    /// The gateway's shared multi-threaded runtime: the sessions of one listener spread
    /// over every core, at the price of the wake-ups between its workers.
    Shared,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Postgres,
    Mysql,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// A server connection belongs to a client for its whole session.
    Session,
    /// A server connection is lent for one transaction and returned when the server
    /// reports the transaction idle (`ReadyForQuery` status `I`).
    Transaction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthMethod {
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "md5")]
    Md5,
    /// No password: allowed only on a loopback `listen` address.
    #[serde(rename = "trust")]
    Trust,
}

/// Which backends a listener's clients may be sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The primary only (reads and writes).
    Primary,
    /// Replicas, the primary when no replica is healthy (read-only work).
    Replica,
    /// Any healthy backend.
    Any,
}

/// A user clients log in to Quartet as. `password` is plaintext, a PostgreSQL
/// `SCRAM-SHA-256$...` verifier (scram only) or an `md5...` hash (md5 only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub name: String,
    pub password: String,
}

/// `tls = { cert, key }` of a listener: PEM files of the certificate chain and its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// One `[[sql.listeners]]` entry.
///
/// Server connections log in with the user and password of the backend URL (the
/// client's own user when the URL names none) to the database the client asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// Names the listener in the admin API, its breakers and faults (target `sql:NAME`);
    /// absent: the bound address names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub listen: SocketAddr,
    #[serde(default = "d_protocol")]
    pub protocol: Protocol,
    #[serde(default = "d_pool_mode")]
    pub pool_mode: PoolMode,
    /// Server connections per (database, user) pool.
    #[serde(default = "d_pool_size")]
    pub pool_size: usize,
    /// Idle server connections kept open per pool.
    #[serde(default)]
    pub min_idle: usize,
    /// `postgres://user:password@host:port/database` URLs; the order is the preference.
    pub backends: Vec<String>,
    #[serde(default = "d_auth")]
    pub auth: AuthMethod,
    #[serde(default)]
    pub users: Vec<UserSpec>,
    /// Looks up users not in `users` on the backend, like PgBouncer's `auth_query`: a
    /// query with one parameter (the user name) returning the name and the stored
    /// password (a SCRAM verifier or an md5 hash), run as the backend URL's user; e.g.
    /// `SELECT usename, passwd FROM pg_shadow WHERE usename = $1`.
    #[serde(default)]
    pub auth_query: Option<String>,
    #[serde(default = "d_role")]
    pub role: Role,
    /// Client connections at once; more are refused with SQLSTATE 53300.
    #[serde(default = "d_max_clients")]
    pub max_clients: usize,
    /// The largest message a client may send, in bytes.
    #[serde(default = "d_max_message_size")]
    pub max_message_size: usize,
    /// Sent on a server connection before it goes back to the pool in session mode;
    /// empty to send nothing.
    #[serde(default = "d_reset_query")]
    pub reset_query: String,
    /// Connecting and logging in to a server.
    #[serde(default = "d_connect_timeout", with = "quartet_policies::duration")]
    pub connect_timeout: Duration,
    /// Attempts to connect over all backends before a client gets an error.
    #[serde(default = "d_connect_attempts")]
    pub connect_attempts: u32,
    /// Base of the jittered exponential backoff between connect attempts.
    #[serde(default = "d_connect_backoff", with = "quartet_policies::duration")]
    pub connect_backoff: Duration,
    /// A query running longer is cancelled (absent: no limit).
    #[serde(default, with = "quartet_policies::duration")]
    pub query_timeout: Option<Duration>,
    /// How long a client waits for a server connection from a full pool.
    #[serde(default = "d_query_wait_timeout", with = "quartet_policies::duration")]
    pub query_wait_timeout: Duration,
    /// A client idle inside a transaction longer than this is disconnected.
    #[serde(default, with = "quartet_policies::duration")]
    pub idle_transaction_timeout: Option<Duration>,
    /// A server connection older than this is closed when it is next released
    /// (0: each server connection serves one client or transaction, then closes).
    #[serde(default = "d_server_lifetime", with = "quartet_policies::duration")]
    pub server_lifetime: Duration,
    /// A server connection idle longer than this is closed.
    #[serde(default = "d_server_idle_timeout", with = "quartet_policies::duration")]
    pub server_idle_timeout: Duration,
    /// Startup and authentication of a client must end within this.
    #[serde(
        default = "d_client_login_timeout",
        with = "quartet_policies::duration"
    )]
    pub client_login_timeout: Duration,
    /// How often each backend's role and health are checked.
    #[serde(default = "d_health_interval", with = "quartet_policies::duration")]
    pub health_interval: Duration,
    /// A plain-TCP client with no server attached (transaction mode, between
    /// transactions) and quiet this long is parked: its task and its socket's place in
    /// tokio are given up until it sends again (see `park`); a new client that has sent
    /// nothing since its login, after 10 ms (or this, if shorter). `"0s"`: never park.
    #[serde(default = "d_client_park_after", with = "quartet_policies::duration")]
    pub client_park_after: Duration,
    /// The named policy whose breaker applies to this listener's backends.
    #[serde(default)]
    pub policy: Option<String>,
    /// TLS for clients: `SSLRequest` is answered `S` and the handshake follows (absent:
    /// `N`). PostgreSQL listeners only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

fn d_protocol() -> Protocol {
    Protocol::Postgres
}
fn d_pool_mode() -> PoolMode {
    PoolMode::Session
}
fn d_pool_size() -> usize {
    20
}
fn d_auth() -> AuthMethod {
    AuthMethod::ScramSha256
}
fn d_role() -> Role {
    Role::Primary
}
fn d_max_clients() -> usize {
    100
}
fn d_max_message_size() -> usize {
    64 * 1024 * 1024
}
fn d_reset_query() -> String {
    "DISCARD ALL".into()
}
fn d_connect_timeout() -> Duration {
    Duration::from_secs(15)
}
fn d_connect_attempts() -> u32 {
    3
}
fn d_connect_backoff() -> Duration {
    Duration::from_millis(25)
}
fn d_query_wait_timeout() -> Duration {
    Duration::from_secs(120)
}
fn d_server_lifetime() -> Duration {
    Duration::from_secs(3600)
}
fn d_server_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn d_client_login_timeout() -> Duration {
    Duration::from_secs(60)
}
fn d_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn d_client_park_after() -> Duration {
    Duration::from_secs(1)
}

impl ListenerSpec {
    /// A listener with every default, for code and tests.
    pub fn new(listen: SocketAddr, backends: Vec<String>) -> Self {
        Self {
            name: None,
            listen,
            protocol: d_protocol(),
            pool_mode: d_pool_mode(),
            pool_size: d_pool_size(),
            min_idle: 0,
            backends,
            auth: d_auth(),
            users: Vec::new(),
            auth_query: None,
            role: d_role(),
            max_clients: d_max_clients(),
            max_message_size: d_max_message_size(),
            reset_query: d_reset_query(),
            connect_timeout: d_connect_timeout(),
            connect_attempts: d_connect_attempts(),
            connect_backoff: d_connect_backoff(),
            query_timeout: None,
            query_wait_timeout: d_query_wait_timeout(),
            idle_transaction_timeout: None,
            server_lifetime: d_server_lifetime(),
            server_idle_timeout: d_server_idle_timeout(),
            client_login_timeout: d_client_login_timeout(),
            health_interval: d_health_interval(),
            client_park_after: d_client_park_after(),
            policy: None,
            tls: None,
        }
    }

    /// A MySQL listener proxies whole connections to the writer: clients log in to the
    /// backend itself, there is no pooling and no replica routing.
    fn validate_mysql(&self) -> Result<(), ConfigError> {
        let err = |key: &'static str, message: &'static str| Err(ConfigError { key, message });
        for b in &self.backends {
            if crate::backend::BackendUrl::parse_mysql(b).is_err() {
                return err("backends", "each must be a mysql://user@host:port url");
            }
        }
        if self.pool_mode != PoolMode::Session {
            return err("pool_mode", "mysql listeners support \"session\" only");
        }
        if self.tls.is_some() {
            return err(
                "tls",
                "mysql listeners pass TLS through to the backend; leave tls out",
            );
        }
        if !self.users.is_empty() || self.auth_query.is_some() {
            return err(
                "users",
                "mysql clients log in to the backend itself; leave users out",
            );
        }
        if self.role != Role::Primary {
            return err(
                "role",
                "mysql listeners route to the writer only (\"primary\")",
            );
        }
        if self.max_clients == 0 {
            return err("max_clients", "must be at least 1");
        }
        if self.connect_timeout.is_zero() {
            return err("connect_timeout", "must be greater than zero");
        }
        if self.connect_attempts == 0 {
            return err("connect_attempts", "must be at least 1");
        }
        if self.health_interval.is_zero() {
            return err("health_interval", "must be greater than zero");
        }
        Ok(())
    }

    /// Checks what serde cannot. Keys are named relative to the listener table.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &'static str, message: &'static str| Err(ConfigError { key, message });
        if self.backends.is_empty() {
            return err("backends", "must name at least one backend");
        }
        if let Some(name) = &self.name {
            let ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
            if !ok {
                return err("name", "must be letters, digits, '_', '-' or '.'");
            }
        }
        if self.protocol == Protocol::Mysql {
            return self.validate_mysql();
        }
        for b in &self.backends {
            if crate::backend::BackendUrl::parse(b).is_err() {
                return err(
                    "backends",
                    "each must be a postgres://user@host:port/database url (sslmode one of disable, allow, prefer, require, verify-ca, verify-full; verify-ca and verify-full need sslrootcert)",
                );
            }
        }
        if self.pool_size == 0 {
            return err("pool_size", "must be at least 1");
        }
        if self.min_idle > self.pool_size {
            return err("min_idle", "must not exceed pool_size");
        }
        if self.max_clients == 0 {
            return err("max_clients", "must be at least 1");
        }
        if self.max_message_size < 1024 {
            return err("max_message_size", "must be at least 1024 bytes");
        }
        if self.auth == AuthMethod::Trust && !self.listen.ip().is_loopback() {
            return err(
                "auth",
                "\"trust\" is allowed only on a loopback listen address",
            );
        }
        if self
            .auth_query
            .as_deref()
            .is_some_and(|q| !q.contains("$1"))
        {
            return err("auth_query", "must take the user name as $1");
        }
        if self.auth != AuthMethod::Trust && self.users.is_empty() && self.auth_query.is_none() {
            return err(
                "users",
                "must name at least one user unless auth is \"trust\" or auth_query is set",
            );
        }
        for u in &self.users {
            if u.name.is_empty() {
                return err("users.name", "must not be empty");
            }
            let md5 = u.password.starts_with("md5") && u.password.len() == 35;
            let scram = u.password.starts_with("SCRAM-SHA-256$");
            if scram && crate::pg::auth::ScramSecret::parse(&u.password).is_none() {
                return err("users.password", "is not a valid SCRAM-SHA-256 verifier");
            }
            if (md5 && self.auth == AuthMethod::ScramSha256)
                || (scram && self.auth == AuthMethod::Md5)
            {
                return err("users.password", "a stored hash must match the auth method");
            }
        }
        if self.connect_timeout.is_zero() {
            return err("connect_timeout", "must be greater than zero");
        }
        if self.connect_attempts == 0 {
            return err("connect_attempts", "must be at least 1");
        }
        if self.query_timeout.is_some_and(|d| d.is_zero()) {
            return err(
                "query_timeout",
                "must be greater than zero (omit it for no limit)",
            );
        }
        if self.idle_transaction_timeout.is_some_and(|d| d.is_zero()) {
            return err(
                "idle_transaction_timeout",
                "must be greater than zero (omit it for no limit)",
            );
        }
        if self.query_wait_timeout.is_zero() {
            return err("query_wait_timeout", "must be greater than zero");
        }
        if self.client_login_timeout.is_zero() {
            return err("client_login_timeout", "must be greater than zero");
        }
        if self.health_interval.is_zero() {
            return err("health_interval", "must be greater than zero");
        }
        Ok(())
    }
}

/// A listener's config problem, naming its key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: &'static str,
    pub message: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[[listeners]]
listen = "127.0.0.1:6432"
protocol = "postgres"
pool_mode = "transaction"
pool_size = 20
backends = ["postgres://postgres@127.0.0.1:5432/test"]
auth = "scram-sha-256"
users = [{ name = "app", password = "secret" }]
query_timeout = "30s"
"#;

    #[test]
    fn design_example_parses() {
        let spec: SqlSpec = toml::from_str(EXAMPLE).unwrap();
        let l = &spec.listeners[0];
        assert_eq!(l.pool_mode, PoolMode::Transaction);
        assert_eq!(l.query_timeout, Some(Duration::from_secs(30)));
        assert_eq!(l.server_lifetime, Duration::from_secs(3600));
        l.validate().unwrap();
    }

    #[test]
    fn unknown_key_rejected() {
        let bad = EXAMPLE.replace("pool_size = 20", "pool_sise = 20");
        let e = toml::from_str::<SqlSpec>(&bad).unwrap_err();
        assert!(e.to_string().contains("pool_sise"), "{e}");
    }

    #[test]
    fn validate_names_key() {
        let mut l = ListenerSpec::new("0.0.0.0:6432".parse().unwrap(), vec![]);
        assert_eq!(l.validate().unwrap_err().key, "backends");
        l.backends = vec!["postgres://postgres@127.0.0.1:5432/test".into()];
        l.auth = AuthMethod::Trust;
        assert_eq!(l.validate().unwrap_err().key, "auth");
        l.listen = "127.0.0.1:6432".parse().unwrap();
        l.validate().unwrap();
        l.backends = vec!["mysql://x".into()];
        assert_eq!(l.validate().unwrap_err().key, "backends");
    }
}
