//! The event bus contract, run against both buses (the embedded SQLite one and NATS
//! JetStream), and the outbox relay and idempotent consumer that stand on it.
//!
//! Every test gets its own bus file or stream, subject prefix and consumer groups, so tests run
//! in parallel. Waiting is polling with a deadline, never a fixed sleep: "no more deliveries"
//! is the bus itself reporting it holds nothing more for the group ([`settled`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use platform::bus::embedded::EmbeddedBus;
use platform::bus::nats::NatsBus;
use platform::bus::{BusError, Delivery, DynHandler, Event, EventBus, Handler, Outcome, RetryPolicy, per_delivery};
use platform::consumer::{self, Consumer, EventHandler, HandleError};
use platform::db::{Db, Tx, now_millis};
use platform::outbox::{self, OutboxRelay, OutboxWaker};
use serde_json::json;
use sqlx::migrate::Migrator;
use testkit::{TempDir, eventually, unique_name};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const KIND: &str = "test:created";
const OTHER_KIND: &str = "test:other";
/// Deadline for anything the bus should do "soon".
const WAIT: Duration = Duration::from_secs(15);

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        backoff: [20, 50, 100].into_iter().map(Duration::from_millis).collect(),
        ack_wait: Duration::from_secs(2),
        handler_timeout: Duration::from_secs(30),
        max_in_flight: 16,
        max_batch: 8,
    }
}

/// Waits until the bus holds nothing more for a group (`pending` counts it): nothing waiting,
/// nothing handed out and unsettled, no retry due later. From then on no delivery to the group
/// can come without a new publish, so what its handlers saw is all they will see: the way these
/// tests say "nothing more arrives", without watching the clock for a while.
async fn settled<F, Fut>(pending: F, group: &str)
where
    F: Fn() -> Fut,
    Fut: Future<Output = u64>,
{
    eventually(WAIT, &format!("the bus to hold nothing more for {group}"), || {
        let pending = pending();
        async move { (pending.await == 0).then_some(()) }
    })
    .await;
}

/// What the embedded bus in `path` still holds for `group`: its rows in the bus's own
/// `deliveries` table, which a delivery leaves only when acknowledged or given up.
async fn embedded_pending(path: &Path, group: &str) -> u64 {
    use sqlx::Connection as _;
    let options = sqlx::sqlite::SqliteConnectOptions::new().filename(path).read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await.expect("cannot open the bus file");
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE grp = $1")
        .bind(group)
        .fetch_one(&mut conn)
        .await
        .expect("cannot count the group's deliveries");
    let _ = conn.close().await;
    count as u64
}

/// What JetStream still holds for `group`: its durable consumer's messages not delivered yet,
/// and those delivered and not acknowledged (or terminated). The bus names the consumer after
/// the group; the tests' group names are valid consumer names as they are.
async fn nats_pending(url: &str, stream: &str, group: &str) -> u64 {
    let client = async_nats::connect(url).await.expect("cannot connect to NATS");
    let stream = async_nats::jetstream::new(client).get_stream(stream).await.expect("the test's stream");
    let info = stream.consumer_info(group).await.expect("the group's consumer");
    info.num_pending + info.num_ack_pending as u64
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Embedded,
    Nats,
}

/// Where one test's bus lives; [`Setup::open`] can be called again to "restart" on it.
struct Setup {
    which: Which,
    dir: TempDir,
    stream: String,
    prefix: String,
    policy: RetryPolicy,
}

impl Setup {
    fn new(which: Which) -> Self {
        Self::with_policy(which, policy())
    }

    fn with_policy(which: Which, policy: RetryPolicy) -> Self {
        init_logs();
        Self { which, dir: TempDir::new(), stream: unique_name("bus"), prefix: unique_name("t"), policy }
    }

    async fn open(&self) -> Arc<dyn EventBus> {
        match self.which {
            Which::Embedded => Arc::new(
                EmbeddedBus::open(&self.dir.path().join("bus.db"), &self.prefix, self.policy.clone())
                    .await
                    .expect("cannot open the embedded bus"),
            ),
            Which::Nats => Arc::new(
                NatsBus::connect(&testkit::nats_url(), &self.stream, &self.prefix, self.policy.clone())
                    .await
                    .expect("cannot connect the NATS bus"),
            ),
        }
    }

    /// Waits until the bus holds nothing more for `group` (see [`settled`]).
    async fn settled(&self, group: &str) {
        match self.which {
            Which::Embedded => {
                let path = self.dir.path().join("bus.db");
                settled(|| embedded_pending(&path, group), group).await;
            }
            Which::Nats => {
                let url = testkit::nats_url();
                settled(|| nats_pending(&url, &self.stream, group), group).await;
            }
        }
    }

    /// What the bus holds for `group` right now (see [`settled`]).
    async fn pending(&self, group: &str) -> u64 {
        match self.which {
            Which::Embedded => embedded_pending(&self.dir.path().join("bus.db"), group).await,
            Which::Nats => nats_pending(&testkit::nats_url(), &self.stream, group).await,
        }
    }

    /// Removes the test's stream, so test runs do not pile streams up on the shared server.
    async fn finish(self) {
        if self.which == Which::Nats
            && let Ok(client) = async_nats::connect(testkit::nats_url()).await
        {
            let _ = async_nats::jetstream::new(client).delete_stream(&self.stream).await;
        }
    }
}

/// Every delivery a handler saw, in order.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Delivery>>>);

impl Seen {
    fn push(&self, delivery: Delivery) {
        self.0.lock().expect("poisoned").push(delivery);
    }

    fn all(&self) -> Vec<Delivery> {
        self.0.lock().expect("poisoned").clone()
    }

    fn ids(&self) -> Vec<Uuid> {
        self.all().iter().map(|delivery| delivery.event.id).collect()
    }

    fn count_of(&self, id: Uuid) -> usize {
        self.ids().into_iter().filter(|seen| *seen == id).count()
    }

    async fn wait_for(&self, count: usize, what: &str) -> Vec<Delivery> {
        eventually(WAIT, what, || {
            let all = self.all();
            async move { (all.len() >= count).then_some(all) }
        })
        .await
    }

    async fn wait_for_id(&self, id: Uuid, timeout: Duration, what: &str) {
        eventually(timeout, what, || {
            let found = self.count_of(id) > 0;
            async move { found.then_some(()) }
        })
        .await;
    }
}

fn handler<F, Fut>(seen: &Seen, outcome: F) -> DynHandler
where
    F: Fn(Delivery) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    let seen = seen.clone();
    per_delivery(move |delivery: Delivery| {
        seen.push(delivery.clone());
        outcome(delivery)
    })
}

fn acking(seen: &Seen) -> DynHandler {
    handler(seen, |_| async { Outcome::Ack })
}

struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Ends the subscriber at once, with its handlers, settling nothing: a process killed.
    fn kill(self) {
        self.task.abort();
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the subscriber did not stop promptly")
            .expect("the subscriber task panicked");
    }
}

