//! The config file as data: serde types with defaults (unknown keys refused), environment
//! overrides of backend URLs, and [`Config::validate`], which names the offending key. Every
//! error a user sees says where: `FILE:LINE: KEY: message`.

use quartet_amqp::{AmqpConfig, RpcConfig};
use quartet_http::spec::UpstreamSpec;
use quartet_policies::spec::PolicySpec;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The embedded default config, also the commented reference of every key.
pub const DEFAULT_CONFIG: &str = include_str!("../quartet.default.toml");

/// The longest `server.header_timeout` accepted.
pub const MAX_HEADER_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// How the embedded default is named in messages.
pub const EMBEDDED_NAME: &str = "<embedded default config>";

/// The name of the policy every target gets when it names none.
pub const DEFAULT_POLICY: &str = "default";

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub policies: BTreeMap<String, PolicySpec>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// `[amqp]` (quartet-amqp's table): present means the RPC channel runs.
    #[serde(default)]
    pub amqp: Option<AmqpConfig>,
    /// Token checks and the embedded identity; absent: no token checks anywhere.
    #[serde(default)]
    pub identity: Option<quartet_identity::IdentityConfig>,
    #[serde(default)]
    pub native: crate::native::NativeConfig,
    /// `[sql]`: the SQL listeners (see `crate::sql`).
    #[serde(default)]
    pub sql: quartet_sql::SqlSpec,
    /// `[rpc]`: topics, REST-to-RPC routes, reverse-bridge servers.
    #[serde(default)]
    pub rpc: RpcConfig,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<Secret>,
    pub tls: Option<TlsConfig>,
    pub max_body_bytes: u64,
    #[serde(with = "quartet_policies::duration")]
    pub grace_period: Duration,
    /// How long a client may take to send a request head (idle keep-alive included);
    /// the connection is closed when it runs out.
    #[serde(with = "quartet_policies::duration")]
    pub header_timeout: Duration,
    pub log_format: LogFormat,
    /// How the public listener's connections are served (see [`RuntimeModel`]).
    pub runtime: RuntimeModel,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_token: None,
            tls: None,
            max_body_bytes: 10 * 1024 * 1024,
            grace_period: Duration::from_secs(30),
            header_timeout: Duration::from_secs(30),
            log_format: LogFormat::Text,
            runtime: RuntimeModel::PerCore,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `server.runtime`: which threads serve the public listener's connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeModel {
    /// One thread per core, each with its own single-threaded runtime, its own
    /// `SO_REUSEPORT` listener on `server.listen` and its own idle upstream connections: a
    /// connection is served, and its upstream calls made, on one thread (no cross-thread
    /// wake-ups). The admin listener, RPC, SQL and identity stay on the shared runtime.
    #[default]
    PerCore,
    /// Every listener on the one shared multi-threaded runtime (work stealing).
    MultiThread,
}

/// A secret from the config: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: String,
    #[serde(default)]
    pub host: Option<String>,
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default = "default_policy_name")]
    pub policy: String,
    #[serde(default)]
    pub idempotent: bool,
    /// `required`, `delay` or `none`; default `required` with `[identity]`, else `none`.
    #[serde(default)]
    pub auth: Option<quartet_policies::auth::AuthMode>,
    /// An oslo.policy expression, or `rule:NAME` of `identity.policy_file`.
    #[serde(default)]
    pub access: Option<String>,
    /// Path templates (`/compute/v2.1/{project_id}/servers/{id}`) whose `{name}` segments
    /// fill the access rule's target, matched against the path as the client sent it.
    #[serde(default)]
    pub path_params: Vec<String>,
}

fn default_policy_name() -> String {
    DEFAULT_POLICY.to_string()
}

/// Where the running config came from; SIGHUP re-reads a file, never the embedded one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

impl Source {
    pub fn name(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Embedded => EMBEDDED_NAME.to_string(),
        }
    }
}

/// An environment variable that replaced a value of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    pub var: String,
    pub key: String,
    /// The new value with any password in a URL replaced by `***`.
    pub value: String,
}

/// A config read, overridden and validated.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub config: Config,
    pub source: Source,
    pub overrides: Vec<Override>,
}

use quartet_drill::location::{key_at, line_of, locate};
/// Key paths (`routes[1].upstream`) and their lines: the one TOML locator, shared with
/// the drill's scenarios.
pub use quartet_drill::location::{KeyPath, Seg};

