//! The breaker's state machine, pure: time is an argument.
//!
//! Modelled on Resilience4j's circuit breaker. The steps:
//!
//! 1. **Closed.** Every call is let through. Each outcome is recorded twice: in a count of
//!    failures in a row (a success resets it), and in a sliding time window of `window`
//!    cut into [`BUCKETS`] buckets, counting calls, failures and slow calls (slower than
//!    `slow_call_duration`, when that is set).
//! 2. **Closed -> Open** when one of the triggers fires after a recorded outcome:
//!    - `consecutive_failures` failures in a row (0 disables this trigger);
//!    - at least `min_calls` calls in the window and a failure share of at least
//!      `failure_rate` (a rate above 1 disables it; at least one failure is needed);
//!    - at least `min_calls` calls in the window and a slow share of at least
//!      `slow_call_rate` (only when `slow_call_duration` is set).
//! 3. **Open.** Every call is refused at once, with `retry_after` = the open time left.
//!    Nothing is queued: a caller that waits on a dead backend is worse off than one that
//!    hears "no" now and can try another endpoint.
//! 4. **Open -> HalfOpen** once `open_for` has passed. This happens lazily, on the next
//!    [`Breaker::try_acquire`] or [`Breaker::state`]: no timer is needed.
//! 5. **HalfOpen.** At most `half_open_probes` probe calls are let through; others are
//!    refused (`retry_after` of at most a second: the probes' verdict is near).
//! 6. **HalfOpen -> Closed** when `half_open_probes` probes succeeded: counters reset.
//! 7. **HalfOpen -> Open** on the first probe failure, for a fresh `open_for`.
//! 8. A probe that ends with no outcome (its future was dropped, or the result was the
//!    gateway's own refusal) gives its slot back with [`Breaker::release`], so a
//!    cancelled probe can never wedge the breaker half-open.
//! 9. **Admin.** `ForcedOpen` refuses everything (`retry_after` = `open_for`) until set
//!    otherwise; `Disabled` lets everything through and counts nothing; `Closed` goes back
//!    to step 1 with every counter reset.
//!
//! Outcomes are tied to the state period in which their call was admitted (a
//! [`Permit`]): a slow call let through while closed that finishes after the breaker
//! opened and went half-open is not mistaken for a probe. [`Breaker::record`] and
//! [`Breaker::release`] without a permit apply to the current period.

use crate::spec::BreakerSpec;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::time::Instant;

/// Buckets in the breaker's sliding window.
pub const BUCKETS: usize = 10;

const MAX_PENDING_TRANSITIONS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
}

impl BreakerState {
    /// The value of the `quartet_breaker_state` gauge.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
            BreakerState::ForcedOpen => 3,
            BreakerState::Disabled => 4,
        }
    }

    /// The `to` label of `quartet_breaker_transitions_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::Disabled => "disabled",
        }
    }
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

/// Proof that a call was let through, naming the state period it was let through in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permit {
    period: u64,
}

/// Counters of a breaker at one moment, for the admin API.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BreakerStats {
    pub state: BreakerState,
    pub consecutive_failures: u32,
    pub window_calls: u32,
    pub window_failures: u32,
    pub window_slow: u32,
    /// Time until an open breaker lets a probe through (`open_for` when forced open).
    pub retry_after: Option<Duration>,
}

#[derive(Clone, Copy, Debug)]
enum Inner {
    Closed,
    Open { until: Instant },
    HalfOpen { in_flight: u32, succeeded: u32 },
    ForcedOpen,
    Disabled,
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    epoch: u64,
    calls: u32,
    failures: u32,
    slow: u32,
}

#[derive(Debug)]
pub struct Breaker {
    spec: BreakerSpec,
    inner: Inner,
    /// Bumped on every transition; permits from an older period are stale.
    period: u64,
    consecutive: u32,
    buckets: [Bucket; BUCKETS],
    bucket_len: Duration,
    /// Origin of the bucket epochs; set when the first time is seen.
    origin: Option<Instant>,
    /// States entered since the last [`Breaker::take_transitions`].
    transitions: Vec<BreakerState>,
}

