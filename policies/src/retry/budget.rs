//! The retry budget: retries may be at most a share of recent requests, plus a floor.
//!
//! Why a budget and not only a maximum of attempts: `attempts = 3` alone lets a failing
//! backend receive three times its normal load exactly when it is least able to take it
//! (a retry storm), and every layer of retries above multiplies it again. A budget, as in
//! tower's `TpsBudget` and linkerd, caps retries at a share of the *original* requests
//! seen recently: with `budget = 0.2`, a backend never sees more than 1.2× the traffic it
//! would see without retries. The floor (`min_per_second`) keeps retries possible when
//! traffic is too low for a share to mean anything (one request a minute must still be
//! retried).
//!
//! How: the window is cut into [`SLOTS`] time slots kept in a ring. Each slot counts the
//! deposits (original requests) and withdrawals (retries) made during it; a slot whose time
//! has passed out of the window is reset when the ring comes round to it again. So the
//! window slides by steps of `budget_window / SLOTS`, and at any moment it covers between
//! `SLOTS - 1` and `SLOTS` slots of the past. Time comes from `tokio::time::Instant`, so
//! tests run with paused time; the `*_at` methods take the time as an argument.

use crate::spec::RetrySpec;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Time slots in the budget's window.
pub const SLOTS: usize = 10;

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    /// Index of the slot of time this slot counts for (time since `start` / slot length).
    epoch: u64,
    deposits: u64,
    withdrawals: u64,
}

#[derive(Debug)]
struct Ring {
    slots: [Slot; SLOTS],
}

#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    /// Retries always allowed over one window (`min_per_second * budget_window`).
    floor: f64,
    slot_len: Duration,
    start: Instant,
    ring: Mutex<Ring>,
}

impl Budget {
    pub fn new(spec: &RetrySpec) -> Self {
        // A zero window is rejected by validation; a tiny slot keeps the arithmetic sound
        // (no division by zero) should one get here anyway.
        let slot_len = (spec.budget_window / SLOTS as u32).max(Duration::from_micros(1));
        let window = slot_len * SLOTS as u32;
        let ratio = if spec.budget.is_finite() {
            spec.budget.max(0.0)
        } else {
            0.0
        };
        Self {
            ratio,
            floor: f64::from(spec.min_per_second) * window.as_secs_f64(),
            slot_len,
            start: Instant::now(),
            ring: Mutex::new(Ring {
                slots: [Slot::default(); SLOTS],
            }),
        }
    }

    /// Records one original request (not a retry).
    pub fn deposit(&self) {
        self.deposit_at(Instant::now());
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn withdraw(&self) -> bool {
        self.withdraw_at(Instant::now())
    }

    /// Retries the budget would allow right now (for the admin API).
    pub fn remaining(&self) -> u64 {
        self.remaining_at(Instant::now())
    }

    /// [`Budget::deposit`] at a given time.
    pub fn deposit_at(&self, now: Instant) {
        let epoch = self.epoch(now);
        let mut ring = self.lock();
        ring.current(epoch).deposits += 1;
    }

    /// [`Budget::withdraw`] at a given time.
    pub fn withdraw_at(&self, now: Instant) -> bool {
        let epoch = self.epoch(now);
        let mut ring = self.lock();
        if self.allowed(&ring, epoch) == 0 {
            return false;
        }
        ring.current(epoch).withdrawals += 1;
        true
    }

    /// [`Budget::remaining`] at a given time.
    pub fn remaining_at(&self, now: Instant) -> u64 {
        let epoch = self.epoch(now);
        let ring = self.lock();
        self.allowed(&ring, epoch)
    }

    /// Retries still allowed in the window ending at slot `epoch`.
    fn allowed(&self, ring: &Ring, epoch: u64) -> u64 {
        let (deposits, withdrawals) = ring
            .slots
            .iter()
            .filter(|s| s.epoch <= epoch && epoch - s.epoch < SLOTS as u64)
            .fold((0u64, 0u64), |(d, w), s| {
                (d + s.deposits, w + s.withdrawals)
            });
        // The small epsilon keeps 0.2 * 5 from landing just below 1 in floating point.
        let total = (self.ratio * deposits as f64 + self.floor + 1e-9).floor();
        // `as` saturates for floats, so a huge ratio cannot wrap.
        (total as u64).saturating_sub(withdrawals)
    }

    fn epoch(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.start).as_nanos();
        u64::try_from(since / self.slot_len.as_nanos()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Nothing panics while the lock is held, but a poisoned ring is still a valid
        // ring: keep counting rather than fail every call.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Ring {
    /// The slot for `epoch`, reset first if it still holds an older slot of time.
    fn current(&mut self, epoch: u64) -> &mut Slot {
        let slot = &mut self.slots[(epoch % SLOTS as u64) as usize];
        if slot.epoch != epoch {
            *slot = Slot {
                epoch,
                ..Slot::default()
            };
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(budget: f64, min_per_second: u32, window_secs: u64) -> RetrySpec {
        RetrySpec {
            budget,
            min_per_second,
            budget_window: Duration::from_secs(window_secs),
            ..RetrySpec::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn floor_allows_min_per_second_times_window_without_traffic() {
        let b = Budget::new(&spec(0.0, 1, 10));
        for _ in 0..10 {
            assert!(b.withdraw());
        }
        assert!(!b.withdraw());
        assert_eq!(b.remaining(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_allows_a_share_of_deposits() {
        let b = Budget::new(&spec(0.2, 0, 10));
        assert!(!b.withdraw(), "nothing deposited, no floor");
        for _ in 0..10 {
            b.deposit();
        }
        assert_eq!(b.remaining(), 2);
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw());
        for _ in 0..5 {
            b.deposit();
        }
        assert!(b.withdraw());
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn ratio_and_floor_add_up() {
        let b = Budget::new(&spec(0.5, 1, 2));
        for _ in 0..4 {
            b.deposit();
        }
        // 0.5 * 4 + 1/s * 2s
        assert_eq!(b.remaining(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_and_withdrawals_expire_with_the_window() {
        let b = Budget::new(&spec(0.5, 0, 10));
        for _ in 0..4 {
            b.deposit();
        }
        assert!(b.withdraw());
        assert!(b.withdraw());
        assert!(!b.withdraw());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!b.withdraw(), "still inside the window");
        for _ in 0..2 {
            b.deposit();
        }
        assert!(b.withdraw(), "0.5 * 6 - 2 = 1 left");
        tokio::time::advance(Duration::from_secs(6)).await;
        // The first four deposits and first two retries have left the window; the two
        // later deposits and one retry remain: 0.5 * 2 - 1 = 0.
        assert!(!b.withdraw());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.remaining(), 0, "everything expired, no floor");
        b.deposit();
        b.deposit();
        assert!(b.withdraw());
    }

    #[test]
    fn explicit_time_and_odd_specs_do_not_panic() {
        let start = Instant::now();
        let b = Budget::new(&spec(f64::NAN, 0, 0));
        b.deposit_at(start);
        assert!(!b.withdraw_at(start));
        let b = Budget::new(&spec(1000.0, u32::MAX, 10));
        assert!(b.withdraw_at(start + Duration::from_secs(1_000_000)));
        // Time going backwards (a stale `now`) counts into the first slot.
        assert!(b.withdraw_at(start - Duration::from_secs(1)));
    }
}