async fn subscribe(bus: &dyn EventBus, group: &str, kinds: &[&str], handler: DynHandler) -> Running {
    let shutdown = CancellationToken::new();
    let task = bus.subscribe(group, kinds, handler, shutdown.clone()).await.expect("cannot subscribe");
    Running { shutdown, task }
}

async fn publish_all(bus: &dyn EventBus, events: &[Event]) {
    for event in events {
        bus.publish(event).await.expect("cannot publish");
    }
}

fn events(count: usize) -> Vec<Event> {
    (0..count).map(|n| Event::new(KIND, json!({ "n": n }))).collect()
}

fn attempts(deliveries: &[Delivery]) -> Vec<u32> {
    deliveries.iter().map(|delivery| delivery.attempt).collect()
}

macro_rules! on_both_buses {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Which::Embedded).await
                }
            )*
        }
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Which::Nats).await
                }
            )*
        }
    };
}

on_both_buses!(
    published_event_reaches_a_subscriber_of_its_kind,
    events_published_before_the_group_subscribed_are_delivered,
    failed_handler_gets_the_event_again,
    handler_exceeding_its_timeout_gets_the_event_again,
    handler_slower_than_ack_wait_keeps_its_event_by_reporting_progress,
    events_of_a_crashed_subscriber_come_back_after_ack_wait,
    last_attempt_is_flagged_and_not_followed_by_another,
    same_event_published_twice_is_delivered_once,
    subscribers_of_one_group_split_the_work,
    slow_handlers_within_ack_wait_do_not_cause_redeliveries,
    every_group_gets_every_event,
    restarted_bus_delivers_what_was_not_acknowledged,
    outbox_event_survives_a_crash_on_sqlite,
    outbox_event_survives_a_crash_on_postgres,
    outbox_relay_retries_while_the_bus_is_down,
    a_subscriber_handles_events_concurrently,
    a_subscriber_handles_at_most_max_in_flight_at_once,
    outbox_relay_sends_a_full_batch,
    outbox_relay_keeps_what_the_bus_did_not_acknowledge,
    waiting_events_are_handed_out_in_batches_in_order,
    outcomes_of_a_batch_are_settled_one_by_one,
    a_stopped_subscriber_lets_its_handlers_in_flight_settle_first,
);

async fn a_stopped_subscriber_lets_its_handlers_in_flight_settle_first(which: Which) {
    let setup = Setup::new(which);
    let group = unique_name("g");
    let bus = setup.open().await;
    let seen = Seen::default();
    let slow = handler(&seen, |_| async {
        // Still running when the subscriber is told to stop.
        tokio::time::sleep(Duration::from_millis(500)).await;
        Outcome::Ack
    });
    let running = subscribe(&*bus, &group, &[KIND], slow).await;
    publish_all(&*bus, &events(3)).await;
    seen.wait_for(3, "every handler to start").await;

    running.stop().await;
    // Settled by the time the subscriber's task ended, not later.
    assert_eq!(
        setup.pending(&group).await,
        0,
        "the handlers in flight settled their deliveries before the subscriber stopped"
    );
    assert_eq!(seen.all().len(), 3, "no delivery was made twice");
    setup.finish().await;
}

async fn published_event_reaches_a_subscriber_of_its_kind(which: Which) {
    let setup = Setup::new(which);
    let group = unique_name("g");
    let bus = setup.open().await;
    let seen = Seen::default();
    let running = subscribe(&*bus, &group, &[KIND], acking(&seen)).await;

    bus.publish(&Event::new(OTHER_KIND, json!({ "n": 0 }))).await.expect("cannot publish");
    let sent = Event::new(KIND, json!({ "n": 1, "name": "Concert" }));
    bus.publish(&sent).await.expect("cannot publish");

    seen.wait_for(1, "the published event").await;
    setup.settled(&group).await;
    let got = seen.all();
    assert_eq!(got.len(), 1, "only the subscribed kind is delivered, once: {got:?}");
    assert_eq!(got[0].event.id, sent.id);
    assert_eq!(got[0].event.kind, sent.kind);
    assert_eq!(got[0].event.data, sent.data);
    assert_eq!(got[0].event, sent);
    assert_eq!(got[0].attempt, 1);
    assert!(!got[0].is_last_attempt);

    running.stop().await;
    setup.finish().await;
}

async fn events_published_before_the_group_subscribed_are_delivered(which: Which) {
    let setup = Setup::new(which);
    let group = unique_name("g");
    let bus = setup.open().await;
    let sent = events(3);
    publish_all(&*bus, &sent).await;

    let seen = Seen::default();
    let running = subscribe(&*bus, &group, &[KIND], acking(&seen)).await;

    seen.wait_for(3, "the events published before subscribing").await;
    setup.settled(&group).await;
    let sent_ids: Vec<Uuid> = sent.iter().map(|event| event.id).collect();
    assert_eq!(seen.ids(), sent_ids, "each event once, in publish order");

    running.stop().await;
    setup.finish().await;
}

async fn failed_handler_gets_the_event_again(which: Which) {
    let setup = Setup::new(which);
    let group = unique_name("g");
    let bus = setup.open().await;
    let seen = Seen::default();
    let fail_first = handler(&seen, |delivery| async move {
        if delivery.attempt == 1 { Outcome::Retry(anyhow::anyhow!("not yet")) } else { Outcome::Ack }
    });
    let running = subscribe(&*bus, &group, &[KIND], fail_first).await;
    let sent = Event::new(KIND, json!({ "n": 1 }));
    bus.publish(&sent).await.expect("cannot publish");

    seen.wait_for(2, "the redelivery").await;
    setup.settled(&group).await;
    let got = seen.all();
    assert_eq!(attempts(&got), [1, 2], "delivered exactly twice: {got:?}");
    assert!(got.iter().all(|delivery| delivery.event == sent));

    running.stop().await;
    setup.finish().await;
}

async fn handler_exceeding_its_timeout_gets_the_event_again(which: Which) {
    let setup = Setup::with_policy(
        which,
        RetryPolicy { ack_wait: Duration::from_secs(5), handler_timeout: Duration::from_secs(1), ..policy() },
    );
    let group = unique_name("g");
    let bus = setup.open().await;
    let seen = Seen::default();
    let hang_first = handler(&seen, |delivery| async move {
        if delivery.attempt == 1 {
            std::future::pending::<()>().await;
        }
        Outcome::Ack
    });
    let running = subscribe(&*bus, &group, &[KIND], hang_first).await;
    let sent = Event::new(KIND, json!({ "n": 1 }));
    let published_at = Instant::now();
    bus.publish(&sent).await.expect("cannot publish");

    seen.wait_for(2, "the redelivery after the handler timed out").await;
    let redelivered_after = published_at.elapsed();
    setup.settled(&group).await;
    let got = seen.all();
    assert_eq!(attempts(&got), [1, 2], "delivered exactly twice: {got:?}");
    assert!(got.iter().all(|delivery| delivery.event.id == sent.id));
    assert!(
        redelivered_after >= Duration::from_millis(900),
        "redelivered before the handler's timeout ran out: {redelivered_after:?}"
    );

    running.stop().await;
    setup.finish().await;
}

