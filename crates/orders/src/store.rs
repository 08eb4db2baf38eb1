//! The orders service's tables: `orders`, the `tickets` replica (with the updates held until
//! their predecessor arrives) and the refunds payments reported.
//!
//! One live order per ticket is the database's job (a partial unique index), so callers
//! insert and treat a unique violation as the answer, rather than checking first. Ending an
//! order is one guarded `UPDATE ... RETURNING`, so two endings racing cannot both win. An
//! order carries its own copy of its ticket's title, price and version (its snapshot): the
//! replica may move on, the order does not.
//!
//! A change of an order and the event that tells it are written together, in the caller's
//! transaction ([`place_order`], [`cancel_order`], [`complete_order`], [`revive_as_complete`],
//! [`reject_payment`]): the event cannot be lost, nor sent for a change that did not commit.
//!
//! One executor type: every function takes a `&mut AnyConnection`. Reads are given a reader
//! connection (`&mut *db.reader().acquire().await?`); changes are given the connection of the
//! caller's transaction (`&mut tx`, a [`platform::db::Tx`] derefs to it), so the caller
//! decides what commits together.

use crate::domain::{EndReason, Ended, Order, OrderStatus, Refund, Snapshot, Ticket};
use contract::events::{OrderPaymentRejected, TicketCreated, TicketUpdated};
use platform::db::{from_millis, millis, now_millis, uuid_column};
use platform::envelope::ToEvent;
use platform::outbox;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

const ORDER_COLUMNS: &str = "id, user_id, ticket_id, status, expires_at, version, ticket_title, ticket_price, ticket_version, ended_at, end_reason";

fn status(row: &AnyRow) -> Result<OrderStatus, sqlx::Error> {
    let text: String = row.try_get("status")?;
    OrderStatus::parse(&text).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "status".to_owned(),
        source: format!("unknown order status {text:?}").into(),
    })
}

fn order(row: &AnyRow) -> Result<Order, sqlx::Error> {
    Ok(Order {
        id: uuid_column(row, "id")?,
        user_id: uuid_column(row, "user_id")?,
        ticket_id: uuid_column(row, "ticket_id")?,
        status: status(row)?,
        expires_at: from_millis(row.try_get("expires_at")?),
        version: row.try_get("version")?,
        snapshot: Snapshot {
            title: row.try_get("ticket_title")?,
            price: row.try_get("ticket_price")?,
            version: row.try_get("ticket_version")?,
        },
        ended_at: row.try_get("ended_at")?,
        end_reason: row.try_get::<Option<String>, _>("end_reason")?.as_deref().and_then(EndReason::parse),
    })
}

/// A ticket from a row whose ticket columns are prefixed `ticket_`.
fn ticket(row: &AnyRow) -> Result<Ticket, sqlx::Error> {
    Ok(Ticket {
        id: uuid_column(row, "ticket_id")?,
        title: row.try_get("ticket_title")?,
        price: row.try_get("ticket_price")?,
        user_id: uuid_column(row, "ticket_user_id")?,
        version: row.try_get("ticket_version")?,
    })
}

pub async fn find_ticket(conn: &mut AnyConnection, id: Uuid) -> Result<Option<Ticket>, sqlx::Error> {
    sqlx::query(
        "SELECT id AS ticket_id, title AS ticket_title, price AS ticket_price, user_id AS ticket_user_id, \
         version AS ticket_version FROM tickets WHERE id = $1",
    )
    .bind(id.to_string())
    .try_map(|row| ticket(&row))
    .fetch_optional(&mut *conn)
    .await
}

/// Adds a ticket to the replica; `false` if it was already there.
pub async fn insert_ticket(conn: &mut AnyConnection, created: &TicketCreated) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO tickets (id, title, price, user_id, version) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(created.id.to_string())
    .bind(&created.title)
    .bind(created.price)
    .bind(created.user_id.to_string())
    .bind(created.version)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Applies a ticket update if the replica's version is exactly one less; `false` otherwise.
pub async fn advance_ticket(conn: &mut AnyConnection, updated: &TicketUpdated) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE tickets SET title = $1, price = $2, user_id = $3, version = $4 WHERE id = $5 AND version = $6",
    )
    .bind(&updated.title)
    .bind(updated.price)
    .bind(updated.user_id.to_string())
    .bind(updated.version)
    .bind(updated.id.to_string())
    .bind(updated.version - 1)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Places a new order and enqueues `order:created`. Fails with a unique violation when the
/// ticket already has a live order.
pub async fn place_order(conn: &mut AnyConnection, order: &Order) -> Result<(), sqlx::Error> {
    insert_order(conn, order).await?;
    outbox::enqueue(conn, &order.created_event().to_event()).await
}

