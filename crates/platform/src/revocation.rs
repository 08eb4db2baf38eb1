//! Revoked sessions: the deny-list that makes signing out sign out everywhere.
//!
//! Session tokens are verified locally by every service, so a copied token would work until
//! its `exp`. Each token carries a session id (`jti`); signing out records it in auth's
//! `revoked_sessions` and publishes `session:revoked`, which every other service that
//! authenticates requests applies to its own `revoked_sessions` (same table, from the platform
//! migrations). The session extractors (`httpkit::session::MaybeUser`, `RequireUser`) refuse a
//! token whose id is listed, asking [`RevokedSessions`] through `httpkit`'s [`RevocationCheck`]
//! (the HTTP layer links no database): one primary-key lookup in the service's own database.
//! Instances of one service share their consumer group, so a per-process list would miss the
//! revocations other instances consumed.
//!
//! A row is needed only until the token expires; [`crate::retention`] deletes it then.

use futures::future::BoxFuture;
use httpkit::error::ApiError;
use httpkit::session::RevocationCheck;
use uuid::Uuid;

use crate::bus::Event;
use crate::consumer::{HandleError, payload};
use crate::db::{Db, Tx, millis, now_millis};
use contract::events::SessionRevoked;

/// A service's list of revoked sessions, which its API router's session extractors consult
/// (`crate::service::Context::api_router` installs it).
#[derive(Debug, Clone)]
pub struct RevokedSessions {
    db: Db,
}

impl RevokedSessions {
    pub fn new(db: &Db) -> Self {
        Self { db: db.clone() }
    }

    /// Whether session `id` was revoked.
    pub async fn contains(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        // Asked on every signed-in request: a reader, so it never waits behind a write.
        let row = sqlx::query("SELECT 1 AS found FROM revoked_sessions WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.reader())
            .await?;
        Ok(row.is_some())
    }
}

impl RevocationCheck for RevokedSessions {
    /// A database that cannot be read answers 503 (the request cannot be trusted meanwhile),
    /// any other database error 500; the cause is logged either way (`ApiError`'s `From`).
    fn is_revoked(&self, id: Uuid) -> BoxFuture<'_, Result<bool, ApiError>> {
        Box::pin(async move { Ok(self.contains(id).await?) })
    }
}

/// Records a revocation on the connection of the caller's transaction (auth's sign-out, or a
/// consumer of `session:revoked`). Returns whether it is new: recording one twice changes
/// nothing.
pub async fn record(conn: &mut sqlx::AnyConnection, revoked: &SessionRevoked) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO revoked_sessions (id, user_id, expires_at, revoked_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(revoked.id.to_string())
    .bind(revoked.user_id.to_string())
    .bind(millis(revoked.expires_at))
    .bind(now_millis())
    .execute(conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        tracing::info!(session_id = %revoked.id, user_id = %revoked.user_id, "session revoked");
    }
    Ok(inserted == 1)
}

/// Applies a `session:revoked` event, for a service's consumer: its handler's arm for
/// [`SessionRevoked::KIND`]. Idempotent by itself, and the consumer records the event id too.
pub async fn apply_event(tx: &mut Tx, event: &Event) -> Result<(), HandleError> {
    record(tx, &payload(event)?).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sqlx::migrate::Migrator;
    use time::OffsetDateTime;

    use sqlx::Row;

    use super::*;

    async fn db() -> (Db, testkit::TempDir) {
        let dir = testkit::TempDir::new();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("revocations.db").display());
        (Db::connect(&url, "revocations", &Migrator::DEFAULT).await.unwrap(), dir)
    }

    fn revoked(expires_in: time::Duration) -> SessionRevoked {
        SessionRevoked {
            id: Uuid::now_v7(),
            user_id: Uuid::new_v4(),
            expires_at: OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() + expires_in,
        }
    }

    #[tokio::test]
    async fn a_revocation_is_recorded_once_and_swept_after_the_token_expired() {
        let (db, _dir) = db().await;
        let list = RevokedSessions::new(&db);
        // Retention of the other rows is off: revocations go when their token expired anyway.
        let retention = crate::retention::Retention::new(db.clone(), None, &[]);
        let count = || async {
            sqlx::query("SELECT COUNT(*) AS n FROM revoked_sessions")
                .fetch_one(&db.pool)
                .await
                .unwrap()
                .get::<i64, _>("n")
        };
        let live = revoked(time::Duration::hours(1));
        let expired = revoked(time::Duration::seconds(-1));
        assert!(!list.contains(live.id).await.unwrap());

        for (event, first) in [(&live, true), (&live, false), (&expired, true)] {
            let mut tx = db.begin().await.unwrap();
            assert_eq!(record(&mut tx, event).await.unwrap(), first);
            tx.commit().await.unwrap();
        }
        assert!(list.contains(live.id).await.unwrap());
        assert!(list.contains(expired.id).await.unwrap());
        assert_eq!(count().await, 2);

        assert_eq!(retention.sweep(now_millis()).await.unwrap(), (1, false));
        assert!(list.contains(live.id).await.unwrap(), "a live token stays revoked");
        assert!(!list.contains(expired.id).await.unwrap(), "an expired token's revocation goes");
        // Once the live token has expired too, its row goes.
        assert_eq!(retention.sweep(millis(live.expires_at) + 1).await.unwrap(), (1, false));
        assert_eq!(count().await, 0);
    }
}
