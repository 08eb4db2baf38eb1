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
//!
//! Readers and writers: SQLite lets one connection write at a time, but in WAL mode any number
//! of readers go on beside it, each on the snapshot its statement started with. So on SQLite a
//! `Db` has one writer connection ([`Db::pool`], which also serialises our writers in the
//! pool instead of failing them with `SQLITE_BUSY`) and a pool of read-only connections
//! ([`Db::reader`]): a long list read no longer holds up every write of the service, nor the
//! other reads. Writers take the write lock when their transaction starts (`BEGIN
//! IMMEDIATE`), so a transaction that reads before it writes never fails upgrading its lock.
//! On PostgreSQL both are the same pool, where MVCC already keeps readers and writers apart.
//! A query goes to the reader only when it reads committed data on its own (not inside a
//! transaction that then writes); what it reads is everything committed before it started.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, Migrator};
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Executor};

pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A service's database.
#[derive(Debug, Clone)]
pub struct Db {
    /// The writer: every transaction, every write, and reads that decide a write. On SQLite
    /// it has one connection.
    pub pool: AnyPool,
    /// Read-only connections beside the writer on SQLite; the same pool as `pool` on
    /// PostgreSQL (and on an in-memory SQLite database, which a second connection would not
    /// see).
    readers: AnyPool,
    pub backend: Backend,
}

/// Where a service's database is: its `DATABASE_URL`, or a SQLite file in the data dir.
pub fn database_url(database_url: Option<&str>, data_dir: &Path, service: &str) -> String {
    match database_url {
        Some(url) => url.to_owned(),
        None => format!("sqlite://{}?mode=rwc", data_dir.join(format!("{service}.db")).display()),
    }
}

/// PostgreSQL connections per service pool when the process is not told otherwise.
pub const DEFAULT_POOL_SIZE: u32 = 4;

/// The platform's own tables (outbox, processed and parked events), migrated into every service
/// database together with the service's migrations.
static PLATFORM_MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Key of the PostgreSQL advisory lock that serialises migrations across every process and
/// service sharing a database ("tickets" in ASCII).
const MIGRATION_LOCK: i64 = 0x0074_6963_6b65_7473;

impl Db {
    /// Connects with the default pool size, creates the service's schema (PostgreSQL) and runs
    /// the platform's and the service's migrations.
    pub async fn connect(url: &str, service: &str, migrator: &Migrator) -> anyhow::Result<Self> {
        Self::connect_with(url, service, migrator, DEFAULT_POOL_SIZE).await
    }