/// Inserts a new order. Fails with a unique violation when the ticket already has a live order.
async fn insert_order(conn: &mut AnyConnection, order: &Order) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO orders (id, user_id, ticket_id, status, expires_at, version, created_at, \
           ticket_title, ticket_price, ticket_version) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(order.id.to_string())
    .bind(order.user_id.to_string())
    .bind(order.ticket_id.to_string())
    .bind(order.status.as_str())
    .bind(millis(order.expires_at))
    .bind(order.version)
    .bind(now_millis())
    .bind(&order.snapshot.title)
    .bind(order.snapshot.price)
    .bind(order.snapshot.version)
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// An order, with its ticket as it was when the order was placed.
pub async fn find_order(conn: &mut AnyConnection, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
        .bind(id.to_string())
        .try_map(|row| order(&row))
        .fetch_optional(&mut *conn)
        .await
}

/// A buyer's orders, any status, newest first.
pub async fn list_orders(conn: &mut AnyConnection, user_id: Uuid) -> Result<Vec<Order>, sqlx::Error> {
    sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 ORDER BY created_at DESC, id DESC"))
        .bind(user_id.to_string())
        .try_map(|row| order(&row))
        .fetch_all(&mut *conn)
        .await
}

async fn order_status(conn: &mut AnyConnection, id: Uuid) -> Result<Option<OrderStatus>, sqlx::Error> {
    sqlx::query("SELECT status FROM orders WHERE id = $1")
        .bind(id.to_string())
        .try_map(|row| status(&row))
        .fetch_optional(&mut *conn)
        .await
}

/// Cancels a live order (`order:cancelled`); a cancelled or complete order stays as it is.
pub async fn cancel_order(conn: &mut AnyConnection, order_id: Uuid, reason: EndReason) -> Result<Ended, sqlx::Error> {
    end_order(conn, order_id, OrderStatus::Cancelled, Some(reason)).await
}

/// Completes a live order (`order:completed`); a cancelled or complete order stays as it is.
pub async fn complete_order(conn: &mut AnyConnection, order_id: Uuid) -> Result<Ended, sqlx::Error> {
    end_order(conn, order_id, OrderStatus::Complete, None).await
}

async fn end_order(
    conn: &mut AnyConnection,
    order_id: Uuid,
    status: OrderStatus,
    reason: Option<EndReason>,
) -> Result<Ended, sqlx::Error> {
    let Some(order) = end_live_order(conn, order_id, status, reason).await? else {
        return Ok(order_status(conn, order_id).await?.map_or(Ended::Unknown, Ended::Already));
    };
    outbox::enqueue(conn, &order.ended_event()).await?;
    tracing::info!(order_id = %order.id, ticket_id = %order.ticket_id, status = status.as_str(), version = order.version, "order ended");
    Ok(Ended::Now)
}

/// Moves a live order (`created` or `awaiting:payment`) to `status`, bumping its version and
/// recording when and why it ended; `None` if the order is not live.
async fn end_live_order(
    conn: &mut AnyConnection,
    id: Uuid,
    status: OrderStatus,
    reason: Option<EndReason>,
) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE orders SET status = $1, version = version + 1, ended_at = $3, end_reason = $4 \
         WHERE id = $2 AND status IN ('created', 'awaiting:payment') RETURNING {ORDER_COLUMNS}"
    ))
    .bind(status.as_str())
    .bind(id.to_string())
    .bind(now_millis())
    .bind(reason.map(EndReason::as_str))
    .try_map(|row| order(&row))
    .fetch_optional(&mut *conn)
    .await
}

/// Reads an order and holds its row until the transaction ends (portable `FOR UPDATE`), so
/// a payment and a cancellation of the same order are decided one after the other.
pub async fn lock_order(conn: &mut AnyConnection, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query(&format!("UPDATE orders SET version = version WHERE id = $1 RETURNING {ORDER_COLUMNS}"))
        .bind(id.to_string())
        .try_map(|row| order(&row))
        .fetch_optional(&mut *conn)
        .await
}

