//! The orders service's tables: `orders`, the `tickets` replica (with the updates held until
//! their predecessor arrives) and the refunds payments reported.
//!
//! One live order per ticket is the database's job (a partial unique index), so callers
//! insert and treat a unique violation as the answer, rather than checking first. Ending an
//! order is one guarded `UPDATE ... RETURNING`, so two endings racing cannot both win. An
//! order carries its own copy of its ticket's title, price and version (its snapshot): the
//! replica may move on, the order does not.

use contract::events::{TicketCreated, TicketUpdated};
use platform::db::uuid_column;
use platform::db::{Tx, from_millis, millis, now_millis};
use sqlx::Row;
use sqlx::any::{AnyExecutor, AnyRow};
use uuid::Uuid;

use crate::domain::{EndReason, Order, OrderStatus, Refund, Snapshot, Ticket};

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

pub async fn find_ticket<'c>(executor: impl AnyExecutor<'c>, id: Uuid) -> Result<Option<Ticket>, sqlx::Error> {
    sqlx::query(
        "SELECT id AS ticket_id, title AS ticket_title, price AS ticket_price, user_id AS ticket_user_id, \
         version AS ticket_version FROM tickets WHERE id = $1",
    )
    .bind(id.to_string())
    .fetch_optional(executor)
    .await?
    .as_ref()
    .map(ticket)
    .transpose()
}

/// Adds a ticket to the replica; `false` if it was already there.
pub async fn insert_ticket(tx: &mut Tx, created: &TicketCreated) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO tickets (id, title, price, user_id, version) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(created.id.to_string())
    .bind(&created.title)
    .bind(created.price)
    .bind(created.user_id.to_string())
    .bind(created.version)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Applies a ticket update if the replica's version is exactly one less; `false` otherwise.
pub async fn advance_ticket(tx: &mut Tx, updated: &TicketUpdated) -> Result<bool, sqlx::Error> {
    let changed = sqlx::query(
        "UPDATE tickets SET title = $1, price = $2, user_id = $3, version = $4 WHERE id = $5 AND version = $6",
    )
    .bind(&updated.title)
    .bind(updated.price)
    .bind(updated.user_id.to_string())
    .bind(updated.version)
    .bind(updated.id.to_string())
    .bind(updated.version - 1)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Inserts a new order. Fails with a unique violation when the ticket already has a live order.
pub async fn insert_order(tx: &mut Tx, order: &Order) -> Result<(), sqlx::Error> {
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
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// An order, with its ticket as it was when the order was placed.
pub async fn find_order<'c>(executor: impl AnyExecutor<'c>, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1"))
        .bind(id.to_string())
        .fetch_optional(executor)
        .await?
        .as_ref()
        .map(order)
        .transpose()
}

/// A buyer's orders, any status, newest first.
pub async fn list_orders<'c>(executor: impl AnyExecutor<'c>, user_id: Uuid) -> Result<Vec<Order>, sqlx::Error> {
    sqlx::query(&format!("SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 ORDER BY created_at DESC, id DESC"))
        .bind(user_id.to_string())
        .fetch_all(executor)
        .await?
        .iter()
        .map(order)
        .collect()
}

pub async fn order_status(tx: &mut Tx, id: Uuid) -> Result<Option<OrderStatus>, sqlx::Error> {
    sqlx::query("SELECT status FROM orders WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .as_ref()
        .map(status)
        .transpose()
}

/// Moves a live order (`created` or `awaiting:payment`) to `status`, bumping its version and
/// recording when and why it ended; `None` if the order is not live.
pub async fn end_live_order(
    tx: &mut Tx,
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
    .fetch_optional(&mut **tx)
    .await?
    .as_ref()
    .map(order)
    .transpose()
}

/// Reads an order and holds its row until the transaction ends (portable `FOR UPDATE`), so
/// a payment and a cancellation of the same order are decided one after the other.
pub async fn lock_order(tx: &mut Tx, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query(&format!("UPDATE orders SET version = version WHERE id = $1 RETURNING {ORDER_COLUMNS}"))
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .as_ref()
        .map(order)
        .transpose()
}

/// Whether some order holds the ticket (live or complete) as far as `executor` sees. Only a
/// shortcut for the losers of a race (answered without taking the write lock); the partial
/// unique index still decides who wins.
pub async fn ticket_is_held<'c>(executor: impl AnyExecutor<'c>, ticket_id: Uuid) -> Result<bool, sqlx::Error> {
    let held: Option<String> =
        sqlx::query_scalar("SELECT id FROM orders WHERE ticket_id = $1 AND status <> 'cancelled' LIMIT 1")
            .bind(ticket_id.to_string())
            .fetch_optional(executor)
            .await?;
    Ok(held.is_some())
}

