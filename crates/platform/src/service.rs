//! How a service that keeps data plugs into the binary: it gets a [`Context`] and returns an
//! [`httpkit::http::Service`]. (The web pages keep no data: they start from the settings and
//! keys alone, without a context.)
//!
//! The binary is thin: it builds one context (settings, session keys, bus, shutdown
//! signal), starts the services it was asked for, merges their routers into one HTTP
//! server, and waits for their background tasks after shutdown. The same service code runs
//! alone in its own process or beside all the others in one.

use std::sync::Arc;

use axum::Router;
use httpkit::http::{ReadinessCheck, Service};
use httpkit::metrics::{GroupLabels, PoolLabels, ServiceLabels, metrics};
use httpkit::session::SessionKeys;
use httpkit::settings::Settings;
use sqlx::migrate::Migrator;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::EventBus;
use crate::db::{Db, database_url};
use crate::outbox::{OutboxRelay, OutboxWaker};
use crate::retention::{RETENTION_EVERY, Retention, Sweep};
use crate::worker::Worker;

/// What every service is started with.
#[derive(Clone)]
pub struct Context {
    pub settings: Settings,
    pub keys: Arc<SessionKeys>,
    pub bus: Arc<dyn EventBus>,
    pub shutdown: CancellationToken,
    /// The clock reservation windows are measured on: the system's, unless a test moves its own.
    pub clock: crate::clock::Clock,
}

impl Context {
    /// The service's own database, migrated.
    pub async fn database(&self, service: &str, migrator: &Migrator) -> anyhow::Result<Db> {
        let url = database_url(self.settings.database_url.as_deref(), &self.settings.data_dir, service);
        if url.starts_with("sqlite:") {
            httpkit::settings::create_private_dir(&self.settings.data_dir)?;
        }
        let pool_size = self.settings.database_pool_per_service.unwrap_or(crate::db::DEFAULT_POOL_SIZE);
        let db = Db::connect_with(&url, service, migrator, pool_size).await?;
        // Its pool, outbox backlog and parked events are sampled at each scrape.
        sample_database(self.shutdown.clone(), service, &db);
        Ok(db)
    }

    /// Wraps a service's API routes with sessions (checked against the revoked sessions in
    /// `db`, the service's own database), the error envelope and body limits.
    pub fn api_router(&self, api: Router, db: &Db) -> Router {
        let revocations = Arc::new(crate::revocation::RevokedSessions::new(db));
        httpkit::http::service_router(api, self.keys.clone(), revocations, self.settings.max_body_bytes)
    }

    /// A service that keeps its data in `db`: `api` behind [`Context::api_router`], ready as
    /// [`Context::readiness`] says, and `tasks` waited for after shutdown.
    pub fn service(&self, name: &'static str, api: Router, db: &Db, tasks: Vec<JoinHandle<()>>) -> Service {
        Service { name, router: self.api_router(api, db), checks: self.readiness(db), tasks }
    }

    /// Starts the service's outbox relay; wake it after committing events.
    pub fn start_outbox_relay(&self, db: &Db) -> (OutboxWaker, JoinHandle<()>) {
        let waker = OutboxWaker::default();
        let task = OutboxRelay::new(db.clone(), self.bus.clone()).spawn(waker.clone(), self.shutdown.clone());
        (waker, task)
    }

    /// Starts the deletion of `db`'s old rows: processed-event ids and what `sweeps` name after
    /// `RETENTION_DAYS`, revoked sessions once expired (see [`crate::retention`]).
    pub fn start_retention(&self, db: &Db, sweeps: &[Sweep]) -> JoinHandle<()> {
        let job = Retention::new(db.clone(), self.settings.retention(), sweeps);
        Worker::new(job)
            .poll_every(RETENTION_EVERY)
            .max_backoff(std::time::Duration::from_secs(60))
            .spawn(self.shutdown.clone())
    }

    /// Readiness of a service that uses the bus: ready while its database answers; the bus's
    /// state is reported beside it, since its events wait in the outbox meanwhile.
    pub fn readiness(&self, db: &Db) -> Vec<ReadinessCheck> {
        let bus = self.bus.clone();
        let mut checks = Self::database_readiness(db);
        checks.push(ReadinessCheck {
            name: "bus",
            required: false,
            probe: Arc::new(move || {
                let bus = bus.clone();
                Box::pin(async move { bus.check().await.map_err(anyhow::Error::from) })
            }),
        });
        checks
    }

    /// Readiness of a service that needs only its database (auth).
    pub fn database_readiness(db: &Db) -> Vec<ReadinessCheck> {
        let db = db.clone();
        vec![ReadinessCheck {
            name: "database",
            required: true,
            probe: Arc::new(move || {
                let db = db.clone();
                Box::pin(async move { db.check().await.map_err(anyhow::Error::from) })
            }),
        }]
    }
}

/// Samples the database-backed gauges of `service`'s database at each scrape: pool, outbox
/// backlog, parked events.
fn sample_database(until: CancellationToken, service: &str, db: &Db) {
    let service = service.to_owned();
    let db = db.clone();
    httpkit::metrics::sample_with(until, move || {
        let service = service.clone();
        let db = db.clone();
        Box::pin(async move {
            let m = metrics();
            let size = i64::from(db.pool.size());
            let idle = db.pool.num_idle() as i64;
            m.db_pool_connections.get_or_create(&PoolLabels { service: service.clone(), state: "idle" }).set(idle);
            m.db_pool_connections
                .get_or_create(&PoolLabels { service: service.clone(), state: "in_use" })
                .set((size - idle).max(0));
            m.db_pool_max
                .get_or_create(&ServiceLabels { service: service.clone() })
                .set(i64::from(db.pool.options().get_max_connections()));
            if let Err(err) = sample_tables(&db, &service).await {
                tracing::debug!(%service, error = %err, "cannot sample the outbox and parked events");
            }
        })
    });
}

async fn sample_tables(db: &Db, service: &str) -> Result<(), sqlx::Error> {
    use sqlx::Row;
    let m = metrics();
    let row = sqlx::query("SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox").fetch_one(db.reader()).await?;
    let pending: i64 = row.try_get("n")?;
    let oldest: Option<i64> = row.try_get("oldest")?;
    let labels = ServiceLabels { service: service.to_owned() };
    m.outbox_pending.get_or_create(&labels).set(pending);
    let age = oldest.map_or(0.0, |at| (crate::db::now_millis() - at).max(0) as f64 / 1000.0);
    m.outbox_oldest_age.get_or_create(&labels).set(age);
    let parked: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM parked_events").fetch_one(db.reader()).await?.try_get("n")?;
    m.parked_events.get_or_create(&GroupLabels { group: service.to_owned() }).set(parked);
    Ok(())
}
