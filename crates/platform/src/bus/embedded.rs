//! The embedded bus: a SQLite file in the data dir, for the one-process marketplace.
//!
//! It keeps JetStream's semantics inside one process: every event is stored once (its id is
//! unique, like `Nats-Msg-Id`), each consumer group gets its own delivery of each event it
//! subscribed to, a delivery is leased to one subscriber while its handler runs, and a failed
//! or timed-out handler gets it again after the retry policy's backoff. Deliveries live on
//! disk, so a restart resumes where the process stopped.
//!
//! A subscriber leases at most as many due deliveries as it has free slots (the policy's
//! `max_in_flight`) and hands them to the handler at once, in batches of up to `max_batch`,
//! each batch in a task of its own. A lease lasts `ack_wait` and is renewed while its handler
//! runs (bounded by `handler_timeout`), so it runs out only when its process died. When a batch
//! is done, its outcomes are recorded together and the freed slots are filled with the next due
//! deliveries. The subscriber is a [`crate::worker::Job`] (a step is one lease round, woken by
//! a publish or a settled batch), so backoff after a failed read, its log and shutdown are the
//! worker's.
//!
//! The bus file is guarded by a lock file beside it: one process per data dir. Whoever takes
//! the lock releases every lease in the file, since their holder is gone.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::{
    BusError, Delivery, DynHandler, Event, EventBus, InFlight, Outcome, RetryPolicy, Round, Subscription, subject_for,
};
use crate::db::now_millis;
use crate::worker::{Job, Step, Waker, Worker};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    subject TEXT NOT NULL,
    payload BLOB NOT NULL,
    stored_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS subscriptions (
    grp TEXT NOT NULL,
    subject TEXT NOT NULL,
    PRIMARY KEY (grp, subject)
);
CREATE TABLE IF NOT EXISTS deliveries (
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    visible_at INTEGER NOT NULL,
    PRIMARY KEY (grp, seq)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (grp, visible_at, seq);
CREATE INDEX IF NOT EXISTS deliveries_seq ON deliveries (seq);
";

pub struct EmbeddedBus {
    pool: SqlitePool,
    /// Held while the bus is open: one process per data dir.
    _lock: std::fs::File,
    prefix: String,
    policy: RetryPolicy,
    /// The subscribers' wakers, woken by every publish. A stopped subscriber's stays: waking it
    /// does nothing, and a process subscribes a handful of times.
    subscribers: std::sync::Mutex<Vec<Waker>>,
}

impl EmbeddedBus {
    /// Opens (or creates) the bus file, after taking the lock beside it: two processes never share
    /// a bus. Leases left by a process that died are released at once, so its pending events flow
    /// again without waiting for them to run out.
    pub async fn open(path: &Path, prefix: &str, policy: RetryPolicy) -> anyhow::Result<Self> {
        let lock = lock_beside(path).await?;
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5));
        // One connection: every statement is short, and it makes leases race-free.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .with_context(|| format!("cannot open the embedded bus at {}", path.display()))?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await.context("cannot create the embedded bus tables")?;
        // We hold the lock, so no handler of another process runs: every lease in the file is a
        // dead process's. (Retry delays are released too: that only brings a retry forward.)
        let released = sqlx::query("UPDATE deliveries SET visible_at = 0 WHERE visible_at > $1")
            .bind(now_millis())
            .execute(&pool)
            .await
            .context("cannot release the leases of an earlier process")?
            .rows_affected();
        if released > 0 {
            tracing::info!(released, "released deliveries leased by an earlier process");
        }
        Ok(Self { pool, _lock: lock, prefix: prefix.to_owned(), policy, subscribers: std::sync::Mutex::default() })
    }

    /// A job deleting the messages every group has settled once they are older than `keep`, as
    /// a stream's age limit would: a group subscribing later no longer sees them.
    pub fn retention(&self, keep: Duration) -> MessageRetention {
        MessageRetention { pool: self.pool.clone(), keep }
    }

    async fn subscribe_group(&self, group: &str, kinds: &[&str]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for kind in kinds {
            let subject = subject_for(&self.prefix, kind);
            let new = sqlx::query("INSERT INTO subscriptions (grp, subject) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(group)
                .bind(&subject)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if new {
                // A group sees what was published before it first subscribed, like a JetStream
                // consumer with DeliverPolicy::All.
                sqlx::query(
                    "INSERT INTO deliveries (grp, seq, attempts, visible_at) \
                     SELECT $1, seq, 0, 0 FROM messages WHERE subject = $2 ON CONFLICT DO NOTHING",
                )
                .bind(group)
                .bind(&subject)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await
    }

    /// Stores one event, once, with a delivery for every group subscribed to its subject.
    async fn store(&self, tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, event: &Event) -> Result<(), sqlx::Error> {
        let subject = subject_for(&self.prefix, &event.kind);
        let seq: Option<i64> = sqlx::query_scalar(
            "INSERT INTO messages (event_id, subject, payload, stored_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (event_id) DO NOTHING RETURNING seq",
        )
        .bind(event.id.to_string())
        .bind(&subject)
        .bind(event.encode())
        .bind(now_millis())
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(seq) = seq {
            sqlx::query(
                "INSERT INTO deliveries (grp, seq, attempts, visible_at) \
                 SELECT grp, $1, 0, 0 FROM subscriptions WHERE subject = $2",
            )
            .bind(seq)
            .bind(&subject)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl EventBus for EmbeddedBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        self.publish_batch(std::slice::from_ref(event)).await.map(drop)
    }

    async fn publish_batch(&self, events: &[Event]) -> Result<usize, BusError> {
        if events.is_empty() {
            return Ok(0);
        }
        // One transaction: all of them are stored, or none.
        let result: Result<(), sqlx::Error> = async {
            let mut tx = self.pool.begin().await?;
            for event in events {
                self.store(&mut tx, event).await?;
            }
            tx.commit().await
        }
        .await;
        result.map_err(|err| BusError::Unavailable(err.into()))?;
        for subscriber in self.subscribers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
            subscriber.wake();
        }
        Ok(events.len())
    }

    async fn subscribe(
        &self,
        group: &str,
        kinds: &[&str],
        handler: DynHandler,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, BusError> {
        self.subscribe_group(group, kinds).await.map_err(|err| BusError::Unavailable(err.into()))?;
        let waker = Waker::default();
        self.subscribers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(waker.clone());
        let subscriber = Subscriber {
            pool: self.pool.clone(),
            group: group.to_owned(),
            policy: self.policy.clone(),
            handler,
            waker: waker.clone(),
        };
        let subscription =
            Subscription::new(format!("embedded subscriber {group}"), group, &self.policy, subscriber, &shutdown);
        Ok(Worker::new(subscription).woken_by(waker).spawn(shutdown))
    }

    async fn check(&self) -> Result<(), BusError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(drop).map_err(|err| BusError::Unavailable(err.into()))
    }

    fn retry_policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

/// Another process holds the data dir: waiting will not help, so a caller should stop.
#[derive(Debug, thiserror::Error)]
#[error("the data dir is in use by another process ({} is locked); one process per data dir", .0.display())]
pub struct DataDirInUse(pub std::path::PathBuf);

/// Takes the exclusive lock on `<bus file>.lock`. Waits a little, since a process restarting
/// in place (or a test reopening the bus) may still be letting go of it.
async fn lock_beside(path: &Path) -> anyhow::Result<std::fs::File> {
    let lock_path = path.with_extension("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(DataDirInUse(lock_path).into()),
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("cannot lock {}", lock_path.display()));
            }
        }
    }
}

