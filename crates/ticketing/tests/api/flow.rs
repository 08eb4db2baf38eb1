//! The marketplace's whole story through its HTTP API only: a seller lists and edits a
//! ticket, a buyer orders it (which locks it for everyone else) and pays (which sells it for
//! good); or cancels, or lets the window pass, and the ticket is for sale again.

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::Backend;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::orders::{order_ticket, wait_until_orderable};
use crate::payments::{order_with_status, pay, wait_until_payable};
use crate::tickets::{EVENTUAL, id, list_ticket, listed, ticket_at_version};
use apptest::{TestApp, User, messages, spawn_app, spawn_app_with};
use testkit::on_both_backends;

on_both_backends!(
    a_ticket_is_listed_bought_paid_and_sold_for_good,
    a_cancelled_order_puts_the_ticket_back_on_sale,
    an_order_left_unpaid_puts_the_ticket_back_on_sale,
);

const RESERVED: &str = "Ticket is already reserved";
const LOCKED: &str = "Cannot edit a reserved ticket";

fn ticket_path(ticket_id: &str) -> String {
    format!("/api/tickets/{ticket_id}")
}

async fn assert_not_orderable(buyer: &User, ticket_id: &str) {
    let (status, body) = buyer.post("/api/orders", json!({"ticketId": ticket_id})).await;
    assert_eq!((status, messages(&body)), (StatusCode::BAD_REQUEST, vec![RESERVED.to_owned()]));
}

async fn assert_not_editable(seller: &User, ticket_id: &str) {
    let (status, body) = seller.put(&ticket_path(ticket_id), json!({"title": "Changed", "price": 99})).await;
    assert_eq!((status, messages(&body)), (StatusCode::BAD_REQUEST, vec![LOCKED.to_owned()]));
}

async fn wait_until_listed(app: &TestApp, ticket_id: &str) {
    testkit::eventually(EVENTUAL, &format!("ticket {ticket_id} to be listed"), || async {
        listed(app).await.iter().any(|listed| listed == ticket_id).then_some(())
    })
    .await
}

/// A listed, orderable ticket and an order for it by `buyer`.
async fn list_and_order(app: &TestApp, seller: &User, buyer: &User) -> (String, Value) {
    let ticket = list_ticket(seller, "Concert", json!(20)).await;
    let ticket_id = id(&ticket);
    assert!(listed(app).await.contains(&ticket_id));
    wait_until_orderable(seller, &ticket_id).await;
    let order = order_ticket(buyer, &ticket_id).await;
    (ticket_id, order)
}

async fn a_ticket_is_listed_bought_paid_and_sold_for_good(backend: Backend) {
    let app = spawn_app(backend).await;
    let (seller, buyer, rival) = (app.user().await, app.user().await, app.user().await);

    // The seller lists a ticket; anyone sees it; the seller edits it.
    let ticket = list_ticket(&seller, "Concert", json!(20)).await;
    let ticket_id = id(&ticket);
    assert!(listed(&app).await.contains(&ticket_id));
    let (status, edited) =
        seller.put(&ticket_path(&ticket_id), json!({"title": "Concert, front row", "price": 25.5})).await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(
        (&edited["title"], &edited["price"], &edited["version"]),
        (&json!("Concert, front row"), &json!(25.5), &json!(1))
    );

    // The buyer orders it, at the edited price, for the 15-minute window.
    wait_until_orderable(&seller, &ticket_id).await;
    let (order, ordered_at) = testkit::eventually(EVENTUAL, "the order to see the edited ticket", || async {
        let ordered_at = OffsetDateTime::now_utc();
        let (status, order) = buyer.post("/api/orders", json!({"ticketId": ticket_id})).await;
        assert_eq!(status, StatusCode::CREATED, "{order}");
        if order["ticket"]["price"] == json!(25.5) {
            return Some((order, ordered_at));
        }
        // Orders had not heard of the edit yet: let this order go and try again.
        assert_eq!(buyer.delete(&format!("/api/orders/{}", id(&order))).await.0, StatusCode::NO_CONTENT);
        None
    })
    .await;
    assert_eq!((&order["status"], &order["ticket"]["title"]), (&json!("created"), &json!("Concert, front row")));
    let expires_at = OffsetDateTime::parse(order["expiresAt"].as_str().unwrap(), &Rfc3339).unwrap();
    let window = time::Duration::minutes(15);
    let slack = time::Duration::milliseconds(1);
    assert!(
        expires_at >= ordered_at + window - slack && expires_at <= OffsetDateTime::now_utc() + window,
        "{expires_at} is not 15 minutes after ordering at {ordered_at}"
    );

    // While it is reserved, nobody else can order it, the seller cannot edit it, and it is
    // not for sale.
    assert_not_orderable(&rival, &ticket_id).await;
    let reserved = testkit::eventually(EVENTUAL, "the ticket to be reserved by the order", || async {
        let (status, ticket) = seller.get(&ticket_path(&ticket_id)).await;
        assert_eq!(status, StatusCode::OK, "{ticket}");
        (ticket["orderId"] == order["id"]).then_some(ticket)
    })
    .await;
    assert_not_editable(&seller, &ticket_id).await;
    assert!(!listed(&app).await.contains(&ticket_id));

    // The buyer pays; the order completes.
    wait_until_payable(&rival, &id(&order)).await;
    let (status, payment) = pay(&buyer, &id(&order), "tok_visa").await;
    assert_eq!(status, StatusCode::CREATED, "{payment}");
    let complete = order_with_status(&buyer, &id(&order), "complete").await;
    assert_eq!(complete["version"], 1);
    let (status, orders) = buyer.get("/api/orders").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(orders.as_array().unwrap().iter().filter(|o| o["status"] == "complete").count(), 1, "{orders}");

    // Sold for good: not listed, not editable, not orderable, not cancellable.
    let sold = ticket_at_version(&seller, &ticket_id, reserved["version"].as_i64().unwrap() + 1).await;
    assert_eq!(sold["orderId"], order["id"]);
    assert!(!listed(&app).await.contains(&ticket_id));
    assert_not_editable(&seller, &ticket_id).await;
    assert_not_orderable(&rival, &ticket_id).await;
    let (status, body) = buyer.delete(&format!("/api/orders/{}", id(&order))).await;
    assert_eq!(
        (status, messages(&body)),
        (StatusCode::BAD_REQUEST, vec!["Cannot cancel a completed order".to_owned()])
    );
    let (status, body) = pay(&buyer, &id(&order), "tok_mastercard").await;
    assert_eq!((status, messages(&body)), (StatusCode::BAD_REQUEST, vec!["Order has already been paid".to_owned()]));
    app.stop().await;
}

