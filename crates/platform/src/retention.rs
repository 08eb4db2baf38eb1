//! Retention: deletes the rows that would otherwise only grow.
//!
//! Two kinds:
//! - rows kept for a while as a guard, deleted once older than `RETENTION_DAYS`: the ids of
//!   processed events (kept so a redelivered event is not applied twice), timers of orders that
//!   ended, and on the embedded bus the messages every group has settled. Each is only needed
//!   while its event can still come back, which is bounded by the stream's age limit (NATS) or
//!   by the outbox and delivery leases (seconds); so the default, 7 days, is far on the safe
//!   side. Set it above `NATS_STREAM_MAX_AGE_SECONDS` when that is longer, and to 0 to keep
//!   them forever;
//! - rows that say when they stop mattering, deleted once that time has passed whatever the
//!   setting: revoked sessions, once their token has expired anyway.
//!
//! Each service runs one [`Retention`] job for its database, on [`crate::worker`]: a step
//! deletes at most one batch per kind of row (short transactions, never a long lock), is busy
//! again while a batch came back full and otherwise waits [`RETENTION_EVERY`].

use std::time::Duration;

use crate::db::{Db, now_millis};
use crate::worker::{Job, Step};

/// Rows deleted per statement.
const BATCH: i64 = 1_000;
/// How long the worker waits after a step that found nothing more to delete.
pub const RETENTION_EVERY: Duration = Duration::from_secs(3_600);

/// One kind of row to delete: a `DELETE` whose `$1` is the cutoff (milliseconds since the
/// epoch: rows before it go) and `$2` the most rows it may delete.
#[derive(Debug, Clone, Copy)]
pub struct Sweep {
    pub table: &'static str,
    pub sql: &'static str,
    pub cutoff: Cutoff,
}

/// What a [`Sweep`]'s cutoff is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoff {
    /// Now minus `RETENTION_DAYS`; the sweep does not run when retention is off.
    Retained,
    /// Now: the rows carry their own end.
    Expired,
}

/// The processed-event ids in every service database.
pub const PROCESSED_EVENTS: Sweep = Sweep {
    table: "processed_events",
    sql: "DELETE FROM processed_events WHERE (consumer, event_id) IN \
          (SELECT consumer, event_id FROM processed_events WHERE processed_at < $1 LIMIT $2)",
    cutoff: Cutoff::Retained,
};

/// Revoked sessions whose token has expired, in every service database.
pub const REVOKED_SESSIONS: Sweep = Sweep {
    table: "revoked_sessions",
    sql: "DELETE FROM revoked_sessions WHERE id IN (SELECT id FROM revoked_sessions WHERE expires_at < $1 LIMIT $2)",
    cutoff: Cutoff::Expired,
};

/// Deletes one service's old rows.
pub struct Retention {
    db: Db,
    keep: Option<Duration>,
    sweeps: Vec<Sweep>,
}

impl Retention {
    /// A job for `db` deleting what `sweeps` name, besides the platform's own tables
    /// ([`PROCESSED_EVENTS`], [`REVOKED_SESSIONS`]); `keep` is `RETENTION_DAYS` (`None`: off).
    pub fn new(db: Db, keep: Option<Duration>, sweeps: &[Sweep]) -> Self {
        let mut all = vec![PROCESSED_EVENTS, REVOKED_SESSIONS];
        all.extend_from_slice(sweeps);
        Self { db, keep, sweeps: all }
    }

    /// Deletes at most one batch of each kind, as if it were `now` (milliseconds since the
    /// epoch); returns the rows deleted and whether any batch was full.
    pub async fn sweep(&self, now: i64) -> Result<(u64, bool), sqlx::Error> {
        let mut deleted = 0;
        let mut full = false;
        for sweep in &self.sweeps {
            let cutoff = match (sweep.cutoff, self.keep) {
                (Cutoff::Expired, _) => now,
                (Cutoff::Retained, Some(keep)) => {
                    now.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
                }
                (Cutoff::Retained, None) => continue,
            };
            let rows = sqlx::query(sweep.sql).bind(cutoff).bind(BATCH).execute(&self.db.pool).await?.rows_affected();
            if rows > 0 {
                tracing::debug!(table = sweep.table, rows, "deleted old rows");
            }
            deleted += rows;
            full |= rows == BATCH as u64;
        }
        Ok((deleted, full))
    }
}

#[async_trait::async_trait]
impl Job for Retention {
    fn name(&self) -> &'static str {
        "retention"
    }

    async fn step(&self) -> anyhow::Result<Step> {
        let (_, full) = self.sweep(now_millis()).await?;
        Ok(if full { Step::Busy } else { Step::Idle })
    }
}
