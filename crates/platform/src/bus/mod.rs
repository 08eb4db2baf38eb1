//! The event bus: durable, at-least-once delivery of contract events to consumer groups.
//!
//! Two real implementations stand behind [`EventBus`]:
//! - [`nats::NatsBus`], NATS JetStream, for production: one stream, one durable pull
//!   consumer per consuming service, so instances of a service share the work;
//! - [`embedded::EmbeddedBus`], a SQLite file in the data dir, for the one-process default:
//!   the same semantics (per-group delivery, redelivery after a failed or timed-out
//!   handler, de-duplication by event id, survives restarts) with no server to run.
//!
//! Services never publish directly: they write events to their outbox in the same
//! transaction as the change ([`crate::outbox`]), and the relay publishes them here.
//!
//! A subscriber of either bus runs on a [`crate::worker::Worker`] as a `Subscription`: each
//! step waits for free slots (`InFlight`) and runs the bus's `Round`, which takes that many
//! deliveries and starts their handlers, so backoff after a failed pull or lease, panic
//! reporting and shutdown are the worker's.

pub mod embedded;
pub mod nats;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::worker::{Job, Step};

/// One event on the wire: the envelope every event carries, around its contract payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event; the bus de-duplicates on it and consumers record it.
    pub id: Uuid,
    /// The contract name, e.g. `ticket:created`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "occurredAt", with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    pub data: serde_json::Value,
    /// The request id of the HTTP request that caused this event, directly or through other
    /// events ([`httpkit::telemetry::current_trace_id`]). Absent from events written before it
    /// existed.
    #[serde(rename = "traceId", default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl Event {
    /// A new event with a time-ordered id (UUIDv7), so ordering by id is ordering by creation,
    /// carrying the current trace id.
    pub fn new(kind: &str, data: serde_json::Value) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind: kind.to_owned(),
            occurred_at: OffsetDateTime::now_utc(),
            data,
            trace_id: httpkit::telemetry::current_trace_id(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// The subject an event kind travels on: `ticket:created` → `<prefix>.ticket.created`.
pub fn subject_for(prefix: &str, kind: &str) -> String {
    format!("{prefix}.{}", kind.replace(':', "."))
}

/// How a group's events are handed to its handler and how a failure is retried. Shared by both
/// buses so they behave alike.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Deliveries of one event to one group before the consumer must park it.
    pub max_attempts: u32,
    /// Delay before redelivery after the n-th failed attempt (the last entry repeats).
    pub backoff: Vec<Duration>,
    /// How long a delivery stays unacknowledged before the bus hands it out again. Running
    /// handlers report progress, so this bounds only how soon a crashed subscriber's events
    /// come back.
    pub ack_wait: Duration,
    /// The longest a handler may run; after it the delivery counts as failed.
    pub handler_timeout: Duration,
    /// How many events one subscriber handles at once. A subscriber never takes more events
    /// from the bus than it has free slots, so every event it takes starts at once and its
    /// `ack_wait` runs only while its handler does.
    pub max_in_flight: usize,
    /// The most events handed to a handler together ([`Handler::handle_batch`]): the events a
    /// subscriber took from the bus at once, in the bus's order. A consumer applies a batch in
    /// one transaction, so under load it pays for one commit per batch instead of per event;
    /// when events come one at a time, batches are of one and nothing waits to fill them.
    pub max_batch: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 12,
            backoff: [50, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            ack_wait: Duration::from_secs(5),
            handler_timeout: Duration::from_secs(60),
            max_in_flight: 16,
            max_batch: 8,
        }
    }
}

impl RetryPolicy {
    /// [`Self::max_in_flight`], at least 1.
    pub fn in_flight_limit(&self) -> usize {
        self.max_in_flight.max(1)
    }

    /// [`Self::max_batch`], at least 1 and at most [`Self::in_flight_limit`].
    pub fn batch_limit(&self) -> usize {
        self.max_batch.clamp(1, self.in_flight_limit())
    }

    /// How often a running handler's delivery is kept from redelivery: well within `ack_wait`.
    pub fn progress_every(&self) -> Duration {
        (self.ack_wait / 3).max(Duration::from_millis(50))
    }

    /// Delay before the next delivery after `attempt` (1-based) failed.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let index = (attempt.max(1) as usize - 1).min(self.backoff.len().saturating_sub(1));
        self.backoff.get(index).copied().unwrap_or(Duration::from_secs(1))
    }
}

/// One delivery of an event to a handler.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: Event,
    /// 1 for the first delivery to this group.
    pub attempt: u32,
    /// After a failure on this attempt the bus will not deliver the event again.
    pub is_last_attempt: bool,
}

/// What a handler made of a delivery.
#[derive(Debug)]
pub enum Outcome {
    /// Done (or already done before): never deliver it again to this group.
    Ack,
    /// Not now: deliver it again after the policy's backoff.
    Retry(anyhow::Error),
}

