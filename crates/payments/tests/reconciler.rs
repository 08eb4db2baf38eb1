//! Charges whose answer never got recorded: the service died (or the gateway or the database
//! failed) between writing down the charge attempt and settling it. The reconciler asks the
//! gateway again with the attempt's idempotency key and settles the answer, after a restart
//! on the same database as much as in a running service.

mod common;

use std::sync::Arc;

use common::{Outage, Stand, TestGateway, WAIT, quick_reconciler, reconcile_rounds};
use payments::gateway::{Gateway, SandboxGateway};
use reqwest::StatusCode;
use testkit::messages;
use testkit::{Backend, eventually};
use time::Duration;
use uuid::Uuid;

const WINDOW: Duration = Duration::minutes(15);

testkit::on_both_backends!(
    a_charge_taken_before_a_crash_is_recorded_after_the_restart,
    an_attempt_that_never_reached_the_gateway_is_charged_after_the_restart,
    a_charge_taken_before_a_crash_for_an_order_cancelled_meanwhile_is_refunded,
    an_unavailable_gateway_answers_503_and_the_reconciler_settles_later,
);

/// Waits until the order has exactly one payment, with `status`; the payment.
async fn settled_payment(stand: &Stand, order_id: Uuid, status: &str) -> (String, String, Option<String>) {
    eventually(WAIT, &format!("the payment of {order_id} to be {status}"), || async {
        let records = stand.payments_of(order_id).await;
        (records.len() == 1 && records[0].0 == status).then(|| records[0].clone())
    })
    .await
}

async fn a_charge_taken_before_a_crash_is_recorded_after_the_restart(backend: Backend) {
    // The sandbox stands for Stripe here: it outlives the crashed process, keys and all.
    let sandbox = Arc::new(SandboxGateway::in_memory().await.unwrap());
    let gateway = TestGateway::new(sandbox.clone());
    // Default settings: this instance's reconciler would not touch the attempt for a minute.
    let stand = Stand::start(backend, gateway.clone()).await;
    let buyer = stand.user();
    let order = stand.order(&buyer, 1999, WINDOW).await;
    let record = stand.payments.order(order.id).await.unwrap().expect("known order");

    // A request wrote its attempt down and the gateway charged; the process died before the
    // charge was recorded.
    let attempt = stand.payments.begin_charge(&record, "tok_visa").await.unwrap();
    let charge = gateway.charge(&attempt.request().unwrap()).await.unwrap();
    let attempts = stand.attempts_of(order.id).await;
    assert_eq!((attempts.len(), attempts[0].status.as_str()), (1, "charging"));
    assert!(stand.payments_of(order.id).await.is_empty());

    let stand = stand.restart(gateway.clone(), quick_reconciler).await;
    let payment = settled_payment(&stand, order.id, "succeeded").await;
    assert_eq!(
        (payment.1.as_str(), payment.2.as_deref()),
        (charge.id.as_str(), None),
        "the charge taken is the one kept"
    );
    let event = stand.created.wait_for(order.id).await;
    assert_eq!(event.charge_id, charge.id);

    // Asked again with the same idempotency key, which returned the same charge.
    assert_eq!(gateway.keys_asked_for(order.id), vec![attempt.idempotency_key.clone(); 2]);
    assert_eq!(sandbox.charges().await.len(), 1, "no second charge: {:?}", sandbox.charges().await);
    assert_eq!(sandbox.kept_charges_for(order.id).await.len(), 1);
    let attempts = stand.attempts_of(order.id).await;
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    assert_eq!(
        (
            attempts[0].status.as_str(),
            attempts[0].charge_id.as_deref(),
            attempts[0].token.as_deref(),
            attempts[0].tries
        ),
        ("charged", Some(charge.id.as_str()), None, 1)
    );

    // Later rounds, and the client paying again, change nothing.
    reconcile_rounds(&stand.payments, 3).await;
    let (status, body) = stand.user_as(buyer.id).pay(order.id, "tok_visa").await;
    assert_eq!((status, messages(&body)), (StatusCode::BAD_REQUEST, vec!["Order has already been paid".to_owned()]));
    assert_eq!(gateway.keys_asked_for(order.id).len(), 2);
    assert_eq!(sandbox.charges().await.len(), 1);
    assert_eq!(stand.created.for_order(order.id).len(), 1, "one payment:created");
    assert_eq!(stand.payments_of(order.id).await, vec![payment]);
    stand.stop().await;
}

