//! The scenario file: serde types as written (`Scenario`), and the validated plan the runner
//! executes (`Plan`). Unknown keys are refused, durations are written like `"250ms"`, and
//! every error names the file, the line and the key: `FILE:LINE: KEY: message`.
//!
//! Keys that depend on another key (the request of a channel, the fields of an expectation
//! kind) are plain optional fields checked by [`Scenario::plan`], so a misplaced key is named
//! with the reason (`load[0].request.topic: is a key of rpc requests, not rest`).

use crate::location::{key_at, line_of, locate, KeyPath};
use quartet_policies::spec::{FaultSpec, ToxicSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// Upper bounds that keep a drill bounded in count and time.
pub const MAX_RATE: f64 = 20_000.0;
pub const MAX_CONCURRENCY: u32 = 4_096;
pub const MAX_DURATION: Duration = Duration::from_secs(3_600);
/// At most this many requests are recorded per load (rate x duration).
pub const MAX_REQUESTS: f64 = 2_000_000.0;

/// A scenario as written.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Shown in the report; the file name's stem when absent.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub quartet: QuartetSpec,
    #[serde(default)]
    pub load: Vec<LoadSpec>,
    #[serde(default)]
    pub faults: Vec<FaultStepSpec>,
    #[serde(default)]
    pub expect: Vec<ExpectSpec>,
}

/// `[quartet]`: the Quartet under test.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuartetSpec {
    /// Its public listener (`server.listen`), `host:port` on loopback.
    pub public: String,
    /// Its admin listener (`server.admin_listen`).
    pub admin: String,
    /// `server.admin_token`, when set there.
    #[serde(default, skip_serializing)]
    pub admin_token: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Rest,
    Rpc,
    Sql,
    Native,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Rest => "rest",
            Channel::Rpc => "rpc",
            Channel::Sql => "sql",
            Channel::Native => "native",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[[load]]`: one stream of requests.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    pub name: String,
    pub channel: Channel,
    /// The Quartet target (upstream, topic, SQL listener, driver) its breakers and faults
    /// are found under.
    pub target: String,
    pub request: RequestSpec,
    /// Requests per second, open loop: each request has a scheduled start and its latency
    /// counts from then, so a slow server cannot slow the load down (no coordinated
    /// omission).
    #[serde(default)]
    pub rate: Option<f64>,
    /// Requests in flight, closed loop: each worker sends the next when one ends.
    #[serde(default)]
    pub concurrency: Option<u32>,
    #[serde(with = "quartet_policies::duration")]
    pub duration: Duration,
    /// When the load starts, from the start of the drill.
    #[serde(default, with = "quartet_policies::duration")]
    pub start: Option<Duration>,
    /// The drill's own limit on one request (longer than Quartet's total timeout, so
    /// Quartet's is the one seen).
    #[serde(default = "default_timeout", with = "quartet_policies::duration")]
    pub timeout: Duration,
    /// Connections (workers) an open-loop load sends through (default: 64 for HTTP
    /// channels, 8 for SQL); a closed-loop load has one per unit of concurrency.
    #[serde(default)]
    pub connections: Option<u32>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[load.request]`: the keys of every channel; [`Scenario::plan`] checks that only the
/// load's channel's keys are there.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// rest: the HTTP method; rpc: the RPC method's name.
    #[serde(default)]
    pub method: Option<String>,
    /// rest: the path (and query) on Quartet's public listener.
    #[serde(default)]
    pub path: Option<String>,
    /// rest, rpc, native: extra HTTP headers (an `X-Auth-Token`, say).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// rest: the request body.
    #[serde(default)]
    pub body: Option<String>,
    /// rpc: the topic (`POST /rpc/{topic}`).
    #[serde(default)]
    pub topic: Option<String>,
    /// rpc, native: the arguments, a table.
    #[serde(default)]
    pub args: Option<toml::Table>,
    /// rpc: a cast (no answer awaited) instead of a call.
    #[serde(default)]
    pub cast: Option<bool>,
    /// sql: the PostgreSQL URL of a Quartet SQL listener.
    #[serde(default)]
    pub url: Option<String>,
    /// sql: the statement run once per request.
    #[serde(default)]
    pub statement: Option<String>,
    /// native: the driver instance (`POST /native/{driver}/{operation}`).
    #[serde(default)]
    pub driver: Option<String>,
    /// native: the operation.
    #[serde(default)]
    pub operation: Option<String>,
}

