//! The expiration service on its own: order events in, `expiration:complete` out, on both
//! storage/bus combinations; and the timer loop's exactly-once firing with several instances
//! sharing one PostgreSQL database.
//!
//! One test runs on the system clock with short windows, as production does (the loop sleeps
//! until the next due time); the others move a [`ManualClock`] instead of waiting real seconds.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contract::events::{
    ContractEvent, ExpirationComplete, OrderCancelled, OrderCompleted, OrderCreated, PricedTicketRef, TicketRef,
};
use expiration::timers::Round;
use expiration::{ExpirationSettings, MIGRATOR, NAME, TimerLoop};
use httpkit::http::Service;
use httpkit::session::SessionKeys;
use httpkit::settings::Settings;
use platform::bus::embedded::EmbeddedBus;
use platform::bus::nats::NatsBus;
use platform::bus::{Delivery, EventBus, Handler, Outcome, RetryPolicy, dyn_handler};
use platform::clock::{Clock, ManualClock};
use platform::db::{Db, database_url, from_millis, millis, now_millis};
use platform::envelope::ToEvent;
use platform::outbox::OutboxWaker;
use platform::service::Context;
use testkit::{Backend, TempDir, eventually, unique_name};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

/// Where one test's expiration service keeps its state; it can be started, stopped and
/// started again on it.
struct Stand {
    settings: Settings,
    expiration: ExpirationSettings,
    bus: Arc<dyn EventBus>,
    clock: Clock,
    _dir: TempDir,
}

impl Stand {
    async fn new(backend: Backend) -> Self {
        let dir = TempDir::new();
        let mut settings = testkit::settings();
        let expiration: ExpirationSettings = testkit::defaults();
        settings.data_dir = dir.path().to_owned();
        let policy = RetryPolicy {
            backoff: [20, 50, 100].into_iter().map(Duration::from_millis).collect(),
            ..RetryPolicy::default()
        };
        let bus: Arc<dyn EventBus> = match backend {
            Backend::Embedded => Arc::new(EmbeddedBus::open(&dir.path().join("bus.db"), "t", policy).await.unwrap()),
            Backend::Distributed => {
                settings.database_url = Some(testkit::fresh_postgres_url().await);
                settings.nats_stream = unique_name("EXPIRATION");
                settings.subject_prefix = unique_name("t");
                Arc::new(
                    NatsBus::connect(&testkit::nats_url(), &settings.nats_stream, &settings.subject_prefix, policy)
                        .await
                        .unwrap(),
                )
            }
        };
        Self { settings, expiration, bus, clock: Clock::System, _dir: dir }
    }

    fn context(&self) -> Context {
        Context {
            settings: self.settings.clone(),
            keys: Arc::new(SessionKeys::new(b"expiration-test-key-expiration-test-key", time::Duration::hours(1))),
            bus: self.bus.clone(),
            shutdown: CancellationToken::new(),
            clock: self.clock.clone(),
        }
    }

    async fn start(&self) -> Instance {
        let ctx = self.context();
        let service = expiration::start(&ctx, &self.expiration).await.expect("expiration starts");
        Instance { shutdown: ctx.shutdown, service }
    }

    async fn db(&self) -> Db {
        let url = database_url(self.settings.database_url.as_deref(), &self.settings.data_dir, NAME);
        Db::connect(&url, NAME, &MIGRATOR).await.unwrap()
    }

    /// Everything published as `expiration:complete`, with when it was seen.
    async fn collect_expirations(&self) -> Collected {
        let collected = Collected::default();
        self.bus
            .subscribe(
                &unique_name("collector"),
                &[ExpirationComplete::KIND],
                dyn_handler(Arc::new(collected.clone())),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        collected
    }

    async fn publish(&self, event: &impl ContractEvent) {
        self.bus.publish(&event.to_event()).await.unwrap();
    }
}

struct Instance {
    shutdown: CancellationToken,
    service: Service,
}

impl Instance {
    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.service.tasks {
            tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops promptly").unwrap();
        }
    }
}