async fn a_cancelled_order_puts_the_ticket_back_on_sale(backend: Backend) {
    let app = spawn_app(backend).await;
    let (seller, buyer, next_buyer) = (app.user().await, app.user().await, app.user().await);
    let (ticket_id, order) = list_and_order(&app, &seller, &buyer).await;
    let reserved = ticket_at_version(&seller, &ticket_id, 1).await;
    assert_eq!(reserved["orderId"], order["id"]);

    let (status, _) = buyer.delete(&format!("/api/orders/{}", id(&order))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(order_with_status(&buyer, &id(&order), "cancelled").await["version"], 1);

    // For sale again: listed, editable, orderable.
    let released = ticket_at_version(&seller, &ticket_id, 2).await;
    assert_eq!(released["orderId"], Value::Null);
    wait_until_listed(&app, &ticket_id).await;
    let (status, edited) =
        seller.put(&ticket_path(&ticket_id), json!({"title": "Concert, balcony", "price": 18})).await;
    assert_eq!((status, &edited["version"]), (StatusCode::OK, &json!(3)), "{edited}");
    let again = order_ticket(&next_buyer, &ticket_id).await;
    assert_eq!(again["status"], "created");

    // The cancelled order stays unpayable.
    wait_until_payable(&seller, &id(&again)).await;
    let (status, body) = pay(&buyer, &id(&order), "tok_visa").await;
    assert_eq!(
        (status, messages(&body)),
        (StatusCode::BAD_REQUEST, vec!["Cannot pay for a cancelled order".to_owned()])
    );
    app.stop().await;
}

async fn an_order_left_unpaid_puts_the_ticket_back_on_sale(backend: Backend) {
    let app = spawn_app_with(backend, apptest::on_manual_clock).await;
    let (seller, buyer, next_buyer) = (app.user().await, app.user().await, app.user().await);
    let (ticket_id, order) = list_and_order(&app, &seller, &buyer).await;
    assert_not_orderable(&next_buyer, &ticket_id).await;

    // Nobody pays: the window ends, the order is cancelled, the ticket is for sale again.
    app.end_window(&order);
    let cancelled = order_with_status(&buyer, &id(&order), "cancelled").await;
    assert_eq!(cancelled["expiresAt"], order["expiresAt"]);
    wait_until_listed(&app, &ticket_id).await;
    let again = order_ticket(&next_buyer, &ticket_id).await;
    wait_until_payable(&seller, &id(&again)).await;
    let (status, _) = pay(&next_buyer, &id(&again), "tok_visa").await;
    assert_eq!(status, StatusCode::CREATED);
    order_with_status(&next_buyer, &id(&again), "complete").await;
    let (status, body) = pay(&buyer, &id(&order), "tok_visa").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    app.stop().await;
}
