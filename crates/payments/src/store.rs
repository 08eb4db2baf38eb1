//! The payments tables: the orders replica, the charge attempts (the write-ahead record of
//! what was asked of the gateway) and the payments themselves. Portable SQL only; every query
//! of the service is here.
//!
//! A change of a payment and the event that tells it are written together, on the caller's
//! transaction ([`keep_payment`], [`give_back_payment`], [`owe_refund`], [`refund_made`]):
//! a charge kept or a refund owed cannot go untold.
//!
//! One executor type: every function takes a `&mut AnyConnection`, a pooled connection for
//! what stands alone (the charge attempt is committed before the gateway is asked) or the
//! connection of the caller's transaction (`&mut tx`) for what must commit together.

use crate::domain::{ChargeAttempt, OrderRecord, PayError, PaymentRecord, attempt_status, payment_status};
use contract::events::{OrderStatus, PaymentCreated, RefundCompleted, RefundCreated};
use platform::db::uuid_column;
use platform::envelope::ToEvent;
use platform::outbox;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

impl From<sqlx::Error> for PayError {
    /// A database that cannot be reached is an outage (503, the reconciler settles later);
    /// any other database error is unexpected.
    fn from(err: sqlx::Error) -> Self {
        if httpkit::error::is_database_unavailable(&err) {
            Self::Unavailable(err.into())
        } else {
            Self::Unexpected(err.into())
        }
    }
}

fn order_status(text: String) -> Result<OrderStatus, sqlx::Error> {
    OrderStatus::parse(&text).ok_or_else(|| sqlx::Error::Decode(format!("unknown order status {text:?}").into()))
}

fn order_from(row: &AnyRow) -> Result<OrderRecord, sqlx::Error> {
    Ok(OrderRecord {
        id: uuid_column(row, "id")?,
        user_id: uuid_column(row, "user_id")?,
        price: row.try_get("price")?,
        status: order_status(row.try_get("status")?)?,
        version: row.try_get("version")?,
        expires_at: row.try_get("expires_at")?,
    })
}

fn payment_from(row: &AnyRow) -> Result<PaymentRecord, sqlx::Error> {
    Ok(PaymentRecord {
        id: uuid_column(row, "id")?,
        order_id: uuid_column(row, "order_id")?,
        charge_id: row.try_get("charge_id")?,
        amount: row.try_get("amount")?,
        currency: row.try_get("currency")?,
        status: row.try_get("status")?,
        refund_id: row.try_get("refund_id")?,
        accepted_at: row.try_get("accepted_at")?,
        refund_tries: row.try_get("refund_tries")?,
        refund_next_at: row.try_get("refund_next_at")?,
    })
}

