//! A database of the test's own on the PostgreSQL server of `TEST_DATABASE_URL`, dropped at
//! the end (also when the test fails), and a sampler of how many connections it has.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;

use crate::process::required_env;

pub struct TestDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let admin_url = required_env("TEST_DATABASE_URL");
        let name = format!("ticketing_cluster_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.expect("cannot connect to TEST_DATABASE_URL");
        sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("CREATE DATABASE");
        let _ = admin.close().await;
        let url = match admin_url.split_once('?') {
            Some((base, query)) => format!("{}/{name}?{query}", base.rsplit_once('/').expect("database in URL").0),
            None => format!("{}/{name}", admin_url.rsplit_once('/').expect("TEST_DATABASE_URL must name a database").0),
        };
        Self { name, url, admin_url }
    }

    /// Connections to this database now.
    pub async fn connections(admin: &mut sqlx::PgConnection, name: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1").bind(name).fetch_one(admin).await
    }

    /// Samples the connection count every `every` until `stop`; the peak is in the result.
    pub async fn sample_connections(&self, every: Duration, stop: CancellationToken) -> ConnectionSampler {
        let peak = Arc::new(AtomicI64::new(0));
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await.expect("admin connection");
        let name = self.name.clone();
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            let mut samples = 0u64;
            loop {
                if let Ok(count) = Self::connections(&mut admin, &name).await {
                    seen.fetch_max(count, Ordering::Relaxed);
                    samples += 1;
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(every) => {}
                }
            }
            let _ = admin.close().await;
            samples
        });
        ConnectionSampler { peak, task }
    }
}

pub struct ConnectionSampler {
    peak: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<u64>,
}

impl ConnectionSampler {
    /// Waits for the sampler to stop; returns (peak, samples taken).
    pub async fn finish(self) -> (i64, u64) {
        let samples = self.task.await.expect("sampler task");
        (self.peak.load(Ordering::Relaxed), samples)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside async code too (a panic): use a thread with its own runtime.
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
                sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}
