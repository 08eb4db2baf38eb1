//! The orders service's consumer (ticket replica, expirations, payments), driven directly with
//! duplicated and reordered deliveries, on SQLite and on PostgreSQL.

use contract::events::{ExpirationComplete, PaymentCreated, TicketCreated, TicketUpdated};
use orders::events::TicketExpirationAndPaymentEvents;
use platform::bus::Event;
use platform::envelope::ToEvent;
use serde_json::json;
use sqlx::Row;
use testkit::{Backend, ConsumerHarness, on_both_databases, republished};
use uuid::Uuid;

type Harness = ConsumerHarness<TicketExpirationAndPaymentEvents>;

/// The orders consumer on a database of its own.
async fn harness(backend: Backend) -> Harness {
    ConsumerHarness::new(backend, orders::NAME, &orders::MIGRATOR, TicketExpirationAndPaymentEvents).await
}

/// `(title, price, version)` of a replicated ticket.
async fn replicated_ticket(h: &Harness, id: Uuid) -> Option<(String, i64, i64)> {
    sqlx::query("SELECT title, price, version FROM tickets WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&h.db.pool)
        .await
        .unwrap()
        .map(|row| (row.get("title"), row.get("price"), row.get("version")))
}

/// A live order for a replicated ticket, as `POST /api/orders` would have stored it.
async fn live_order(h: &Harness) -> (Uuid, Uuid) {
    let ticket = created_ticket();
    h.assert_applied(&ticket.to_event()).await;
    let order = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO orders (id, user_id, ticket_id, status, expires_at, version, created_at) \
         VALUES ($1, $2, $3, 'created', 0, 0, 0)",
    )
    .bind(order.to_string())
    .bind(Uuid::new_v4().to_string())
    .bind(ticket.id.to_string())
    .execute(&h.db.pool)
    .await
    .expect("order inserted");
    (order, ticket.id)
}

/// `(status, version)` of an order.
async fn order_state(h: &Harness, order: Uuid) -> (String, i64) {
    let row = sqlx::query("SELECT status, version FROM orders WHERE id = $1")
        .bind(order.to_string())
        .fetch_one(&h.db.pool)
        .await
        .expect("order exists");
    (row.get("status"), row.get("version"))
}

fn created_ticket() -> TicketCreated {
    TicketCreated { id: Uuid::now_v7(), version: 0, title: "Concert".into(), price: 2000, user_id: Uuid::new_v4() }
}

fn updated(ticket: &TicketCreated, version: i64, title: &str) -> Event {
    TicketUpdated {
        id: ticket.id,
        version,
        title: title.into(),
        price: 2000 + version,
        user_id: ticket.user_id,
        order_id: None,
    }
    .to_event()
}

fn expired(order: Uuid) -> Event {
    ExpirationComplete { order_id: order }.to_event()
}

fn paid(order: Uuid) -> Event {
    PaymentCreated { id: Uuid::new_v4(), order_id: order, charge_id: "ch_test".into(), accepted_at: None }.to_event()
}

on_both_databases!(the_ticket_replica_applies_each_version_once_and_in_order);
async fn the_ticket_replica_applies_each_version_once_and_in_order(backend: Backend) {
    let h = harness(backend).await;
    let ticket = created_ticket();
    let (v1, v2) = (updated(&ticket, 1, "Renamed"), updated(&ticket, 2, "Renamed again"));

    // An update before the ticket is known waits.
    h.assert_retried(&v1).await;
    assert_eq!(replicated_ticket(&h, ticket.id).await, None);

    let created = ticket.to_event();
    h.assert_applied(&created).await;
    h.assert_applied(&created).await;
    h.assert_applied(&republished(&created)).await;
    assert_eq!(replicated_ticket(&h, ticket.id).await, Some(("Concert".into(), 2000, 0)));

    // Version 2 before version 1 is held (acknowledged, not applied, no bus backoff); version
    // 1 then applies both, in order, in one go.
    h.assert_applied(&v2).await;
    assert_eq!(replicated_ticket(&h, ticket.id).await, Some(("Concert".into(), 2000, 0)));
    h.assert_applied(&v1).await;
    assert_eq!(replicated_ticket(&h, ticket.id).await, Some(("Renamed again".into(), 2002, 2)));
    h.assert_applied(&v2).await;
    assert_eq!(replicated_ticket(&h, ticket.id).await, Some(("Renamed again".into(), 2002, 2)));
    let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM held_ticket_updates").fetch_one(&h.db.pool).await.unwrap();
    assert_eq!(held, 0);

    // Old news, redelivered or republished, and a late creation: no change.
    h.assert_applied(&v1).await;
    h.assert_applied(&republished(&v1)).await;
    h.assert_applied(&republished(&created)).await;
    assert_eq!(replicated_ticket(&h, ticket.id).await, Some(("Renamed again".into(), 2002, 2)));
    // The replica publishes nothing of its own.
    assert!(h.outbox().await.is_empty());
}

