//! The embedded bus: a SQLite file in the data dir, for the one-process marketplace.
//!
//! It keeps JetStream's semantics inside one process: every event is stored once (its id is
//! unique, like `Nats-Msg-Id`), each consumer group gets its own delivery of each event it
//! subscribed to, a delivery is leased to one subscriber while its handler runs, and a failed
//! or timed-out handler gets it again after the retry policy's backoff. Deliveries live on
//! disk, so a restart resumes where the process stopped.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{BusError, Delivery, DynHandler, Event, EventBus, Outcome, RetryPolicy, subject_for};
use crate::db::now_millis;

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
";

/// How many deliveries a subscriber leases at a time. One: a lease lasts `ack_wait` from when it
/// is taken, and deliveries are handled one after another, so a second leased delivery would
/// have its lease running out while it waits for the first, and go to another subscriber too.
const BATCH: i64 = 1;

pub struct EmbeddedBus {
    pool: SqlitePool,
    prefix: String,
    policy: RetryPolicy,
    published: Arc<Notify>,
}

impl EmbeddedBus {
    /// Opens (or creates) the bus file.
    pub async fn open(path: &Path, prefix: &str, policy: RetryPolicy) -> anyhow::Result<Self> {
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
        Ok(Self { pool, prefix: prefix.to_owned(), policy, published: Arc::new(Notify::new()) })
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
}

#[async_trait::async_trait]
impl EventBus for EmbeddedBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let subject = subject_for(&self.prefix, &event.kind);
        let result: Result<(), sqlx::Error> = async {
            let mut tx = self.pool.begin().await?;
            let seq: Option<i64> = sqlx::query_scalar(
                "INSERT INTO messages (event_id, subject, payload, stored_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (event_id) DO NOTHING RETURNING seq",
            )
            .bind(event.id.to_string())
            .bind(&subject)
            .bind(event.encode())
            .bind(now_millis())
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(seq) = seq {
                sqlx::query(
                    "INSERT INTO deliveries (grp, seq, attempts, visible_at) \
                     SELECT grp, $1, 0, 0 FROM subscriptions WHERE subject = $2",
                )
                .bind(seq)
                .bind(&subject)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        }
        .await;
        result.map_err(|err| BusError::Unavailable(err.into()))?;
        self.published.notify_waiters();
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        kinds: &[&str],
        handler: DynHandler,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, BusError> {
        self.subscribe_group(group, kinds).await.map_err(|err| BusError::Unavailable(err.into()))?;
        let subscriber = Subscriber {
            pool: self.pool.clone(),
            group: group.to_owned(),
            policy: self.policy.clone(),
            published: self.published.clone(),
            handler,
        };
        Ok(tokio::spawn(async move { subscriber.run(shutdown).await }))
    }

    async fn check(&self) -> Result<(), BusError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(drop).map_err(|err| BusError::Unavailable(err.into()))
    }

    fn retry_policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

struct Subscriber {
    pool: SqlitePool,
    group: String,
    policy: RetryPolicy,
    published: Arc<Notify>,
    handler: DynHandler,
}

impl Subscriber {
    async fn run(self, shutdown: CancellationToken) {
        let mut failures = 0u32;
        loop {
            // Register for wake-ups before looking, so a publish in between is not missed.
            let published = self.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            let wait = match self.deliver_batch(&shutdown).await {
                Ok(Some(wait)) => {
                    failures = 0;
                    wait
                }
                Ok(None) => {
                    failures = 0;
                    continue;
                }
                Err(err) => {
                    failures += 1;
                    tracing::warn!(group = %self.group, error = %err, "embedded bus read failed; will retry");
                    Duration::from_millis(100 * 2u64.pow(failures.min(5)))
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = &mut published => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        tracing::debug!(group = %self.group, "embedded subscriber stopped");
    }

    /// Leases and handles due deliveries. `Ok(None)` means "look again now";
    /// `Ok(Some(wait))` means nothing is due for `wait`.
    async fn deliver_batch(&self, shutdown: &CancellationToken) -> Result<Option<Duration>, sqlx::Error> {
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
        .bind(BATCH)
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
        for (seq, attempts) in leased {
            if shutdown.is_cancelled() {
                // The lease runs out and the delivery is made again after restart.
                break;
            }
            let payload: Vec<u8> = sqlx::query_scalar("SELECT payload FROM messages WHERE seq = $1")
                .bind(seq)
                .fetch_one(&self.pool)
                .await?;
            let attempt = u32::try_from(attempts).unwrap_or(u32::MAX);
            let outcome = match Event::decode(&payload) {
                Ok(event) => {
                    let delivery = Delivery { event, attempt, is_last_attempt: attempt >= self.policy.max_attempts };
                    match tokio::time::timeout(self.policy.ack_wait, (self.handler)(delivery)).await {
                        Ok(outcome) => outcome,
                        Err(_) => Outcome::Retry(anyhow::anyhow!("handler timed out after {:?}", self.policy.ack_wait)),
                    }
                }
                // Same as JetStream: a message nobody can read is not ours to keep retrying.
                Err(err) => {
                    tracing::error!(group = %self.group, seq, error = %err, "undecodable message on the embedded bus; dropping it");
                    Outcome::Ack
                }
            };
            match outcome {
                Outcome::Ack => {
                    sqlx::query("DELETE FROM deliveries WHERE grp = $1 AND seq = $2")
                        .bind(&self.group)
                        .bind(seq)
                        .execute(&self.pool)
                        .await?;
                }
                Outcome::Retry(err) if attempt >= self.policy.max_attempts => {
                    tracing::error!(group = %self.group, seq, attempt, error = %format!("{err:#}"), "delivery failed on its last attempt; it will not be redelivered");
                    sqlx::query("DELETE FROM deliveries WHERE grp = $1 AND seq = $2")
                        .bind(&self.group)
                        .bind(seq)
                        .execute(&self.pool)
                        .await?;
                }
                Outcome::Retry(err) => {
                    let delay = self.policy.delay_after(attempt);
                    tracing::debug!(group = %self.group, seq, attempt, retry_in = ?delay, error = %format!("{err:#}"), "delivery failed; will redeliver");
                    sqlx::query("UPDATE deliveries SET visible_at = $1 WHERE grp = $2 AND seq = $3")
                        .bind(now_millis() + delay.as_millis() as i64)
                        .bind(&self.group)
                        .bind(seq)
                        .execute(&self.pool)
                        .await?;
                }
            }
        }
        Ok(None)
    }
}
