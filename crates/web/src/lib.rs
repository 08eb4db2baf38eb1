//! The web service. (Being written.)

use axum::Router;
use platform::service::{Context, Service};

/// The web service's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct WebSettings {}

/// Starts the web service. Its router is the fallback for every path outside `/api`.
pub async fn start(_ctx: &Context, _settings: &WebSettings) -> anyhow::Result<Service> {
    Ok(Service { name: "web", router: Router::new(), checks: Vec::new(), tasks: Vec::new() })
}