fn attempt_from(row: &AnyRow) -> Result<ChargeAttempt, sqlx::Error> {
    Ok(ChargeAttempt {
        idempotency_key: row.try_get("idempotency_key")?,
        order_id: uuid_column(row, "order_id")?,
        amount: row.try_get("amount")?,
        currency: row.try_get("currency")?,
        token: row.try_get("token")?,
        status: row.try_get("status")?,
        charge_id: row.try_get("charge_id")?,
        outcome: row.try_get("outcome")?,
        tries: row.try_get("tries")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const ATTEMPT_COLUMNS: &str =
    "idempotency_key, order_id, amount, currency, token, status, charge_id, outcome, tries, created_at, updated_at";
const ORDER_COLUMNS: &str = "id, user_id, price, status, version, expires_at";
const PAYMENT_COLUMNS: &str =
    "id, order_id, charge_id, amount, currency, status, refund_id, accepted_at, refund_tries, refund_next_at";

pub async fn find_order(conn: &mut AnyConnection, id: Uuid) -> Result<Option<OrderRecord>, sqlx::Error> {
    sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
        .bind(id.to_string())
        .try_map(|row| order_from(&row))
        .fetch_optional(conn)
        .await
}

/// Reads the order and holds its row until the transaction ends, so whatever changes the
/// order (a cancellation) or pays it waits for this transaction, on PostgreSQL; on SQLite
/// the one writer serialises transactions anyway. Portable stand-in for `SELECT ... FOR
/// UPDATE`.
pub async fn lock_order(conn: &mut AnyConnection, id: Uuid) -> Result<Option<OrderRecord>, sqlx::Error> {
    sqlx::query(&format!("UPDATE orders SET version = version WHERE id = $1 RETURNING {ORDER_COLUMNS}"))
        .bind(id.to_string())
        .try_map(|row| order_from(&row))
        .fetch_optional(conn)
        .await
}

/// Adds an order from `order:created`; an order already known is left alone.
pub async fn insert_order(conn: &mut AnyConnection, order: &OrderRecord) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO orders (id, user_id, price, status, version, expires_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(order.id.to_string())
    .bind(order.user_id.to_string())
    .bind(order.price)
    .bind(order.status.as_str())
    .bind(order.version)
    .bind(order.expires_at)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Moves an order to `status` at `version`, only from `version - 1`.
pub async fn update_order_status(
    conn: &mut AnyConnection,
    id: Uuid,
    status: OrderStatus,
    version: i64,
) -> Result<bool, sqlx::Error> {
    let updated = sqlx::query("UPDATE orders SET status = $1, version = $2 WHERE id = $3 AND version = $4")
        .bind(status.as_str())
        .bind(version)
        .bind(id.to_string())
        .bind(version - 1)
        .execute(conn)
        .await?
        .rows_affected();
    Ok(updated == 1)
}

/// The payments of an order, oldest first.
pub async fn payments_for_order(conn: &mut AnyConnection, order_id: Uuid) -> Result<Vec<PaymentRecord>, sqlx::Error> {
    sqlx::query(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1 ORDER BY created_at, id"))
        .bind(order_id.to_string())
        .try_map(|row| payment_from(&row))
        .fetch_all(conn)
        .await
}

/// The kept payment of an order, if it has one.
pub async fn kept_payment(conn: &mut AnyConnection, order_id: Uuid) -> Result<Option<PaymentRecord>, sqlx::Error> {
    sqlx::query(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE order_id = $1 AND status = $2"))
        .bind(order_id.to_string())
        .bind(payment_status::SUCCEEDED)
        .try_map(|row| payment_from(&row))
        .fetch_optional(conn)
        .await
}

pub async fn payment_by_charge(
    conn: &mut AnyConnection,
    charge_id: &str,
) -> Result<Option<PaymentRecord>, sqlx::Error> {
    sqlx::query(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE charge_id = $1"))
        .bind(charge_id)
        .try_map(|row| payment_from(&row))
        .fetch_optional(conn)
        .await
}

/// Payments whose refund is still owed, oldest first.
pub async fn refunds_due(conn: &mut AnyConnection, now: i64, limit: i64) -> Result<Vec<PaymentRecord>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE status = $1 AND refund_next_at <= $2 \
         ORDER BY refund_next_at, id LIMIT $3"
    ))
    .bind(payment_status::REFUNDING)
    .bind(now)
    .bind(limit)
    .try_map(|row| payment_from(&row))
    .fetch_all(conn)
    .await
}

/// Every refund still owed, due or not.
pub async fn refunds_owed(conn: &mut AnyConnection) -> Result<Vec<PaymentRecord>, sqlx::Error> {
    sqlx::query(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE status = $1 ORDER BY created_at, id"))
        .bind(payment_status::REFUNDING)
        .try_map(|row| payment_from(&row))
        .fetch_all(conn)
        .await
}

/// Claims an owed refund for one attempt: only if nobody moved it since it was read. Its
/// `refund_next_at` becomes `lease_until`, so no other instance asks meanwhile.
pub async fn claim_refund(
    conn: &mut AnyConnection,
    payment: &PaymentRecord,
    lease_until: i64,
) -> Result<bool, sqlx::Error> {
    let claimed =
        sqlx::query("UPDATE payments SET refund_next_at = $1 WHERE id = $2 AND status = $3 AND refund_next_at = $4")
            .bind(lease_until)
            .bind(payment.id.to_string())
            .bind(payment_status::REFUNDING)
            .bind(payment.refund_next_at)
            .execute(conn)
            .await?
            .rows_affected();
    Ok(claimed == 1)
}

/// Records a failed refund attempt: tried again at `next_at`.
pub async fn refund_failed(
    conn: &mut AnyConnection,
    payment_id: Uuid,
    next_at: i64,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payments SET refund_tries = refund_tries + 1, refund_next_at = $1, refund_error = $2 \
         WHERE id = $3 AND status = $4",
    )
    .bind(next_at)
    .bind(error)
    .bind(payment_id.to_string())
    .bind(payment_status::REFUNDING)
    .execute(conn)
    .await
    .map(drop)
}

/// Turns a kept payment into a refund owed (due at once) and enqueues `refund:created`, on
/// the caller's transaction: the obligation is durable before anything is asked of the
/// gateway. The payment as it is now; `None` if it was not kept (already owed or refunded).
pub async fn owe_refund(conn: &mut AnyConnection, payment_id: Uuid) -> Result<Option<PaymentRecord>, sqlx::Error> {
    let payment = sqlx::query(&format!(
        "UPDATE payments SET status = $1, refund_next_at = 0 WHERE id = $2 AND status = $3 RETURNING {PAYMENT_COLUMNS}"
    ))
    .bind(payment_status::REFUNDING)
    .bind(payment_id.to_string())
    .bind(payment_status::SUCCEEDED)
    .try_map(|row| payment_from(&row))
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(payment) = &payment {
        let owed = RefundCreated { payment_id, order_id: payment.order_id, amount: payment.amount };
        outbox::enqueue(conn, &owed.to_event()).await?;
    }
    Ok(payment)
}

pub async fn find_payment(conn: &mut AnyConnection, payment_id: Uuid) -> Result<Option<PaymentRecord>, sqlx::Error> {
    sqlx::query(&format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = $1"))
        .bind(payment_id.to_string())
        .try_map(|row| payment_from(&row))
        .fetch_optional(conn)
        .await
}

async fn insert_payment(conn: &mut AnyConnection, payment: &PaymentRecord, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO payments (id, order_id, charge_id, amount, currency, status, refund_id, created_at, accepted_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(payment.id.to_string())
    .bind(payment.order_id.to_string())
    .bind(&payment.charge_id)
    .bind(payment.amount)
    .bind(&payment.currency)
    .bind(&payment.status)
    .bind(&payment.refund_id)
    .bind(now)
    .bind(payment.accepted_at)
    .execute(conn)
    .await
    .map(drop)
}

/// Records a refund the gateway made, with `refund:completed`, on the caller's transaction.
pub async fn refund_made(
    conn: &mut AnyConnection,
    payment: &PaymentRecord,
    refund_id: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    mark_refunded(conn, payment.id, refund_id, now).await?;
    let event = RefundCompleted {
        payment_id: payment.id,
        order_id: payment.order_id,
        amount: payment.amount,
        refund_id: refund_id.map(str::to_owned),
    };
    outbox::enqueue(conn, &event.to_event()).await
}

/// Records a payment's refund, from whatever status it had.
async fn mark_refunded(
    conn: &mut AnyConnection,
    payment_id: Uuid,
    refund_id: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE payments SET status = $1, refund_id = $2, refunded_at = $3 WHERE id = $4")
        .bind(payment_status::REFUNDED)
        .bind(refund_id)
        .bind(now)
        .bind(payment_id.to_string())
        .execute(conn)
        .await
        .map(drop)
}

/// Records that a charge is about to be asked of the gateway: a new attempt, or the same
/// attempt (same idempotency key) armed again for a retried request. An attempt already
/// `charged` is left as it is: asking again returns the same charge, which is recorded already.
/// The attempt as stored.
pub async fn arm_attempt(
    conn: &mut AnyConnection,
    attempt: &ChargeAttempt,
    now: i64,
) -> Result<ChargeAttempt, sqlx::Error> {
    sqlx::query(
        "INSERT INTO charge_attempts \
           (idempotency_key, order_id, amount, currency, token, status, charge_id, outcome, tries, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, 0, $7, $7) \
         ON CONFLICT (idempotency_key) DO UPDATE SET \
           amount = excluded.amount, currency = excluded.currency, token = excluded.token, \
           status = excluded.status, outcome = NULL, updated_at = excluded.updated_at \
         WHERE charge_attempts.status <> $8",
    )
    .bind(&attempt.idempotency_key)
    .bind(attempt.order_id.to_string())
    .bind(attempt.amount)
    .bind(&attempt.currency)
    .bind(&attempt.token)
    .bind(attempt_status::CHARGING)
    .bind(now)
    .bind(attempt_status::CHARGED)
    .execute(&mut *conn)
    .await?;
    find_attempt(conn, &attempt.idempotency_key).await?.ok_or_else(|| sqlx::Error::RowNotFound)
}

pub async fn find_attempt(
    conn: &mut AnyConnection,
    idempotency_key: &str,
) -> Result<Option<ChargeAttempt>, sqlx::Error> {
    sqlx::query(&format!("SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE idempotency_key = $1"))
        .bind(idempotency_key)
        .try_map(|row| attempt_from(&row))
        .fetch_optional(conn)
        .await
}

/// The charge attempts of an order, oldest first.
pub async fn attempts_for_order(conn: &mut AnyConnection, order_id: Uuid) -> Result<Vec<ChargeAttempt>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE order_id = $1 ORDER BY created_at, idempotency_key"
    ))
    .bind(order_id.to_string())
    .try_map(|row| attempt_from(&row))
    .fetch_all(conn)
    .await
}

/// Attempts still `charging` that nobody has touched since `before`, oldest first.
pub async fn unsettled_attempts(
    conn: &mut AnyConnection,
    before: i64,
    limit: i64,
) -> Result<Vec<ChargeAttempt>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {ATTEMPT_COLUMNS} FROM charge_attempts WHERE status = $1 AND updated_at <= $2 \
         ORDER BY updated_at, idempotency_key LIMIT $3"
    ))
    .bind(attempt_status::CHARGING)
    .bind(before)
    .bind(limit)
    .try_map(|row| attempt_from(&row))
    .fetch_all(conn)
    .await
}