async fn handler_slower_than_ack_wait_keeps_its_event_by_reporting_progress(which: Which) {
    // A Stripe call can take longer than ack_wait: the bus must not hand its event to anyone
    // else meanwhile.
    let setup = Setup::with_policy(which, RetryPolicy { ack_wait: Duration::from_secs(1), ..policy() });
    let bus = setup.open().await;
    let seen = Seen::default();
    let finished = Arc::new(AtomicUsize::new(0));
    let slow = {
        let finished = finished.clone();
        handler(&seen, move |_| {
            let finished = finished.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(2_500)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Outcome::Ack
            }
        })
    };
    let group = unique_name("g");
    publish_all(&*bus, &events(4)).await;
    let running = subscribe(&*bus, &group, &[KIND], slow).await;
    // The slow subscriber has room for all four and takes them; then a second one stands by, and
    // would get each event after 1 s if the first did not report progress.
    seen.wait_for(4, "the slow subscriber to take the events").await;
    let other = Seen::default();
    let running_other = subscribe(&*bus, &group, &[KIND], acking(&other)).await;
    eventually(WAIT, "the slow handlers to finish", || {
        let finished = finished.load(Ordering::SeqCst);
        async move { (finished >= 4).then_some(()) }
    })
    .await;
    setup.settled(&group).await;
    let handled: Vec<Delivery> = seen.all().into_iter().chain(other.all()).collect();
    assert_eq!(handled.len(), 4, "each event exactly once: {:?}", attempts(&handled));
    assert!(handled.iter().all(|delivery| delivery.attempt == 1), "no redeliveries: {:?}", attempts(&handled));

    running.stop().await;
    running_other.stop().await;
    setup.finish().await;
}

async fn events_of_a_crashed_subscriber_come_back_after_ack_wait(which: Which) {
    let setup = Setup::with_policy(which, RetryPolicy { ack_wait: Duration::from_secs(1), ..policy() });
    let bus = setup.open().await;
    let group = unique_name("g");
    let stuck = Seen::default();
    let hang = handler(&stuck, |_| std::future::pending::<Outcome>());
    let crashing = subscribe(&*bus, &group, &[KIND], hang).await;
    let sent = Event::new(KIND, json!({ "n": 1 }));
    bus.publish(&sent).await.expect("cannot publish");
    stuck.wait_for(1, "the first delivery").await;
    // The subscriber dies with its handler mid-way, as in `kill -9`: nothing is settled and no
    // more progress is reported.
    crashing.kill();
    let killed_at = Instant::now();
    let survivor = Seen::default();
    let running = subscribe(&*bus, &group, &[KIND], acking(&survivor)).await;
    survivor.wait_for(1, "the redelivery to the surviving subscriber").await;
    let after = killed_at.elapsed();
    println!("{which:?}: redelivered {after:?} after the subscriber died (ack_wait 1 s)");
    assert_eq!(survivor.all()[0].event.id, sent.id);
    assert_eq!(survivor.all()[0].attempt, 2);

    running.stop().await;
    setup.finish().await;
}

async fn last_attempt_is_flagged_and_not_followed_by_another(which: Which) {
    let setup = Setup::with_policy(which, RetryPolicy { max_attempts: 3, ..policy() });
    let group = unique_name("g");
    let bus = setup.open().await;
    let seen = Seen::default();
    let always_fail = handler(&seen, |_| async { Outcome::Retry(anyhow::anyhow!("never")) });
    let running = subscribe(&*bus, &group, &[KIND], always_fail).await;
    bus.publish(&Event::new(KIND, json!({ "n": 1 }))).await.expect("cannot publish");

    seen.wait_for(3, "three attempts").await;
    setup.settled(&group).await;
    let got = seen.all();
    assert_eq!(attempts(&got), [1, 2, 3], "no delivery after the last attempt: {got:?}");
    let last: Vec<bool> = got.iter().map(|delivery| delivery.is_last_attempt).collect();
    assert_eq!(last, [false, false, true]);

    running.stop().await;
    setup.finish().await;
}

async fn same_event_published_twice_is_delivered_once(which: Which) {
    let setup = Setup::new(which);
    let group = unique_name("g");
    let bus = setup.open().await;
    let seen = Seen::default();
    let running = subscribe(&*bus, &group, &[KIND], acking(&seen)).await;
    let twice = Event::new(KIND, json!({ "n": 1 }));
    let marker = Event::new(KIND, json!({ "n": 2 }));
    publish_all(&*bus, &[twice.clone(), twice.clone(), marker.clone()]).await;

    // Once the bus holds nothing more for the group, every copy that would come has come.
    setup.settled(&group).await;
    assert_eq!(seen.count_of(twice.id), 1, "deliveries: {:?}", seen.all());
    assert_eq!(seen.count_of(marker.id), 1, "deliveries: {:?}", seen.all());
    assert_eq!(seen.all().len(), 2, "deliveries: {:?}", seen.all());

    running.stop().await;
    setup.finish().await;
}

async fn subscribers_of_one_group_split_the_work(which: Which) {
    // Room for the rendezvous below without any handler running out of time.
    // One delivery in flight per subscriber: with more, one subscriber's free slots could
    // drain everything while its first handler waits at the rendezvous below.
    let setup =
        Setup::with_policy(which, RetryPolicy { ack_wait: Duration::from_secs(5), max_in_flight: 1, ..policy() });
    let bus = setup.open().await;
    let group = unique_name("g");
    // Each subscriber holds its first event until the other has one too (for at most a while),
    // so one subscriber cannot drain everything before the other has pulled.
    let rendezvous = Arc::new(tokio::sync::Barrier::new(2));
    let subscriber = |seen: &Seen| {
        let rendezvous = rendezvous.clone();
        let started = Arc::new(AtomicBool::new(false));
        handler(seen, move |_| {
            let rendezvous = rendezvous.clone();
            let first = !started.swap(true, Ordering::SeqCst);
            async move {
                if first {
                    let _ = tokio::time::timeout(Duration::from_millis(1_500), rendezvous.wait()).await;
                }
                Outcome::Ack
            }
        })
    };
    let (first, second) = (Seen::default(), Seen::default());
    let running_first = subscribe(&*bus, &group, &[KIND], subscriber(&first)).await;
    let running_second = subscribe(&*bus, &group, &[KIND], subscriber(&second)).await;

    let sent = events(40);
    publish_all(&*bus, &sent).await;
    eventually(WAIT, "all 40 events handled", || {
        let handled = first.all().len() + second.all().len();
        async move { (handled >= 40).then_some(()) }
    })
    .await;
    setup.settled(&group).await;

    let (first, second) = (first.all(), second.all());
    println!("{which:?}: first subscriber handled {}, second {}", first.len(), second.len());
    let handled: Vec<Uuid> = first.iter().chain(&second).map(|delivery| delivery.event.id).collect();
    assert_eq!(handled.len(), 40, "each event exactly once across the group");
    let handled: HashSet<Uuid> = handled.into_iter().collect();
    let sent: HashSet<Uuid> = sent.iter().map(|event| event.id).collect();
    assert_eq!(handled, sent);
    assert!(first.iter().chain(&second).all(|delivery| delivery.attempt == 1), "no redeliveries");
    assert!(!first.is_empty() && !second.is_empty(), "both subscribers got work");

    running_first.stop().await;
    running_second.stop().await;
    setup.finish().await;
}

