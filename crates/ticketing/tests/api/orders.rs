//! Every orders case in the contract, through HTTP: validation, ownership, the reservation
//! window, cancelling, and exactly one winner among concurrent buyers, on one instance and
//! across two.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::Backend;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::tickets::{EVENTUAL, id, list_ticket, listed, ticket_at_version};
use apptest::{TestApp, User, field_errors, into_parts, messages, spawn_app, spawn_app_with};
use testkit::on_both_backends;

on_both_backends!(
    orders_require_a_session,
    ordering_validates_the_ticket_id_and_needs_a_known_ticket,
    ordering_a_ticket_reserves_it_for_the_window,
    the_reservation_window_is_configurable,
    nobody_can_buy_their_own_ticket,
    a_reserved_ticket_cannot_be_ordered_again,
    buyers_see_only_their_own_orders_newest_first,
    cancelling_releases_the_ticket_and_repeats_harmlessly,
    a_paid_order_cannot_be_cancelled_and_its_ticket_is_sold,
    of_fifty_concurrent_buyers_exactly_one_wins,
);

const ALREADY_RESERVED: &str = "Ticket is already reserved";

/// Waits until the orders service knows the ticket: its seller is then told they cannot buy
/// it, where before the ticket was unknown (404). Changes nothing.
pub async fn wait_until_orderable(seller: &User, ticket_id: &str) {
    testkit::eventually(EVENTUAL, &format!("ticket {ticket_id} to reach the orders service"), || async {
        let (status, body) = seller.post("/api/orders", json!({"ticketId": ticket_id})).await;
        match status {
            StatusCode::NOT_FOUND => None,
            StatusCode::BAD_REQUEST if messages(&body) == ["Cannot purchase your own ticket"] => Some(()),
            _ => panic!("unexpected answer while waiting for the ticket: {status} {body}"),
        }
    })
    .await
}

/// Orders a ticket the orders service knows, and returns the order.
pub async fn order_ticket(buyer: &User, ticket_id: &str) -> Value {
    let (status, body) = buyer.post("/api/orders", json!({"ticketId": ticket_id})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// A seller's ticket that the orders service already knows.
async fn orderable_ticket(seller: &User, price: Value) -> Value {
    let ticket = list_ticket(seller, "Concert", price).await;
    wait_until_orderable(seller, &id(&ticket)).await;
    ticket
}

/// An order without its ticket's version, which moves on as the tickets service reserves,
/// releases or sells the ticket.
fn without_ticket_version(mut order: Value) -> Value {
    assert!(order["ticket"].as_object_mut().and_then(|ticket| ticket.remove("version")).is_some(), "{order}");
    order
}

/// The ids of a list of orders.
async fn order_ids(user: &User) -> Vec<String> {
    let (status, orders) = user.get("/api/orders").await;
    assert_eq!(status, StatusCode::OK);
    orders.as_array().expect("an array").iter().map(id).collect()
}

fn expires_at(order: &Value) -> OffsetDateTime {
    let text = order["expiresAt"].as_str().unwrap_or_else(|| panic!("no expiresAt in {order}"));
    assert!(text.ends_with('Z'), "expiresAt must be UTC: {text}");
    OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|err| panic!("expiresAt {text} is not RFC 3339: {err}"))
}

/// Asserts the order expires `seconds` after it was made (made between `before` and now).
fn assert_window(order: &Value, before: OffsetDateTime, seconds: i64) {
    let window = time::Duration::seconds(seconds);
    let at = expires_at(order);
    let slack = time::Duration::milliseconds(1);
    assert!(
        at >= before + window - slack && at <= OffsetDateTime::now_utc() + window,
        "{at} is not {seconds}s after ordering"
    );
}

async fn orders_require_a_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let buyer = app.user().await;
    let ticket = orderable_ticket(&seller, json!(10)).await;
    let order = order_ticket(&buyer, &id(&ticket)).await;
    let order_url = app.url(&format!("/api/orders/{}", id(&order)));
    let anonymous = app.client();
    let requests = [
        anonymous.post(app.url("/api/orders")).json(&json!({"ticketId": id(&ticket)})),
        anonymous.post(app.url("/api/orders")).json(&json!({"ticketId": "not-an-id"})),
        anonymous.get(app.url("/api/orders")),
        anonymous.get(&order_url),
        anonymous.delete(&order_url),
        anonymous.delete(&order_url).bearer_auth("not-a-token"),
    ];
    for request in requests {
        assert_eq!(
            into_parts(request.send().await.unwrap()).await,
            (StatusCode::UNAUTHORIZED, json!({"errors": [{"message": "Not authorized"}]}))
        );
    }
    let (status, body) = buyer.get(&format!("/api/orders/{}", id(&order))).await;
    assert_eq!((status, &body["status"], &body["version"]), (StatusCode::OK, &json!("created"), &json!(0)));
    app.stop().await;
}

