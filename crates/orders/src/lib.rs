//! The orders service. (Being written.)

use axum::Router;
use platform::service::{Context, Service};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The orders service's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct OrdersSettings {}

/// Starts the orders service.
pub async fn start(ctx: &Context, _settings: &OrdersSettings) -> anyhow::Result<Service> {
    let db = ctx.database("orders", &MIGRATOR).await?;
    Ok(Service { name: "orders", router: ctx.api_router(Router::new()), checks: ctx.readiness(&db), tasks: Vec::new() })
}

/// The OpenAPI description of this service's routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    utoipa::openapi::OpenApiBuilder::new().build()
}