async fn slow_handlers_within_ack_wait_do_not_cause_redeliveries(which: Which) {
    // Twenty events of 300 ms work each, two subscribers of two slots: 1.5 s of work per
    // subscriber (3 s if one gets everything), more than ack_wait, though every single handler
    // finishes well within it. ack_wait is a handler's lease, so no event may wait for a slot
    // after the bus handed it out, and none may start over at another subscriber.
    let setup =
        Setup::with_policy(which, RetryPolicy { ack_wait: Duration::from_secs(1), max_in_flight: 2, ..policy() });
    let bus = setup.open().await;
    let group = unique_name("g");
    let sent = events(20);
    publish_all(&*bus, &sent).await;
    let work = |seen: &Seen| {
        handler(seen, |_| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Outcome::Ack
        })
    };
    let (first, second) = (Seen::default(), Seen::default());
    let running_first = subscribe(&*bus, &group, &[KIND], work(&first)).await;
    let running_second = subscribe(&*bus, &group, &[KIND], work(&second)).await;

    eventually(WAIT, "all 20 events handled", || {
        let handled = first.all().len() + second.all().len();
        async move { (handled >= 20).then_some(()) }
    })
    .await;
    setup.settled(&group).await;
    let handled: Vec<Delivery> = first.all().into_iter().chain(second.all()).collect();
    println!("{which:?}: first subscriber handled {}, second {}", first.all().len(), second.all().len());
    assert_eq!(handled.len(), 20, "each event exactly once: {:?}", attempts(&handled));
    assert!(handled.iter().all(|delivery| delivery.attempt == 1), "no redeliveries: {:?}", attempts(&handled));

    running_first.stop().await;
    running_second.stop().await;
    setup.finish().await;
}

async fn every_group_gets_every_event(which: Which) {
    let setup = Setup::new(which);
    let bus = setup.open().await;
    let (orders_group, payments_group) = (unique_name("orders"), unique_name("payments"));
    let (orders, payments) = (Seen::default(), Seen::default());
    let running_orders = subscribe(&*bus, &orders_group, &[KIND], acking(&orders)).await;
    let running_payments = subscribe(&*bus, &payments_group, &[KIND], acking(&payments)).await;
    let sent = events(5);
    publish_all(&*bus, &sent).await;

    orders.wait_for(5, "the first group's events").await;
    payments.wait_for(5, "the second group's events").await;
    setup.settled(&orders_group).await;
    setup.settled(&payments_group).await;
    // Each group gets each event once. Not necessarily in publish order: a subscriber runs each
    // batch it is handed in a task of its own, and events published one by one may come in
    // several batches.
    let sorted = |mut ids: Vec<Uuid>| {
        ids.sort();
        ids
    };
    let sent_ids = sorted(sent.iter().map(|event| event.id).collect());
    assert_eq!(sorted(orders.ids()), sent_ids);
    assert_eq!(sorted(payments.ids()), sent_ids);

    running_orders.stop().await;
    running_payments.stop().await;
    setup.finish().await;
}

async fn restarted_bus_delivers_what_was_not_acknowledged(which: Which) {
    let setup = Setup::new(which);
    let group = unique_name("g");
    let acknowledged = events(2);
    let pending = events(2);
    {
        let bus = setup.open().await;
        let seen = Seen::default();
        let running = subscribe(&*bus, &group, &[KIND], acking(&seen)).await;
        publish_all(&*bus, &acknowledged).await;
        seen.wait_for(2, "the events before the restart").await;
        running.stop().await;
        // Stored while the group has no running subscriber; then the process "stops".
        publish_all(&*bus, &pending).await;
    }

    let bus = setup.open().await;
    let seen = Seen::default();
    let running = subscribe(&*bus, &group, &[KIND], acking(&seen)).await;
    seen.wait_for(2, "the events published while stopped").await;
    setup.settled(&group).await;
    let pending_ids: Vec<Uuid> = pending.iter().map(|event| event.id).collect();
    assert_eq!(seen.ids(), pending_ids, "only what was not acknowledged comes after the restart");

    running.stop().await;
    setup.finish().await;
}

async fn outbox_len(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(&db.pool).await.expect("cannot count the outbox")
}

async fn connect_db(url: &str, service: &str) -> Db {
    Db::connect(url, service, &Migrator::DEFAULT).await.expect("cannot connect the database")
}

fn sqlite_url(dir: &Path) -> String {
    platform::db::database_url(None, dir, "service")
}

async fn outbox_event_survives_a_crash_on_sqlite(which: Which) {
    let dir = TempDir::new();
    outbox_event_survives_a_crash(which, &sqlite_url(dir.path())).await;
}

async fn outbox_event_survives_a_crash_on_postgres(which: Which) {
    outbox_event_survives_a_crash(which, &testkit::fresh_postgres_url().await).await;
}

async fn outbox_event_survives_a_crash(which: Which, db_url: &str) {
    let setup = Setup::new(which);
    let group = unique_name("g");
    let event = Event::new(KIND, json!({ "n": 1 }));
    {
        let db = connect_db(db_url, "outbox_test").await;
        let mut tx = db.begin().await.expect("cannot begin");
        outbox::enqueue(&mut tx, &event).await.expect("cannot enqueue");
        tx.commit().await.expect("cannot commit");
        // The process dies here: no relay ever ran.
    }

    let db = connect_db(db_url, "outbox_test").await;
    assert_eq!(outbox_len(&db).await, 1, "the committed event waits in the outbox");
    let bus = setup.open().await;
    let seen = Seen::default();
    let running = subscribe(&*bus, &group, &[KIND], acking(&seen)).await;
    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::new(db.clone(), bus.clone()).spawn(OutboxWaker::default(), shutdown.clone());

    let got = seen.wait_for(1, "the outbox event on the bus").await;
    assert_eq!(got[0].event, event);
    eventually(WAIT, "an empty outbox", || {
        let db = db.clone();
        async move { (outbox_len(&db).await == 0).then_some(()) }
    })
    .await;
    setup.settled(&group).await;
    assert_eq!(seen.all().len(), 1);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), relay).await.expect("relay did not stop").expect("relay panicked");
    running.stop().await;
    setup.finish().await;
}

/// A bus that refuses publishes while `down`: the relay's view of an outage.
struct Switchable {
    inner: Arc<dyn EventBus>,
    down: AtomicBool,
    refused: AtomicUsize,
}

#[async_trait::async_trait]
impl EventBus for Switchable {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(BusError::Unavailable(anyhow::anyhow!("down for the test")));
        }
        self.inner.publish(event).await
    }

    async fn subscribe(
        &self,
        group: &str,
        kinds: &[&str],
        handler: DynHandler,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, BusError> {
        self.inner.subscribe(group, kinds, handler, shutdown).await
    }

    async fn check(&self) -> Result<(), BusError> {
        self.inner.check().await
    }

    fn retry_policy(&self) -> &RetryPolicy {
        self.inner.retry_policy()
    }
}

