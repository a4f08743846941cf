//! Config data for the RPC channel: the `[amqp]` table and the `[[rpc.topics]]` array, in
//! the shape of DESIGN.md's example, so the gateway embeds them as they are:
//!
//! ```toml
//! [amqp]
//! url = "amqp://guest:guest@127.0.0.1:5672/%2f"
//! heartbeat = "20s"
//! connect_timeout = "5s"
//! reconnect = { backoff = "100ms", max_backoff = "5s" }
//!
//! [[rpc.topics]]
//! topic = "compute"
//! exchange = "nova"
//! policy = "default"
//! auth = "required"
//! ```
//!
//! Serde types with defaults, unknown keys rejected, durations like `"250ms"`, and a
//! `validate()` that names the offending key.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// `[amqp]`: the broker connection shared by the RPC client and server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:port/vhost` (the vhost URL-encoded: `%2f` is `/`).
    /// `amqps://` for TLS.
    pub url: String,
    /// AMQP heartbeat negotiated with the broker; `"0s"` disables it. A broker that
    /// stops answering is noticed after about twice this.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// Bound on TCP connect plus the AMQP handshake.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Delay between reconnect attempts while the broker is away.
    pub reconnect: ReconnectSpec,
    /// Prefix of the connection name shown by `rabbitmqctl list_connections`; the full
    /// name is `<prefix>:<pid>:<uuid4>`, like oslo.messaging's.
    pub connection_name: String,
    /// How long the reply and fanout queues outlive their consumer (`x-expires`,
    /// oslo's `rabbit_transient_queues_ttl`).
    #[serde(with = "humantime_serde")]
    pub transient_queues_ttl: Duration,
    /// Declare topic exchanges and queues durable (oslo's `amqp_durable_queues`).
    pub durable_queues: bool,
    /// RPC timeout when neither the request nor its topic gives one (oslo's
    /// `rpc_response_timeout`). It is also the call message's `expiration`.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            heartbeat: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            reconnect: ReconnectSpec::default(),
            connection_name: "quartet".to_owned(),
            transient_queues_ttl: Duration::from_secs(1800),
            durable_queues: false,
            default_timeout: Duration::from_secs(60),
        }
    }
}

/// Exponential reconnect backoff with full jitter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectSpec {
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for ReconnectSpec {
    fn default() -> Self {
        Self {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// `[rpc]`: the RPC targets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcConfig {
    /// `[[rpc.topics]]`: topics reachable through `POST /rpc/{topic}`.
    pub topics: Vec<RpcTopic>,
    /// `[[rpc.servers]]`: topics on which Quartet itself is an oslo.messaging RPC server
    /// (the reverse bridge).
    pub servers: Vec<RpcServerSpec>,
}

/// How a target is protected at the HTTP edge (the same words as a route's `auth`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Required,
    Delay,
    None,
}

/// One `[[rpc.topics]]` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcTopic {
    pub topic: String,
    /// oslo.messaging's control exchange for this service (`nova`, `neutron`).
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Name of a `[policies.NAME]` table.
    #[serde(default = "default_policy")]
    pub policy: String,
    #[serde(default)]
    pub auth: AuthMode,
    /// oslo.policy rule checked at the edge.
    #[serde(default)]
    pub access: Option<String>,
    /// Publish calls with the mandatory flag, so a call nobody can receive fails at
    /// once (broker `basic.return`) instead of timing out.
    #[serde(default)]
    pub mandatory: bool,
    /// A server to target by default (`<topic>.<server>`).
    #[serde(default)]
    pub server: Option<String>,
    /// RPC timeout for this topic (defaults to `[amqp] default_timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// oslo's `call_monitor_timeout`: the server heartbeats every half of it.
    #[serde(default, with = "humantime_serde")]
    pub call_monitor_timeout: Option<Duration>,
    /// Calls may be sent again after they may have been delivered.
    #[serde(default)]
    pub idempotent: bool,
    /// Put the caller's token into `_context_auth_token` (it travels in clear).
    #[serde(default)]
    pub forward_token: bool,
    /// HTTP status per remote exception, keyed by class (`NotFound`) or
    /// `module.class` (`nova.exception.InstanceNotFound`).
    #[serde(default)]
    pub status_map: BTreeMap<String, u16>,
}

impl RpcTopic {
    /// The HTTP status mapped for a remote exception: by `module.class` first, then by
    /// class; `None` means the edge's default (500).
    pub fn status_for(&self, failure: &crate::codec::RemoteFailure) -> Option<u16> {
        self.status_map
            .get(&failure.qualified_class())
            .or_else(|| self.status_map.get(&failure.class))
            .copied()
    }
}

/// One `[[rpc.servers]]` entry: Quartet consumes `<topic>`, `<topic>.<server>` and the
/// fanout queue on `exchange`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcServerSpec {
    pub topic: String,
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// The server name (`host` in oslo): adds the `<topic>.<server>` queue.
    #[serde(default)]
    pub server: Option<String>,
    /// Also consume fanout casts.
    #[serde(default = "yes")]
    pub fanout: bool,
    /// Requests handled at once; more wait in the broker.
    #[serde(default = "default_server_concurrency")]
    pub concurrency: usize,
    /// Where calls go: the name of an `[upstreams.NAME]` (or a driver, once there).
    #[serde(default)]
    pub upstream: Option<String>,
}

fn default_exchange() -> String {
    "openstack".to_owned()
}

fn default_policy() -> String {
    "default".to_owned()
}

fn yes() -> bool {
    true
}

fn default_server_concurrency() -> usize {
    64
}

/// A config problem, naming its key (`amqp.url`, `rpc.topics[2].topic`).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: &'static str,
}