/// A consumer group's handler. Called concurrently for different events (up to the policy's
/// `max_in_flight` per subscriber), in no guaranteed order: a subscriber starts its handlers in
/// the order the bus hands events out, but they run side by side and redeliveries interleave.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, delivery: Delivery) -> impl Future<Output = Outcome> + Send;

    /// Deliveries the bus handed out together, in its order; returns one outcome per delivery,
    /// in the same order. By default each is handled on its own, side by side.
    fn handle_batch(&self, deliveries: Vec<Delivery>) -> impl Future<Output = Vec<Outcome>> + Send {
        futures::future::join_all(deliveries.into_iter().map(|delivery| self.handle(delivery)))
    }
}

/// Object-safe twin of [`Handler`], used by the bus implementations: a batch of deliveries in,
/// one outcome per delivery out.
pub type DynHandler = Arc<dyn Fn(Vec<Delivery>) -> futures::future::BoxFuture<'static, Vec<Outcome>> + Send + Sync>;

pub fn dyn_handler<H: Handler>(handler: Arc<H>) -> DynHandler {
    Arc::new(move |deliveries: Vec<Delivery>| {
        let handler = handler.clone();
        Box::pin(async move {
            use futures::FutureExt;
            let count = deliveries.len();
            // A panicking handler must not kill its subscriber: treat it as a failed attempt of
            // every delivery it was given.
            let outcomes =
                std::panic::AssertUnwindSafe(handler.handle_batch(deliveries)).catch_unwind().await.unwrap_or_else(
                    |_| (0..count).map(|_| Outcome::Retry(anyhow::anyhow!("event handler panicked"))).collect(),
                );
            complete(outcomes, count)
        })
    })
}

/// A [`DynHandler`] from a closure that handles one delivery (tests, simple handlers).
pub fn per_delivery<F, Fut>(handle: F) -> DynHandler
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    struct PerDelivery<F>(F);
    impl<F, Fut> Handler for PerDelivery<F>
    where
        F: Fn(Delivery) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Outcome> + Send + 'static,
    {
        fn handle(&self, delivery: Delivery) -> impl Future<Output = Outcome> + Send {
            (self.0)(delivery)
        }
    }
    dyn_handler(Arc::new(PerDelivery(handle)))
}

/// One outcome per delivery, whatever the handler returned: a missing one is a failed attempt
/// (the delivery comes back), never a silent acknowledgement.
fn complete(mut outcomes: Vec<Outcome>, count: usize) -> Vec<Outcome> {
    if outcomes.len() != count {
        tracing::error!(expected = count, got = outcomes.len(), "a handler returned the wrong number of outcomes");
        outcomes.truncate(count);
        outcomes
            .resize_with(count, || Outcome::Retry(anyhow::anyhow!("the handler gave no outcome for this delivery")));
    }
    outcomes
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("event bus unavailable: {0:#}")]
    Unavailable(anyhow::Error),
}

/// What a bus's subscriber does in one step of its worker: take deliveries for the `free` slots
/// (no more) and start their handlers in `in_flight`.
#[async_trait::async_trait]
pub(crate) trait Round: Send + Sync + 'static {
    async fn round(this: &Arc<Self>, free: OwnedSemaphorePermit, in_flight: &InFlight) -> anyhow::Result<Step>;
}

/// A subscriber as its worker's job: waits for free slots, runs a round, and at shutdown waits
/// for the handlers in flight to settle. The handler tasks live here, not in the subscriber
/// they share, so ending the worker's task ends them too.
pub(crate) struct Subscription<S> {
    subscriber: Arc<S>,
    /// Names the worker in logs.
    name: String,
    in_flight: InFlight,
    shutdown: CancellationToken,
}

impl<S: Round> Subscription<S> {
    pub(crate) fn new(
        name: String,
        group: &str,
        policy: &RetryPolicy,
        subscriber: S,
        shutdown: &CancellationToken,
    ) -> Self {
        Self {
            subscriber: Arc::new(subscriber),
            name,
            in_flight: InFlight::new(group, policy),
            shutdown: shutdown.clone(),
        }
    }
}

#[async_trait::async_trait]
impl<S: Round> Job for Subscription<S> {
    fn name(&self) -> &str {
        &self.name
    }

    async fn step(&self) -> anyhow::Result<Step> {
        let Some(free) = self.in_flight.free_slots(&self.shutdown).await else { return Ok(Step::Idle) };
        S::round(&self.subscriber, free, &self.in_flight).await
    }

    /// The subscriber stopped taking deliveries; the handlers in flight settle theirs.
    async fn finish(&self) {
        self.in_flight.drain().await;
        tracing::debug!(job = %self.name, "subscriber stopped");
    }
}

/// A subscriber's handlers in flight: at most the policy's `max_in_flight` deliveries at once,
/// each batch in a task of its own that holds its slots until its deliveries are settled.
pub(crate) struct InFlight {
    group: String,
    slots: Arc<Semaphore>,
    tasks: std::sync::Mutex<JoinSet<()>>,
}