/// Whether some order holds the ticket (live or complete) as far as `conn` sees. Only a
/// shortcut for the losers of a race (answered without taking the write lock); the partial
/// unique index still decides who wins.
pub async fn ticket_is_held(conn: &mut AnyConnection, ticket_id: Uuid) -> Result<bool, sqlx::Error> {
    let held: Option<String> =
        sqlx::query_scalar("SELECT id FROM orders WHERE ticket_id = $1 AND status <> 'cancelled' LIMIT 1")
            .bind(ticket_id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    Ok(held.is_some())
}

/// Whether another order than `order_id` holds the ticket (live or complete).
pub async fn ticket_held_by_other(
    conn: &mut AnyConnection,
    ticket_id: Uuid,
    order_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let held: Option<String> =
        sqlx::query_scalar("SELECT id FROM orders WHERE ticket_id = $1 AND status <> 'cancelled' AND id <> $2 LIMIT 1")
            .bind(ticket_id.to_string())
            .bind(order_id.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    Ok(held.is_some())
}

/// Completes a cancelled order paid in time (its ticket is free): version + 1, and
/// `order:completed`. `None` if it is no longer cancelled. A unique violation means another
/// order took the ticket meanwhile.
pub async fn revive_as_complete(conn: &mut AnyConnection, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    let revived = sqlx::query(&format!(
        "UPDATE orders SET status = 'complete', version = version + 1, ended_at = $2 \
         WHERE id = $1 AND status = 'cancelled' RETURNING {ORDER_COLUMNS}"
    ))
    .bind(id.to_string())
    .bind(now_millis())
    .try_map(|row| order(&row))
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(revived) = &revived {
        outbox::enqueue(conn, &revived.ended_event()).await?;
    }
    Ok(revived)
}

/// Tells payments that orders will not keep a payment (`order:payment-rejected`): payments
/// owes its refund.
pub async fn reject_payment(conn: &mut AnyConnection, rejected: &OrderPaymentRejected) -> Result<(), sqlx::Error> {
    outbox::enqueue(conn, &rejected.to_event()).await
}

/// The replica's version of a ticket, holding its row until the transaction ends, so two
/// updates of one ticket are applied one after the other (and the second sees the first).
pub async fn lock_ticket_version(conn: &mut AnyConnection, id: Uuid) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("UPDATE tickets SET version = version WHERE id = $1 RETURNING version")
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await
}

/// Keeps an update that arrived ahead of its predecessor until that one is applied.
pub async fn hold_ticket_update(conn: &mut AnyConnection, updated: &TicketUpdated) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO held_ticket_updates (ticket_id, version, title, price, user_id) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (ticket_id, version) DO NOTHING",
    )
    .bind(updated.id.to_string())
    .bind(updated.version)
    .bind(&updated.title)
    .bind(updated.price)
    .bind(updated.user_id.to_string())
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// Takes the held update of `ticket_id` at `version`, if any (and forgets older ones).
pub async fn take_held_update(
    conn: &mut AnyConnection,
    ticket_id: Uuid,
    version: i64,
) -> Result<Option<TicketUpdated>, sqlx::Error> {
    sqlx::query("DELETE FROM held_ticket_updates WHERE ticket_id = $1 AND version < $2")
        .bind(ticket_id.to_string())
        .bind(version)
        .execute(&mut *conn)
        .await?;
    let row = sqlx::query(
        "DELETE FROM held_ticket_updates WHERE ticket_id = $1 AND version = $2 \
         RETURNING ticket_id, version, title, price, user_id",
    )
    .bind(ticket_id.to_string())
    .bind(version)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| {
        Ok(TicketUpdated {
            id: uuid_column(&row, "ticket_id")?,
            version: row.try_get("version")?,
            title: row.try_get("title")?,
            price: row.try_get("price")?,
            user_id: uuid_column(&row, "user_id")?,
            order_id: None,
        })
    })
    .transpose()
}

/// Records a refund payments owes for a payment of an order (`pending`), unless it is known
/// refunded already (events may arrive in any order).
pub async fn refund_owed(
    conn: &mut AnyConnection,
    payment_id: Uuid,
    order_id: Uuid,
    amount: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO order_refunds (payment_id, order_id, amount, status) VALUES ($1, $2, $3, 'pending') \
         ON CONFLICT (payment_id) DO NOTHING",
    )
    .bind(payment_id.to_string())
    .bind(order_id.to_string())
    .bind(amount)
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// Records a refund the gateway confirmed.
pub async fn refund_done(
    conn: &mut AnyConnection,
    payment_id: Uuid,
    order_id: Uuid,
    amount: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO order_refunds (payment_id, order_id, amount, status) VALUES ($1, $2, $3, 'refunded') \
         ON CONFLICT (payment_id) DO UPDATE SET status = 'refunded'",
    )
    .bind(payment_id.to_string())
    .bind(order_id.to_string())
    .bind(amount)
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// What was (or is being) given back for an order: pending while any refund is, with the
/// total amount; `None` when nothing is owed.
pub async fn refund_of(conn: &mut AnyConnection, order_id: Uuid) -> Result<Option<Refund>, sqlx::Error> {
    let rows = sqlx::query("SELECT amount, status FROM order_refunds WHERE order_id = $1")
        .bind(order_id.to_string())
        .fetch_all(&mut *conn)
        .await?;
    let mut refund: Option<Refund> = None;
    for row in rows {
        let amount: i64 = row.try_get("amount")?;
        let pending = row.try_get::<String, _>("status")? == "pending";
        let total = refund.get_or_insert(Refund { pending: false, amount: 0 });
        total.amount += amount;
        total.pending |= pending;
    }
    Ok(refund)
}
