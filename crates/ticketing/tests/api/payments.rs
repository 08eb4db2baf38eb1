//! Every payments case in the contract, through HTTP, with the sandbox gateway: paying
//! completes the order, declines leave it payable, a paid, cancelled or expired order cannot
//! be paid, and concurrent payments keep exactly one charge.

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::Backend;
use ticketing::ServiceName;

use crate::orders::{order_ticket, wait_until_orderable};
use crate::tickets::{EVENTUAL, id, list_ticket};
use apptest::{TestApp, User, field_errors, into_parts, messages, spawn_app, spawn_app_with};
use testkit::on_both_backends;

on_both_backends!(
    paying_completes_the_order,
    a_declined_card_leaves_the_order_payable,
    an_order_is_paid_once_even_by_concurrent_requests,
    a_cancelled_order_cannot_be_paid,
    an_expired_order_cannot_be_paid_even_before_its_timer_fires,
    payments_check_session_input_existence_and_ownership,
);

/// Lists a ticket, orders it as `buyer` and waits until payments knows the order; the order.
pub async fn ordered(seller: &User, buyer: &User, price: Value) -> Value {
    let ticket = list_ticket(seller, "Concert", price).await;
    wait_until_orderable(seller, &id(&ticket)).await;
    let order = order_ticket(buyer, &id(&ticket)).await;
    wait_until_payable(seller, &id(&order)).await;
    order
}

/// Waits until the payments service knows the order. Probed as someone who does not own it:
/// 404 while unknown, then 401 (not the owner), so the probe never pays.
pub async fn wait_until_payable(stranger: &User, order_id: &str) {
    testkit::eventually(EVENTUAL, &format!("order {order_id} to reach the payments service"), || async {
        let (status, body) = pay(stranger, order_id, "tok_visa").await;
        match status {
            StatusCode::NOT_FOUND => None,
            StatusCode::UNAUTHORIZED => Some(()),
            _ => panic!("unexpected answer while waiting for the order: {status} {body}"),
        }
    })
    .await
}

pub async fn pay(user: &User, order_id: &str, token: &str) -> (StatusCode, Value) {
    user.post("/api/payments", json!({"orderId": order_id, "token": token})).await
}

/// Waits until the order has `status` for its owner, and returns it.
pub async fn order_with_status(owner: &User, order_id: &str, status: &str) -> Value {
    testkit::eventually(EVENTUAL, &format!("order {order_id} to be {status}"), || async {
        let (code, order) = owner.get(&format!("/api/orders/{order_id}")).await;
        assert_eq!(code, StatusCode::OK, "{order}");
        (order["status"] == status).then_some(order)
    })
    .await
}

/// `(status, charge id)` of every charge payments recorded for an order, read from the
/// payments service's own database: what the gateway kept or gave back.
async fn recorded_charges(app: &TestApp, order_id: &str) -> Vec<(String, String)> {
    let settings = &app.args.settings;
    let db = crate::service_db::service_db(settings, payments::NAME, &payments::MIGRATOR).await;
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT status, charge_id FROM payments WHERE order_id = $1 ORDER BY created_at")
            .bind(order_id)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    db.pool.close().await;
    rows
}

fn error(status: StatusCode, message: &str) -> (StatusCode, Vec<String>) {
    (status, vec![message.to_owned()])
}

async fn paying_completes_the_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let (seller, buyer) = (app.user().await, app.user().await);
    let order = ordered(&seller, &buyer, json!(20.5)).await;

    let (status, body) = pay(&buyer, &id(&order), "tok_visa").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(uuid::Uuid::parse_str(&id(&body)).is_ok(), "{body}");
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");

    let paid = order_with_status(&buyer, &id(&order), "complete").await;
    assert_eq!(paid["version"], 1);
    let charges = recorded_charges(&app, &id(&order)).await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0].0, "succeeded");
    assert!(charges[0].1.starts_with("ch_sandbox_"), "{charges:?}");

    // A second payment, with the same card or another: refused, nothing charged.
    for token in ["tok_visa", "tok_mastercard"] {
        let (status, body) = pay(&buyer, &id(&order), token).await;
        assert_eq!((status, messages(&body)), error(StatusCode::BAD_REQUEST, "Order has already been paid"));
    }
    assert_eq!(recorded_charges(&app, &id(&order)).await, charges);
    app.stop().await;
}

