//! Exponential backoff with full jitter.

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The delay before retry number `retry` (1 for the first retry): uniform in
    /// `[0, min(max, base * 2^(retry-1))]`.
    pub fn delay(&self, retry: u32) -> Duration {
        let _ = (retry, self.base, self.max);
        todo!("backoff")
    }
}
