//! The service database: TLS when the URL asks for it, migrations that tolerate company,
//! readers beside the writer.

use platform::db::Db;
use sqlx::migrate::Migrator;
use testkit::{Backend, TempDir};

/// `sslmode=require` in `DATABASE_URL` gives an encrypted connection (rustls), as a managed
/// PostgreSQL that refuses plain connections needs.
#[tokio::test]
async fn sslmode_require_connects_over_tls() {
    let url = testkit::fresh_postgres_url().await;
    let tls_url = format!("{url}{}sslmode=require", if url.contains('?') { '&' } else { '?' });
    let db = Db::connect_with(&tls_url, &testkit::unique_name("tls"), &Migrator::DEFAULT, 1)
        .await
        .expect("connects with sslmode=require (the test PostgreSQL has ssl = on)");
    let encrypted: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&db.pool)
        .await
        .expect("pg_stat_ssl");
    assert!(encrypted, "the connection is not encrypted");
    db.pool.close().await;
}

/// Instances of different services starting together on an empty database all migrate: the
/// schemas and the platform tables are created under one advisory lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_migrating_at_once_on_an_empty_database_all_succeed() {
    let url = testkit::fresh_postgres_url().await;
    let services: Vec<String> = (0..6).map(|n| format!("svc{}", n % 3)).collect();
    let connects = services.iter().map(|service| Db::connect_with(&url, service, &Migrator::DEFAULT, 1));
    for (service, db) in services.iter().zip(futures::future::join_all(connects).await) {
        let db = db.unwrap_or_else(|err| panic!("{service} did not start: {err:#}"));
        let outbox: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox").fetch_one(&db.pool).await.unwrap();
        assert_eq!(outbox, 0);
        db.pool.close().await;
    }
}

testkit::on_both_backends!(reads_and_writes_do_not_wait_for_each_other);

/// A `Db` on `backend`: a SQLite file in `dir`, or a fresh PostgreSQL database.
async fn database(backend: Backend, dir: &TempDir) -> Db {
    let url = match backend {
        Backend::Embedded => platform::db::database_url(None, dir.path(), "reads"),
        Backend::Distributed => testkit::fresh_postgres_url().await,
    };
    Db::connect_with(&url, &testkit::unique_name("reads"), &Migrator::DEFAULT, 2).await.expect("connects")
}

async fn parked(executor: impl sqlx::any::AnyExecutor<'_>) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM parked_events").fetch_one(executor).await.expect("counts")
}

async fn park(tx: &mut platform::db::Tx, event_id: &str) {
    sqlx::query(
        "INSERT INTO parked_events (consumer, event_id, kind, payload, reason, parked_at) \
         VALUES ('test', $1, 'test:event', '{}', 'test', 0)",
    )
    .bind(event_id)
    .execute(&mut **tx)
    .await
    .expect("inserts");
}

/// Issue 12: on SQLite one connection served readers and writers, so a long read held up
/// every write (and a write every read). Each step below would wait for the other side's
/// connection, then fail after the pool's acquire timeout, if they still shared one.
async fn reads_and_writes_do_not_wait_for_each_other(backend: Backend) {
    let dir = TempDir::new();
    let db = database(backend, &dir).await;

    // A read transaction stays open (a long list read) while a write commits.
    let mut read = db.reader().begin().await.expect("read transaction");
    assert_eq!(parked(&mut *read).await, 0);
    let mut write = db.begin().await.expect("write transaction");
    park(&mut write, "first").await;
    write.commit().await.expect("the write commits while the read is open");
    if backend == Backend::Embedded {
        // The read goes on with the snapshot it started with.
        assert_eq!(parked(&mut *read).await, 0);
    }
    read.commit().await.expect("read ends");
    // Every later read sees the committed write.
    assert_eq!(parked(db.reader()).await, 1);

    // A write transaction stays open while reads answer, with what was committed.
    let mut write = db.begin().await.expect("write transaction");
    park(&mut write, "second").await;
    assert_eq!(parked(db.reader()).await, 1);
    write.commit().await.expect("commits");
    assert_eq!(parked(db.reader()).await, 2);

    if backend == Backend::Embedded {
        // Readers are read-only: a write through them cannot become a second writer.
        let refused = sqlx::query("DELETE FROM parked_events").execute(db.reader()).await;
        assert!(refused.is_err(), "a reader wrote");
        assert_eq!(parked(db.reader()).await, 2);
    }
    db.close().await;
}

/// A write transaction on SQLite takes the write lock when it begins (`BEGIN IMMEDIATE`), not
/// at its first write: a deferred one that read first could fail with `SQLITE_BUSY` when
/// another connection (another process) wrote meanwhile. Shown with a second connection that
/// does not wait for locks: while our transaction is open, before any statement, it cannot
/// take the lock; afterwards it can.
#[tokio::test]
async fn sqlite_write_transactions_take_the_write_lock_up_front() {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
    use sqlx::{ConnectOptions, Connection, Executor};

    let dir = TempDir::new();
    let db = database(Backend::Embedded, &dir).await;
    let url = platform::db::database_url(None, dir.path(), "reads");
    let mut other: SqliteConnection = url
        .parse::<SqliteConnectOptions>()
        .expect("SQLite URL")
        .busy_timeout(std::time::Duration::ZERO)
        .connect()
        .await
        .expect("second connection");

    let write = db.begin().await.expect("write transaction");
    let busy = other.execute("BEGIN IMMEDIATE").await.expect_err("the lock is taken");
    assert!(busy.to_string().contains("locked"), "{busy}");
    write.rollback().await.expect("rolls back");

    other.execute("BEGIN IMMEDIATE").await.expect("the lock is free again");
    other.execute("ROLLBACK").await.expect("rolls back");
    other.close().await.expect("closes");
    db.close().await;
}