async fn an_attempt_that_never_reached_the_gateway_is_charged_after_the_restart(backend: Backend) {
    let stand = Stand::start(backend, Arc::new(SandboxGateway::in_memory().await.unwrap())).await;
    let buyer = stand.user();
    let order = stand.order(&buyer, 1500, WINDOW).await;
    let record = stand.payments.order(order.id).await.unwrap().unwrap();
    // The attempt is written down; the process dies before asking the gateway.
    let attempt = stand.payments.begin_charge(&record, "tok_mastercard").await.unwrap();

    // A restarted sandbox has forgotten everything (nothing was charged anyway).
    let sandbox = Arc::new(SandboxGateway::in_memory().await.unwrap());
    let gateway = TestGateway::new(sandbox.clone());
    let stand = stand.restart(gateway.clone(), quick_reconciler).await;
    let payment = settled_payment(&stand, order.id, "succeeded").await;
    let charges = sandbox.kept_charges_for(order.id).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(
        (charges[0].id.as_str(), charges[0].amount, charges[0].token.as_str()),
        (payment.1.as_str(), 1500, "tok_mastercard")
    );
    assert_eq!(gateway.keys_asked_for(order.id), vec![attempt.idempotency_key.clone()]);
    assert_eq!(stand.created.wait_for(order.id).await.charge_id, charges[0].id);

    reconcile_rounds(&stand.payments, 3).await;
    assert_eq!(sandbox.charges().await.len(), 1);
    assert_eq!(stand.created.for_order(order.id).len(), 1);
    stand.stop().await;
}

async fn a_charge_taken_before_a_crash_for_an_order_cancelled_meanwhile_is_refunded(backend: Backend) {
    let sandbox = Arc::new(SandboxGateway::in_memory().await.unwrap());
    let gateway = TestGateway::new(sandbox.clone());
    let stand = Stand::start(backend, gateway.clone()).await;
    let buyer = stand.user();
    let order = stand.order(&buyer, 1999, WINDOW).await;
    let record = stand.payments.order(order.id).await.unwrap().unwrap();
    let attempt = stand.payments.begin_charge(&record, "tok_visa").await.unwrap();
    let charge = gateway.charge(&attempt.request().unwrap()).await.unwrap();
    // The process dies; meanwhile the order's window ends and orders cancels it.
    stand.cancel(&order).await;

    // The reconciler settles the charge: accepted before the window closed, so it is
    // announced for orders to decide (a payment accepted in time may revive the order).
    let stand = stand.restart(gateway.clone(), quick_reconciler).await;
    let created = stand.created.wait_for(order.id).await;
    assert_eq!(created.charge_id, charge.id);
    assert_eq!(sandbox.charges().await.len(), 1, "no second charge");
    assert_eq!(gateway.keys_asked_for(order.id), vec![attempt.idempotency_key.clone(); 2]);

    // Orders rejects it (the ticket went to someone else): refunded, and recorded.
    stand.reject(order.id, created.id).await;
    let payment = settled_payment(&stand, order.id, "refunded").await;
    assert_eq!(payment.1, charge.id);
    assert!(payment.2.is_some(), "the refund is recorded: {payment:?}");
    assert!(sandbox.kept_charges_for(order.id).await.is_empty(), "{:?}", sandbox.charges().await);
    assert_eq!(stand.attempts_of(order.id).await[0].status, "charged");
    stand.stop().await;
}