async fn a_declined_card_leaves_the_order_payable(backend: Backend) {
    let app = spawn_app(backend).await;
    let (seller, buyer) = (app.user().await, app.user().await);
    let order = ordered(&seller, &buyer, json!(15)).await;

    let (status, body) = pay(&buyer, &id(&order), "tok_chargeDeclined").await;
    assert_eq!((status, messages(&body)), error(StatusCode::PAYMENT_REQUIRED, "Your card was declined."));
    let (status, body) = pay(&buyer, &id(&order), "tok_chargeDeclinedExpiredCard").await;
    assert_eq!((status, messages(&body)), error(StatusCode::PAYMENT_REQUIRED, "Your card has expired."));
    let (status, body) = pay(&buyer, &id(&order), "tok_not_a_test_token").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(field_errors(&body), vec![("token".to_owned(), "No such token: 'tok_not_a_test_token'".to_owned())]);

    let (status, still) = buyer.get(&format!("/api/orders/{}", id(&order))).await;
    assert_eq!((status, &still["status"]), (StatusCode::OK, &json!("created")));
    assert!(recorded_charges(&app, &id(&order)).await.is_empty());

    let (status, body) = pay(&buyer, &id(&order), "tok_visa").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    order_with_status(&buyer, &id(&order), "complete").await;
    app.stop().await;
}

async fn an_order_is_paid_once_even_by_concurrent_requests(backend: Backend) {
    let app = spawn_app(backend).await;
    let (seller, buyer) = (app.user().await, app.user().await);

    for tokens in [["tok_visa", "tok_mastercard", "tok_amex", "tok_discover"], ["tok_visa"; 4]] {
        let order = ordered(&seller, &buyer, json!(30)).await;
        let order_id = id(&order);
        // All in flight at once.
        let answers = tokio::join!(
            pay(&buyer, &order_id, tokens[0]),
            pay(&buyer, &order_id, tokens[1]),
            pay(&buyer, &order_id, tokens[2]),
            pay(&buyer, &order_id, tokens[3]),
        );
        let answers = [answers.0, answers.1, answers.2, answers.3];
        let created = answers.iter().filter(|(status, _)| *status == StatusCode::CREATED).count();
        assert_eq!(created, 1, "{answers:?}");
        for (status, body) in answers.iter().filter(|(status, _)| *status != StatusCode::CREATED) {
            assert_eq!((*status, messages(body)), error(StatusCode::BAD_REQUEST, "Order has already been paid"));
        }
        // The extra charges are refunds owed, then made by the reconciler.
        let charges = testkit::eventually(EVENTUAL, "the extra charges to be refunded", || async {
            let charges = recorded_charges(&app, &id(&order)).await;
            charges.iter().all(|(status, _)| status == "succeeded" || status == "refunded").then_some(charges)
        })
        .await;
        let kept: Vec<_> = charges.iter().filter(|(status, _)| status == "succeeded").collect();
        assert_eq!(kept.len(), 1, "exactly one charge is kept: {charges:?}");
        order_with_status(&buyer, &id(&order), "complete").await;
    }
    app.stop().await;
}