async fn ordering_validates_the_ticket_id_and_needs_a_known_ticket(backend: Backend) {
    let app = spawn_app(backend).await;
    let buyer = app.user().await;
    let invalid = vec![("ticketId".to_owned(), "ticketId must be a valid id".to_owned())];
    for body in [
        json!({}),
        json!({"ticketId": null}),
        json!({"ticketId": ""}),
        json!({"ticketId": "not-a-uuid"}),
        json!({"ticketId": 42}),
        json!({"ticketId": [uuid::Uuid::new_v4().to_string()]}),
        json!({"ticketId": {"id": uuid::Uuid::new_v4().to_string()}}),
        json!({"ticket": uuid::Uuid::new_v4().to_string()}),
    ] {
        let (status, response) = buyer.post("/api/orders", body.clone()).await;
        assert_eq!((status, field_errors(&response)), (StatusCode::BAD_REQUEST, invalid.clone()), "{body}");
    }
    let response = buyer
        .client
        .post(buyer.url("/api/orders"))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(
        into_parts(response).await,
        (StatusCode::BAD_REQUEST, json!({"errors": [{"message": "Malformed JSON"}]}))
    );

    let not_found = (StatusCode::NOT_FOUND, json!({"errors": [{"message": "Not Found"}]}));
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(buyer.post("/api/orders", json!({"ticketId": unknown})).await, not_found);
    for path in [format!("/api/orders/{unknown}"), "/api/orders/not-a-uuid".to_owned()] {
        assert_eq!(buyer.get(&path).await, not_found, "GET {path}");
        assert_eq!(buyer.delete(&path).await, not_found, "DELETE {path}");
    }
    assert_eq!(buyer.get("/api/orders").await, (StatusCode::OK, json!([])));
    app.stop().await;
}

async fn ordering_a_ticket_reserves_it_for_the_window(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let buyer = app.user().await;
    let ticket = orderable_ticket(&seller, json!(12.5)).await;

    let before = OffsetDateTime::now_utc();
    let order = order_ticket(&buyer, &id(&ticket)).await;
    assert!(uuid::Uuid::parse_str(&id(&order)).is_ok());
    assert_eq!(
        order,
        json!({
            "id": id(&order),
            "userId": buyer.id,
            "status": "created",
            "expiresAt": order["expiresAt"],
            "version": 0,
            "ticket": {"id": id(&ticket), "title": "Concert", "price": 12.5, "version": 0},
            "refund": null,
        })
    );
    assert_window(&order, before, 900);
    let path = format!("/api/orders/{}", id(&order));
    assert_eq!(buyer.get(&path).await, (StatusCode::OK, order.clone()));

    // The tickets service reserves the ticket for this order; the order keeps the ticket as
    // it was placed at (its snapshot), whatever the ticket's version becomes.
    let reserved = ticket_at_version(&seller, &id(&ticket), 1).await;
    assert_eq!(reserved["orderId"], order["id"]);
    assert!(listed(&app).await.is_empty());
    assert_eq!(buyer.get(&path).await, (StatusCode::OK, order.clone()));
    app.stop().await;
}