pub(crate) use quartet_drill::location::invalid;
/// A config error as the user sees it: `FILE:LINE: KEY: message` (the one file-error
/// type, shared with the drill's scenarios).
pub use quartet_drill::location::FileError as ConfigError;
pub use quartet_drill::location::{ErrorKind, Invalid};

/// Reads the file (or the embedded default when `path` is `None`), applies the process's
/// environment overrides and validates.
pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
    let env = |name: &str| std::env::var(name).ok();
    match path {
        None => {
            let (config, overrides) = parse(DEFAULT_CONFIG, EMBEDDED_NAME, env)?;
            Ok(Loaded {
                config,
                source: Source::Embedded,
                overrides,
            })
        }
        Some(path) => {
            let file = path.display().to_string();
            let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
                file: file.clone(),
                line: None,
                key: None,
                kind: ErrorKind::Read(e),
            })?;
            let (config, overrides) = parse(&src, &file, env)?;
            Ok(Loaded {
                config,
                source: Source::File(path.to_path_buf()),
                overrides,
            })
        }
    }
}

/// Parses `src` (named `file` in messages), applies the overrides `env` gives, validates.
pub fn parse(
    src: &str,
    file: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(Config, Vec<Override>), ConfigError> {
    let mut config: Config = toml::from_str(src).map_err(|e| {
        let offset = e.span().map(|s| s.start);
        ConfigError {
            file: file.to_string(),
            line: offset.map(|o| line_of(src, o)),
            key: offset.and_then(|o| key_at(src, o)),
            kind: ErrorKind::Syntax(Box::new(e)),
        }
    })?;
    config
        .policies
        .entry(DEFAULT_POLICY.to_string())
        .or_default();
    let overrides = config.apply_env(env);
    config.validate().map_err(|e| ConfigError {
        file: file.to_string(),
        line: locate(src, &e.path),
        key: Some(e.path.clone()),
        kind: ErrorKind::Invalid(e),
    })?;
    Ok((config, overrides))
}

/// The environment variable that overrides `upstreams.NAME.endpoints`.
pub fn upstream_env_var(name: &str) -> String {
    format!(
        "QUARTET_UPSTREAM_{}_ENDPOINTS",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

pub const AMQP_URL_VAR: &str = "QUARTET_AMQP_URL";

impl Config {
    /// Replaces backend URLs with the ones the environment gives (empty values ignored).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Vec<Override> {
        let mut applied = Vec::new();
        if let Some(url) = env(AMQP_URL_VAR).filter(|v| !v.trim().is_empty()) {
            let url = url.trim().to_string();
            applied.push(Override {
                var: AMQP_URL_VAR.to_string(),
                key: "amqp.url".to_string(),
                value: redact_url(&url),
            });
            self.amqp.get_or_insert_with(AmqpConfig::default).url = url;
        }
        crate::identity::apply_env(self, &env, &mut applied);
        for (name, upstream) in &mut self.upstreams {
            let var = upstream_env_var(name);
            let Some(value) = env(&var) else { continue };
            let endpoints: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            if endpoints.is_empty() {
                continue;
            }
            applied.push(Override {
                var,
                key: KeyPath::root("upstreams")
                    .key(name.clone())
                    .key("endpoints")
                    .to_string(),
                value: endpoints
                    .iter()
                    .map(|e| redact_url(e))
                    .collect::<Vec<_>>()
                    .join(","),
            });
            upstream.endpoints = endpoints;
        }
        applied.extend(crate::sql::apply_env(&mut self.sql, &env));
        applied
    }

    /// The policy named `name` (the `default` one always exists after [`parse`]).
    pub fn policy(&self, name: &str) -> PolicySpec {
        self.policies.get(name).cloned().unwrap_or_default()
    }

    /// Checks what serde cannot: references between sections, value ranges, addresses.
    pub fn validate(&self) -> Result<(), Invalid> {
        let server = KeyPath::root("server");
        let s = &self.server;
        if let Some(token) = &s.admin_token {
            if token.expose().trim().is_empty() {
                return Err(invalid(server.key("admin_token"), "must not be empty"));
            }
        }
        if !s.admin_listen.ip().is_loopback() && s.admin_token.is_none() {
            return Err(invalid(
                server.key("admin_listen"),
                format!(
                    "{} is not a loopback address: set server.admin_token to expose the admin API",
                    s.admin_listen
                ),
            ));
        }
        if s.header_timeout.is_zero() {
            return Err(invalid(
                server.key("header_timeout"),
                "must be greater than zero",
            ));
        }
        // A client holding a connection open for more than a day without a request is
        // not one to wait for (every duration is bounded anyway: quartet_policies::duration).
        if s.header_timeout > MAX_HEADER_TIMEOUT {
            return Err(invalid(server.key("header_timeout"), "must be at most 24h"));
        }
        if s.max_body_bytes == 0 {
            return Err(invalid(
                server.key("max_body_bytes"),
                "must be greater than zero",
            ));
        }
        if let Some(tls) = &s.tls {
            for (key, path) in [("cert", &tls.cert), ("key", &tls.key)] {
                if !path.is_file() {
                    return Err(invalid(
                        server.clone().key("tls").key(key),
                        format!("no such file: {}", path.display()),
                    ));
                }
            }
        }

        for (name, policy) in &self.policies {
            policy.validate().map_err(|e| {
                invalid(
                    KeyPath::root("policies").key(name.clone()).dotted(&e.key),
                    e.message,
                )
            })?;
        }

        for (name, up) in &self.upstreams {
            let path = KeyPath::root("upstreams").key(name.clone());
            validate_upstream(path, up)?;
        }

        crate::identity::validate(self)?;

        let mut seen: Vec<(String, Option<String>)> = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            let path = KeyPath::root("routes").index(i);
            if !route.prefix.starts_with('/') {
                return Err(invalid(path.key("prefix"), "must start with \"/\""));
            }
            if let Some(host) = &route.host {
                if host.trim().is_empty() {
                    return Err(invalid(path.key("host"), "must not be empty"));
                }
            }
            if !self.upstreams.contains_key(&route.upstream) {
                return Err(invalid(
                    path.key("upstream"),
                    format!("no upstream named {:?}", route.upstream),
                ));
            }
            if !self.policies.contains_key(&route.policy) {
                return Err(invalid(
                    path.key("policy"),
                    format!("no policy named {:?}", route.policy),
                ));
            }
            let key = (
                normalize_prefix(&route.prefix).to_string(),
                route.host.as_deref().map(normalize_host),
            );
            if let Some(j) = seen.iter().position(|k| *k == key) {
                return Err(invalid(
                    path.key("prefix"),
                    format!("routes[{j}] has the same prefix and host"),
                ));
            }
            seen.push(key);
        }

        if let Some(amqp) = &self.amqp {
            if !(amqp.url.starts_with("amqp://") || amqp.url.starts_with("amqps://")) {
                return Err(invalid(
                    KeyPath::root("amqp").key("url"),
                    "must be an amqp:// or amqps:// URL",
                ));
            }
            amqp.validate()
                .map_err(|e| invalid(key_path(&e.key), e.message))?;
        }
        self.validate_rpc()
    }

    /// `[rpc]`: what quartet-amqp checks, then the names it cannot see (policies,
    /// upstreams) and that the RPC channel has a broker.
    fn validate_rpc(&self) -> Result<(), Invalid> {
        let rpc = &self.rpc;
        rpc.validate()
            .map_err(|e| invalid(key_path(&e.key), e.message))?;
        for (i, t) in rpc.topics.iter().enumerate() {
            if !self.policies.contains_key(&t.policy) {
                return Err(invalid(
                    KeyPath::root("rpc").key("topics").index(i).key("policy"),
                    format!("no policy named {:?}", t.policy),
                ));
            }
        }
        for (i, s) in rpc.servers.iter().enumerate() {
            let path = KeyPath::root("rpc").key("servers").index(i);
            match (&s.upstream, &s.driver) {
                (None, None) => {
                    return Err(invalid(
                        path,
                        "needs an upstream or a driver: the [upstreams.NAME] or the \
                         [[native.drivers]] name its calls go to",
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        path.key("driver"),
                        "names a driver and an upstream: give only one",
                    ))
                }
                (Some(up), None) if !self.upstreams.contains_key(up) => {
                    return Err(invalid(
                        path.key("upstream"),
                        format!("no upstream named {up:?}"),
                    ))
                }
                (None, Some(d)) if !self.native.drivers.iter().any(|n| &n.name == d) => {
                    return Err(invalid(
                        path.key("driver"),
                        format!("no [[native.drivers]] entry named {d:?}"),
                    ))
                }
                _ => {}
            }
        }
        let uses_rpc = !rpc.topics.is_empty() || !rpc.servers.is_empty();
        if uses_rpc && self.amqp.is_none() {
            let what = if rpc.topics.is_empty() {
                "servers"
            } else {
                "topics"
            };
            return Err(invalid(
                KeyPath::root("rpc").key(what),
                "the RPC channel needs an [amqp] table (the broker)",
            ));
        }
        self.native.validate(&self.policies)?;
        crate::sql::validate(&self.sql, &self.policies)?;
        Ok(())
    }
}

/// A key such as `rpc.topics[2].topic`, as a [`KeyPath`] (indexes in brackets).
pub fn key_path(dotted: &str) -> KeyPath {
    let mut path = KeyPath::default();
    for part in dotted.split('.').filter(|s| !s.is_empty()) {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                path = path.key(&rest[..open]);
            }
            rest = &rest[open..];
            while let Some(inner) = rest.strip_prefix('[') {
                let Some(close) = inner.find(']') else { break };
                match inner[..close].parse() {
                    Ok(i) => path = path.index(i),
                    Err(_) => path = path.key(&inner[..close]),
                }
                rest = &inner[close + 1..];
            }
        } else {
            path = path.key(rest);
        }
    }
    path
}

