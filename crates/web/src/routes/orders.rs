//! `/orders` (My Orders) and `/orders/{id}`: the reservation's countdown, paying, cancelling.

use std::sync::Arc;
use std::time::Duration;

use crate::form::PageForm;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use contract::api::{OrderBody, RefundStatus, SessionUser};
use contract::events::OrderStatus;
use minijinja::context;
use minijinja::value::Serde;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::PageError;
use super::Web;
use super::{
    FormErrors, PageResult, catching_up, form_refusal, format_price, format_time_left, page, parse_id, require_user,
    unauthorized,
};
use crate::visitor::Visitor;

/// How long paying waits for the order to turn complete before showing My Orders anyway
/// (completion follows the payment through an event, usually within milliseconds).
const COMPLETION_WAIT: Duration = Duration::from_secs(3);

/// Stripe's test tokens the sandbox gateway understands; the first succeeds.
const TEST_CARDS: &[(&str, &str)] = &[
    ("tok_visa", "Visa 4242 4242 4242 4242 (succeeds)"),
    ("tok_mastercard", "Mastercard 5555 5555 5555 4444 (succeeds)"),
    ("tok_chargeDeclined", "Visa 4000 0000 0000 0002 (declined)"),
    ("tok_chargeDeclinedInsufficientFunds", "Visa 4000 0000 0000 9995 (insufficient funds)"),
    ("tok_chargeDeclinedExpiredCard", "Visa 4000 0000 0000 0069 (expired card)"),
];

/// An order as the pages show it.
#[derive(Debug, Serialize)]
pub struct OrderView {
    id: String,
    ticket_id: String,
    title: String,
    price: String,
    status: String,
    status_label: &'static str,
    /// Still waiting for payment, and time left to pay.
    payable: bool,
    expires_at: String,
    /// Milliseconds left to pay (0 once expired), for the countdown.
    ms_left: i64,
    time_left: String,
    /// "Refund pending: $10.00" or "Refunded: $10.00", when money was (or is being) given back.
    refund: Option<String>,
}

impl OrderView {
    fn new(order: &OrderBody, web: &Web, now: OffsetDateTime) -> Self {
        let ms_left = ((order.expires_at - now).whole_milliseconds()).clamp(0, i64::MAX as i128) as i64;
        let waiting = is_waiting(order.status);
        let payable = waiting && ms_left > 0;
        let status_label = match order.status {
            OrderStatus::Complete => "Complete",
            OrderStatus::Cancelled => "Cancelled",
            _ if !payable => "Expired",
            _ => "Awaiting payment",
        };
        Self {
            id: order.id.to_string(),
            ticket_id: order.ticket.id.to_string(),
            title: order.ticket.title.clone(),
            price: format_price(&web.currency, &order.ticket.price),
            status: order.status.as_str().to_owned(),
            status_label,
            payable,
            // As the API wrote it: the same RFC 3339 text, read and written by the same library.
            expires_at: order.expires_at.format(&Rfc3339).unwrap_or_default(),
            ms_left,
            time_left: format_time_left((ms_left + 999) / 1000),
            refund: order.refund.as_ref().map(|refund| {
                let amount = format_price(&web.currency, &refund.amount);
                match refund.status {
                    RefundStatus::Refunded => format!("Refunded: {amount}"),
                    RefundStatus::Pending => format!("Refund pending: {amount}"),
                }
            }),
        }
    }
}

/// Created and not paid yet (it may have expired without expiration having cancelled it yet).
fn is_waiting(status: OrderStatus) -> bool {
    matches!(status, OrderStatus::Created | OrderStatus::AwaitingPayment)
}

#[derive(Debug, Default, Deserialize)]
pub struct OrdersQuery {
    /// The order just paid for, to say so while its completion is on its way.
    paid: Option<String>,
}

pub async fn list_orders(
    State(web): State<Arc<Web>>,
    visitor: Visitor,
    Query(query): Query<OrdersQuery>,
) -> PageResult {
    if visitor.session.is_none() {
        return Err(PageError::SignIn { next: visitor.path.clone() });
    }
    let (user, orders) = tokio::join!(web.api.current_user(&visitor), web.api.list_orders(&visitor));
    let user = require_user(user?, &visitor.path)?;
    let orders = match orders {
        Ok(orders) => orders,
        Err(failure) if failure.status() == Some(StatusCode::UNAUTHORIZED) => {
            return Err(PageError::SignIn { next: visitor.path.clone() });
        }
        Err(failure) => return Err(failure.into()),
    };
    let now = OffsetDateTime::now_utc();
    let mut orders: Vec<OrderView> = orders.iter().map(|order| OrderView::new(order, &web, now)).collect();
    let paid = query.paid.filter(|id| orders.iter().any(|order| &order.id == id));
    for order in &mut orders {
        if paid.as_deref() == Some(order.id.as_str()) && order.status != "complete" {
            order.status_label = "Payment processing";
        }
    }
    Ok(page(
        StatusCode::OK,
        "orders.html",
        &visitor,
        Some(&user),
        context! { orders => Serde(&orders), paid => paid.is_some() },
    ))
}

