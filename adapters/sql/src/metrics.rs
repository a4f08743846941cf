//! Prometheus metrics of the SQL channel. The gateway registers one [`SqlMetrics`] in its
//! registry and hands it to every SQL listener through [`crate::SqlContext`]; each
//! listener labels them with its address.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::sync::Arc;

pub struct SqlMetrics {
    /// `quartet_sql_clients{listener}`: client connections open now.
    pub clients: IntGaugeVec,
    /// `quartet_sql_server_connects_total{listener,outcome}`: `success` or `failure`.
    pub server_connects: IntCounterVec,
    /// `quartet_sql_pool_wait_seconds{listener}`: how long clients waited for a server
    /// connection from a full pool (checkouts that did not wait are not observed).
    pub wait: HistogramVec,
    /// `quartet_sql_queries_total{listener}`: simple queries and `Sync`s sent to servers.
    pub queries: IntCounterVec,
    /// `quartet_sql_transactions_total{listener}`: units of work ended idle.
    pub transactions: IntCounterVec,
    /// `quartet_sql_pool_queries_total{listener,database,user}`: the same, per pool.
    pub pool_queries: IntCounterVec,
    /// `quartet_sql_pool_transactions_total{listener,database,user}`: the same, per pool.
    pub pool_transactions: IntCounterVec,
    /// `quartet_sql_errors_total{listener,class}`: errors sent to clients by SQLSTATE class.
    pub errors: IntCounterVec,
    /// `quartet_sql_server_connections{listener,state}`: server connections `active`
    /// (lent to a client) and `idle` (in a pool), sampled every `health_interval`.
    pub servers: IntGaugeVec,
    /// `quartet_sql_clients_waiting{listener}`: clients waiting for a server connection
    /// from a full pool, sampled every `health_interval`.
    pub waiting: IntGaugeVec,
}

impl SqlMetrics {
    pub fn register(registry: &Registry) -> Result<Arc<Self>, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let clients = IntGaugeVec::new(
            Opts::new("quartet_sql_clients", "SQL client connections open now."),
            &["listener"],
        )?;
        registry.register(Box::new(clients.clone()))?;
        let wait = HistogramVec::new(
            HistogramOpts::new(
                "quartet_sql_pool_wait_seconds",
                "Time SQL clients waited for a server connection.",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0,
            ]),
            &["listener"],
        )?;
        registry.register(Box::new(wait.clone()))?;
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        Ok(Arc::new(Self {
            servers: gauge(
                "quartet_sql_server_connections",
                "SQL server connections by state (active: lent to a client; idle: pooled).",
                &["listener", "state"],
            )?,
            waiting: gauge(
                "quartet_sql_clients_waiting",
                "SQL clients waiting for a server connection from a full pool.",
                &["listener"],
            )?,
            clients,
            server_connects: counter(
                "quartet_sql_server_connects_total",
                "Server connections opened, by outcome.",
                &["listener", "outcome"],
            )?,
            wait,
            queries: counter(
                "quartet_sql_queries_total",
                "Simple queries and extended-protocol syncs sent to servers.",
                &["listener"],
            )?,
            transactions: counter(
                "quartet_sql_transactions_total",
                "Units of work that ended with the server idle.",
                &["listener"],
            )?,
            pool_queries: counter(
                "quartet_sql_pool_queries_total",
                "Simple queries and extended-protocol syncs sent to servers, per pool.",
                &["listener", "database", "user"],
            )?,
            pool_transactions: counter(
                "quartet_sql_pool_transactions_total",
                "Units of work that ended with the server idle, per pool.",
                &["listener", "database", "user"],
            )?,
            errors: counter(
                "quartet_sql_errors_total",
                "Errors sent to SQL clients, by SQLSTATE class.",
                &["listener", "class"],
            )?,
        }))
    }
}

/// The metrics of one listener, labels applied once (the hot path counts without a
/// label lookup).
#[derive(Clone)]
pub(crate) struct ListenerMetrics {
    pub listener: String,
    pub metrics: Arc<SqlMetrics>,
    clients: IntGauge,
    wait: Histogram,
    queries: IntCounter,
    transactions: IntCounter,
}

impl ListenerMetrics {
    pub fn new(listener: String, metrics: Arc<SqlMetrics>) -> Self {
        let l = [listener.as_str()];
        Self {
            clients: metrics.clients.with_label_values(&l),
            wait: metrics.wait.with_label_values(&l),
            queries: metrics.queries.with_label_values(&l),
            transactions: metrics.transactions.with_label_values(&l),
            listener,
            metrics,
        }
    }
    /// The `quartet_sql_clients` gauge of this listener.
    pub fn clients(&self) -> IntGauge {
        self.clients.clone()
    }
    pub fn connect(&self, ok: bool) {
        let outcome = if ok { "success" } else { "failure" };
        self.metrics
            .server_connects
            .with_label_values(&[&self.listener, outcome])
            .inc();
    }
    pub fn wait(&self, seconds: f64) {
        self.wait.observe(seconds);
    }
    pub fn query(&self) {
        self.queries.inc();
    }
    pub fn transaction(&self) {
        self.transactions.inc();
    }
    pub fn error(&self, class: &str) {
        self.metrics
            .errors
            .with_label_values(&[&self.listener, class])
            .inc();
    }
    /// The counters of one (database, user) pool of this listener, labels applied.
    pub fn pool(&self, database: &str, user: &str) -> PoolMetrics {
        let l = [self.listener.as_str(), database, user];
        PoolMetrics {
            queries: self.metrics.pool_queries.with_label_values(&l),
            transactions: self.metrics.pool_transactions.with_label_values(&l),
        }
    }
    /// Sets the sampled gauges: server connections active and idle, clients waiting.
    pub fn pools(&self, active: usize, idle: usize, waiting: usize) {
        let servers = &self.metrics.servers;
        servers
            .with_label_values(&[&self.listener, "active"])
            .set(active as i64);
        servers
            .with_label_values(&[&self.listener, "idle"])
            .set(idle as i64);
        self.metrics
            .waiting
            .with_label_values(&[&self.listener])
            .set(waiting as i64);
    }
}

/// The counters of one pool, labels applied once.
#[derive(Clone)]
pub(crate) struct PoolMetrics {
    queries: IntCounter,
    transactions: IntCounter,
}

impl PoolMetrics {
    pub fn query(&self) {
        self.queries.inc();
    }
    pub fn transaction(&self) {
        self.transactions.inc();
    }
}
