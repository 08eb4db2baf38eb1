//! The auth tables: accounts (and, through the platform, revoked sessions and the outbox).
//! Every query of the service is here; portable SQL only.

use contract::events::SessionRevoked;
use platform::db::{Db, now_millis};
use platform::envelope::ToEvent;
use platform::{outbox, revocation};
use sqlx::Row;
use uuid::Uuid;

/// What sign-in needs of an account.
pub struct Account {
    pub id: Uuid,
    pub password_hash: String,
}

/// Creates an account; `false` when the email is taken (the database decides, so two sign-ups
/// racing for one email cannot both succeed).
pub async fn insert_user(db: &Db, id: Uuid, email: &str, password_hash: &str) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(id.to_string())
    .bind(email)
    .bind(password_hash)
    .bind(now_millis())
    .execute(&db.pool)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The account of a (normalised) email, read on a read connection.
pub async fn find_by_email(db: &Db, email: &str) -> Result<Option<Account>, sqlx::Error> {
    let Some(row) = sqlx::query("SELECT id, password_hash FROM users WHERE email = $1")
        .bind(email)
        .fetch_optional(db.reader())
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Account { id: platform::db::uuid_column(&row, "id")?, password_hash: row.try_get("password_hash")? }))
}

/// Records a revoked session and, in the same transaction, queues `session:revoked` for the
/// other services (once: revoking a session again changes nothing).
pub async fn revoke_session(db: &Db, revoked: &SessionRevoked) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    if revocation::record(&mut tx, revoked).await? {
        outbox::enqueue(&mut tx, &revoked.to_event()).await?;
    }
    tx.commit().await
}