/// `[[faults]]`: one window of the timeline. Either request-level fault fields (set with
/// `PUT /admin/faults/{target}`, removed with `DELETE` when the window ends) or `breaker`
/// (set with `POST /admin/breakers/{target}`, set back to `closed` when it ends).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FaultStepSpec {
    #[serde(with = "quartet_policies::duration")]
    pub at: Duration,
    #[serde(with = "quartet_policies::duration")]
    pub duration: Duration,
    pub target: String,
    #[serde(default, with = "quartet_policies::duration")]
    pub delay: Option<Duration>,
    #[serde(default)]
    pub delay_percent: Option<f64>,
    #[serde(default)]
    pub abort_status: Option<u16>,
    #[serde(default)]
    pub abort_percent: Option<f64>,
    /// `"forced_open"` or `"disabled"`.
    #[serde(default)]
    pub breaker: Option<BreakerCommand>,
    /// With `breaker`: only this endpoint's breaker (`host:port`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Connection-level faults (toxics: latency, bandwidth, reset, stall, close_after) on
    /// the target's backend connections, set with the request fault in one body.
    #[serde(default)]
    pub connection: Vec<ToxicSpec>,
    /// A command (program and arguments, no shell) run when the window starts: what the
    /// admin API cannot do, such as stopping a database server. It must exit 0.
    #[serde(default)]
    pub run: Option<Vec<String>>,
    /// With `run`: the command run when the window ends (and when the drill stops early).
    #[serde(default)]
    pub undo: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerCommand {
    ForcedOpen,
    Closed,
    Disabled,
}

impl BreakerCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerCommand::ForcedOpen => "forced_open",
            BreakerCommand::Closed => "closed",
            BreakerCommand::Disabled => "disabled",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectKind {
    SuccessRate,
    Latency,
    BreakerOpens,
    BreakerCloses,
    MaxDuration,
    ErrorStatus,
}

impl ExpectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExpectKind::SuccessRate => "success_rate",
            ExpectKind::Latency => "latency",
            ExpectKind::BreakerOpens => "breaker_opens",
            ExpectKind::BreakerCloses => "breaker_closes",
            ExpectKind::MaxDuration => "max_duration",
            ExpectKind::ErrorStatus => "error_status",
        }
    }
}

/// `[[expect]]`: the keys of every kind; [`Scenario::plan`] checks which belong.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    pub kind: ExpectKind,
    #[serde(default)]
    pub load: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `["0s", "10s"]`, `"during fault 1"`, `"before fault 1"`, `"after fault 1"` or `"all"`.
    #[serde(default)]
    pub window: Option<toml::Value>,
    #[serde(default)]
    pub at_least: Option<f64>,
    #[serde(default)]
    pub at_most: Option<f64>,
    #[serde(default)]
    pub percentile: Option<f64>,
    #[serde(default, with = "quartet_policies::duration")]
    pub under: Option<Duration>,
    #[serde(default, with = "quartet_policies::duration")]
    pub within: Option<Duration>,
    /// breaker_opens: counted from the start of this fault (1 is the first `[[faults]]`);
    /// breaker_closes: from its end.
    #[serde(default)]
    pub fault: Option<usize>,
    /// Instead of `fault`: counted from this time of the drill.
    #[serde(default, with = "quartet_policies::duration")]
    pub at: Option<Duration>,
    #[serde(default)]
    pub status: Option<u16>,
}

// ---------------------------------------------------------------------------------------
// The validated plan.

/// A validated scenario, ready to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub name: String,
    pub file: String,
    pub scenario: Scenario,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub admin_token: Option<String>,
    pub loads: Vec<Load>,
    pub faults: Vec<FaultStep>,
    pub expects: Vec<Expect>,
}

