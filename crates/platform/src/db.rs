//! Storage: one code path, portable SQL, PostgreSQL in production and SQLite embedded.
//!
//! Why one path rather than a trait with two implementations: every query the services
//! need (partial unique indexes, `RETURNING`, `ON CONFLICT`, `UPDATE ... WHERE version =`)
//! is spelled the same on both engines, and sqlx's `Any` driver runs that `$1`-style SQL on
//! either. A trait would double every query for no behavioural gain. The price is a small
//! portable type vocabulary, kept everywhere: ids are `TEXT` (UUID strings), instants are
//! `BIGINT` milliseconds since the epoch, integers are `BIGINT`, no booleans.
//!
//! On PostgreSQL each service lives in its own schema (named after the service), so one
//! database can host several services without sharing a table; on SQLite each service has
//! its own file in the data dir.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, ConnectOptions, Executor};

pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A service's database.
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
}

/// Where a service's database is: its `DATABASE_URL`, or a SQLite file in the data dir.
pub fn database_url(database_url: Option<&str>, data_dir: &Path, service: &str) -> String {
    match database_url {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}?mode=rwc", data_dir.join(format!("{service}.db")).display()),
    }
}

impl Db {
    /// Connects, creates the service's schema (PostgreSQL) and runs its migrations.
    pub async fn connect(url: &str, service: &str, migrator: &Migrator) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        let options: AnyConnectOptions = url
            .parse::<AnyConnectOptions>()
            .context("DATABASE_URL is not a valid database URL")?
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));
        let schema = service.to_owned();
        let pool_options = match backend {
            // SQLite has one writer; one connection per service database serialises writers in
            // the pool instead of failing them with SQLITE_BUSY on a read-to-write upgrade.
            Backend::Sqlite => AnyPoolOptions::new().max_connections(1).after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                         PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
                    )
                    .await?;
                    Ok(())
                })
            }),
            // No ping before every acquire: it doubled the round trips of a short request. A
            // connection that died meanwhile fails its query once and is then discarded.
            Backend::Postgres => {
                AnyPoolOptions::new().max_connections(16).test_before_acquire(false).after_connect(move |conn, _| {
                    let schema = schema.clone();
                    Box::pin(async move {
                        conn.execute(format!("SET search_path TO \"{schema}\"").as_str()).await?;
                        Ok(())
                    })
                })
            }
        };
        let pool = pool_options
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .with_context(|| format!("cannot connect to the {service} database"))?;
        if backend == Backend::Postgres {
            // Several instances may start at once; IF NOT EXISTS can still race, so tolerate it.
            if let Err(err) = pool.execute(format!("CREATE SCHEMA IF NOT EXISTS \"{service}\"").as_str()).await {
                let exists = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM pg_namespace WHERE nspname = $1")
                    .bind(service)
                    .fetch_one(&pool)
                    .await?;
                if exists == 0 {
                    return Err(err).context("cannot create the service's schema");
                }
            }
        }
        pool.execute(PLATFORM_TABLES).await.context("cannot create the platform tables")?;
        migrator.run(&pool).await.with_context(|| format!("cannot migrate the {service} database"))?;
        Ok(Self { pool, backend })
    }

    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        self.pool.begin().await
    }

    /// For `/readyz`.
    pub async fn check(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(drop)
    }
}

/// True when the error means the database is unreachable rather than the query being wrong.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_))
}

/// True when the error is a unique-constraint violation (the database refusing a duplicate).
pub fn is_unique_violation(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|db| db.is_unique_violation())
}

/// Milliseconds since the epoch: the portable way instants are stored.
pub fn now_millis() -> i64 {
    millis(time::OffsetDateTime::now_utc())
}

pub fn millis(at: time::OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn from_millis(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Tables the platform needs in every service database: outbox, processed and parked events.
/// Created idempotently at start-up, before the service's own migrations.
pub const PLATFORM_TABLES: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    locked_until BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS processed_events (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
CREATE TABLE IF NOT EXISTS parked_events (
    consumer TEXT NOT NULL,
    event_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    reason TEXT NOT NULL,
    parked_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, event_id)
);
";

/// A UUID stored as `TEXT` (the portable way ids are stored), read from `column`.
pub fn uuid_column(row: &sqlx::any::AnyRow, column: &str) -> Result<uuid::Uuid, sqlx::Error> {
    use sqlx::Row;
    let text: String = row.try_get(column)?;
    uuid::Uuid::parse_str(&text)
        .map_err(|err| sqlx::Error::ColumnDecode { index: column.to_owned(), source: err.into() })
}
