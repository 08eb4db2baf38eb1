//! The load generator: a fixed number of virtual users, each running one operation after
//! another (closed loop), for a duration or until a number of operations is done.
//!
//! Latencies go into HDR histograms (microseconds, 3 significant digits), one per outcome
//! label, so a scenario can report winners and losers, or a flow's steps, apart.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// When the virtual users stop.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    Elapsed(Duration),
    /// This many operations in all, shared among the users.
    Count(u64),
}

/// One operation's result: the label its latency is filed under, or an error label
/// (e.g. `"400 Ticket is already reserved"`) that is counted.
pub type Outcome = Result<&'static str, String>;

/// Latencies and error counts of one scenario.
#[derive(Debug, Clone)]
pub struct Stats {
    pub elapsed: Duration,
    pub histograms: BTreeMap<&'static str, Histogram<u64>>,
    pub errors: BTreeMap<String, u64>,
}

impl Default for Stats {
    fn default() -> Self {
        Self { elapsed: Duration::ZERO, histograms: BTreeMap::new(), errors: BTreeMap::new() }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

impl Stats {
    pub fn record(&mut self, label: &'static str, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, 120_000_000);
        self.histograms.entry(label).or_insert_with(histogram).record(micros).expect("value within bounds");
    }

    pub fn error(&mut self, label: String) {
        *self.errors.entry(label).or_default() += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn count(&self, label: &str) -> u64 {
        self.histograms.get(label).map_or(0, Histogram::len)
    }

    /// Every successful operation, whatever its label.
    pub fn total_ok(&self) -> u64 {
        self.histograms.values().map(Histogram::len).sum()
    }

    /// Operations per second, errors included (they were answered too).
    pub fn throughput(&self, label: Option<&str>) -> f64 {
        let ops = match label {
            Some(label) => self.count(label),
            None => self.total_ok() + self.error_count(),
        };
        ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at `quantile` (0..=1) of `label`, in milliseconds.
    pub fn quantile_ms(&self, label: &str, quantile: f64) -> Option<f64> {
        let histogram = self.histograms.get(label)?;
        (!histogram.is_empty()).then(|| histogram.value_at_quantile(quantile) as f64 / 1000.0)
    }

    pub fn max_ms(&self, label: &str) -> Option<f64> {
        let histogram = self.histograms.get(label)?;
        (!histogram.is_empty()).then(|| histogram.max() as f64 / 1000.0)
    }

    fn merge(&mut self, other: Stats) {
        for (label, theirs) in other.histograms {
            self.histograms.entry(label).or_insert_with(histogram).add(&theirs).expect("same bounds");
        }
        for (label, count) in other.errors {
            *self.errors.entry(label).or_default() += count;
        }
    }

    /// The most frequent errors, for a report cell.
    pub fn error_summary(&self) -> String {
        if self.errors.is_empty() {
            return "0".to_owned();
        }
        let mut errors: Vec<_> = self.errors.iter().collect();
        errors.sort_by(|a, b| b.1.cmp(a.1));
        let shown: Vec<String> = errors.iter().take(3).map(|(label, count)| format!("{count}× {label}")).collect();
        format!("{} ({})", self.error_count(), shown.join("; "))
    }
}

/// Extra latencies an operation measures itself (a flow's steps, a propagation delay).
#[derive(Debug, Clone, Default)]
pub struct Recorder(Arc<Mutex<Stats>>);

impl Recorder {
    pub fn record(&self, label: &'static str, latency: Duration) {
        self.0.lock().expect("recorder lock").record(label, latency);
    }

    fn take(&self) -> Stats {
        std::mem::take(&mut *self.0.lock().expect("recorder lock"))
    }
}

/// Runs `operation(user, index)` with `users` concurrent virtual users until `until`.
/// `index` counts operations across all users from 0, so it can pick distinct items.
pub async fn drive<F, Fut>(users: usize, until: Until, operation: F) -> Stats
where
    F: Fn(usize, u64, Recorder) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let operation = Arc::new(operation);
    let next = Arc::new(AtomicU64::new(0));
    let recorder = Recorder::default();
    let started = Instant::now();
    let deadline = match until {
        Until::Elapsed(duration) => Some(started + duration),
        Until::Count(_) => None,
    };
    let mut workers = Vec::with_capacity(users);
    for user in 0..users {
        let operation = operation.clone();
        let next = next.clone();
        let recorder = recorder.clone();
        workers.push(tokio::spawn(async move {
            let mut stats = Stats::default();
            loop {
                if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    break;
                }
                let index = next.fetch_add(1, Ordering::Relaxed);
                if let Until::Count(count) = until
                    && index >= count
                {
                    break;
                }
                let sent = Instant::now();
                match operation(user, index, recorder.clone()).await {
                    Ok(label) => stats.record(label, sent.elapsed()),
                    Err(error) => stats.error(error),
                }
            }
            stats
        }));
    }
    let mut total = Stats::default();
    for worker in workers {
        total.merge(worker.await.expect("a virtual user panicked"));
    }
    total.elapsed = started.elapsed();
    total.merge(recorder.take());
    total
}
