//! The NATS JetStream bus, for running services as separate processes.
//!
//! It owns one stream (`<prefix>.>`, file storage) and, per consumer group, one durable pull
//! consumer. JetStream provides what [`super::EventBus`] promises: the stream's duplicate window
//! drops a re-published event id (`Nats-Msg-Id`), a durable consumer remembers what its group
//! acknowledged across restarts, every subscriber of a group pulls from the same consumer so
//! the group's work is split between them, and an unacknowledged message comes back after
//! `ack_wait` or after the backoff we ask for with a NAK. `max_deliver` caps the attempts.
//!
//! A subscriber handles up to the policy's `max_in_flight` messages at once; messages that
//! arrive together are handed to the handler as one batch (up to `max_batch`). It never asks the
//! server for more messages than it has free slots (one pull request at a time, for exactly the
//! free slots), so every message it receives starts its handler at once: none waits in a local
//! buffer while its `ack_wait` runs out. Each message is acknowledged (or NAKed) on its own when
//! its handler is done. Handlers start in the order the messages arrive but overlap, so a group
//! must not rely on the order of events (consumers apply the version rule and retry).
//!
//! While a handler runs, its message is kept from redelivery by progress acks, so `ack_wait` can
//! be short: it is how soon the events a crashed process held come back to another subscriber.
//!
//! The stream belongs to the operator: a process creates it (with the replicas, limits and
//! storage of its settings) only when it is missing, and never rewrites an existing one.
//! Consumers are created without a replica count, so they follow the stream's.
//!
//! The client knows every server of the cluster and reconnects on its own, at once and then
//! with a short capped delay; it also starts while NATS is down. A pull request made on a server
//! that died or forgot it runs out on the client after `PULL_EXPIRES` and a short margin, and the
//! next one goes to whichever server the client reached. A subscriber whose pull or set-up fails
//! (no server, no stream leader yet, consumer deleted) backs off briefly and sets its consumer up
//! again, until shutdown; handlers already running carry on meanwhile. The subscriber is a
//! [`crate::worker::Job`] (a step is one pull request), so that backoff, its log and shutdown
//! are the worker's. On shutdown a subscriber stops pulling and lets the handlers in flight
//! finish and settle their messages.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::connection::State;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::Context as JetStream;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, AckKind};
use futures::{FutureExt, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::{
    BusError, Delivery, DynHandler, Event, EventBus, InFlight, Outcome, RetryPolicy, Round, Subscription, subject_for,
};
use crate::worker::{Step, Worker};

/// How long `Nats-Msg-Id` de-duplication remembers an id. It catches the usual re-send (the
/// outbox relay retrying after a lost ack); consumers de-duplicate whatever comes later.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Bounds every JetStream API request, publish ack and double ack. Short, so a request sent to a
/// node that just died, or to a stream between two leaders, is retried soon on the new one.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one pull request waits on the server for messages. Short, because it is also how
/// soon an idle subscriber notices that its request went to a server that died or forgot it:
/// the subscriber gives up on a request `PULL_MARGIN` after it expired and makes a new one, on
/// whichever server the client is connected to by then.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
const PULL_MARGIN: Duration = Duration::from_millis(750);
/// The longest pause before a subscriber sets its consumer up again after failures: the first
/// retries are quick (a cluster elects a new stream leader in a second or two), later ones
/// slower.
const MAX_BACKOFF: Duration = Duration::from_millis(1_600);
/// Reconnect delay after the n-th failed attempt: quick at first (another node of the cluster
/// is usually there), capped so an outage costs little.
fn reconnect_delay(attempts: usize) -> Duration {
    Duration::from_millis((attempts as u64 * 100).min(2_000))
}

/// The stream as this deployment wants it; applied only when the stream does not exist yet.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub name: String,
    pub replicas: usize,
    /// Zero: events are kept for ever.
    pub max_age: Duration,
    /// -1: unlimited.
    pub max_bytes: i64,
    pub storage: httpkit::settings::StreamStorage,
}

impl StreamSettings {
    /// One replica on file storage, unlimited retention: what a single development server takes.
    pub fn single(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            replicas: 1,
            max_age: Duration::ZERO,
            max_bytes: -1,
            storage: httpkit::settings::StreamStorage::File,
        }
    }
}

