//! The payments service. (Being written.)

use axum::Router;
use platform::service::{Context, Service};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The payments service's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct PaymentsSettings {}

/// Starts the payments service.
pub async fn start(ctx: &Context, _settings: &PaymentsSettings) -> anyhow::Result<Service> {
    let db = ctx.database("payments", &MIGRATOR).await?;
    Ok(Service { name: "payments", router: ctx.api_router(Router::new()), checks: ctx.readiness(&db), tasks: Vec::new() })
}

/// The OpenAPI description of this service's routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    utoipa::openapi::OpenApiBuilder::new().build()
}