impl InFlight {
    pub(crate) fn new(group: &str, policy: &RetryPolicy) -> Self {
        Self {
            group: group.to_owned(),
            slots: Arc::new(Semaphore::new(policy.in_flight_limit())),
            tasks: std::sync::Mutex::default(),
        }
    }

    /// Waits for a free slot, then takes every free one, so a subscriber asks the bus for no
    /// more deliveries than can start at once. `None` once `shutdown` is cancelled.
    pub(crate) async fn free_slots(&self, shutdown: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        self.reap();
        let mut free = tokio::select! {
            biased;
            () = shutdown.cancelled() => return None,
            // The semaphore is never closed.
            slot = self.slots.clone().acquire_owned() => slot.ok()?,
        };
        if let Ok(more) = u32::try_from(self.slots.available_permits())
            && more > 0
            && let Ok(more) = self.slots.clone().try_acquire_many_owned(more)
        {
            free.merge(more);
        }
        Some(free)
    }

    /// Runs one batch's handling and settling; it should hold the batch's slots until done.
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).spawn(task);
    }

    /// Waits for every task in flight (each handler is bounded by the policy's
    /// `handler_timeout`, so this ends). For after the subscriber stopped starting new ones.
    pub(crate) async fn drain(&self) {
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        while let Some(joined) = tasks.join_next().await {
            self.report(joined);
        }
    }

    /// Collects the tasks that have finished.
    fn reap(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while let Some(joined) = tasks.try_join_next() {
            self.report(joined);
        }
    }

    fn report(&self, joined: Result<(), tokio::task::JoinError>) {
        if let Err(err) = joined {
            // Handlers' own panics are failed attempts (`dyn_handler`); this is the bus's code.
            tracing::error!(group = %self.group, error = %err, "event handler task failed; its deliveries were not settled and come back when their lease (ack_wait) runs out");
        }
    }
}

/// A durable, at-least-once event bus.
#[async_trait::async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Stores the event durably and returns once the bus has acknowledged it.
    /// Publishing the same event id twice stores it once.
    async fn publish(&self, event: &Event) -> Result<(), BusError>;

    /// Publishes `events` in order and returns how many of them, counted from the first, the bus
    /// acknowledged durably: all of them on success, fewer if a publish failed part-way (the
    /// rest may or may not be stored; publishing them again is harmless). An error means none
    /// was acknowledged. The default publishes one after the other; buses override it to
    /// overlap the round trips.
    async fn publish_batch(&self, events: &[Event]) -> Result<usize, BusError> {
        for (index, event) in events.iter().enumerate() {
            if let Err(err) = self.publish(event).await {
                if index == 0 {
                    return Err(err);
                }
                tracing::warn!(error = %err, acknowledged = index, of = events.len(), "publish failed part-way through a batch");
                return Ok(index);
            }
        }
        Ok(events.len())
    }

    /// Starts delivering events of `kinds` to `group`, until `shutdown` is cancelled.
    /// Events published before the group first subscribed are delivered too. Calling it
    /// again with the same group (here or in another process) shares the group's work:
    /// each event goes to one of the subscribers.
    async fn subscribe(
        &self,
        group: &str,
        kinds: &[&str],
        handler: DynHandler,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, BusError>;

    /// Whether the bus is reachable right now (for `/readyz`).
    async fn check(&self) -> Result<(), BusError>;

    /// The retry policy this bus applies.
    fn retry_policy(&self) -> &RetryPolicy;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns one outcome fewer than it was given deliveries, or panics on an empty batch.
    struct Faulty;

    impl Handler for Faulty {
        async fn handle(&self, _: Delivery) -> Outcome {
            Outcome::Ack
        }

        async fn handle_batch(&self, deliveries: Vec<Delivery>) -> Vec<Outcome> {
            assert!(deliveries.len() > 1, "panics on a batch of one");
            deliveries.iter().skip(1).map(|_| Outcome::Ack).collect()
        }
    }

    fn deliveries(count: usize) -> Vec<Delivery> {
        (0..count)
            .map(|n| Delivery {
                event: Event::new("test:event", serde_json::json!({ "n": n })),
                attempt: 1,
                is_last_attempt: false,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_missing_outcome_or_a_panic_is_a_failed_attempt_never_an_acknowledgement() {
        let handler = dyn_handler(Arc::new(Faulty));
        let outcomes = handler(deliveries(3)).await;
        assert_eq!(outcomes.len(), 3, "one outcome per delivery");
        assert!(matches!(outcomes[..2], [Outcome::Ack, Outcome::Ack]), "{outcomes:?}");
        assert!(matches!(outcomes[2], Outcome::Retry(_)), "the delivery without an outcome comes back: {outcomes:?}");

        let outcomes = handler(deliveries(1)).await;
        assert!(matches!(outcomes[..], [Outcome::Retry(_)]), "a panic fails the batch's deliveries: {outcomes:?}");
    }
}
