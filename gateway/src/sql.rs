//! The SQL channel as the gateway serves it: `[[sql.listeners]]` in the config (the types
//! and their own checks are `quartet-sql`'s), the listeners bound at start next to the
//! public and admin listeners, their breakers and faults in the admin registries, the
//! `sql` channel of `/readyz`, and `GET /admin/sql`.
//!
//! # Lifetime
//!
//! SQL listeners hold client sessions and server pools, so they are bound once, at start,
//! and live as long as the process: a SIGHUP reload does not rebind them (it logs a
//! warning when `[sql]` changed; restart to apply). They sit in [`crate::stack::Shared`],
//! and every build of the config registers their breakers (target `sql:NAME`, one per
//! backend endpoint) and their fault handle (target `sql:NAME`) in its registries, so the
//! admin API finds them before and after a reload. A listener without `name` is named by
//! its bound address (`sql:127.0.0.1:6432`).
//!
//! # Faults
//!
//! `PUT /admin/faults/sql:NAME` sets the listener's fault: the request-level `abort`
//! refuses each new client login with SQLSTATE 57P03 (`abort_status` is not used), and
//! `delay` holds each new login; sessions already open are not touched by those. The
//! connection-level toxics (`connection`: latency, bandwidth, reset, stall, close_after)
//! act on the listener's server connections once they are logged in, pooled ones included
//! (PostgreSQL listeners; MySQL listeners take the abort/delay and toxics not yet).
//!
//! # Shutdown
//!
//! On SIGTERM the listeners stop accepting at once; open sessions get the grace period to
//! end by themselves, then are closed.
//!
//! # Environment overrides
//!
//! `QUARTET_SQL_LISTENER_<INDEX>_BACKENDS` (INDEX counts `[[sql.listeners]]` from 0)
//! replaces that listener's `backends` with a comma-separated list of URLs; the override
//! is logged with passwords redacted.

use crate::admin::AdminState;
use crate::config::{redact_url, Config, Invalid, KeyPath, Override, DEFAULT_POLICY};
use crate::stack::Shared;
use axum::extract::State;
use axum::Json;
use quartet_policies::breaker::{BreakerRegistry, BreakerState};
use quartet_policies::fault::FaultRegistry;
use quartet_policies::spec::PolicySpec;
use quartet_sql::backend::BackendRole;
use quartet_sql::config::Protocol;
use quartet_sql::{ListenerSpec, ListenerState, Role, SqlContext, SqlError, SqlHandle, SqlMetrics};
use quartet_sql::{SqlListener, SqlSpec};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};

/// The environment variable that overrides `sql.listeners[INDEX].backends`.
pub fn backends_env_var(index: usize) -> String {
    format!("QUARTET_SQL_LISTENER_{index}_BACKENDS")
}

/// Replaces each listener's backends with the ones the environment gives (empty values
/// ignored); the overrides are returned with passwords redacted.
pub fn apply_env(sql: &mut SqlSpec, env: &impl Fn(&str) -> Option<String>) -> Vec<Override> {
    let mut applied = Vec::new();
    for (i, listener) in sql.listeners.iter_mut().enumerate() {
        let var = backends_env_var(i);
        let Some(value) = env(&var) else { continue };
        let backends: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        if backends.is_empty() {
            continue;
        }
        applied.push(Override {
            var,
            key: listener_path(i).key("backends").to_string(),
            value: backends
                .iter()
                .map(|b| redact_url(b))
                .collect::<Vec<_>>()
                .join(","),
        });
        listener.backends = backends;
    }
    applied
}

fn listener_path(index: usize) -> KeyPath {
    KeyPath::root("sql").key("listeners").index(index)
}

/// Checks each listener (with `quartet-sql`'s own validation), that its policy exists, and
/// that names and fixed listen addresses are not used twice.
pub fn validate(sql: &SqlSpec, policies: &BTreeMap<String, PolicySpec>) -> Result<(), Invalid> {
    for (i, l) in sql.listeners.iter().enumerate() {
        let path = listener_path(i);
        l.validate().map_err(|e| Invalid {
            path: path.clone().dotted(e.key),
            message: e.message.to_string(),
        })?;
        if let Some(tls) = &l.tls {
            for (key, file) in [("cert", &tls.cert), ("key", &tls.key)] {
                if !file.is_file() {
                    return Err(Invalid {
                        path: path.clone().key("tls").key(key),
                        message: format!("no such file: {}", file.display()),
                    });
                }
            }
        }
        if let Some(p) = &l.policy {
            if !policies.contains_key(p) {
                return Err(Invalid {
                    path: path.key("policy"),
                    message: format!("no policy named {p:?}"),
                });
            }
        }
        let earlier = &sql.listeners[..i];
        if let Some(name) = &l.name {
            if let Some(j) = earlier.iter().position(|o| o.name.as_ref() == Some(name)) {
                return Err(Invalid {
                    path: path.key("name"),
                    message: format!("sql.listeners[{j}] has the same name"),
                });
            }
        }
        if l.listen.port() != 0 {
            if let Some(j) = earlier.iter().position(|o| o.listen == l.listen) {
                return Err(Invalid {
                    path: path.key("listen"),
                    message: format!("sql.listeners[{j}] listens on the same address"),
                });
            }
        }
    }
    Ok(())
}

