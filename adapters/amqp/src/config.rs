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

/// `[amqp]`: the broker connection shared by the RPC client and server. Its `Debug`
/// output hides the password of `url`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:port/vhost` (the vhost URL-encoded: `%2f` is `/`).
    /// `amqps://` for TLS.
    pub url: String,
    /// AMQP heartbeat negotiated with the broker; `"0s"` disables it. A broker that
    /// stops answering is noticed after about twice this.
    #[serde(with = "quartet_policies::duration")]
    pub heartbeat: Duration,
    /// Bound on TCP connect plus the AMQP handshake.
    #[serde(with = "quartet_policies::duration")]
    pub connect_timeout: Duration,
    /// Delay between reconnect attempts while the broker is away.
    pub reconnect: ReconnectSpec,
    /// Prefix of the connection name shown by `rabbitmqctl list_connections`; the full
    /// name is `<prefix>:<pid>:<uuid4>`, like oslo.messaging's.
    pub connection_name: String,
    /// How long the reply and fanout queues outlive their consumer (`x-expires`,
    /// oslo's `rabbit_transient_queues_ttl`).
    #[serde(with = "quartet_policies::duration")]
    pub transient_queues_ttl: Duration,
    /// Declare topic exchanges and queues durable (oslo's `amqp_durable_queues`).
    pub durable_queues: bool,
    /// RPC timeout when neither the request nor its topic gives one (oslo's
    /// `rpc_response_timeout`). It is also the call message's `expiration`.
    #[serde(with = "quartet_policies::duration")]
    pub default_timeout: Duration,
    /// Not in the config file: the fault handle (target `rpc:broker`) whose connection
    /// toxics apply to every broker connection opened with this config. The gateway sets
    /// it; none by default.
    #[serde(skip)]
    pub faults: crate::toxic::ConnectionFaults,
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
            faults: Default::default(),
        }
    }
}

impl std::fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact_url(&self.url))
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect", &self.reconnect)
            .field("connection_name", &self.connection_name)
            .field("transient_queues_ttl", &self.transient_queues_ttl)
            .field("durable_queues", &self.durable_queues)
            .field("default_timeout", &self.default_timeout)
            .field("faults", &self.faults)
            .finish()
    }
}

/// `amqp://user:pass@host/...` becomes `amqp://***@host/...`; anything else unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..rest_start], &rest[at..]),
        None => url.to_owned(),
    }
}

/// Exponential reconnect backoff with full jitter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectSpec {
    #[serde(with = "quartet_policies::duration")]
    pub backoff: Duration,
    #[serde(with = "quartet_policies::duration")]
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
    /// `[[rpc.routes]]`: REST paths mapped to an RPC method of a topic.
    pub routes: Vec<RpcRoute>,
    /// Send a remote exception's traceback (`tb`) to HTTP clients in the error body.
    /// Off by default: a traceback shows the server's code and paths; it is logged.
    pub expose_traceback: bool,
    /// The connection faults (toxics) of `rpc:broker` from the start: every broker
    /// connection of the instance goes through them. Only `connection` is taken (see
    /// [`crate::toxic::broker_fault_problem`]); the admin API can replace or clear it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_fault: Option<quartet_policies::spec::FaultSpec>,
}

/// One `[[rpc.routes]]` entry: `method` + `path` (with `{name}` segments) on the public
/// listener call `rpc_method` on `topic` (a `[[rpc.topics]]` entry), with `args` built
/// from the template (a string `"{name}"` is replaced by the path parameter `name`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcRoute {
    /// HTTP method, upper-case (`GET`, `POST`, ...).
    #[serde(default = "default_route_method")]
    pub method: String,
    /// `/servers/{id}`: literal segments and `{name}` segments.
    pub path: String,
    pub topic: String,
    pub rpc_method: String,
    /// The argument template: values `"{name}"` take the path parameter `name`.
    #[serde(default)]
    pub args: serde_json::Map<String, serde_json::Value>,
    /// Also put the query parameters into the args (as strings; the template wins).
    #[serde(default)]
    pub query_args: bool,
    /// Merge a JSON object request body into the args (the template wins).
    #[serde(default)]
    pub body_args: bool,
    /// Send as a cast (answer 202) instead of a call.
    #[serde(default)]
    pub cast: bool,
    /// `required`, `delay` or `none`; absent: the topic's.
    #[serde(default)]
    pub auth: Option<AuthMode>,
    /// oslo.policy rule checked at the edge; absent: the topic's.
    #[serde(default)]
    pub access: Option<String>,
}

fn default_route_method() -> String {
    "GET".to_owned()
}

impl RpcRoute {
    /// The path's segments: `Ok(None)` for a literal, `Ok(Some(name))` for `{name}`.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> {
        self.path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(
                |s| match s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
                    Some(name) => Segment::Param(name),
                    None => Segment::Literal(s),
                },
            )
    }

    /// The path parameters when `path` matches this route's template.
    pub fn match_path<'p>(&self, path: &'p str) -> Option<Vec<(&str, &'p str)>> {
        let mut got = path.trim_matches('/').split('/').filter(|s| !s.is_empty());
        let mut params = Vec::new();
        for seg in self.segments() {
            let part = got.next()?;
            match seg {
                Segment::Literal(l) if l == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(name) => params.push((name, part)),
            }
        }
        got.next().is_none().then_some(params)
    }
}