fn validate_upstream(path: KeyPath, up: &UpstreamSpec) -> Result<(), Invalid> {
    if up.endpoints.is_empty() {
        return Err(invalid(
            path.key("endpoints"),
            "must list at least one endpoint",
        ));
    }
    for (i, e) in up.endpoints.iter().enumerate() {
        if up.endpoints[..i].contains(e) {
            return Err(invalid(
                path.key("endpoints").index(i),
                format!("{:?} is listed twice", redact_url(e)),
            ));
        }
        let ok = e
            .parse::<http::Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("http") | Some("https")))
            .filter(|u| u.authority().is_some_and(|a| !a.host().is_empty()));
        if ok.is_none() {
            return Err(invalid(
                path.key("endpoints").index(i),
                format!("{:?} is not an http:// or https:// URL", redact_url(e)),
            ));
        }
    }
    if let Some(h) = &up.health {
        let hp = path.clone().key("health");
        if !h.path.starts_with('/') {
            return Err(invalid(hp.key("path"), "must start with \"/\""));
        }
        if h.interval.is_zero() {
            return Err(invalid(hp.key("interval"), "must be greater than zero"));
        }
        if h.timeout.is_zero() {
            return Err(invalid(hp.key("timeout"), "must be greater than zero"));
        }
        if h.unhealthy_threshold == 0 {
            return Err(invalid(hp.key("unhealthy_threshold"), "must be at least 1"));
        }
        if h.healthy_threshold == 0 {
            return Err(invalid(hp.key("healthy_threshold"), "must be at least 1"));
        }
    }
    if up.connect_timeout.is_zero() {
        return Err(invalid(
            path.key("connect_timeout"),
            "must be greater than zero",
        ));
    }
    if let Some(ca) = &up.ca_file {
        if !ca.is_file() {
            return Err(invalid(
                path.key("ca_file"),
                format!("no such file: {}", ca.display()),
            ));
        }
    }
    Ok(())
}