async fn outbox_relay_retries_while_the_bus_is_down(which: Which) {
    let setup = Setup::new(which);
    let dir = TempDir::new();
    let db = connect_db(&sqlite_url(dir.path()), "outbox_test").await;
    let bus =
        Arc::new(Switchable { inner: setup.open().await, down: AtomicBool::new(true), refused: AtomicUsize::new(0) });
    let seen = Seen::default();
    let running = subscribe(&*bus, &unique_name("g"), &[KIND], acking(&seen)).await;
    let waker = OutboxWaker::default();
    let shutdown = CancellationToken::new();
    let relay = OutboxRelay::new(db.clone(), bus.clone()).spawn(waker.clone(), shutdown.clone());

    let event = Event::new(KIND, json!({ "n": 1 }));
    let mut tx = db.begin().await.expect("cannot begin");
    outbox::enqueue(&mut tx, &event).await.expect("cannot enqueue");
    tx.commit().await.expect("cannot commit");
    waker.wake();

    eventually(WAIT, "the relay to try twice", || {
        let refused = bus.refused.load(Ordering::SeqCst);
        async move { (refused >= 2).then_some(()) }
    })
    .await;
    assert_eq!(outbox_len(&db).await, 1, "a refused event stays in the outbox");
    assert!(seen.all().is_empty());

    bus.down.store(false, Ordering::SeqCst);
    let got = seen.wait_for(1, "the event once the bus is back").await;
    assert_eq!(got[0].event, event);
    eventually(WAIT, "an empty outbox", || {
        let db = db.clone();
        async move { (outbox_len(&db).await == 0).then_some(()) }
    })
    .await;

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), relay).await.expect("relay did not stop").expect("relay panicked");
    running.stop().await;
    setup.finish().await;
}

async fn a_subscriber_handles_events_concurrently(which: Which) {
    // Eight handlers that each wait for all eight: they finish only if they overlap.
    let setup =
        Setup::with_policy(which, RetryPolicy { ack_wait: Duration::from_secs(10), max_in_flight: 8, ..policy() });
    let group = unique_name("g");
    let bus = setup.open().await;
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let met = Arc::new(AtomicUsize::new(0));
    let seen = Seen::default();
    let rendezvous = {
        let (barrier, met) = (barrier.clone(), met.clone());
        handler(&seen, move |_| {
            let (barrier, met) = (barrier.clone(), met.clone());
            async move {
                if tokio::time::timeout(Duration::from_secs(5), barrier.wait()).await.is_ok() {
                    met.fetch_add(1, Ordering::SeqCst);
                }
                Outcome::Ack
            }
        })
    };
    let running = subscribe(&*bus, &group, &[KIND], rendezvous).await;
    let started = Instant::now();
    publish_all(&*bus, &events(8)).await;

    eventually(WAIT, "all eight handlers past the barrier", || {
        let met = met.load(Ordering::SeqCst);
        async move { (met == 8).then_some(()) }
    })
    .await;
    println!("{which:?}: eight overlapping handlers done after {:?}", started.elapsed());
    setup.settled(&group).await;
    let got = seen.all();
    assert_eq!(got.len(), 8, "each event once: {:?}", attempts(&got));
    assert!(got.iter().all(|delivery| delivery.attempt == 1), "no redeliveries: {:?}", attempts(&got));

    running.stop().await;
    setup.finish().await;
}