#[derive(Clone, Debug)]
pub struct Load {
    pub name: String,
    pub channel: Channel,
    pub target: String,
    pub request: Request,
    pub mode: Mode,
    pub start: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub connections: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Rate(f64),
    Concurrency(u32),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    Rest {
        method: reqwest::Method,
        path: String,
        headers: BTreeMap<String, String>,
        body: Option<String>,
    },
    Rpc {
        topic: String,
        method: String,
        args: serde_json::Value,
        cast: bool,
        headers: BTreeMap<String, String>,
    },
    Sql {
        url: String,
        statement: String,
    },
    Native {
        driver: String,
        operation: String,
        args: serde_json::Value,
        headers: BTreeMap<String, String>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultStep {
    pub at: Duration,
    pub duration: Duration,
    pub target: String,
    pub action: FaultAction,
}

impl FaultStep {
    pub fn end(&self) -> Duration {
        self.at + self.duration
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum FaultAction {
    Request(FaultSpec),
    Breaker {
        state: BreakerCommand,
        endpoint: Option<String>,
    },
    /// `run` at the start, `undo` (if any) at the end.
    Command {
        run: Vec<String>,
        undo: Option<Vec<String>>,
    },
}

impl FaultAction {
    /// A short description for the table and the report: `50% abort 503`.
    pub fn describe(&self) -> String {
        match self {
            FaultAction::Request(f) => {
                let mut parts = Vec::new();
                if let (Some(d), true) = (f.delay, f.delay_percent > 0.0) {
                    parts.push(format!(
                        "{}% delay {}",
                        f.delay_percent,
                        humantime::format_duration(d)
                    ));
                }
                for t in &f.connection {
                    parts.push(format!("{} toxic", t.kind.as_str()));
                }
                if f.abort_percent > 0.0 {
                    let status = f
                        .abort_status
                        .map_or("error".to_string(), |s| s.to_string());
                    parts.push(format!("{}% abort {status}", f.abort_percent));
                }
                if parts.is_empty() {
                    "no-op fault".to_string()
                } else {
                    parts.join(", ")
                }
            }
            FaultAction::Breaker { state, endpoint } => match endpoint {
                Some(e) => format!("breaker {} ({e})", state.as_str()),
                None => format!("breaker {}", state.as_str()),
            },
            FaultAction::Command { run, .. } => format!("run `{}`", run.join(" ")),
        }
    }
}

/// A time window of the drill, resolved against the fault windows when evaluated.
#[derive(Clone, Debug, PartialEq)]
pub enum Window {
    All,
    Range(Duration, Duration),
    /// Indexes are 0-based here; the scenario writes them 1-based.
    During(usize),
    Before(usize),
    After(usize),
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Window::All => f.write_str("all"),
            Window::Range(a, b) => write!(
                f,
                "{}..{}",
                humantime::format_duration(*a),
                humantime::format_duration(*b)
            ),
            Window::During(i) => write!(f, "during fault {}", i + 1),
            Window::Before(i) => write!(f, "before fault {}", i + 1),
            Window::After(i) => write!(f, "after fault {}", i + 1),
        }
    }
}

/// Where a breaker expectation's `within` counts from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Anchor {
    FaultStart(usize),
    FaultEnd(usize),
    At(Duration),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    SuccessRate {
        load: usize,
        window: Window,
        at_least: f64,
    },
    Latency {
        load: usize,
        window: Window,
        percentile: f64,
        under: Duration,
    },
    BreakerOpens {
        target: String,
        endpoint: Option<String>,
        from: Anchor,
        within: Duration,
    },
    BreakerCloses {
        target: String,
        endpoint: Option<String>,
        from: Anchor,
        within: Duration,
    },
    MaxDuration {
        load: usize,
        under: Duration,
    },
    ErrorStatus {
        load: usize,
        window: Window,
        status: u16,
        at_least: Option<f64>,
        at_most: Option<f64>,
    },
}

// ---------------------------------------------------------------------------------------
// Errors.

use crate::location::invalid;
/// A scenario error as the user sees it: `FILE:LINE: KEY: message` (the one file-error
/// type, shared with the gateway's config).
pub use crate::location::FileError as ScenarioError;
pub use crate::location::{ErrorKind, Invalid};

/// Reads and validates a scenario file.
pub fn load(path: &Path) -> Result<Plan, ScenarioError> {
    let file = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| ScenarioError {
        file: file.clone(),
        line: None,
        key: None,
        kind: ErrorKind::Read(e),
    })?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("drill")
        .trim_end_matches(".drill")
        .to_string();
    parse(&src, &file, &stem)
}

/// Parses and validates `src` (named `file` in messages; `stem` names an unnamed scenario).
pub fn parse(src: &str, file: &str, stem: &str) -> Result<Plan, ScenarioError> {
    let scenario: Scenario = toml::from_str(src).map_err(|e| {
        let offset = e.span().map(|s| s.start);
        ScenarioError {
            file: file.to_string(),
            line: offset.map(|o| line_of(src, o)),
            key: offset.and_then(|o| key_at(src, o)),
            kind: ErrorKind::Syntax(Box::new(e)),
        }
    })?;
    scenario.plan(file, stem).map_err(|e| ScenarioError {
        file: file.to_string(),
        line: locate(src, &e.path),
        key: Some(e.path.clone()),
        kind: ErrorKind::Invalid(e),
    })
}

// ---------------------------------------------------------------------------------------
// Validation.