/// A group's subscriber: what it leases from and what its handler tasks share.
struct Subscriber {
    pool: SqlitePool,
    group: String,
    policy: RetryPolicy,
    handler: DynHandler,
    /// Its worker's: woken by a publish, and when a batch's outcomes are recorded.
    waker: Waker,
}

/// A step of the subscriber's worker leases as many due deliveries as it has free slots and
/// starts their handlers; the worker is woken by a publish or a settled batch.
#[async_trait::async_trait]
impl Round for Subscriber {
    async fn round(this: &Arc<Self>, free: OwnedSemaphorePermit, in_flight: &InFlight) -> anyhow::Result<Step> {
        Ok(match this.lease_and_start(free, in_flight).await.context("embedded bus read failed")? {
            Some(wait) => Step::IdleFor(wait),
            None => Step::Busy,
        })
    }
}

impl Subscriber {
    /// Leases up to `free.num_permits()` due deliveries and starts their handlers. `Ok(None)`
    /// means "look again now"; `Ok(Some(wait))` means nothing is due for `wait`.
    async fn lease_and_start(
        self: &Arc<Self>,
        mut free: OwnedSemaphorePermit,
        in_flight: &InFlight,
    ) -> Result<Option<Duration>, sqlx::Error> {
        let now = now_millis();
        let lease_until = now + self.policy.ack_wait.as_millis() as i64;
        let leased = sqlx::query(
            "UPDATE deliveries SET attempts = attempts + 1, visible_at = $1 \
             WHERE grp = $2 AND seq IN (SELECT seq FROM deliveries WHERE grp = $2 AND visible_at <= $3 ORDER BY seq LIMIT $4) \
             RETURNING seq, attempts",
        )
        .bind(lease_until)
        .bind(&self.group)
        .bind(now)
        .bind(free.num_permits() as i64)
        .fetch_all(&self.pool)
        .await?;
        if leased.is_empty() {
            let next: Option<i64> = sqlx::query_scalar("SELECT MIN(visible_at) FROM deliveries WHERE grp = $1")
                .bind(&self.group)
                .fetch_one(&self.pool)
                .await?;
            let wait =
                next.map_or(Duration::from_secs(5), |at| Duration::from_millis((at - now).clamp(1, 5_000) as u64));
            return Ok(Some(wait));
        }
        let mut leased: Vec<(i64, i64)> = leased
            .iter()
            .map(|row| Ok((row.try_get("seq")?, row.try_get("attempts")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        leased.sort_unstable();
        // If this fails, the leases run out and the deliveries are made again.
        let placeholders = (1..=leased.len()).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ");
        let sql = format!("SELECT seq, payload FROM messages WHERE seq IN ({placeholders})");
        let mut query = sqlx::query(&sql);
        for (seq, _) in &leased {
            query = query.bind(*seq);
        }
        let mut payloads: HashMap<i64, Vec<u8>> = query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("seq")?, row.try_get("payload")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        // As many leased as there were free slots.
        let batches: Vec<Vec<Leased>> = leased
            .into_iter()
            .map(|(seq, attempts)| Leased {
                seq,
                attempt: u32::try_from(attempts).unwrap_or(u32::MAX),
                payload: payloads.remove(&seq),
            })
            .collect::<Vec<_>>()
            .chunks(self.policy.batch_limit())
            .map(<[Leased]>::to_vec)
            .collect();
        for batch in batches {
            let Some(slots) = free.split(batch.len()) else { break };
            self.start(batch, slots, in_flight);
        }
        Ok(None)
    }

    /// Starts handling a batch of leased deliveries in a task of its own, which holds `slots`
    /// until the outcomes are recorded. The handler is called here, so batches start in `seq`
    /// order.
    fn start(self: &Arc<Self>, batch: Vec<Leased>, slots: OwnedSemaphorePermit, in_flight: &InFlight) {
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut handled = Vec::with_capacity(batch.len());
        let mut unreadable = Vec::new();
        for leased in batch {
            let decoded = leased
                .payload
                .as_deref()
                .ok_or_else(|| anyhow::anyhow!("the message is missing"))
                .and_then(|payload| Event::decode(payload).map_err(anyhow::Error::from));
            match decoded {
                Ok(event) => {
                    let is_last_attempt = leased.attempt >= self.policy.max_attempts;
                    deliveries.push(Delivery { event, attempt: leased.attempt, is_last_attempt });
                    handled.push((leased.seq, leased.attempt));
                }
                // Same as JetStream: a message nobody can read is not ours to keep retrying.
                Err(err) => {
                    tracing::error!(group = %self.group, seq = leased.seq, error = %format!("{err:#}"), "undecodable message on the embedded bus; dropping it");
                    unreadable.push((leased.seq, leased.attempt));
                }
            }
        }
        let handling = (!deliveries.is_empty()).then(|| (self.handler)(deliveries));
        let this = self.clone();
        in_flight.spawn(async move {
            let mut settled: Vec<((i64, u32), Outcome)> = unreadable.into_iter().map(|leased| (leased, Outcome::Ack)).collect();
            if let Some(handling) = handling {
                let outcomes = this.run_handler(&handled, handling).await;
                settled.extend(handled.into_iter().zip(outcomes));
            }
            if let Err(err) = this.settle(settled).await {
                tracing::warn!(group = %this.group, error = %err, "cannot record the outcome of deliveries; they are made again when their leases run out");
            }
            drop(slots);
            // A slot is free, and a retry may be due soon.
            this.waker.wake();
        });
    }

    /// Runs a handler, bounded by the policy's `handler_timeout`, renewing the leases of its
    /// deliveries (`(seq, attempt)`) while it runs, so a lease only runs out when its process
    /// died.
    async fn run_handler(
        &self,
        leased: &[(i64, u32)],
        handling: futures::future::BoxFuture<'static, Vec<Outcome>>,
    ) -> Vec<Outcome> {
        let timeout = self.policy.handler_timeout;
        let handling = tokio::time::timeout(timeout, handling);
        tokio::pin!(handling);
        let every = self.policy.progress_every();
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            tokio::select! {
                done = &mut handling => {
                    return done.unwrap_or_else(|_| {
                        leased.iter().map(|_| Outcome::Retry(anyhow::anyhow!("handler timed out after {timeout:?}"))).collect()
                    });
                }
                _ = renew.tick() => {
                    for &(seq, attempt) in leased {
                        // Only while the lease is still this attempt's.
                        let renewed = sqlx::query("UPDATE deliveries SET visible_at = $1 WHERE grp = $2 AND seq = $3 AND attempts = $4")
                            .bind(now_millis() + self.policy.ack_wait.as_millis() as i64)
                            .bind(&self.group)
                            .bind(seq)
                            .bind(i64::from(attempt))
                            .execute(&self.pool)
                            .await;
                        if let Err(err) = renewed {
                            tracing::warn!(group = %self.group, seq, error = %err, "cannot renew a delivery's lease; it may be made again");
                        }
                    }
                }
            }
        }
    }

    /// Records the outcomes of a batch in one transaction: done deliveries (and those that
    /// failed their last attempt) are deleted, the others come back after their backoff.
    async fn settle(&self, outcomes: Vec<((i64, u32), Outcome)>) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for ((seq, attempt), outcome) in outcomes {
            match outcome {
                Outcome::Ack => {
                    sqlx::query("DELETE FROM deliveries WHERE grp = $1 AND seq = $2")
                        .bind(&self.group)
                        .bind(seq)
                        .execute(&mut *tx)
                        .await?;
                }
                Outcome::Retry(err) if attempt >= self.policy.max_attempts => {
                    tracing::error!(group = %self.group, seq, attempt, error = %format!("{err:#}"), "delivery failed on its last attempt; it will not be redelivered");
                    sqlx::query("DELETE FROM deliveries WHERE grp = $1 AND seq = $2")
                        .bind(&self.group)
                        .bind(seq)
                        .execute(&mut *tx)
                        .await?;
                }
                Outcome::Retry(err) => {
                    let delay = self.policy.delay_after(attempt);
                    tracing::warn!(group = %self.group, seq, attempt, retry_in = ?delay, error = %format!("{err:#}"), "delivery failed; will redeliver");
                    // Only while the lease is still this attempt's: if it ran out and another
                    // subscriber took the delivery, its lease must not be cut short.
                    sqlx::query("UPDATE deliveries SET visible_at = $1 WHERE grp = $2 AND seq = $3 AND attempts = $4")
                        .bind(now_millis() + delay.as_millis() as i64)
                        .bind(&self.group)
                        .bind(seq)
                        .bind(i64::from(attempt))
                        .execute(&mut *tx)
                        .await?;
                }
            }
        }
        tx.commit().await
    }
}

/// A delivery leased to this subscriber, with its message (`None` if it has gone).
#[derive(Clone)]
struct Leased {
    seq: i64,
    attempt: u32,
    payload: Option<Vec<u8>>,
}

/// Deletes settled messages of the embedded bus; see [`EmbeddedBus::retention`].
pub struct MessageRetention {
    pool: SqlitePool,
    keep: Duration,
}

impl MessageRetention {
    /// Rows deleted per step.
    const BATCH: i64 = 1_000;

    /// Deletes at most one batch of settled messages stored before `cutoff` (ms since the
    /// epoch); returns how many.
    pub async fn sweep_before(&self, cutoff: i64) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "DELETE FROM messages WHERE seq IN (SELECT m.seq FROM messages m WHERE m.stored_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = m.seq) ORDER BY m.seq LIMIT $2)",
        )
        .bind(cutoff)
        .bind(Self::BATCH)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

#[async_trait::async_trait]
impl Job for MessageRetention {
    fn name(&self) -> &'static str {
        "bus retention"
    }

    async fn step(&self) -> anyhow::Result<Step> {
        let keep = i64::try_from(self.keep.as_millis()).unwrap_or(i64::MAX);
        let deleted = self.sweep_before(now_millis().saturating_sub(keep)).await?;
        Ok(if deleted == Self::BATCH as u64 { Step::Busy } else { Step::Idle })
    }
}
