//! A fixed-window counter per key (an email and client address pair, a client address), kept
//! in memory.
//!
//! Each instance counts on its own; with N instances behind a balancer the effective limit
//! is up to N times the setting, which is still a brake on guessing passwords. Counting
//! only what we choose to count (failed sign-ins, sign-ups) is why this is not a generic
//! request-rate crate: a successful sign-in must not use up the failure budget.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct WindowLimiter {
    limit: u32,
    window: Duration,
    counts: Mutex<HashMap<String, (Instant, u32)>>,
}

/// Entries kept before expired ones are swept, so memory stays bounded.
const SWEEP_AT: usize = 10_000;

impl WindowLimiter {
    /// `limit` events per `window`; a limit of 0 means unlimited.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self { limit, window, counts: Mutex::new(HashMap::new()) }
    }

    /// `Err(retry_after)` if `key` has used up its window.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    /// Counts one event for `key`.
    pub fn hit(&self, key: &str) {
        self.hit_at(key, Instant::now());
    }

    /// [`Self::check`] as of `now` (tests pass their own clock).
    fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let counts = self.counts.lock().expect("limiter lock");
        match counts.get(key) {
            Some((start, count)) if *count >= self.limit && now.duration_since(*start) < self.window => {
                Err(self.window - now.duration_since(*start))
            }
            _ => Ok(()),
        }
    }

    /// [`Self::hit`] as of `now`.
    fn hit_at(&self, key: &str, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let mut counts = self.counts.lock().expect("limiter lock");
        if counts.len() >= SWEEP_AT {
            let window = self.window;
            counts.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = counts.entry(key.to_owned()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    /// Forgets `key` (a successful sign-in clears the failures of its email and client pair).
    pub fn reset(&self, key: &str) {
        self.counts.lock().expect("limiter lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_limit_until_window_passes() {
        let limiter = WindowLimiter::new(2, Duration::from_secs(60));
        let start = Instant::now();
        limiter.hit_at("a", start);
        assert!(limiter.check_at("a", start).is_ok());
        limiter.hit_at("a", start);
        assert_eq!(limiter.check_at("a", start + Duration::from_secs(10)), Err(Duration::from_secs(50)));
        assert!(limiter.check_at("b", start).is_ok());
        let later = start + Duration::from_secs(61);
        assert!(limiter.check_at("a", later).is_ok());
        limiter.hit_at("a", later);
        assert!(limiter.check_at("a", later).is_ok());
    }

    #[test]
    fn zero_means_unlimited_and_reset_forgets() {
        let unlimited = WindowLimiter::new(0, Duration::from_secs(60));
        (0..100).for_each(|_| unlimited.hit("a"));
        assert!(unlimited.check("a").is_ok());
        let limiter = WindowLimiter::new(1, Duration::from_secs(60));
        limiter.hit("a");
        assert!(limiter.check("a").is_err());
        limiter.reset("a");
        assert!(limiter.check("a").is_ok());
    }
}
