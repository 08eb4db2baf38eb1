//! Handlers for `/api/orders/*`.
//!
//! Checks run in the contract's order: signed in (401), input valid (400), exists (404),
//! business rule (400), owner (401). A change and its event commit in one transaction, then
//! the outbox relay is woken.

use crate::domain::{self, ALREADY_RESERVED, COMPLETED, EndReason, Ended, OWN_TICKET, Order, OrderStatus, Refund};
use crate::{AppState, store};
use axum::extract::State;
use axum::http::StatusCode;
use contract::api::{NewOrder, OrderBody, OrderTicketBody, RefundBody, RefundStatus};
use contract::money::Currency;
use httpkit::error::{ApiError, ApiResult, IdPath, Json};
use httpkit::session::RequireUser;
use platform::db::{from_millis, is_unique_violation};
use std::sync::Arc;

/// An order as its buyer sees it, with the ticket it reserves.
fn order_body(order: Order, refund: Option<Refund>, currency: &Currency) -> OrderBody {
    OrderBody {
        id: order.id,
        user_id: order.user_id,
        status: order.status,
        expires_at: order.expires_at,
        version: order.version,
        ticket: OrderTicketBody {
            id: order.ticket_id,
            title: order.snapshot.title,
            price: currency.to_major(order.snapshot.price),
            version: order.snapshot.version,
        },
        refund: refund.map(|refund| RefundBody {
            status: if refund.pending { RefundStatus::Pending } else { RefundStatus::Refunded },
            amount: currency.to_major(refund.amount),
        }),
    }
}

/// Order a ticket: it is reserved for the buyer until `expiresAt`.
#[utoipa::path(post, path = "/api/orders", tag = "orders", request_body = NewOrder,
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 201, description = "Ordered; the ticket is reserved", body = OrderBody),
        (status = 400, description = "Invalid `ticketId`, `Ticket is already reserved` or `Cannot purchase your own ticket`", body = contract::error::ErrorBody),
        (status = 401, description = "Not signed in", body = contract::error::ErrorBody),
        (status = 404, description = "Unknown ticket", body = contract::error::ErrorBody),
    ))]
pub async fn create_order(
    State(state): State<Arc<AppState>>,
    RequireUser(user): RequireUser,
    Json(input): Json<NewOrder>,
) -> ApiResult<(StatusCode, Json<OrderBody>)> {
    let ticket_id =
        domain::parse_ticket_id(&input.ticket_id).map_err(|message| ApiError::invalid("ticketId", message))?;
    let ticket =
        store::find_ticket(&mut *state.db.reader().acquire().await?, ticket_id).await?.ok_or(ApiError::NotFound)?;
    if ticket.user_id == user.id {
        return Err(ApiError::bad_request(OWN_TICKET));
    }
    // Whole milliseconds, as stored, so every later read shows the same instant.
    let expires_at = from_millis(state.clock.now_millis().saturating_add(state.expiration_millis));
    let order = Order::new(user.id, &ticket, expires_at);
    // A ticket already seen held is answered at once, without waiting for the write lock
    // behind the race's winner (a flash sale's losers). Seen free is no promise: the partial
    // unique index decides, even between instances.
    if store::ticket_is_held(&mut *state.db.reader().acquire().await?, ticket.id).await? {
        return Err(ApiError::bad_request(ALREADY_RESERVED));
    }
    let mut tx = state.db.begin().await?;
    match store::place_order(&mut tx, &order).await {
        Err(err) if is_unique_violation(&err) => return Err(ApiError::bad_request(ALREADY_RESERVED)),
        placed => placed?,
    }
    tx.commit().await?;
    state.outbox.wake();
    tracing::info!(order_id = %order.id, ticket_id = %ticket.id, user_id = %user.id, "ticket ordered");
    Ok((StatusCode::CREATED, Json(order_body(order, None, &state.currency))))
}

/// The caller's orders, any status, newest first.
#[utoipa::path(get, path = "/api/orders", tag = "orders",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "The caller's orders, newest first", body = [OrderBody]),
        (status = 401, description = "Not signed in", body = contract::error::ErrorBody),
    ))]
pub async fn list_orders(
    State(state): State<Arc<AppState>>,
    RequireUser(user): RequireUser,
) -> ApiResult<Json<Vec<OrderBody>>> {
    let orders = store::list_orders(&mut *state.db.reader().acquire().await?, user.id).await?;
    let mut bodies = Vec::with_capacity(orders.len());
    for order in orders {
        let refund = store::refund_of(&mut *state.db.reader().acquire().await?, order.id).await?;
        bodies.push(order_body(order, refund, &state.currency));
    }
    Ok(Json(bodies))
}

/// One of the caller's orders.
#[utoipa::path(get, path = "/api/orders/{id}", tag = "orders",
    security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = OrderBody),
        (status = 401, description = "Not signed in, or not the buyer", body = contract::error::ErrorBody),
        (status = 404, description = "Unknown order", body = contract::error::ErrorBody),
    ))]
pub async fn show_order(
    State(state): State<Arc<AppState>>,
    RequireUser(user): RequireUser,
    IdPath(id): IdPath,
) -> ApiResult<Json<OrderBody>> {
    let order = store::find_order(&mut *state.db.reader().acquire().await?, id).await?.ok_or(ApiError::NotFound)?;
    if order.user_id != user.id {
        return Err(ApiError::Unauthorized);
    }
    let refund = store::refund_of(&mut *state.db.reader().acquire().await?, order.id).await?;
    Ok(Json(order_body(order, refund, &state.currency)))
}

/// Cancel an order, releasing its ticket. Cancelling a cancelled order changes nothing.
#[utoipa::path(delete, path = "/api/orders/{id}", tag = "orders",
    security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "Order id")),
    responses(
        (status = 204, description = "Cancelled (now or before)"),
        (status = 400, description = "`Cannot cancel a completed order`", body = contract::error::ErrorBody),
        (status = 401, description = "Not signed in, or not the buyer", body = contract::error::ErrorBody),
        (status = 404, description = "Unknown order", body = contract::error::ErrorBody),
    ))]
pub async fn cancel_order(
    State(state): State<Arc<AppState>>,
    RequireUser(user): RequireUser,
    IdPath(id): IdPath,
) -> ApiResult<StatusCode> {
    let order = store::find_order(&mut *state.db.reader().acquire().await?, id).await?.ok_or(ApiError::NotFound)?;
    if order.status == OrderStatus::Complete {
        return Err(ApiError::bad_request(COMPLETED));
    }
    if order.user_id != user.id {
        return Err(ApiError::Unauthorized);
    }
    let mut tx = state.db.begin().await?;
    match store::cancel_order(&mut tx, id, EndReason::Buyer).await? {
        Ended::Now => {
            tx.commit().await?;
            state.outbox.wake();
        }
        // Paid since the read above.
        Ended::Already(OrderStatus::Complete) => return Err(ApiError::bad_request(COMPLETED)),
        Ended::Already(_) => {}
        // Found above, and orders are never deleted.
        Ended::Unknown => return Err(ApiError::NotFound),
    }
    Ok(StatusCode::NO_CONTENT)
}