#[derive(Clone, Default)]
struct Collected(Arc<Mutex<Vec<(Uuid, OffsetDateTime)>>>);

impl Handler for Collected {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        let expired: ExpirationComplete = serde_json::from_value(delivery.event.data).unwrap();
        self.0.lock().unwrap().push((expired.order_id, OffsetDateTime::now_utc()));
        Outcome::Ack
    }
}

impl Collected {
    fn all(&self) -> Vec<(Uuid, OffsetDateTime)> {
        self.0.lock().unwrap().clone()
    }

    fn times_seen(&self, order_id: Uuid) -> usize {
        self.all().iter().filter(|(id, _)| *id == order_id).count()
    }

    async fn wait_for(&self, order_id: Uuid) -> OffsetDateTime {
        eventually(WAIT, &format!("expiration:complete for {order_id}"), || {
            let seen = self.all().into_iter().find(|(id, _)| *id == order_id).map(|(_, at)| at);
            async move { seen }
        })
        .await
    }
}

fn order_created(expires_at: OffsetDateTime) -> OrderCreated {
    OrderCreated {
        id: Uuid::new_v4(),
        version: 0,
        status: contract::events::OrderStatus::Created,
        user_id: Uuid::new_v4(),
        expires_at,
        ticket: PricedTicketRef { id: Uuid::new_v4(), price: 1500 },
    }
}

fn in_millis(ms: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::milliseconds(ms)
}

async fn timer_count(db: &Db, order_id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM timers WHERE order_id = $1 AND status = 'scheduled'")
        .bind(order_id.to_string())
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

testkit::on_both_backends!(
    orders_expire_at_their_window_and_only_live_ones,
    a_window_that_ends_while_stopped_fires_after_restart,
    an_order_that_ended_before_its_creation_was_applied_never_expires,
    retention_deletes_old_ended_timers_and_processed_events_only,
    the_next_wake_up_is_the_earliest_claimable_instant
);

/// Applies one event the way the consumer does, in its own transaction.
async fn apply(db: &Db, event: &impl ContractEvent) {
    use platform::consumer::EventHandler;
    let mut tx = db.begin().await.unwrap();
    expiration::events::OrderEvents.apply(&mut tx, &event.to_event()).await.unwrap();
    tx.commit().await.unwrap();
}

/// Consumers handle several events at once, so an order's end can be applied before its
/// creation; the late `order:created` must not schedule a timer for a dead order.
async fn an_order_that_ended_before_its_creation_was_applied_never_expires(backend: Backend) {
    let stand = Stand::new(backend).await;
    let db = stand.db().await;
    let cancelled = order_created(in_millis(-1_000));
    apply(&db, &OrderCancelled { id: cancelled.id, version: 1, ticket: TicketRef { id: cancelled.ticket.id } }).await;
    apply(&db, &cancelled).await;
    assert_eq!(timer_count(&db, cancelled.id).await, 0, "a cancelled order got a timer");

    let paid = order_created(in_millis(-1_000));
    apply(&db, &OrderCompleted { id: paid.id, version: 1, ticket: TicketRef { id: paid.ticket.id } }).await;
    apply(&db, &paid).await;
    assert_eq!(timer_count(&db, paid.id).await, 0, "a paid order got a timer");

    // In order, the timer is scheduled as usual.
    let live = order_created(in_millis(60_000));
    apply(&db, &live).await;
    assert_eq!(timer_count(&db, live.id).await, 1);
}

/// Retention deletes timers that ended before its cutoff, and the processed-event ids older than
/// it; live timers and recent rows stay, and an order that ended recently still never gets a
/// timer from a late `order:created`.
async fn retention_deletes_old_ended_timers_and_processed_events_only(backend: Backend) {
    use platform::retention::Retention;
    let stand = Stand::new(backend).await;
    let db = stand.db().await;
    let live = order_created(in_millis(60_000));
    apply(&db, &live).await;
    let ended = order_created(in_millis(-1_000));
    apply(&db, &ended).await;
    apply(&db, &OrderCancelled { id: ended.id, version: 1, ticket: TicketRef { id: ended.ticket.id } }).await;
    sqlx::query(
        "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES ('c', 'old', 1), ('c', 'new', $1)",
    )
    .bind(now_millis())
    .execute(&db.pool)
    .await
    .unwrap();
    let rows = |sql: &'static str| {
        let db = db.clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&db.pool).await.unwrap() }
    };
    let retention = Retention::new(db.clone(), Some(Duration::from_secs(3_600)), &[expiration::store::ENDED_TIMERS]);

    // Kept for an hour: nothing here ended an hour ago but the old processed event.
    let (deleted, full) = retention.sweep(now_millis()).await.unwrap();
    assert_eq!((deleted, full), (1, false));
    assert_eq!(rows("SELECT COUNT(*) FROM timers").await, 2);
    apply(&db, &ended).await;
    assert_eq!(timer_count(&db, ended.id).await, 0, "a late order:created revived a recently ended order");

    // An hour and a second later, the ended timer and the newer processed event go; the live
    // timer stays.
    let (deleted, _) = retention.sweep(now_millis() + 3_601_000).await.unwrap();
    assert_eq!(deleted, 2);
    assert_eq!(rows("SELECT COUNT(*) FROM processed_events WHERE consumer = 'c'").await, 0);
    assert_eq!(timer_count(&db, live.id).await, 1);
    assert_eq!(rows("SELECT COUNT(*) FROM timers").await, 1);
}

