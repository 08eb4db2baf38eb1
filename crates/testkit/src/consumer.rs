//! A service's event consumer driven directly, one delivery at a time, on its own database
//! (SQLite in a temporary directory, or a fresh PostgreSQL database): what a test needs to
//! show duplicated, reordered and unreadable events are handled, without a bus.

use std::sync::Arc;

use platform::bus::{Delivery, Event, Handler, Outcome};
use platform::consumer::{Consumer, EventHandler};
use platform::db::Db;
use serde_json::Value;
use sqlx::Row;
use sqlx::migrate::Migrator;

use crate::{Backend, TempDir};

/// The consumer `handler` of the service `name`, on a database migrated by `migrator`.
pub struct ConsumerHarness<H> {
    pub db: Db,
    pub consumer: Arc<Consumer<H>>,
    _dir: TempDir,
}

impl<H: EventHandler> ConsumerHarness<H> {
    pub async fn new(backend: Backend, name: &str, migrator: &Migrator, handler: H) -> Self {
        let dir = TempDir::new();
        let url = match backend {
            Backend::Embedded => platform::db::database_url(None, dir.path(), name),
            Backend::Distributed => crate::fresh_postgres_url().await,
        };
        let db = Db::connect(&url, name, migrator).await.expect("database connects");
        let consumer = Consumer::new(name, db.clone(), handler, None);
        Self { db, consumer, _dir: dir }
    }

    /// Delivers `event` once (a first attempt, more to come) and returns the outcome.
    pub async fn deliver(&self, event: &Event) -> Outcome {
        self.consumer.handle(Delivery { event: event.clone(), attempt: 1, is_last_attempt: false }).await
    }

    pub async fn assert_applied(&self, event: &Event) {
        let outcome = self.deliver(event).await;
        assert!(matches!(outcome, Outcome::Ack), "{} should be acknowledged: {outcome:?}", event.kind);
    }

    pub async fn assert_retried(&self, event: &Event) {
        let outcome = self.deliver(event).await;
        assert!(matches!(outcome, Outcome::Retry(_)), "{} should be retried: {outcome:?}", event.kind);
    }

    /// The events waiting in the outbox, oldest first: `(kind, payload)`.
    pub async fn outbox(&self) -> Vec<(String, Value)> {
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

    /// The kinds of the parked events, in the order they were parked.
    pub async fn parked(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT kind FROM parked_events ORDER BY parked_at").fetch_all(&self.db.pool).await.unwrap()
    }
}

/// The same payload in a fresh envelope, as if the publisher had sent it again.
pub fn republished(event: &Event) -> Event {
    Event::new(&event.kind, event.data.clone())
}

/// Runs each named `async fn(Backend)` test body once per database: a `sqlite` and a
/// `postgres` test in a module named after the function (for tests that need no bus).
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name($crate::Backend::Embedded).await
                }

                #[tokio::test]
                async fn postgres() {
                    super::$name($crate::Backend::Distributed).await
                }
            }
        )*
    };
}
