//! The wall clock that reservation windows are measured on, injectable so tests can move it.
//!
//! A reservation's end is wall time: orders stamps `expiresAt` as now plus the window, the
//! expiration timers fire what is due now, payments refuses an order past its `expiresAt` (and
//! spaces out the tries of a refund it owes).
//! In production all three read the system clock ([`Clock::System`], the default). A test
//! gives them one [`ManualClock`] instead (through [`crate::service::Context::clock`]) and
//! moves it forward: a 15-minute window ends at once, without waiting a real second, and
//! "never before `expiresAt`" is checked at the last millisecond rather than on a sleep.
//!
//! Only these decisions use it (and what is compared with the same "now": a timer's claim
//! lease, an owed refund's next try). Other instants (when a row was written, retention
//! cutoffs) stay on [`crate::db::now_millis`]: they decide nothing a user sees in a window.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::worker::Waker;

/// Where "now" comes from.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system's wall clock.
    #[default]
    System,
    /// A clock a test moves by hand.
    Manual(ManualClock),
}

impl Clock {
    /// Milliseconds since the epoch, as instants are stored.
    pub fn now_millis(&self) -> i64 {
        match self {
            Clock::System => crate::db::now_millis(),
            Clock::Manual(manual) => manual.now_millis(),
        }
    }

    /// Has `waker` woken whenever the clock is moved, so a loop sleeping until a due time
    /// looks again. The system clock moves by itself: nothing to register.
    pub fn wake_on_advance(&self, waker: &Waker) {
        if let Clock::Manual(manual) = self {
            manual.0.wakers.lock().expect("clock lock").push(waker.clone());
        }
    }
}

/// A clock that stands still until [`ManualClock::advance`] moves it. Clones share one time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<ManualState>);

#[derive(Debug)]
struct ManualState {
    now: AtomicI64,
    wakers: Mutex<Vec<Waker>>,
}

impl ManualClock {
    /// A clock standing at the current system time, so the instants it stamps look like real
    /// ones beside those of the system clock.
    pub fn starting_now() -> Self {
        Self(Arc::new(ManualState { now: AtomicI64::new(crate::db::now_millis()), wakers: Mutex::default() }))
    }

    pub fn now_millis(&self) -> i64 {
        self.0.now.load(Ordering::SeqCst)
    }

    /// Moves the clock forward by `by` and wakes what registered (see
    /// [`Clock::wake_on_advance`]).
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).expect("a duration a test can advance by");
        self.0.now.fetch_add(by, Ordering::SeqCst);
        for waker in self.0.wakers.lock().expect("clock lock").iter() {
            waker.wake();
        }
    }

    /// Moves the clock forward to `at` (ms since the epoch); a time already passed leaves it
    /// where it is.
    pub fn advance_to(&self, at: i64) {
        let now = self.now_millis();
        if at > now {
            self.advance(Duration::from_millis((at - now) as u64));
        }
    }
}

impl From<ManualClock> for Clock {
    fn from(manual: ManualClock) -> Self {
        Clock::Manual(manual)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_its_clones_share_it() {
        let manual = ManualClock::starting_now();
        let clock = Clock::from(manual.clone());
        let start = clock.now_millis();
        assert!((start - crate::db::now_millis()).abs() < 60_000, "starts at the system time");
        manual.advance(Duration::from_secs(900));
        assert_eq!(clock.now_millis(), start + 900_000);
        manual.advance_to(start);
        assert_eq!(clock.now_millis(), start + 900_000, "never goes back");
        manual.advance_to(start + 900_001);
        assert_eq!(clock.now_millis(), start + 900_001);
    }

    #[tokio::test]
    async fn advancing_wakes_what_registered() {
        let manual = ManualClock::starting_now();
        let waker = Waker::default();
        Clock::from(manual.clone()).wake_on_advance(&waker);
        manual.advance(Duration::from_millis(1));
        tokio::time::timeout(Duration::from_secs(10), waker.woken()).await.expect("woken by the advance");
    }
}