/// How to reach and authenticate to NATS.
#[derive(Clone, Default)]
pub struct NatsConnection {
    /// One or more server URLs (`nats://`, or `tls://` for TLS).
    pub servers: Vec<String>,
    /// A `.creds` file (user JWT + nkey seed).
    pub creds_file: Option<PathBuf>,
    pub user_password: Option<(String, String)>,
    pub nkey_seed: Option<String>,
    /// An extra root certificate (PEM) for TLS.
    pub tls_ca_file: Option<PathBuf>,
}

impl NatsConnection {
    /// `urls` is one URL or a comma-separated list.
    pub fn to(urls: &str) -> Self {
        Self {
            servers: urls.split(',').map(str::trim).filter(|url| !url.is_empty()).map(str::to_owned).collect(),
            ..Self::default()
        }
    }
}

pub struct NatsBus {
    client: async_nats::Client,
    jetstream: JetStream,
    /// The stream as we would create it.
    stream: stream::Config,
    prefix: String,
    policy: RetryPolicy,
    /// Set once the stream was found or created; cleared when a publish finds no stream.
    stream_known: AtomicBool,
}

impl NatsBus {
    /// Connects to one server or a comma-separated list of them and makes sure the stream exists
    /// (one replica when it has to create it). Fails if the servers cannot be reached in time.
    pub async fn connect(url: &str, stream: &str, prefix: &str, policy: RetryPolicy) -> anyhow::Result<Self> {
        let bus = Self::start(NatsConnection::to(url), StreamSettings::single(stream), prefix, policy).await?;
        bus.ensure_stream().await?;
        Ok(bus)
    }

    /// Starts a client that connects in the background and keeps reconnecting: the process runs
    /// while NATS is down, publishes wait in the outbox and subscribers set themselves up when it
    /// returns. Fails only on settings that can never work (bad URL, unreadable credentials).
    pub async fn start(
        connection: NatsConnection,
        stream: StreamSettings,
        prefix: &str,
        policy: RetryPolicy,
    ) -> anyhow::Result<Self> {
        if connection.servers.is_empty() {
            anyhow::bail!("NATS_URL names no server");
        }
        let servers: Vec<async_nats::ServerAddr> = connection
            .servers
            .iter()
            .map(|url| url.parse().with_context(|| format!("NATS_URL has an invalid server address: {url}")))
            .collect::<anyhow::Result<_>>()?;
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("ticketing {prefix} (pid {})", std::process::id()))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(reconnect_delay)
            .connection_timeout(REQUEST_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .ping_interval(Duration::from_secs(5))
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("connected to NATS"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("disconnected from NATS; reconnecting")
                    }
                    async_nats::Event::ClientError(err) => {
                        tracing::warn!(error = %err, "NATS client error")
                    }
                    other => tracing::warn!(event = %other, "NATS connection event"),
                }
            });
        if let Some(path) = &connection.creds_file {
            options = options
                .credentials_file(path)
                .await
                .with_context(|| format!("cannot read the NATS credentials file {}", path.display()))?;
        }
        if let Some((user, password)) = &connection.user_password {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(seed) = &connection.nkey_seed {
            options = options.nkey(seed.clone());
        }
        if let Some(path) = &connection.tls_ca_file {
            options = options.add_root_certificates(path.clone());
        }
        let client = options.connect(servers).await.context("cannot start the NATS client")?;
        let jetstream = jetstream::ContextBuilder::new().timeout(REQUEST_TIMEOUT).build(client.clone());
        let stream = stream::Config {
            name: stream.name,
            subjects: vec![format!("{prefix}.>")],
            storage: match stream.storage {
                httpkit::settings::StreamStorage::File => StorageType::File,
                httpkit::settings::StreamStorage::Memory => StorageType::Memory,
            },
            num_replicas: stream.replicas,
            max_age: stream.max_age,
            max_bytes: stream.max_bytes,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        Ok(Self { client, jetstream, stream, prefix: prefix.to_owned(), policy, stream_known: AtomicBool::new(false) })
    }

    /// Gets the stream, creating it when it is missing (see [`ensure_stream`]).
    pub async fn ensure_stream(&self) -> anyhow::Result<stream::Stream> {
        let stream = ensure_stream(&self.jetstream, &self.stream).await?;
        self.stream_known.store(true, Ordering::Relaxed);
        Ok(stream)
    }

    async fn ensure_stream_once(&self) -> Result<(), BusError> {
        if !self.stream_known.load(Ordering::Relaxed) {
            self.ensure_stream().await.map_err(BusError::Unavailable)?;
        }
        Ok(())
    }
}