async fn a_subscriber_handles_at_most_max_in_flight_at_once(which: Which) {
    let setup = Setup::with_policy(which, RetryPolicy { max_in_flight: 3, ..policy() });
    let group = unique_name("g");
    let bus = setup.open().await;
    let (running_now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let seen = Seen::default();
    let counting = {
        let (running_now, most) = (running_now.clone(), most.clone());
        handler(&seen, move |_| {
            let (running_now, most) = (running_now.clone(), most.clone());
            async move {
                let now = running_now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                running_now.fetch_sub(1, Ordering::SeqCst);
                Outcome::Ack
            }
        })
    };
    let running = subscribe(&*bus, &group, &[KIND], counting).await;
    publish_all(&*bus, &events(12)).await;

    seen.wait_for(12, "all 12 events").await;
    setup.settled(&group).await;
    let got = seen.all();
    assert_eq!(got.len(), 12, "each event once: {:?}", attempts(&got));
    let most = most.load(Ordering::SeqCst);
    assert!((2..=3).contains(&most), "handlers at once: {most}, limit 3");

    running.stop().await;
    setup.finish().await;
}

async fn enqueue_all(db: &Db, events: &[Event]) {
    let mut tx = db.begin().await.expect("cannot begin");
    for event in events {
        outbox::enqueue(&mut tx, event).await.expect("cannot enqueue");
    }
    tx.commit().await.expect("cannot commit");
}

async fn outbox_relay_sends_a_full_batch(which: Which) {
    let setup = Setup::new(which);
    let group = unique_name("g");
    let dir = TempDir::new();
    let db = connect_db(&sqlite_url(dir.path()), "outbox_test").await;
    let bus = setup.open().await;
    let seen = Seen::default();
    let running = subscribe(&*bus, &group, &[KIND], acking(&seen)).await;
    let sent = events(100);
    enqueue_all(&db, &sent).await;

    let relay = OutboxRelay::new(db.clone(), bus.clone());
    assert_eq!(relay.relay_batch().await.expect("cannot relay"), 100, "one batch takes all 100");
    assert_eq!(outbox_len(&db).await, 0, "every acknowledged event left the outbox");
    assert_eq!(relay.relay_batch().await.expect("cannot relay"), 0);

    seen.wait_for(100, "the 100 relayed events").await;
    setup.settled(&group).await;
    let got = seen.ids();
    assert_eq!(got.len(), 100, "each event once");
    let got: HashSet<Uuid> = got.into_iter().collect();
    assert_eq!(got, sent.iter().map(|event| event.id).collect::<HashSet<_>>());

    running.stop().await;
    setup.finish().await;
}

/// A bus that acknowledges only the first `acknowledges` events of a batch.
struct Partial {
    inner: Arc<dyn EventBus>,
    acknowledges: usize,
}

#[async_trait::async_trait]
impl EventBus for Partial {
    async fn publish(&self, event: &Event) -> Result<(), BusError> {
        self.inner.publish(event).await
    }

    async fn publish_batch(&self, events: &[Event]) -> Result<usize, BusError> {
        let take = self.acknowledges.min(events.len());
        self.inner.publish_batch(&events[..take]).await
    }

    async fn subscribe(
        &self,
        group: &str,
        kinds: &[&str],
        handler: DynHandler,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, BusError> {
        self.inner.subscribe(group, kinds, handler, shutdown).await
    }

    async fn check(&self) -> Result<(), BusError> {
        self.inner.check().await
    }

    fn retry_policy(&self) -> &RetryPolicy {
        self.inner.retry_policy()
    }
}

async fn outbox_relay_keeps_what_the_bus_did_not_acknowledge(which: Which) {
    let setup = Setup::new(which);
    let group = unique_name("g");
    let dir = TempDir::new();
    let db = connect_db(&sqlite_url(dir.path()), "outbox_test").await;
    let inner = setup.open().await;
    let seen = Seen::default();
    let running = subscribe(&*inner, &group, &[KIND], acking(&seen)).await;
    let sent = events(10);
    enqueue_all(&db, &sent).await;

    let partial = Arc::new(Partial { inner: inner.clone(), acknowledges: 4 });
    let relay = OutboxRelay::new(db.clone(), partial);
    assert!(relay.relay_batch().await.is_err(), "a partly acknowledged batch is a failure");
    let left: Vec<String> = sqlx::query_scalar("SELECT id FROM outbox WHERE locked_until = 0 ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .expect("cannot read the outbox");
    let unacknowledged: Vec<String> = sent[4..].iter().map(|event| event.id.to_string()).collect();
    assert_eq!(left, unacknowledged, "the acknowledged rows are gone, the rest claimable again at once");
    assert_eq!(outbox_len(&db).await, 6);

    let relay = OutboxRelay::new(db.clone(), inner.clone());
    assert_eq!(relay.relay_batch().await.expect("cannot relay"), 6);
    assert_eq!(outbox_len(&db).await, 0);
    seen.wait_for(10, "all ten events").await;
    setup.settled(&group).await;
    assert_eq!(seen.ids().len(), 10, "each event once");

    running.stop().await;
    setup.finish().await;
}

/// Records the batches it is given, acknowledging every delivery except those `retry` names.
#[derive(Clone, Default)]
struct Batches {
    seen: Arc<std::sync::Mutex<Vec<Vec<Delivery>>>>,
    retry_once: Arc<std::sync::Mutex<Vec<Uuid>>>,
}

impl Batches {
    fn all(&self) -> Vec<Vec<Delivery>> {
        self.seen.lock().expect("poisoned").clone()
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.all().into_iter().flatten().collect()
    }

    async fn wait_for(&self, deliveries: usize, what: &str) {
        testkit::eventually(Duration::from_secs(20), what, || {
            let enough = self.deliveries().len() >= deliveries;
            async move { enough.then_some(()) }
        })
        .await;
    }
}

impl Handler for Batches {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        self.handle_batch(vec![delivery]).await.pop().expect("one outcome")
    }

    async fn handle_batch(&self, deliveries: Vec<Delivery>) -> Vec<Outcome> {
        self.seen.lock().expect("poisoned").push(deliveries.clone());
        let mut retry_once = self.retry_once.lock().expect("poisoned");
        deliveries
            .iter()
            .map(|delivery| {
                if let Some(at) = retry_once.iter().position(|id| *id == delivery.event.id) {
                    retry_once.remove(at);
                    Outcome::Retry(anyhow::anyhow!("not yet"))
                } else {
                    Outcome::Ack
                }
            })
            .collect()
    }
}

async fn waiting_events_are_handed_out_in_batches_in_order(which: Which) {
    let setup = Setup::new(which);
    let group = unique_name("g");
    let bus = setup.open().await;
    let sent = events(20);
    publish_all(&*bus, &sent).await;

    let batches = Batches::default();
    let running = subscribe(&*bus, &group, &[KIND], platform::bus::dyn_handler(Arc::new(batches.clone()))).await;
    batches.wait_for(20, "the twenty waiting events").await;
    setup.settled(&group).await;

    let all = batches.all();
    let sizes: Vec<usize> = all.iter().map(Vec::len).collect();
    assert!(sizes.iter().all(|size| (1..=8).contains(size)), "batches of one to max_batch (8): {sizes:?}");
    assert!(sizes.iter().any(|size| *size > 1), "events already waiting are handed out together: {sizes:?}");
    let got: Vec<Uuid> = batches.deliveries().iter().map(|delivery| delivery.event.id).collect();
    let mut unique = got.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 20, "every event, once: {got:?}");
    for batch in &all {
        let order: Vec<usize> =
            batch.iter().map(|d| sent.iter().position(|e| e.id == d.event.id).expect("a sent event")).collect();
        assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "a batch keeps the publish order: {order:?}");
    }

    running.stop().await;
    setup.finish().await;
}

async fn outcomes_of_a_batch_are_settled_one_by_one(which: Which) {
    let setup = Setup::new(which);
    let group = unique_name("g");
    let bus = setup.open().await;
    let sent = events(6);
    publish_all(&*bus, &sent).await;

    let batches = Batches::default();
    batches.retry_once.lock().expect("poisoned").push(sent[2].id);
    let running = subscribe(&*bus, &group, &[KIND], platform::bus::dyn_handler(Arc::new(batches.clone()))).await;
    batches.wait_for(7, "six events and one redelivery").await;
    setup.settled(&group).await;

    let got = batches.deliveries();
    assert_eq!(got.len(), 7, "the acknowledged events once, the retried one twice: {got:?}");
    let again: Vec<&Delivery> = got.iter().filter(|delivery| delivery.event.id == sent[2].id).collect();
    assert_eq!(attempts(&again.into_iter().cloned().collect::<Vec<_>>()), [1, 2], "only the retried event comes back");

    running.stop().await;
    setup.finish().await;
}

/// A payload the test handler understands.
#[derive(serde::Deserialize)]
struct Numbered {
    n: i64,
}

/// Records each event it applies; a negative `n` means "not yet".
struct Recording;