/// A listener that could not be bound at start.
#[derive(Debug, thiserror::Error)]
#[error("sql.listeners[{index}]: cannot start the listener")]
pub struct SqlBindError {
    pub index: usize,
    #[source]
    pub source: SqlError,
}

impl SqlBindError {
    /// Whether the config is to blame (as opposed to the address being taken).
    pub fn is_config(&self) -> bool {
        matches!(self.source, SqlError::Config(_) | SqlError::Tls(_))
    }
}

/// One running listener, as the admin API and `/readyz` see it.
#[derive(Clone)]
pub struct Entry {
    /// The config's `name`, else the bound address.
    pub name: String,
    pub spec: ListenerSpec,
    pub handle: SqlHandle,
}

/// The SQL listeners of this process (bound once, kept across reloads) and the SQL
/// metrics (registered once in the one registry).
#[derive(Clone, Default)]
pub struct SqlListeners {
    entries: Arc<RwLock<Vec<Entry>>>,
    metrics: Arc<OnceLock<Option<Arc<SqlMetrics>>>>,
}

impl SqlListeners {
    pub fn entries(&self) -> Vec<Entry> {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn push(&self, entry: Entry) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry);
    }

    /// The SQL metrics, registered in `registry` on first use.
    fn metrics(&self, registry: &prometheus::Registry) -> Option<Arc<SqlMetrics>> {
        self.metrics
            .get_or_init(|| match SqlMetrics::register(registry) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "sql metrics not registered");
                    None
                }
            })
            .clone()
    }
}

/// Binds every `[[sql.listeners]]` entry (port 0 picks a port), logs each real address and
/// records the listeners in `shared`; they serve once [`SqlListener::run_with_grace`] runs.
pub async fn bind(config: &Config, shared: &Shared) -> Result<Vec<SqlListener>, SqlBindError> {
    let mut bound = Vec::new();
    for (index, spec) in config.sql.listeners.iter().enumerate() {
        let policy = config.policy(spec.policy.as_deref().unwrap_or(DEFAULT_POLICY));
        let ctx = SqlContext {
            breaker: policy.breaker.clone(),
            metrics: shared.metrics.clone(),
            // Registered by each build of the config instead (see `register`).
            registry: None,
            sql_metrics: shared.sql.metrics(&shared.metrics.registry),
            initial_fault: policy.fault.clone(),
        };
        let listener = SqlListener::bind(spec.clone(), ctx)
            .await
            .map_err(|source| SqlBindError { index, source })?;
        let addr = listener.local_addr();
        let name = spec.name.clone().unwrap_or_else(|| addr.to_string());
        tracing::info!("quartet sql listening name={name} addr={addr}");
        shared.sql.push(Entry {
            name,
            spec: spec.clone(),
            handle: listener.handle(),
        });
        bound.push(listener);
    }
    Ok(bound)
}

/// Registers the listeners' breakers and fault handles in one build's registries.
pub fn register(shared: &Shared, breakers: &BreakerRegistry, faults: &FaultRegistry) {
    for entry in shared.sql.entries() {
        for b in entry.handle.breakers() {
            breakers.register(b);
        }
        faults.register(entry.handle.fault());
    }
}

/// Why a listener cannot serve its clients now, if it cannot.
pub fn not_ready_reason(spec: &ListenerSpec, state: &ListenerState) -> Option<String> {
    let usable = |healthy: Option<bool>, breaker: BreakerState| {
        healthy != Some(false)
            && matches!(
                breaker,
                BreakerState::Closed | BreakerState::HalfOpen | BreakerState::Disabled
            )
    };
    let primary_needed = spec.role == Role::Primary || spec.protocol == Protocol::Mysql;
    if primary_needed {
        let ok = state
            .backends
            .iter()
            .any(|b| b.role != BackendRole::Replica && usable(b.healthy, b.breaker));
        return (!ok).then(|| {
            "no usable primary: every backend is down, a replica, or its breaker is open"
                .to_string()
        });
    }
    (!state.ready())
        .then(|| "no usable backend: every backend is down or its breaker is open".to_string())
}

fn listener_json(entry: &Entry, include_stats: bool) -> (bool, Value) {
    let state = entry.handle.state();
    let reason = not_ready_reason(&entry.spec, &state);
    let ready = reason.is_none();
    let mut v = json!({
        "target": entry.handle.target().to_string(),
        "listen": state.listen,
        "protocol": entry.spec.protocol,
        "pool_mode": entry.spec.pool_mode,
        "role": entry.spec.role,
        "ready": ready,
        "clients": state.clients,
        "clients_parked": state.clients_parked,
        "backends": state.backends,
        "pools": state.pools,
    });
    if let Some(r) = reason {
        v["reason"] = json!(r);
    }
    if include_stats {
        v["stats"] = json!(state.stats);
    }
    (ready, v)
}

