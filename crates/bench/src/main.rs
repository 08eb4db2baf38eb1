//! `bench`: how fast the marketplace is, against the limits of the machine, in one run.
//!
//! `bench run` starts the release `ticketing` binary in each mode (all-in-one on SQLite and
//! the embedded bus; one process per service on PostgreSQL + NATS), drives it over HTTP on
//! loopback with concurrent virtual users, measures the machine's limits in the same run
//! (a trivial axum handler; pgbench running our reservation SQL, the orders transaction
//! alone and the whole event cascade) and writes a markdown report, with the CPU time every
//! server process spent per operation (read from `/proc`, see [`cpu`]). `bench baseline-http`
//! is that trivial handler, run as its own process.

mod api;
mod baseline;
mod cpu;
mod listing;
mod load;
mod marketplace;
mod report;
mod scenarios;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::api::Api;
use crate::cpu::NatsWatch;
use crate::load::{Until, drive};
use crate::marketplace::{Marketplace, Mode, PrivateNats, Proc, Services};
use crate::report::Goal;
use crate::scenarios::{Row, Sizes};

#[derive(Debug, Parser)]
#[command(about = "Benchmarks of the ticketing marketplace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the marketplace in each mode, run every scenario, write the report.
    Run(RunArgs),
    /// Serve the trivial HTTP handler the marketplace is compared with.
    BaselineHttp {
        #[arg(long, default_value = "127.0.0.1:3999")]
        addr: std::net::SocketAddr,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Seconds-long run with tiny counts (what CI checks; `scripts/bench --smoke` adds
    /// `--embedded-only`).
    #[arg(long)]
    smoke: bool,
    /// The server binary to benchmark (build it with `--release`).
    #[arg(long, default_value = "target/release/ticketing")]
    ticketing: PathBuf,
    /// Where to write the markdown report.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
    /// PostgreSQL server for the one-process-per-service mode and pgbench; a scratch database
    /// is created in it and dropped afterwards. Without it (or NATS) that mode is skipped.
    #[arg(long, env = "TEST_DATABASE_URL")]
    database_url: Option<String>,
    /// NATS server with JetStream for the one-process-per-service mode.
    #[arg(long, env = "TEST_NATS_URL")]
    nats_url: Option<String>,
    /// A `nats-server` binary: the one-process-per-service mode then runs on a private NATS
    /// server started with it (instead of `--nats-url`), so NATS's CPU is the bench's alone.
    #[arg(long, env = "NATS_SERVER_BIN")]
    nats_server: Option<PathBuf>,
    /// Skip the one-process-per-service mode even when PostgreSQL and NATS are given.
    #[arg(long)]
    embedded_only: bool,
    /// Skip the embedded mode: only the one-process-per-service mode and its baselines (to
    /// compare two builds' costs on PostgreSQL + NATS in less time).
    #[arg(long, conflicts_with = "embedded_only")]
    cluster_only: bool,
    /// Measure the HTTP limit and the listing scenarios only (issue 12's pages at 1k, 10k and
    /// 100k tickets), in every mode, without the purchase scenarios and pgbench.
    #[arg(long)]
    listing_only: bool,
    /// Where servers keep their data and logs (default: a fresh directory under the temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::BaselineHttp { addr } => baseline::serve_trivial_http(addr).await,
        Command::Run(args) => run(args).await,
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn proc_field(file: &str, key: &str) -> String {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with(key))
                .and_then(|line| line.split(':').nth(1))
                .map(str::trim)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The database URL with another database name.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(base, query)| (base, Some(query)));
    let root = match base.rfind('/') {
        Some(slash) if slash > base.find("//").map_or(0, |at| at + 1) => &base[..slash],
        _ => base,
    };
    match query {
        Some(query) => format!("{root}/{database}?{query}"),
        None => format!("{root}/{database}"),
    }
}

/// Settings passed on to the servers when set for the bench, e.g.
/// `EVENT_BATCH_SIZE=1 scripts/bench` to measure consumers without batching.
const FORWARDED_SETTINGS: &[&str] = &["EVENT_BATCH_SIZE"];

