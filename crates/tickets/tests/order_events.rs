//! The tickets service's consumer of order events, driven directly with duplicated and
//! reordered deliveries, on SQLite and on PostgreSQL.

use std::sync::Arc;

use platform::bus::{Delivery, Event, Handler, Outcome};
use platform::consumer::Consumer;
use platform::db::Db;
use platform::events::{ContractEvent, OrderCancelled, OrderCompleted, OrderCreated, PricedTicketRef, TicketRef};
use serde_json::{Value, json};
use sqlx::Row;
use testkit::{Backend, TempDir};
use tickets::events::OrderEvents;
use uuid::Uuid;

macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name(testkit::Backend::Embedded).await
                }

                #[tokio::test]
                async fn postgres() {
                    super::$name(testkit::Backend::Distributed).await
                }
            }
        )*
    };
}

on_both_databases!(
    order_created_reserves_once_however_often_it_arrives,
    a_cancellation_that_overtakes_its_creation_waits_for_it,
    an_order_for_a_held_ticket_waits_for_the_holders_cancellation,
    a_completed_order_sells_the_ticket_for_good,
    events_ahead_of_the_replica_wait,
    unreadable_and_impossible_events_are_parked,
);

struct Harness {
    db: Db,
    consumer: Arc<Consumer<OrderEvents>>,
    _dir: TempDir,
}

impl Harness {
    async fn new(backend: Backend) -> Self {
        let dir = TempDir::new();
        let url = match backend {
            Backend::Embedded => platform::db::database_url(None, dir.path(), tickets::NAME),
            Backend::Distributed => testkit::fresh_postgres_url().await,
        };
        let db = Db::connect(&url, tickets::NAME, &tickets::MIGRATOR).await.expect("database connects");
        let consumer = Consumer::new(tickets::NAME, db.clone(), OrderEvents, None);
        Self { db, consumer, _dir: dir }
    }

    async fn deliver(&self, event: &Event) -> Outcome {
        self.consumer.handle(Delivery { event: event.clone(), attempt: 1, is_last_attempt: false }).await
    }

    async fn assert_applied(&self, event: &Event) {
        let outcome = self.deliver(event).await;
        assert!(matches!(outcome, Outcome::Ack), "{} should be acknowledged: {outcome:?}", event.kind);
    }

    async fn assert_retried(&self, event: &Event) {
        let outcome = self.deliver(event).await;
        assert!(matches!(outcome, Outcome::Retry(_)), "{} should be retried: {outcome:?}", event.kind);
    }

    /// A ticket for sale, as `POST /api/tickets` would have stored it.
    async fn ticket(&self) -> Uuid {
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO tickets (id, title, price, user_id, version, order_id, status, created_at) \
             VALUES ($1, 'Concert', 2000, $2, 0, NULL, 'available', 0)",
        )
        .bind(id.to_string())
        .bind(Uuid::new_v4().to_string())
        .execute(&self.db.pool)
        .await
        .expect("ticket inserted");
        id
    }

    /// `(order_id, status, version)` of a ticket.
    async fn state(&self, ticket: Uuid) -> (Option<String>, String, i64) {
        let row = sqlx::query("SELECT order_id, status, version FROM tickets WHERE id = $1")
            .bind(ticket.to_string())
            .fetch_one(&self.db.pool)
            .await
            .expect("ticket exists");
        (row.get("order_id"), row.get("status"), row.get("version"))
    }

    /// The events waiting in the outbox, oldest first: `(kind, payload)`.
    async fn outbox(&self) -> Vec<(String, Value)> {
        sqlx::query("SELECT payload FROM outbox ORDER BY id")
            .fetch_all(&self.db.pool)
            .await
            .expect("outbox readable")
            .iter()
            .map(|row| {
                let event = Event::decode(row.get::<String, _>("payload").as_bytes()).expect("decodable event");
                (event.kind, event.data)
            })
            .collect()
    }

    async fn parked(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT kind FROM parked_events ORDER BY parked_at").fetch_all(&self.db.pool).await.unwrap()
    }
}

