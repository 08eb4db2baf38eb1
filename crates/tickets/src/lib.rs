//! The tickets service: sellers list tickets for sale and edit them; a ticket is locked while
//! an order holds it, and gone from the list for good once sold.
//!
//! Tickets owns the `tickets` table and publishes `ticket:created` / `ticket:updated` through
//! its outbox. It learns about orders only from the orders service's events ([`events`]),
//! which it applies to its `known_orders` replica with the version rule, so a reservation,
//! release or sale is applied exactly once and in the order it happened.

mod domain;
pub mod events;
mod routes;
mod store;

use std::sync::Arc;

use contract::money::Currency;
use httpkit::http::Service;
use platform::bus::dyn_handler;
use platform::consumer::Consumer;
use platform::db::Db;
use platform::outbox::OutboxWaker;
use platform::service::Context;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The service's name: its database schema (or file) and its consumer group.
pub const NAME: &str = "tickets";

/// The tickets service's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TicketsSettings {
    /// Tickets one user may list in any hour (0: unlimited). Counted in the tickets database,
    /// so it holds across instances.
    #[arg(long, env = "TICKET_CREATIONS_PER_USER_PER_HOUR", default_value_t = 100)]
    pub ticket_creations_per_user_per_hour: u32,
}

pub(crate) struct AppState {
    db: Db,
    outbox: OutboxWaker,
    currency: Currency,
    creation_limit: domain::CreationLimit,
}

/// Starts the tickets service: its database, outbox relay, order-event consumer and routes.
pub async fn start(ctx: &Context, settings: &TicketsSettings) -> anyhow::Result<Service> {
    let db = ctx.database(NAME, &MIGRATOR).await?;
    let filled = store::fill_missing_search_keys(&mut *db.pool.acquire().await?).await?;
    if filled > 0 {
        tracing::info!(filled, "filled in the search keys of tickets listed before title search");
    }
    let (outbox, relay) = ctx.start_outbox_relay(&db);
    let consumer = Consumer::new(NAME, db.clone(), events::OrderEvents, Some(outbox.clone()));
    let subscriber = ctx.bus.subscribe(NAME, events::KINDS, dyn_handler(consumer), ctx.shutdown.clone()).await?;
    let state = Arc::new(AppState {
        db: db.clone(),
        outbox,
        currency: Currency::new(&ctx.settings.currency),
        creation_limit: domain::CreationLimit { per_hour: settings.ticket_creations_per_user_per_hour },
    });
    let (api, _) = api().split_for_parts();
    let api = api.with_state(state);
    Ok(ctx.service(NAME, api, &db, vec![relay, subscriber, ctx.start_retention(&db, &[])]))
}

/// The service's routes and their documentation, from one list: a route cannot exist without
/// its description in the spec.
fn api() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(routes::list_tickets, routes::create_ticket))
        .routes(routes!(routes::show_ticket, routes::update_ticket))
}

/// The OpenAPI description of this service's routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}