on_both_databases!(expiration_cancels_a_live_order_once);
async fn expiration_cancels_a_live_order_once(backend: Backend) {
    let h = harness(backend).await;
    let (order, ticket) = live_order(&h).await;
    let event = expired(order);

    h.assert_applied(&event).await;
    assert_eq!(order_state(&h, order).await, ("cancelled".into(), 1));
    let expected = vec![("order:cancelled".to_owned(), json!({"id": order, "version": 1, "ticket": {"id": ticket}}))];
    assert_eq!(h.outbox().await, expected);

    h.assert_applied(&event).await;
    h.assert_applied(&republished(&event)).await;
    assert_eq!(order_state(&h, order).await, ("cancelled".into(), 1));
    assert_eq!(h.outbox().await, expected);
}

on_both_databases!(payment_completes_a_live_order_once);
async fn payment_completes_a_live_order_once(backend: Backend) {
    let h = harness(backend).await;
    let (order, ticket) = live_order(&h).await;
    let event = paid(order);

    h.assert_applied(&event).await;
    assert_eq!(order_state(&h, order).await, ("complete".into(), 1));
    let expected = vec![("order:completed".to_owned(), json!({"id": order, "version": 1, "ticket": {"id": ticket}}))];
    assert_eq!(h.outbox().await, expected);

    // A duplicate payment event, and the timer firing after the payment: the order stays paid.
    h.assert_applied(&event).await;
    h.assert_applied(&republished(&event)).await;
    h.assert_applied(&expired(order)).await;
    assert_eq!(order_state(&h, order).await, ("complete".into(), 1));
    assert_eq!(h.outbox().await, expected);
}

on_both_databases!(a_payment_for_a_cancelled_order_changes_nothing);
async fn a_payment_for_a_cancelled_order_changes_nothing(backend: Backend) {
    let h = harness(backend).await;
    // The harness's orders expired in 1970: a payment now was not accepted in time.
    let (order, ticket) = live_order(&h).await;

    h.assert_applied(&expired(order)).await;
    h.assert_applied(&paid(order)).await;
    assert_eq!(order_state(&h, order).await, ("cancelled".into(), 1));
    let outbox = h.outbox().await;
    assert_eq!(outbox[0], ("order:cancelled".to_owned(), json!({"id": order, "version": 1, "ticket": {"id": ticket}})));
    assert_eq!(outbox[1].0, "order:payment-rejected", "payments owes the refund: {outbox:?}");
    assert_eq!(outbox.len(), 2);

    // Accepted before expiresAt, arriving after the expiry was processed: the order is revived.
    let (late, ticket) = live_order(&h).await;
    sqlx::query("UPDATE orders SET expires_at = $1 WHERE id = $2")
        .bind(platform::db::now_millis() + 60_000)
        .bind(late.to_string())
        .execute(&h.db.pool)
        .await
        .unwrap();
    h.assert_applied(&expired(late)).await;
    h.assert_applied(&paid(late)).await;
    assert_eq!(order_state(&h, late).await, ("complete".into(), 2));
    let outbox = h.outbox().await;
    assert_eq!(
        outbox.last().unwrap(),
        &("order:completed".to_owned(), json!({"id": late, "version": 2, "ticket": {"id": ticket}}))
    );
}

on_both_databases!(events_naming_unknown_orders_are_parked);
async fn events_naming_unknown_orders_are_parked(backend: Backend) {
    let h = harness(backend).await;
    h.assert_applied(&expired(Uuid::new_v4())).await;
    h.assert_applied(&paid(Uuid::new_v4())).await;
    h.assert_applied(&Event::new("payment:created", json!({"orderId": 42}))).await;
    h.assert_applied(&Event::new("order:created", json!({}))).await;
    assert_eq!(h.parked().await.len(), 4);
    assert!(h.outbox().await.is_empty());
}