/// Resolves `host:port` to a loopback socket address; `localhost` is 127.0.0.1. The
/// network here is loopback-only, and a drill sends load: it refuses anything else.
pub fn loopback_addr(s: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = match s.parse() {
        Ok(a) => a,
        Err(_) => match s.rsplit_once(':') {
            Some(("localhost", port)) => {
                let port: u16 = port
                    .parse()
                    .map_err(|_| format!("`{s}` has no valid port"))?;
                SocketAddr::from(([127, 0, 0, 1], port))
            }
            _ => return Err(format!("`{s}` is not `host:port` with an IP address")),
        },
    };
    if !addr.ip().is_loopback() {
        return Err(format!(
            "`{s}` is not a loopback address: a drill sends load only to 127.0.0.1 or ::1"
        ));
    }
    if addr.port() == 0 {
        return Err(format!("`{s}` has port 0"));
    }
    Ok(addr)
}

/// Checks that a PostgreSQL URL (or key=value string) names only loopback TCP hosts or
/// Unix sockets.
pub fn check_sql_url(url: &str) -> Result<(), String> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| format!("not a PostgreSQL URL: {e}"))?;
    if config.get_hosts().is_empty() {
        return Err("names no host".to_string());
    }
    for host in config.get_hosts() {
        if let tokio_postgres::config::Host::Tcp(h) = host {
            let ok = h == "localhost"
                || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
                || h.trim_matches(['[', ']'])
                    .parse::<IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !ok {
                return Err(format!(
                    "host `{h}` is not a loopback address: a drill sends load only to 127.0.0.1 or ::1"
                ));
            }
        }
    }
    Ok(())
}

fn parse_window(v: &toml::Value, faults: usize, path: &KeyPath) -> Result<Window, Invalid> {
    let bad = || {
        invalid(
            path.clone(),
            "must be [\"START\", \"END\"] (durations), \"during fault N\", \"before fault N\", \"after fault N\" or \"all\"",
        )
    };
    match v {
        toml::Value::Array(a) => {
            let [toml::Value::String(a), toml::Value::String(b)] = a.as_slice() else {
                return Err(bad());
            };
            let a = humantime::parse_duration(a)
                .map_err(|e| invalid(path.clone().index(0), format!("not a duration: {e}")))?;
            let b = humantime::parse_duration(b)
                .map_err(|e| invalid(path.clone().index(1), format!("not a duration: {e}")))?;
            if b <= a {
                return Err(invalid(path.clone(), "the end must come after the start"));
            }
            Ok(Window::Range(a, b))
        }
        toml::Value::String(s) => {
            let s = s.trim();
            if s == "all" {
                return Ok(Window::All);
            }
            let words: Vec<&str> = s.split_whitespace().collect();
            let [which, "fault", n] = words.as_slice() else {
                return Err(bad());
            };
            let n: usize = n.parse().map_err(|_| bad())?;
            if n == 0 || n > faults {
                return Err(invalid(
                    path.clone(),
                    format!(
                        "names fault {n}, but the scenario has {faults} [[faults]] (numbered from 1)"
                    ),
                ));
            }
            match *which {
                "during" => Ok(Window::During(n - 1)),
                "before" => Ok(Window::Before(n - 1)),
                "after" => Ok(Window::After(n - 1)),
                _ => Err(bad()),
            }
        }
        _ => Err(bad()),
    }
}

fn args_json(args: &Option<toml::Table>) -> serde_json::Value {
    match args {
        Some(t) => toml_to_json(&toml::Value::Table(t.clone())),
        None => serde_json::Value::Object(serde_json::Map::new()),
    }
}

