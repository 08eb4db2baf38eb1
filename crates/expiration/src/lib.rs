//! The expiration service: ends reservations that were not paid in time.
//!
//! It keeps one durable timer per live order ([`timers`], its table in [`store`]), started by `order:created` and
//! dropped by `order:cancelled` / `order:completed` ([`events`]). When an order's `expiresAt`
//! passes, the timer fires `expiration:complete` through the outbox, once, even with several
//! instances running and even if the window ended while the service was down; orders then
//! cancels the order if it is still unpaid. Expiration has no HTTP API of its own.
//!
//! A timer never fires before `expiresAt` on the settings' clock (the system's, or a test's
//! [`platform::clock::ManualClock`], whose moves wake the loop). It fires within a few milliseconds after when
//! the loop was sleeping on it, and within `EXPIRATION_POLL_MILLIS` when another instance
//! scheduled it (or after a restart).
//!
//! An `order:created` that arrives after its own `order:cancelled` (possible after a failed
//! delivery) still starts a timer; it fires for an order that is no longer live, which
//! orders ignores, as it must for any late `expiration:complete`.

pub mod events;
pub mod store;
pub mod timers;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use httpkit::http::Service;
use platform::bus::dyn_handler;
use platform::consumer::Consumer;
use platform::service::Context;

pub use timers::{TimerLoop, TimerWaker};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The service's name: its schema or database file, consumer group and consumer.
pub const NAME: &str = "expiration";

/// The expiration service's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ExpirationSettings {
    /// Longest the timer loop sleeps before looking for due timers again, in milliseconds.
    /// Timers this instance scheduled wake it at once; this bounds how late a timer scheduled
    /// by another instance (or before a restart) fires.
    #[arg(long, env = "EXPIRATION_POLL_MILLIS", default_value_t = 1000)]
    pub expiration_poll_millis: u64,
}

/// Starts the expiration service: its database, outbox relay, order consumer and timer loop.
pub async fn start(ctx: &Context, settings: &ExpirationSettings) -> anyhow::Result<Service> {
    let db = ctx.database(NAME, &MIGRATOR).await?;
    let (outbox, relay) = ctx.start_outbox_relay(&db);
    let clock = ctx.clock.clone();
    let timers =
        TimerLoop::new(db.clone(), outbox.clone(), clock, Duration::from_millis(settings.expiration_poll_millis));
    let handler = events::WakeTimersAfter {
        consumer: Consumer::new(NAME, db.clone(), events::OrderEvents, Some(outbox)),
        timers: timers.waker(),
    };
    let consumer = ctx.bus.subscribe(NAME, events::KINDS, dyn_handler(Arc::new(handler)), ctx.shutdown.clone()).await?;
    let timer_loop = timers.spawn(ctx.shutdown.clone());
    sample_due_timers(ctx, &db);
    let tasks = vec![relay, consumer, timer_loop, ctx.start_retention(&db, &[store::ENDED_TIMERS])];
    Ok(ctx.service(NAME, Router::new(), &db, tasks))
}

/// Counts, at each scrape, the timers that are due and not fired yet.
fn sample_due_timers(ctx: &Context, db: &platform::db::Db) {
    let db = db.clone();
    let clock = ctx.clock.clone();
    httpkit::metrics::sample_with(ctx.shutdown.clone(), move || {
        let db = db.clone();
        let now = clock.now_millis();
        Box::pin(async move {
            let due = async { store::due_count(&mut *db.pool.acquire().await?, now).await };
            let due: Result<i64, sqlx::Error> = due.await;
            match due {
                Ok(due) => {
                    httpkit::metrics::metrics().timers_due.set(due);
                }
                Err(err) => tracing::debug!(error = %err, "cannot count due timers"),
            }
        })
    });
}

/// The OpenAPI description of this service's routes: it has none.
pub fn openapi() -> utoipa::openapi::OpenApi {
    utoipa::openapi::OpenApiBuilder::new().build()
}