async fn a_cancelled_order_cannot_be_paid(backend: Backend) {
    let app = spawn_app(backend).await;
    let (seller, buyer) = (app.user().await, app.user().await);
    let order = ordered(&seller, &buyer, json!(15)).await;
    let (status, _) = buyer.delete(&format!("/api/orders/{}", id(&order))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    // Wait until payments has heard, asking as someone else (the rule comes before
    // ownership), so no payment slips in before the cancellation arrives.
    let heard = testkit::eventually(EVENTUAL, "payments to hear of the cancellation", || async {
        let (status, body) = pay(&seller, &id(&order), "tok_visa").await;
        (status != StatusCode::UNAUTHORIZED).then_some((status, messages(&body)))
    })
    .await;
    assert_eq!(heard, error(StatusCode::BAD_REQUEST, "Cannot pay for a cancelled order"));
    let (status, body) = pay(&buyer, &id(&order), "tok_visa").await;
    assert_eq!((status, messages(&body)), error(StatusCode::BAD_REQUEST, "Cannot pay for a cancelled order"));
    assert!(recorded_charges(&app, &id(&order)).await.is_empty());
    app.stop().await;
}

async fn an_expired_order_cannot_be_paid_even_before_its_timer_fires(backend: Backend) {
    // Without the expiration service nothing cancels the order: only its expiresAt says no.
    let app = spawn_app_with(backend, |args| {
        apptest::on_manual_clock(args);
        args.services = ServiceName::ALL.iter().copied().filter(|name| *name != ServiceName::Expiration).collect();
    })
    .await;
    let (seller, buyer) = (app.user().await, app.user().await);
    let order = ordered(&seller, &buyer, json!(15)).await;
    app.end_window(&order);

    let (status, body) = pay(&buyer, &id(&order), "tok_visa").await;
    assert_eq!((status, messages(&body)), error(StatusCode::BAD_REQUEST, "Order has expired"));
    let (status, still) = buyer.get(&format!("/api/orders/{}", id(&order))).await;
    assert_eq!((status, &still["status"]), (StatusCode::OK, &json!("created")), "nothing cancelled it");
    assert!(recorded_charges(&app, &id(&order)).await.is_empty());
    app.stop().await;
}

async fn payments_check_session_input_existence_and_ownership(backend: Backend) {
    let app = spawn_app(backend).await;
    let (seller, buyer, stranger) = (app.user().await, app.user().await, app.user().await);
    let order = ordered(&seller, &buyer, json!(15)).await;

    let anonymous = app.client();
    for body in [json!({"orderId": id(&order), "token": "tok_visa"}), json!({})] {
        let response = anonymous.post(app.url("/api/payments")).json(&body).send().await.unwrap();
        assert_eq!(
            into_parts(response).await,
            (StatusCode::UNAUTHORIZED, json!({"errors": [{"message": "Not authorized"}]}))
        );
    }
    let (status, body) = buyer.post("/api/payments", json!({"orderId": "nope", "token": 12})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        field_errors(&body),
        vec![
            ("orderId".to_owned(), "OrderId must be a valid id".to_owned()),
            ("token".to_owned(), "Token is required".to_owned())
        ]
    );
    let response = buyer
        .client
        .post(buyer.url("/api/payments"))
        .header("content-type", "application/json")
        .body("{\"orderId\":")
        .send()
        .await
        .unwrap();
    assert_eq!(into_parts(response).await.0, StatusCode::BAD_REQUEST);
    let (status, body) = pay(&buyer, &uuid::Uuid::new_v4().to_string(), "tok_visa").await;
    assert_eq!((status, messages(&body)), error(StatusCode::NOT_FOUND, "Not Found"));
    let (status, body) = pay(&stranger, &id(&order), "tok_visa").await;
    assert_eq!((status, messages(&body)), error(StatusCode::UNAUTHORIZED, "Not authorized"));
    assert!(recorded_charges(&app, &id(&order)).await.is_empty());

    // The operation is documented.
    let (status, spec) = into_parts(app.client().get(app.url("/api/docs/openapi.json")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let operation = &spec["paths"]["/api/payments"]["post"];
    for code in ["201", "400", "401", "402", "404"] {
        assert!(operation["responses"][code].is_object(), "{code} undocumented: {operation}");
    }
    app.stop().await;
}