/// On the system clock: the loop sleeps until the window ends and fires within a second after.
async fn orders_expire_at_their_window_and_only_live_ones(backend: Backend) {
    let stand = Stand::new(backend).await;
    let expirations = stand.collect_expirations().await;
    let instance = stand.start().await;

    let live = order_created(in_millis(1500));
    // Both end before `live`: by the time `live` fires, they would have fired too.
    let cancelled = order_created(in_millis(500));
    let paid = order_created(in_millis(500));
    for order in [&live, &cancelled, &paid] {
        stand.publish(order).await;
    }
    stand
        .publish(&OrderCancelled { id: cancelled.id, version: 1, ticket: TicketRef { id: cancelled.ticket.id } })
        .await;
    stand.publish(&OrderCompleted { id: paid.id, version: 1, ticket: TicketRef { id: paid.ticket.id } }).await;
    // A redelivered order:created (a new event id, same order) schedules nothing new.
    stand.publish(&live).await;

    let fired_at = expirations.wait_for(live.id).await;
    assert!(fired_at >= live.expires_at, "fired at {fired_at}, before the window ended at {}", live.expires_at);
    assert!(
        fired_at - live.expires_at < time::Duration::seconds(1),
        "fired at {fired_at}, long after the window ended at {}",
        live.expires_at
    );
    assert_eq!(expirations.times_seen(cancelled.id), 0, "a cancelled order expired");
    assert_eq!(expirations.times_seen(paid.id), 0, "a paid order expired");
    assert_eq!(expirations.times_seen(live.id), 1);

    // Nothing is left to fire.
    let db = stand.db().await;
    for order in [&live, &cancelled, &paid] {
        assert_eq!(timer_count(&db, order.id).await, 0);
    }
    instance.stop().await;
}

