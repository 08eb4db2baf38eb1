//! The orders service: buyers order tickets, which reserves them for a window, and cancel
//! orders; expirations cancel and payments complete them.
//!
//! Orders owns the `orders` table and publishes `order:created` / `order:cancelled` /
//! `order:completed` through its outbox. It knows tickets only from the tickets service's
//! events, kept in its `tickets` replica ([`events`]). Exactly one live order per ticket holds,
//! even across instances, because the database enforces it with a partial unique index.

mod domain;
pub mod events;
mod routes;
mod store;

use std::sync::Arc;

use contract::money::Currency;
use httpkit::http::Service;
use platform::bus::dyn_handler;
use platform::clock::Clock;
use platform::consumer::Consumer;
use platform::db::Db;
use platform::outbox::OutboxWaker;
use platform::service::Context;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The service's name: its database schema (or file) and its consumer group.
pub const NAME: &str = "orders";

/// The orders service's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct OrdersSettings {
    /// How long an order reserves its ticket before it expires unpaid, in seconds.
    #[arg(long, env = "ORDER_EXPIRATION_SECONDS", default_value_t = 900, value_parser = clap::value_parser!(u32).range(1..))]
    pub order_expiration_seconds: u32,
}

pub(crate) struct AppState {
    db: Db,
    outbox: OutboxWaker,
    currency: Currency,
    expiration_millis: i64,
    /// What `expiresAt` is counted from.
    clock: Clock,
}

/// Starts the orders service: its database, outbox relay, event consumer and routes.
pub async fn start(ctx: &Context, settings: &OrdersSettings) -> anyhow::Result<Service> {
    let db = ctx.database(NAME, &MIGRATOR).await?;
    let (outbox, relay) = ctx.start_outbox_relay(&db);
    let consumer = Consumer::new(NAME, db.clone(), events::TicketExpirationAndPaymentEvents, Some(outbox.clone()));
    let subscriber = ctx.bus.subscribe(NAME, events::KINDS, dyn_handler(consumer), ctx.shutdown.clone()).await?;
    let state = Arc::new(AppState {
        db: db.clone(),
        outbox,
        currency: Currency::new(&ctx.settings.currency),
        expiration_millis: i64::from(settings.order_expiration_seconds) * 1000,
        clock: ctx.clock.clone(),
    });
    let (api, _) = api().split_for_parts();
    let api = api.with_state(state);
    Ok(ctx.service(NAME, api, &db, vec![relay, subscriber, ctx.start_retention(&db, &[])]))
}

/// The service's routes and their documentation, from one list: a route cannot exist without
/// its description in the spec.
fn api() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(routes::list_orders, routes::create_order))
        .routes(routes!(routes::show_order, routes::cancel_order))
}

/// The OpenAPI description of this service's routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}
