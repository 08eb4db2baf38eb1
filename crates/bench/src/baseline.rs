//! The limits of the machine, measured in the same run: a trivial axum handler (the HTTP
//! limit) and pgbench running our reservation transaction's SQL (the database limit).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};

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

/// The statements `POST /api/orders` issues (crates/orders `create_order`): read the ticket
/// replica, then in one transaction insert the order (the partial unique index decides) and
/// its `order:created` event into the outbox. Each client orders its own distinct tickets.
/// The event's kind and JSON are bound as parameters (`-D`), as sqlx binds them.
const RESERVE_SCRIPT: &str = r#"\set n :n + 1
\set tid :client_id * 1000000 + :n
SELECT id AS ticket_id, title AS ticket_title, price AS ticket_price, user_id AS ticket_user_id, version AS ticket_version FROM tickets WHERE id = :tid;
BEGIN;
INSERT INTO orders (id, user_id, ticket_id, status, expires_at, version, created_at) VALUES (gen_random_uuid()::text, '0196a000-0000-7000-8000-000000000001', :tid, 'created', 1760000000000, 0, 1760000000000);
INSERT INTO outbox (id, kind, payload, created_at, locked_until) VALUES (gen_random_uuid()::text, :kind, :payload, 1760000000000, 0);
COMMIT;
"#;

/// An `order:created` event as the outbox stores it.
const EVENT_JSON: &str = r#"{"id":"0196a000-0000-7000-8000-000000000002","type":"order:created","occurredAt":"2025-10-01T12:00:00.000000Z","data":{"id":"0196a000-0000-7000-8000-000000000003","version":0,"status":"created","userId":"0196a000-0000-7000-8000-000000000001","expiresAt":"2025-10-01T12:15:00Z","ticket":{"id":"0196a000-0000-7000-8000-000000000004","price":1250}}}"#;

/// The orders service's tables (crates/orders/migrations and the platform's outbox), in a
/// schema of their own.
const RESERVE_SCHEMA: &str = "
DROP SCHEMA IF EXISTS pgbench_reserve CASCADE;
CREATE SCHEMA pgbench_reserve;
SET search_path TO pgbench_reserve;
CREATE TABLE tickets (id TEXT PRIMARY KEY, title TEXT NOT NULL, price BIGINT NOT NULL, user_id TEXT NOT NULL, version BIGINT NOT NULL);
CREATE TABLE orders (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    ticket_id TEXT NOT NULL REFERENCES tickets (id),
    status TEXT NOT NULL CHECK (status IN ('created', 'cancelled', 'awaiting:payment', 'complete')),
    expires_at BIGINT NOT NULL,
    version BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX orders_one_live_per_ticket ON orders (ticket_id) WHERE status <> 'cancelled';
CREATE INDEX orders_by_user ON orders (user_id, created_at);
CREATE TABLE outbox (id TEXT PRIMARY KEY, kind TEXT NOT NULL, payload TEXT NOT NULL, created_at BIGINT NOT NULL, locked_until BIGINT NOT NULL DEFAULT 0);
";

/// Runs the reservation transaction with pgbench: `clients` connections, `per_client`
/// transactions each, prepared statements (as sqlx uses them).
pub async fn pgbench_reserve(database_url: &str, clients: usize, per_client: u64, dir: &Path) -> anyhow::Result<Stats> {
    let seed = format!(
        "{RESERVE_SCHEMA}INSERT INTO tickets SELECT (c * 1000000 + n)::text, 'Benchmark ticket', 1250, \
         '0196a000-0000-7000-8000-000000000009', 0 FROM generate_series(0, {}) c, generate_series(1, {per_client}) n;\nANALYZE;",
        clients - 1
    );
    psql(database_url, &seed).await?;
    let script = dir.join("reserve.sql");
    std::fs::write(&script, RESERVE_SCRIPT)?;
    let logs = dir.join(format!("pgbench-{clients}"));
    std::fs::create_dir_all(&logs)?;
    let output = tokio::process::Command::new("pgbench")
        .args(["--no-vacuum", "--protocol=prepared", "--log", "-D", "n=0", "-D", "kind=order:created"])
        .arg(format!("--define=payload={EVENT_JSON}"))
        .arg(format!("--log-prefix={}", logs.join("log").display()))
        .arg(format!("--client={clients}"))
        .arg(format!("--jobs={}", clients.min(2)))
        .arg(format!("--transactions={per_client}"))
        .arg(format!("--file={}", script.display()))
        .arg(database_url)
        .env("PGOPTIONS", "-c search_path=pgbench_reserve")
        .output()
        .await
        .context("cannot run pgbench (install postgresql-client)")?;
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
    psql(database_url, "DROP SCHEMA pgbench_reserve CASCADE;").await?;
    Ok(stats)
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
