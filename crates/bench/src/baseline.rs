//! The limits of the machine, measured in the same run: a trivial axum handler (the HTTP
//! limit) and pgbench running our reservation's SQL (the database limit): the orders
//! transaction alone, and every statement of the event cascade one reservation causes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::cpu::{Cpu, CpuMeter, Watch};
use crate::load::Stats;

/// `bench baseline-http`: the least an HTTP service can do, on the same stack as ours
/// (tokio + hyper + axum), answering a small JSON body.
pub async fn serve_trivial_http(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route("/", get(|| async { axum::Json(serde_json::json!({ "ok": true })) }))
        .route("/readyz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// Fixed values the scripts bind (`-D`): instants in milliseconds, the buyer and the seller.
/// The statements bind them as parameters, as sqlx does.
const DEFINES: &[(&str, &str)] = &[
    ("n", "0"),
    ("now", "1760000000000"),
    ("expires", "1760000900000"),
    ("lease", "1760000005000"),
    ("buyer", "0196a000-0000-7000-8000-000000000001"),
    ("seller", "0196a000-0000-7000-8000-000000000009"),
    ("title", "Benchmark ticket"),
    ("trace", "0196a000-0000-7000-8000-00000000000a"),
];

/// The statements `POST /api/orders` issues (crates/orders `create_order`, `store::find_ticket`,
/// `store::place_order`: the order and its outbox row): read the ticket replica, then in one
/// transaction insert the order (the partial unique index decides) and its `order:created`
/// event into the outbox. Each client orders its own distinct tickets; ids are numbers in
/// text columns, distinct per client and transaction.
const ORDERS_SCRIPT: &str = r#"\set n :n + 1
\set tid :client_id * 1000000 + :n
\set oid 100000000000 + :tid
\set created 200000000000 + :tid
SELECT id AS ticket_id, title AS ticket_title, price AS ticket_price, user_id AS ticket_user_id, version AS ticket_version FROM orders.tickets WHERE id = :tid;
BEGIN;
INSERT INTO orders.orders (id, user_id, ticket_id, status, expires_at, version, created_at, ticket_title, ticket_price, ticket_version) VALUES (:oid, :buyer, :tid, 'created', :expires, 0, :now, :title, 1250, 0);
INSERT INTO orders.outbox (id, kind, payload, created_at, locked_until) VALUES (:created, :kind_created, :payload_created, :now, 0);
COMMIT;
"#;

/// Every statement one reservation causes, service by service, each consumer in its own
/// transaction as the services run them (read from the services' `store.rs`/`events.rs` and
/// `platform::{outbox, consumer}`; only the tables are qualified by their service's schema):
///
/// 1. orders, `POST /api/orders`: as [`ORDERS_SCRIPT`];
/// 2. orders' outbox relay: claim (`UPDATE ... RETURNING`), publish, delete;
/// 3. tickets, `order:created`: processed event, `known_orders` lookup and insert, the
///    ticket's guarded reserve (`UPDATE ... RETURNING`), its `ticket:updated` into the outbox;
/// 4. tickets' outbox relay: claim, delete;
/// 5. expiration, `order:created`: processed event, timer insert; then the timer loop the
///    commit wakes: claim due timers (none are), next due instant;
/// 6. payments, `order:created`: processed event, order replica insert;
/// 7. orders, `ticket:updated`: processed event, replica lock, versioned update, held updates
///    taken (none are held).
///
/// The relays' and the timer loop's statements run once per event here; under load they
/// batch (up to 100 rows a claim), so the real cascade may run fewer of them.
const CASCADE_SCRIPT: &str = r#"\set n :n + 1
\set tid :client_id * 1000000 + :n
\set oid 100000000000 + :tid
\set created 200000000000 + :tid
\set updated 300000000000 + :tid
SELECT id AS ticket_id, title AS ticket_title, price AS ticket_price, user_id AS ticket_user_id, version AS ticket_version FROM orders.tickets WHERE id = :tid;
BEGIN;
INSERT INTO orders.orders (id, user_id, ticket_id, status, expires_at, version, created_at, ticket_title, ticket_price, ticket_version) VALUES (:oid, :buyer, :tid, 'created', :expires, 0, :now, :title, 1250, 0);
INSERT INTO orders.outbox (id, kind, payload, created_at, locked_until) VALUES (:created, :kind_created, :payload_created, :now, 0);
COMMIT;
UPDATE orders.outbox SET locked_until = :lease WHERE id IN (SELECT id FROM orders.outbox WHERE locked_until < :now ORDER BY id LIMIT 100) AND locked_until < :now RETURNING id, payload;
DELETE FROM orders.outbox WHERE id IN (:created);
BEGIN;
INSERT INTO tickets.processed_events (consumer, event_id, processed_at) VALUES ('tickets', :created, :now) ON CONFLICT (consumer, event_id) DO NOTHING;
SELECT version FROM tickets.known_orders WHERE id = :oid;
INSERT INTO tickets.known_orders (id, ticket_id, version, status) VALUES (:oid, :tid, 0, 'created');
UPDATE tickets.tickets SET order_id = :oid, status = 'reserved', version = version + 1 WHERE id = :tid AND order_id IS NULL RETURNING id, title, price, user_id, version, order_id;
INSERT INTO tickets.outbox (id, kind, payload, created_at, locked_until) VALUES (:updated, :kind_updated, :payload_updated, :now, 0);
COMMIT;
UPDATE tickets.outbox SET locked_until = :lease WHERE id IN (SELECT id FROM tickets.outbox WHERE locked_until < :now ORDER BY id LIMIT 100) AND locked_until < :now RETURNING id, payload;
DELETE FROM tickets.outbox WHERE id IN (:updated);
BEGIN;
INSERT INTO expiration.processed_events (consumer, event_id, processed_at) VALUES ('expiration', :created, :now) ON CONFLICT (consumer, event_id) DO NOTHING;
INSERT INTO expiration.timers (order_id, fire_at, locked_until, status, trace_id) VALUES (:oid, :expires, 0, 'scheduled', :trace) ON CONFLICT (order_id) DO NOTHING;
COMMIT;
UPDATE expiration.timers SET locked_until = :lease WHERE order_id IN (SELECT order_id FROM expiration.timers WHERE status = 'scheduled' AND fire_at <= :now AND locked_until < :now ORDER BY fire_at LIMIT 100) AND locked_until < :now RETURNING order_id, fire_at;
SELECT MIN(CASE WHEN locked_until >= fire_at THEN locked_until + 1 ELSE fire_at END) FROM expiration.timers WHERE status = 'scheduled';
BEGIN;
INSERT INTO payments.processed_events (consumer, event_id, processed_at) VALUES ('payments', :created, :now) ON CONFLICT (consumer, event_id) DO NOTHING;
INSERT INTO payments.orders (id, user_id, price, status, version, expires_at) VALUES (:oid, :buyer, 1250, 'created', 0, :expires) ON CONFLICT (id) DO NOTHING;
COMMIT;
BEGIN;
INSERT INTO orders.processed_events (consumer, event_id, processed_at) VALUES ('orders', :updated, :now) ON CONFLICT (consumer, event_id) DO NOTHING;
UPDATE orders.tickets SET version = version WHERE id = :tid RETURNING version;
UPDATE orders.tickets SET title = :title, price = 1250, user_id = :seller, version = 1 WHERE id = :tid AND version = 0;
DELETE FROM orders.held_ticket_updates WHERE ticket_id = :tid AND version < 2;
DELETE FROM orders.held_ticket_updates WHERE ticket_id = :tid AND version = 2 RETURNING ticket_id, version, title, price, user_id;
COMMIT;
"#;

/// An `order:created` event as the outbox stores it.
const ORDER_CREATED_JSON: &str = r#"{"id":"0196a000-0000-7000-8000-000000000002","type":"order:created","occurredAt":"2025-10-01T12:00:00.000000Z","traceId":"0196a000-0000-7000-8000-00000000000a","data":{"id":"0196a000-0000-7000-8000-000000000003","version":0,"status":"created","userId":"0196a000-0000-7000-8000-000000000001","expiresAt":"2025-10-01T12:15:00Z","ticket":{"id":"0196a000-0000-7000-8000-000000000004","price":1250}}}"#;

/// A `ticket:updated` event (the ticket reserved) as the outbox stores it.
const TICKET_UPDATED_JSON: &str = r#"{"id":"0196a000-0000-7000-8000-000000000005","type":"ticket:updated","occurredAt":"2025-10-01T12:00:00.010000Z","traceId":"0196a000-0000-7000-8000-00000000000a","data":{"id":"0196a000-0000-7000-8000-000000000004","version":1,"title":"Benchmark ticket","price":1250,"userId":"0196a000-0000-7000-8000-000000000009","orderId":"0196a000-0000-7000-8000-000000000003"}}"#;

/// What pgbench runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// The orders service's reservation transaction alone.
    Orders,
    /// Every statement of the reservation's event cascade.
    Cascade,
}

impl Script {
    fn text(self) -> &'static str {
        match self {
            Script::Orders => ORDERS_SCRIPT,
            Script::Cascade => CASCADE_SCRIPT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Script::Orders => "orders",
            Script::Cascade => "cascade",
        }
    }
}