/// Claims an unsettled attempt for the reconciler: only if it is still `charging` and nobody
/// (a retried request, another instance's reconciler) touched it since it was read. Moving
/// `updated_at` also keeps the others off it for another grace period.
pub async fn claim_attempt(conn: &mut AnyConnection, attempt: &ChargeAttempt, now: i64) -> Result<bool, sqlx::Error> {
    let claimed = sqlx::query(
        "UPDATE charge_attempts SET updated_at = $1, tries = tries + 1 \
         WHERE idempotency_key = $2 AND status = $3 AND updated_at = $4",
    )
    .bind(now)
    .bind(&attempt.idempotency_key)
    .bind(attempt_status::CHARGING)
    .bind(attempt.updated_at)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

/// Settles `attempt` charged and keeps its charge as `payment` (`succeeded`), with
/// `payment:created`, on the caller's transaction. A unique violation means another payment
/// of the order was kept meanwhile: decide again.
pub async fn keep_payment(
    conn: &mut AnyConnection,
    attempt: &ChargeAttempt,
    payment: &PaymentRecord,
    now: i64,
) -> Result<(), sqlx::Error> {
    let payment = record_charge(conn, attempt, payment, payment_status::SUCCEEDED, now).await?;
    let event = PaymentCreated {
        id: payment.id,
        order_id: payment.order_id,
        charge_id: payment.charge_id.clone(),
        accepted_at: Some(platform::db::from_millis(attempt.created_at)),
    };
    outbox::enqueue(conn, &event.to_event()).await
}

/// Settles `attempt` charged and records its charge as `payment`, to be given back
/// (`refunding`, with `refund:created`), on the caller's transaction.
pub async fn give_back_payment(
    conn: &mut AnyConnection,
    attempt: &ChargeAttempt,
    payment: &PaymentRecord,
    now: i64,
) -> Result<(), sqlx::Error> {
    let payment = record_charge(conn, attempt, payment, payment_status::REFUNDING, now).await?;
    let owed = RefundCreated { payment_id: payment.id, order_id: payment.order_id, amount: payment.amount };
    outbox::enqueue(conn, &owed.to_event()).await
}

/// Settles `attempt` charged and records its charge as `payment` with `status`: what keeping
/// and giving back a charge share. The payment as recorded.
async fn record_charge(
    conn: &mut AnyConnection,
    attempt: &ChargeAttempt,
    payment: &PaymentRecord,
    status: &str,
    now: i64,
) -> Result<PaymentRecord, sqlx::Error> {
    mark_attempt_charged(conn, &attempt.idempotency_key, &payment.charge_id, now).await?;
    let payment = PaymentRecord { status: status.to_owned(), ..payment.clone() };
    insert_payment(conn, &payment, now).await?;
    Ok(payment)
}

/// Settles an attempt whose charge the gateway took (and that is recorded in `payments`, in
/// the same transaction). The token is forgotten.
pub async fn mark_attempt_charged(
    conn: &mut AnyConnection,
    idempotency_key: &str,
    charge_id: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE charge_attempts SET status = $1, charge_id = $2, token = NULL, outcome = NULL, updated_at = $3 \
         WHERE idempotency_key = $4",
    )
    .bind(attempt_status::CHARGED)
    .bind(charge_id)
    .bind(now)
    .bind(idempotency_key)
    .execute(conn)
    .await
    .map(drop)
}

