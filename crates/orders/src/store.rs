//! The orders service's tables: `orders` and the `tickets` replica.
//!
//! One live order per ticket is the database's job (a partial unique index), so callers
//! insert and treat a unique violation as the answer, rather than checking first. Ending an
//! order is one guarded `UPDATE ... RETURNING`, so two endings racing cannot both win.

use platform::db::uuid_column;
use platform::db::{Tx, from_millis, millis, now_millis};
use platform::events::{TicketCreated, TicketUpdated};
use sqlx::Row;
use sqlx::any::{AnyExecutor, AnyRow};
use uuid::Uuid;

use crate::domain::{Order, OrderStatus, Ticket};

const ORDER_COLUMNS: &str = "id, user_id, ticket_id, status, expires_at, version";

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

const ORDER_WITH_TICKET: &str = "SELECT o.id, o.user_id, o.ticket_id, o.status, o.expires_at, o.version, \
     t.title AS ticket_title, t.price AS ticket_price, t.user_id AS ticket_user_id, t.version AS ticket_version \
     FROM orders o JOIN tickets t ON t.id = o.ticket_id";

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

pub async fn ticket_version(tx: &mut Tx, id: Uuid) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM tickets WHERE id = $1").bind(id.to_string()).fetch_optional(&mut **tx).await
}

/// Inserts a new order. Fails with a unique violation when the ticket already has a live order.
pub async fn insert_order(tx: &mut Tx, order: &Order) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO orders (id, user_id, ticket_id, status, expires_at, version, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(order.id.to_string())
    .bind(order.user_id.to_string())
    .bind(order.ticket_id.to_string())
    .bind(order.status.as_str())
    .bind(millis(order.expires_at))
    .bind(order.version)
    .bind(now_millis())
    .execute(&mut **tx)
    .await
    .map(drop)
}

/// An order with the replica of its ticket.
pub async fn find_order<'c>(executor: impl AnyExecutor<'c>, id: Uuid) -> Result<Option<(Order, Ticket)>, sqlx::Error> {
    sqlx::query(&format!("{ORDER_WITH_TICKET} WHERE o.id = $1"))
        .bind(id.to_string())
        .fetch_optional(executor)
        .await?
        .map(|row| Ok((order(&row)?, ticket(&row)?)))
        .transpose()
}

/// A buyer's orders, any status, newest first.
pub async fn list_orders<'c>(
    executor: impl AnyExecutor<'c>,
    user_id: Uuid,
) -> Result<Vec<(Order, Ticket)>, sqlx::Error> {
    sqlx::query(&format!("{ORDER_WITH_TICKET} WHERE o.user_id = $1 ORDER BY o.created_at DESC, o.id DESC"))
        .bind(user_id.to_string())
        .fetch_all(executor)
        .await?
        .iter()
        .map(|row| Ok((order(row)?, ticket(row)?)))
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

/// Moves a live order (`created` or `awaiting:payment`) to `status`, bumping its version;
/// `None` if the order is not live.
pub async fn end_live_order(tx: &mut Tx, id: Uuid, status: OrderStatus) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE orders SET status = $1, version = version + 1 \
         WHERE id = $2 AND status IN ('created', 'awaiting:payment') RETURNING {ORDER_COLUMNS}"
    ))
    .bind(status.as_str())
    .bind(id.to_string())
    .fetch_optional(&mut **tx)
    .await?
    .as_ref()
    .map(order)
    .transpose()
}
