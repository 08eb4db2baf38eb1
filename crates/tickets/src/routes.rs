//! Handlers for `/api/tickets/*`.
//!
//! Checks run in the contract's order: signed in (401), input valid (400), exists (404),
//! business rule (400), owner (401). A change and its event commit in one transaction, then
//! the outbox relay is woken.

use crate::domain::{CreationLimit, Cursor, ListQuery, Listing, RESERVED, Ticket};
use crate::{AppState, store};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use contract::api::{TicketBody, TicketInput};
use contract::error::ErrorItem;
use contract::money::Currency;
use httpkit::error::{ApiError, ApiResult, IdPath, Json};
use httpkit::session::RequireUser;
use std::sync::Arc;

/// A ticket as clients see it.
fn ticket_body(ticket: Ticket, currency: &Currency) -> TicketBody {
    TicketBody {
        id: ticket.id,
        title: ticket.title,
        price: currency.to_major(ticket.price),
        user_id: ticket.user_id,
        version: ticket.version,
        order_id: ticket.order_id,
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
        (status = 400, description = "Invalid title or price (one entry per field), or malformed JSON", body = contract::error::ErrorBody),
        (status = 401, description = "Not signed in", body = contract::error::ErrorBody),
        (status = 429, description = "The seller listed their hourly limit of tickets (`TICKET_CREATIONS_PER_USER_PER_HOUR`); see `Retry-After`", body = contract::error::ErrorBody),
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
    store::insert_ticket(&mut tx, &ticket).await?;
    tx.commit().await?;
    state.outbox.wake();
    tracing::info!(ticket_id = %ticket.id, user_id = %user.id, "ticket listed");
    Ok((StatusCode::CREATED, Json(ticket_body(ticket, &state.currency))))
}

/// The query of `GET /api/tickets`.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the parameters; they are read by `ListQuery::parse`.
pub struct ListParams {
    /// Tickets per page.
    #[param(minimum = 1, maximum = 200, default = 50)]
    limit: Option<u32>,
    /// Where the page starts: the `cursor` of the previous page's `Link: <...>; rel="next"`
    /// URL. Opaque: only a cursor the server gave is valid.
    #[param(pattern = "^[A-Za-z0-9_-]*$")]
    cursor: Option<String>,
    /// Only tickets whose title contains this text, ignoring case.
    q: Option<String>,
}

/// Tickets for sale (neither reserved nor sold), newest first, one page at a time.
///
/// The body is the page's tickets. When more follow, the `Link` header holds the URL of the
/// next page (`<...>; rel="next"`), with the same `limit` and `q`; the last page has none.
/// Tickets listed while a client walks the pages are newer than its position and do not
/// shift the pages it has not read yet.
#[utoipa::path(get, path = "/api/tickets", tag = "tickets",
    params(ListParams),
    responses(
        (status = 200, description = "One page of tickets for sale, newest first", body = [TicketBody],
            headers(("Link" = String, description = "`</api/tickets?...>; rel=\"next\"`: the next page, if any"))),
        (status = 400, description = "Invalid `limit` or `cursor`", body = contract::error::ErrorBody),
    ))]
pub async fn list_tickets(
    State(state): State<Arc<AppState>>,
    RawQuery(raw): RawQuery,
) -> ApiResult<(HeaderMap, Json<Vec<TicketBody>>)> {
    let query = list_query(raw.as_deref().unwrap_or_default())?;
    let page = store::list_available(&mut *state.db.reader().acquire().await?, &query).await?;
    let mut headers = HeaderMap::new();
    if let Some(next) = &page.next {
        headers.insert(header::LINK, next_page_link(&query, next)?);
    }
    let tickets = page.tickets.into_iter().map(|ticket| ticket_body(ticket, &state.currency)).collect();
    Ok((headers, Json(tickets)))
}

/// `limit`, `cursor` and `q` from the query string; each at most once.
fn list_query(raw: &str) -> ApiResult<ListQuery> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw).map_err(|_| ApiError::bad_request("Malformed query string"))?;
    let mut errors = Vec::new();
    let mut value = |name: &str| {
        let mut values = pairs.iter().filter(|(key, _)| key == name).map(|(_, value)| value.as_str());
        let first = values.next();
        if values.next().is_some() {
            errors.push(ErrorItem::field(name, format!("Give {name} at most once")));
        }
        first
    };
    let (limit, cursor, q) = (value("limit"), value("cursor"), value("q"));
    if !errors.is_empty() {
        return Err(ApiError::Invalid(errors));
    }
    ListQuery::parse(limit, cursor, q).map_err(ApiError::Invalid)
}

/// `</api/tickets?limit=..&q=..&cursor=..>; rel="next"`.
fn next_page_link(query: &ListQuery, next: &Cursor) -> ApiResult<HeaderValue> {
    let limit = query.limit.to_string();
    let cursor = next.encode();
    let mut params = vec![("limit", limit.as_str())];
    if let Some(search) = &query.search {
        params.push(("q", search));
    }
    params.push(("cursor", &cursor));
    let query_string = serde_urlencoded::to_string(params).map_err(|err| ApiError::Unexpected(err.into()))?;
    HeaderValue::try_from(format!("</api/tickets?{query_string}>; rel=\"next\""))
        .map_err(|err| ApiError::Unexpected(err.into()))
}

/// One ticket, whatever its state.
#[utoipa::path(get, path = "/api/tickets/{id}", tag = "tickets",
    params(("id" = Uuid, Path, description = "Ticket id")),
    responses(
        (status = 200, description = "The ticket", body = TicketBody),
        (status = 404, description = "Unknown ticket", body = contract::error::ErrorBody),
    ))]
pub async fn show_ticket(State(state): State<Arc<AppState>>, IdPath(id): IdPath) -> ApiResult<Json<TicketBody>> {
    let ticket = store::find(&mut *state.db.reader().acquire().await?, id).await?.ok_or(ApiError::NotFound)?;
    Ok(Json(ticket_body(ticket, &state.currency)))
}

/// Change a ticket's title and price; its version goes up by one.
#[utoipa::path(put, path = "/api/tickets/{id}", tag = "tickets", request_body = TicketInput,
    security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "Ticket id")),
    responses(
        (status = 200, description = "The updated ticket", body = TicketBody),
        (status = 400, description = "Invalid input, or `Cannot edit a reserved ticket`", body = contract::error::ErrorBody),
        (status = 401, description = "Not signed in, or not the ticket's owner", body = contract::error::ErrorBody),
        (status = 404, description = "Unknown ticket", body = contract::error::ErrorBody),
    ))]
pub async fn update_ticket(
    State(state): State<Arc<AppState>>,
    RequireUser(user): RequireUser,
    IdPath(id): IdPath,
    Json(input): Json<TicketInput>,
) -> ApiResult<Json<TicketBody>> {
    let listing = listing(&input, &state.currency)?;
    // Only decides the answer: the change below is guarded on its own.
    let ticket = store::find(&mut *state.db.reader().acquire().await?, id).await?.ok_or(ApiError::NotFound)?;
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
    tx.commit().await?;
    state.outbox.wake();
    Ok(Json(ticket_body(updated, &state.currency)))
}
