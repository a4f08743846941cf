//! Policies as data: the `[policies.NAME]` tables of the config. Serde types with
//! defaults; unknown keys rejected; durations written like `"250ms"`.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// One named policy (`[policies.NAME]`). Every field has a default, so `[policies.x]`
/// with nothing in it is the default policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySpec {
    /// Total time for a call, retries included.
    #[serde(with = "crate::duration")]
    pub timeout: Duration,
    /// Time for one attempt.
    #[serde(with = "crate::duration")]
    pub per_try_timeout: Duration,
    pub retry: RetrySpec,
    pub breaker: BreakerSpec,
    /// Calls in flight at once for the target; more are refused at once (no queue).
    pub concurrency: usize,
    /// Token bucket; absent means no rate limit.
    pub rate_limit: Option<RateLimitSpec>,
    /// A fault injected from the start (the admin API can set or clear it at run time).
    pub fault: Option<FaultSpec>,
}

impl Default for PolicySpec {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            per_try_timeout: Duration::from_secs(10),
            retry: RetrySpec::default(),
            breaker: BreakerSpec::default(),
            concurrency: 1024,
            rate_limit: None,
            fault: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    /// Attempts in all, the first included; 1 disables retries.
    pub attempts: u32,
    /// Base of the exponential backoff (full jitter: a delay is uniform in [0, base*2^n]).
    #[serde(with = "crate::duration")]
    pub backoff: Duration,
    #[serde(with = "crate::duration")]
    pub max_backoff: Duration,
    /// Retries allowed as a share of recent requests (0.2 = 20 %), on top of `min_per_second`.
    pub budget: f64,
    /// Retries always allowed per second, whatever the traffic (the budget's floor).
    pub min_per_second: u32,
    /// How far back "recent requests" reach for the budget.
    #[serde(with = "crate::duration")]
    pub budget_window: Duration,
    /// Request bodies up to this many bytes are buffered so they can be sent again;
    /// larger (streaming) bodies are never retried.
    pub buffer_limit: usize,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            budget: 0.2,
            min_per_second: 10,
            budget_window: Duration::from_secs(10),
            buffer_limit: 64 * 1024,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSpec {
    /// Opens after this many failures in a row (0 disables this trigger).
    pub consecutive_failures: u32,
    /// Opens when the failure share over `window` reaches this, once `min_calls` were made
    /// (a value above 1 disables this trigger).
    pub failure_rate: f64,
    #[serde(with = "crate::duration")]
    pub window: Duration,
    pub min_calls: u32,
    /// A call slower than this counts as slow (absent: slow calls are not tracked).
    #[serde(with = "crate::duration")]
    pub slow_call_duration: Option<Duration>,
    /// Opens when the slow share over `window` reaches this, once `min_calls` were made.
    pub slow_call_rate: f64,
    /// How long it stays open before letting probes through.
    #[serde(with = "crate::duration")]
    pub open_for: Duration,
    /// Calls let through while half-open; all must succeed to close it again.
    pub half_open_probes: u32,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_calls: 20,
            slow_call_duration: None,
            slow_call_rate: 1.0,
            open_for: Duration::from_secs(5),
            half_open_probes: 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub per_second: u32,
    #[serde(default = "default_burst")]
    pub burst: u32,
}

fn default_burst() -> u32 {
    100
}

/// A fault to inject: a delay and/or an abort, each for a share of calls.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultSpec {
    #[serde(with = "crate::duration")]
    pub delay: Option<Duration>,
    /// Share of calls delayed, in percent (0 to 100).
    pub delay_percent: f64,
    /// Status the aborted calls get (HTTP status; other channels map it to their own error).
    pub abort_status: Option<u16>,
    /// Share of calls aborted, in percent (0 to 100).
    pub abort_percent: f64,
    /// Connection-level faults ("toxics", as in Toxiproxy) applied to the byte streams of
    /// the target's backend connections (SQL backends, the AMQP broker, HTTP upstreams)
    /// by [`crate::fault::toxic::Toxic`]. Set with the request-level fault in one body
    /// (`PUT /admin/faults/{target}`); empty means none, and is left out when written.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub connection: Vec<ToxicSpec>,
}

/// Which way a toxic acts, seen from the client: `upstream` is client to backend (what is
/// written into [`crate::fault::toxic::Toxic`]), `downstream` backend to client (what is
/// read from it). Toxiproxy's default, `downstream`, is ours too.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Upstream,
    #[default]
    Downstream,
    Both,
}

