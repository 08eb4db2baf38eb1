//! The payments service on its own, on both storage/bus combinations: orders' events are
//! published by the test, payments are made over HTTP, charges are checked in the sandbox's
//! ledger (or the Stripe stand-in), and `payment:created` on the bus.

mod common;

use common::stripe_standin::{KEY, StripeStandIn};
use common::{Stand, WAIT};
use contract::events::{OrderCancelled, TicketRef};
use futures::future::join_all;
use payments::domain::{ChargeAttempt, MAX_REFUND_BACKOFF, OrderRecord};
use payments::gateway::{Charge, Gateway, SandboxGateway, StripeGateway};
use platform::clock::ManualClock;
use reqwest::StatusCode;
use serde_json::json;
use std::sync::Arc;
use testkit::{Backend, eventually};
use testkit::{field_errors, messages};
use time::Duration;
use uuid::Uuid;

const WINDOW: Duration = Duration::minutes(15);

async fn sandbox_stand(backend: Backend) -> (Stand, Arc<SandboxGateway>) {
    let sandbox = Arc::new(SandboxGateway::in_memory().await.unwrap());
    (Stand::start(backend, sandbox.clone()).await, sandbox)
}

testkit::on_both_backends!(
    a_payment_charges_once_and_announces_itself,
    a_declined_card_leaves_the_order_payable,
    requests_are_checked_in_the_contracts_order,
    concurrent_payments_keep_one_charge,
    a_paid_order_that_is_cancelled_is_refunded,
    a_charge_that_lands_after_the_cancellation_is_refunded,
    a_refund_the_gateway_fails_is_retried,
    a_cancellation_that_arrives_first_waits_for_its_order,
);

async fn a_payment_charges_once_and_announces_itself(backend: Backend) {
    let (stand, sandbox) = sandbox_stand(backend).await;
    let buyer = stand.user();
    let order = stand.order(&buyer, 1999, WINDOW).await;

    let (status, body) = buyer.pay(order.id, "tok_visa").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let payment_id = Uuid::parse_str(body["id"].as_str().unwrap()).unwrap();
    assert_eq!(body.as_object().unwrap().len(), 1, "the answer is {{id}}: {body}");

    let charges = sandbox.kept_charges_for(order.id).await;
    assert_eq!(charges.len(), 1);
    assert_eq!((charges[0].amount, charges[0].currency.as_str(), charges[0].token.as_str()), (1999, "usd", "tok_visa"));

    let event = stand.created.wait_for(order.id).await;
    assert_eq!((event.id, event.charge_id.as_str()), (payment_id, charges[0].id.as_str()));
    assert_eq!(stand.payments_of(order.id).await, vec![("succeeded".into(), charges[0].id.clone(), None)]);
    let attempts = stand.attempts_of(order.id).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(
        (attempts[0].status.as_str(), attempts[0].charge_id.as_deref(), attempts[0].token.as_deref()),
        ("charged", Some(charges[0].id.as_str()), None),
        "settled, and the token forgotten"
    );

    // Paying again, with the same card or another, charges nothing.
    for token in ["tok_visa", "tok_mastercard"] {
        let (status, body) = buyer.pay(order.id, token).await;
        assert_eq!(
            (status, messages(&body)),
            (StatusCode::BAD_REQUEST, vec!["Order has already been paid".to_owned()])
        );
    }
    // Nor once orders has completed it.
    stand.complete(&order).await;
    let (status, body) = buyer.pay(order.id, "tok_amex").await;
    assert_eq!((status, messages(&body)), (StatusCode::BAD_REQUEST, vec!["Order has already been paid".to_owned()]));
    assert_eq!(sandbox.charges().await.len(), 1);
    assert_eq!(stand.created.for_order(order.id).len(), 1);
    stand.stop().await;
}