impl Breaker {
    pub fn new(spec: BreakerSpec) -> Self {
        // A zero window is rejected by validation; keep the arithmetic sound regardless.
        let bucket_len = (spec.window / BUCKETS as u32).max(Duration::from_micros(1));
        Self {
            spec,
            inner: Inner::Closed,
            period: 0,
            consecutive: 0,
            buckets: [Bucket::default(); BUCKETS],
            bucket_len,
            origin: None,
            transitions: Vec::new(),
        }
    }

    /// Asks to let one call through. `Err(retry_after)` when refused.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Duration> {
        self.acquire(now).map(|_| ())
    }

    /// Like [`Breaker::try_acquire`], with a permit to record the outcome against.
    pub fn acquire(&mut self, now: Instant) -> Result<Permit, Duration> {
        self.poll_open(now);
        match &mut self.inner {
            Inner::Closed | Inner::Disabled => {}
            Inner::Open { until } => return Err(until.saturating_duration_since(now)),
            Inner::ForcedOpen => return Err(self.spec.open_for),
            Inner::HalfOpen {
                in_flight,
                succeeded,
            } => {
                if in_flight.saturating_add(*succeeded) >= self.spec.half_open_probes.max(1) {
                    return Err(self.spec.open_for.min(Duration::from_secs(1)));
                }
                *in_flight += 1;
            }
        }
        Ok(Permit {
            period: self.period,
        })
    }

    /// Records the outcome of a call that was let through.
    pub fn record(&mut self, now: Instant, failure: bool, elapsed: Duration) {
        let permit = Permit {
            period: self.period,
        };
        self.record_permit(permit, now, failure, elapsed);
    }

    /// Records the outcome of the call `permit` let through; ignored when the breaker has
    /// changed state since (the outcome says nothing about the current period).
    pub fn record_permit(
        &mut self,
        permit: Permit,
        now: Instant,
        failure: bool,
        elapsed: Duration,
    ) {
        if permit.period != self.period {
            return;
        }
        match &mut self.inner {
            Inner::Closed => self.record_closed(now, failure, elapsed),
            Inner::HalfOpen {
                in_flight,
                succeeded,
            } => {
                *in_flight = in_flight.saturating_sub(1);
                if failure {
                    self.open(now);
                } else {
                    *succeeded += 1;
                    if *succeeded >= self.spec.half_open_probes.max(1) {
                        self.close();
                    }
                }
            }
            // Calls let through while disabled are not counted; open states admit none.
            Inner::Open { .. } | Inner::ForcedOpen | Inner::Disabled => {}
        }
    }

    /// Gives back a permit whose call ended with no outcome (cancelled).
    pub fn release(&mut self, now: Instant) {
        let permit = Permit {
            period: self.period,
        };
        self.release_permit(permit, now);
    }

    /// Gives back `permit` when its call ended with no outcome.
    pub fn release_permit(&mut self, permit: Permit, _now: Instant) {
        if permit.period != self.period {
            return;
        }
        if let Inner::HalfOpen { in_flight, .. } = &mut self.inner {
            *in_flight = in_flight.saturating_sub(1);
        }
    }

    pub fn state(&mut self, now: Instant) -> BreakerState {
        self.poll_open(now);
        self.public_state()
    }

    pub fn set(&mut self, now: Instant, state: AdminState) {
        let _ = now;
        match state {
            AdminState::Closed => self.close(),
            AdminState::ForcedOpen => self.enter(Inner::ForcedOpen),
            AdminState::Disabled => self.enter(Inner::Disabled),
        }
    }

    /// Whether a call would be let through now, without taking a probe slot.
    pub fn allows(&mut self, now: Instant) -> bool {
        self.poll_open(now);
        match self.inner {
            Inner::Closed | Inner::Disabled => true,
            Inner::Open { .. } | Inner::ForcedOpen => false,
            Inner::HalfOpen {
                in_flight,
                succeeded,
            } => in_flight.saturating_add(succeeded) < self.spec.half_open_probes.max(1),
        }
    }

    /// The counters, for the admin API.
    pub fn stats(&mut self, now: Instant) -> BreakerStats {
        self.poll_open(now);
        let (calls, failures, slow) = self.window_totals(now);
        BreakerStats {
            state: self.public_state(),
            consecutive_failures: self.consecutive,
            window_calls: calls,
            window_failures: failures,
            window_slow: slow,
            retry_after: match self.inner {
                Inner::Open { until } => Some(until.saturating_duration_since(now)),
                Inner::ForcedOpen => Some(self.spec.open_for),
                _ => None,
            },
        }
    }

    /// The states entered since the last call, oldest first (for metrics and logs).
    pub fn take_transitions(&mut self) -> Vec<BreakerState> {
        std::mem::take(&mut self.transitions)
    }

    pub fn spec(&self) -> &BreakerSpec {
        &self.spec
    }

    fn public_state(&self) -> BreakerState {
        match self.inner {
            Inner::Closed => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
            Inner::ForcedOpen => BreakerState::ForcedOpen,
            Inner::Disabled => BreakerState::Disabled,
        }
    }

    /// Step 4: an open breaker whose time is up becomes half-open.
    fn poll_open(&mut self, now: Instant) {
        if let Inner::Open { until } = self.inner {
            if now >= until {
                self.enter(Inner::HalfOpen {
                    in_flight: 0,
                    succeeded: 0,
                });
            }
        }
    }

    fn record_closed(&mut self, now: Instant, failure: bool, elapsed: Duration) {
        let slow = self
            .spec
            .slow_call_duration
            .is_some_and(|limit| elapsed >= limit);
        if failure {
            self.consecutive = self.consecutive.saturating_add(1);
        } else {
            self.consecutive = 0;
        }
        if self.origin.is_none() {
            self.origin = Some(now);
        }
        let epoch = self.epoch(now);
        let bucket = &mut self.buckets[(epoch % BUCKETS as u64) as usize];
        if bucket.epoch != epoch {
            *bucket = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        bucket.calls = bucket.calls.saturating_add(1);
        bucket.failures = bucket.failures.saturating_add(u32::from(failure));
        bucket.slow = bucket.slow.saturating_add(u32::from(slow));

        if self.should_trip(now) {
            self.open(now);
        }
    }

    /// Step 2.
    fn should_trip(&self, now: Instant) -> bool {
        let spec = &self.spec;
        if spec.consecutive_failures > 0 && self.consecutive >= spec.consecutive_failures {
            return true;
        }
        let (calls, failures, slow) = self.window_totals(now);
        if calls == 0 || calls < spec.min_calls {
            return false;
        }
        let share = |n: u32| f64::from(n) / f64::from(calls);
        if spec.failure_rate <= 1.0 && failures > 0 && share(failures) >= spec.failure_rate {
            return true;
        }
        spec.slow_call_duration.is_some()
            && spec.slow_call_rate <= 1.0
            && slow > 0
            && share(slow) >= spec.slow_call_rate
    }

    fn window_totals(&self, now: Instant) -> (u32, u32, u32) {
        let epoch = self.epoch(now);
        self.buckets
            .iter()
            .filter(|b| b.epoch <= epoch && epoch - b.epoch < BUCKETS as u64)
            .fold((0u32, 0u32, 0u32), |(c, f, s), b| {
                (
                    c.saturating_add(b.calls),
                    f.saturating_add(b.failures),
                    s.saturating_add(b.slow),
                )
            })
    }

    fn epoch(&self, now: Instant) -> u64 {
        let Some(origin) = self.origin else {
            return 0;
        };
        let since = now.saturating_duration_since(origin).as_nanos();
        u64::try_from(since / self.bucket_len.as_nanos()).unwrap_or(u64::MAX)
    }

    fn open(&mut self, now: Instant) {
        // An `open_for` too large for the clock means "open for as long as can be told".
        const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
        let until = now
            .checked_add(self.spec.open_for)
            .or_else(|| now.checked_add(FAR))
            .unwrap_or(now);
        self.enter(Inner::Open { until });
    }

    /// Step 6 and the admin reset: closed, with every counter at zero.
    fn close(&mut self) {
        self.enter(Inner::Closed);
    }

    fn enter(&mut self, inner: Inner) {
        self.inner = inner;
        self.period = self.period.wrapping_add(1);
        // Every state starts from fresh counters: the window must only ever describe
        // calls made while closed in the current period.
        self.consecutive = 0;
        self.buckets = [Bucket::default(); BUCKETS];
        self.origin = None;
        // Bounded, for callers that never take them: only the latest matter.
        if self.transitions.len() >= MAX_PENDING_TRANSITIONS {
            self.transitions.remove(0);
        }
        self.transitions.push(self.public_state());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn spec() -> BreakerSpec {
        BreakerSpec {
            consecutive_failures: 3,
            failure_rate: 2.0,
            window: Duration::from_secs(10),
            min_calls: 4,
            slow_call_duration: None,
            slow_call_rate: 1.0,
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    fn call(b: &mut Breaker, now: Instant, failure: bool) {
        b.try_acquire(now).expect("let through");
        b.record(now, failure, MS);
    }

    fn tripped(s: BreakerSpec) -> (Breaker, Instant) {
        let mut b = Breaker::new(BreakerSpec {
            consecutive_failures: 1,
            ..s
        });
        let t0 = Instant::now();
        call(&mut b, t0, true);
        assert_eq!(b.state(t0), BreakerState::Open);
        (b, t0)
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let mut b = Breaker::new(spec());
        let t = Instant::now();
        call(&mut b, t, true);
        call(&mut b, t, true);
        call(&mut b, t, false);
        call(&mut b, t, true);
        call(&mut b, t, true);
        assert_eq!(b.state(t), BreakerState::Closed);
        call(&mut b, t, true);
        assert_eq!(b.state(t), BreakerState::Open);
        assert_eq!(b.take_transitions(), vec![BreakerState::Open]);
    }

    #[test]
    fn consecutive_trigger_zero_is_disabled() {
        let mut b = Breaker::new(BreakerSpec {
            consecutive_failures: 0,
            ..spec()
        });
        let t = Instant::now();
        for _ in 0..100 {
            call(&mut b, t, true);
        }
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[test]
    fn opens_on_failure_rate_only_once_min_calls_were_made() {
        let mut b = Breaker::new(BreakerSpec {
            consecutive_failures: 0,
            failure_rate: 0.5,
            ..spec()
        });
        let t = Instant::now();
        call(&mut b, t, true);
        call(&mut b, t, false);
        call(&mut b, t, true);
        assert_eq!(b.state(t), BreakerState::Closed, "3 calls < min_calls 4");
        call(&mut b, t, false);
        // 2 failures of 4 = 0.5
        assert_eq!(b.state(t), BreakerState::Open);
    }

    #[test]
    fn failure_rate_below_threshold_and_old_calls_leave_the_window() {
        let mut b = Breaker::new(BreakerSpec {
            consecutive_failures: 0,
            failure_rate: 0.5,
            ..spec()
        });
        let t = Instant::now();
        call(&mut b, t, true);
        call(&mut b, t, true);
        call(&mut b, t, false);
        // Eleven seconds later the first three calls are out of the 10 s window.
        let later = t + Duration::from_secs(11);
        call(&mut b, later, false);
        call(&mut b, later, false);
        call(&mut b, later, false);
        call(&mut b, later, true);
        assert_eq!(b.stats(later).window_calls, 4);
        assert_eq!(b.state(later), BreakerState::Closed, "1 of 4 < 0.5");
    }

    #[test]
    fn opens_on_slow_call_rate_when_tracked() {
        let slow = BreakerSpec {
            consecutive_failures: 0,
            slow_call_duration: Some(Duration::from_millis(100)),
            slow_call_rate: 0.5,
            ..spec()
        };
        let mut b = Breaker::new(slow.clone());
        let t = Instant::now();
        for elapsed in [200, 10, 300, 10] {
            b.try_acquire(t).expect("closed");
            b.record(t, false, Duration::from_millis(elapsed));
        }
        assert_eq!(b.state(t), BreakerState::Open);

        // Without slow_call_duration the same calls are fine.
        let mut b = Breaker::new(BreakerSpec {
            slow_call_duration: None,
            ..slow
        });
        for elapsed in [200, 10, 300, 10] {
            b.try_acquire(t).expect("closed");
            b.record(t, false, Duration::from_millis(elapsed));
        }
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[test]
    fn open_refuses_with_the_open_time_left() {
        let (mut b, t0) = tripped(spec());
        assert_eq!(b.try_acquire(t0), Err(Duration::from_secs(5)));
        assert_eq!(
            b.try_acquire(t0 + Duration::from_secs(2)),
            Err(Duration::from_secs(3))
        );
        assert!(!b.allows(t0 + Duration::from_secs(4)));
        let stats = b.stats(t0 + Duration::from_secs(1));
        assert_eq!(stats.retry_after, Some(Duration::from_secs(4)));
    }

    #[test]
    fn open_becomes_half_open_after_open_for() {
        let (mut b, t0) = tripped(spec());
        b.take_transitions();
        assert_eq!(
            b.state(t0 + Duration::from_millis(4999)),
            BreakerState::Open
        );
        assert_eq!(b.state(t0 + Duration::from_secs(5)), BreakerState::HalfOpen);
        assert_eq!(b.take_transitions(), vec![BreakerState::HalfOpen]);
    }

    #[test]
    fn half_open_lets_at_most_the_probes_through_and_allows_takes_no_slot() {
        let (mut b, t0) = tripped(spec());
        let t = t0 + Duration::from_secs(5);
        assert!(b.allows(t));
        assert!(b.allows(t), "allows() must not consume a probe");
        assert!(b.try_acquire(t).is_ok());
        assert!(b.try_acquire(t).is_ok());
        let refused = b.try_acquire(t).expect_err("probe limit");
        assert!(refused <= Duration::from_secs(1));
        assert!(!b.allows(t));
    }

    #[test]
    fn half_open_closes_when_every_probe_succeeds() {
        let (mut b, t0) = tripped(spec());
        let t = t0 + Duration::from_secs(5);
        b.try_acquire(t).expect("probe 1");
        b.try_acquire(t).expect("probe 2");
        b.record(t, false, MS);
        assert_eq!(b.state(t), BreakerState::HalfOpen, "one probe still out");
        b.record(t, false, MS);
        assert_eq!(b.state(t), BreakerState::Closed);
        let stats = b.stats(t);
        assert_eq!(
            (stats.consecutive_failures, stats.window_calls),
            (0, 0),
            "counters reset"
        );
    }

    #[test]
    fn half_open_failure_opens_again_for_a_fresh_open_for() {
        let (mut b, t0) = tripped(spec());
        let t = t0 + Duration::from_secs(6);
        b.try_acquire(t).expect("probe");
        b.record(t, true, MS);
        assert_eq!(b.state(t), BreakerState::Open);
        assert_eq!(b.try_acquire(t), Err(Duration::from_secs(5)));
        assert_eq!(b.state(t + Duration::from_secs(5)), BreakerState::HalfOpen);
    }

    #[test]
    fn cancelled_probe_gives_its_slot_back() {
        let (mut b, t0) = tripped(BreakerSpec {
            half_open_probes: 1,
            ..spec()
        });
        let t = t0 + Duration::from_secs(5);
        b.try_acquire(t).expect("probe");
        assert!(b.try_acquire(t).is_err());
        b.release(t);
        assert_eq!(b.state(t), BreakerState::HalfOpen);
        b.try_acquire(t).expect("slot given back");
        b.record(t, false, MS);
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[test]
    fn late_outcome_from_an_older_period_is_not_a_probe() {
        let mut b = Breaker::new(BreakerSpec {
            consecutive_failures: 1,
            half_open_probes: 1,
            ..spec()
        });
        let t0 = Instant::now();
        let slow = b.acquire(t0).expect("closed");
        call(&mut b, t0, true);
        let t = t0 + Duration::from_secs(5);
        let probe = b.acquire(t).expect("probe");
        // The slow call from before the trip succeeds now: it must not close the breaker.
        b.record_permit(slow, t, false, MS);
        assert_eq!(b.state(t), BreakerState::HalfOpen);
        b.release_permit(slow, t);
        assert!(b.try_acquire(t).is_err(), "the real probe is still out");
        b.record_permit(probe, t, false, MS);
        assert_eq!(b.state(t), BreakerState::Closed);
    }

    #[test]
    fn forced_open_refuses_everything_until_reset() {
        let mut b = Breaker::new(spec());
        let t = Instant::now();
        b.set(t, AdminState::ForcedOpen);
        assert_eq!(b.state(t), BreakerState::ForcedOpen);
        assert_eq!(b.try_acquire(t), Err(Duration::from_secs(5)));
        let much_later = t + Duration::from_secs(3600);
        assert_eq!(b.try_acquire(much_later), Err(Duration::from_secs(5)));
        assert_eq!(b.state(much_later), BreakerState::ForcedOpen);
        b.set(much_later, AdminState::Closed);
        assert!(b.try_acquire(much_later).is_ok());
    }

    #[test]
    fn disabled_lets_everything_through_and_counts_nothing() {
        let mut b = Breaker::new(spec());
        let t = Instant::now();
        b.set(t, AdminState::Disabled);
        for _ in 0..50 {
            call(&mut b, t, true);
        }
        assert_eq!(b.state(t), BreakerState::Disabled);
        let stats = b.stats(t);
        assert_eq!((stats.consecutive_failures, stats.window_calls), (0, 0));
    }

    #[test]
    fn admin_closed_resets_an_open_breaker_and_its_counters() {
        let mut b = Breaker::new(spec());
        let t = Instant::now();
        call(&mut b, t, true);
        call(&mut b, t, true);
        b.set(t, AdminState::Closed);
        call(&mut b, t, true);
        call(&mut b, t, true);
        assert_eq!(b.state(t), BreakerState::Closed, "count restarted at zero");
        call(&mut b, t, true);
        assert_eq!(b.state(t), BreakerState::Open);
        b.set(t, AdminState::Closed);
        assert_eq!(b.state(t), BreakerState::Closed);
        assert!(b.try_acquire(t).is_ok());
        assert_eq!(
            b.take_transitions(),
            vec![
                BreakerState::Closed,
                BreakerState::Open,
                BreakerState::Closed
            ]
        );
    }

    #[test]
    fn odd_specs_do_not_panic() {
        let mut b = Breaker::new(BreakerSpec {
            window: Duration::ZERO,
            min_calls: 0,
            failure_rate: 0.0,
            half_open_probes: 0,
            open_for: Duration::MAX,
            ..spec()
        });
        let t = Instant::now();
        call(&mut b, t, false);
        assert_eq!(b.state(t), BreakerState::Closed, "rate 0 needs a failure");
        call(&mut b, t, true);
        assert_eq!(b.state(t), BreakerState::Open);
        let _ = b.try_acquire(t + Duration::from_secs(1));
        for _ in 0..100 {
            b.set(t, AdminState::Closed);
        }
        assert!(b.take_transitions().len() <= MAX_PENDING_TRANSITIONS);
    }
}
