//! Exponential backoff with full jitter.
//!
//! Why full jitter: when a backend hiccups, many callers fail at the same moment. A fixed
//! exponential delay makes them all come back at the same moment too, in waves. Drawing
//! each delay uniformly from `[0, cap]` spreads the retries over the whole interval
//! (the "full jitter" of the AWS architecture blog), which is what lets the backend
//! recover.

use rand::Rng;
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

    /// The upper bound of the delay before retry number `retry`:
    /// `min(max, base * 2^(retry-1))`, computed without overflow for any `retry`
    /// (retry 0 is treated as 1).
    pub fn cap(&self, retry: u32) -> Duration {
        let shift = retry.saturating_sub(1);
        let base = self.base.as_nanos();
        // `base` is below 2^94 (Duration::MAX in nanoseconds), so the product saturates
        // instead of wrapping; and any shift of 128 or more saturates as well.
        let grown = 1u128
            .checked_shl(shift)
            .map_or(u128::MAX, |factor| base.saturating_mul(factor));
        let capped = if base == 0 {
            0
        } else {
            grown.min(self.max.as_nanos())
        };
        from_nanos(capped)
    }

    /// The delay before retry number `retry` (1 for the first retry): uniform in
    /// `[0, min(max, base * 2^(retry-1))]`.
    pub fn delay(&self, retry: u32) -> Duration {
        let cap = self.cap(retry).as_nanos();
        if cap == 0 {
            return Duration::ZERO;
        }
        from_nanos(rand::rng().random_range(0..=cap))
    }
}

/// A `Duration` from nanoseconds held in a u128; the values come from `Duration`s, so they
/// always fit, and the conversion saturates if they ever did not.
fn from_nanos(nanos: u128) -> Duration {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits a u32.
    let sub = (nanos % NANOS_PER_SEC) as u32;
    Duration::new(secs, sub)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_doubles_then_stops_at_max() {
        let b = Backoff::new(Duration::from_millis(25), Duration::from_secs(1));
        assert_eq!(b.cap(0), Duration::from_millis(25));
        assert_eq!(b.cap(1), Duration::from_millis(25));
        assert_eq!(b.cap(2), Duration::from_millis(50));
        assert_eq!(b.cap(3), Duration::from_millis(100));
        assert_eq!(b.cap(6), Duration::from_millis(800));
        assert_eq!(b.cap(7), Duration::from_secs(1));
        assert_eq!(b.cap(64), Duration::from_secs(1));
        assert_eq!(b.cap(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn delays_stay_within_bounds_and_are_jittered() {
        let b = Backoff::new(Duration::from_millis(25), Duration::from_secs(1));
        for retry in 1..=10 {
            let cap = b.cap(retry);
            let samples: Vec<Duration> = (0..200).map(|_| b.delay(retry)).collect();
            assert!(
                samples.iter().all(|d| *d <= cap),
                "retry {retry} above {cap:?}"
            );
            assert!(
                samples.iter().any(|d| *d != samples[0]),
                "retry {retry}: no jitter"
            );
        }
    }

    #[test]
    fn no_overflow_for_huge_retry_numbers_or_durations() {
        let b = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(b.cap(64), Duration::MAX);
        assert!(b.delay(64) <= Duration::MAX);
        assert!(b.delay(u32::MAX) <= Duration::MAX);
        let b = Backoff::new(Duration::from_millis(1), Duration::from_secs(30));
        assert!(b.delay(64) <= Duration::from_secs(30));
        assert!(b.delay(200) <= Duration::from_secs(30));
    }

    #[test]
    fn zero_base_means_no_delay() {
        let b = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        assert_eq!(b.delay(5), Duration::ZERO);
        // max below base (the validator forbids it) is honoured, not a panic.
        let b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert!(b.delay(1) <= Duration::from_secs(1));
    }
}