impl EventHandler for Recording {
    async fn apply(&self, tx: &mut Tx, event: &Event) -> Result<(), HandleError> {
        let Numbered { n } = consumer::payload(event)?;
        if n < 0 {
            return Err(HandleError::Retry(anyhow::anyhow!("not yet")));
        }
        sqlx::query("INSERT INTO applied (event_id, n) VALUES ($1, $2)")
            .bind(event.id.to_string())
            .bind(n)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

async fn count(db: &Db, sql: &str, id: Uuid) -> i64 {
    sqlx::query_scalar(sql).bind(id.to_string()).fetch_one(&db.pool).await.expect("cannot count")
}

async fn consumer_applies_once_and_parks_what_it_cannot_apply(db_url: &str) {
    init_logs();
    let db = connect_db(db_url, "consumer_test").await;
    // No unique key on purpose: only the consumer's bookkeeping keeps a second row out.
    sqlx::query("CREATE TABLE applied (event_id TEXT NOT NULL, n BIGINT NOT NULL)")
        .execute(&db.pool)
        .await
        .expect("cannot create the test table");
    let consumer = Consumer::new("consumer_test", db.clone(), Recording, None);
    let applied = "SELECT COUNT(*) FROM applied WHERE event_id = $1";
    let processed = "SELECT COUNT(*) FROM processed_events WHERE event_id = $1";
    let parked = "SELECT COUNT(*) FROM parked_events WHERE event_id = $1";

    let event = Event::new(KIND, json!({ "n": 7 }));
    let delivery = Delivery { event: event.clone(), attempt: 1, is_last_attempt: false };
    assert!(matches!(consumer.handle(delivery.clone()).await, Outcome::Ack));
    assert!(matches!(consumer.handle(Delivery { attempt: 2, ..delivery }).await, Outcome::Ack));
    assert_eq!(count(&db, applied, event.id).await, 1, "a redelivered event is applied once");
    assert_eq!(count(&db, processed, event.id).await, 1);

    let malformed = Event::new(KIND, json!({ "unexpected": true }));
    let outcome = consumer.handle(Delivery { event: malformed.clone(), attempt: 1, is_last_attempt: false }).await;
    assert!(matches!(outcome, Outcome::Ack), "a malformed event is acknowledged: {outcome:?}");
    assert_eq!(count(&db, applied, malformed.id).await, 0);
    assert_eq!(count(&db, parked, malformed.id).await, 1, "a malformed event is parked");
    let reason: String = sqlx::query_scalar("SELECT reason FROM parked_events WHERE event_id = $1")
        .bind(malformed.id.to_string())
        .fetch_one(&db.pool)
        .await
        .expect("cannot read the parked event");
    assert!(reason.contains("payload"), "reason: {reason}");

    let not_yet = Event::new(KIND, json!({ "n": -1 }));
    let outcome = consumer.handle(Delivery { event: not_yet.clone(), attempt: 1, is_last_attempt: false }).await;
    assert!(matches!(outcome, Outcome::Retry(_)), "not yet means retry: {outcome:?}");
    assert_eq!(count(&db, processed, not_yet.id).await, 0, "a failed attempt leaves no trace");
    assert_eq!(count(&db, parked, not_yet.id).await, 0);
    let outcome = consumer.handle(Delivery { event: not_yet.clone(), attempt: 5, is_last_attempt: true }).await;
    assert!(matches!(outcome, Outcome::Ack), "the last attempt is acknowledged: {outcome:?}");
    assert_eq!(count(&db, parked, not_yet.id).await, 1, "exhausted retries park the event");
}

#[tokio::test]
async fn consumer_applies_once_and_parks_what_it_cannot_apply_on_sqlite() {
    let dir = TempDir::new();
    consumer_applies_once_and_parks_what_it_cannot_apply(&sqlite_url(dir.path())).await;
}

#[tokio::test]
async fn consumer_applies_once_and_parks_what_it_cannot_apply_on_postgres() {
    consumer_applies_once_and_parks_what_it_cannot_apply(&testkit::fresh_postgres_url().await).await;
}

/// [`Recording`], also noting how many applied rows another connection saw at that moment: the
/// rows of events applied earlier in the same transaction are not among them.
struct RecordingWithOutsideView {
    db: Db,
}

impl EventHandler for RecordingWithOutsideView {
    async fn apply(&self, tx: &mut Tx, event: &Event) -> Result<(), HandleError> {
        let Numbered { n } = consumer::payload(event)?;
        if n < 0 {
            return Err(HandleError::Retry(anyhow::anyhow!("not yet")));
        }
        let outside: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM applied").fetch_one(self.db.reader()).await?;
        sqlx::query("INSERT INTO applied (event_id, n, seen_outside) VALUES ($1, $2, $3)")
            .bind(event.id.to_string())
            .bind(n)
            .bind(outside)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

async fn consumer_applies_a_batch_together_and_its_events_alone_when_one_must_wait(db_url: &str) {
    init_logs();
    let db = connect_db(db_url, "batch_test").await;
    sqlx::query("CREATE TABLE applied (event_id TEXT NOT NULL, n BIGINT NOT NULL, seen_outside BIGINT NOT NULL)")
        .execute(&db.pool)
        .await
        .expect("cannot create the test table");
    let consumer = Consumer::new("batch_test", db.clone(), RecordingWithOutsideView { db: db.clone() }, None);
    let applied = "SELECT COUNT(*) FROM applied WHERE event_id = $1";
    let processed = "SELECT COUNT(*) FROM processed_events WHERE event_id = $1";
    let deliver = |events: &[Event]| -> Vec<Delivery> {
        events.iter().map(|event| Delivery { event: event.clone(), attempt: 1, is_last_attempt: false }).collect()
    };

    // Three good events, the second one delivered twice in the same batch.
    let good = events(3);
    let batch = deliver(&[good[0].clone(), good[1].clone(), good[1].clone(), good[2].clone()]);
    let outcomes = consumer.handle_batch(batch).await;
    assert_eq!(outcomes.len(), 4, "one outcome per delivery");
    assert!(outcomes.iter().all(|outcome| matches!(outcome, Outcome::Ack)), "{outcomes:?}");
    for event in &good {
        assert_eq!(count(&db, applied, event.id).await, 1, "each event of the batch applied once");
        assert_eq!(count(&db, processed, event.id).await, 1);
    }
    let seen_outside: Vec<i64> = sqlx::query_scalar("SELECT seen_outside FROM applied ORDER BY n")
        .fetch_all(&db.pool)
        .await
        .expect("cannot read the test table");
    assert_eq!(seen_outside, [0, 0, 0], "the batch's events were applied in one transaction, committed together");

    // One event of the batch must wait: the others are applied, it alone comes back.
    let before = Event::new(KIND, json!({ "n": 10 }));
    let not_yet = Event::new(KIND, json!({ "n": -1 }));
    let after = Event::new(KIND, json!({ "n": 11 }));
    let outcomes = consumer.handle_batch(deliver(&[before.clone(), not_yet.clone(), after.clone()])).await;
    assert!(matches!(outcomes[0], Outcome::Ack), "{outcomes:?}");
    assert!(matches!(outcomes[1], Outcome::Retry(_)), "the event that must wait is retried: {outcomes:?}");
    assert!(matches!(outcomes[2], Outcome::Ack), "{outcomes:?}");
    assert_eq!(count(&db, applied, before.id).await, 1);
    assert_eq!(count(&db, applied, after.id).await, 1, "an event after the failing one is not held back");
    assert_eq!(count(&db, processed, not_yet.id).await, 0, "the failed event leaves no trace");

    // Redelivered together with events already applied: nothing is applied twice.
    let outcomes = consumer.handle_batch(deliver(&[before.clone(), good[0].clone(), after.clone()])).await;
    assert!(outcomes.iter().all(|outcome| matches!(outcome, Outcome::Ack)), "{outcomes:?}");
    for event in [&before, &good[0], &after] {
        assert_eq!(count(&db, applied, event.id).await, 1, "a redelivered event is applied once");
    }
}

#[tokio::test]
async fn consumer_applies_a_batch_together_and_its_events_alone_when_one_must_wait_on_sqlite() {
    let dir = TempDir::new();
    consumer_applies_a_batch_together_and_its_events_alone_when_one_must_wait(&sqlite_url(dir.path())).await;
}

#[tokio::test]
async fn consumer_applies_a_batch_together_and_its_events_alone_when_one_must_wait_on_postgres() {
    consumer_applies_a_batch_together_and_its_events_alone_when_one_must_wait(&testkit::fresh_postgres_url().await)
        .await;
}

/// The nats-server binary `scripts/test-deps` installs, or `NATS_SERVER_BIN`.
fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        return path.into();
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/nats-server");
    assert!(path.exists(), "no nats-server at {}: run scripts/test-deps or set NATS_SERVER_BIN", path.display());
    path
}

/// A NATS server of this test's own, so the test can take it down.
struct OwnNats {
    port: u16,
    store: TempDir,
    process: Option<tokio::process::Child>,
}

impl OwnNats {
    fn new() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("cannot find a free port")
            .port();
        Self { port, store: TempDir::new(), process: None }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) {
        let process = tokio::process::Command::new(nats_server_binary())
            .arg("-js")
            .arg("-sd")
            .arg(self.store.path())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start nats-server");
        self.process = Some(process);
    }

    async fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await.expect("cannot kill nats-server");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bus_recovers_when_the_server_comes_back() {
    nats_bus_recovers_from_an_outage(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_bus_recovers_when_the_server_comes_back_without_its_data() {
    nats_bus_recovers_from_an_outage(true).await;
}

/// Kills the server, then starts it again on the same port; with `wipe`, on an empty store,
/// as after losing the server's disk: the stream and the consumer must come back by themselves.
async fn nats_bus_recovers_from_an_outage(wipe: bool) {
    init_logs();
    let recovery = Duration::from_secs(40);
    let mut server = OwnNats::new();
    server.start();
    let url = server.url();
    let bus = eventually(WAIT, "the new server to accept the bus", || {
        let url = url.clone();
        async move { NatsBus::connect(&url, "outage", "outage", policy()).await.ok() }
    })
    .await;
    let seen = Seen::default();
    let running = subscribe(&bus, "outage-group", &[KIND], acking(&seen)).await;
    let before = Event::new(KIND, json!({ "n": 1 }));
    bus.publish(&before).await.expect("cannot publish");
    seen.wait_for_id(before.id, WAIT, "the event before the outage").await;
    bus.check().await.expect("the bus is ready while the server runs");

    server.kill().await;
    eventually(WAIT, "check to notice the outage", || {
        let bus = &bus;
        async move {
            let started = Instant::now();
            let checked = bus.check().await;
            assert!(started.elapsed() < Duration::from_secs(3), "check took {:?}", started.elapsed());
            checked.is_err().then_some(())
        }
    })
    .await;
    // The publish fails; the outbox would keep the event and send it again later.
    let during = Event::new(KIND, json!({ "n": 2 }));
    let started = Instant::now();
    let refused = bus.publish(&during).await;
    println!("publish without a server: {refused:?} after {:?}", started.elapsed());
    assert!(refused.is_err(), "publishing without a server fails");

    if wipe {
        server.store = TempDir::new();
    }
    server.start();
    eventually(recovery, "the bus to be ready again", || {
        let bus = &bus;
        async move { bus.check().await.ok() }
    })
    .await;
    let after = Event::new(KIND, json!({ "n": 3 }));
    for event in [&during, &after] {
        let bus = &bus;
        eventually(WAIT, "a publish to succeed again", || async move { bus.publish(event).await.ok() }).await;
    }
    seen.wait_for_id(after.id, recovery, "the subscriber to get events again").await;
    seen.wait_for_id(during.id, WAIT, "the event re-sent after the outage").await;
    settled(|| nats_pending(&url, "outage", "outage-group"), "outage-group").await;
    // A killed server may forget acks it confirmed shortly before (JetStream writes consumer
    // state lazily), so the event from before the crash may come again: at least once.
    assert!(seen.count_of(before.id) >= 1);
    println!(
        "wipe {wipe}: deliveries {:?}",
        seen.all().iter().map(|d| (d.event.data.clone(), d.attempt)).collect::<Vec<_>>()
    );
    for event in [&during, &after] {
        assert_eq!(seen.count_of(event.id), 1, "deliveries: {:?}", seen.all());
    }

    running.stop().await;
    server.kill().await;
}

/// The embedded bus is one process's: a second opener of the same data dir is refused (after a
/// short wait for a restarting owner), and the next owner releases the leases a dead one held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_bus_has_one_owner_and_its_successor_releases_dead_leases() {
    let setup = Setup::with_policy(Which::Embedded, RetryPolicy { ack_wait: Duration::from_secs(60), ..policy() });
    let bus = setup.open().await;
    let path = setup.dir.path().join("bus.db");
    let second = EmbeddedBus::open(&path, &setup.prefix, policy()).await;
    let err = second.err().expect("a second owner is refused").to_string();
    assert!(err.contains("in use by another process"), "{err}");

    // A handler holds an event under a 60 s lease when its process dies.
    let group = unique_name("g");
    let stuck = Seen::default();
    let crashing = subscribe(&*bus, &group, &[KIND], handler(&stuck, |_| std::future::pending::<Outcome>())).await;
    let sent = Event::new(KIND, json!({ "n": 1 }));
    bus.publish(&sent).await.expect("cannot publish");
    stuck.wait_for(1, "the first delivery").await;
    crashing.kill();
    drop(bus);

    // The next process gets the event at once, not after the lease.
    let reopened = setup.open().await;
    let survivor = Seen::default();
    let started = Instant::now();
    let running = subscribe(&*reopened, &group, &[KIND], acking(&survivor)).await;
    survivor.wait_for(1, "the redelivery after the restart").await;
    assert!(started.elapsed() < Duration::from_secs(30), "waited for the dead lease: {:?}", started.elapsed());
    assert_eq!(survivor.all()[0].event.id, sent.id);
    running.stop().await;
}

/// Retention on the embedded bus deletes the messages every group has settled once they are
/// old, and keeps the ones a group still has to handle, which are then delivered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_retention_deletes_settled_messages_only() {
    let setup = Setup::new(Which::Embedded);
    let bus =
        Arc::new(EmbeddedBus::open(&setup.dir.path().join("bus.db"), &setup.prefix, policy()).await.expect("opens"));
    let retention = bus.retention(Duration::from_secs(3_600));
    let group = unique_name("g");
    let seen = Seen::default();
    let running = subscribe(&*bus, &group, &[KIND], acking(&seen)).await;
    let settled = Event::new(KIND, json!({ "n": 1 }));
    bus.publish(&settled).await.expect("cannot publish");
    seen.wait_for(1, "the first event").await;
    running.stop().await;
    let pending = Event::new(KIND, json!({ "n": 2 }));
    bus.publish(&pending).await.expect("cannot publish");

    // Nothing is old yet.
    assert_eq!(retention.sweep_before(now_millis() - 3_600_000).await.unwrap(), 0);
    // Past the cutoff, only the settled one goes (once its acknowledgement is recorded).
    eventually(WAIT, "the settled message to be deleted", || {
        let retention = &retention;
        async move { (retention.sweep_before(now_millis() + 1_000).await.unwrap() == 1).then_some(()) }
    })
    .await;
    assert_eq!(retention.sweep_before(now_millis() + 1_000).await.unwrap(), 0);

    let later = Seen::default();
    let running = subscribe(&*bus, &group, &[KIND], acking(&later)).await;
    later.wait_for_id(pending.id, WAIT, "the pending event after the sweep").await;
    running.stop().await;
    assert_eq!(later.ids(), vec![pending.id]);
}
