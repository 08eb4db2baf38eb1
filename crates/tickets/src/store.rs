//! The tickets service's tables: `tickets` and the `known_orders` replica.
//!
//! Every change of a ticket is one guarded `UPDATE ... RETURNING`, so two changes racing
//! (an edit and a reservation, two reservations) cannot both win, and the returned row, with
//! its new version, is what the change's event describes.
//!
//! A change of a ticket and the event that tells it are written together, in the caller's
//! transaction ([`insert_ticket`]: `ticket:created`; [`update_listing`], [`reserve_ticket`],
//! [`release_ticket`], [`sell_ticket`]: `ticket:updated`): the event cannot be lost, nor sent
//! for a change that did not commit.
//!
//! One executor type: every function takes a `&mut AnyConnection`. Reads are given a reader
//! connection (`&mut *db.reader().acquire().await?`); changes are given the connection of the
//! caller's transaction (`&mut tx`, a [`platform::db::Tx`] derefs to it), so the caller
//! decides what commits together.

use crate::domain::{Cursor, ListQuery, Listing, Page, Ticket, search_key};
use contract::events::OrderStatus;
use platform::db::{now_millis, uuid_column};
use platform::envelope::ToEvent;
use platform::outbox;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

const COLUMNS: &str = "id, title, price, user_id, version, order_id";

fn ticket(row: &AnyRow) -> Result<Ticket, sqlx::Error> {
    let order_id = match row.try_get::<Option<String>, _>("order_id")? {
        Some(_) => Some(uuid_column(row, "order_id")?),
        None => None,
    };
    Ok(Ticket {
        id: uuid_column(row, "id")?,
        title: row.try_get("title")?,
        price: row.try_get("price")?,
        user_id: uuid_column(row, "user_id")?,
        version: row.try_get("version")?,
        order_id,
    })
}

/// Lists a new ticket for sale and enqueues `ticket:created`.
pub async fn insert_ticket(conn: &mut AnyConnection, ticket: &Ticket) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO tickets (id, title, price, user_id, version, order_id, status, created_at, search_title) \
         VALUES ($1, $2, $3, $4, $5, NULL, 'available', $6, $7)",
    )
    .bind(ticket.id.to_string())
    .bind(&ticket.title)
    .bind(ticket.price)
    .bind(ticket.user_id.to_string())
    .bind(ticket.version)
    .bind(now_millis())
    .bind(search_key(&ticket.title))
    .execute(&mut *conn)
    .await?;
    outbox::enqueue(conn, &ticket.created_event().to_event()).await
}

pub async fn find(conn: &mut AnyConnection, id: Uuid) -> Result<Option<Ticket>, sqlx::Error> {
    sqlx::query(&format!("SELECT {COLUMNS} FROM tickets WHERE id = $1"))
        .bind(id.to_string())
        .try_map(|row| ticket(&row))
        .fetch_optional(&mut *conn)
        .await
}

/// One page of the tickets that can be bought (neither reserved nor sold), newest first.
///
/// Keyset pagination: the page starts after the query's cursor, found through the
/// `tickets_for_sale` index, so a deep page costs what the first does. One row more than the
/// page is read to know whether another page follows.
pub async fn list_available(conn: &mut AnyConnection, query: &ListQuery) -> Result<Page, sqlx::Error> {
    let mut sql = format!("SELECT {COLUMNS}, created_at FROM tickets WHERE status = 'available'");
    let mut params = 0;
    if query.after.is_some() {
        sql.push_str(&format!(" AND (created_at, id) < (${}, ${})", params + 1, params + 2));
        params += 2;
    }
    if query.search.is_some() {
        sql.push_str(&format!(" AND search_title LIKE ${} ESCAPE '\\'", params + 1));
        params += 1;
    }
    sql.push_str(&format!(" ORDER BY created_at DESC, id DESC LIMIT ${}", params + 1));
    let mut statement = sqlx::query(&sql);
    if let Some(after) = &query.after {
        statement = statement.bind(after.created_at).bind(after.id.to_string());
    }
    if let Some(search) = &query.search {
        statement = statement.bind(contains_pattern(&search_key(search)));
    }
    let rows = statement.bind(i64::from(query.limit) + 1).fetch_all(&mut *conn).await?;
    let page_rows = &rows[..rows.len().min(query.limit as usize)];
    let next = match page_rows.last() {
        Some(last) if rows.len() > page_rows.len() => {
            Some(Cursor { created_at: last.try_get("created_at")?, id: uuid_column(last, "id")? })
        }
        _ => None,
    };
    Ok(Page { tickets: page_rows.iter().map(ticket).collect::<Result<_, _>>()?, next })
}