fn common_env(expiration_seconds: Option<u64>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("SIGNUPS_PER_CLIENT", "0"),
        ("SIGNIN_FAILURES_PER_CLIENT", "0"),
        ("SIGNIN_FAILURES_PER_EMAIL", "0"),
        ("TICKET_CREATIONS_PER_USER_PER_HOUR", "0"),
        ("LOG_FORMAT", "human"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    // Server settings an experiment varies between runs, taken from the bench's environment.
    for key in FORWARDED_SETTINGS {
        if let Ok(value) = std::env::var(key) {
            env.push(((*key).to_owned(), value));
        }
    }
    if let Some(seconds) = expiration_seconds {
        env.push(("ORDER_EXPIRATION_SECONDS".into(), seconds.to_string()));
    }
    env
}

async fn http_limit(work: &Path, sizes: &Sizes) -> anyhow::Result<Row> {
    let me = std::env::current_exe()?;
    let server =
        Proc::start("baseline-http", &me, &["baseline-http".to_owned()], &[], work.join("baseline-http.log")).await?;
    let api = Api::new(api::Routes::single(&server.base))?;
    server.reset_peak();
    let meter = cpu::CpuMeter::start(cpu::Watch { ours: server.pid().into_iter().collect(), ..cpu::Watch::default() });
    let mark = meter.mark();
    let stats = drive(sizes.browse_users, Until::Elapsed(sizes.http), move |_, _, _| {
        let api = api.clone();
        async move {
            match api.raw(reqwest::Method::GET, "/").await? {
                (reqwest::StatusCode::OK, _) => Ok("ok"),
                (status, _) => Err(status.to_string()),
            }
        }
    })
    .await;
    let cpu = meter.since(&mark);
    let peak = server.memory_kib().map_or(f64::NAN, |(_, peak)| peak as f64 / 1024.0);
    server.stop().await;
    Ok(Row::new("limits of this machine", "HTTP: trivial axum handler, GET /", sizes.browse_users, None, &stats)
        .peaks(&[("baseline-http".to_owned(), peak)])
        .cpu(cpu, stats.total_ok())
        .note("tokio + hyper + axum answering `{\"ok\":true}`"))
}

async fn run_mode(
    binary: &Path,
    mode: &Mode,
    work: &Path,
    sizes: &Sizes,
    run_id: &str,
    context: &mut report::Context,
    listing_only: bool,
) -> anyhow::Result<Vec<Row>> {
    let mut rows =
        if listing_only { Vec::new() } else { purchase_scenarios(binary, mode, work, sizes, run_id, context).await? };
    eprintln!("bench: listing scenarios ({})", mode.name());
    let dir = work.join("listing");
    let market = Marketplace::start_services(binary, mode, Services::Browsing, &dir, &common_env(None)).await?;
    let listed = listing::run(&market, &listing::TicketsTable::of(mode, &dir), mode.name(), sizes).await;
    market.stop().await;
    rows.extend(listed?);
    Ok(rows)
}

/// The scenarios of issue 5 on a marketplace in `mode`, then expiration on another one.
async fn purchase_scenarios(
    binary: &Path,
    mode: &Mode,
    work: &Path,
    sizes: &Sizes,
    run_id: &str,
    context: &mut report::Context,
) -> anyhow::Result<Vec<Row>> {
    eprintln!("bench: starting the marketplace ({})", mode.name());
    let market = Marketplace::start(binary, mode, &work.join("main"), &common_env(None)).await?;
    context.idle.push((mode.name().to_owned(), market.rss_mib()));
    let rows = scenarios::run(&market, mode.name(), sizes, run_id).await;
    market.stop().await;
    let mut rows = rows?;
    eprintln!("bench: expiration scenario ({})", mode.name());
    let expiring_mode = with_own_stream(mode, "EXP");
    let market = Marketplace::start(
        binary,
        &expiring_mode,
        &work.join("expiration"),
        &common_env(Some(sizes.expiration_seconds)),
    )
    .await?;
    let row = scenarios::expiration(&market, mode.name(), sizes, run_id).await;
    market.stop().await;
    rows.push(row?);
    if let Mode::Cluster { .. } = mode {
        eprintln!("bench: scale-out scenario ({})", mode.name());
        let scaled = with_own_stream(mode, "SCALE");
        let dir = work.join("scale-out");
        let market = Marketplace::start_services(binary, &scaled, Services::ScaleOut, &dir, &common_env(None)).await?;
        let scaled = scenarios::scale_out(&market, mode.name(), sizes, run_id).await;
        market.stop().await;
        rows.extend(scaled?);
    }
    Ok(rows)
}

/// `mode` on a stream and subjects of its own (suffix `name`), so a run starts with no events.
fn with_own_stream(mode: &Mode, name: &str) -> Mode {
    match mode {
        Mode::Embedded => Mode::Embedded,
        Mode::Cluster { database_url, database, nats_url, nats, stream, prefix } => Mode::Cluster {
            database_url: database_url.clone(),
            database: database.clone(),
            nats_url: nats_url.clone(),
            nats: *nats,
            stream: format!("{stream}_{name}"),
            prefix: format!("{prefix}_{}", name.to_lowercase()),
        },
    }
}

fn find<'a>(rows: &'a [Row], mode: &str, scenario: &str, users: Option<usize>) -> Option<&'a Row> {
    rows.iter()
        .find(|row| row.mode == mode && row.scenario.starts_with(scenario) && users.is_none_or(|u| row.users == u))
}

