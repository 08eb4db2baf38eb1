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
        if self.limit == 0 {
            return Ok(());
        }
        let counts = self.counts.lock().expect("limiter lock");
        match counts.get(key) {
            Some((start, count)) if *count >= self.limit && start.elapsed() < self.window => {
                Err(self.window - start.elapsed())
            }
            _ => Ok(()),
        }
    }

    /// Counts one event for `key`.
    pub fn hit(&self, key: &str) {
        if self.limit == 0 {
            return;
        }
        let mut counts = self.counts.lock().expect("limiter lock");
        if counts.len() >= SWEEP_AT {
            let window = self.window;
            counts.retain(|_, (start, _)| start.elapsed() < window);
        }
        let now = Instant::now();
        let entry = counts.entry(key.to_owned()).or_insert((now, 0));
        if entry.0.elapsed() >= self.window {
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
        let limiter = WindowLimiter::new(2, Duration::from_millis(50));
        limiter.hit("a");
        assert!(limiter.check("a").is_ok());
        limiter.hit("a");
        assert!(limiter.check("a").is_err());
        assert!(limiter.check("b").is_ok());
        std::thread::sleep(Duration::from_millis(60));
        assert!(limiter.check("a").is_ok());
        limiter.hit("a");
        assert!(limiter.check("a").is_ok());
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