    /// [`Db::connect`] with at most `pool_size` PostgreSQL connections; on SQLite, one writer
    /// and at most `pool_size` readers.
    pub async fn connect_with(url: &str, service: &str, migrator: &Migrator, pool_size: u32) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        // `sslmode` and the other libpq parameters in the URL are honoured (TLS is rustls).
        let options: AnyConnectOptions = url
            .parse::<AnyConnectOptions>()
            .context("DATABASE_URL is not a valid database URL")?
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));
        let schema = service.to_owned();
        let pool_options = match backend {
            // SQLite has one writer; one connection per service database serialises writers in
            // the pool instead of failing them with SQLITE_BUSY. The readers are beside it.
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
            Backend::Postgres => AnyPoolOptions::new()
                .max_connections(pool_size.max(1))
                .min_connections(0)
                .idle_timeout(Duration::from_secs(60))
                .test_before_acquire(false)
                .after_connect(move |conn, _| {
                    let schema = schema.clone();
                    Box::pin(async move {
                        conn.execute(format!("SET search_path TO \"{schema}\"").as_str()).await?;
                        Ok(())
                    })
                }),
        };
        let pool = pool_options
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await
            .with_context(|| format!("cannot connect to the {service} database"))?;
        let readers = match backend {
            Backend::Sqlite if !is_in_memory(url) => sqlite_readers(pool_size).connect_lazy_with(options),
            _ => pool.clone(),
        };
        let db = Self { pool, readers, backend };
        db.migrate(service, migrator).await?;
        Ok(db)
    }

    /// Where read-only queries go: they never wait for a writer, nor a writer for them (on
    /// SQLite; on PostgreSQL this is the writer's pool). Never for a read that decides a write
    /// in the same transaction: that belongs in [`Db::begin`]'s transaction.
    pub fn reader(&self) -> &AnyPool {
        &self.readers
    }

    /// Closes the writer and the readers.
    pub async fn close(&self) {
        self.pool.close().await;
        self.readers.close().await;
    }

    /// Runs the platform's and the service's migrations. On PostgreSQL the schema is created and
    /// the migrations run under one advisory lock held on one connection, so any number of
    /// instances (of any service) can start at once on an empty database: `CREATE ... IF NOT
    /// EXISTS` alone races there.
    async fn migrate(&self, service: &str, migrator: &Migrator) -> anyhow::Result<()> {
        let mut migrations: Vec<Migration> = PLATFORM_MIGRATOR.iter().cloned().collect();
        migrations.extend(migrator.iter().cloned());
        let mut combined = Migrator::new(Migrations(migrations)).await.context("invalid migrations")?;
        // Our own lock covers the schema too, so sqlx's (per database) is not needed.
        combined.set_locking(false);
        let mut conn =
            self.pool.acquire().await.with_context(|| format!("cannot connect to the {service} database"))?;
        if self.backend == Backend::Sqlite {
            return combined.run(&mut *conn).await.with_context(|| format!("cannot migrate the {service} database"));
        }
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await
            .context("cannot take the migration lock")?;
        let migrated = async {
            conn.execute(format!("CREATE SCHEMA IF NOT EXISTS \"{service}\"").as_str())
                .await
                .context("cannot create the service's schema")?;
            combined.run(&mut *conn).await.with_context(|| format!("cannot migrate the {service} database"))
        }
        .await;
        // Session-level lock: released here, or by the server if this connection dies.
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await;
        if let Err(err) = unlocked {
            // Closing the connection releases the lock.
            conn.detach();
            tracing::warn!(error = %err, "cannot release the migration lock; closed its connection instead");
        }
        migrated
    }

    /// A write transaction. On SQLite it holds the write lock from its first statement
    /// (`BEGIN IMMEDIATE`): a deferred transaction that read first and then wrote would fail
    /// with `SQLITE_BUSY` if another connection (another process on the file) wrote meanwhile,
    /// since its snapshot would be stale; waiting for the lock up front cannot fail that way.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// For `/readyz`: the writer and the readers answer.
    pub async fn check(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        sqlx::query("SELECT 1").execute(&self.readers).await.map(drop)
    }
}

/// A write transaction on a connection the caller holds, begun as [`Db::begin`] begins one
/// (`BEGIN IMMEDIATE` on SQLite), for a store that runs several transactions in a row on
/// one connection.
pub async fn begin_on(conn: &mut AnyConnection) -> Result<sqlx::Transaction<'_, sqlx::Any>, sqlx::Error> {
    if conn.backend_name() == "SQLite" {
        sqlx::Connection::begin_with(conn, "BEGIN IMMEDIATE").await
    } else {
        sqlx::Connection::begin(conn).await
    }
}

/// `sqlite::memory:` and `mode=memory` databases live in their connection: a reader would open
/// a database of its own.
fn is_in_memory(url: &str) -> bool {
    url.contains(":memory:") || url.contains("mode=memory")
}

/// The read-only connections of a SQLite database, opened when first needed (after the
/// writer has created and migrated the file). `query_only` makes a write through them an
/// error instead of a second writer.
fn sqlite_readers(pool_size: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(pool_size.max(1))
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute("PRAGMA busy_timeout = 5000; PRAGMA query_only = ON;").await?;
                Ok(())
            })
        })
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

/// Migrations given as a list, to combine the platform's with a service's.
#[derive(Debug)]
struct Migrations(Vec<Migration>);

impl sqlx::migrate::MigrationSource<'static> for Migrations {
    fn resolve(self) -> futures::future::BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>> {
        Box::pin(async move { Ok(self.0) })
    }
}

/// A UUID stored as `TEXT` (the portable way ids are stored), read from `column`.
pub fn uuid_column(row: &sqlx::any::AnyRow, column: &str) -> Result<uuid::Uuid, sqlx::Error> {
    use sqlx::Row;
    let text: String = row.try_get(column)?;
    uuid::Uuid::parse_str(&text)
        .map_err(|err| sqlx::Error::ColumnDecode { index: column.to_owned(), source: err.into() })
}