/// The servers' CPU per full purchase on PostgreSQL + NATS measured before issue 12's work
/// (docs/performance.md: `scripts/bench` of 2026-12-01 at b786a7c), which the issue asks to halve.
const RECORDED_FULL_PURCHASE_CPU_MS: f64 = 21.2;

/// Issue 12's listing goals in `mode`: every page of the API at ≥ 0.25× the trivial handler's
/// throughput (`http`), at every size; the landing page in ≤ 5 ms at the largest size.
fn listing_goals(rows: &[Row], mode: &str, sizes: &Sizes, http: Option<f64>) -> Vec<Goal> {
    let exact = |scenario: String, users: usize| {
        rows.iter().find(|row| row.mode == mode && row.scenario == scenario && row.users == users)
    };
    let users = sizes.browse_users;
    let mut goals = Vec::new();
    let mut measured = Vec::new();
    let mut met = Some(true);
    for count in &sizes.listing_tickets {
        let first = exact(format!("list: GET /api/tickets, {count} listed"), users);
        let deep = exact(format!("list: GET /api/tickets?cursor=…, {count} listed"), users);
        match (first, deep, http) {
            (Some(first), Some(deep), Some(http)) => {
                let (first_ratio, deep_ratio) = (first.throughput() / http, deep.throughput() / http);
                measured.push(format!(
                    "{count} listed: first page {:.0}/s = {first_ratio:.2}×, deep page {:.0}/s = {deep_ratio:.2}×",
                    first.throughput(),
                    deep.throughput()
                ));
                let errors = first.stats.error_count() + deep.stats.error_count();
                met = met.map(|met| met && first_ratio >= 0.25 && deep_ratio >= 0.25 && errors == 0);
            }
            _ => met = None,
        }
    }
    if !sizes.listing_tickets.is_empty() {
        goals.push(Goal {
            goal: format!("{mode}: GET /api/tickets pages ≥ 0.25 × the trivial axum handler at {users} concurrent"),
            measured: if measured.is_empty() { "–".into() } else { measured.join("; ") },
            met,
        });
    }
    if let Some(count) = sizes.listing_tickets.last() {
        let scenario = format!("landing page: GET / (HTML), {count} listed");
        let (alone, loaded) = (exact(scenario.clone(), 1), exact(scenario, users));
        let p = |row: &Row, q: f64| row.quantile_ms(q).unwrap_or(f64::INFINITY);
        goals.push(Goal {
            goal: format!("{mode}: landing page (HTML) ≤ 5 ms server time with {count} tickets listed"),
            measured: match (alone, loaded) {
                (Some(alone), Some(loaded)) => format!(
                    "one request at a time: p50 {:.2} ms, p99 {:.2} ms (client-side, so server time plus loopback \
                     and client); at {users} concurrent: {:.0}/s, p50 {:.1} ms, p99 {:.1} ms (queueing on 2 cores)",
                    p(alone, 0.5),
                    p(alone, 0.99),
                    loaded.throughput(),
                    p(loaded, 0.5),
                    p(loaded, 0.99)
                ),
                _ => "–".into(),
            },
            met: alone.map(|alone| p(alone, 0.99) <= 5.0 && alone.stats.error_count() == 0),
        });
    }
    goals
}