fn err(key: impl Into<String>, message: &'static str) -> ConfigError {
    ConfigError {
        key: key.into(),
        message,
    }
}

impl AmqpConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.url.parse::<lapin::uri::AMQPUri>().is_err() {
            return Err(err("amqp.url", "not an amqp:// or amqps:// url"));
        }
        if self.connect_timeout.is_zero() {
            return Err(err("amqp.connect_timeout", "must be above zero"));
        }
        if self.heartbeat.as_secs() > u64::from(u16::MAX) {
            return Err(err("amqp.heartbeat", "must be under 65535s"));
        }
        if self.reconnect.backoff.is_zero() {
            return Err(err("amqp.reconnect.backoff", "must be above zero"));
        }
        if self.reconnect.max_backoff < self.reconnect.backoff {
            return Err(err(
                "amqp.reconnect.max_backoff",
                "must not be below reconnect.backoff",
            ));
        }
        if self.default_timeout.is_zero() {
            return Err(err("amqp.default_timeout", "must be above zero"));
        }
        Ok(())
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 200 && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

impl RpcConfig {
    /// Checks what this crate can check; the gateway checks `policy` and `upstream` names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in self.topics.iter().enumerate() {
            let key = |k: &str| format!("rpc.topics[{i}].{k}");
            if !valid_name(&t.topic) {
                return Err(err(key("topic"), "must be a non-empty name without spaces"));
            }
            if !seen.insert(t.topic.as_str()) {
                return Err(err(key("topic"), "is listed twice"));
            }
            if t.exchange.is_empty() {
                return Err(err(key("exchange"), "must not be empty"));
            }
            if t.server.as_deref().is_some_and(|s| !valid_name(s)) {
                return Err(err(
                    key("server"),
                    "must be a non-empty name without spaces",
                ));
            }
            if t.timeout.is_some_and(|d| d.is_zero()) {
                return Err(err(key("timeout"), "must be above zero"));
            }
            if let (Some(cm), Some(to)) = (t.call_monitor_timeout, t.timeout) {
                if cm > to {
                    return Err(err(key("call_monitor_timeout"), "must not exceed timeout"));
                }
            }
            if t.status_map.values().any(|s| !(400..=599).contains(s)) {
                return Err(err(key("status_map"), "statuses must be 400 to 599"));
            }
        }
        for (i, s) in self.servers.iter().enumerate() {
            let key = |k: &str| format!("rpc.servers[{i}].{k}");
            if !valid_name(&s.topic) {
                return Err(err(key("topic"), "must be a non-empty name without spaces"));
            }
            if s.server.as_deref().is_some_and(|n| !valid_name(n)) {
                return Err(err(
                    key("server"),
                    "must be a non-empty name without spaces",
                ));
            }
            if s.concurrency == 0 {
                return Err(err(key("concurrency"), "must be above zero"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        amqp: AmqpConfig,
        rpc: RpcConfig,
    }

    #[test]
    fn design_example_parses() {
        let doc: Doc = toml::from_str(
            r#"
            [amqp]
            url = "amqp://guest:guest@127.0.0.1:5672/%2f"

            [[rpc.topics]]
            topic = "compute"
            exchange = "nova"
            policy = "default"
            auth = "required"
            "#,
        )
        .unwrap();
        doc.amqp.validate().unwrap();
        doc.rpc.validate().unwrap();
        assert_eq!(doc.amqp.heartbeat, Duration::from_secs(20));
        let t = &doc.rpc.topics[0];
        assert_eq!((t.exchange.as_str(), t.auth), ("nova", AuthMode::Required));
        assert!(!t.mandatory);
    }

    #[test]
    fn full_example_parses_and_defaults_apply() {
        let doc: Doc = toml::from_str(
            r#"
            [amqp]
            url = "amqp://u:p@mq:5672/vh"
            heartbeat = "10s"
            connect_timeout = "2s"
            reconnect = { backoff = "50ms", max_backoff = "2s" }
            connection_name = "gw"
            default_timeout = "30s"

            [[rpc.topics]]
            topic = "volume"
            mandatory = true
            server = "host1"
            timeout = "5s"
            call_monitor_timeout = "2s"
            idempotent = true
            status_map = { NotFound = 404 }

            [[rpc.servers]]
            topic = "quartet"
            server = "gw1"
            upstream = "compute"
            "#,
        )
        .unwrap();
        doc.amqp.validate().unwrap();
        doc.rpc.validate().unwrap();
        let t = &doc.rpc.topics[0];
        assert_eq!(t.exchange, "openstack");
        assert_eq!(t.policy, "default");
        assert_eq!(t.timeout, Some(Duration::from_secs(5)));
        assert_eq!(t.status_map["NotFound"], 404);
        assert!(doc.rpc.servers[0].fanout);
        let nf = crate::codec::RemoteFailure::new("NotFound", "nova.exception", "x");
        assert_eq!(t.status_for(&nf), Some(404));
        let ve = crate::codec::RemoteFailure::new("ValueError", "builtins", "x");
        assert_eq!(t.status_for(&ve), None);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        assert!(toml::from_str::<Doc>("[amqp]\nurll = \"x\"\n[rpc]\n").is_err());
        assert!(toml::from_str::<Doc>("[amqp]\n[[rpc.topics]]\ntopic = \"a\"\nfoo = 1\n").is_err());
        let doc: Doc =
            toml::from_str("[amqp]\nurl = \"http://x\"\n[[rpc.topics]]\ntopic = \"a b\"\n")
                .unwrap();
        assert_eq!(doc.amqp.validate().unwrap_err().key, "amqp.url");
        assert_eq!(doc.rpc.validate().unwrap_err().key, "rpc.topics[0].topic");
    }
}