/// A prefix without its trailing slashes (`"/"` becomes `""`, which matches every path).
pub fn normalize_prefix(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// A host without its port, lower-cased.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let no_port = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or(rest)
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => host,
        }
    };
    no_port.to_ascii_lowercase()
}

/// `scheme://user:pass@host/...` becomes `scheme://***@host/...`; anything else unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..rest_start], &rest[at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn err(src: &str) -> String {
        parse(src, "quartet.toml", no_env).unwrap_err().to_string()
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"

[upstreams.compute]
endpoints = ["http://127.0.0.1:8774"]

[upstreams.image-store]
endpoints = ["http://127.0.0.1:9292"]

[[routes]]
prefix = "/compute"
upstream = "compute"

[[routes]]
prefix = "/image"
upstream = "image-store"
policy = "fast"

[policies.fast]
timeout = "250ms"
"#;

    #[test]
    fn embedded_default_parses_and_validates() {
        let (c, overrides) = parse(DEFAULT_CONFIG, EMBEDDED_NAME, no_env).unwrap();
        assert!(overrides.is_empty());
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.policies["default"], PolicySpec::default());
        assert_eq!(c.upstreams["demo"].endpoints, ["http://127.0.0.1:8000"]);
        assert!(c.upstreams["demo"].health.is_none());
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].prefix, "/demo");
        assert!(c.routes[0].strip_prefix);
        assert_eq!(c.amqp, Some(AmqpConfig::default()));
        // The volume driver over RPC: served on "cinder-volume", reachable at /rpc.
        assert_eq!(c.rpc.topics.len(), 1);
        assert_eq!(c.rpc.topics[0].topic, "cinder-volume");
        assert_eq!(c.rpc.servers.len(), 1);
        assert_eq!(c.rpc.servers[0].driver.as_deref(), Some("volumes"));
        assert!(c.rpc.routes.is_empty());
        assert!(c.identity.is_some(), "the embedded identity is on");
    }

    const RPC: &str = r#"
