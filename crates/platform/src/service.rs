//! How a service plugs into the binary: it gets a [`Context`] and returns a [`Service`].
//!
//! The binary is thin: it builds one context (settings, session keys, bus, shutdown
//! signal), starts the services it was asked for, merges their routers into one HTTP
//! server, and waits for their background tasks after shutdown. The same service code runs
//! alone in its own process or beside all the others in one.

use std::sync::Arc;

use axum::Router;
use sqlx::migrate::Migrator;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::bus::EventBus;
use crate::db::{Db, database_url};
use crate::http::ReadinessCheck;
use crate::outbox::{OutboxRelay, OutboxWaker};
use crate::retention::{RETENTION_EVERY, Retention, Sweep};
use crate::session::SessionKeys;
use crate::settings::Settings;
use crate::worker::Worker;

/// What every service is started with.
#[derive(Clone)]
pub struct Context {
    pub settings: Settings,
    pub keys: Arc<SessionKeys>,
    pub bus: Arc<dyn EventBus>,
    pub shutdown: CancellationToken,
}

/// A started service: its routes, what `/readyz` must check, and its background loops.
pub struct Service {
    pub name: &'static str,
    pub router: Router,
    pub checks: Vec<ReadinessCheck>,
    pub tasks: Vec<JoinHandle<()>>,
}

impl Context {
    /// The service's own database, migrated.
    pub async fn database(&self, service: &str, migrator: &Migrator) -> anyhow::Result<Db> {
        let url = database_url(self.settings.database_url.as_deref(), &self.settings.data_dir, service);
        if url.starts_with("sqlite:") {
            crate::settings::create_private_dir(&self.settings.data_dir)?;
        }
        let pool_size = self.settings.database_pool_per_service.unwrap_or(crate::db::DEFAULT_POOL_SIZE);
        let db = Db::connect_with(&url, service, migrator, pool_size).await?;
        // Its pool, outbox backlog and parked events are sampled at each scrape.
        crate::metrics::sample_database(self.shutdown.clone(), service, &db);
        Ok(db)
    }

    /// Wraps a service's API routes with sessions (checked against the revoked sessions in
    /// `db`, the service's own database), the error envelope and body limits.
    pub fn api_router(&self, api: Router, db: &Db) -> Router {
        crate::http::service_router(api, self.keys.clone(), self.settings.max_body_bytes)
            .layer(crate::revocation::RevokedSessions::layer(db))
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
