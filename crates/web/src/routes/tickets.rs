//! `/tickets/new`, `/tickets/{id}`, `/tickets/{id}/edit`, and buying a ticket.

use std::sync::Arc;

use crate::form::PageForm;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use contract::api::{SessionUser, TicketBody};
use minijinja::context;
use minijinja::value::Serde;
use serde::Deserialize;

use super::PageError;
use super::Web;
use super::{
    FormErrors, PageResult, catching_up, form_refusal, format_price, page, parse_id, price_for_api, price_for_form,
    require_user, unauthorized,
};
use crate::visitor::Visitor;

#[derive(Debug, Deserialize)]
pub struct TicketForm {
    #[serde(default)]
    title: String,
    #[serde(default)]
    price: String,
}

const FIELDS: &[&str] = &["title", "price"];

/// The form of `/tickets/new` and `/tickets/{id}/edit`.
struct FormPage<'a> {
    /// `None` for a new ticket.
    ticket_id: Option<&'a str>,
    title: &'a str,
    price: &'a str,
    errors: FormErrors,
    /// Why the ticket cannot be edited now, instead of the form.
    locked: Option<&'static str>,
}

fn form_page(web: &Web, status: StatusCode, visitor: &Visitor, user: &SessionUser, form: FormPage<'_>) -> Response {
    let (heading, action) = match form.ticket_id {
        Some(id) => ("Edit ticket".to_owned(), format!("/tickets/{id}/edit")),
        None => ("Sell a ticket".to_owned(), "/tickets/new".to_owned()),
    };
    let ctx = context! {
        heading,
        action,
        ticket_id => form.ticket_id,
        title => form.title,
        price => form.price,
        currency => web.currency.code.to_ascii_uppercase(),
        price_step => if web.currency.decimals == 0 { "1" } else { "0.01" },
        errors => Serde(&form.errors.fields),
        alerts => form.errors.general,
        locked => form.locked,
    };
    page(status, "ticket_form.html", visitor, Some(user), ctx)
}

pub async fn new_ticket(State(web): State<Arc<Web>>, visitor: Visitor) -> PageResult {
    let user = require_user(web.api.current_user(&visitor).await?, "/tickets/new")?;
    let form = FormPage { ticket_id: None, title: "", price: "", errors: FormErrors::default(), locked: None };
    Ok(form_page(&web, StatusCode::OK, &visitor, &user, form))
}

pub async fn create_ticket(
    State(web): State<Arc<Web>>,
    visitor: Visitor,
    PageForm(form): PageForm<TicketForm>,
) -> PageResult {
    let title = form.title.trim();
    match web.api.create_ticket(&visitor, title, price_for_api(&form.price)).await {
        Ok(_) => Ok(Redirect::to("/").into_response()),
        Err(failure) if failure.status() == Some(StatusCode::UNAUTHORIZED) => {
            Err(PageError::SignIn { next: "/tickets/new".to_owned() })
        }
        Err(failure) => {
            let (status, items) = form_refusal(failure)?;
            let user = require_user(web.api.current_user(&visitor).await?, "/tickets/new")?;
            let errors = FormErrors::from_api(&items, FIELDS);
            let form = FormPage { ticket_id: None, title, price: &form.price, errors, locked: None };
            Ok(form_page(&web, status, &visitor, &user, form))
        }
    }
}

/// What the ticket page offers the visitor.
fn ticket_page(
    web: &Web,
    status: StatusCode,
    visitor: &Visitor,
    user: Option<&SessionUser>,
    ticket: &TicketBody,
    alerts: Vec<String>,
) -> Response {
    let mine = user.is_some_and(|user| user.id == ticket.user_id);
    let ctx = context! {
        ticket => context! {
            id => ticket.id.to_string(),
            title => &ticket.title,
            price => format_price(&web.currency, &ticket.price),
            reserved => ticket.order_id.is_some(),
        },
        mine,
        signed_in => user.is_some(),
        alerts,
    };
    page(status, "ticket.html", visitor, user, ctx)
}

pub async fn show_ticket(State(web): State<Arc<Web>>, visitor: Visitor, Path(id): Path<String>) -> PageResult {
    let id = parse_id(&id)?;
    let (user, ticket) = tokio::join!(web.api.current_user(&visitor), web.api.ticket(&visitor, id));
    let (user, ticket) = (user?, ticket?);
    Ok(ticket_page(&web, StatusCode::OK, &visitor, user.as_ref(), &ticket, Vec::new()))
}

pub async fn edit_ticket(State(web): State<Arc<Web>>, visitor: Visitor, Path(id): Path<String>) -> PageResult {
    let id = parse_id(&id)?;
    let here = format!("/tickets/{id}/edit");
    let (user, ticket) = tokio::join!(web.api.current_user(&visitor), web.api.ticket(&visitor, id));
    let (user, ticket) = (require_user(user?, &here)?, ticket?);
    if ticket.user_id != user.id {
        return Err(PageError::Forbidden("Only the seller can edit this ticket."));
    }
    let price = price_for_form(&web.currency, &ticket.price);
    let ticket_id = ticket.id.to_string();
    let form = FormPage {
        ticket_id: Some(&ticket_id),
        title: &ticket.title,
        price: &price,
        errors: FormErrors::default(),
        locked: ticket.order_id.is_some().then_some("This ticket is reserved by a buyer, so it cannot be edited now."),
    };
    Ok(form_page(&web, StatusCode::OK, &visitor, &user, form))
}

pub async fn update_ticket(
    State(web): State<Arc<Web>>,
    visitor: Visitor,
    Path(id): Path<String>,
    PageForm(form): PageForm<TicketForm>,
) -> PageResult {
    let id = parse_id(&id)?;
    let here = format!("/tickets/{id}/edit");
    let title = form.title.trim();
    match web.api.update_ticket(&visitor, id, title, price_for_api(&form.price)).await {
        Ok(()) => Ok(Redirect::to(&format!("/tickets/{id}")).into_response()),
        Err(failure) if failure.status() == Some(StatusCode::UNAUTHORIZED) => {
            Err(unauthorized(&web, &visitor, &here, "Only the seller can edit this ticket.").await)
        }
        Err(failure) => {
            let (status, items) = form_refusal(failure)?;
            let user = require_user(web.api.current_user(&visitor).await?, &here)?;
            let errors = FormErrors::from_api(&items, FIELDS);
            let id = id.to_string();
            let form = FormPage { ticket_id: Some(&id), title, price: &form.price, errors, locked: None };
            Ok(form_page(&web, status, &visitor, &user, form))
        }
    }
}

/// `POST /tickets/{id}/purchase`: orders the ticket, then to the order's page.
pub async fn purchase_ticket(State(web): State<Arc<Web>>, visitor: Visitor, Path(id): Path<String>) -> PageResult {
    let id = parse_id(&id)?;
    let here = format!("/tickets/{id}");
    match catching_up(|| web.api.create_order(&visitor, id)).await {
        Ok(order) => Ok(Redirect::to(&format!("/orders/{}", order.id)).into_response()),
        Err(failure) if failure.status() == Some(StatusCode::UNAUTHORIZED) => Err(PageError::SignIn { next: here }),
        Err(failure) => {
            let (status, items) = form_refusal(failure)?;
            let (user, ticket) = tokio::join!(web.api.current_user(&visitor), web.api.ticket(&visitor, id));
            let alerts = FormErrors::from_api(&items, &[]).general;
            Ok(ticket_page(&web, status, &visitor, user?.as_ref(), &ticket?, alerts))
        }
    }
}
