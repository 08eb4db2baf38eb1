//! The NATS JetStream bus, for running services as separate processes.
//!
//! It owns one stream (`<prefix>.>`, file storage) and, per consumer group, one durable pull
//! consumer. JetStream provides what [`super::EventBus`] promises: the stream's duplicate window
//! drops a re-published event id (`Nats-Msg-Id`), a durable consumer remembers what its group
//! acknowledged across restarts, every subscriber of a group pulls from the same consumer so
//! the group's work is split between them, and an unacknowledged message comes back after
//! `ack_wait` or after the backoff we ask for with a NAK. `max_deliver` caps the attempts.
//!
//! A subscriber handles up to the policy's `max_in_flight` messages at once. It never asks the
//! server for more messages than it has free slots (one pull request at a time, for exactly the
//! free slots), so every message it receives starts its handler at once: none waits in a local
//! buffer while its `ack_wait` runs out. Each message is acknowledged (or NAKed) on its own when
//! its handler is done. Handlers start in the order the messages arrive but overlap, so a group
//! must not rely on the order of events (consumers apply the version rule and retry).
//!
//! The client reconnects on its own; a pull request the server forgot (it restarted) runs out
//! on the client after `PULL_EXPIRES` and a margin, and the next one is made. A subscriber whose
//! pull fails (consumer or stream deleted) backs off and sets its consumer up again, until
//! shutdown; handlers already running carry on meanwhile. On shutdown a subscriber stops pulling
//! and lets the handlers in flight finish and settle their messages.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::connection::State;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::Context as JetStream;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::{BusError, Delivery, DynHandler, Event, EventBus, Outcome, RetryPolicy, subject_for};

/// How long `Nats-Msg-Id` de-duplication remembers an id. It catches the usual re-send (the
/// outbox relay retrying after a lost ack); consumers de-duplicate whatever comes later.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Bounds every JetStream API request, publish ack and double ack.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// `/readyz` must answer quickly even when the server hangs.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one pull request waits on the server for messages. Short, because it is also how
/// soon an idle subscriber notices that the server forgot its request (after a restart): the
/// client gives up on a request 5 s after it expired and makes a new one.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

pub struct NatsBus {
    client: async_nats::Client,
    jetstream: JetStream,
    stream: stream::Config,
    prefix: String,
    policy: RetryPolicy,
}

impl NatsBus {
    /// Connects and creates (or updates) the stream carrying `<prefix>.>`.
    pub async fn connect(url: &str, stream: &str, prefix: &str, policy: RetryPolicy) -> anyhow::Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name(format!("ticketing {prefix} (pid {})", std::process::id()))
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from NATS; reconnecting")
                    }
                    // One per failed reconnect attempt: the Disconnected warning said it all.
                    async_nats::Event::ClientError(err) => {
                        tracing::debug!(error = %err, "NATS client error")
                    }
                    other => tracing::warn!(event = %other, "NATS connection event"),
                }
            })
            .connect(url)
            .await
            .with_context(|| format!("cannot connect to NATS at {url}"))?;
        let jetstream = jetstream::ContextBuilder::new().timeout(REQUEST_TIMEOUT).build(client.clone());
        let config = stream::Config {
            name: stream.to_owned(),
            subjects: vec![format!("{prefix}.>")],
            storage: StorageType::File,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        jetstream
            .create_or_update_stream(config.clone())
            .await
            .with_context(|| format!("cannot create the JetStream stream {stream}"))?;
        Ok(Self { client, jetstream, stream: config, prefix: prefix.to_owned(), policy })
    }
}