/// The `sql` channel of `/readyz`: `None` when no listener is configured.
pub fn readiness(listeners: &SqlListeners) -> Option<(bool, Value)> {
    let entries = listeners.entries();
    if entries.is_empty() {
        return None;
    }
    let mut all_ready = true;
    let mut listeners = serde_json::Map::new();
    for entry in &entries {
        let (ready, v) = listener_json(entry, false);
        all_ready &= ready;
        listeners.insert(entry.name.clone(), v);
    }
    Some((
        all_ready,
        json!({
            "state": if all_ready { "ready" } else { "not_ready" },
            "listeners": listeners,
        }),
    ))
}

/// `GET /admin/sql`: every listener's state (backends, pools, clients, counters).
pub async fn admin_sql(State(state): State<AdminState>) -> Json<Value> {
    let mut listeners = serde_json::Map::new();
    for entry in state.shared.sql.entries() {
        listeners.insert(entry.name.clone(), listener_json(&entry, true).1);
    }
    Json(json!({ "listeners": listeners }))
}

/// Warns on a reload that changes `[sql]`: listeners are not rebound.
pub fn warn_changes(old: &Config, new: &Config) {
    if old.sql != new.sql {
        tracing::warn!("[sql] listeners are not changed by a reload: restart to apply them");
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const BASE: &str = r#"
[[sql.listeners]]
name = "main"
listen = "127.0.0.1:0"
backends = ["postgres://postgres:pw@127.0.0.1:5432/test"]
auth = "trust"
pool_mode = "transaction"
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn listener_parses_with_defaults() {
        let (config, _) = parse(BASE, "t.toml", no_env).unwrap();
        let l = &config.sql.listeners[0];
        assert_eq!(l.name.as_deref(), Some("main"));
        assert_eq!(l.pool_mode, quartet_sql::PoolMode::Transaction);
        assert_eq!(l.pool_size, 20);
    }

    #[test]
    fn runtime_is_own_thread_unless_shared_is_asked() {
        let (config, _) = parse(BASE, "t.toml", no_env).unwrap();
        assert_eq!(config.sql.runtime, quartet_sql::SqlRuntime::OwnThread);
        let src = format!("[sql]\nruntime = \"shared\"\n{BASE}");
        let (config, _) = parse(&src, "t.toml", no_env).unwrap();
        assert_eq!(config.sql.runtime, quartet_sql::SqlRuntime::Shared);
        let src = format!("[sql]\nruntime = \"per_core\"\n{BASE}");
        assert!(parse(&src, "t.toml", no_env).is_err());
    }

    #[test]
    fn unknown_policy_is_named_with_its_line() {
        let src = format!("{BASE}policy = \"nope\"\n");
        let e = parse(&src, "t.toml", no_env).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("sql.listeners[0].policy"), "{msg}");
        assert!(msg.contains("no policy named"), "{msg}");
        assert_eq!(e.line, Some(8), "{msg}");
    }

    #[test]
    fn library_validation_names_the_key() {
        let src = BASE.replace(
            "backends = [\"postgres://postgres:pw@127.0.0.1:5432/test\"]",
            "backends = []",
        );
        let e = parse(&src, "t.toml", no_env).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("sql.listeners[0].backends"), "{msg}");
        assert_eq!(e.line, Some(5), "{msg}");
    }

    #[test]
    fn unknown_key_is_refused() {
        let src = format!("{BASE}pool_sise = 3\n");
        let e = parse(&src, "t.toml", no_env).unwrap_err();
        assert!(e.to_string().contains("pool_sise"), "{e}");
    }

    #[test]
    fn duplicate_names_and_addresses_are_refused() {
        let twice = format!("{BASE}{BASE}");
        let e = parse(&twice, "t.toml", no_env).unwrap_err();
        assert!(e.to_string().contains("sql.listeners[1].name"), "{e}");
        let fixed = BASE.replace("127.0.0.1:0", "127.0.0.1:6432");
        let two = format!("{fixed}{}", fixed.replace("\"main\"", "\"other\""));
        let e = parse(&two, "t.toml", no_env).unwrap_err();
        assert!(e.to_string().contains("sql.listeners[1].listen"), "{e}");
    }

    #[test]
    fn env_overrides_backends_and_redacts_passwords() {
        let env = |name: &str| {
            (name == "QUARTET_SQL_LISTENER_0_BACKENDS").then(|| {
                "postgres://u:secret@10.0.0.1:5432/test, postgres://u:secret@10.0.0.2:5432/test"
                    .to_string()
            })
        };
        let (config, overrides) = parse(BASE, "t.toml", env).unwrap();
        assert_eq!(config.sql.listeners[0].backends.len(), 2);
        assert_eq!(overrides.len(), 1);
        assert_eq!(overrides[0].key, "sql.listeners[0].backends");
        assert!(!overrides[0].value.contains("secret"), "{:?}", overrides[0]);
    }
}