async fn a_window_that_ends_while_stopped_fires_after_restart(backend: Backend) {
    let mut stand = Stand::new(backend).await;
    let clock = ManualClock::starting_now();
    stand.clock = clock.clone().into();
    let expirations = stand.collect_expirations().await;
    let db = stand.db().await;
    let instance = stand.start().await;
    let order = order_created(from_millis(clock.now_millis() + 15 * 60_000));
    stand.publish(&order).await;
    eventually(WAIT, "the timer to be scheduled", || async { (timer_count(&db, order.id).await == 1).then_some(()) })
        .await;
    instance.stop().await;

    // The window ends while the service is stopped.
    clock.advance_to(millis(order.expires_at));
    assert_eq!(expirations.times_seen(order.id), 0, "fired while stopped");

    let instance = stand.start().await;
    expirations.wait_for(order.id).await;
    assert_eq!(timer_count(&db, order.id).await, 0);
    instance.stop().await;
    assert_eq!(expirations.times_seen(order.id), 1);
}

/// Two instances, one PostgreSQL database, many timers due at once: each fires exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn due_timers_fire_once_across_instances() {
    let url = testkit::fresh_postgres_url().await;
    let first = Db::connect(&url, NAME, &MIGRATOR).await.unwrap();
    let second = Db::connect(&url, NAME, &MIGRATOR).await.unwrap();

    let due: Vec<Uuid> = (0..250).map(|_| Uuid::new_v4()).collect();
    let later = Uuid::new_v4();
    let mut tx = first.begin().await.unwrap();
    for (i, order_id) in due.iter().enumerate() {
        assert!(expiration::store::schedule(&mut tx, *order_id, now_millis() - 1000 + i as i64).await.unwrap());
    }
    assert!(expiration::store::schedule(&mut tx, later, millis(in_millis(60_000))).await.unwrap());
    // Scheduling again is a no-op.
    assert!(!expiration::store::schedule(&mut tx, later, now_millis()).await.unwrap());
    tx.commit().await.unwrap();

    // Rounds driven by hand, raced against each other...
    let loops = [
        TimerLoop::new(first.clone(), OutboxWaker::default(), Clock::System, Duration::from_secs(1)),
        TimerLoop::new(second.clone(), OutboxWaker::default(), Clock::System, Duration::from_secs(1)),
    ];
    let (a, b) = tokio::join!(loops[0].fire_due(), loops[1].fire_due());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.claimed + b.claimed <= due.len());
    assert_eq!((a.fired, b.fired), (a.claimed, b.claimed), "a leased timer is fired by its holder");

    // ...and the spawned loops of both instances do the rest.
    let shutdown = CancellationToken::new();
    let tasks: Vec<_> = loops.into_iter().map(|timers| timers.spawn(shutdown.clone())).collect();
    eventually(WAIT, "every due timer to fire", || async {
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM timers WHERE status = 'scheduled'")
            .fetch_one(&first.pool)
            .await
            .unwrap();
        (left == 1).then_some(())
    })
    .await;
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap();
    }

    let payloads: Vec<String> = sqlx::query_scalar("SELECT payload FROM outbox WHERE kind = $1")
        .bind(ExpirationComplete::KIND)
        .fetch_all(&first.pool)
        .await
        .unwrap();
    let fired: Vec<Uuid> = payloads
        .iter()
        .map(|payload| {
            let event = platform::bus::Event::decode(payload.as_bytes()).unwrap();
            serde_json::from_value::<ExpirationComplete>(event.data).unwrap().order_id
        })
        .collect();
    assert_eq!(fired.len(), due.len(), "one expiration:complete per due timer, no more");
    assert_eq!(fired.iter().copied().collect::<HashSet<_>>(), due.iter().copied().collect::<HashSet<_>>());
    assert_eq!(timer_count(&first, later).await, 1, "a timer that is not due stays");
}