fn goals(rows: &[Row], idle: &[(String, Vec<(String, f64)>)], sizes: &Sizes, http: Option<f64>) -> Vec<Goal> {
    let mut goals = Vec::new();
    let pg = "postgres+nats";
    for users in [8, 32] {
        let ours = find(rows, pg, "reserve", Some(users));
        let limit = find(rows, "limits of this machine", "PostgreSQL: pgbench, the orders", Some(users));
        let cascade = find(rows, "limits of this machine", "PostgreSQL: pgbench, the whole", Some(users));
        let (measured, met) = match (ours, limit) {
            (Some(ours), Some(limit)) => {
                let ratio = ours.throughput() / limit.throughput();
                let mut measured = format!(
                    "{:.0}/s vs pgbench of the orders transaction {:.0}/s = {ratio:.2}×",
                    ours.throughput(),
                    limit.throughput()
                );
                if let Some(cascade) = cascade {
                    measured.push_str(&format!(
                        "; vs pgbench of the whole cascade {:.0}/s = {:.2}×",
                        cascade.throughput(),
                        ours.throughput() / cascade.throughput()
                    ));
                }
                (measured, Some(ratio >= 0.5))
            }
            _ => ("–".to_owned(), None),
        };
        goals.push(Goal {
            goal: format!("reserve on PostgreSQL ≥ 0.5 × pgbench at {users} concurrent"),
            measured,
            met,
        });
    }
    if let Some(cpu) = report::full_purchase_cpu(rows, pg) {
        goals.push(Goal {
            goal: format!(
                "CPU per full purchase on PostgreSQL + NATS (reserve at 8 + pay, with their cascades) ≤ {:.1} ms, \
                 half of the {RECORDED_FULL_PURCHASE_CPU_MS:.1} ms recorded in docs/performance.md",
                RECORDED_FULL_PURCHASE_CPU_MS / 2.0
            ),
            measured: format!(
                "{:.1} ms: ours {:.1}, PostgreSQL {:.1}, NATS {:.1} (load generator {:.1} apart)",
                cpu.total(),
                cpu.ours,
                cpu.postgres,
                cpu.nats,
                cpu.load_generator
            ),
            met: Some(cpu.total() <= RECORDED_FULL_PURCHASE_CPU_MS / 2.0),
        });
    }
    let p99 = find(rows, pg, "reserve", Some(8)).and_then(|row| row.quantile_ms(0.99));
    goals.push(Goal {
        goal: "reserve on PostgreSQL: p99 ≤ 25 ms at 8 concurrent buyers".into(),
        measured: p99.map_or("–".into(), |p99| format!("p99 {p99:.1} ms")),
        met: p99.map(|p99| p99 <= 25.0),
    });
    let modes: Vec<String> = idle.iter().map(|(mode, _)| mode.clone()).collect();
    for mode in &modes {
        if let (Some(winners), Some(losers)) =
            (find(rows, mode, "flash sale: winners", None), find(rows, mode, "flash sale: losers", None))
        {
            let exact = !winners.note.starts_with("WRONG");
            let p99 = losers.quantile_ms(0.99).unwrap_or(f64::INFINITY);
            goals.push(Goal {
                goal: format!("{mode}: flash sale exactly N winners, every loser answered, losers p99 ≤ 50 ms"),
                measured: format!("{}; {} errors; losers p99 {p99:.1} ms", winners.note, winners.stats.error_count()),
                met: Some(exact && winners.stats.error_count() == 0 && p99 <= 50.0),
            });
        }
        for step in ["propagation: ticket", "propagation: payment"] {
            if let Some(row) = find(rows, mode, step, None) {
                let p99 = row.quantile_ms(0.99).unwrap_or(f64::INFINITY);
                goals.push(Goal {
                    goal: format!("{mode}: {} p99 ≤ 100 ms", row.scenario),
                    measured: format!("p99 {p99:.1} ms, {} errors", row.stats.error_count()),
                    met: Some(p99 <= 100.0 && row.stats.error_count() == 0),
                });
            }
        }
        goals.extend(listing_goals(rows, mode, sizes, http));
        if let Some(row) = find(rows, mode, "expiration", None) {
            let p99 = row.quantile_ms(0.99).unwrap_or(f64::INFINITY);
            goals.push(Goal {
                goal: format!("{mode}: expiration none early, p99 lateness ≤ 1 s"),
                measured: format!("p99 {p99:.0} ms late; {}", row.stats.error_summary()),
                met: Some(p99 <= 1000.0 && row.stats.error_count() == 0),
            });
        }
    }
    if let Some((_, procs)) = idle.iter().find(|(mode, _)| mode == "embedded") {
        let rss = procs.first().map_or(f64::NAN, |(_, mib)| *mib);
        goals.push(Goal {
            goal: "all-in-one process idle RSS ≤ 50 MB".into(),
            measured: format!("{rss:.1} MiB"),
            met: Some(rss <= 50.0),
        });
    }
    let reserve_peak = rows
        .iter()
        .filter(|row| row.mode == "embedded" && row.scenario.starts_with("reserve"))
        .flat_map(|row| row.peak_mib.iter().map(|(_, mib)| *mib))
        .fold(None, |max: Option<f64>, mib| Some(max.map_or(mib, |max| max.max(mib))));
    goals.push(Goal {
        goal: "all-in-one process RSS ≤ 200 MB under the reserve scenario".into(),
        measured: reserve_peak.map_or("–".into(), |mib| format!("peak {mib:.1} MiB")),
        met: reserve_peak.map(|mib| mib <= 200.0),
    });
    goals
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let sizes = if args.smoke { Sizes::smoke() } else { Sizes::full() };
    let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let run_id = format!("{started}{}", std::process::id());
    let work = args.work_dir.clone().unwrap_or_else(|| std::env::temp_dir().join(format!("ticketing-bench-{run_id}")));
    std::fs::create_dir_all(&work)?;
    anyhow::ensure!(
        args.ticketing.exists(),
        "{} not found: build it with `cargo build --release`",
        args.ticketing.display()
    );
    let binary = std::fs::canonicalize(&args.ticketing)?;

    let mut context = report::Context::default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    context.facts = vec![
        ("CPU".into(), proc_field("/proc/cpuinfo", "model name")),
        ("cores (nproc)".into(), cores.to_string()),
        ("memory".into(), proc_field("/proc/meminfo", "MemTotal")),
        ("kernel".into(), std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()),
        ("rustc".into(), command_output("rustc", &["--version"])),
        (
            "ticketing".into(),
            format!(
                "{} (git {}{})",
                command_output(&binary.display().to_string(), &["--version"]),
                command_output("git", &["rev-parse", "--short", "HEAD"]),
                if command_output("git", &["status", "--porcelain"]).is_empty() { "" } else { ", uncommitted changes" }
            ),
        ),
        ("date (UTC)".into(), time::OffsetDateTime::now_utc().date().to_string()),
    ];
    let cluster = match (&args.database_url, &args.nats_url) {
        (Some(database_url), Some(nats_url)) if !args.embedded_only => Some((database_url.clone(), nats_url.clone())),
        _ => None,
    };
    if let Some((database_url, _)) = &cluster {
        context
            .facts
            .push(("PostgreSQL".into(), baseline::psql(database_url, "SHOW server_version").await.unwrap_or_default()));
        context.facts.push(("pgbench".into(), command_output("pgbench", &["--version"])));
    }
    context.settings = vec![
        ("sizes".into(), format!("{sizes:?}").replace('\n', " ")),
        (
            "server environment".into(),
            format!(
                "RUST_LOG=warn, SIGNUPS_PER_CLIENT=0, SIGNIN_FAILURES_PER_CLIENT=0, SIGNIN_FAILURES_PER_EMAIL=0, \
                 TICKET_CREATIONS_PER_USER_PER_HOUR=0{} \
                 (everything else default: 15-minute reservations, sandbox payment gateway)",
                FORWARDED_SETTINGS
                    .iter()
                    .filter_map(|key| std::env::var(key).ok().map(|value| format!(", {key}={value}")))
                    .collect::<String>()
            ),
        ),
        (
            "expiration run".into(),
            format!("a fresh marketplace with ORDER_EXPIRATION_SECONDS={}", sizes.expiration_seconds),
        ),
        (
            "listing run".into(),
            "a fresh marketplace (one process per service: the tickets service and the web pages, whose API is \
             the tickets service); the tickets are written straight into the tickets service's table (sqlite3 / \
             psql, the columns `POST /api/tickets` writes), then the pages are read anonymously"
                .into(),
        ),
        ("load generator".into(), "this binary, tokio multi-threaded runtime, reqwest with keep-alive".into()),
    ];

    let mut rows = Vec::new();
    eprintln!("bench: HTTP limit (trivial axum handler)");
    rows.push(http_limit(&work, &sizes).await?);
    if !args.cluster_only {
        rows.extend(
            run_mode(
                &binary,
                &Mode::Embedded,
                &work.join("embedded"),
                &sizes,
                &run_id,
                &mut context,
                args.listing_only,
            )
            .await?,
        );
    }

    if let Some((database_url, nats_url)) = cluster {
        // A private NATS server when we can start one: its CPU is then ours to count.
        let private_nats = match &args.nats_server {
            Some(binary) => Some(PrivateNats::start(binary, &work.join("nats")).await?),
            None => None,
        };
        let (nats_url, nats) = match &private_nats {
            Some(private) => (private.url.clone(), private.pid().map_or(NatsWatch::Any, NatsWatch::Pid)),
            None => (nats_url, NatsWatch::Any),
        };
        context.facts.push((
            "NATS".into(),
            match &private_nats {
                Some(_) => format!(
                    "private nats-server {} (JetStream, file storage)",
                    command_output(
                        &args.nats_server.as_ref().map(|path| path.display().to_string()).unwrap_or_default(),
                        &["--version"],
                    )
                ),
                None => format!("{nats_url} (JetStream, file storage; shared, so its CPU is machine-wide)"),
            },
        ));
        let database = format!("bench_{run_id}");
        baseline::psql(&database_url, &format!("CREATE DATABASE {database}")).await?;
        let scratch = with_database(&database_url, &database);
        let pg_database = format!("bench_{run_id}_pgbench");
        let pg_scratch = with_database(&database_url, &pg_database);
        let mode = Mode::Cluster {
            database_url: scratch.clone(),
            database: database.clone(),
            nats_url,
            nats,
            stream: format!("BENCH_{run_id}"),
            prefix: format!("bench_{run_id}"),
        };
        let result = async {
            let mut rows =
                run_mode(&binary, &mode, &work.join("cluster"), &sizes, &run_id, &mut context, args.listing_only)
                    .await?;
            if args.listing_only {
                return anyhow::Ok(rows);
            }
            eprintln!("bench: pgbench schema (ticketing migrate)");
            baseline::create_schema(&binary, &database_url, &pg_database, &pg_scratch, &common_env(None)).await?;
            for (script, scenario, note) in [
                (
                    baseline::Script::Orders,
                    "PostgreSQL: pgbench, the orders transaction",
                    "SELECT ticket; BEGIN; INSERT order; INSERT outbox; COMMIT (prepared; schema from the services' migrations)",
                ),
                (
                    baseline::Script::Cascade,
                    "PostgreSQL: pgbench, the whole reservation cascade",
                    "the orders transaction, then every statement its events cause in orders, tickets, expiration \
                     and payments (consumer transactions with processed events, outbox writes, relay claims and \
                     deletes, timer loop), one event at a time: each client waits for about nine commits in a row",
                ),
            ] {
                for clients in [8usize, 32] {
                    eprintln!("bench: pgbench {script:?} at {clients} clients");
                    let per_client = match script {
                        baseline::Script::Orders => sizes.pgbench_per_client_total,
                        baseline::Script::Cascade => sizes.pgbench_per_client_total / 4,
                    } / clients as u64;
                    let (stats, cpu) = baseline::pgbench(
                        script,
                        &pg_scratch,
                        &pg_database,
                        clients,
                        per_client.max(1),
                        &work,
                    )
                    .await?;
                    rows.push(
                        Row::new("limits of this machine", scenario, clients, None, &stats)
                            .cpu(cpu, stats.total_ok())
                            .note(note),
                    );
                }
            }
            anyhow::Ok(rows)
        }
        .await;
        let dropped = baseline::psql(&database_url, &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).await;
        let pg_dropped =
            baseline::psql(&database_url, &format!("DROP DATABASE IF EXISTS {pg_database} WITH (FORCE)")).await;
        if let Some(private) = private_nats {
            private.stop().await;
        }
        rows.extend(result?);
        dropped?;
        pg_dropped?;
    } else if !args.embedded_only {
        eprintln!("bench: no TEST_DATABASE_URL/TEST_NATS_URL: skipping the PostgreSQL + NATS mode and pgbench");
    }

    // Ratios to the limits measured above.
    let limit = |scenario: &str, users: usize| {
        find(&rows, "limits of this machine", scenario, Some(users)).map(Row::throughput)
    };
    let http = limit("HTTP", sizes.browse_users);
    let pgbench: Vec<(usize, Option<f64>, Option<f64>)> = [8, 32]
        .into_iter()
        .map(|users| {
            (users, limit("PostgreSQL: pgbench, the orders", users), limit("PostgreSQL: pgbench, the whole", users))
        })
        .collect();
    for row in &mut rows {
        if (row.scenario.starts_with("browse")
            || row.scenario.starts_with("list:")
            || row.scenario.starts_with("landing page"))
            && row.users == sizes.browse_users
            && let Some(http) = http
        {
            row.vs = format!("{:.2}× HTTP", row.throughput() / http);
        }
        if row.scenario.starts_with("reserve")
            && let Some((_, Some(orders), cascade)) = pgbench.iter().find(|(users, _, _)| *users == row.users)
        {
            row.vs = format!("{:.2}× pgbench orders tx", row.throughput() / orders);
            if let Some(cascade) = cascade {
                row.vs.push_str(&format!(", {:.2}× pgbench cascade", row.throughput() / cascade));
            }
        }
    }

    // The scale-out rows against the same operation on one instance of each service.
    let single: Vec<(String, String, f64, Option<f64>)> = rows
        .iter()
        .filter(|row| row.users == 8 && (row.scenario.starts_with("reserve") || row.scenario.starts_with("pay")))
        .map(|row| (row.mode.clone(), row.scenario.clone(), row.throughput(), row.cpu.map(|cpu| cpu.total())))
        .collect();
    for row in rows.iter_mut().filter(|row| row.scenario.starts_with("scale-out")) {
        let operation = if row.scenario.ends_with("reserve") { "reserve" } else { "pay" };
        if let Some((_, _, throughput, cpu)) =
            single.iter().find(|(mode, scenario, _, _)| *mode == row.mode && scenario.starts_with(operation))
        {
            row.vs = format!("{:.2}× one instance", row.throughput() / throughput);
            if let (Some(cpu), Some(here)) = (cpu, row.cpu.map(|cpu| cpu.total())) {
                row.vs.push_str(&format!(", CPU per operation {:.2}×", here / cpu));
            }
        }
    }

    let goals = goals(&rows, &context.idle, &sizes, http);
    let command = [
        Some("scripts/bench"),
        args.smoke.then_some("--smoke"),
        args.listing_only.then_some("--listing-only"),
        args.cluster_only.then_some("--cluster-only"),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    let markdown = report::render(&context, &rows, &goals, &command);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, &markdown).with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("bench: wrote {} (server logs in {})", args.out.display(), work.display());
    if !args.smoke {
        let _ = std::fs::remove_dir_all(work.join("embedded"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_the_database_name() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b1"),
            "postgres://postgres@127.0.0.1:5432/b1"
        );
        assert_eq!(with_database("postgres://u@h/db?sslmode=disable", "b1"), "postgres://u@h/b1?sslmode=disable");
        assert_eq!(with_database("postgres://u@h", "b1"), "postgres://u@h/b1");
    }
}