async fn an_unavailable_gateway_answers_503_and_the_reconciler_settles_later(backend: Backend) {
    let sandbox = Arc::new(SandboxGateway::in_memory().await.unwrap());
    let gateway = TestGateway::new(sandbox.clone());
    let stand = Stand::start_with(backend, gateway.clone(), quick_reconciler).await;
    let buyer = stand.user();
    let unavailable = (StatusCode::SERVICE_UNAVAILABLE, vec!["Service unavailable, try again later".to_owned()]);

    // The gateway charges but its answer is lost, and it stays that way for a while: 503, and
    // the attempt stays charging however often the reconciler asks.
    let order = stand.order(&buyer, 1999, WINDOW).await;
    gateway.set_outage(Outage::LosesAnswers);
    let (status, body) = buyer.pay(order.id, "tok_visa").await;
    assert_eq!((status, messages(&body)), unavailable);
    reconcile_rounds(&stand.payments, 3).await;
    let attempts = stand.attempts_of(order.id).await;
    assert_eq!((attempts.len(), attempts[0].status.as_str()), (1, "charging"), "{attempts:?}");
    assert!(stand.payments_of(order.id).await.is_empty());
    assert!(gateway.keys_asked_for(order.id).len() >= 2, "the reconciler asked again");
    // The client retrying with the same card meets the same attempt, and the same outage.
    let (status, body) = buyer.pay(order.id, "tok_visa").await;
    assert_eq!((status, messages(&body)), unavailable);
    assert_eq!(stand.attempts_of(order.id).await.len(), 1);
    assert_eq!(sandbox.charges().await.len(), 1, "{:?}", sandbox.charges().await);
    // Once the gateway answers, the charge it took is recorded, and only that one.
    gateway.set_outage(Outage::None);
    let payment = settled_payment(&stand, order.id, "succeeded").await;
    let charges = sandbox.kept_charges_for(order.id).await;
    assert_eq!(charges.len(), 1, "{charges:?}");
    assert_eq!(payment.1, charges[0].id);
    assert_eq!(stand.created.wait_for(order.id).await.charge_id, charges[0].id);
    let keys = gateway.keys_asked_for(order.id);
    assert!(keys.iter().all(|key| *key == attempts[0].idempotency_key), "{keys:?}");

    // The gateway unreachable (nothing charged): 503, and the reconciler makes the charge
    // once it is back.
    let order = stand.order(&buyer, 2500, WINDOW).await;
    gateway.set_outage(Outage::Down);
    let (status, body) = buyer.pay(order.id, "tok_amex").await;
    assert_eq!((status, messages(&body)), unavailable);
    assert!(sandbox.charges().await.iter().all(|charge| charge.order_id != order.id));
    gateway.set_outage(Outage::None);
    let payment = settled_payment(&stand, order.id, "succeeded").await;
    let charges = sandbox.kept_charges_for(order.id).await;
    assert_eq!((charges.len(), charges[0].id.as_str()), (1, payment.1.as_str()));
    // The client retrying meanwhile would have been told it is paid, and charged nothing.
    let (status, body) = buyer.pay(order.id, "tok_amex").await;
    assert_eq!((status, messages(&body)), (StatusCode::BAD_REQUEST, vec!["Order has already been paid".to_owned()]));

    // A decline is settled at once, and never asked again.
    let order = stand.order(&buyer, 1500, WINDOW).await;
    let (status, body) = buyer.pay(order.id, "tok_chargeDeclined").await;
    assert_eq!((status, messages(&body)), (StatusCode::PAYMENT_REQUIRED, vec!["Your card was declined.".to_owned()]));
    reconcile_rounds(&stand.payments, 3).await;
    let attempts = stand.attempts_of(order.id).await;
    assert_eq!(
        (attempts.len(), attempts[0].status.as_str(), attempts[0].outcome.as_deref(), attempts[0].token.as_deref()),
        (1, "declined", Some("card declined: Your card was declined."), None)
    );
    assert_eq!(gateway.keys_asked_for(order.id).len(), 1);
    stand.stop().await;
}