impl Direction {
    /// True when a toxic set for `self` acts on data flowing `way`
    /// (`way` is `Upstream` or `Downstream`).
    pub fn covers(self, way: Direction) -> bool {
        self == Direction::Both || self == way
    }
}

/// What a toxic does to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToxicKind {
    /// Delays each chunk by `latency` ± `jitter`.
    Latency,
    /// Lets at most `rate` bytes per second through.
    Bandwidth,
    /// Resets the connection (reads and writes fail with `ConnectionReset`), at once or
    /// `timeout` after the toxic applies (Toxiproxy's `reset_peer`).
    #[serde(alias = "reset_peer")]
    Reset,
    /// Stops all data; resets the connection `timeout` after the toxic applies, or holds
    /// it until the toxic is removed when `timeout` is 0 or absent (Toxiproxy's `timeout`).
    #[serde(alias = "timeout")]
    Stall,
    /// Closes the connection once `bytes` bytes went through (Toxiproxy's `limit_data`).
    #[serde(alias = "limit_data")]
    CloseAfter,
}

impl ToxicKind {
    /// The name used in metric labels and messages (`close_after`).
    pub fn as_str(self) -> &'static str {
        match self {
            ToxicKind::Latency => "latency",
            ToxicKind::Bandwidth => "bandwidth",
            ToxicKind::Reset => "reset",
            ToxicKind::Stall => "stall",
            ToxicKind::CloseAfter => "close_after",
        }
    }
}

impl std::fmt::Display for ToxicKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One connection-level fault. The attributes are flat beside `kind`, as in
/// `{"kind": "latency", "latency": "100ms", "jitter": "10ms"}`; [`ToxicSpec::validate`]
/// rejects an attribute that does not apply to the kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToxicSpec {
    pub kind: ToxicKind,
    #[serde(default)]
    pub direction: Direction,
    /// Chance (0 to 1) that the toxic applies to a connection, drawn once per connection
    /// (Toxiproxy's `toxicity`).
    #[serde(default = "always")]
    pub probability: f64,
    /// `latency`: the delay of each chunk.
    #[serde(
        default,
        with = "crate::duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub latency: Option<Duration>,
    /// `latency`: each delay is drawn uniformly in `latency` ± `jitter` (never below 0).
    #[serde(
        default,
        with = "crate::duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub jitter: Option<Duration>,
    /// `bandwidth`: bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// `reset`, `stall`: time from the toxic applying to the reset (0 or absent: a reset
    /// at once; a stall that holds until removed).
    #[serde(
        default,
        with = "crate::duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// `close_after`: bytes let through (in the toxic's direction) before the close.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

fn always() -> f64 {
    1.0
}

impl ToxicSpec {
    fn of(kind: ToxicKind) -> Self {
        Self {
            kind,
            direction: Direction::default(),
            probability: 1.0,
            latency: None,
            jitter: None,
            rate: None,
            timeout: None,
            bytes: None,
        }
    }
    /// Delays each chunk by `latency` ± `jitter`.
    pub fn latency(latency: Duration, jitter: Duration) -> Self {
        Self {
            latency: Some(latency),
            jitter: (!jitter.is_zero()).then_some(jitter),
            ..Self::of(ToxicKind::Latency)
        }
    }
    /// At most `rate` bytes per second.
    pub fn bandwidth(rate: u64) -> Self {
        Self {
            rate: Some(rate),
            ..Self::of(ToxicKind::Bandwidth)
        }
    }
    /// A reset `after` the toxic applies (zero: at once).
    pub fn reset(after: Duration) -> Self {
        Self {
            timeout: (!after.is_zero()).then_some(after),
            ..Self::of(ToxicKind::Reset)
        }
    }
    /// No data; a reset after `timeout`, or held until removed when it is zero.
    pub fn stall(timeout: Duration) -> Self {
        Self {
            timeout: (!timeout.is_zero()).then_some(timeout),
            ..Self::of(ToxicKind::Stall)
        }
    }
    /// A close once `bytes` bytes went through.
    pub fn close_after(bytes: u64) -> Self {
        Self {
            bytes: Some(bytes),
            ..Self::of(ToxicKind::CloseAfter)
        }
    }
    /// The same toxic acting on `direction`.
    pub fn with_direction(self, direction: Direction) -> Self {
        Self { direction, ..self }
    }
    /// The same toxic applying to a connection with chance `probability`.
    pub fn with_probability(self, probability: f64) -> Self {
        Self {
            probability,
            ..self
        }
    }