async fn a_declined_card_leaves_the_order_payable(backend: Backend) {
    let (stand, sandbox) = sandbox_stand(backend).await;
    let buyer = stand.user();
    let order = stand.order(&buyer, 1500, WINDOW).await;

    let (status, body) = buyer.pay(order.id, "tok_chargeDeclinedInsufficientFunds").await;
    assert_eq!(
        (status, messages(&body)),
        (StatusCode::PAYMENT_REQUIRED, vec!["Your card has insufficient funds.".to_owned()])
    );
    let (status, body) = buyer.pay(order.id, "tok_chargeDeclined").await;
    assert_eq!((status, messages(&body)), (StatusCode::PAYMENT_REQUIRED, vec!["Your card was declined.".to_owned()]));
    let (status, body) = buyer.pay(order.id, "tok_bogus").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(field_errors(&body), vec![("token".to_owned(), "No such token: 'tok_bogus'".to_owned())]);
    assert!(sandbox.charges().await.is_empty());
    assert!(stand.payments_of(order.id).await.is_empty());
    let mut settled: Vec<_> =
        stand.attempts_of(order.id).await.into_iter().map(|attempt| (attempt.status, attempt.token)).collect();
    settled.sort();
    assert_eq!(settled, vec![("declined".into(), None), ("declined".into(), None), ("failed".into(), None)]);
    // The same card again: the same attempt (same idempotency key), declined again.
    let (status, _) = buyer.pay(order.id, "tok_chargeDeclined").await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(stand.attempts_of(order.id).await.len(), 3);

    let (status, body) = buyer.pay(order.id, "tok_visa").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(sandbox.kept_charges_for(order.id).await.len(), 1);
    stand.created.wait_for(order.id).await;
    stand.stop().await;
}

