//! `[upstreams.NAME]` as data.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// `http://host:port` or `https://host:port`, optionally with a base path.
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub balance: BalanceStrategy,
    #[serde(default)]
    pub health: Option<HealthSpec>,
    /// Speak HTTP/2 to the endpoints: by prior knowledge (h2c) on `http://`, and insist on
    /// it on `https://` (ALPN offers h2 and http/1.1 otherwise).
    #[serde(default)]
    pub http2: bool,
    /// PEM file of CA certificates for `https://` endpoints; the system's roots otherwise.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(
        default = "default_connect_timeout",
        with = "quartet_policies::duration"
    )]
    pub connect_timeout: Duration,
    #[serde(
        default = "default_pool_idle_timeout",
        with = "quartet_policies::duration"
    )]
    pub pool_idle_timeout: Duration,
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle_per_host: usize,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
fn default_pool_max_idle() -> usize {
    256
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceStrategy {
    /// Least outstanding requests between two endpoints picked at random.
    #[default]
    P2c,
    RoundRobin,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    #[serde(default = "default_health_path")]
    pub path: String,
    #[serde(
        default = "default_health_interval",
        with = "quartet_policies::duration"
    )]
    pub interval: Duration,
    #[serde(
        default = "default_health_timeout",
        with = "quartet_policies::duration"
    )]
    pub timeout: Duration,
    /// Failed checks in a row before an endpoint is taken out.
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: u32,
    /// Passed checks in a row before it is put back.
    #[serde(default = "default_healthy")]
    pub healthy_threshold: u32,
}

fn default_health_path() -> String {
    "/".into()
}
fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_unhealthy() -> u32 {
    2
}
fn default_healthy() -> u32 {
    1
}