/// A `LIKE` pattern (with `ESCAPE '\'`) matching any text that contains `text` as it is:
/// `%`, `_` and `\` in it match only themselves.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Fills in the search key of tickets stored without one (listed before the column existed,
/// or by an older version of the service during an upgrade), a batch at a time. Guarded by
/// `search_title IS NULL`, so an edit committed meanwhile (which sets the key) wins.
pub async fn fill_missing_search_keys(conn: &mut AnyConnection) -> Result<u64, sqlx::Error> {
    let mut filled = 0;
    // Walks the primary key, so each batch is found without scanning the table.
    let mut after = String::new();
    loop {
        let rows =
            sqlx::query("SELECT id, title FROM tickets WHERE id > $1 AND search_title IS NULL ORDER BY id LIMIT 500")
                .bind(&after)
                .fetch_all(&mut *conn)
                .await?;
        let Some(last) = rows.last() else {
            return Ok(filled);
        };
        after = last.try_get("id")?;
        let mut tx = platform::db::begin_on(&mut *conn).await?;
        for row in &rows {
            let title: String = row.try_get("title")?;
            let id: String = row.try_get("id")?;
            filled += sqlx::query("UPDATE tickets SET search_title = $1 WHERE id = $2 AND search_title IS NULL")
                .bind(search_key(&title))
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
    }
}

/// Enqueues `ticket:updated` for a ticket the guard let change; passes the result on.
async fn updated(conn: &mut AnyConnection, changed: Option<Ticket>) -> Result<Option<Ticket>, sqlx::Error> {
    if let Some(ticket) = &changed {
        outbox::enqueue(conn, &ticket.updated_event().to_event()).await?;
    }
    Ok(changed)
}

/// Runs an order's change of a ticket (`$1` the ticket, `$2` the order) and enqueues
/// `ticket:updated`; the changed ticket, or `None` when the guard let nothing change.
async fn change_by_order(
    conn: &mut AnyConnection,
    sql: &str,
    ticket_id: Uuid,
    order_id: Uuid,
) -> Result<Option<Ticket>, sqlx::Error> {
    let changed = sqlx::query(&format!("{sql} RETURNING {COLUMNS}"))
        .bind(ticket_id.to_string())
        .bind(order_id.to_string())
        .try_map(|row| ticket(&row))
        .fetch_optional(&mut *conn)
        .await?;
    updated(conn, changed).await
}

/// A new title and price, and `ticket:updated`, unless an order holds the ticket (`None`).
pub async fn update_listing(
    conn: &mut AnyConnection,
    id: Uuid,
    listing: &Listing,
) -> Result<Option<Ticket>, sqlx::Error> {
    let changed = sqlx::query(&format!(
        "UPDATE tickets SET title = $1, price = $2, search_title = $4, version = version + 1 \
         WHERE id = $3 AND order_id IS NULL RETURNING {COLUMNS}"
    ))
    .bind(&listing.title)
    .bind(listing.price)
    .bind(id.to_string())
    .bind(search_key(&listing.title))
    .try_map(|row| ticket(&row))
    .fetch_optional(&mut *conn)
    .await?;
    updated(conn, changed).await
}

/// Lets `order_id` hold the ticket (`ticket:updated`), unless another order already does (`None`).
pub async fn reserve_ticket(
    conn: &mut AnyConnection,
    ticket_id: Uuid,
    order_id: Uuid,
) -> Result<Option<Ticket>, sqlx::Error> {
    change_by_order(
        conn,
        "UPDATE tickets SET order_id = $2, status = 'reserved', version = version + 1 \
         WHERE id = $1 AND order_id IS NULL",
        ticket_id,
        order_id,
    )
    .await
}

/// Frees a ticket reserved by `order_id` (`ticket:updated`); a ticket held by another order, or
/// sold, stays as is.
pub async fn release_ticket(
    conn: &mut AnyConnection,
    ticket_id: Uuid,
    order_id: Uuid,
) -> Result<Option<Ticket>, sqlx::Error> {
    change_by_order(
        conn,
        "UPDATE tickets SET order_id = NULL, status = 'available', version = version + 1 \
         WHERE id = $1 AND order_id = $2 AND status = 'reserved'",
        ticket_id,
        order_id,
    )
    .await
}

/// Sells a ticket to `order_id`, for good (`ticket:updated`): reserved by that order, or free
/// again (the order was cancelled by its expiry, then revived by a payment accepted in time).
pub async fn sell_ticket(
    conn: &mut AnyConnection,
    ticket_id: Uuid,
    order_id: Uuid,
) -> Result<Option<Ticket>, sqlx::Error> {
    change_by_order(
        conn,
        "UPDATE tickets SET status = 'sold', order_id = $2, version = version + 1 \
         WHERE id = $1 AND ((order_id = $2 AND status = 'reserved') OR (order_id IS NULL AND status = 'available'))",
        ticket_id,
        order_id,
    )
    .await
}

/// The stored version of a replicated order, if the order is known.
pub async fn known_order_version(conn: &mut AnyConnection, order_id: Uuid) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM known_orders WHERE id = $1")
        .bind(order_id.to_string())
        .fetch_optional(&mut *conn)
        .await
}

