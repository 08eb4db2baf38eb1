//! The listing scenarios of issue 12: pages of the tickets for sale while 1,000, 10,000 and
//! 100,000 tickets are listed.
//!
//! Listing that many tickets through the API would take minutes of event cascades that these
//! scenarios do not measure, so the tickets are written straight into the tickets service's
//! own table (the columns its `store::insert` writes, `search_title` included) while it runs:
//! with `sqlite3` into its file in embedded mode, with `psql` into its schema on PostgreSQL.
//! Nothing else reads a ticket before it is listed, so the pages see what they would have
//! seen had the tickets come through `POST /api/tickets`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};

use crate::api::Api;
use crate::load::{Until, drive};
use crate::marketplace::{Marketplace, Mode};
use crate::scenarios::{Row, Sizes};

/// The seller of every seeded ticket (no such user signs in: the pages are read anonymously).
const SELLER: &str = "0196b000-0000-7000-8000-ffffffffffff";

/// The first seeded ticket's `created_at` (ms); each next one is a millisecond newer.
const FIRST_LISTED_AT: u64 = 1_760_000_000_000;

/// Where the tickets service of a running marketplace keeps its tickets.
#[derive(Debug, Clone)]
pub enum TicketsTable {
    /// The SQLite file of the all-in-one process.
    Sqlite(PathBuf),
    /// The `tickets` schema of a PostgreSQL database.
    Postgres(String),
}

impl TicketsTable {
    /// The table of a marketplace started in `mode` with its files under `dir`.
    pub fn of(mode: &Mode, dir: &Path) -> Self {
        match mode {
            Mode::Embedded => Self::Sqlite(dir.join("data").join("tickets.db")),
            Mode::Cluster { database_url, .. } => Self::Postgres(database_url.clone()),
        }
    }

    /// Deletes every ticket (on PostgreSQL the schema outlives a marketplace run).
    async fn clear(&self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(file) => sqlite(file, "DELETE FROM tickets;").await.map(drop),
            Self::Postgres(url) => crate::baseline::psql(url, "DELETE FROM tickets.tickets").await.map(drop),
        }
    }

    /// Lists the seeded tickets `from..to` (numbers), for sale.
    async fn seed(&self, from: u64, to: u64) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(file) => sqlite(file, &sqlite_seed(from, to)).await.map(drop),
            Self::Postgres(url) => crate::baseline::psql(url, &postgres_seed(from, to)).await.map(drop),
        }
    }
}

fn sqlite_seed(from: u64, to: u64) -> String {
    format!(
        "WITH RECURSIVE n(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {to}) \
         INSERT INTO tickets (id, title, price, user_id, version, order_id, status, created_at, search_title) \
         SELECT printf('0196b000-0000-7000-8000-%012x', i), 'Benchmark ticket ' || i, 1250, '{SELLER}', 0, NULL, \
           'available', {FIRST_LISTED_AT} + i, 'benchmark ticket ' || i FROM n;"
    )
}

fn postgres_seed(from: u64, to: u64) -> String {
    format!(
        "INSERT INTO tickets.tickets (id, title, price, user_id, version, order_id, status, created_at, search_title) \
         SELECT '0196b000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'), 'Benchmark ticket ' || i, 1250, '{SELLER}', 0, \
           NULL, 'available', {FIRST_LISTED_AT} + i, 'benchmark ticket ' || i FROM generate_series({from}, {} ) i; \
         ANALYZE tickets.tickets;",
        to - 1
    )
}