fn toml_to_json(v: &toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s.clone()),
        toml::Value::Integer(i) => J::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(*b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

impl Scenario {
    /// Validates the scenario into a plan; the error names the offending key.
    pub fn plan(&self, file: &str, stem: &str) -> Result<Plan, Invalid> {
        let root = KeyPath::default;
        let q = root().key("quartet");
        let public =
            loopback_addr(&self.quartet.public).map_err(|m| invalid(q.clone().key("public"), m))?;
        let admin =
            loopback_addr(&self.quartet.admin).map_err(|m| invalid(q.clone().key("admin"), m))?;
        if let Some(t) = &self.quartet.admin_token {
            if t.is_empty() {
                return Err(invalid(q.key("admin_token"), "must not be empty"));
            }
        }
        if self.load.is_empty() {
            return Err(invalid(
                root().key("load"),
                "a drill needs at least one [[load]]",
            ));
        }

        let mut loads = Vec::new();
        for (i, l) in self.load.iter().enumerate() {
            loads.push(self.plan_load(i, l, &loads)?);
        }

        let mut faults = Vec::new();
        for (i, f) in self.faults.iter().enumerate() {
            faults.push(plan_fault(i, f)?);
        }
        // Two windows on one target that overlap would remove each other's fault.
        for (i, a) in faults.iter().enumerate() {
            for (j, b) in faults.iter().enumerate().skip(i + 1) {
                let same_kind = matches!(
                    (&a.action, &b.action),
                    (FaultAction::Request(_), FaultAction::Request(_))
                        | (FaultAction::Breaker { .. }, FaultAction::Breaker { .. })
                );
                if a.target == b.target && same_kind && a.at < b.end() && b.at < a.end() {
                    return Err(invalid(
                        root().key("faults").index(j),
                        format!(
                            "overlaps fault {} on the same target `{}`: the first to end would remove the other",
                            i + 1,
                            a.target
                        ),
                    ));
                }
            }
        }

        let mut expects = Vec::new();
        for (i, e) in self.expect.iter().enumerate() {
            expects.push(self.plan_expect(i, e, &loads, faults.len())?);
        }

        let name = self
            .name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| stem.to_string());
        Ok(Plan {
            name,
            file: file.to_string(),
            scenario: self.clone(),
            public,
            admin,
            admin_token: self.quartet.admin_token.clone(),
            loads,
            faults,
            expects,
        })
    }

    fn plan_load(&self, i: usize, l: &LoadSpec, earlier: &[Load]) -> Result<Load, Invalid> {
        let p = KeyPath::default().key("load").index(i);
        if !valid_name(&l.name) {
            return Err(invalid(
                p.key("name"),
                "must be letters, digits, `_`, `-` or `.`",
            ));
        }
        if earlier.iter().any(|e| e.name == l.name) {
            return Err(invalid(
                p.key("name"),
                format!("`{}` names another load too", l.name),
            ));
        }
        if !valid_name(&l.target) {
            return Err(invalid(p.key("target"), "must name a Quartet target"));
        }
        let mode = match (l.rate, l.concurrency) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    p.key("concurrency"),
                    "give `rate` (open loop) or `concurrency` (closed loop), not both",
                ))
            }
            (None, None) => {
                return Err(invalid(
                    p,
                    "needs `rate` (requests per second) or `concurrency` (requests in flight)",
                ))
            }
            (Some(r), None) => {
                if !(r > 0.0 && r <= MAX_RATE) {
                    return Err(invalid(
                        p.key("rate"),
                        format!("must be above 0 and at most {MAX_RATE}"),
                    ));
                }
                Mode::Rate(r)
            }
            (None, Some(c)) => {
                if c == 0 || c > MAX_CONCURRENCY {
                    return Err(invalid(
                        p.key("concurrency"),
                        format!("must be between 1 and {MAX_CONCURRENCY}"),
                    ));
                }
                Mode::Concurrency(c)
            }
        };
        if l.duration.is_zero() || l.duration > MAX_DURATION {
            return Err(invalid(p.key("duration"), "must be above 0 and at most 1h"));
        }
        if let Mode::Rate(r) = mode {
            if r * l.duration.as_secs_f64() > MAX_REQUESTS {
                return Err(invalid(
                    p.key("rate"),
                    format!("rate x duration is over {MAX_REQUESTS} requests"),
                ));
            }
        }
        let start = l.start.unwrap_or_default();
        if start > MAX_DURATION {
            return Err(invalid(p.key("start"), "must be at most 1h"));
        }
        if l.timeout.is_zero() || l.timeout > Duration::from_secs(600) {
            return Err(invalid(p.key("timeout"), "must be above 0 and at most 10m"));
        }
        let default_connections = if l.channel == Channel::Sql { 8 } else { 64 };
        let connections =
            match (mode, l.connections) {
                (Mode::Concurrency(_), Some(_)) => return Err(invalid(
                    p.key("connections"),
                    "applies to `rate` loads; a `concurrency` load has one connection per worker",
                )),
                (Mode::Concurrency(c), None) => c,
                (Mode::Rate(_), Some(c)) if c == 0 || c > MAX_CONCURRENCY => {
                    return Err(invalid(
                        p.key("connections"),
                        format!("must be between 1 and {MAX_CONCURRENCY}"),
                    ))
                }
                (Mode::Rate(_), Some(c)) => c,
                (Mode::Rate(_), None) => default_connections,
            };
        let request = plan_request(&p.clone().key("request"), l.channel, &l.request)?;
        Ok(Load {
            name: l.name.clone(),
            channel: l.channel,
            target: l.target.clone(),
            request,
            mode,
            start,
            duration: l.duration,
            timeout: l.timeout,
            connections,
        })
    }

    fn plan_expect(
        &self,
        i: usize,
        e: &ExpectSpec,
        loads: &[Load],
        faults: usize,
    ) -> Result<Expect, Invalid> {
        let p = KeyPath::default().key("expect").index(i);
        let kind = e.kind.as_str();
        // Which keys each kind reads; any other key given is refused.
        let allowed: &[&str] = match e.kind {
            ExpectKind::SuccessRate => &["load", "window", "at_least"],
            ExpectKind::Latency => &["load", "window", "percentile", "under"],
            ExpectKind::BreakerOpens | ExpectKind::BreakerCloses => {
                &["target", "endpoint", "fault", "at", "within"]
            }
            ExpectKind::MaxDuration => &["load", "under"],
            ExpectKind::ErrorStatus => &["load", "window", "status", "at_least", "at_most"],
        };
        let given = [
            ("load", e.load.is_some()),
            ("target", e.target.is_some()),
            ("endpoint", e.endpoint.is_some()),
            ("window", e.window.is_some()),
            ("at_least", e.at_least.is_some()),
            ("at_most", e.at_most.is_some()),
            ("percentile", e.percentile.is_some()),
            ("under", e.under.is_some()),
            ("within", e.within.is_some()),
            ("fault", e.fault.is_some()),
            ("at", e.at.is_some()),
            ("status", e.status.is_some()),
        ];
        for (key, present) in given {
            if present && !allowed.contains(&key) {
                return Err(invalid(
                    p.clone().key(key),
                    format!(
                        "is not a key of `{kind}` expectations (they take {})",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        let need = |key: &str| invalid(p.clone().key(key), format!("is required for `{kind}`"));
        let load = || -> Result<usize, Invalid> {
            let name = e.load.as_ref().ok_or_else(|| need("load"))?;
            loads.iter().position(|l| &l.name == name).ok_or_else(|| {
                invalid(p.clone().key("load"), format!("`{name}` names no [[load]]"))
            })
        };
        let window = || -> Result<Window, Invalid> {
            match &e.window {
                None => Ok(Window::All),
                Some(v) => parse_window(v, faults, &p.clone().key("window")),
            }
        };
        let share = |key: &str, v: Option<f64>| -> Result<Option<f64>, Invalid> {
            match v {
                Some(x) if !(0.0..=1.0).contains(&x) => Err(invalid(
                    p.clone().key(key),
                    "must be a share between 0 and 1 (0.99 is 99%)",
                )),
                other => Ok(other),
            }
        };
        let anchor = |at_end: bool| -> Result<Anchor, Invalid> {
            match (e.fault, e.at) {
                (Some(_), Some(_)) => Err(invalid(
                    p.clone().key("at"),
                    "give `fault` or `at`, not both",
                )),
                (None, None) => Err(invalid(
                    p.clone().key("fault"),
                    format!("`{kind}` needs `fault = N` (counted from that fault) or `at` (a time of the drill)"),
                )),
                (Some(n), None) => {
                    if n == 0 || n > faults {
                        Err(invalid(
                            p.clone().key("fault"),
                            format!("names fault {n}, but the scenario has {faults} [[faults]] (numbered from 1)"),
                        ))
                    } else if at_end {
                        Ok(Anchor::FaultEnd(n - 1))
                    } else {
                        Ok(Anchor::FaultStart(n - 1))
                    }
                }
                (None, Some(t)) => Ok(Anchor::At(t)),
            }
        };
        let breaker_target = || -> Result<String, Invalid> {
            let t = e.target.clone().ok_or_else(|| need("target"))?;
            if !valid_name(&t) {
                return Err(invalid(
                    p.clone().key("target"),
                    "must name a Quartet target",
                ));
            }
            Ok(t)
        };
        Ok(match e.kind {
            ExpectKind::SuccessRate => Expect::SuccessRate {
                load: load()?,
                window: window()?,
                at_least: share("at_least", e.at_least)?.ok_or_else(|| need("at_least"))?,
            },
            ExpectKind::Latency => {
                let percentile = e.percentile.unwrap_or(99.0);
                if !(percentile > 0.0 && percentile <= 100.0) {
                    return Err(invalid(
                        p.key("percentile"),
                        "must be above 0 and at most 100",
                    ));
                }
                Expect::Latency {
                    load: load()?,
                    window: window()?,
                    percentile,
                    under: e.under.ok_or_else(|| need("under"))?,
                }
            }
            ExpectKind::BreakerOpens | ExpectKind::BreakerCloses => {
                let closes = e.kind == ExpectKind::BreakerCloses;
                let target = breaker_target()?;
                let from = anchor(closes)?;
                let within = e.within.ok_or_else(|| need("within"))?;
                let endpoint = e.endpoint.clone();
                if closes {
                    Expect::BreakerCloses {
                        target,
                        endpoint,
                        from,
                        within,
                    }
                } else {
                    Expect::BreakerOpens {
                        target,
                        endpoint,
                        from,
                        within,
                    }
                }
            }
            ExpectKind::MaxDuration => {
                let load = load()?;
                let under = e.under.ok_or_else(|| need("under"))?;
                if under >= loads[load].timeout {
                    return Err(invalid(
                        p.key("under"),
                        format!(
                            "must be less than the load's own `timeout` ({}), or a request the drill itself cut off would pass unseen",
                            humantime::format_duration(loads[load].timeout)
                        ),
                    ));
                }
                Expect::MaxDuration { load, under }
            }
            ExpectKind::ErrorStatus => {
                let load = load()?;
                if loads[load].channel == Channel::Sql {
                    return Err(invalid(
                        p.key("load"),
                        "`error_status` reads HTTP statuses; a sql load has none (use success_rate)",
                    ));
                }
                let at_least = share("at_least", e.at_least)?;
                let at_most = share("at_most", e.at_most)?;
                if at_least.is_none() && at_most.is_none() {
                    return Err(invalid(
                        p.key("at_least"),
                        "give `at_least`, `at_most` or both",
                    ));
                }
                let status = e.status.ok_or_else(|| need("status"))?;
                if !(100..=599).contains(&status) {
                    return Err(invalid(
                        p.key("status"),
                        "must be an HTTP status between 100 and 599",
                    ));
                }
                Expect::ErrorStatus {
                    load,
                    window: window()?,
                    status,
                    at_least,
                    at_most,
                }
            }
        })
    }
}

fn plan_request(p: &KeyPath, channel: Channel, r: &RequestSpec) -> Result<Request, Invalid> {
    let allowed: &[&str] = match channel {
        Channel::Rest => &["method", "path", "headers", "body"],
        Channel::Rpc => &["topic", "method", "args", "cast", "headers"],
        Channel::Sql => &["url", "statement"],
        Channel::Native => &["driver", "operation", "args", "headers"],
    };
    let given = [
        ("method", r.method.is_some()),
        ("path", r.path.is_some()),
        ("headers", !r.headers.is_empty()),
        ("body", r.body.is_some()),
        ("topic", r.topic.is_some()),
        ("args", r.args.is_some()),
        ("cast", r.cast.is_some()),
        ("url", r.url.is_some()),
        ("statement", r.statement.is_some()),
        ("driver", r.driver.is_some()),
        ("operation", r.operation.is_some()),
    ];
    for (key, present) in given {
        if present && !allowed.contains(&key) {
            return Err(invalid(
                p.clone().key(key),
                format!(
                    "is not a key of {channel} requests (they take {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    let need = |key: &str| {
        invalid(
            p.clone().key(key),
            format!("is required for {channel} requests"),
        )
    };
    for name in r.headers.keys() {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(invalid(
                p.clone().key("headers").key(name.as_str()),
                "is not a valid header name",
            ));
        }
    }
    for (name, value) in &r.headers {
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(invalid(
                p.clone().key("headers").key(name.as_str()),
                "is not a valid header value",
            ));
        }
    }
    let segment = |key: &str, v: &Option<String>| -> Result<String, Invalid> {
        let v = v.clone().ok_or_else(|| need(key))?;
        if !valid_name(&v) {
            return Err(invalid(
                p.clone().key(key),
                "must be letters, digits, `_`, `-`, `.` or `:` (it goes into the URL path)",
            ));
        }
        Ok(v)
    };
    Ok(match channel {
        Channel::Rest => {
            let method = r.method.clone().unwrap_or_else(|| "GET".to_string());
            let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                .map_err(|_| invalid(p.clone().key("method"), "is not an HTTP method"))?;
            let path = r.path.clone().ok_or_else(|| need("path"))?;
            if !path.starts_with('/') {
                return Err(invalid(p.clone().key("path"), "must start with `/`"));
            }
            if path.parse::<reqwest::Url>().is_ok() || path.starts_with("//") {
                return Err(invalid(
                    p.clone().key("path"),
                    "must be a path on Quartet's public listener, not a URL",
                ));
            }
            if reqwest::Url::parse("http://127.0.0.1/")
                .and_then(|u| u.join(&path))
                .is_err()
                || path.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(invalid(p.clone().key("path"), "is not a valid path"));
            }
            Request::Rest {
                method,
                path,
                headers: r.headers.clone(),
                body: r.body.clone(),
            }
        }
        Channel::Rpc => Request::Rpc {
            topic: segment("topic", &r.topic)?,
            method: r
                .method
                .clone()
                .filter(|m| !m.is_empty())
                .ok_or_else(|| need("method"))?,
            args: args_json(&r.args),
            cast: r.cast.unwrap_or(false),
            headers: r.headers.clone(),
        },
        Channel::Sql => {
            let url = r.url.clone().ok_or_else(|| need("url"))?;
            check_sql_url(&url).map_err(|m| invalid(p.clone().key("url"), m))?;
            let statement = r
                .statement
                .clone()
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| need("statement"))?;
            Request::Sql { url, statement }
        }
        Channel::Native => Request::Native {
            driver: segment("driver", &r.driver)?,
            operation: segment("operation", &r.operation)?,
            args: args_json(&r.args),
            headers: r.headers.clone(),
        },
    })
}

fn plan_fault(i: usize, f: &FaultStepSpec) -> Result<FaultStep, Invalid> {
    let p = KeyPath::default().key("faults").index(i);
    if f.duration.is_zero() {
        return Err(invalid(p.key("duration"), "must be greater than zero"));
    }
    if f.at + f.duration > MAX_DURATION {
        return Err(invalid(p.key("duration"), "the window must end within 1h"));
    }
    if !valid_name(&f.target) {
        return Err(invalid(p.key("target"), "must name a Quartet target"));
    }
    let request_keys = [
        ("delay", f.delay.is_some()),
        ("delay_percent", f.delay_percent.is_some()),
        ("abort_status", f.abort_status.is_some()),
        ("abort_percent", f.abort_percent.is_some()),
        ("connection", !f.connection.is_empty()),
    ];
    let first_request_key = request_keys
        .iter()
        .find(|(_, given)| *given)
        .map(|(k, _)| *k);
    if let Some(run) = &f.run {
        let other = if f.breaker.is_some() {
            Some("breaker")
        } else {
            first_request_key
        };
        if let Some(key) = other {
            return Err(invalid(
                p.key(key),
                "a fault window is either a command (`run`), a breaker state or a request fault, not two of them",
            ));
        }
        if f.endpoint.is_some() {
            return Err(invalid(p.key("endpoint"), "applies to `breaker` windows"));
        }
        let empty = |c: &[String]| c.first().is_none_or(|prog| prog.trim().is_empty());
        if empty(run) {
            return Err(invalid(
                p.key("run"),
                "must name a program: [\"program\", \"arg\", ...]",
            ));
        }
        if f.undo.as_deref().is_some_and(empty) {
            return Err(invalid(
                p.key("undo"),
                "must name a program: [\"program\", \"arg\", ...]",
            ));
        }
        return Ok(FaultStep {
            at: f.at,
            duration: f.duration,
            target: f.target.clone(),
            action: FaultAction::Command {
                run: run.clone(),
                undo: f.undo.clone(),
            },
        });
    }
    if f.undo.is_some() {
        return Err(invalid(p.key("undo"), "applies with `run`"));
    }
    let action = match (f.breaker, first_request_key) {
        (Some(_), Some(key)) => {
            return Err(invalid(
                p.key(key),
                "a fault window is either a breaker state or a request fault, not both",
            ))
        }
        (None, None) => {
            return Err(invalid(
                p,
                "needs a request fault (delay, delay_percent, abort_status, abort_percent, connection), `breaker` or `run`",
            ))
        }
        (Some(state), None) => {
            if state == BreakerCommand::Closed {
                return Err(invalid(
                    p.key("breaker"),
                    "must be \"forced_open\" or \"disabled\" (a window ends by setting it back to \"closed\")",
                ));
            }
            FaultAction::Breaker {
                state,
                endpoint: f.endpoint.clone(),
            }
        }
        (None, Some(_)) => {
            if f.endpoint.is_some() {
                return Err(invalid(
                    p.key("endpoint"),
                    "applies to `breaker` windows; request faults are set per target",
                ));
            }
            let spec = FaultSpec {
                delay: f.delay,
                delay_percent: f.delay_percent.unwrap_or(if f.delay.is_some() {
                    100.0
                } else {
                    0.0
                }),
                abort_status: f.abort_status,
                abort_percent: f.abort_percent.unwrap_or(if f.abort_status.is_some() {
                    100.0
                } else {
                    0.0
                }),
                connection: f.connection.clone(),
            };
            // Each toxic first, so its key is located as `connection[i].key`.
            for (i, t) in f.connection.iter().enumerate() {
                t.validate().map_err(|e| {
                    invalid(
                        p.clone().key("connection").index(i).key(&e.key),
                        e.message,
                    )
                })?;
            }
            spec.validate()
                .map_err(|e| invalid(p.clone().key(&e.key), e.message))?;
            FaultAction::Request(spec)
        }
    };
    Ok(FaultStep {
        at: f.at,
        duration: f.duration,
        target: f.target.clone(),
        action,
    })
}