/// A timer leased by an instance that died is fired by another once the lease runs out, and
/// a lease still running keeps the others off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_lease_runs_out() {
    let url = testkit::fresh_postgres_url().await;
    let db = Db::connect(&url, NAME, &MIGRATOR).await.unwrap();
    let (held, abandoned) = (Uuid::new_v4(), Uuid::new_v4());
    for (order_id, locked_until) in [(held, now_millis() + 60_000), (abandoned, now_millis() - 1)] {
        sqlx::query("INSERT INTO timers (order_id, fire_at, locked_until) VALUES ($1, $2, $3)")
            .bind(order_id.to_string())
            .bind(now_millis() - 5_000)
            .bind(locked_until)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    let timers = TimerLoop::new(db.clone(), OutboxWaker::default(), Clock::System, Duration::from_secs(1));
    let round = timers.fire_due().await.unwrap();
    assert_eq!((round.claimed, round.fired), (1, 1));
    assert_eq!(timer_count(&db, abandoned).await, 0);
    assert_eq!(timer_count(&db, held).await, 1);
}

/// The loop sleeps until the earliest instant a timer becomes claimable: a timer not yet due
/// at its `fire_at`, a due one held by a lease just after the lease; ended timers never count.
async fn the_next_wake_up_is_the_earliest_claimable_instant(backend: Backend) {
    let stand = Stand::new(backend).await;
    let db = stand.db().await;
    let now = now_millis();
    let next = async || expiration::store::next_due_at(&mut db.pool.acquire().await.unwrap(), now).await.unwrap();
    let insert = async |fire_at: i64, locked_until: i64, status: &str| {
        sqlx::query("INSERT INTO timers (order_id, fire_at, locked_until, status) VALUES ($1, $2, $3, $4)")
            .bind(Uuid::new_v4().to_string())
            .bind(fire_at)
            .bind(locked_until)
            .bind(status)
            .execute(&db.pool)
            .await
            .unwrap();
    };
    assert_eq!(next().await, None, "nothing scheduled");
    insert(now - 60_000, 0, "ended").await;
    assert_eq!(next().await, None, "ended timers never wake the loop");
    insert(now + 10_000, 0, "scheduled").await;
    insert(now + 20_000, 0, "scheduled").await;
    assert_eq!(next().await, Some(now + 10_000), "the earliest timer not yet due");
    insert(now - 1_000, now + 3_000, "scheduled").await;
    assert_eq!(next().await, Some(now + 3_001), "a due timer another instance holds: just after its lease");
    insert(now - 500, 0, "scheduled").await;
    assert_eq!(next().await, Some(now - 500), "a due timer nobody holds: at once");
}

/// On a manual clock a timer is due at its time and not a millisecond before; moving the clock
/// wakes a spawned loop that would otherwise sleep until the next due time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timer_is_due_at_its_time_on_the_clock_never_a_millisecond_before() {
    let url = testkit::fresh_postgres_url().await;
    let db = Db::connect(&url, NAME, &MIGRATOR).await.unwrap();
    let clock = ManualClock::starting_now();
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    let fire_at = clock.now_millis() + 15 * 60_000;
    let mut tx = db.begin().await.unwrap();
    assert!(expiration::store::schedule(&mut tx, first, fire_at).await.unwrap());
    assert!(expiration::store::schedule(&mut tx, second, fire_at + 60_000).await.unwrap());
    tx.commit().await.unwrap();
    let timers = TimerLoop::new(db.clone(), OutboxWaker::default(), clock.clone().into(), Duration::from_secs(3_600));

    clock.advance_to(fire_at - 1);
    assert_eq!(timers.fire_due().await.unwrap(), Round::default(), "due a millisecond early");
    assert_eq!(timer_count(&db, first).await, 1);
    clock.advance_to(fire_at);
    assert_eq!(timers.fire_due().await.unwrap(), Round { claimed: 1, fired: 1 });
    assert_eq!(timer_count(&db, first).await, 0);

    // Left alone, the loop sleeps a real minute (until `second` is due on the clock, well past
    // `WAIT`): only the clock's move can make it fire in time.
    let shutdown = CancellationToken::new();
    let task = timers.spawn(shutdown.clone());
    clock.advance(Duration::from_secs(60));
    eventually(WAIT, "the woken loop to fire the second timer", || async {
        (timer_count(&db, second).await == 0).then_some(())
    })
    .await;
    shutdown.cancel();
    task.await.unwrap();
}