/// Whether another order than `order_id` holds the ticket (live or complete).
pub async fn ticket_held_by_other(tx: &mut Tx, ticket_id: Uuid, order_id: Uuid) -> Result<bool, sqlx::Error> {
    let held: Option<String> =
        sqlx::query_scalar("SELECT id FROM orders WHERE ticket_id = $1 AND status <> 'cancelled' AND id <> $2 LIMIT 1")
            .bind(ticket_id.to_string())
            .bind(order_id.to_string())
            .fetch_optional(&mut **tx)
            .await?;
    Ok(held.is_some())
}

/// Completes a cancelled order paid in time (its ticket is free): version + 1. `None` if it
/// is no longer cancelled. A unique violation means another order took the ticket meanwhile.
pub async fn revive_as_complete(tx: &mut Tx, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE orders SET status = 'complete', version = version + 1, ended_at = $2 \
         WHERE id = $1 AND status = 'cancelled' RETURNING {ORDER_COLUMNS}"
    ))
    .bind(id.to_string())
    .bind(now_millis())
    .fetch_optional(&mut **tx)
    .await?
    .as_ref()
    .map(order)
    .transpose()
}

/// The replica's version of a ticket, holding its row until the transaction ends, so two
/// updates of one ticket are applied one after the other (and the second sees the first).
pub async fn lock_ticket_version(tx: &mut Tx, id: Uuid) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("UPDATE tickets SET version = version WHERE id = $1 RETURNING version")
        .bind(id.to_string())
        .fetch_optional(&mut **tx)
        .await
}

/// Keeps an update that arrived ahead of its predecessor until that one is applied.
pub async fn hold_ticket_update(tx: &mut Tx, updated: &TicketUpdated) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO held_ticket_updates (ticket_id, version, title, price, user_id) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (ticket_id, version) DO NOTHING",
    )
    .bind(updated.id.to_string())
    .bind(updated.version)
    .bind(&updated.title)
    .bind(updated.price)
    .bind(updated.user_id.to_string())
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// Takes the held update of `ticket_id` at `version`, if any (and forgets older ones).
pub async fn take_held_update(
    tx: &mut Tx,
    ticket_id: Uuid,
    version: i64,
) -> Result<Option<TicketUpdated>, sqlx::Error> {
    sqlx::query("DELETE FROM held_ticket_updates WHERE ticket_id = $1 AND version < $2")
        .bind(ticket_id.to_string())
        .bind(version)
        .execute(&mut **tx)
        .await?;
    let row = sqlx::query(
        "DELETE FROM held_ticket_updates WHERE ticket_id = $1 AND version = $2 \
         RETURNING ticket_id, version, title, price, user_id",
    )
    .bind(ticket_id.to_string())
    .bind(version)
    .fetch_optional(&mut **tx)
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
pub async fn refund_owed(tx: &mut Tx, payment_id: Uuid, order_id: Uuid, amount: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO order_refunds (payment_id, order_id, amount, status) VALUES ($1, $2, $3, 'pending') \
         ON CONFLICT (payment_id) DO NOTHING",
    )
    .bind(payment_id.to_string())
    .bind(order_id.to_string())
    .bind(amount)
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// Records a refund the gateway confirmed.
pub async fn refund_done(tx: &mut Tx, payment_id: Uuid, order_id: Uuid, amount: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO order_refunds (payment_id, order_id, amount, status) VALUES ($1, $2, $3, 'refunded') \
         ON CONFLICT (payment_id) DO UPDATE SET status = 'refunded'",
    )
    .bind(payment_id.to_string())
    .bind(order_id.to_string())
    .bind(amount)
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// What was (or is being) given back for an order: pending while any refund is, with the
/// total amount; `None` when nothing is owed.
pub async fn refund_of<'c>(executor: impl AnyExecutor<'c>, order_id: Uuid) -> Result<Option<Refund>, sqlx::Error> {
    let rows = sqlx::query("SELECT amount, status FROM order_refunds WHERE order_id = $1")
        .bind(order_id.to_string())
        .fetch_all(executor)
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
