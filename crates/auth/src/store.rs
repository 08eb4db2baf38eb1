//! The auth tables: accounts (and, through the platform, revoked sessions and the outbox).
//! Every query of the service is here; portable SQL only.
//!
//! One executor type: every function takes a `&mut AnyConnection`: a reader connection for
//! reads (`&mut *db.reader().acquire().await?`), the writer's for a single write, the
//! connection of the caller's transaction (`&mut tx`) for a change and its event.

use contract::events::SessionRevoked;
use platform::db::now_millis;
use platform::envelope::ToEvent;
use platform::{outbox, revocation};
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

/// What sign-in needs of an account.
pub struct Account {
    pub id: Uuid,
    pub password_hash: String,
}

/// Creates an account; `false` when the email is taken (the database decides, so two sign-ups
/// racing for one email cannot both succeed).
pub async fn insert_user(
    conn: &mut AnyConnection,
    id: Uuid,
    email: &str,
    password_hash: &str,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(id.to_string())
    .bind(email)
    .bind(password_hash)
    .bind(now_millis())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The account of a (normalised) email.
pub async fn find_by_email(conn: &mut AnyConnection, email: &str) -> Result<Option<Account>, sqlx::Error> {
    let Some(row) =
        sqlx::query("SELECT id, password_hash FROM users WHERE email = $1").bind(email).fetch_optional(conn).await?
    else {
        return Ok(None);
    };
    Ok(Some(Account { id: platform::db::uuid_column(&row, "id")?, password_hash: row.try_get("password_hash")? }))
}

/// Records a revoked session and, in the caller's transaction, queues `session:revoked` for
/// the other services (once: revoking a session again changes nothing).
pub async fn revoke_session(conn: &mut AnyConnection, revoked: &SessionRevoked) -> Result<(), sqlx::Error> {
    if revocation::record(conn, revoked).await? {
        outbox::enqueue(conn, &revoked.to_event()).await?;
    }
    Ok(())
}