/// One segment of an [`RpcRoute`] path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    Literal(&'a str),
    Param(&'a str),
}

/// How a target is protected at the HTTP edge (the same words as a route's `auth`).
pub use quartet_policies::auth::AuthMode;

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
    /// `required`, `delay` or `none`; absent: `required` with `[identity]`, else `none`.
    #[serde(default)]
    pub auth: Option<AuthMode>,
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
    #[serde(default, with = "quartet_policies::duration")]
    pub timeout: Option<Duration>,
    /// oslo's `call_monitor_timeout`: the server heartbeats every half of it.
    #[serde(default, with = "quartet_policies::duration")]
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
    /// Where calls go: the name of an `[upstreams.NAME]`...
    #[serde(default)]
    pub upstream: Option<String>,
    /// ...or of a `[[native.drivers]]` instance (the method is the driver's operation,
    /// the args its arguments). Exactly one of the two; the gateway checks the names.
    #[serde(default)]
    pub driver: Option<String>,
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
    pub message: std::borrow::Cow<'static, str>,
}

fn err(key: impl Into<String>, message: impl Into<std::borrow::Cow<'static, str>>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
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
            if t.topic == crate::toxic::BROKER_TARGET {
                return Err(err(
                    key("topic"),
                    "\"broker\" is reserved: rpc:broker is the target of the broker \
                     connections (their connection faults), a topic of that name would \
                     clash with it",
                ));
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
        if let Some(fault) = &self.broker_fault {
            fault
                .validate()
                .map_err(|e| err(format!("rpc.broker_fault.{}", e.key), e.message))?;
            if let Some((k, message)) = crate::toxic::broker_fault_problem(fault) {
                return Err(err(format!("rpc.broker_fault.{k}"), message));
            }
        }
        let mut routes = std::collections::BTreeSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = |k: &str| format!("rpc.routes[{i}].{k}");
            let method_ok = !r.method.is_empty()
                && r.method.len() <= 20
                && r.method.bytes().all(|b| b.is_ascii_uppercase());
            if !method_ok {
                return Err(err(key("method"), "must be an upper-case HTTP method"));
            }
            if !r.path.starts_with('/') {
                return Err(err(key("path"), "must start with \"/\""));
            }
            let mut names = std::collections::BTreeSet::new();
            for seg in r.segments() {
                match seg {
                    Segment::Param(name) => {
                        let ok = !name.is_empty()
                            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                        if !ok {
                            return Err(err(key("path"), "a {name} must be letters, digits or _"));
                        }
                        if !names.insert(name) {
                            return Err(err(key("path"), "names a parameter twice"));
                        }
                    }
                    Segment::Literal(l) if l.contains(['{', '}']) => {
                        return Err(err(key("path"), "a segment is either literal or {name}"));
                    }
                    Segment::Literal(_) => {}
                }
            }
            if !self.topics.iter().any(|t| t.topic == r.topic) {
                return Err(err(key("topic"), "no [[rpc.topics]] entry has this topic"));
            }
            if r.rpc_method.is_empty() {
                return Err(err(key("rpc_method"), "must not be empty"));
            }
            for v in r.args.values() {
                if let Some(name) = v
                    .as_str()
                    .and_then(|s| s.strip_prefix('{'))
                    .and_then(|s| s.strip_suffix('}'))
                {
                    if !names.contains(name) {
                        return Err(err(key("args"), "uses a {name} the path does not have"));
                    }
                }
            }
            let shape: Vec<Option<&str>> = r
                .segments()
                .map(|s| match s {
                    Segment::Literal(l) => Some(l),
                    Segment::Param(_) => None,
                })
                .collect();
            if !routes.insert((r.method.clone(), shape)) {
                return Err(err(
                    key("path"),
                    "another route has the same method and path",
                ));
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
        assert_eq!(
            (t.exchange.as_str(), t.auth),
            ("nova", Some(AuthMode::Required))
        );
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
    fn debug_hides_the_password_and_routes_match_whole_paths() {
        let cfg = AmqpConfig {
            url: "amqp://user:hunter2@mq:5672/%2f".into(),
            ..AmqpConfig::default()
        };
        let dbg = format!("{cfg:?}");
        assert!(
            !dbg.contains("hunter2") && dbg.contains("amqp://***@mq:5672"),
            "{dbg}"
        );
        let doc: Doc = toml::from_str(
            "[amqp]\n[[rpc.topics]]\ntopic = \"c\"\n[[rpc.routes]]\npath = \"/a/{x}/b\"\n\
             topic = \"c\"\nrpc_method = \"m\"\nargs = { x = \"{x}\" }\n",
        )
        .unwrap();
        doc.rpc.validate().unwrap();
        let r = &doc.rpc.routes[0];
        assert_eq!(r.match_path("/a/1/b"), Some(vec![("x", "1")]));
        assert_eq!(r.match_path("/a/1/b/"), Some(vec![("x", "1")]));
        assert_eq!(r.match_path("/a/1"), None);
        assert_eq!(r.match_path("/a/1/c"), None);
        let mut twice = doc.rpc.clone();
        twice.routes.push(RpcRoute {
            path: "/a/{y}/b".into(),
            args: Default::default(),
            ..r.clone()
        });
        assert_eq!(twice.validate().unwrap_err().key, "rpc.routes[1].path");
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