async fn requests_are_checked_in_the_contracts_order(backend: Backend) {
    let (stand, sandbox) = sandbox_stand(backend).await;
    let buyer = stand.user();
    let stranger = stand.user();
    let order = stand.order(&buyer, 1500, WINDOW).await;

    // Anonymous: 401, even with invalid input.
    for body in [json!({"orderId": order.id, "token": "tok_visa"}), json!({})] {
        let (status, body) = stand.anonymous().post(body).await;
        assert_eq!((status, messages(&body)), (StatusCode::UNAUTHORIZED, vec!["Not authorized".to_owned()]));
    }
    // Invalid input: 400 per field, before existence.
    let (status, body) = buyer.post(json!({"orderId": "not-an-id", "token": ""})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        field_errors(&body),
        vec![
            ("orderId".to_owned(), "OrderId must be a valid id".to_owned()),
            ("token".to_owned(), "Token is required".to_owned())
        ]
    );
    let (status, body) = buyer.post(json!({"orderId": Uuid::new_v4(), "token": "t".repeat(256)})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(field_errors(&body), vec![("token".to_owned(), "Token must be at most 255 characters".to_owned())]);
    // Unknown order: 404.
    let (status, body) = buyer.pay(Uuid::new_v4(), "tok_visa").await;
    assert_eq!((status, messages(&body)), (StatusCode::NOT_FOUND, vec!["Not Found".to_owned()]));
    // Someone else's order: 401.
    let (status, body) = stranger.pay(order.id, "tok_visa").await;
    assert_eq!((status, messages(&body)), (StatusCode::UNAUTHORIZED, vec!["Not authorized".to_owned()]));

    // Expired, even though no timer cancelled it: 400, for the owner and (business rule
    // before ownership) for anyone.
    let expired = stand.order(&buyer, 1500, Duration::milliseconds(-1)).await;
    for who in [&buyer, &stranger] {
        let (status, body) = who.pay(expired.id, "tok_visa").await;
        assert_eq!((status, messages(&body)), (StatusCode::BAD_REQUEST, vec!["Order has expired".to_owned()]));
    }
    // Cancelled: 400.
    let cancelled = stand.order(&buyer, 1500, WINDOW).await;
    stand.cancel(&cancelled).await;
    for who in [&buyer, &stranger] {
        let (status, body) = who.pay(cancelled.id, "tok_visa").await;
        assert_eq!(
            (status, messages(&body)),
            (StatusCode::BAD_REQUEST, vec!["Cannot pay for a cancelled order".to_owned()])
        );
    }
    // Under Stripe's minimum: 400, and nothing charged.
    let cheap = stand.order(&buyer, 49, WINDOW).await;
    let (status, body) = buyer.pay(cheap.id, "tok_visa").await;
    assert_eq!((status, messages(&body)), (StatusCode::BAD_REQUEST, vec!["Amount must be at least $0.50".to_owned()]));

    assert!(sandbox.charges().await.is_empty(), "no check may let a charge through");
    stand.stop().await;
}

async fn concurrent_payments_keep_one_charge(backend: Backend) {
    let (stand, sandbox) = sandbox_stand(backend).await;
    let buyer = stand.user();

    // Different cards: several charges may be taken, one is kept, the others are refunded.
    let order = stand.order(&buyer, 2500, WINDOW).await;
    let tokens = ["tok_visa", "tok_mastercard", "tok_amex", "tok_discover", "tok_jcb", "tok_visa_debit"];
    let answers = join_all(tokens.iter().map(|token| buyer.pay(order.id, token))).await;
    let created = answers.iter().filter(|(status, _)| *status == StatusCode::CREATED).count();
    assert_eq!(created, 1, "{answers:?}");
    for (status, body) in answers.iter().filter(|(status, _)| *status != StatusCode::CREATED) {
        assert_eq!(
            (*status, messages(body)),
            (StatusCode::BAD_REQUEST, vec!["Order has already been paid".to_owned()])
        );
    }
    // The extra charges are refunds owed, made by the reconciler (woken at once).
    let records = eventually(WAIT, "the extra charges to be refunded", || async {
        let records = stand.payments_of(order.id).await;
        records.iter().all(|(status, ..)| status != "refunding").then_some(records)
    })
    .await;
    assert_eq!(sandbox.kept_charges_for(order.id).await.len(), 1, "{:?}", sandbox.charges().await);
    assert_eq!(records.iter().filter(|(status, ..)| status == "succeeded").count(), 1, "{records:?}");
    assert!(
        records.iter().all(|(status, _, refund)| status == "succeeded" || (status == "refunded" && refund.is_some())),
        "{records:?}"
    );
    let kept = sandbox.kept_charges_for(order.id).await.remove(0);
    assert!(records.contains(&("succeeded".to_owned(), kept.id.clone(), None)));

    // The same card: the idempotency key makes it one charge, whoever records it.
    let order = stand.order(&buyer, 2500, WINDOW).await;
    let answers = join_all((0..6).map(|_| buyer.pay(order.id, "tok_visa"))).await;
    assert_eq!(answers.iter().filter(|(status, _)| *status == StatusCode::CREATED).count(), 1, "{answers:?}");
    let charges: Vec<_> = sandbox.charges().await.into_iter().filter(|charge| charge.order_id == order.id).collect();
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert!(charges[0].is_kept());
    assert_eq!(stand.payments_of(order.id).await, vec![("succeeded".to_owned(), charges[0].id.clone(), None)]);
    stand.stop().await;
}

async fn a_paid_order_that_is_cancelled_is_refunded(backend: Backend) {
    let (stand, sandbox) = sandbox_stand(backend).await;
    let buyer = stand.user();
    let order = stand.order(&buyer, 1999, WINDOW).await;
    let (status, body) = buyer.pay(order.id, "tok_visa").await;
    assert_eq!(status, StatusCode::CREATED);
    let created = stand.created.wait_for(order.id).await;
    assert_eq!(created.id.to_string(), body["id"].as_str().unwrap());
    assert!(created.accepted_at.is_some_and(|at| at <= order.expires_at), "{created:?}");

    // Orders cancelled it (its window ended before payment:created arrived): that alone
    // refunds nothing, since a payment accepted in time may still complete the order.
    stand.cancel(&order).await;
    assert_eq!(stand.payments_of(order.id).await[0].0, "succeeded");
    assert_eq!(sandbox.kept_charges_for(order.id).await.len(), 1);

    // Orders rejects it (its ticket went to someone else): refund owed, then made.
    stand.reject(order.id, created.id).await;
    let refunded = eventually(WAIT, "the charge to be refunded", || async {
        let records = stand.payments_of(order.id).await;
        (records.len() == 1 && records[0].0 == "refunded").then(|| records[0].clone())
    })
    .await;
    assert!(sandbox.kept_charges_for(order.id).await.is_empty(), "{:?}", sandbox.charges().await);
    assert_eq!(sandbox.charges().await[0].refund_id, refunded.2, "the refund recorded is the gateway's");

    // The same rejection and cancellation again change nothing.
    stand.reject(order.id, created.id).await;
    stand.publish(&OrderCancelled { id: order.id, version: 1, ticket: TicketRef { id: order.ticket.id } }).await;
    let (status, body) = buyer.pay(order.id, "tok_visa").await;
    assert_eq!(
        (status, messages(&body)),
        (StatusCode::BAD_REQUEST, vec!["Cannot pay for a cancelled order".to_owned()])
    );
    assert_eq!(sandbox.charges().await.len(), 1);
    assert_eq!(stand.payments_of(order.id).await, vec![refunded]);
    stand.stop().await;
}

async fn a_charge_that_lands_after_the_cancellation_is_refunded(backend: Backend) {
    let (stand, sandbox) = sandbox_stand(backend).await;
    let buyer = stand.user();
    let order = stand.order(&buyer, 1999, WINDOW).await;
    let record = stand.payments.order(order.id).await.unwrap().expect("known order");

    // The checks passed and the gateway charged; before the charge is recorded, the order is
    // cancelled. The payment was accepted in time, so it is announced for orders to decide.
    let (attempt, charge) = charge_for(&stand, &*sandbox, &record, "tok_visa").await;
    stand.cancel(&order).await;
    let payment_id = stand.payments.record_charge(&attempt, &charge).await.expect("kept for orders to decide");
    let created = stand.created.wait_for(order.id).await;
    assert_eq!((created.id, created.charge_id.as_str()), (payment_id, charge.id.as_str()));

    // Recording the same charge again (a retried request) records nothing twice.
    let again = stand.payments.record_charge(&attempt, &charge).await;
    assert!(matches!(again, Err(payments::domain::PayError::AlreadyPaid)), "{again:?}");
    assert_eq!(stand.payments_of(order.id).await.len(), 1);

    // Orders rejects it: refunded.
    stand.reject(order.id, payment_id).await;
    eventually(WAIT, "the rejected charge to be refunded", || async {
        let records = stand.payments_of(order.id).await;
        (records[0].0 == "refunded" && records[0].2.is_some()).then_some(())
    })
    .await;
    assert!(sandbox.kept_charges_for(order.id).await.is_empty(), "{:?}", sandbox.charges().await);

    // And a charge that lands after another charge paid the order is given back.
    let order = stand.order(&buyer, 1999, WINDOW).await;
    let record = stand.payments.order(order.id).await.unwrap().unwrap();
    let (late_attempt, late) = charge_for(&stand, &*sandbox, &record, "tok_mastercard").await;
    let (status, _) = buyer.pay(order.id, "tok_visa").await;
    assert_eq!(status, StatusCode::CREATED);
    let outcome = stand.payments.record_charge(&late_attempt, &late).await;
    assert!(matches!(outcome, Err(payments::domain::PayError::AlreadyPaid)), "{outcome:?}");
    let kept = eventually(WAIT, "the late charge to be refunded", || async {
        let kept = sandbox.kept_charges_for(order.id).await;
        (kept.len() == 1).then_some(kept)
    })
    .await;
    assert_eq!(kept[0].token, "tok_visa");
    stand.stop().await;
}

/// What a request does up to the gateway's answer: the attempt written down, the charge taken.
async fn charge_for(stand: &Stand, gateway: &dyn Gateway, order: &OrderRecord, token: &str) -> (ChargeAttempt, Charge) {
    let attempt = stand.payments.begin_charge(order, token).await.unwrap();
    let charge = gateway.charge(&attempt.request().unwrap()).await.unwrap();
    (attempt, charge)
}

async fn a_refund_the_gateway_fails_is_retried(backend: Backend) {
    let stripe = StripeStandIn::start().await;
    let gateway = || Arc::new(StripeGateway::new(&stripe.base, KEY).unwrap());
    let quick = |settings: &mut payments::PaymentsSettings| {
        settings.reconcile_every_millis = 20;
        settings.refund_backoff_millis = 1;
    };
    // Refund pauses are measured on this clock: each look below moves it past the longest one,
    // instead of waiting out 13 doubling pauses.
    let clock = ManualClock::starting_now();
    let time_passes = || clock.advance(MAX_REFUND_BACKOFF);
    let stand = Stand::start_on(backend, gateway(), quick, clock.clone().into()).await;
    let buyer = stand.user();

    // The refund fails far longer than the bus would ever redeliver an event (12 attempts):
    // it stays owed, retried with backoff, never parked or dropped.
    let order = stand.order(&buyer, 1999, WINDOW).await;
    let (status, body) = buyer.pay(order.id, "tok_visa").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let created = stand.created.wait_for(order.id).await;
    stripe.fail_next_refunds(1_000_000);
    stand.reject(order.id, created.id).await;
    eventually(WAIT, "the refund to fail 13 times", || async {
        time_passes();
        let owed = stand.payments.refunds_owed().await.unwrap();
        owed.iter().find(|payment| payment.order_id == order.id && payment.refund_tries >= 13).map(drop)
    })
    .await;
    assert_eq!(stand.payments_of(order.id).await[0].0, "refunding");
    assert!(!stripe.is_refunded(&created.charge_id));

    // The gateway recovers while the service is restarted: the refund goes through.
    stripe.fail_next_refunds(0);
    let stand = stand.restart(gateway(), quick).await;
    eventually(WAIT, "the refund to go through", || async {
        time_passes();
        let records = stand.payments_of(order.id).await;
        (stripe.is_refunded(&created.charge_id) && records[0].0 == "refunded").then_some(())
    })
    .await;
    assert!(stripe.seen_at("/v1/refunds").len() >= 14);
    stand.stop().await;
}

async fn a_cancellation_that_arrives_first_waits_for_its_order(backend: Backend) {
    let (stand, sandbox) = sandbox_stand(backend).await;
    let buyer = stand.user();
    let order = contract::events::OrderCreated {
        id: Uuid::new_v4(),
        version: 0,
        status: contract::events::OrderStatus::Created,
        user_id: buyer.id,
        expires_at: time::OffsetDateTime::now_utc() + WINDOW,
        ticket: contract::events::PricedTicketRef { id: Uuid::new_v4(), price: 1500 },
    };
    stand.publish(&OrderCancelled { id: order.id, version: 1, ticket: TicketRef { id: order.ticket.id } }).await;
    let (status, _) = buyer.pay(order.id, "tok_visa").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not known until order:created");
    stand.publish(&order).await;
    stand.wait_for_order_status(order.id, "cancelled").await;
    let (status, body) = buyer.pay(order.id, "tok_visa").await;
    assert_eq!(
        (status, messages(&body)),
        (StatusCode::BAD_REQUEST, vec!["Cannot pay for a cancelled order".to_owned()])
    );
    assert!(sandbox.charges().await.is_empty());
    stand.stop().await;
}
