//! The scale-out test (issue 8, item 9): the production topology on loopback, a purchase
//! workload, `kill -9` of the NATS node leading the stream and of one instance of each service
//! mid-load, then checks through the API that nothing acknowledged was lost or applied twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::nats::NatsCluster;
use crate::postgres::TestDatabase;
use crate::services::{Api, Instance, InstanceInfo, Launch, Svc, probe_ready, ticketing_bin, wait_ready};
use crate::workload::{Intent, Ledger, Step, User, Workload, longest_gap, sign_up};

/// The reservation window: short, so orders expire while the faults happen.
pub const ORDER_EXPIRATION_SECONDS: u64 = 5;
const INSTANCES_PER_SERVICE: usize = 2;
const PURCHASE_LANES: usize = 3;
const CONTENDERS: usize = 4;
const SELLERS: usize = 3;
const BUYERS: usize = 8;
const POOL_SIZE: &str = "4";
/// How often every instance's `/readyz` is asked.
const PROBE_EVERY: Duration = Duration::from_millis(150);

// What the report compares its measurements with. Tests never assert timings (a loaded CI
// machine would make them flaky): the report prints them, and the test asserts only that every
// step was done, none twice and none lost.
/// The issue asks for purchases to stall at most 5 s when the stream leader dies. nats-server
/// 2.12 elects a new stream leader only after a follower's election timer runs out, a random
/// 4 to 9 s (`minElectionTimeoutDefault`/`maxElectionTimeoutDefault` in its raft.go, not
/// configurable), and no event can be stored before. So the report also prints what is ours:
/// the time from the new leader to the first purchase step done (goal 2 s).
const STALL_GOAL: Duration = Duration::from_secs(5);
const AFTER_ELECTION_GOAL: Duration = Duration::from_secs(2);
/// Redelivery is bounded by `ack_wait` (ACK_WAIT_SECONDS, default 5 s) from the delivery, which
/// came before the kill; the test sees it only at its next poll (every 100 ms) of the step
/// waiting on it.
const REDELIVERY_GOAL: Duration = Duration::from_secs(5);
const MAX_CONNECTIONS: i64 = 60;

pub const JWT_KEY: &str = "scale-out-test-session-key-of-at-least-32-bytes";