[upstreams.echo]
endpoints = ["http://127.0.0.1:8000"]

[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
default_timeout = "5s"

[[rpc.topics]]
topic = "compute"
exchange = "nova"
mandatory = true
status_map = { NotFound = 404 }

[[rpc.routes]]
path = "/servers/{id}"
topic = "compute"
rpc_method = "get_server"
args = { server_id = "{id}" }

[[rpc.servers]]
topic = "bridge"
upstream = "echo"
"#;

    #[test]
    fn rpc_tables_parse_with_their_defaults() {
        let (c, _) = parse(RPC, "q.toml", no_env).unwrap();
        let amqp = c.amqp.unwrap();
        assert_eq!(amqp.default_timeout, Duration::from_secs(5));
        assert_eq!(amqp.heartbeat, Duration::from_secs(20));
        let t = &c.rpc.topics[0];
        assert_eq!(
            (t.exchange.as_str(), t.policy.as_str()),
            ("nova", "default")
        );
        assert!(t.mandatory && !t.idempotent && !t.forward_token);
        let r = &c.rpc.routes[0];
        assert_eq!(r.method, "GET");
        assert_eq!(r.match_path("/servers/abc"), Some(vec![("id", "abc")]));
        assert_eq!(r.match_path("/servers/abc/x"), None);
        assert_eq!(r.match_path("/servers"), None);
        let s = &c.rpc.servers[0];
        assert_eq!(s.upstream.as_deref(), Some("echo"));
        assert!(s.fanout);
        assert!(!c.rpc.expose_traceback);
    }

    #[test]
    fn rpc_errors_name_key_and_line() {
        let src = RPC.replace("mandatory = true", "policy = \"slow\"");
        assert_eq!(
            err(&src),
            "quartet.toml:12: rpc.topics[0].policy: no policy named \"slow\""
        );
        let src = RPC.replace("upstream = \"echo\"", "upstream = \"nope\"");
        assert_eq!(
            err(&src),
            "quartet.toml:23: rpc.servers[0].upstream: no upstream named \"nope\""
        );
        let src = RPC.replace(
            "topic = \"compute\"\nrpc_method",
            "topic = \"volume\"\nrpc_method",
        );
        assert_eq!(
            err(&src),
            "quartet.toml:17: rpc.routes[0].topic: no [[rpc.topics]] entry has this topic"
        );
        let src = RPC.replace("server_id = \"{id}\"", "server_id = \"{uuid}\"");
        assert_eq!(
            err(&src),
            "quartet.toml:19: rpc.routes[0].args: uses a {name} the path does not have"
        );
        let src = RPC.replace("path = \"/servers/{id}\"", "path = \"servers/{id}\"");
        assert_eq!(
            err(&src),
            "quartet.toml:16: rpc.routes[0].path: must start with \"/\""
        );
        let src = RPC.replace("topic = \"bridge\"", "topic = \"a b\"");
        assert_eq!(
            err(&src),
            "quartet.toml:22: rpc.servers[0].topic: must be a non-empty name without spaces"
        );
        let src = RPC.replace("amqp://guest", "http://guest");
        assert_eq!(
            err(&src),
            "quartet.toml:6: amqp.url: must be an amqp:// or amqps:// URL"
        );
        let src = RPC.replace("default_timeout = \"5s\"", "default_timeout = \"0s\"");
        assert_eq!(
            err(&src),
            "quartet.toml:7: amqp.default_timeout: must be above zero"
        );
        let e = err("[amqp]\nurl = \"amqp://h\"\nurll = 1\n");
        assert!(
            e.starts_with("quartet.toml:3: amqp.urll: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn rpc_topic_named_broker_is_refused() {
        // It would be the same target as the broker connections, `rpc:broker`.
        let src = RPC.replace(
            "topic = \"compute\"\nexchange",
            "topic = \"broker\"\nexchange",
        );
        let e = err(&src);
        assert!(
            e.starts_with("quartet.toml:10: rpc.topics[0].topic: \"broker\" is reserved"),
            "{e}"
        );
    }

    #[test]
    fn rpc_broker_fault_takes_connection_faults_only() {
        let src = format!(
            "{RPC}\n[rpc]\nbroker_fault = {{ connection = [{{ kind = \"latency\", latency = \"100ms\" }}] }}\n"
        );
        let (c, _) = parse(&src, "quartet.toml", no_env).unwrap();
        let fault = c.rpc.broker_fault.expect("broker_fault");
        assert_eq!(fault.connection.len(), 1);

        let src =
            format!("{RPC}\n[rpc]\nbroker_fault = {{ delay = \"1s\", delay_percent = 100 }}\n");
        let e = err(&src);
        assert!(
            e.starts_with(
                "quartet.toml:26: rpc.broker_fault.delay: rpc:broker takes only connection faults"
            ),
            "{e}"
        );
        let src = format!("{RPC}\n[rpc]\nbroker_fault = {{ abort_percent = 10 }}\n");
        let e = err(&src);
        assert!(
            e.starts_with("quartet.toml:26: rpc.broker_fault.abort_percent: rpc:broker takes"),
            "{e}"
        );
        let src =
            format!("{RPC}\n[rpc]\nbroker_fault = {{ connection = [{{ kind = \"nope\" }}] }}\n");
        let e = err(&src);
        assert!(e.starts_with("quartet.toml:26: rpc.broker_fault"), "{e}");
    }

    #[test]
    fn rpc_without_a_broker_is_refused() {
        let e = err("[[rpc.topics]]\ntopic = \"compute\"\n");
        assert_eq!(
            e,
            "quartet.toml:1: rpc.topics: the RPC channel needs an [amqp] table (the broker)"
        );
        // The environment can give the broker.
        let env = |n: &str| (n == AMQP_URL_VAR).then(|| "amqp://u:p@mq:5672/%2f".to_string());
        let (c, o) = parse("[[rpc.topics]]\ntopic = \"compute\"\n", "q", env).unwrap();
        assert_eq!(c.amqp.unwrap().url, "amqp://u:p@mq:5672/%2f");
        assert_eq!(o[0].value, "amqp://***@mq:5672/%2f");
    }

    #[test]
    fn dotted_keys_with_indexes_become_key_paths() {
        assert_eq!(
            key_path("rpc.topics[2].topic"),
            KeyPath::root("rpc").key("topics").index(2).key("topic")
        );
        assert_eq!(key_path("amqp.url").to_string(), "amqp.url");
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let (c, _) = parse(GOOD, "q.toml", no_env).unwrap();
        assert_eq!(c.server.admin_listen, ServerConfig::default().admin_listen);
        assert_eq!(c.server.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(c.server.grace_period, Duration::from_secs(30));
        assert_eq!(c.server.log_format, LogFormat::Text);
        assert_eq!(c.server.runtime, RuntimeModel::PerCore);
        assert_eq!(c.policies["default"], PolicySpec::default());
        assert_eq!(c.policies["fast"].timeout, Duration::from_millis(250));
        assert_eq!(c.policies["fast"].retry, PolicySpec::default().retry);
        assert_eq!(c.routes[0].policy, "default");
        assert!(!c.routes[0].strip_prefix);
        assert!(!c.routes[0].idempotent);
    }

    #[test]
    fn empty_file_is_a_valid_config() {
        let (c, _) = parse("", "q.toml", no_env).unwrap();
        assert!(c.routes.is_empty());
        assert!(c.policies.contains_key("default"));
    }

    #[test]
    fn unknown_key_is_refused_with_file_line_and_key() {
        let e = err("[server]\nlisten = \"127.0.0.1:0\"\nlistne = \"x\"\n");
        assert!(
            e.starts_with("quartet.toml:3: server.listne: unknown field"),
            "{e}"
        );
        let e = err(
            "[upstreams.a]\nendpoints = [\"http://x:1\"]\n\n[[routes]]\nprefix = \"/a\"\nupstream = \"a\"\nretries = 2\n",
        );
        assert!(
            e.starts_with("quartet.toml:7: routes[0].retries: unknown field"),
            "{e}"
        );
        let e = err("[policies.default]\nretry = { attempts = 2, budgett = 1 }\n");
        assert!(
            e.starts_with("quartet.toml:2: policies.default.retry"),
            "{e}"
        );
        assert!(e.contains("budgett"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let e = err("[server]\n\ngrace_period = \"soon\"\n");
        assert!(
            e.starts_with("quartet.toml:3: server.grace_period: "),
            "{e}"
        );
        let e = err("[server]\nlog_format = \"xml\"\n");
        assert!(e.starts_with("quartet.toml:2: server.log_format: "), "{e}");
        let e = err("[server]\nruntime = \"green\"\n");
        assert!(e.starts_with("quartet.toml:2: server.runtime: "), "{e}");
        let (c, _) = parse("[server]\nruntime = \"multi_thread\"\n", "q.toml", no_env).unwrap();
        assert_eq!(c.server.runtime, RuntimeModel::MultiThread);
        let e = err("[server]\nlisten = \"nowhere\"\n");
        assert!(e.starts_with("quartet.toml:2: server.listen: "), "{e}");
    }

    #[test]
    fn validation_errors_name_key_and_line() {
        let src = GOOD.replace("upstream = \"image-store\"", "upstream = \"imagestore\"");
        let e = err(&src);
        assert_eq!(
            e,
            "quartet.toml:17: routes[1].upstream: no upstream named \"imagestore\""
        );

        let src = GOOD.replace("policy = \"fast\"", "policy = \"slow\"");
        assert_eq!(
            err(&src),
            "quartet.toml:18: routes[1].policy: no policy named \"slow\""
        );

        let src = GOOD.replace("prefix = \"/image\"", "prefix = \"image\"");
        assert_eq!(
            err(&src),
            "quartet.toml:16: routes[1].prefix: must start with \"/\""
        );

        let src = GOOD.replace("prefix = \"/image\"", "prefix = \"/compute/\"");
        assert_eq!(
            err(&src),
            "quartet.toml:16: routes[1].prefix: routes[0] has the same prefix and host"
        );

        let src = format!("{GOOD}\n[policies.slow]\nretry = {{ attempts = 0 }}\n");
        assert_eq!(
            err(&src),
            "quartet.toml:24: policies.slow.retry.attempts: must be at least 1 (1 means no retries)"
        );

        let src = GOOD.replace("http://127.0.0.1:9292", "ftp://127.0.0.1:9292");
        assert_eq!(
            err(&src),
            "quartet.toml:9: upstreams.image-store.endpoints[0]: \"ftp://127.0.0.1:9292\" is not an http:// or https:// URL"
        );
    }

    #[test]
    fn an_endpoint_listed_twice_is_refused() {
        let e = err("[upstreams.a]\nendpoints = [\n  \"http://h:1\",\n  \"http://h:1\",\n]\n");
        assert_eq!(
            e,
            "quartet.toml:4: upstreams.a.endpoints[1]: \"http://h:1\" is listed twice"
        );
    }

    #[test]
    fn policy_default_breaker_error_points_at_the_table_key() {
        let src = "[policies.default.breaker]\nwindow = \"0s\"\n";
        assert_eq!(
            err(src),
            "quartet.toml:2: policies.default.breaker.window: must be greater than zero"
        );
    }

    #[test]
    fn header_timeout_is_read_and_must_not_be_zero() {
        let (c, _) = parse("[server]\nheader_timeout = \"5s\"\n", "q.toml", no_env).unwrap();
        assert_eq!(c.server.header_timeout, Duration::from_secs(5));
        assert_eq!(
            err("[server]\nheader_timeout = \"0s\"\n"),
            "quartet.toml:2: server.header_timeout: must be greater than zero"
        );
        assert_eq!(
            err("[server]\nheader_timeout = \"25h\"\n"),
            "quartet.toml:2: server.header_timeout: must be at most 24h"
        );
        assert!(parse("[server]\nheader_timeout = \"24h\"\n", "q.toml", no_env).is_ok());
    }

    #[test]
    fn durations_past_ten_years_are_refused_with_key_and_line() {
        // Each would be added to a clock reading (a deadline, a cache entry's expiry) and
        // panic there; `humantime` alone accepts up to u64::MAX seconds.
        for (text, key) in [
            (
                "[server]\nheader_timeout = \"18446744073709551615s\"\n",
                "server.header_timeout",
            ),
            (
                "[policies.default]\ntimeout = \"3651d\"\n",
                "policies.default.timeout",
            ),
            (
                "[identity]\ncache = { invalid_ttl = \"500000years\" }\n",
                "identity.cache.invalid_ttl",
            ),
        ] {
            let e = err(text);
            assert!(
                e.starts_with(&format!("quartet.toml:2: {key}:"))
                    && e.contains(quartet_policies::duration::TOO_LONG),
                "{text}: {e}"
            );
        }
        assert!(parse("[policies.default]\ntimeout = \"3650d\"\n", "q", no_env).is_ok());
    }

    #[test]
    fn admin_listen_off_loopback_needs_a_token() {
        let e = err("[server]\nadmin_listen = \"0.0.0.0:9090\"\n");
        assert!(
            e.starts_with("quartet.toml:2: server.admin_listen: 0.0.0.0:9090 is not a loopback"),
            "{e}"
        );
        let (c, _) = parse(
            "[server]\nadmin_listen = \"0.0.0.0:9090\"\nadmin_token = \"s3cret\"\n",
            "q",
            no_env,
        )
        .unwrap();
        assert_eq!(c.server.admin_token.unwrap().expose(), "s3cret");
        let e = err("[server]\nadmin_token = \"\"\n");
        assert!(e.starts_with("quartet.toml:2: server.admin_token:"), "{e}");
    }

    #[test]
    fn missing_tls_files_are_named() {
        let e = err(
            "[server]\ntls = { cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }\n",
        );
        assert!(
            e.starts_with("quartet.toml:2: server.tls.cert: no such file"),
            "{e}"
        );
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let (c, _) = parse(
            "[server]\nadmin_token = \"s3cret\"\n[amqp]\nurl = \"amqp://guest:pw@rabbit:5672/%2f\"\n",
            "q",
            no_env,
        )
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(!dbg.contains("pw@"), "{dbg}");
    }

    #[test]
    fn env_overrides_backend_urls_and_redacts_passwords() {
        let env = |name: &str| match name {
            "QUARTET_AMQP_URL" => Some("amqp://user:hunter2@rabbit:5672/%2f".to_string()),
            "QUARTET_UPSTREAM_IMAGE_STORE_ENDPOINTS" => {
                Some("http://10.0.0.1:9292, http://10.0.0.2:9292".to_string())
            }
            "QUARTET_UPSTREAM_COMPUTE_ENDPOINTS" => Some(" ".to_string()),
            _ => None,
        };
        let (c, overrides) = parse(GOOD, "q.toml", env).unwrap();
        assert_eq!(
            c.amqp.as_ref().unwrap().url,
            "amqp://user:hunter2@rabbit:5672/%2f"
        );
        assert_eq!(
            c.upstreams["image-store"].endpoints,
            ["http://10.0.0.1:9292", "http://10.0.0.2:9292"]
        );
        assert_eq!(c.upstreams["compute"].endpoints, ["http://127.0.0.1:8774"]);
        assert_eq!(
            overrides,
            vec![
                Override {
                    var: "QUARTET_AMQP_URL".into(),
                    key: "amqp.url".into(),
                    value: "amqp://***@rabbit:5672/%2f".into(),
                },
                Override {
                    var: "QUARTET_UPSTREAM_IMAGE_STORE_ENDPOINTS".into(),
                    key: "upstreams.image-store.endpoints".into(),
                    value: "http://10.0.0.1:9292,http://10.0.0.2:9292".into(),
                },
            ]
        );
    }

    #[test]
    fn env_override_is_validated_and_named() {
        let env = |name: &str| {
            (name == "QUARTET_UPSTREAM_COMPUTE_ENDPOINTS").then(|| "not a url".to_string())
        };
        let e = parse(GOOD, "q.toml", env).unwrap_err().to_string();
        assert!(
            e.starts_with("q.toml:6: upstreams.compute.endpoints[0]: "),
            "{e}"
        );
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_url("http://a:b@h:1/x@y"), "http://***@h:1/x@y");
        assert_eq!(redact_url("http://h:1/x"), "http://h:1/x");
        assert_eq!(redact_url("nonsense"), "nonsense");
    }

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(normalize_host("API.example.com:8080"), "api.example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        assert_eq!(normalize_host("example.com"), "example.com");
    }

    #[test]
    fn unreadable_file_is_named() {
        let e = load(Some(Path::new("/nonexistent/quartet.toml")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/nonexistent/quartet.toml: cannot read the file"),
            "{e}"
        );
    }
}
