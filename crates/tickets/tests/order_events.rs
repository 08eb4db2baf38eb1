//! The tickets service's consumer of order events, driven directly with duplicated and
//! reordered deliveries, on SQLite and on PostgreSQL.

use contract::events::{OrderCancelled, OrderCompleted, OrderCreated, PricedTicketRef, TicketRef};
use platform::bus::{Delivery, Event, Handler, Outcome};
use platform::envelope::ToEvent;
use serde_json::{Value, json};
use sqlx::Row;
use testkit::{Backend, ConsumerHarness, on_both_databases, republished};
use tickets::events::OrderEvents;
use uuid::Uuid;

type Harness = ConsumerHarness<OrderEvents>;

/// The tickets consumer on a database of its own.
async fn harness(backend: Backend) -> Harness {
    ConsumerHarness::new(backend, tickets::NAME, &tickets::MIGRATOR, OrderEvents).await
}

/// A ticket for sale, as `POST /api/tickets` would have stored it.
async fn ticket_for_sale(h: &Harness) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO tickets (id, title, price, user_id, version, order_id, status, created_at) \
         VALUES ($1, 'Concert', 2000, $2, 0, NULL, 'available', 0)",
    )
    .bind(id.to_string())
    .bind(Uuid::new_v4().to_string())
    .execute(&h.db.pool)
    .await
    .expect("ticket inserted");
    id
}

/// `(order_id, status, version)` of a ticket.
async fn ticket_state(h: &Harness, ticket: Uuid) -> (Option<String>, String, i64) {
    let row = sqlx::query("SELECT order_id, status, version FROM tickets WHERE id = $1")
        .bind(ticket.to_string())
        .fetch_one(&h.db.pool)
        .await
        .expect("ticket exists");
    (row.get("order_id"), row.get("status"), row.get("version"))
}

fn created(order: Uuid, ticket: Uuid) -> Event {
    OrderCreated {
        id: order,
        version: 0,
        status: contract::events::OrderStatus::Created,
        user_id: Uuid::new_v4(),
        expires_at: time::OffsetDateTime::now_utc() + time::Duration::minutes(15),
        ticket: PricedTicketRef { id: ticket, price: 2000 },
    }
    .to_event()
}

fn cancelled(order: Uuid, ticket: Uuid, version: i64) -> Event {
    OrderCancelled { id: order, version, ticket: TicketRef { id: ticket } }.to_event()
}

fn completed(order: Uuid, ticket: Uuid, version: i64) -> Event {
    OrderCompleted { id: order, version, ticket: TicketRef { id: ticket } }.to_event()
}

fn ticket_updated(ticket: Uuid, version: i64, order: Option<Uuid>) -> (String, Value) {
    (
        "ticket:updated".to_owned(),
        json!({"id": ticket, "version": version, "title": "Concert", "price": 2000, "userId": null, "orderId": order}),
    )
}

/// Compares outbox events ignoring `userId`, which the fixture makes up.
fn without_user(events: Vec<(String, Value)>) -> Vec<(String, Value)> {
    events
        .into_iter()
        .map(|(kind, mut data)| {
            data["userId"] = Value::Null;
            (kind, data)
        })
        .collect()
}

on_both_databases!(order_created_reserves_once_however_often_it_arrives);
async fn order_created_reserves_once_however_often_it_arrives(backend: Backend) {
    let h = harness(backend).await;
    let ticket = ticket_for_sale(&h).await;
    let order = Uuid::new_v4();
    let event = created(order, ticket);

    h.assert_applied(&event).await;
    assert_eq!(ticket_state(&h, ticket).await, (Some(order.to_string()), "reserved".into(), 1));
    let expected = vec![ticket_updated(ticket, 1, Some(order))];
    assert_eq!(without_user(h.outbox().await), expected);

    // Redelivered, and published again under a new event id: neither changes anything.
    h.assert_applied(&event).await;
    h.assert_applied(&republished(&event)).await;
    assert_eq!(ticket_state(&h, ticket).await, (Some(order.to_string()), "reserved".into(), 1));
    assert_eq!(without_user(h.outbox().await), expected);
}

