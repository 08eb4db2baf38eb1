//! Idempotent consumption of events by a service.
//!
//! A service's handler applies an event inside a transaction that also records the event's
//! id in `processed_events`; a redelivered event finds its id there and changes nothing.
//! Events that can never be applied (an unknown shape, or retries exhausted) are parked in
//! `parked_events` with the reason, and logged: never retried forever, never silently dropped.
//!
//! Events the bus hands out together are applied in one transaction, in the bus's order, so
//! a busy consumer pays for one commit (and one lock on SQLite) per batch rather than per event.
//! If any of them cannot be applied, the batch's transaction is rolled back and each event is
//! handled on its own, so one event that must wait never holds back the others.

use std::sync::Arc;

use tracing::Instrument;

use crate::bus::{Delivery, Event, Handler, Outcome};
use crate::db::{Db, Tx, now_millis};
use crate::outbox::OutboxWaker;

/// Why an event was not applied.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Not yet (a version gap, a database hiccup): retry later.
    #[error("retry later: {0:#}")]
    Retry(anyhow::Error),
    /// Never: the event cannot be understood. Park it.
    #[error("malformed event: {0:#}")]
    Malformed(anyhow::Error),
}

impl From<sqlx::Error> for HandleError {
    fn from(err: sqlx::Error) -> Self {
        Self::Retry(err.into())
    }
}

/// The typed payload of an event, or `Malformed`.
pub fn payload<T: serde::de::DeserializeOwned>(event: &Event) -> Result<T, HandleError> {
    serde_json::from_value(event.data.clone())
        .map_err(|err| HandleError::Malformed(anyhow::anyhow!("{} payload: {err}", event.kind)))
}

/// What a service does with one event, inside the transaction that records it as processed.
pub trait EventHandler: Send + Sync + 'static {
    fn apply<'a>(
        &'a self,
        tx: &'a mut Tx,
        event: &'a Event,
    ) -> impl Future<Output = Result<(), HandleError>> + Send + 'a;
}

/// Starts a transaction that records `event_id` as processed by `consumer`, or returns `None`
/// if it already was. Dropping the transaction without commit forgets the record too.
pub async fn begin_once(db: &Db, consumer: &str, event_id: uuid::Uuid) -> Result<Option<Tx>, sqlx::Error> {
    let mut tx = db.begin().await?;
    Ok(record_once(&mut tx, consumer, event_id).await?.then_some(tx))
}

/// Records `event_id` as processed by `consumer` in `tx`; false if it already was.
async fn record_once(tx: &mut Tx, consumer: &str, event_id: uuid::Uuid) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id.to_string())
    .bind(now_millis())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Records every one of `event_ids` as processed by `consumer` in `tx`, in one statement;
/// returns those that were not already (a batch pays one round trip for its records, not one
/// per event).
async fn record_all_once(
    tx: &mut Tx,
    consumer: &str,
    event_ids: &[uuid::Uuid],
) -> Result<std::collections::HashSet<uuid::Uuid>, sqlx::Error> {
    if event_ids.is_empty() {
        return Ok(Default::default());
    }
    let rows = (0..event_ids.len()).map(|n| format!("($1, ${}, $2)", n + 3)).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES {rows} \
         ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id"
    );
    let mut query = sqlx::query_scalar::<_, String>(&sql).bind(consumer).bind(now_millis());
    for id in event_ids {
        query = query.bind(id.to_string());
    }
    let recorded = query.fetch_all(&mut **tx).await?;
    Ok(recorded.iter().filter_map(|id| uuid::Uuid::parse_str(id).ok()).collect())
}

/// Records an event that will not be applied, with why.
pub async fn park(db: &Db, consumer: &str, event: &Event, reason: &str) -> Result<(), sqlx::Error> {
    park_at(db, consumer, event, reason, now_millis()).await
}

/// [`park`] with the time it was parked (the admin command puts a replayed event back as it was).
pub async fn park_at(db: &Db, consumer: &str, event: &Event, reason: &str, parked_at: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO parked_events (consumer, event_id, kind, payload, reason, parked_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(event.id.to_string())
    .bind(&event.kind)
    .bind(String::from_utf8(event.encode()).expect("JSON is UTF-8"))
    .bind(reason)
    .bind(parked_at)
    .execute(&db.pool)
    .await
    .map(drop)
}

/// Adapts an [`EventHandler`] to the bus: exactly-once effect, parking, outbox wake-up.
pub struct Consumer<H> {
    pub name: String,
    pub db: Db,
    pub handler: H,
    /// Woken after a commit, since handlers may write events of their own.
    pub outbox: Option<OutboxWaker>,
}

impl<H: EventHandler> Consumer<H> {
    pub fn new(name: impl Into<String>, db: Db, handler: H, outbox: Option<OutboxWaker>) -> Arc<Self> {
        Arc::new(Self { name: name.into(), db, handler, outbox })
    }

    async fn process(&self, event: &Event) -> Result<(), HandleError> {
        let Some(mut tx) = begin_once(&self.db, &self.name, event.id).await? else {
            tracing::debug!(event_id = %event.id, kind = %event.kind, "duplicate event ignored");
            return Ok(());
        };
        self.handler.apply(&mut tx, event).await?;
        tx.commit().await?;
        if let Some(outbox) = &self.outbox {
            outbox.wake();
        }
        Ok(())
    }

    async fn park_or_retry(&self, event: &Event, reason: String) -> Outcome {
        match park(&self.db, &self.name, event, &reason).await {
            Ok(()) => Outcome::Ack,
            Err(err) => Outcome::Retry(anyhow::Error::from(err).context("cannot park event")),
        }
    }
}

/// The span an event is handled in: `grep <trace id>` finds it.
fn event_span(consumer: &str, delivery: &Delivery) -> tracing::Span {
    let event = &delivery.event;
    let trace_id = event.trace_id.as_deref().unwrap_or("-");
    tracing::info_span!("event", consumer = %consumer, kind = %event.kind, event_id = %event.id, attempt = delivery.attempt, trace_id = %trace_id)
}

impl<H: EventHandler> Handler for Consumer<H> {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        let event = &delivery.event;
        let span = event_span(&self.name, &delivery);
        // Events this handler writes to the outbox carry the same trace id on.
        httpkit::telemetry::with_trace_id(event.trace_id.clone(), self.handle_in_span(&delivery)).instrument(span).await
    }

    async fn handle_batch(&self, deliveries: Vec<Delivery>) -> Vec<Outcome> {
        if deliveries.len() > 1 {
            let started = std::time::Instant::now();
            match self.process_batch(&deliveries).await {
                Ok(()) => {
                    // Each event is counted with its share of the batch's time.
                    let each = started.elapsed().as_secs_f64() / deliveries.len() as f64;
                    return deliveries
                        .iter()
                        .map(|delivery| {
                            let labels = self.observe(delivery, each);
                            event_span(&self.name, delivery).in_scope(|| self.applied(delivery, &labels))
                        })
                        .collect();
                }
                Err(err) => {
                    tracing::debug!(consumer = %self.name, events = deliveries.len(), error = %format!("{err:#}"), "batch not applied as a whole; handling its events one by one");
                }
            }
        }
        let mut outcomes = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            outcomes.push(self.handle(delivery).await);
        }
        outcomes
    }
}