/// Gets the stream, creating it as `wanted` when it is missing. An existing stream belongs to its
/// operator: its replicas, limits and storage are never changed here (a difference from our
/// settings is only logged); the one thing added is our subject, if the stream lacks it.
async fn ensure_stream(jetstream: &JetStream, wanted: &stream::Config) -> anyhow::Result<stream::Stream> {
    let mut stream = jetstream
        .get_or_create_stream(wanted.clone())
        .await
        .with_context(|| format!("cannot get or create the JetStream stream {}", wanted.name))?;
    let config = stream.cached_info().config.clone();
    if config.num_replicas != wanted.num_replicas
        || config.max_age != wanted.max_age
        || config.max_bytes != wanted.max_bytes
        || config.storage != wanted.storage
    {
        tracing::warn!(
            stream = %wanted.name,
            replicas = config.num_replicas, wanted_replicas = wanted.num_replicas,
            max_age = ?config.max_age, wanted_max_age = ?wanted.max_age,
            max_bytes = config.max_bytes, wanted_max_bytes = wanted.max_bytes,
            storage = ?config.storage, wanted_storage = ?wanted.storage,
            "the stream differs from this process's NATS_STREAM_* settings; leaving it as it is"
        );
    }
    let subject = &wanted.subjects[0];
    if !config.subjects.iter().any(|s| s == subject || s == ">") {
        let mut updated = config;
        updated.subjects.push(subject.clone());
        tracing::warn!(stream = %wanted.name, %subject, "adding our subject to the stream");
        jetstream.update_stream(updated).await.context("cannot add our subject to the stream")?;
        stream = jetstream.get_stream(&wanted.name).await.context("cannot get the JetStream stream")?;
    }
    Ok(stream)
}

