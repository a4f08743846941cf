//! Quartet's SQL channel: a pooling, failover-aware PostgreSQL proxy, and a writer-following
//! MariaDB/MySQL proxy.
//!
//! - [`pg::codec`]: the wire protocol's frames, found and split in place;
//! - [`pg::auth`]: SCRAM-SHA-256 (both sides) and md5;
//! - [`pg::server`]: Quartet's own connections to a server;
//! - [`pool`]: pools per (database, user), session and transaction modes;
//! - [`backend`]: backends, their health and role (`pg_is_in_recovery()`), connecting
//!   through a circuit breaker per backend with retries;
//! - [`listener`]: one `[[sql.listeners]]` entry bound and served ([`PgListener`], [`serve`]);
//! - [`mysql`]: MariaDB/MySQL connections proxied to the current writer;
//! - `park`: idle clients kept outside tokio (one epoll set per listener);
//! - [`tls`]: TLS toward clients (`tls = { cert, key }`) and servers (`sslmode`);
//! - [`metrics`]: the channel's Prometheus metrics;
//! - [`config`]: the config types and their validation.

pub mod backend;
pub mod config;
pub mod listener;
pub mod metrics;
pub mod mysql;
mod park;
pub mod pg;
pub mod pool;
pub mod tls;

pub use config::{
    AuthMethod, ListenerSpec, PoolMode, Role, SqlRuntime, SqlSpec, TlsSpec, UserSpec,
};
pub use listener::{
    serve, ListenerState, MysqlListener, PgListener, SqlContext, SqlError, SqlHandle, SqlListener,
};
pub use metrics::SqlMetrics;
