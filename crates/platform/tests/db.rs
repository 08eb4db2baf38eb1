//! The service database: TLS when the URL asks for it, migrations that tolerate company.

use platform::db::Db;
use sqlx::migrate::Migrator;

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
