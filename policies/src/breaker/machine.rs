//! The breaker's state machine, pure: time is an argument.

use crate::spec::BreakerSpec;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
}

/// What the admin API may set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminState {
    /// Back to normal operation, closed, counters reset.
    Closed,
    /// Refuse every call until set otherwise.
    ForcedOpen,
    /// Let every call through and count nothing.
    Disabled,
}

#[derive(Debug)]
pub struct Breaker {
    spec: BreakerSpec,
}

impl Breaker {
    pub fn new(spec: BreakerSpec) -> Self {
        Self { spec }
    }

    /// Asks to let one call through. `Err(retry_after)` when refused.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        let _ = (now, &self.spec);
        todo!("machine")
    }

    /// Records the outcome of a call that was let through.
    pub fn record(&mut self, now: Instant, failure: bool, elapsed: Duration) {
        let _ = (now, failure, elapsed);
        todo!("machine")
    }

    /// Gives back a permit whose call ended with no outcome (cancelled).
    pub fn release(&mut self, now: Instant) {
        let _ = now;
        todo!("machine")
    }

    pub fn state(&mut self, now: Instant) -> BreakerState {
        let _ = now;
        todo!("machine")
    }

    pub fn set(&mut self, now: Instant, state: AdminState) {
        let _ = (now, state);
        todo!("machine")
    }
}
