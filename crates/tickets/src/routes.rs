//! Handlers for `/api/tickets/*`.
//!
//! Checks run in the contract's order: signed in (401), input valid (400), exists (404),
//! business rule (400), owner (401). A change and its event commit in one transaction, then
//! the outbox relay is woken.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use platform::error::{ApiError, ApiResult, IdPath, Json};
use platform::events::ContractEvent;
use platform::money::{Currency, PriceText};
use platform::outbox;
use platform::session::RequireUser;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::AppState;
use crate::domain::{CreationLimit, Listing, RESERVED, Ticket};
use crate::store;

/// `{title, price}`. Taken as raw JSON so a missing or mistyped field is reported against
/// that field.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TicketInput {
    /// Trimmed; at least one visible character, no control characters or bidi overrides.
    #[serde(default)]
    #[schema(value_type = String, required = true, example = "Concert", min_length = 1, max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*[^\s\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\u2800\u3164\ufeff\uffa0][^\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*$")]
    title: Value,
    /// In major units, with at most the currency's decimals: a JSON number or a decimal string
    /// (`"12.50"`). Read from its text, never through a float.
    #[serde(default)]
    #[schema(schema_with = platform::openapi::price_input, required = true)]
    price: PriceText,
}

/// A ticket as clients see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketBody {
    pub id: Uuid,
    pub title: String,
    #[schema(schema_with = platform::openapi::price_output)]
    pub price: Value,
    pub user_id: Uuid,
    pub version: i64,
    /// The order holding the ticket; null while it is for sale.
    #[schema(required = true)]
    pub order_id: Option<Uuid>,
}

impl TicketBody {
    fn new(ticket: Ticket, currency: &Currency) -> Self {
        Self {
            id: ticket.id,
            title: ticket.title,
            price: currency.to_major(ticket.price),
            user_id: ticket.user_id,
            version: ticket.version,
            order_id: ticket.order_id,
        }
    }
}

fn listing(input: &TicketInput, currency: &Currency) -> ApiResult<Listing> {
    Listing::parse(&input.title, &input.price, currency).map_err(ApiError::Invalid)
}

/// List a ticket for sale.
#[utoipa::path(post, path = "/api/tickets", tag = "tickets", request_body = TicketInput,
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 201, description = "Listed", body = TicketBody),
        (status = 400, description = "Invalid title or price (one entry per field), or malformed JSON", body = platform::error::ErrorBody),
        (status = 401, description = "Not signed in", body = platform::error::ErrorBody),
        (status = 429, description = "The seller listed their hourly limit of tickets (`TICKET_CREATIONS_PER_USER_PER_HOUR`); see `Retry-After`", body = platform::error::ErrorBody),
    ))]
pub async fn create_ticket(
    State(state): State<Arc<AppState>>,
    RequireUser(user): RequireUser,
    Json(input): Json<TicketInput>,
) -> ApiResult<(StatusCode, Json<TicketBody>)> {
    let ticket = Ticket::new(user.id, listing(&input, &state.currency)?);
    let mut tx = state.db.begin().await?;
    if let Some(limit) = state.creation_limit.per_window() {
        store::lock_seller(&mut tx, user.id).await?;
        let since = CreationLimit::window_start(platform::db::now_millis());
        let recent = store::listed_since(&mut tx, user.id, since, limit).await?;
        if let Some(wait) = state.creation_limit.wait(&recent, platform::db::now_millis()) {
            tracing::info!(user_id = %user.id, limit, "ticket creation limit reached");
            return Err(ApiError::TooManyRequests { retry_after_secs: wait.as_secs_f64().ceil() as u64 });
        }
    }
    store::insert(&mut tx, &ticket).await?;
    outbox::enqueue(&mut tx, &ticket.created_event().to_event()).await?;
    tx.commit().await?;
    state.outbox.wake();
    tracing::info!(ticket_id = %ticket.id, user_id = %user.id, "ticket listed");
    Ok((StatusCode::CREATED, Json(TicketBody::new(ticket, &state.currency))))
}

/// Tickets for sale (neither reserved nor sold), newest first.
#[utoipa::path(get, path = "/api/tickets", tag = "tickets",
    responses((status = 200, description = "Tickets for sale, newest first", body = [TicketBody])))]
pub async fn list_tickets(State(state): State<Arc<AppState>>) -> ApiResult<Json<Vec<TicketBody>>> {
    let tickets = store::list_available(&state.db.pool).await?;
    Ok(Json(tickets.into_iter().map(|ticket| TicketBody::new(ticket, &state.currency)).collect()))
}

/// One ticket, whatever its state.
#[utoipa::path(get, path = "/api/tickets/{id}", tag = "tickets",
    params(("id" = Uuid, Path, description = "Ticket id")),
    responses(
        (status = 200, description = "The ticket", body = TicketBody),
        (status = 404, description = "Unknown ticket", body = platform::error::ErrorBody),
    ))]
pub async fn show_ticket(State(state): State<Arc<AppState>>, IdPath(id): IdPath) -> ApiResult<Json<TicketBody>> {
    let ticket = store::find(&state.db.pool, id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(TicketBody::new(ticket, &state.currency)))
}

/// Change a ticket's title and price; its version goes up by one.
#[utoipa::path(put, path = "/api/tickets/{id}", tag = "tickets", request_body = TicketInput,
    security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "Ticket id")),
    responses(
        (status = 200, description = "The updated ticket", body = TicketBody),
        (status = 400, description = "Invalid input, or `Cannot edit a reserved ticket`", body = platform::error::ErrorBody),
        (status = 401, description = "Not signed in, or not the ticket's owner", body = platform::error::ErrorBody),
        (status = 404, description = "Unknown ticket", body = platform::error::ErrorBody),
    ))]
pub async fn update_ticket(
    State(state): State<Arc<AppState>>,
    RequireUser(user): RequireUser,
    IdPath(id): IdPath,
    Json(input): Json<TicketInput>,
) -> ApiResult<Json<TicketBody>> {
    let listing = listing(&input, &state.currency)?;
    let ticket = store::find(&state.db.pool, id).await?.ok_or(ApiError::NotFound)?;
    if ticket.order_id.is_some() {
        return Err(ApiError::bad_request(RESERVED));
    }
    if ticket.user_id != user.id {
        return Err(ApiError::Unauthorized);
    }
    let mut tx = state.db.begin().await?;
    // Guarded by `order_id IS NULL`: a reservation committed since the read above wins.
    let Some(updated) = store::update_listing(&mut tx, id, &listing).await? else {
        return Err(ApiError::bad_request(RESERVED));
    };
    outbox::enqueue(&mut tx, &updated.updated_event().to_event()).await?;
    tx.commit().await?;
    state.outbox.wake();
    Ok(Json(TicketBody::new(updated, &state.currency)))
}
