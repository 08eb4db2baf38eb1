//! Transactional outbox: events are written in the same transaction as the change they
//! describe, and a relay publishes them afterwards.
//!
//! If the process dies between commit and publish, the rows are still there and the next
//! relay (after restart, or another instance) sends them. The relay deletes a row only
//! after the bus acknowledged it; a crash between ack and delete re-sends an event whose id
//! the bus and the consumers already know, which changes nothing. Rows are claimed with a
//! short lease so several instances of a service do not send the same rows at once.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{AnyConnection, Row};
use tokio_util::sync::CancellationToken;

use crate::bus::{Event, EventBus};
use crate::db::{Db, now_millis};
use crate::worker::{Job, Step, Waker, Worker};

const BATCH: i64 = 100;
/// How long a relay owns the rows it claimed. Short, because it is how long the events of an
/// instance that died mid-publish wait for another instance; a publish takes far less.
const LEASE: Duration = Duration::from_secs(5);
/// How often the relay looks for rows nobody woke it for (another instance crashed).
const POLL: Duration = Duration::from_millis(500);

/// Writes `event` to the outbox on `conn`, which must be the connection of the transaction
/// that makes the change the event describes (`&mut tx`): taking the connection rather than
/// the transaction lets a service's store take one executor type throughout.
pub async fn enqueue(conn: &mut AnyConnection, event: &Event) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO outbox (id, kind, payload, created_at, locked_until) VALUES ($1, $2, $3, $4, 0)")
        .bind(event.id.to_string())
        .bind(&event.kind)
        .bind(String::from_utf8(event.encode()).expect("JSON is UTF-8"))
        .bind(now_millis())
        .execute(conn)
        .await
        .map(drop)
}

/// Wakes the relay after a commit, so events leave at once instead of at the next poll.
pub type OutboxWaker = Waker;

/// Publishes a service's outbox until shutdown.
pub struct OutboxRelay {
    db: Db,
    bus: Arc<dyn EventBus>,
    /// A SQLite database belongs to this process alone (one process per data dir), so rows a
    /// killed predecessor had claimed are released at the first step instead of after the lease.
    release_claims: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Job for OutboxRelay {
    fn name(&self) -> &'static str {
        "outbox relay"
    }

    async fn step(&self) -> anyhow::Result<Step> {
        if self.release_claims.load(std::sync::atomic::Ordering::Relaxed) {
            sqlx::query("UPDATE outbox SET locked_until = 0 WHERE locked_until > 0").execute(&self.db.pool).await?;
            self.release_claims.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let sent = self.relay_batch().await?;
        Ok(if sent as i64 == BATCH { Step::Busy } else { Step::Idle })
    }
}

impl OutboxRelay {
    pub fn new(db: Db, bus: Arc<dyn EventBus>) -> Self {
        let release_claims = (db.backend == crate::db::Backend::Sqlite).into();
        Self { db, bus, release_claims }
    }

    /// Runs the relay in a worker woken by `waker`, until shutdown.
    pub fn spawn(self, waker: OutboxWaker, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        // Retries stay quick: while the bus elects a new leader, events wait here.
        Worker::new(self).poll_every(POLL).woken_by(waker).max_backoff(Duration::from_secs(1)).spawn(shutdown)
    }

    /// Sends one batch (up to `BATCH` rows, published back to back); returns how many events went
    /// out.
    pub async fn relay_batch(&self) -> anyhow::Result<usize> {
        let now = now_millis();
        let lease_until = now + LEASE.as_millis() as i64;
        let rows = sqlx::query(
            "UPDATE outbox SET locked_until = $1 \
             WHERE id IN (SELECT id FROM outbox WHERE locked_until < $2 ORDER BY id LIMIT $3) \
               AND locked_until < $2 \
             RETURNING id, payload",
        )
        .bind(lease_until)
        .bind(now)
        .bind(BATCH)
        .fetch_all(&self.db.pool)
        .await?;
        let mut claimed: Vec<(String, String)> = rows
            .iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("payload")?)))
            .collect::<Result<_, sqlx::Error>>()?;
        claimed.sort();
        let mut ids = Vec::with_capacity(claimed.len());
        let mut events = Vec::with_capacity(claimed.len());
        for (id, payload) in claimed {
            match Event::decode(payload.as_bytes()) {
                Ok(event) => {
                    ids.push(id);
                    events.push(event);
                }
                // Written by our own code, so this cannot happen short of corruption; keep the
                // row (never drop an event) and say so loudly.
                Err(err) => tracing::error!(outbox_id = %id, error = %err, "undecodable outbox row left in place"),
            }
        }
        if events.is_empty() {
            return Ok(0);
        }
        // All publishes go out before any ack is awaited; the bus counts the acknowledged ones
        // from the first, so those rows can go and the rest stay.
        let published = self.bus.publish_batch(&events).await;
        let sent = *published.as_ref().unwrap_or(&0);
        let (sent_ids, unsent_ids) = ids.split_at(sent.min(ids.len()));
        self.delete(sent_ids).await?;
        let failure = match published {
            Ok(sent) if sent >= events.len() => None,
            Ok(sent) => Some(anyhow::anyhow!("the bus acknowledged only {sent} of {} events", events.len())),
            Err(err) => Some(anyhow::Error::from(err)),
        };
        if let Some(err) = failure {
            // Let the unsent rest be claimed again right away rather than after the lease.
            self.release(unsent_ids).await?;
            return Err(err.context("cannot publish outbox events"));
        }
        Ok(sent)
    }

    /// Deletes the rows of events the bus acknowledged, in one statement.
    async fn delete(&self, ids: &[String]) -> Result<(), sqlx::Error> {
        self.for_ids("DELETE FROM outbox WHERE id IN", ids).await
    }

    /// Makes unsent rows claimable again at once.
    async fn release(&self, ids: &[String]) -> Result<(), sqlx::Error> {
        self.for_ids("UPDATE outbox SET locked_until = 0 WHERE id IN", ids).await
    }

    /// Runs `statement ($1, ..., $n)` with `ids` bound, if there are any.
    async fn for_ids(&self, statement: &str, ids: &[String]) -> Result<(), sqlx::Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let placeholders = (1..=ids.len()).map(|n| format!("${n}")).collect::<Vec<_>>().join(", ");
        let sql = format!("{statement} ({placeholders})");
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(id);
        }
        query.execute(&self.db.pool).await.map(drop)
    }
}