#[async_trait::async_trait]
impl EventBus for NatsBus {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        self.ensure_stream_once().await?;
        let subject = subject_for(&self.prefix, &event.kind);
        let message = PublishMessage::build().payload(event.encode().into()).message_id(event.id.to_string());
        // The context bounds the send and the ack; the outer bound also covers waiting for an
        // in-flight-ack permit, which has none.
        let ack = tokio::time::timeout(REQUEST_TIMEOUT * 2, async {
            self.jetstream.send_publish(subject, message).await?.await
        })
        .await
        .map_err(|_| BusError::Unavailable(anyhow::anyhow!("no publish ack from JetStream in time")))
        .and_then(|acked| {
            acked.map_err(|err| BusError::Unavailable(anyhow::Error::from(err).context("JetStream publish failed")))
        })
        .inspect_err(|_| self.stream_known.store(false, Ordering::Relaxed))?;
        if ack.duplicate {
            tracing::debug!(event_id = %event.id, kind = %event.kind, "JetStream already had this event");
        }
        Ok(())
    }

    async fn publish_batch(&self, events: &[Event]) -> Result<usize, BusError> {
        self.ensure_stream_once().await?;
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
        if failure.is_some() {
            // Perhaps the stream is gone (a server that lost its data): look again next time.
            self.stream_known.store(false, Ordering::Relaxed);
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
        let subscriber = Subscriber {
            jetstream: self.jetstream.clone(),
            stream: self.stream.clone(),
            consumer: consumer_name(group),
            group: group.to_owned(),
            subjects: kinds.iter().map(|kind| subject_for(&self.prefix, kind)).collect(),
            policy: self.policy.clone(),
            handler,
            pulling: std::sync::Mutex::default(),
            shutdown: shutdown.clone(),
        };
        let subscription =
            Subscription::new(format!("NATS subscriber {group}"), group, &self.policy, subscriber, &shutdown);
        // Set up in the background, with retries: the process keeps running while NATS is
        // down or refuses us, and says why in its log.
        Ok(Worker::new(subscription).max_backoff(MAX_BACKOFF).spawn(shutdown))
    }

    async fn check(&self) -> Result<(), BusError> {
        // The connection's state only, no request: readiness must answer at once even while the
        // cluster elects a stream leader, and a publish that fails meanwhile waits in the outbox.
        let state = self.client.connection_state();
        if state != State::Connected {
            return Err(BusError::Unavailable(anyhow::anyhow!("NATS connection is {state}")));
        }
        Ok(())
    }

    fn retry_policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

/// A durable consumer's name: JetStream refuses whitespace, `.`, `*`, `>` and path separators.
fn consumer_name(group: &str) -> String {
    group.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// A group's subscriber: what it pulls from and what its handler tasks share.
struct Subscriber {
    jetstream: JetStream,
    stream: stream::Config,
    consumer: String,
    group: String,
    subjects: Vec<String>,
    policy: RetryPolicy,
    handler: DynHandler,
    /// The durable consumer while pulling from it works.
    pulling: std::sync::Mutex<Option<PullConsumer>>,
    shutdown: CancellationToken,
}

/// A step of the subscriber's worker is one pull request (after setting the durable consumer up,
/// when there is none yet or the last pull failed). A failed step is the worker's to log and
/// retry after its backoff, capped at `MAX_BACKOFF`.
#[async_trait::async_trait]
impl Round for Subscriber {
    async fn round(this: &Arc<Self>, free: OwnedSemaphorePermit, in_flight: &InFlight) -> anyhow::Result<Step> {
        let Some(consumer) = this.consumer().await? else { return Ok(Step::Idle) };
        let pulled = this.pull(&consumer, free, in_flight).await;
        if pulled.is_err() {
            // No server, no stream leader yet, consumer deleted: set it up again next step.
            *this.pulling.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        pulled.map(|()| Step::Busy)
    }
}

impl Subscriber {
    /// Gets the group's durable consumer, creating it, or widening its filter to our subjects.
    async fn set_up(&self) -> anyhow::Result<PullConsumer> {
        // Creating a missing stream here lets the group recover from a server that lost its data.
        let stream = ensure_stream(&self.jetstream, &self.stream).await?;
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

    /// The durable consumer, set up first if the last pull failed (or on the first step). `None`
    /// once `shutdown` is cancelled.
    async fn consumer(&self) -> anyhow::Result<Option<PullConsumer>> {
        if let Some(consumer) = self.pulling.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            return Ok(Some(consumer));
        }
        let consumer = tokio::select! {
            () = self.shutdown.cancelled() => return Ok(None),
            set_up = self.set_up() => set_up?,
        };
        *self.pulling.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(consumer.clone());
        Ok(Some(consumer))
    }

    /// One pull request for exactly the `free` slots; starts a handler for every batch of
    /// messages as they arrive, until the request is filled or expired (`Ok`) or fails (`Err`).
    async fn pull(
        self: &Arc<Self>,
        consumer: &PullConsumer,
        mut free: OwnedSemaphorePermit,
        in_flight: &InFlight,
    ) -> anyhow::Result<()> {
        let mut messages = consumer
            .batch()
            .max_messages(free.num_permits())
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .context("cannot pull messages")?;
        // Ends when the request is filled or expired; unused slots go back with `free`. The
        // client library would wait 5 s past the expiry for a server that died; we give up
        // sooner and pull again (from another node, once the client reconnected there).
        let give_up = tokio::time::Instant::now() + PULL_EXPIRES + PULL_MARGIN;
        loop {
            let next = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Ok(()),
                next = messages.next() => next,
                () = tokio::time::sleep_until(give_up) => None,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(err)) => return Err(anyhow::anyhow!(err).context("pulling messages failed")),
                None => return Ok(()),
            };
            // Whatever else has already arrived goes in the same batch; nothing waits for a
            // batch to fill.
            let mut batch = vec![message];
            let mut failed = None;
            while batch.len() < self.policy.batch_limit() {
                match messages.next().now_or_never() {
                    Some(Some(Ok(message))) => batch.push(message),
                    Some(Some(Err(err))) => {
                        failed = Some(err);
                        break;
                    }
                    Some(None) | None => break,
                }
            }
            match free.split(batch.len()) {
                Some(slots) => self.start(batch, slots, in_flight),
                // The server never sends more than asked for; if it did, let the messages go to
                // whoever has room.
                None => {
                    for message in &batch {
                        acknowledge(&self.group, message, AckKind::Nak(None)).await;
                    }
                }
            }
            if let Some(err) = failed {
                return Err(anyhow::anyhow!(err).context("pulling messages failed"));
            }
        }
    }

    /// Starts handling a batch of messages in a task of its own, which holds `slots` until the
    /// messages are settled. The handler is called here, so batches start in the order their
    /// messages arrived.
    fn start(self: &Arc<Self>, batch: Vec<jetstream::Message>, slots: OwnedSemaphorePermit, in_flight: &InFlight) {
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut handled = Vec::with_capacity(batch.len());
        let mut unreadable = Vec::new();
        for message in batch {
            let (attempt, stream_sequence) = match message.info() {
                Ok(info) => (u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX), info.stream_sequence),
                Err(err) => {
                    tracing::warn!(group = %self.group, error = %err, "JetStream message without delivery info");
                    (1, 0)
                }
            };
            match Event::decode(&message.payload) {
                Ok(event) => {
                    let is_last_attempt = attempt >= self.policy.max_attempts;
                    handled.push(Handled { message, event_id: event.id, attempt, is_last_attempt });
                    deliveries.push(Delivery { event, attempt, is_last_attempt });
                }
                Err(err) => {
                    // A message nobody can read is not ours to keep retrying.
                    tracing::error!(group = %self.group, seq = stream_sequence, error = %err, "undecodable message on the NATS bus; terminating it");
                    unreadable.push(message);
                }
            }
        }
        let handling = (!deliveries.is_empty()).then(|| (self.handler)(deliveries));
        let this = self.clone();
        in_flight.spawn(async move {
            for message in &unreadable {
                acknowledge(&this.group, message, AckKind::Term).await;
            }
            if let Some(handling) = handling {
                // While the handler runs, tell JetStream it is still being worked on, so
                // `ack_wait` can stay short (it only decides how soon a crashed consumer's
                // events come back).
                let timeout = this.policy.handler_timeout;
                let handling = tokio::time::timeout(timeout, handling);
                tokio::pin!(handling);
                let every = this.policy.progress_every();
                let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                let outcomes = loop {
                    tokio::select! {
                        done = &mut handling => break done.unwrap_or_else(|_| {
                            handled.iter().map(|_| Outcome::Retry(anyhow::anyhow!("handler timed out after {timeout:?}"))).collect()
                        }),
                        _ = progress.tick() => {
                            for handled in &handled {
                                acknowledge(&this.group, &handled.message, AckKind::Progress).await;
                            }
                        }
                    }
                };
                // Settled side by side: each confirmation is a round trip of its own.
                futures::future::join_all(handled.iter().zip(outcomes).map(|(handled, outcome)| this.settle(handled, outcome))).await;
            }
            drop(slots);
        });
    }

    async fn settle(&self, handled: &Handled, outcome: Outcome) {
        let Handled { message, event_id, attempt, is_last_attempt } = handled;
        match outcome {
            Outcome::Ack => {
                // Confirmed, so a lost ack shows up in the log rather than as a surprise redelivery.
                if let Err(err) = message.double_ack().await {
                    tracing::warn!(group = %self.group, %event_id, error = %err, "ack not confirmed by JetStream; the event may be redelivered");
                }
            }
            Outcome::Retry(err) if *is_last_attempt => {
                tracing::error!(group = %self.group, %event_id, attempt, error = %format!("{err:#}"), "delivery failed on its last attempt; it will not be redelivered");
                acknowledge(&self.group, message, AckKind::Term).await;
            }
            Outcome::Retry(err) => {
                let delay = self.policy.delay_after(*attempt);
                tracing::warn!(group = %self.group, %event_id, attempt, retry_in = ?delay, error = %format!("{err:#}"), "delivery failed; will redeliver");
                acknowledge(&self.group, message, AckKind::Nak(Some(delay))).await;
            }
        }
    }
}

/// A message being handled, with what settling it needs.
struct Handled {
    message: jetstream::Message,
    event_id: uuid::Uuid,
    attempt: u32,
    is_last_attempt: bool,
}

async fn acknowledge(group: &str, message: &jetstream::Message, kind: AckKind) {
    if let Err(err) = message.ack_with(kind).await {
        tracing::warn!(%group, error = %err, "cannot send ack to JetStream; the message comes back after ack_wait");
    }
}