/// Settings every instance of the test gets.
pub fn common_env(database_url: &str, replicas: usize) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", database_url.to_owned()),
        ("NATS_STREAM_REPLICAS", replicas.to_string()),
        ("JWT_KEY", JWT_KEY.to_owned()),
        ("ORDER_EXPIRATION_SECONDS", ORDER_EXPIRATION_SECONDS.to_string()),
        ("DATABASE_POOL_SIZE", POOL_SIZE.to_owned()),
        // One client address signs up every user of the test.
        ("SIGNUPS_PER_CLIENT", "0".to_owned()),
        ("SIGNIN_FAILURES_PER_CLIENT", "0".to_owned()),
        ("SIGNIN_FAILURES_PER_EMAIL", "0".to_owned()),
        ("TICKET_CREATIONS_PER_USER_PER_HOUR", "0".to_owned()),
        ("NO_COLOR", "1".to_owned()),
        ("RUST_LOG", "info,sqlx=warn,async_nats=info,tower_http=warn".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Everything the test started.
pub struct Fleet {
    pub nats: NatsCluster,
    pub instances: Vec<Instance>,
}

impl Fleet {
    /// Fails the test if a process died that the test did not kill.
    pub fn check_running(&mut self) {
        self.nats.check_running();
        for instance in &mut self.instances {
            instance.check_running();
        }
    }

    fn infos(&self) -> Vec<Arc<InstanceInfo>> {
        self.instances.iter().map(|instance| instance.info.clone()).collect()
    }

    /// Polls `condition` (every 100 ms, checking the processes) until it holds.
    async fn wait(&mut self, timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running();
            if condition() {
                return;
            }
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Per probe round: how many instances of each service were ready.
type Readiness = Vec<(Instant, BTreeMap<Svc, usize>)>;

async fn sample_readiness(infos: Vec<Arc<InstanceInfo>>, stop: CancellationToken) -> Readiness {
    let client = reqwest::Client::new();
    let mut rounds = Vec::new();
    while !stop.is_cancelled() {
        let at = Instant::now();
        let mut probes = tokio::task::JoinSet::new();
        for info in &infos {
            let client = client.clone();
            let info = info.clone();
            probes.spawn(async move { (info.svc, probe_ready(&client, &info).await.is_some()) });
        }
        let mut ready: BTreeMap<Svc, usize> = Svc::ALL.iter().map(|svc| (*svc, 0)).collect();
        while let Some(result) = probes.join_next().await {
            let (svc, ok) = result.expect("probe task");
            *ready.get_mut(&svc).expect("service") += usize::from(ok);
        }
        rounds.push((at, ready));
        tokio::time::sleep_until((at + PROBE_EVERY).into()).await;
    }
    rounds
}

/// Rounds without a ready instance of `svc`, and the longest such stretch.
fn unready(rounds: &Readiness, svc: Svc) -> (usize, Duration) {
    let mut count = 0;
    let mut longest = Duration::ZERO;
    let mut since: Option<Instant> = None;
    for (at, ready) in rounds {
        if ready[&svc] == 0 {
            count += 1;
            since.get_or_insert(*at);
        } else if let Some(start) = since.take() {
            longest = longest.max(*at - start);
        }
    }
    if let (Some(start), Some((last, _))) = (since, rounds.last()) {
        longest = longest.max(*last - start + PROBE_EVERY);
    }
    (count, longest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survives_losing_the_stream_leader_and_an_instance_of_each_service() {
    let temp = testkit::TempDir::new();
    let began = Instant::now();
    let nats = NatsCluster::start(3, temp.path());
    let db = TestDatabase::create().await;
    let mut fleet = Fleet { nats, instances: Vec::new() };
    fleet.nats.wait_until_ready(Duration::from_secs(60)).await;
    let stop_sampling = CancellationToken::new();
    let connections = db.sample_connections(Duration::from_millis(200), stop_sampling.clone()).await;

    let launch = Launch::new(ticketing_bin(), temp.path(), common_env(&db.url, 3), &fleet.nats);
    for n in 1..=INSTANCES_PER_SERVICE {
        for svc in Svc::ALL {
            fleet.instances.push(launch.start(&format!("{}-{n}", svc.name()), &[svc]));
        }
    }
    wait_ready(&mut fleet.instances, Duration::from_secs(120)).await;
    let started = began.elapsed();
    let infos = fleet.infos();
    let api = Api::new(infos.clone());
    let readiness = tokio::spawn(sample_readiness(infos, stop_sampling.clone()));

    let mut users = Vec::new();
    for i in 0..SELLERS + BUYERS + 1 {
        users.push(sign_up(&api, &format!("user{i}")).await);
    }
    let probe_buyer = users.pop().expect("probe buyer");
    let buyers = users.split_off(SELLERS);
    let workload = Arc::new(Workload {
        api: api.clone(),
        sellers: users,
        buyers,
        ledger: Arc::new(Mutex::new(Ledger::default())),
        stop: CancellationToken::new(),
        contenders: CONTENDERS,
    });
    let ledger = workload.ledger.clone();
    let completed_since = |since: Instant| ledger.lock().expect("ledger").done_since(Step::Completed, since);
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..PURCHASE_LANES {
        lanes.spawn(workload.clone().purchase_lane(lane));
    }
    lanes.spawn(workload.clone().edit_lane());
    let t_load = Instant::now();
    fleet.wait(Duration::from_secs(60), "three purchases to complete", || completed_since(t_load) >= 3).await;

    // Fault 1: kill -9 the NATS server leading the stream.
    let before = fleet.nats.stream().await.expect("the services created the stream");
    let leader = before.leader.clone();
    let t_leader = Instant::now();
    fleet.nats.kill(&leader);
    // How long NATS itself takes to elect new leaders for the stream and for every consumer that
    // the dead node led: the floor under any stall.
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        assert!(Instant::now() < deadline, "no new stream and consumer leaders after killing {leader}");
        if let Some(view) = fleet.nats.stream().await {
            let led = |name: &str| !name.is_empty() && name != leader;
            if led(&view.leader) && view.consumer_leaders.iter().all(|(_, consumer_leader)| led(consumer_leader)) {
                break view.leader;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elected_after = t_leader.elapsed();
    fleet
        .wait(Duration::from_secs(60), "purchases to complete after the leader's death", || {
            completed_since(t_leader) >= 3
        })
        .await;
    fleet.nats.restart(&leader);
    let t_nats_back = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        fleet.check_running();
        if fleet.nats.stream().await.is_some_and(|view| view.healthy()) {
            break;
        }
        assert!(Instant::now() < deadline, "the stream did not get its three replicas back after {leader} restarted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let healed_after = t_nats_back.elapsed();

    // Fault 2: kill -9 one instance of each service.
    let t_kill = Instant::now();
    let mut killed = Vec::new();
    for svc in Svc::ALL {
        let index = fleet.instances.iter().position(|instance| instance.info.svc == svc).expect("instance");
        fleet.instances[index].kill();
        killed.push(index);
    }
    let pending_at_kill = ledger.lock().expect("ledger").pending_at(t_kill);
    let waited = tokio::time::timeout(
        Duration::from_secs(40),
        fleet.wait(Duration::from_secs(41), "every step pending at the instance kills to finish", || {
            let ledger = ledger.lock().expect("ledger");
            ledger.pending_at(t_kill).iter().all(|step| step.done.is_some())
        }),
    )
    .await;
    if waited.is_err() {
        let ledger = ledger.lock().expect("ledger");
        let stuck: Vec<String> = ledger
            .pending_at(t_kill)
            .iter()
            .filter(|step| step.done.is_none())
            .map(|step| format!("{:?} {}", step.step, step.subject))
            .collect();
        panic!("steps pending at the instance kills never finished within 40 s: {stuck:?}");
    }
    for &index in &killed {
        fleet.instances[index].restart();
    }
    let t_restart = Instant::now();
    wait_ready(&mut fleet.instances, Duration::from_secs(60)).await;
    fleet
        .wait(Duration::from_secs(60), "purchases through the restarted instances", || completed_since(t_restart) >= 3)
        .await;

    // Stop the workload; let every step still under way finish or give up.
    workload.stop.cancel();
    let t_stop = Instant::now();
    while let Some(result) = lanes.join_next().await {
        result.expect("lane");
    }
    fleet
        .wait(Duration::from_secs(45), "the last steps (expiries) to finish", || {
            let ledger = ledger.lock().expect("ledger");
            ledger.steps.iter().all(|step| step.done.is_some() || step.started.elapsed() > Duration::from_secs(35))
        })
        .await;
    let load_seconds = t_stop - t_load;

    let verdict = verify(&api, &workload, &probe_buyer).await;
    // The stream: still three replicas, all caught up.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        let view = fleet.nats.stream().await;
        if view.as_ref().is_some_and(|view| view.healthy()) || Instant::now() > deadline {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    fleet.check_running();
    stop_sampling.cancel();
    let rounds = readiness.await.expect("readiness sampler");
    let (peak_connections, samples) = connections.finish().await;

    // Measurements.
    let ledger = ledger.lock().expect("ledger");
    let done = ledger.done_times();
    let stall = longest_gap(&done, t_leader, t_kill);
    let redelivery = pending_at_kill
        .iter()
        .filter_map(|step| {
            ledger.steps.iter().find(|s| s.step == step.step && s.subject == step.subject && s.started == step.started)
        })
        .filter_map(|step| step.done)
        .map(|done| done - t_kill)
        .max()
        .unwrap_or_default();
    let expiry_lags: Vec<Duration> = ledger
        .steps
        .iter()
        .filter(|step| step.step == Step::ExpiredCancelled)
        .filter_map(|step| step.done.map(|done| done.saturating_duration_since(step.started)))
        .collect();
    let max_expiry_lag = expiry_lags.iter().max().copied().unwrap_or_default();
    let never_done: Vec<String> = ledger
        .steps
        .iter()
        .filter(|step| step.done.is_none())
        .map(|step| format!("{:?} of {}", step.step, step.subject))
        .collect();
    let contention_max = ledger.contention.iter().map(|round| round.wins).max().unwrap_or(0);
    let orders_by_intent = |intent: Intent| ledger.orders.iter().filter(|order| order.intent == intent).count();

    println!("==== scale-out report ====");
    println!("NATS configuration: {}", fleet.nats.config_source);
    println!(
        "topology: 3 NATS servers, {INSTANCES_PER_SERVICE} instances of each of auth, tickets, orders, expiration, payments; up and ready in {:.1} s",
        started.as_secs_f64()
    );
    println!(
        "workload: {:.1} s; {} tickets listed ({} edited), {} orders ({} to pay, {} left to expire, {} to cancel), {} payments accepted, {} cancels, {} payments refused as expired",
        load_seconds.as_secs_f64(),
        ledger.tickets.len(),
        ledger.tickets.iter().filter(|ticket| ticket.edited).count(),
        ledger.orders.len(),
        orders_by_intent(Intent::Pay),
        orders_by_intent(Intent::Expire),
        orders_by_intent(Intent::Cancel),
        ledger.payments.len(),
        ledger.cancels.len(),
        ledger.expired_before_payment.len(),
    );
    println!(
        "contention: {} races of {CONTENDERS} buyers; most 201s in one race: {contention_max}; races nobody won: {}",
        ledger.contention.len(),
        ledger.contention.iter().filter(|round| round.wins == 0).count()
    );
    for race in ledger.contention.iter().filter(|race| race.wins > 1) {
        println!("  race for ticket {}: {} of {} contenders got 201", race.ticket, race.wins, race.contenders);
    }
    println!(
        "stream leader {leader} killed at +{:.1} s; new leader {new_leader} (and of every consumer) elected {:.2} s after the kill; {leader} back and the stream at R3 again {:.1} s after its restart",
        (t_leader - t_load).as_secs_f64(),
        elected_after.as_secs_f64(),
        healed_after.as_secs_f64()
    );
    println!(
        "purchase stall after the leader kill: {:.2} s (issue's goal {} s); {:.2} s of it after NATS elected a new leader (goal {} s)",
        stall.as_secs_f64(),
        STALL_GOAL.as_secs(),
        stall.saturating_sub(elected_after).as_secs_f64(),
        AFTER_ELECTION_GOAL.as_secs()
    );
    println!(
        "instance kills (one of each service) at +{:.1} s: {} steps waiting on events; all done {:.2} s after the kill (goal {} s, measured to the test's next 100 ms poll)",
        (t_kill - t_load).as_secs_f64(),
        pending_at_kill.len(),
        redelivery.as_secs_f64(),
        REDELIVERY_GOAL.as_secs(),
    );
    println!(
        "expiries: {} orders watched; longest from expiresAt to seen cancelled: {:.2} s",
        expiry_lags.len(),
        max_expiry_lag.as_secs_f64()
    );
    for svc in Svc::ALL {
        let (count, longest) = unready(&rounds, svc);
        println!(
            "readiness {}: {count} of {} probe rounds without a ready instance (longest {:.2} s)",
            svc.name(),
            rounds.len(),
            longest.as_secs_f64()
        );
    }
    println!("PostgreSQL connections: peak {peak_connections} over {samples} samples (bound {MAX_CONNECTIONS})");
    println!("requests without an answer or with an unexpected one: {}", ledger.unanswered.len());
    for line in ledger.unanswered.iter().take(20) {
        println!("  {line}");
    }
    println!(
        "lost: {}; doubly applied: {}; other failures: {}",
        verdict.lost.len(),
        verdict.double.len(),
        verdict.failures.len()
    );
    for line in verdict.lost.iter().chain(&verdict.double).chain(&verdict.failures).take(40) {
        println!("  {line}");
    }
    println!("stream at the end: {stream:?}");
    println!("==========================");

    assert!(verdict.lost.is_empty(), "acknowledged writes lost: {:?}", verdict.lost);
    assert!(verdict.double.is_empty(), "applied twice: {:?}", verdict.double);
    assert!(verdict.failures.is_empty(), "{:?}", verdict.failures);
    assert!(never_done.is_empty(), "steps never done: {never_done:?}");
    assert_eq!(contention_max, 1, "a race had several winners");
    for svc in [Svc::Auth, Svc::Tickets, Svc::Orders] {
        let (count, longest) = unready(&rounds, svc);
        assert_eq!(count, 0, "{} had no ready instance for {longest:?}", svc.name());
    }
    assert!(peak_connections <= MAX_CONNECTIONS, "{peak_connections} PostgreSQL connections at peak");
    let stream = stream.expect("the stream at the end");
    assert_eq!(stream.num_replicas, 3, "the stream is not R3 at the end: {stream:?}");
    assert!(stream.healthy(), "the stream's replicas are not all current: {stream:?}");
    drop(ledger);
    drop(fleet);
    drop(db);
}

/// What the checks found.
#[derive(Default)]
struct Verdict {
    lost: Vec<String>,
    double: Vec<String>,
    failures: Vec<String>,
}

/// Every buyer's orders, once none is waiting on its expiry or payment any more.
async fn settled_orders(api: &Api, buyers: &[User]) -> (Vec<(usize, Value)>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut orders = Vec::new();
        let mut unsettled = Vec::new();
        for (index, buyer) in buyers.iter().enumerate() {
            let reply = api.call(Method::GET, "/api/orders", Some(&buyer.token), None).await;
            let Ok(reply) = reply else { continue };
            assert_eq!(reply.status, StatusCode::OK, "GET /api/orders: {}", reply.body);
            for order in reply.body.as_array().expect("orders").iter() {
                if matches!(order["status"].as_str(), Some("created" | "awaiting:payment")) {
                    unsettled.push(format!("order {} still {}", order["id"], order["status"]));
                }
                orders.push((index, order.clone()));
            }
        }
        if unsettled.is_empty() || Instant::now() > deadline {
            return (orders, unsettled);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn verify(api: &Api, workload: &Workload, probe: &User) -> Verdict {
    let mut verdict = Verdict::default();
    let ledger = workload.ledger.lock().expect("ledger").clone();
    let (orders, unsettled) = settled_orders(api, &workload.buyers).await;
    verdict.failures.extend(unsettled);
    let by_id: HashMap<&str, &Value> =
        orders.iter().map(|(_, order)| (order["id"].as_str().unwrap_or(""), order)).collect();

    // No ticket held by two live orders, none sold twice.
    let mut by_ticket: HashMap<String, Vec<&Value>> = HashMap::new();
    for (_, order) in &orders {
        by_ticket.entry(order["ticket"]["id"].as_str().unwrap_or("").to_owned()).or_default().push(order);
    }
    for (ticket, list) in &by_ticket {
        let live = list.iter().filter(|order| order["status"] != "cancelled").count();
        if live > 1 {
            verdict.double.push(format!("ticket {ticket} has {live} live or complete orders"));
        }
    }

    // Every acknowledged order is there, and in the state its acknowledged writes promise.
    let paid: HashMap<&str, &str> =
        ledger.payments.iter().map(|(payment, order)| (order.as_str(), payment.as_str())).collect();
    for order in &ledger.orders {
        let Some(seen) = by_id.get(order.id.as_str()) else {
            verdict.lost.push(format!("order {} (201) is not in its buyer's orders", order.id));
            continue;
        };
        let status = seen["status"].as_str().unwrap_or("");
        if seen["ticket"]["id"] != order.ticket.as_str() {
            verdict.failures.push(format!(
                "order {} is for ticket {}, placed for {}",
                order.id, seen["ticket"]["id"], order.ticket
            ));
        }
        if let Some(payment) = paid.get(order.id.as_str()) {
            if status != "complete" {
                verdict.lost.push(format!("order {} was paid (payment {payment} 201) but is {status}", order.id));
            }
            if seen["ticket"]["price"].as_f64() != Some(order.price) {
                verdict.failures.push(format!(
                    "order {} shows price {} but was placed at {}",
                    order.id, seen["ticket"]["price"], order.price
                ));
            }
        } else if (ledger.cancels.contains(&order.id)
            || order.intent == Intent::Expire
            || ledger.expired_before_payment.contains(&order.id))
            && status != "cancelled"
        {
            verdict
                .failures
                .push(format!("order {} ({:?}, unpaid) is {status}, not cancelled", order.id, order.intent));
        }
    }

    // Every acknowledged ticket is there with its last acknowledged title and price; every
    // ticket no live order holds is listed and orderable, and the orders service's replica of
    // it agrees with the tickets service (seen in the ticket a new order embeds).
    for ticket in &ledger.tickets {
        let reply = api.call(Method::GET, &format!("/api/tickets/{}", ticket.id), None, None).await;
        let Ok(reply) = reply else {
            verdict.failures.push(format!("GET ticket {}: {reply:?}", ticket.id));
            continue;
        };
        if reply.status != StatusCode::OK {
            verdict.lost.push(format!("ticket {} (201) answers {}", ticket.id, reply.status));
            continue;
        }
        let body = &reply.body;
        if !ticket.uncertain && (body["title"] != ticket.title || body["price"].as_f64() != Some(ticket.price)) {
            verdict.lost.push(format!(
                "ticket {} is {} / {}, acknowledged {} / {}",
                ticket.id, body["title"], body["price"], ticket.title, ticket.price
            ));
        }
        let held =
            by_ticket.get(&ticket.id).is_some_and(|list| list.iter().any(|order| order["status"] != "cancelled"));
        if held {
            if body["orderId"].is_null() {
                verdict
                    .failures
                    .push(format!("ticket {} has a live order but the tickets service shows it free", ticket.id));
            }
            continue;
        }
        if let Err(problem) = order_again(api, probe, body).await {
            verdict.failures.push(problem);
        }
    }
    verdict
}

/// A free ticket: it is shown free, a new order for it succeeds and embeds the same title and
/// price (the replica converged); the order is then cancelled.
async fn order_again(api: &Api, probe: &User, ticket: &Value) -> Result<(), String> {
    let id = ticket["id"].as_str().expect("ticket id");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        let shown = api.call(Method::GET, &format!("/api/tickets/{id}"), None, None).await;
        let Ok(shown) = shown else { continue };
        if !shown.body["orderId"].is_null() {
            last = format!("ticket {id} still shows order {}", shown.body["orderId"]);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let placed = api.call(Method::POST, "/api/orders", Some(&probe.token), Some(&json!({ "ticketId": id }))).await;
        match placed {
            Ok(reply) if reply.status == StatusCode::CREATED => {
                let order = reply.body["id"].as_str().unwrap_or("").to_owned();
                let replica = &reply.body["ticket"];
                let cancelled =
                    api.call(Method::DELETE, &format!("/api/orders/{order}"), Some(&probe.token), None).await;
                if !matches!(&cancelled, Ok(reply) if reply.status == StatusCode::NO_CONTENT) {
                    return Err(format!("cannot cancel the probe order {order}: {cancelled:?}"));
                }
                if replica["title"] == shown.body["title"] && replica["price"] == shown.body["price"] {
                    return Ok(());
                }
                last = format!("ticket {id}: orders has {replica}, tickets has {}", shown.body);
            }
            other => last = format!("ticket {id} not orderable again: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}
