//! `/`: the tickets for sale.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use minijinja::context;
use minijinja::value::Serde;
use serde::Serialize;

use super::{PageResult, format_price, page};
use crate::Web;
use crate::api::{Ticket, User};
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
    pub fn new(ticket: &Ticket, web: &Web, user: Option<&User>) -> Self {
        Self {
            id: ticket.id.clone(),
            title: ticket.title.clone(),
            price: format_price(&web.currency, &ticket.price),
            mine: user.is_some_and(|user| user.id == ticket.user_id),
        }
    }
}

pub async fn list_tickets(State(web): State<Arc<Web>>, visitor: Visitor) -> PageResult {
    let (user, tickets) = tokio::join!(web.api.current_user(&visitor), web.api.list_tickets(&visitor));
    let (user, tickets) = (user?, tickets?);
    let tickets: Vec<TicketItem> = tickets.iter().map(|ticket| TicketItem::new(ticket, &web, user.as_ref())).collect();
    Ok(page(StatusCode::OK, "home.html", &visitor, user.as_ref(), context! { tickets => Serde(&tickets) }))
}