/// Settles a `charging` attempt the gateway did not charge (`declined` or `failed`, with why).
/// The token is forgotten.
pub async fn mark_attempt_refused(
    conn: &mut AnyConnection,
    idempotency_key: &str,
    status: &str,
    outcome: &str,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE charge_attempts SET status = $1, outcome = $2, token = NULL, updated_at = $3 \
         WHERE idempotency_key = $4 AND status = $5",
    )
    .bind(status)
    .bind(outcome)
    .bind(now)
    .bind(idempotency_key)
    .bind(attempt_status::CHARGING)
    .execute(conn)
    .await
    .map(drop)
}

/// Money not where it should be yet, for the metrics: how many refunds are owed, since when
/// the oldest (ms since the epoch), and how many charge attempts are unsettled.
pub async fn obligations(conn: &mut AnyConnection) -> Result<(i64, Option<i64>, i64), sqlx::Error> {
    let row = sqlx::query("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM payments WHERE status = $1")
        .bind(payment_status::REFUNDING)
        .fetch_one(&mut *conn)
        .await?;
    let unsettled: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM charge_attempts WHERE status = $1")
        .bind(attempt_status::CHARGING)
        .fetch_one(conn)
        .await?;
    Ok((row.try_get("n")?, row.try_get("oldest")?, unsettled))
}
