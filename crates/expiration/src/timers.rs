//! Expiration timers: one row per live order, fired once when its reservation window ends.
//!
//! Why a table and a loop rather than a `sleep` per order: a timer must outlive the process
//! (a window that ends while the service is down fires right after it starts again) and must
//! fire once however many instances run. Each instance runs one [`TimerLoop`] in a
//! [`platform::worker::Worker`]. It sleeps
//! until the earliest `fire_at` (or until woken because a new timer committed, or at most
//! `max_sleep`, so timers another instance scheduled are seen too), claims due timers with
//! a short lease, and fires each in its own transaction: delete the timer and enqueue
//! `expiration:complete` together. A delete that removes no row means another instance (or
//! an `order:cancelled`) got there first, and nothing is sent.
//!
//! The queries are in [`crate::store`]; this is the loop that runs them.

use crate::store;
use anyhow::Context as _;
use platform::clock::Clock;
use platform::db::Db;
use platform::outbox::OutboxWaker;
use platform::worker::{Job, Step, Worker};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Timers claimed per round.
pub const CLAIM_BATCH: i64 = 100;
/// How long a claimed timer stays with the instance that claimed it. An instance that dies
/// mid-round leaves its claims to the others after this.
pub const LEASE: Duration = Duration::from_secs(5);
/// The shortest pause between rounds, so a clock that disagrees with the sleep timer by a
/// millisecond cannot make the loop spin.
const MIN_SLEEP: Duration = Duration::from_millis(10);

/// Wakes a [`TimerLoop`] so it reconsiders when to fire next (after a timer committed).
pub type TimerWaker = platform::worker::Waker;

/// What one round of the loop did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Due timers this instance leased.
    pub claimed: usize,
    /// Of those, the ones this instance fired (the others were fired or dropped elsewhere).
    pub fired: usize,
}

/// Fires due timers until shutdown. One per instance.
#[derive(Debug, Clone)]
pub struct TimerLoop {
    db: Db,
    outbox: OutboxWaker,
    waker: TimerWaker,
    max_sleep: Duration,
    /// What is due is due on this clock.
    clock: Clock,
}

#[async_trait::async_trait]
impl Job for TimerLoop {
    fn name(&self) -> &'static str {
        "expiration timers"
    }

    async fn step(&self) -> anyhow::Result<Step> {
        let pause = self.round_and_pause().await?;
        Ok(if pause.is_zero() { Step::Busy } else { Step::IdleFor(pause) })
    }
}

impl TimerLoop {
    /// A loop firing what is due on `clock`. A manual clock wakes it when moved, as a new
    /// timer does.
    pub fn new(db: Db, outbox: OutboxWaker, clock: Clock, max_sleep: Duration) -> Self {
        let waker = TimerWaker::default();
        clock.wake_on_advance(&waker);
        Self { db, outbox, waker, max_sleep: max_sleep.max(MIN_SLEEP), clock }
    }

    /// The handle that wakes this loop.
    pub fn waker(&self) -> TimerWaker {
        self.waker.clone()
    }

    /// Runs the loop in a [`Worker`] until shutdown.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let waker = self.waker.clone();
        let max_backoff = self.max_sleep.max(MIN_SLEEP);
        Worker::new(self).woken_by(waker).max_backoff(max_backoff).spawn(shutdown)
    }

    /// Fires what is due, then says how long to sleep: zero when a full batch was claimed
    /// (more may be due), else until the next timer, at most `max_sleep`.
    async fn round_and_pause(&self) -> anyhow::Result<Duration> {
        let round = self.fire_due().await?;
        if round.claimed as i64 == CLAIM_BATCH {
            return Ok(Duration::ZERO);
        }
        let pause = match self.next_due_at().await? {
            None => self.max_sleep,
            Some(at) => Duration::from_millis(u64::try_from(at - self.clock.now_millis()).unwrap_or(0))
                .clamp(MIN_SLEEP, self.max_sleep),
        };
        Ok(pause)
    }

    /// One round: lease up to [`CLAIM_BATCH`] due timers and fire each.
    pub async fn fire_due(&self) -> anyhow::Result<Round> {
        let claimed = self.claim_due().await.context("cannot claim due timers")?;
        let mut round = Round { claimed: claimed.len(), fired: 0 };
        for (index, (order_id, fire_at)) in claimed.iter().enumerate() {
            match self.fire(order_id).await {
                Ok(true) => {
                    round.fired += 1;
                    let m = httpkit::metrics::metrics();
                    m.timers_fired.inc();
                    m.timer_lateness.observe((self.clock.now_millis() - fire_at).max(0) as f64 / 1000.0);
                }
                Ok(false) => tracing::debug!(%order_id, "timer already fired or dropped elsewhere"),
                Err(err) => {
                    // Hand the rest back now rather than after the lease.
                    if let Ok(mut conn) = self.db.pool.acquire().await {
                        for (rest, _) in &claimed[index..] {
                            let _ = store::release_claim(&mut conn, rest).await;
                        }
                    }
                    return Err(err.context(format!("cannot fire the timer of order {order_id}")));
                }
            }
        }
        if round.fired > 0 {
            self.outbox.wake();
        }
        Ok(round)
    }

    /// Leases due timers; returns their order ids and due times.
    async fn claim_due(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let now = self.clock.now_millis();
        let lease_until = now + LEASE.as_millis() as i64;
        store::claim_due(&mut *self.db.pool.acquire().await?, now, lease_until, CLAIM_BATCH).await
    }

    /// Deletes the timer and enqueues `expiration:complete` in one transaction. `false` when
    /// the timer was gone already.
    async fn fire(&self, order_id: &str) -> anyhow::Result<bool> {
        let Ok(id) = Uuid::parse_str(order_id) else {
            // Not written by this code. Left leased, so it is looked at (and reported) again
            // after the lease rather than blocking the timers behind it.
            tracing::error!(order_id, "timer with a malformed order id cannot fire");
            return Ok(false);
        };
        let mut tx = self.db.begin().await?;
        let Some(trace_id) = store::fire(&mut tx, id).await? else {
            return Ok(false);
        };
        tx.commit().await?;
        tracing::info!(order_id = %id, trace_id = %trace_id.as_deref().unwrap_or("-"), "order's reservation window ended: expiration:complete enqueued");
        Ok(true)
    }

    /// When the loop must look again: the earliest instant a timer becomes claimable (its
    /// `fire_at`, or just after its lease if another instance holds it).
    async fn next_due_at(&self) -> Result<Option<i64>, sqlx::Error> {
        store::next_due_at(&mut *self.db.pool.acquire().await?, self.clock.now_millis()).await
    }
}
