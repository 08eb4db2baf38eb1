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

use std::time::Duration;

use anyhow::Context as _;
use contract::events::ExpirationComplete;
use platform::bus::Event;
use platform::db::{Db, Tx, now_millis};
use platform::envelope::ToEvent;
use platform::outbox::{self, OutboxWaker};
use platform::worker::{Job, Step, Worker};
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

/// Schedules the expiration of `order_id` at `fire_at` (ms since the epoch). Idempotent:
/// an order has one timer, and scheduling it again changes nothing. Returns whether a timer
/// was added.
pub async fn schedule(tx: &mut Tx, order_id: Uuid, fire_at: i64) -> Result<bool, sqlx::Error> {
    // An existing row, scheduled or ended, wins: the order's end may have been applied first.
    let inserted = sqlx::query(
        "INSERT INTO timers (order_id, fire_at, locked_until, status, trace_id) VALUES ($1, $2, 0, 'scheduled', $3) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id.to_string())
    .bind(fire_at)
    .bind(platform::telemetry::current_trace_id())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Ends the timer of an order that no longer needs one (cancelled or paid), writing the row
/// even if its `order:created` has not been applied yet, so that it never schedules. Returns
/// whether a scheduled timer was dropped.
pub async fn unschedule(tx: &mut Tx, order_id: Uuid) -> Result<bool, sqlx::Error> {
    let order_id = order_id.to_string();
    let was_scheduled: Option<i64> =
        sqlx::query_scalar("SELECT fire_at FROM timers WHERE order_id = $1 AND status = 'scheduled'")
            .bind(&order_id)
            .fetch_optional(&mut **tx)
            .await?;
    sqlx::query(
        "INSERT INTO timers (order_id, fire_at, locked_until, status, ended_at) VALUES ($1, 0, 0, 'ended', $2) \
         ON CONFLICT (order_id) DO UPDATE SET status = 'ended', ended_at = COALESCE(timers.ended_at, $2)",
    )
    .bind(&order_id)
    .bind(now_millis())
    .execute(&mut **tx)
    .await?;
    Ok(was_scheduled.is_some())
}

/// Retention of ended timers (see [`platform::retention`]): an ended row only has to outlive a
/// late `order:created` of its order.
pub const ENDED_TIMERS: platform::retention::Sweep = platform::retention::Sweep {
    table: "timers",
    sql: "DELETE FROM timers WHERE order_id IN (SELECT order_id FROM timers \
          WHERE status = 'ended' AND COALESCE(ended_at, fire_at) < $1 LIMIT $2)",
    cutoff: platform::retention::Cutoff::Retained,
};

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
    pub fn new(db: Db, outbox: OutboxWaker, max_sleep: Duration) -> Self {
        Self { db, outbox, waker: TimerWaker::default(), max_sleep: max_sleep.max(MIN_SLEEP) }
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
            Some(at) => {
                Duration::from_millis(u64::try_from(at - now_millis()).unwrap_or(0)).clamp(MIN_SLEEP, self.max_sleep)
            }
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
                    let m = platform::metrics::metrics();
                    m.timers_fired.inc();
                    m.timer_lateness.observe((now_millis() - fire_at).max(0) as f64 / 1000.0);
                }
                Ok(false) => tracing::debug!(%order_id, "timer already fired or dropped elsewhere"),
                Err(err) => {
                    // Hand the rest back now rather than after the lease.
                    for (rest, _) in &claimed[index..] {
                        let _ = sqlx::query("UPDATE timers SET locked_until = 0 WHERE order_id = $1")
                            .bind(rest)
                            .execute(&self.db.pool)
                            .await;
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
        let now = now_millis();
        let lease_until = now + LEASE.as_millis() as i64;
        // The outer `locked_until < $2` is re-checked against the row as it is when the
        // UPDATE gets it, so two instances racing for one timer cannot both lease it.
        sqlx::query_as(
            "UPDATE timers SET locked_until = $1 \
             WHERE order_id IN ( \
                 SELECT order_id FROM timers WHERE status = 'scheduled' AND fire_at <= $2 AND locked_until < $2 \
                 ORDER BY fire_at LIMIT $3) \
               AND locked_until < $2 \
             RETURNING order_id, fire_at",
        )
        .bind(lease_until)
        .bind(now)
        .bind(CLAIM_BATCH)
        .fetch_all(&self.db.pool)
        .await
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
        let ended: Option<Option<String>> = sqlx::query_scalar(
            "UPDATE timers SET status = 'ended', ended_at = $2 WHERE order_id = $1 AND status = 'scheduled' \
             RETURNING trace_id",
        )
        .bind(order_id)
        .bind(now_millis())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(trace_id) = ended else {
            return Ok(false);
        };
        // The event carries on the trace of the order that scheduled the timer.
        let event = Event { trace_id: trace_id.clone(), ..ExpirationComplete { order_id: id }.to_event() };
        outbox::enqueue(&mut tx, &event).await?;
        tx.commit().await?;
        tracing::info!(order_id = %id, trace_id = %trace_id.as_deref().unwrap_or("-"), "order's reservation window ended: expiration:complete enqueued");
        Ok(true)
    }

    /// When the loop must look again: the earliest instant a timer becomes claimable (its
    /// `fire_at`, or just after its lease if another instance holds it).
    async fn next_due_at(&self) -> Result<Option<i64>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT MIN(CASE WHEN locked_until >= fire_at THEN locked_until + 1 ELSE fire_at END) FROM timers \
             WHERE status = 'scheduled'",
        )
        .fetch_one(&self.db.pool)
        .await
    }
}