    /// Checks values serde cannot check; keys are named relative to the toxic (`rate`).
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |key: &str, message: String| {
            Err(SpecError {
                key: key.to_string(),
                message,
            })
        };
        if !(0.0..=1.0).contains(&self.probability) {
            return err("probability", "must be between 0 and 1".to_string());
        }
        let kind = self.kind;
        let (required, allowed): (&[&str], &[&str]) = match kind {
            ToxicKind::Latency => (&["latency"], &["latency", "jitter"]),
            ToxicKind::Bandwidth => (&["rate"], &["rate"]),
            ToxicKind::Reset | ToxicKind::Stall => (&[], &["timeout"]),
            ToxicKind::CloseAfter => (&["bytes"], &["bytes"]),
        };
        let present = [
            ("latency", self.latency.is_some()),
            ("jitter", self.jitter.is_some()),
            ("rate", self.rate.is_some()),
            ("timeout", self.timeout.is_some()),
            ("bytes", self.bytes.is_some()),
        ];
        for (key, set) in present {
            if set && !allowed.contains(&key) {
                return err(key, format!("does not apply to a {kind} toxic"));
            }
            if !set && required.contains(&key) {
                return err(key, format!("is required for a {kind} toxic"));
            }
        }
        if self.rate == Some(0) {
            return err("rate", "must be at least 1 byte per second".to_string());
        }
        Ok(())
    }
}

/// A spec's problems, each naming its key relative to the policy (`retry.budget`).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SpecError {
    pub key: String,
    pub message: String,
}

impl PolicySpec {
    /// Checks values serde cannot check. Keys are named relative to the policy table.
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |key: &str, message: &str| {
            Err(SpecError {
                key: key.to_string(),
                message: message.to_string(),
            })
        };
        if self.timeout.is_zero() {
            return err("timeout", "must be greater than zero");
        }
        if self.per_try_timeout.is_zero() {
            return err("per_try_timeout", "must be greater than zero");
        }
        if self.retry.attempts == 0 {
            return err("retry.attempts", "must be at least 1 (1 means no retries)");
        }
        if !(0.0..=1000.0).contains(&self.retry.budget) {
            return err("retry.budget", "must be a share between 0 and 1000");
        }
        if self.retry.max_backoff < self.retry.backoff {
            return err("retry.max_backoff", "must not be less than retry.backoff");
        }
        if self.retry.budget_window.is_zero() {
            return err("retry.budget_window", "must be greater than zero");
        }
        if self.breaker.window.is_zero() {
            return err("breaker.window", "must be greater than zero");
        }
        if self.breaker.failure_rate < 0.0 || self.breaker.failure_rate.is_nan() {
            return err(
                "breaker.failure_rate",
                "must be 0 or more (above 1 disables it)",
            );
        }
        if self.breaker.half_open_probes == 0 {
            return err("breaker.half_open_probes", "must be at least 1");
        }
        if self.concurrency == 0 {
            return err("concurrency", "must be at least 1");
        }
        if let Some(rl) = &self.rate_limit {
            if rl.per_second == 0 {
                return err("rate_limit.per_second", "must be at least 1");
            }
            if rl.burst == 0 {
                return err("rate_limit.burst", "must be at least 1");
            }
        }
        if let Some(f) = &self.fault {
            f.validate().map_err(|e| SpecError {
                key: format!("fault.{}", e.key),
                message: e.message,
            })?;
        }
        Ok(())
    }
}

impl FaultSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |key: &str, message: &str| {
            Err(SpecError {
                key: key.to_string(),
                message: message.to_string(),
            })
        };
        if !(0.0..=100.0).contains(&self.delay_percent) {
            return err("delay_percent", "must be between 0 and 100");
        }
        if !(0.0..=100.0).contains(&self.abort_percent) {
            return err("abort_percent", "must be between 0 and 100");
        }
        if self.delay_percent > 0.0 && self.delay.is_none() {
            return err("delay", "is required when delay_percent is above 0");
        }
        if let Some(s) = self.abort_status {
            if !(100..=599).contains(&s) {
                return err("abort_status", "must be an HTTP status between 100 and 599");
            }
        }
        for (i, toxic) in self.connection.iter().enumerate() {
            toxic.validate().map_err(|e| SpecError {
                key: format!("connection[{i}].{}", e.key),
                message: e.message,
            })?;
        }
        Ok(())
    }
}