/// Creates `database` and builds the services' schemas in it with their real migrations
/// (`ticketing migrate`), so the baselines run on the same tables and indexes.
pub async fn create_schema(
    ticketing: &Path,
    admin_url: &str,
    database: &str,
    database_url: &str,
    env: &[(String, String)],
) -> anyhow::Result<()> {
    psql(admin_url, &format!("CREATE DATABASE {database}")).await?;
    let output = tokio::process::Command::new(ticketing)
        .args(["migrate", "tickets", "orders", "expiration", "payments"])
        .envs(env.iter().cloned())
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .context("cannot run ticketing migrate")?;
    if !output.status.success() {
        bail!("ticketing migrate failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// Empties the tables the scripts write and lists `per_client` fresh tickets per client, in
/// the tickets service and in the orders service's replica.
async fn seed(database_url: &str, clients: usize, per_client: u64) -> anyhow::Result<()> {
    let tickets = format!(
        "SELECT (c * 1000000 + n)::text, 'Benchmark ticket', 1250, '0196a000-0000-7000-8000-000000000009', 0 \
         FROM generate_series(0, {}) c, generate_series(1, {per_client}) n",
        clients - 1
    );
    let sql = format!(
        "TRUNCATE orders.orders, orders.tickets, orders.outbox, orders.processed_events, orders.held_ticket_updates, \
           tickets.tickets, tickets.known_orders, tickets.outbox, tickets.processed_events, \
           expiration.timers, expiration.processed_events, payments.orders, payments.processed_events;
         INSERT INTO orders.tickets (id, title, price, user_id, version) {tickets};
         INSERT INTO tickets.tickets (id, title, price, user_id, version, order_id, status, created_at) \
           SELECT id, title, price, user_id, version, NULL, 'available', 1760000000000 FROM orders.tickets;
         ANALYZE;"
    );
    psql(database_url, &sql).await.map(drop)
}

/// Runs `script` with pgbench: `clients` connections, `per_client` transactions each, prepared
/// statements (as sqlx uses them). Returns the timings and the CPU spent (the database's
/// backends as PostgreSQL, pgbench as the load generator).
pub async fn pgbench(
    script: Script,
    database_url: &str,
    database: &str,
    clients: usize,
    per_client: u64,
    dir: &Path,
) -> anyhow::Result<(Stats, Cpu)> {
    seed(database_url, clients, per_client).await?;
    let file = dir.join(format!("{}.sql", script.name()));
    std::fs::write(&file, script.text())?;
    let logs = dir.join(format!("pgbench-{}-{clients}", script.name()));
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    let meter = CpuMeter::start(Watch { databases: vec![database.to_owned()], ..Watch::default() });
    let mark = meter.mark();
    let mut command = tokio::process::Command::new("pgbench");
    command.args(["--no-vacuum", "--protocol=prepared", "--log"]);
    for (name, value) in DEFINES {
        command.arg(format!("--define={name}={value}"));
    }
    let output = command
        .arg("--define=kind_created=order:created")
        .arg(format!("--define=payload_created={ORDER_CREATED_JSON}"))
        .arg("--define=kind_updated=ticket:updated")
        .arg(format!("--define=payload_updated={TICKET_UPDATED_JSON}"))
        .arg(format!("--log-prefix={}", logs.join("log").display()))
        .arg(format!("--client={clients}"))
        .arg(format!("--jobs={}", clients.min(2)))
        .arg(format!("--transactions={per_client}"))
        .arg(format!("--file={}", file.display()))
        .arg(database_url)
        .output()
        .await
        .context("cannot run pgbench (install postgresql-client)")?;
    let cpu = meter.since(&mark);
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("pgbench failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    }
    // Elapsed from pgbench's own tps, latencies from its per-transaction log.
    let tps: f64 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no tps in pgbench output: {stdout}"))?;
    let mut stats = Stats::default();
    for entry in std::fs::read_dir(&logs)? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            // client_id transaction_no time(us) script_no epoch epoch_us
            match line.split_whitespace().nth(2).and_then(|micros| micros.parse::<u64>().ok()) {
                Some(micros) => stats.record("ok", Duration::from_micros(micros)),
                None => stats.error(format!("pgbench: {line}")),
            }
        }
    }
    let done = stats.total_ok();
    stats.elapsed = Duration::from_secs_f64(done as f64 / tps.max(1e-9));
    let failed = stdout.lines().find_map(|line| line.strip_prefix("number of failed transactions: "));
    if let Some(failed) = failed.and_then(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        && failed > 0
    {
        stats.errors.insert("pgbench failed transactions".into(), failed);
    }
    Ok((stats, cpu))
}

pub async fn psql(database_url: &str, sql: &str) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql, database_url])
        .output()
        .await
        .context("cannot run psql")?;
    if !output.status.success() {
        bail!("psql failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}