fn order_page(
    web: &Web,
    status: StatusCode,
    visitor: &Visitor,
    user: &SessionUser,
    order: &OrderBody,
    alerts: Vec<String>,
) -> Response {
    let order = OrderView::new(order, web, OffsetDateTime::now_utc());
    let test_cards: Vec<_> =
        TEST_CARDS.iter().map(|(token, label)| context! { token => *token, label => *label }).collect();
    let ctx = context! {
        order => Serde(&order),
        stripe_key => web.stripe_publishable_key.as_deref(),
        test_cards,
        alerts,
    };
    page(status, "order.html", visitor, Some(user), ctx)
}

/// The order, for its owner; someone else's order is as good as missing.
async fn owned_order(
    web: &Web,
    visitor: &Visitor,
    id: uuid::Uuid,
    here: &str,
) -> Result<(SessionUser, OrderBody), PageError> {
    if visitor.session.is_none() {
        return Err(PageError::SignIn { next: here.to_owned() });
    }
    let (user, order) = tokio::join!(web.api.current_user(visitor), web.api.order(visitor, id));
    let user = require_user(user?, here)?;
    match order {
        Ok(order) => Ok((user, order)),
        Err(failure) if failure.status() == Some(StatusCode::UNAUTHORIZED) => Err(PageError::NotFound),
        Err(failure) => Err(failure.into()),
    }
}

pub async fn show_order(State(web): State<Arc<Web>>, visitor: Visitor, Path(id): Path<String>) -> PageResult {
    let id = parse_id(&id)?;
    let (user, order) = owned_order(&web, &visitor, id, &visitor.path).await?;
    Ok(order_page(&web, StatusCode::OK, &visitor, &user, &order, Vec::new()))
}

#[derive(Debug, Deserialize)]
pub struct PayForm {
    #[serde(default)]
    token: String,
}

/// `POST /orders/{id}/pay`: charges the card, then to My Orders.
pub async fn pay_order(
    State(web): State<Arc<Web>>,
    visitor: Visitor,
    Path(id): Path<String>,
    PageForm(form): PageForm<PayForm>,
) -> PageResult {
    let id = parse_id(&id)?;
    let here = format!("/orders/{id}");
    match catching_up(|| web.api.pay(&visitor, id, form.token.trim())).await {
        Ok(()) => {
            wait_for_completion(&web, &visitor, id).await;
            Ok(Redirect::to(&format!("/orders?paid={id}")).into_response())
        }
        Err(failure) if failure.status() == Some(StatusCode::UNAUTHORIZED) => {
            Err(unauthorized(&web, &visitor, &here, "Only the buyer can pay for this order.").await)
        }
        Err(failure) => {
            let (status, items) = form_refusal(failure)?;
            let (user, order) = owned_order(&web, &visitor, id, &here).await?;
            Ok(order_page(&web, status, &visitor, &user, &order, FormErrors::from_api(&items, &[]).general))
        }
    }
}

/// Gives the order a moment to turn complete, so My Orders usually shows it so.
async fn wait_for_completion(web: &Web, visitor: &Visitor, id: uuid::Uuid) {
    let deadline = tokio::time::Instant::now() + COMPLETION_WAIT;
    let mut pause = Duration::from_millis(20);
    while tokio::time::Instant::now() < deadline {
        match web.api.order(visitor, id).await {
            Ok(order) if !is_waiting(order.status) => return,
            Ok(_) => {}
            Err(_) => return,
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// `POST /orders/{id}/cancel`: gives the ticket back.
pub async fn cancel_order(State(web): State<Arc<Web>>, visitor: Visitor, Path(id): Path<String>) -> PageResult {
    let id = parse_id(&id)?;
    let here = format!("/orders/{id}");
    match web.api.cancel_order(&visitor, id).await {
        Ok(()) => Ok(Redirect::to(&here).into_response()),
        Err(failure) if failure.status() == Some(StatusCode::UNAUTHORIZED) => {
            Err(unauthorized(&web, &visitor, &here, "Only the buyer can cancel this order.").await)
        }
        Err(failure) => {
            let (status, items) = form_refusal(failure)?;
            let (user, order) = owned_order(&web, &visitor, id, &here).await?;
            Ok(order_page(&web, status, &visitor, &user, &order, FormErrors::from_api(&items, &[]).general))
        }
    }
}
