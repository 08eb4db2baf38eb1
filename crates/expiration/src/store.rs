//! The expiration service's table: `timers`, one row per order, `scheduled` until it fires or
//! the order ends, then `ended` (kept a while, so a late `order:created` does not start it
//! again). Every query of the service is here; portable SQL only.
//!
//! One executor type: every function takes a `&mut AnyConnection`: a pooled connection for
//! the loop's claims and looks, the connection of the caller's transaction (`&mut tx`) for a
//! change that commits with the event it causes or with the consumed event.

use contract::events::ExpirationComplete;
use platform::bus::Event;
use platform::db::now_millis;
use platform::envelope::ToEvent;
use platform::outbox;
use sqlx::AnyConnection;
use uuid::Uuid;

/// Schedules the expiration of `order_id` at `fire_at` (ms since the epoch). Idempotent:
/// an order has one timer, and scheduling it again changes nothing. Returns whether a timer
/// was added.
pub async fn schedule(conn: &mut AnyConnection, order_id: Uuid, fire_at: i64) -> Result<bool, sqlx::Error> {
    // An existing row, scheduled or ended, wins: the order's end may have been applied first.
    let inserted = sqlx::query(
        "INSERT INTO timers (order_id, fire_at, locked_until, status, trace_id) VALUES ($1, $2, 0, 'scheduled', $3) \
         ON CONFLICT (order_id) DO NOTHING",
    )
    .bind(order_id.to_string())
    .bind(fire_at)
    .bind(httpkit::telemetry::current_trace_id())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Ends the timer of an order that no longer needs one (cancelled or paid), writing the row
/// even if its `order:created` has not been applied yet, so that it never schedules. Returns
/// whether a scheduled timer was dropped.
pub async fn unschedule(conn: &mut AnyConnection, order_id: Uuid) -> Result<bool, sqlx::Error> {
    let order_id = order_id.to_string();
    let was_scheduled: Option<i64> =
        sqlx::query_scalar("SELECT fire_at FROM timers WHERE order_id = $1 AND status = 'scheduled'")
            .bind(&order_id)
            .fetch_optional(&mut *conn)
            .await?;
    sqlx::query(
        "INSERT INTO timers (order_id, fire_at, locked_until, status, ended_at) VALUES ($1, 0, 0, 'ended', $2) \
         ON CONFLICT (order_id) DO UPDATE SET status = 'ended', ended_at = COALESCE(timers.ended_at, $2)",
    )
    .bind(&order_id)
    .bind(now_millis())
    .execute(conn)
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

/// Leases up to `limit` timers due at `now` until `lease_until`; their order ids and due
/// times.
pub async fn claim_due(
    conn: &mut AnyConnection,
    now: i64,
    lease_until: i64,
    limit: i64,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
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
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// Hands a leased timer back, claimable again at once.
pub async fn release_claim(conn: &mut AnyConnection, order_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE timers SET locked_until = 0 WHERE order_id = $1").bind(order_id).execute(conn).await.map(drop)
}

/// Ends the scheduled timer of `order_id` and enqueues `expiration:complete`, in the caller's
/// transaction. `None` when the timer was not scheduled any more (fired elsewhere, or its
/// order ended); else the trace of the order that scheduled it, which the event carries on.
pub async fn fire(conn: &mut AnyConnection, order_id: Uuid) -> Result<Option<Option<String>>, sqlx::Error> {
    let ended: Option<Option<String>> = sqlx::query_scalar(
        "UPDATE timers SET status = 'ended', ended_at = $2 WHERE order_id = $1 AND status = 'scheduled' \
         RETURNING trace_id",
    )
    .bind(order_id.to_string())
    .bind(now_millis())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(trace_id) = ended else {
        return Ok(None);
    };
    let event = Event { trace_id: trace_id.clone(), ..ExpirationComplete { order_id }.to_event() };
    outbox::enqueue(conn, &event).await?;
    Ok(Some(trace_id))
}

/// The earliest instant a timer becomes claimable (its `fire_at`, or just after its lease if
/// an instance holds it), if any is scheduled, as seen at `now`.
///
/// Runs after every round, so it must not read every live order's timer: a timer can only be
/// leased once due, so the not-yet-due ones need just the earliest `fire_at` (one step down
/// the `timers_scheduled` index), and only the due ones, few unless the loop is behind, are
/// looked at for their leases.
pub async fn next_due_at(conn: &mut AnyConnection, now: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT MIN(next) FROM ( \
             SELECT MIN(fire_at) AS next FROM timers WHERE status = 'scheduled' AND fire_at > $1 \
             UNION ALL \
             SELECT MIN(CASE WHEN locked_until >= fire_at THEN locked_until + 1 ELSE fire_at END) AS next \
             FROM timers WHERE status = 'scheduled' AND fire_at <= $1 \
         ) AS candidates",
    )
    .bind(now)
    .fetch_one(conn)
    .await
}

/// How many timers are due at `now` and not fired yet.
pub async fn due_count(conn: &mut AnyConnection, now: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM timers WHERE status = 'scheduled' AND fire_at <= $1")
        .bind(now)
        .fetch_one(conn)
        .await
}