impl<H: EventHandler> Consumer<H> {
    /// Applies every event of a batch in one transaction, or none of them (`Err`: the caller
    /// then handles each on its own, which decides retry, parking and logging per event).
    async fn process_batch(&self, deliveries: &[Delivery]) -> Result<(), HandleError> {
        let mut tx = self.db.begin().await?;
        let ids: Vec<uuid::Uuid> = deliveries.iter().map(|delivery| delivery.event.id).collect();
        let mut new = record_all_once(&mut tx, &self.name, &ids).await?;
        for delivery in deliveries {
            let event = &delivery.event;
            let applied = async {
                // Removed once applied, so a duplicate later in the batch is skipped too.
                if !new.remove(&event.id) {
                    tracing::debug!("duplicate event ignored");
                    return Ok(());
                }
                httpkit::telemetry::with_trace_id(event.trace_id.clone(), self.handler.apply(&mut tx, event)).await
            }
            .instrument(event_span(&self.name, delivery))
            .await;
            // Dropping the transaction rolls the whole batch back.
            applied?;
        }
        tx.commit().await?;
        if let Some(outbox) = &self.outbox {
            outbox.wake();
        }
        Ok(())
    }

    /// Counts a delivery's handling, whatever came of it; returns the labels of its other counts.
    fn observe(&self, delivery: &Delivery, seconds: f64) -> httpkit::metrics::EventLabels {
        let m = httpkit::metrics::metrics();
        let labels = httpkit::metrics::EventLabels { group: self.name.clone(), kind: delivery.event.kind.clone() };
        if delivery.attempt > 1 {
            m.events_redelivered.get_or_create(&labels).inc();
        }
        let group = httpkit::metrics::GroupLabels { group: self.name.clone() };
        m.event_handling_duration.get_or_create(&group).observe(seconds);
        labels
    }

    /// Counts and logs (in the caller's span) an event whose effect committed.
    fn applied(&self, delivery: &Delivery, labels: &httpkit::metrics::EventLabels) -> Outcome {
        let m = httpkit::metrics::metrics();
        let group = httpkit::metrics::GroupLabels { group: self.name.clone() };
        let lag = (time::OffsetDateTime::now_utc() - delivery.event.occurred_at).as_seconds_f64().max(0.0);
        m.events_handled.get_or_create(labels).inc();
        m.event_lag.get_or_create(&group).observe(lag);
        m.consumer_lag.get_or_create(&group).set(lag);
        tracing::info!(lag_seconds = lag, "event handled");
        Outcome::Ack
    }

    async fn handle_in_span(&self, delivery: &Delivery) -> Outcome {
        let event = &delivery.event;
        let m = httpkit::metrics::metrics();
        let started = std::time::Instant::now();
        let processed = self.process(event).await;
        let labels = self.observe(delivery, started.elapsed().as_secs_f64());
        let outcome = match processed {
            Ok(()) => return self.applied(delivery, &labels),
            Err(HandleError::Malformed(err)) => {
                tracing::error!(consumer = %self.name, event_id = %event.id, kind = %event.kind, error = %format!("{err:#}"), payload = %event.data, "parking malformed event");
                self.park_or_retry(event, format!("{err:#}")).await
            }
            Err(HandleError::Retry(err)) if delivery.is_last_attempt => {
                tracing::error!(consumer = %self.name, event_id = %event.id, kind = %event.kind, attempt = delivery.attempt, error = %format!("{err:#}"), "retries exhausted; parking event");
                self.park_or_retry(event, format!("retries exhausted: {err:#}")).await
            }
            Err(HandleError::Retry(err)) => {
                // The bus logs the retry at warn, with its delay.
                tracing::debug!(consumer = %self.name, event_id = %event.id, kind = %event.kind, attempt = delivery.attempt, error = %format!("{err:#}"), "event not applied yet; will retry");
                Outcome::Retry(err)
            }
        };
        match &outcome {
            Outcome::Ack => m.events_parked.get_or_create(&labels).inc(),
            Outcome::Retry(_) => m.events_failed.get_or_create(&labels).inc(),
        };
        outcome
    }
}