pub async fn insert_known_order(
    conn: &mut AnyConnection,
    order_id: Uuid,
    ticket_id: Uuid,
    version: i64,
    status: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO known_orders (id, ticket_id, version, status) VALUES ($1, $2, $3, $4)")
        .bind(order_id.to_string())
        .bind(ticket_id.to_string())
        .bind(version)
        .bind(status)
        .execute(&mut *conn)
        .await
        .map(drop)
}

/// Moves a replicated order to `version` and `status` if its stored version is exactly one
/// less; returns the order's ticket when it did.
pub async fn advance_known_order(
    conn: &mut AnyConnection,
    order_id: Uuid,
    version: i64,
    status: OrderStatus,
) -> Result<Option<Uuid>, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE known_orders SET version = $1, status = $2 WHERE id = $3 AND version = $4 RETURNING ticket_id",
    )
    .bind(version)
    .bind(status.as_str())
    .bind(order_id.to_string())
    .bind(version - 1)
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(|row| uuid_column(row, "ticket_id")).transpose()
}

/// Whether the ticket is sold (to whichever order).
pub async fn is_sold(conn: &mut AnyConnection, ticket_id: Uuid) -> Result<bool, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM tickets WHERE id = $1")
        .bind(ticket_id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    Ok(status.as_deref() == Some("sold"))
}

/// Serialises ticket creations of one seller until the caller's transaction ends (a row lock on PostgreSQL; SQLite
/// has one writer), so counting their recent tickets next is exact across instances.
pub async fn lock_seller(conn: &mut AnyConnection, user_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sellers (user_id, last_listed_at) VALUES ($1, $2) \
         ON CONFLICT (user_id) DO UPDATE SET last_listed_at = excluded.last_listed_at",
    )
    .bind(user_id.to_string())
    .bind(now_millis())
    .execute(&mut *conn)
    .await
    .map(drop)
}

/// When `user_id` listed their tickets created after `since` (ms), oldest first, at most
/// `limit` of them.
pub async fn listed_since(
    conn: &mut AnyConnection,
    user_id: Uuid,
    since: i64,
    limit: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query(
        "SELECT created_at FROM tickets WHERE user_id = $1 AND created_at > $2 \
         ORDER BY created_at DESC LIMIT $3",
    )
    .bind(user_id.to_string())
    .bind(since)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|row| row.try_get("created_at"))
    .rev()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn search_patterns_escape_the_like_wildcards() {
        assert_eq!(contains_pattern("jazz"), "%jazz%");
        assert_eq!(contains_pattern("100%"), "%100\\%%");
        assert_eq!(contains_pattern("a_b"), "%a\\_b%");
        assert_eq!(contains_pattern("c:\\d"), "%c:\\\\d%");
    }
}
