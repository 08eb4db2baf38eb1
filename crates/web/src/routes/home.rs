//! `/`: the tickets for sale.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use contract::api::{SessionUser, TicketBody};
use minijinja::context;
use minijinja::value::Serde;
use serde::Serialize;

use super::Web;
use super::{PageResult, format_price, page};
use crate::pages::encode_query_value;
use crate::visitor::Visitor;

/// A ticket as a list shows it.
#[derive(Debug, Serialize)]
pub struct TicketItem {
    pub id: String,
    pub title: String,
    pub price: String,
    /// Listed by the visitor.
    pub mine: bool,
}

impl TicketItem {
    pub fn new(ticket: &TicketBody, web: &Web, user: Option<&SessionUser>) -> Self {
        Self {
            id: ticket.id.to_string(),
            title: ticket.title.clone(),
            price: format_price(&web.currency, &ticket.price),
            mine: user.is_some_and(|user| user.id == ticket.user_id),
        }
    }
}

/// `/?q=...&cursor=...`: one page of the tickets for sale (the API's page size), a title
/// search, and a link to the next page while there is one.
pub async fn list_tickets(State(web): State<Arc<Web>>, visitor: Visitor, RawQuery(raw): RawQuery) -> PageResult {
    // A query string this page did not make reads as the first page, unfiltered.
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or_default()).unwrap_or_default();
    let param = |name: &str| {
        pairs.iter().find(|(key, _)| key == name).map(|(_, value)| value.trim()).filter(|value| !value.is_empty())
    };
    let (q, cursor) = (param("q"), param("cursor"));
    let (user, tickets) = tokio::join!(web.api.current_user(&visitor), web.api.list_tickets(&visitor, cursor, q));
    let (user, tickets) = (user?, tickets?);
    let next_page = tickets.next_cursor.as_deref().map(|next| match q {
        Some(q) => format!("/?q={}&cursor={}", encode_query_value(q), encode_query_value(next)),
        None => format!("/?cursor={}", encode_query_value(next)),
    });
    let first_page = cursor.map(|_| match q {
        Some(q) => format!("/?q={}", encode_query_value(q)),
        None => "/".to_owned(),
    });
    let tickets: Vec<TicketItem> =
        tickets.tickets.iter().map(|ticket| TicketItem::new(ticket, &web, user.as_ref())).collect();
    Ok(page(
        StatusCode::OK,
        "home.html",
        &visitor,
        user.as_ref(),
        context! { tickets => Serde(&tickets), q => q.unwrap_or_default(), next_page, first_page },
    ))
}