fn created(order: Uuid, ticket: Uuid) -> Event {
    OrderCreated {
        id: order,
        version: 0,
        status: platform::events::OrderStatus::Created,
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

/// The same payload in a fresh envelope, as if the publisher had sent it again.
fn republished(event: &Event) -> Event {
    Event::new(&event.kind, event.data.clone())
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

async fn order_created_reserves_once_however_often_it_arrives(backend: Backend) {
    let h = Harness::new(backend).await;
    let ticket = h.ticket().await;
    let order = Uuid::new_v4();
    let event = created(order, ticket);

    h.assert_applied(&event).await;
    assert_eq!(h.state(ticket).await, (Some(order.to_string()), "reserved".into(), 1));
    let expected = vec![ticket_updated(ticket, 1, Some(order))];
    assert_eq!(without_user(h.outbox().await), expected);

    // Redelivered, and published again under a new event id: neither changes anything.
    h.assert_applied(&event).await;
    h.assert_applied(&republished(&event)).await;
    assert_eq!(h.state(ticket).await, (Some(order.to_string()), "reserved".into(), 1));
    assert_eq!(without_user(h.outbox().await), expected);
}

async fn a_cancellation_that_overtakes_its_creation_waits_for_it(backend: Backend) {
    let h = Harness::new(backend).await;
    let ticket = h.ticket().await;
    let order = Uuid::new_v4();
    let cancel = cancelled(order, ticket, 1);

    h.assert_retried(&cancel).await;
    assert_eq!(h.state(ticket).await, (None, "available".into(), 0));
    assert!(h.outbox().await.is_empty());

    h.assert_applied(&created(order, ticket)).await;
    h.assert_applied(&cancel).await;
    assert_eq!(h.state(ticket).await, (None, "available".into(), 2));
    let expected = vec![ticket_updated(ticket, 1, Some(order)), ticket_updated(ticket, 2, None)];
    assert_eq!(without_user(h.outbox().await), expected);

    // Twice cancelled, or a late copy of the creation: still free, nothing new to tell.
    h.assert_applied(&cancel).await;
    h.assert_applied(&republished(&cancel)).await;
    h.assert_applied(&created(order, ticket)).await;
    assert_eq!(h.state(ticket).await, (None, "available".into(), 2));
    assert_eq!(without_user(h.outbox().await), expected);
}

async fn an_order_for_a_held_ticket_waits_for_the_holders_cancellation(backend: Backend) {
    let h = Harness::new(backend).await;
    let ticket = h.ticket().await;
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let second_created = created(second, ticket);

    h.assert_applied(&created(first, ticket)).await;
    h.assert_retried(&second_created).await;
    assert_eq!(h.state(ticket).await, (Some(first.to_string()), "reserved".into(), 1));

    // The second order's cancellation cannot release a ticket it never held.
    h.assert_retried(&cancelled(second, ticket, 1)).await;

    h.assert_applied(&cancelled(first, ticket, 1)).await;
    h.assert_applied(&second_created).await;
    assert_eq!(h.state(ticket).await, (Some(second.to_string()), "reserved".into(), 3));
    assert_eq!(
        without_user(h.outbox().await),
        vec![
            ticket_updated(ticket, 1, Some(first)),
            ticket_updated(ticket, 2, None),
            ticket_updated(ticket, 3, Some(second)),
        ]
    );
}

async fn a_completed_order_sells_the_ticket_for_good(backend: Backend) {
    let h = Harness::new(backend).await;
    let ticket = h.ticket().await;
    let order = Uuid::new_v4();
    let complete = completed(order, ticket, 1);

    h.assert_retried(&complete).await;
    h.assert_applied(&created(order, ticket)).await;
    h.assert_applied(&complete).await;
    assert_eq!(h.state(ticket).await, (Some(order.to_string()), "sold".into(), 2));
    let expected = vec![ticket_updated(ticket, 1, Some(order)), ticket_updated(ticket, 2, Some(order))];
    assert_eq!(without_user(h.outbox().await), expected);

    // Even a later cancellation of that order never puts the ticket back on sale.
    h.assert_applied(&republished(&complete)).await;
    h.assert_applied(&cancelled(order, ticket, 2)).await;
    assert_eq!(h.state(ticket).await, (Some(order.to_string()), "sold".into(), 2));
    assert_eq!(without_user(h.outbox().await), expected);
}

async fn events_ahead_of_the_replica_wait(backend: Backend) {
    let h = Harness::new(backend).await;
    let ticket = h.ticket().await;
    let order = Uuid::new_v4();
    h.assert_applied(&created(order, ticket)).await;

    // Version 2 when version 1 has not been seen: a gap, so wait.
    h.assert_retried(&cancelled(order, ticket, 2)).await;
    h.assert_retried(&completed(order, ticket, 2)).await;
    assert_eq!(h.state(ticket).await, (Some(order.to_string()), "reserved".into(), 1));
    assert_eq!(h.outbox().await.len(), 1);
}

async fn unreadable_and_impossible_events_are_parked(backend: Backend) {
    let h = Harness::new(backend).await;
    let ticket = h.ticket().await;

    h.assert_applied(&Event::new("order:created", json!({"id": "not an order"}))).await;
    h.assert_applied(&created(Uuid::new_v4(), Uuid::new_v4())).await;
    h.assert_applied(&Event::new("ticket:created", json!({}))).await;
    assert_eq!(h.parked().await.len(), 3);
    assert_eq!(h.state(ticket).await, (None, "available".into(), 0));
    assert!(h.outbox().await.is_empty());

    // A retry on the last attempt parks too: never retried forever, never dropped silently.
    let cancel = cancelled(Uuid::new_v4(), ticket, 1);
    let outcome = h.consumer.handle(Delivery { event: cancel, attempt: 12, is_last_attempt: true }).await;
    assert!(matches!(outcome, Outcome::Ack));
    assert_eq!(h.parked().await.len(), 4);
}
