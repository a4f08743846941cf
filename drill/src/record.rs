//! What a drill records: every request, the breaker states sampled, the fault windows as
//! applied. Plain data, so expectations and reports are computed (and tested) from it
//! without a network. Times are offsets from the start of the drill.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How one request ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// An HTTP answer (rest, rpc, native).
    Status { status: u16 },
    /// A SQL statement that completed.
    SqlOk,
    /// A SQL error answered by the server (`code` is the SQLSTATE).
    SqlError { code: String },
    /// The drill's own per-request timeout elapsed.
    Timeout,
    /// No connection could be made.
    Connect,
    /// The connection failed after it was made (reset, bad answer).
    Transport,
    /// The drill ended (or the connection pool could not keep up) before it was sent.
    NotSent,
}

impl Outcome {
    pub fn is_success(&self) -> bool {
        match self {
            Outcome::Status { status } => *status < 400,
            Outcome::SqlOk => true,
            _ => false,
        }
    }
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Status { status } => Some(*status),
            _ => None,
        }
    }
    /// A short label: `200`, `503`, `sql_ok`, `sql 57P01`, `timeout`...
    pub fn label(&self) -> String {
        match self {
            Outcome::Status { status } => status.to_string(),
            Outcome::SqlOk => "sql_ok".to_string(),
            Outcome::SqlError { code } => format!("sql {code}"),
            Outcome::Timeout => "timeout".to_string(),
            Outcome::Connect => "connect".to_string(),
            Outcome::Transport => "transport".to_string(),
            Outcome::NotSent => "not_sent".to_string(),
        }
    }
}

/// One request. `scheduled` is when it should have started (open loop) or started
/// (closed loop): latency counts from there. `sent` is when it left, `end` when it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub scheduled: Duration,
    pub sent: Duration,
    pub end: Duration,
    pub outcome: Outcome,
}

impl Record {
    /// From the scheduled start: what a user waiting for it saw.
    pub fn latency(&self) -> Duration {
        self.end.saturating_sub(self.scheduled)
    }
    /// From the moment it was sent: how long Quartet held it.
    pub fn service_time(&self) -> Duration {
        self.end.saturating_sub(self.sent)
    }
}

/// A breaker's state as `GET /admin/breakers` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
    #[serde(other)]
    Unknown,
}

impl BreakerState {
    /// Open in any way: calls are refused, or only probes pass.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            BreakerState::Open | BreakerState::ForcedOpen | BreakerState::HalfOpen
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::Disabled => "disabled",
            BreakerState::Unknown => "unknown",
        }
    }
}

/// One breaker seen in one sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BreakerObs {
    pub channel: String,
    pub target: String,
    pub endpoint: String,
    pub state: BreakerState,
}

impl BreakerObs {
    /// Whether `target` (a name or `channel:name`) and the optional endpoint select it.
    pub fn matches(&self, target: &str, endpoint: Option<&str>) -> bool {
        let target_ok = self.target == target
            || target
                .split_once(':')
                .is_some_and(|(c, n)| c == self.channel && n == self.target);
        target_ok && endpoint.is_none_or(|e| e == self.endpoint)
    }
}

/// Every breaker at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSample {
    pub t: Duration,
    pub breakers: Vec<BreakerObs>,
}

/// A fault window: planned, and as applied (`None` when it never was). Setting a fault
/// takes a request to the admin API, so each edge has two times: when the drill asked
/// (`requested_at`, `removing_at`) and when Quartet confirmed (`applied_at`,
/// `removed_at`); in between, a request may or may not meet the fault.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultWindow {
    pub target: String,
    pub description: String,
    pub planned_start: Duration,
    pub planned_end: Duration,
    pub requested_at: Option<Duration>,
    pub applied_at: Option<Duration>,
    pub removing_at: Option<Duration>,
    pub removed_at: Option<Duration>,
}

impl FaultWindow {
    /// Surely set from here on (confirmed).
    pub fn start(&self) -> Duration {
        self.applied_at.unwrap_or(self.planned_start)
    }
    /// Surely not set before this (asked for).
    pub fn start_requested(&self) -> Duration {
        self.requested_at.unwrap_or_else(|| self.start())
    }
    /// Surely gone from here on (confirmed).
    pub fn end(&self) -> Duration {
        self.removed_at.unwrap_or(self.planned_end)
    }
    /// Surely still set before this (removal asked for).
    pub fn end_requested(&self) -> Duration {
        self.removing_at.unwrap_or_else(|| self.end())
    }
}

/// The requests of one load.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadRecording {
    pub name: String,
    pub records: Vec<Record>,
}

/// Everything a drill saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recording {
    /// How long the drill ran.
    pub elapsed: Duration,
    pub loads: Vec<LoadRecording>,
    pub samples: Vec<BreakerSample>,
    pub faults: Vec<FaultWindow>,
    /// Stopped early (Ctrl-C or an error): expectations on the missing part fail.
    pub interrupted: bool,
}