/// Runs `sql` on a SQLite file another process may have open (it waits for the writer's
/// lock); returns what it printed.
async fn sqlite(file: &Path, sql: &str) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt as _;
    // On stdin: a script given as an argument could read as an option.
    let mut child = tokio::process::Command::new("sqlite3")
        .args(["-bail", "-cmd", ".timeout 30000"])
        .arg(file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run sqlite3 (install the sqlite3 command-line shell)")?;
    let mut stdin = child.stdin.take().context("sqlite3 stdin")?;
    stdin.write_all(sql.as_bytes()).await?;
    drop(stdin);
    let output = child.wait_with_output().await?;
    if !output.status.success() {
        bail!("sqlite3 failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Follows the `next` links from the first page, 200 tickets a page, to the last one; returns
/// that page's path with the default page size, and how many tickets come before it.
async fn deep_page(api: &Api) -> anyhow::Result<(String, u64)> {
    let mut path = "/api/tickets?limit=200".to_owned();
    let mut before = 0;
    loop {
        let (status, items, next) = api.page(&path).await.map_err(anyhow::Error::msg)?;
        if status != StatusCode::OK {
            bail!("GET {path} answered {status}");
        }
        match next {
            Some(next) => {
                before += items as u64;
                path = next;
            }
            None => return Ok((path.replace("limit=200&", "").replace("?limit=200", ""), before)),
        }
    }
}

/// Measures GET `path` with `users` virtual users for `duration`; a row whose ops count the
/// 200s (anything else is an error).
async fn measure(
    market: &Marketplace,
    api: &Api,
    mode: &str,
    scenario: &str,
    path: &str,
    users: usize,
    duration: Duration,
) -> Row {
    let mark = market.begin();
    let (api, path) = (api.clone(), Arc::new(path.to_owned()));
    let stats = drive(users, Until::Elapsed(duration), move |_, _, _| {
        let (api, path) = (api.clone(), path.clone());
        async move {
            match api.raw(Method::GET, &path).await? {
                (StatusCode::OK, _) => Ok("ok"),
                (status, _) => Err(status.to_string()),
            }
        }
    })
    .await;
    let cpu = market.cpu_since(&mark).await;
    Row::new(mode, scenario, users, None, &stats).peaks(&market.peaks_mib()).cpu(cpu, stats.total_ok())
}

/// The listing scenarios on `market` (the tickets service and the web pages), whose tickets
/// live in `table`: at each size of `sizes.listing_tickets`, the API's first page and a deep
/// page, and the landing page, under load and one request at a time.
pub async fn run(market: &Marketplace, table: &TicketsTable, mode: &str, sizes: &Sizes) -> anyhow::Result<Vec<Row>> {
    let api = Api::new(market.routes.clone())?;
    let mut rows = Vec::new();
    table.clear().await?;
    let mut listed = 0;
    for &count in &sizes.listing_tickets {
        let started = std::time::Instant::now();
        table.seed(listed, count).await?;
        listed = count;
        let (status, items, _) = api.page("/api/tickets").await.map_err(anyhow::Error::msg)?;
        if status != StatusCode::OK || items == 0 {
            bail!("after seeding {count} tickets GET /api/tickets answered {status} with {items} tickets");
        }
        let (deep, before) = deep_page(&api).await?;
        eprintln!("bench: [{mode}] {count} tickets listed in {:.1?}; deep page after {before}", started.elapsed());
        let with = format!("{count} tickets listed");
        let users = sizes.browse_users;
        rows.push(
            measure(
                market,
                &api,
                mode,
                &format!("list: GET /api/tickets, {count} listed"),
                "/api/tickets",
                users,
                sizes.listing,
            )
            .await
            .note(format!("{with}; first page (50, the default)")),
        );
        rows.push(
            measure(
                market,
                &api,
                mode,
                &format!("list: GET /api/tickets?cursor=…, {count} listed"),
                &deep,
                users,
                sizes.listing,
            )
            .await
            .note(format!("{with}; the page after {before} tickets (cursors followed from the first page)")),
        );
        rows.push(
            measure(
                market,
                &api,
                mode,
                &format!("landing page: GET / (HTML), {count} listed"),
                "/",
                users,
                sizes.listing,
            )
            .await
            .note(format!("{with}; anonymous, 50 tickets and a next link")),
        );
        rows.push(
            measure(market, &api, mode, &format!("landing page: GET / (HTML), {count} listed"), "/", 1, sizes.listing)
                .await
                .note(format!("{with}; one request at a time: latency ≈ server time + loopback + client")),
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tickets service's schema, from its own migrations, in a fresh SQLite file.
    async fn tickets_database(dir: &Path) -> PathBuf {
        let migrations = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tickets/migrations");
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(&migrations).expect("tickets migrations").map(|entry| entry.unwrap().path()).collect();
        files.sort();
        let file = dir.join("tickets.db");
        for migration in files {
            sqlite(&file, &std::fs::read_to_string(migration).unwrap()).await.expect("migration applies");
        }
        file
    }

    #[tokio::test]
    async fn seeded_tickets_are_for_sale_newest_last_with_their_search_keys() {
        let dir = std::env::temp_dir().join(format!("bench-listing-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let table = TicketsTable::Sqlite(tickets_database(&dir).await);
        table.seed(0, 1000).await.unwrap();
        table.seed(1000, 1500).await.unwrap();
        let TicketsTable::Sqlite(file) = &table else { unreachable!() };
        let counts = sqlite(
            file,
            "SELECT count(*), count(DISTINCT id), count(DISTINCT created_at), \
               sum(search_title = lower(title)), sum(status = 'available') FROM tickets;",
        )
        .await
        .unwrap();
        assert_eq!(counts, "1500|1500|1500|1500|1500");
        let newest = sqlite(file, "SELECT id, title, price FROM tickets ORDER BY created_at DESC, id DESC LIMIT 1;")
            .await
            .unwrap();
        let (id, rest) = newest.split_once('|').unwrap();
        assert_eq!(uuid::Uuid::parse_str(id).unwrap().to_string(), id);
        assert_eq!(rest, "Benchmark ticket 1499|1250");

        table.clear().await.unwrap();
        assert_eq!(sqlite(file, "SELECT count(*) FROM tickets;").await.unwrap(), "0");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