async fn the_reservation_window_is_configurable(backend: Backend) {
    let app = spawn_app_with(backend, |args| args.orders.order_expiration_seconds = 60).await;
    let seller = app.user().await;
    let buyer = app.user().await;
    let ticket = orderable_ticket(&seller, json!(10)).await;
    let before = OffsetDateTime::now_utc();
    let order = order_ticket(&buyer, &id(&ticket)).await;
    assert_window(&order, before, 60);
    app.stop().await;
}

async fn nobody_can_buy_their_own_ticket(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let ticket = orderable_ticket(&seller, json!(10)).await;
    let (status, body) = seller.post("/api/orders", json!({"ticketId": id(&ticket)})).await;
    assert_eq!(
        (status, body),
        (StatusCode::BAD_REQUEST, json!({"errors": [{"message": "Cannot purchase your own ticket"}]}))
    );
    assert_eq!(seller.get("/api/orders").await, (StatusCode::OK, json!([])));
    assert_eq!(listed(&app).await, vec![id(&ticket)]);
    app.stop().await;
}

async fn a_reserved_ticket_cannot_be_ordered_again(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let buyer = app.user().await;
    let late = app.user().await;
    let ticket = orderable_ticket(&seller, json!(10)).await;
    let order = order_ticket(&buyer, &id(&ticket)).await;
    for user in [&late, &buyer] {
        let (status, body) = user.post("/api/orders", json!({"ticketId": id(&ticket)})).await;
        assert_eq!((status, messages(&body)), (StatusCode::BAD_REQUEST, vec![ALREADY_RESERVED.to_owned()]));
    }
    assert!(order_ids(&late).await.is_empty());
    assert_eq!(order_ids(&buyer).await, vec![id(&order)]);
    app.stop().await;
}