#[async_trait::async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        let subject = subject_for(&self.prefix, &event.kind);
        let message = PublishMessage::build().payload(event.encode().into()).message_id(event.id.to_string());
        // The context bounds the send and the ack; the outer bound also covers waiting for an
        // in-flight-ack permit, which has none.
        let ack = tokio::time::timeout(REQUEST_TIMEOUT * 2, async {
            self.jetstream.send_publish(subject, message).await?.await
        })
        .await
        .map_err(|_| BusError::Unavailable(anyhow::anyhow!("no publish ack from JetStream in time")))?
        .map_err(|err| BusError::Unavailable(anyhow::Error::from(err).context("JetStream publish failed")))?;
        if ack.duplicate {
            tracing::debug!(event_id = %event.id, kind = %event.kind, "JetStream already had this event");
        }
        Ok(())
    }

    async fn publish_batch(&self, events: &[Event]) -> Result<usize, BusError> {
        // Send every publish first, in order on the one connection, then collect the acks: one
        // round trip for the batch rather than one per event.
        let mut sent = Vec::with_capacity(events.len());
        let mut failure = None;
        for event in events {
            let subject = subject_for(&self.prefix, &event.kind);
            let message = PublishMessage::build().payload(event.encode().into()).message_id(event.id.to_string());
            // The outer bound also covers waiting for an in-flight-ack permit.
            match tokio::time::timeout(REQUEST_TIMEOUT, self.jetstream.send_publish(subject, message)).await {
                Ok(Ok(ack)) => sent.push((event, ack)),
                Ok(Err(err)) => {
                    failure = Some(anyhow::Error::from(err).context("JetStream publish failed"));
                    break;
                }
                Err(_) => {
                    failure = Some(anyhow::anyhow!("cannot send a publish to JetStream in time"));
                    break;
                }
            }
        }
        let mut acknowledged = 0;
        for (event, ack) in sent {
            // Each ack is bounded by the context's timeout.
            match ack.await {
                Ok(ack) => {
                    if ack.duplicate {
                        tracing::debug!(event_id = %event.id, kind = %event.kind, "JetStream already had this event");
                    }
                    acknowledged += 1;
                }
                Err(err) => {
                    // The acks after it are not counted: the caller sends those events again.
                    failure = Some(anyhow::Error::from(err).context("JetStream publish failed"));
                    break;
                }
            }
        }
        match failure {
            None => Ok(acknowledged),
            Some(err) if acknowledged == 0 => Err(BusError::Unavailable(err)),
            Some(err) => {
                tracing::warn!(error = %format!("{err:#}"), acknowledged, of = events.len(), "JetStream acknowledged only part of a batch");
                Ok(acknowledged)
            }
        }
    }

    async fn subscribe(
        &self,
        group: &str,
        kinds: &[&str],
        handler: DynHandler,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, BusError> {
        let subscriber = Arc::new(Subscriber {
            jetstream: self.jetstream.clone(),
            stream: self.stream.clone(),
            consumer: consumer_name(group),
            group: group.to_owned(),
            subjects: kinds.iter().map(|kind| subject_for(&self.prefix, kind)).collect(),
            policy: self.policy.clone(),
            handler,
        });
        // Set up once here, so a caller learns at start-up that the group cannot consume.
        let consumer = subscriber.set_up().await.map_err(BusError::Unavailable)?;
        Ok(tokio::spawn(async move { subscriber.run(consumer, shutdown).await }))
    }

    async fn check(&self) -> Result<(), BusError> {
        let state = self.client.connection_state();
        if state != State::Connected {
            return Err(BusError::Unavailable(anyhow::anyhow!("NATS connection is {state}")));
        }
        match tokio::time::timeout(CHECK_TIMEOUT, self.jetstream.get_stream(&self.stream.name)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => {
                Err(BusError::Unavailable(anyhow::Error::from(err).context("JetStream stream info failed")))
            }
            Err(_) => Err(BusError::Unavailable(anyhow::anyhow!("JetStream did not answer within {CHECK_TIMEOUT:?}"))),
        }
    }

    fn retry_policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

/// A durable consumer's name: JetStream refuses whitespace, `.`, `*`, `>` and path separators.
fn consumer_name(group: &str) -> String {
    group.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

struct Subscriber {
    jetstream: JetStream,
    stream: stream::Config,
    consumer: String,
    group: String,
    subjects: Vec<String>,
    policy: RetryPolicy,
    handler: DynHandler,
}

impl Subscriber {
    /// Gets the group's durable consumer, creating it, or widening its filter to our subjects.
    async fn set_up(&self) -> anyhow::Result<PullConsumer> {
        // Creating a missing stream here lets the group recover from a server that lost its data.
        let stream = self
            .jetstream
            .get_or_create_stream(self.stream.clone())
            .await
            .with_context(|| format!("cannot get the JetStream stream {}", self.stream.name))?;
        // Like the embedded bus, a group consumes the union of the kinds it was ever subscribed
        // to: two subscribe calls of one group with different kinds must not undo each other.
        let mut subjects = match stream.consumer_info(&self.consumer).await {
            Ok(info) => {
                let mut subjects = info.config.filter_subjects;
                if !info.config.filter_subject.is_empty() {
                    subjects.push(info.config.filter_subject);
                }
                subjects
            }
            Err(err) if err.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => Vec::new(),
            Err(err) => {
                return Err(anyhow::Error::from(err).context("cannot look up the durable consumer"));
            }
        };
        subjects.extend(self.subjects.iter().cloned());
        subjects.sort();
        subjects.dedup();
        let config = pull::Config {
            durable_name: Some(self.consumer.clone()),
            description: Some(format!("consumer group {}", self.group)),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.policy.ack_wait,
            max_deliver: i64::from(self.policy.max_attempts),
            filter_subjects: subjects,
            ..Default::default()
        };
        // Create-or-update: several subscribers of one group end up on the same consumer, and a
        // changed retry policy reaches the server.
        stream
            .create_consumer(config)
            .await
            .with_context(|| format!("cannot create the durable consumer {}", self.consumer))
    }

    async fn run(self: Arc<Self>, consumer: PullConsumer, shutdown: CancellationToken) {
        // Slots and handlers outlive a failed pull, so the limit holds across set-ups and the
        // handlers running when the pull failed still finish and settle their messages.
        let slots = Arc::new(Semaphore::new(self.policy.in_flight_limit()));
        let mut handlers = JoinSet::new();
        let mut consumer = Some(consumer);
        let mut failures = 0u32;
        loop {
            let consumed = match consumer.take() {
                Some(consumer) => self.consume(&consumer, &slots, &mut handlers, &mut failures, &shutdown).await,
                None => tokio::select! {
                    () = shutdown.cancelled() => break,
                    set_up = self.set_up() => match set_up {
                        Ok(consumer) => self.consume(&consumer, &slots, &mut handlers, &mut failures, &shutdown).await,
                        Err(err) => Err(err),
                    },
                },
            };
            let err = match consumed {
                Ok(()) => break,
                Err(err) => err,
            };
            failures += 1;
            let pause = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
            tracing::warn!(group = %self.group, error = %format!("{err:#}"), retry_in = ?pause, "NATS subscriber failed; will set it up again");
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
            reap(&self.group, &mut handlers);
        }
        // Each handler is bounded by ack_wait, so this ends.
        while let Some(joined) = handlers.join_next().await {
            log_panic(&self.group, joined);
        }
        tracing::debug!(group = %self.group, "NATS subscriber stopped");
    }

    /// Handles messages until shutdown (`Ok`) or until pulling fails (`Err`).
    async fn consume(
        self: &Arc<Self>,
        consumer: &PullConsumer,
        slots: &Arc<Semaphore>,
        handlers: &mut JoinSet<()>,
        failures: &mut u32,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            reap(&self.group, handlers);
            // Wait for a free slot, then take every free one: the pull asks for no more
            // messages than can start at once.
            let mut free = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                slot = slots.clone().acquire_owned() => slot.context("the subscriber's slots are closed")?,
            };
            if let Ok(more) = u32::try_from(slots.available_permits())
                && more > 0
                && let Ok(more) = slots.clone().try_acquire_many_owned(more)
            {
                free.merge(more);
            }
            let mut messages = consumer
                .batch()
                .max_messages(free.num_permits())
                .expires(PULL_EXPIRES)
                .messages()
                .await
                .context("cannot pull messages")?;
            // Ends when the request is filled or expired; unused slots go back with `free`.
            loop {
                let next = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return Ok(()),
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        *failures = 0;
                        match free.split(1) {
                            Some(slot) => self.start(message, slot, handlers),
                            // The server never sends more than asked for; if it did, let the
                            // message go to whoever has room.
                            None => acknowledge(&self.group, &message, AckKind::Nak(None)).await,
                        }
                    }
                    Some(Err(err)) => {
                        return Err(anyhow::anyhow!(err).context("pulling messages failed"));
                    }
                    None => {
                        *failures = 0;
                        break;
                    }
                }
            }
        }
    }

    /// Starts handling `message` in a task of its own, which holds `slot` until the message is
    /// settled. The handler is called here, so handlers start in the order messages arrive.
    fn start(self: &Arc<Self>, message: jetstream::Message, slot: OwnedSemaphorePermit, handlers: &mut JoinSet<()>) {
        let (attempt, stream_sequence) = match message.info() {
            Ok(info) => (u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX), info.stream_sequence),
            Err(err) => {
                tracing::warn!(group = %self.group, error = %err, "JetStream message without delivery info");
                (1, 0)
            }
        };
        let event = match Event::decode(&message.payload) {
            Ok(event) => event,
            Err(err) => {
                // A message nobody can read is not ours to keep retrying.
                tracing::error!(group = %self.group, seq = stream_sequence, error = %err, "undecodable message on the NATS bus; terminating it");
                let group = self.group.clone();
                handlers.spawn(async move {
                    acknowledge(&group, &message, AckKind::Term).await;
                    drop(slot);
                });
                return;
            }
        };
        let event_id = event.id;
        let is_last_attempt = attempt >= self.policy.max_attempts;
        let handling = (self.handler)(Delivery { event, attempt, is_last_attempt });
        let this = self.clone();
        handlers.spawn(async move {
            let (outcome, timed_out) = match tokio::time::timeout(this.policy.ack_wait, handling).await {
                Ok(outcome) => (outcome, false),
                Err(_) => (Outcome::Retry(anyhow::anyhow!("handler timed out after {:?}", this.policy.ack_wait)), true),
            };
            this.settle(&message, event_id, attempt, is_last_attempt, outcome, timed_out).await;
            drop(slot);
        });
    }

    async fn settle(
        &self,
        message: &jetstream::Message,
        event_id: uuid::Uuid,
        attempt: u32,
        is_last_attempt: bool,
        outcome: Outcome,
        timed_out: bool,
    ) {
        match outcome {
            Outcome::Ack => {
                // Confirmed, so a lost ack shows up in the log rather than as a surprise redelivery.
                if let Err(err) = message.double_ack().await {
                    tracing::warn!(group = %self.group, %event_id, error = %err, "ack not confirmed by JetStream; the event may be redelivered");
                }
            }
            Outcome::Retry(err) if is_last_attempt => {
                tracing::error!(group = %self.group, %event_id, attempt, error = %format!("{err:#}"), "delivery failed on its last attempt; it will not be redelivered");
                acknowledge(&self.group, message, AckKind::Term).await;
            }
            Outcome::Retry(err) if timed_out => {
                // The server's ack_wait ran out before ours, so it is already redelivering; a NAK
                // now would shorten the lease of that next delivery.
                tracing::warn!(group = %self.group, %event_id, attempt, error = %format!("{err:#}"), "handler too slow; JetStream redelivers");
            }
            Outcome::Retry(err) => {
                let delay = self.policy.delay_after(attempt);
                tracing::debug!(group = %self.group, %event_id, attempt, retry_in = ?delay, error = %format!("{err:#}"), "delivery failed; will redeliver");
                acknowledge(&self.group, message, AckKind::Nak(Some(delay))).await;
            }
        }
    }
}

/// Collects the handler tasks that have finished.
fn reap(group: &str, handlers: &mut JoinSet<()>) {
    while let Some(joined) = handlers.try_join_next() {
        log_panic(group, joined);
    }
}

fn log_panic(group: &str, joined: Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined {
        // Its message was not settled, so JetStream redelivers it after ack_wait.
        tracing::error!(%group, error = %err, "event handler task failed");
    }
}

async fn acknowledge(group: &str, message: &jetstream::Message, kind: AckKind) {
    if let Err(err) = message.ack_with(kind).await {
        tracing::warn!(%group, error = %err, "cannot send ack to JetStream; the message comes back after ack_wait");
    }
}
