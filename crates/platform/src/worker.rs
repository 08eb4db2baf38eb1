//! The one background loop every job runs in: the outbox relay, expiration timers, the payments
//! reconciler, the retention sweeps, and the subscribers of both buses (a step there is one pull
//! or lease round that starts handlers for what it got).
//!
//! A job is a single `step`: claim some work, do it, say whether more is waiting. The worker
//! calls it again at once while it is busy, otherwise waits until it is woken (a commit that
//! left work for it) or its poll interval passes (work another instance left behind). A failed
//! or panicking step is logged with its attempt number and retried after a capped exponential
//! backoff; the loop itself never dies of it, so a loop that ends before shutdown is a bug, and
//! the process watches for it (`httpkit::http::Readiness::watch`: it is then no longer live).
//! Shutdown is a token, checked between steps; a step that waits should watch it too. After the
//! loop stops, the job's `finish` lets work it started (handlers in flight) end.
//!
//! Tests drive a job by calling its `step` directly, so they never sleep to wait for a loop.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What one step found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// More work may be waiting: step again at once.
    Busy,
    /// Nothing to do: wait for a wake-up or the poll interval.
    Idle,
    /// Nothing to do before this long from now (a timer's due time): wait for a wake-up or
    /// this, whichever comes first.
    IdleFor(Duration),
}

/// A job the worker runs step after step.
#[async_trait::async_trait]
pub trait Job: Send + Sync + 'static {
    /// Names the job in logs.
    fn name(&self) -> &str;

    async fn step(&self) -> anyhow::Result<Step>;

    /// Called once when the loop has stopped at shutdown, before the worker's task ends: waits
    /// for the work the steps started in the background (a subscriber's handlers settling their
    /// deliveries).
    async fn finish(&self) {}
}

/// Wakes a worker that waits for work: call [`Waker::wake`] after committing some.
#[derive(Debug, Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.0.notified().await;
    }
}

/// Runs a [`Job`] until shutdown.
pub struct Worker<J> {
    job: J,
    poll: Duration,
    waker: Waker,
    max_backoff: Duration,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);

impl<J: Job> Worker<J> {
    pub fn new(job: J) -> Self {
        Self { job, poll: Duration::from_secs(1), waker: Waker::default(), max_backoff: Duration::from_secs(5) }
    }

    /// The longest wait when idle (default 1 s).
    pub fn poll_every(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Wake-ups come through `waker`.
    pub fn woken_by(mut self, waker: Waker) -> Self {
        self.waker = waker;
        self
    }

    /// The longest pause after failures (default 5 s).
    pub fn max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }

    async fn run(self, shutdown: CancellationToken) {
        let name = self.job.name();
        tracing::debug!(job = name, "worker started");
        let mut failures = 0u32;
        while !shutdown.is_cancelled() {
            let stepped = std::panic::AssertUnwindSafe(self.job.step()).catch_unwind().await;
            let pause = match stepped {
                Ok(Ok(step)) => {
                    failures = 0;
                    match step {
                        Step::Busy => {
                            // Let other tasks run between busy steps.
                            tokio::task::yield_now().await;
                            continue;
                        }
                        Step::Idle => self.poll,
                        Step::IdleFor(wait) => wait,
                    }
                }
                Ok(Err(err)) => {
                    failures += 1;
                    let pause = self.backoff(failures);
                    tracing::warn!(job = name, attempt = failures, error = %format!("{err:#}"), retry_in = ?pause, "job step failed; will retry");
                    pause
                }
                Err(panic) => {
                    failures += 1;
                    let pause = self.backoff(failures);
                    tracing::error!(job = name, attempt = failures, panic = panic_message(&panic), retry_in = ?pause, "job step panicked; will retry");
                    pause
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.waker.woken(), if failures == 0 => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
        self.job.finish().await;
        tracing::debug!(job = name, "worker stopped");
    }

    fn backoff(&self, failures: u32) -> Duration {
        (FIRST_BACKOFF * 2u32.pow(failures.saturating_sub(1).min(10))).min(self.max_backoff)
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Fails twice, panics once, then does `busy` busy steps and goes idle.
    struct Flaky {
        calls: Arc<AtomicU32>,
        busy: u32,
        finished: Arc<AtomicU32>,
    }

    #[async_trait::async_trait]
    impl Job for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }

        async fn step(&self) -> anyhow::Result<Step> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            match call {
                1 | 2 => anyhow::bail!("not yet"),
                3 => panic!("boom"),
                n if n < 4 + self.busy => Ok(Step::Busy),
                _ => Ok(Step::Idle),
            }
        }

        async fn finish(&self) {
            self.finished.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn failures_and_panics_are_retried_busy_steps_repeat_a_wake_up_runs_an_idle_job_and_shutdown_finishes_it() {
        let calls = Arc::new(AtomicU32::new(0));
        let waker = Waker::default();
        let shutdown = CancellationToken::new();
        let finished = Arc::new(AtomicU32::new(0));
        let task = Worker::new(Flaky { calls: calls.clone(), busy: 5, finished: finished.clone() })
            .poll_every(Duration::from_secs(3600))
            .max_backoff(Duration::from_millis(10))
            .woken_by(waker.clone())
            .spawn(shutdown.clone());
        // 2 errors, 1 panic, 5 busy steps, then the first idle step.
        eventually("the job to go idle", || calls.load(Ordering::SeqCst) == 9).await;
        // Idle for an hour: only a wake-up runs it again.
        waker.wake();
        eventually("the woken step", || calls.load(Ordering::SeqCst) == 10).await;
        shutdown.cancel();
        task.await.expect("the worker survives its job's panic");
        assert_eq!(finished.load(Ordering::SeqCst), 1, "the job finishes once, when the loop stops");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let worker = Worker::new(Flaky { calls: Arc::default(), busy: 0, finished: Arc::default() })
            .max_backoff(Duration::from_millis(500));
        let pauses: Vec<u128> = (1..=5).map(|n| worker.backoff(n).as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 500, 500]);
    }
}