async fn buyers_see_only_their_own_orders_newest_first(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let buyer = app.user().await;
    let other = app.user().await;
    let first = orderable_ticket(&seller, json!(10)).await;
    let second = orderable_ticket(&seller, json!(20)).await;
    let third = orderable_ticket(&seller, json!(30)).await;

    let first_order = order_ticket(&buyer, &id(&first)).await;
    let second_order = order_ticket(&buyer, &id(&second)).await;
    let others_order = order_ticket(&other, &id(&third)).await;
    let (status, _) = buyer.delete(&format!("/api/orders/{}", id(&first_order))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Any status, newest first, each with its ticket.
    let (status, orders) = buyer.get("/api/orders").await;
    assert_eq!(status, StatusCode::OK);
    let orders = orders.as_array().expect("an array");
    assert_eq!(orders.iter().map(id).collect::<Vec<_>>(), vec![id(&second_order), id(&first_order)]);
    assert_eq!(
        orders.iter().map(|o| o["status"].clone()).collect::<Vec<_>>(),
        vec![json!("created"), json!("cancelled")]
    );
    assert_eq!(orders[0]["ticket"]["id"], second["id"]);
    assert_eq!(orders[0]["ticket"]["price"].as_f64(), Some(20.0));
    assert_eq!(order_ids(&other).await, vec![id(&others_order)]);

    // Somebody else's order is not theirs to see or cancel.
    let not_authorized = (StatusCode::UNAUTHORIZED, json!({"errors": [{"message": "Not authorized"}]}));
    let path = format!("/api/orders/{}", id(&second_order));
    assert_eq!(other.get(&path).await, not_authorized);
    assert_eq!(other.delete(&path).await, not_authorized);
    assert_eq!(buyer.get(&path).await.1["status"], "created");
    app.stop().await;
}

async fn cancelling_releases_the_ticket_and_repeats_harmlessly(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let buyer = app.user().await;
    let next_buyer = app.user().await;
    let ticket = orderable_ticket(&seller, json!(10)).await;
    let order = order_ticket(&buyer, &id(&ticket)).await;
    let path = format!("/api/orders/{}", id(&order));
    ticket_at_version(&seller, &id(&ticket), 1).await;

    assert_eq!(buyer.delete(&path).await, (StatusCode::NO_CONTENT, Value::Null));
    let (status, cancelled) = buyer.get(&path).await;
    assert_eq!((status, &cancelled["status"], &cancelled["version"]), (StatusCode::OK, &json!("cancelled"), &json!(1)));
    assert_eq!(buyer.delete(&path).await, (StatusCode::NO_CONTENT, Value::Null));
    let (status, again) = buyer.get(&path).await;
    assert_eq!(
        (status, without_ticket_version(again)),
        (StatusCode::OK, without_ticket_version(cancelled)),
        "a repeated cancel changes nothing"
    );

    // The ticket is for sale again, and the next buyer gets it.
    let released = ticket_at_version(&seller, &id(&ticket), 2).await;
    assert_eq!(released["orderId"], Value::Null);
    assert_eq!(listed(&app).await, vec![id(&ticket)]);
    let next_order = order_ticket(&next_buyer, &id(&ticket)).await;
    let reserved = ticket_at_version(&seller, &id(&ticket), 3).await;
    assert_eq!(reserved["orderId"], next_order["id"]);
    app.stop().await;
}

/// Applies `payment:created` for an order the way the orders service's consumer does, on the
/// app's own orders database: payments are another service's to make.
async fn record_payment(app: &TestApp, order_id: &str) {
    use ::contract::events::PaymentCreated;
    use ::platform::bus::{Delivery, Handler, Outcome};
    use ::platform::envelope::ToEvent;

    let settings = &app.args.settings;
    let db = crate::service_db::service_db(settings, ::orders::NAME, &::orders::MIGRATOR).await;
    let consumer = ::platform::consumer::Consumer::new(
        ::orders::NAME,
        db,
        ::orders::events::TicketExpirationAndPaymentEvents,
        None,
    );
    let payment = PaymentCreated {
        id: uuid::Uuid::new_v4(),
        order_id: uuid::Uuid::parse_str(order_id).unwrap(),
        charge_id: "ch_test".into(),
        accepted_at: Some(time::OffsetDateTime::now_utc()),
    };
    let delivery = Delivery { event: payment.to_event(), attempt: 1, is_last_attempt: false };
    assert!(matches!(consumer.handle(delivery).await, Outcome::Ack));
}

async fn a_paid_order_cannot_be_cancelled_and_its_ticket_is_sold(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let buyer = app.user().await;
    let other = app.user().await;
    let ticket = orderable_ticket(&seller, json!(10)).await;
    let order = order_ticket(&buyer, &id(&ticket)).await;
    let path = format!("/api/orders/{}", id(&order));
    ticket_at_version(&seller, &id(&ticket), 1).await;

    record_payment(&app, &id(&order)).await;
    let (status, paid) = buyer.get(&path).await;
    assert_eq!((status, &paid["status"], &paid["version"]), (StatusCode::OK, &json!("complete"), &json!(1)));
    let completed = (StatusCode::BAD_REQUEST, json!({"errors": [{"message": "Cannot cancel a completed order"}]}));
    assert_eq!(buyer.delete(&path).await, completed);
    // The rule comes before ownership, as everywhere in the contract.
    assert_eq!(other.delete(&path).await, completed);
    let (status, still) = buyer.get(&path).await;
    assert_eq!((status, without_ticket_version(still)), (StatusCode::OK, without_ticket_version(paid)));

    // Sold for good: never listed, never editable, never orderable again.
    let sold = ticket_at_version(&seller, &id(&ticket), 2).await;
    assert_eq!(sold["orderId"], order["id"]);
    assert!(listed(&app).await.is_empty());
    let (status, body) =
        seller.put(&format!("/api/tickets/{}", id(&ticket)), json!({"title": "Again", "price": 10})).await;
    assert_eq!((status, messages(&body)), (StatusCode::BAD_REQUEST, vec!["Cannot edit a reserved ticket".to_owned()]));
    let (status, body) = other.post("/api/orders", json!({"ticketId": id(&ticket)})).await;
    assert_eq!((status, messages(&body)), (StatusCode::BAD_REQUEST, vec![ALREADY_RESERVED.to_owned()]));
    app.stop().await;
}

/// `count` freshly signed-up users.
async fn users(app: &TestApp, count: usize) -> Vec<User> {
    let mut users = Vec::with_capacity(count);
    for _ in 0..count {
        users.push(app.user().await);
    }
    users
}

/// Every buyer orders the ticket at once, each at its instance's address; returns each
/// answer's status and messages.
async fn race(buyers: Vec<(User, String)>, ticket_id: &str) -> Vec<(StatusCode, Value)> {
    let start = Arc::new(tokio::sync::Barrier::new(buyers.len()));
    let mut tasks = tokio::task::JoinSet::new();
    for (buyer, base) in buyers {
        let start = start.clone();
        let request = buyer.client.post(format!("{base}/api/orders")).json(&json!({"ticketId": ticket_id}));
        tasks.spawn(async move {
            start.wait().await;
            into_parts(request.send().await.expect("request sent")).await
        });
    }
    tasks.join_all().await
}

/// Exactly one 201; every other buyer is told the ticket is already reserved.
fn assert_one_winner(answers: &[(StatusCode, Value)]) -> Value {
    let winners: Vec<&Value> =
        answers.iter().filter(|(status, _)| *status == StatusCode::CREATED).map(|(_, body)| body).collect();
    assert_eq!(winners.len(), 1, "exactly one buyer wins: {answers:?}");
    let losers: Vec<(StatusCode, Vec<String>)> = answers
        .iter()
        .filter(|(status, _)| *status != StatusCode::CREATED)
        .map(|(status, body)| (*status, messages(body)))
        .collect();
    assert_eq!(losers, vec![(StatusCode::BAD_REQUEST, vec![ALREADY_RESERVED.to_owned()]); answers.len() - 1]);
    winners[0].clone()
}

async fn of_fifty_concurrent_buyers_exactly_one_wins(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let ticket = orderable_ticket(&seller, json!(10)).await;
    let buyers = users(&app, 50).await.into_iter().map(|buyer| (buyer, app.base.clone())).collect();

    let winner = assert_one_winner(&race(buyers, &id(&ticket)).await);
    let reserved = ticket_at_version(&seller, &id(&ticket), 1).await;
    assert_eq!(reserved["orderId"], winner["id"]);
    app.stop().await;
}

/// Two instances of the orders service on one PostgreSQL database: the database, not the
/// instance, decides who gets the ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_fifty_buyers_across_two_orders_instances_exactly_one_wins() {
    let app = spawn_app(Backend::Distributed).await;
    let mut args = app.args.clone();
    args.services = vec![ticketing::ServiceName::Orders];
    args.settings.addr = "127.0.0.1:0".parse().unwrap();
    let second = ticketing::start(args).await.expect("a second orders instance starts");
    let second_base = format!("http://{}", second.addr);

    let seller = app.user().await;
    let ticket = orderable_ticket(&seller, json!(10)).await;
    let buyers: Vec<(User, String)> = users(&app, 50)
        .await
        .into_iter()
        .enumerate()
        .map(|(i, buyer)| (buyer, if i % 2 == 0 { app.base.clone() } else { second_base.clone() }))
        .collect();
    // The second instance sees the session and the ticket too.
    let (probe, _) = &buyers[1];
    let (status, orders) =
        into_parts(probe.client.get(format!("{second_base}/api/orders")).send().await.unwrap()).await;
    assert_eq!((status, orders), (StatusCode::OK, json!([])));

    let answers = race(buyers, &id(&ticket)).await;
    let winner = assert_one_winner(&answers);
    let reserved = ticket_at_version(&seller, &id(&ticket), 1).await;
    assert_eq!(reserved["orderId"], winner["id"]);
    second.stop().await.expect("clean stop");
    app.stop().await;
}