on_both_databases!(a_cancellation_that_overtakes_its_creation_waits_for_it);
async fn a_cancellation_that_overtakes_its_creation_waits_for_it(backend: Backend) {
    let h = harness(backend).await;
    let ticket = ticket_for_sale(&h).await;
    let order = Uuid::new_v4();
    let cancel = cancelled(order, ticket, 1);

    h.assert_retried(&cancel).await;
    assert_eq!(ticket_state(&h, ticket).await, (None, "available".into(), 0));
    assert!(h.outbox().await.is_empty());

    h.assert_applied(&created(order, ticket)).await;
    h.assert_applied(&cancel).await;
    assert_eq!(ticket_state(&h, ticket).await, (None, "available".into(), 2));
    let expected = vec![ticket_updated(ticket, 1, Some(order)), ticket_updated(ticket, 2, None)];
    assert_eq!(without_user(h.outbox().await), expected);

    // Twice cancelled, or a late copy of the creation: still free, nothing new to tell.
    h.assert_applied(&cancel).await;
    h.assert_applied(&republished(&cancel)).await;
    h.assert_applied(&created(order, ticket)).await;
    assert_eq!(ticket_state(&h, ticket).await, (None, "available".into(), 2));
    assert_eq!(without_user(h.outbox().await), expected);
}

on_both_databases!(an_order_for_a_held_ticket_waits_for_the_holders_cancellation);
async fn an_order_for_a_held_ticket_waits_for_the_holders_cancellation(backend: Backend) {
    let h = harness(backend).await;
    let ticket = ticket_for_sale(&h).await;
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let second_created = created(second, ticket);

    h.assert_applied(&created(first, ticket)).await;
    h.assert_retried(&second_created).await;
    assert_eq!(ticket_state(&h, ticket).await, (Some(first.to_string()), "reserved".into(), 1));

    // The second order's cancellation cannot release a ticket it never held.
    h.assert_retried(&cancelled(second, ticket, 1)).await;

    h.assert_applied(&cancelled(first, ticket, 1)).await;
    h.assert_applied(&second_created).await;
    assert_eq!(ticket_state(&h, ticket).await, (Some(second.to_string()), "reserved".into(), 3));
    assert_eq!(
        without_user(h.outbox().await),
        vec![
            ticket_updated(ticket, 1, Some(first)),
            ticket_updated(ticket, 2, None),
            ticket_updated(ticket, 3, Some(second)),
        ]
    );
}

on_both_databases!(a_completed_order_sells_the_ticket_for_good);
async fn a_completed_order_sells_the_ticket_for_good(backend: Backend) {
    let h = harness(backend).await;
    let ticket = ticket_for_sale(&h).await;
    let order = Uuid::new_v4();
    let complete = completed(order, ticket, 1);

    h.assert_retried(&complete).await;
    h.assert_applied(&created(order, ticket)).await;
    h.assert_applied(&complete).await;
    assert_eq!(ticket_state(&h, ticket).await, (Some(order.to_string()), "sold".into(), 2));
    let expected = vec![ticket_updated(ticket, 1, Some(order)), ticket_updated(ticket, 2, Some(order))];
    assert_eq!(without_user(h.outbox().await), expected);

    // Even a later cancellation of that order never puts the ticket back on sale.
    h.assert_applied(&republished(&complete)).await;
    h.assert_applied(&cancelled(order, ticket, 2)).await;
    assert_eq!(ticket_state(&h, ticket).await, (Some(order.to_string()), "sold".into(), 2));
    assert_eq!(without_user(h.outbox().await), expected);
}

on_both_databases!(events_ahead_of_the_replica_wait);
async fn events_ahead_of_the_replica_wait(backend: Backend) {
    let h = harness(backend).await;
    let ticket = ticket_for_sale(&h).await;
    let order = Uuid::new_v4();
    h.assert_applied(&created(order, ticket)).await;

    // Version 2 when version 1 has not been seen: a gap, so wait.
    h.assert_retried(&cancelled(order, ticket, 2)).await;
    h.assert_retried(&completed(order, ticket, 2)).await;
    assert_eq!(ticket_state(&h, ticket).await, (Some(order.to_string()), "reserved".into(), 1));
    assert_eq!(h.outbox().await.len(), 1);
}

on_both_databases!(unreadable_and_impossible_events_are_parked);
async fn unreadable_and_impossible_events_are_parked(backend: Backend) {
    let h = harness(backend).await;
    let ticket = ticket_for_sale(&h).await;

    h.assert_applied(&Event::new("order:created", json!({"id": "not an order"}))).await;
    h.assert_applied(&created(Uuid::new_v4(), Uuid::new_v4())).await;
    h.assert_applied(&Event::new("ticket:created", json!({}))).await;
    assert_eq!(h.parked().await.len(), 3);
    assert_eq!(ticket_state(&h, ticket).await, (None, "available".into(), 0));
    assert!(h.outbox().await.is_empty());

    // A retry on the last attempt parks too: never retried forever, never dropped silently.
    let cancel = cancelled(Uuid::new_v4(), ticket, 1);
    let outcome = h.consumer.handle(Delivery { event: cancel, attempt: 12, is_last_attempt: true }).await;
    assert!(matches!(outcome, Outcome::Ack));
    assert_eq!(h.parked().await.len(), 4);
}
