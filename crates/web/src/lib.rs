//! The web service: the marketplace's pages, rendered on the server.
//!
//! It owns no data. Every page is built from the public HTTP API (`api`), called with the
//! visitor's own session cookie, so this service runs beside the API in one process or in a
//! process of its own (`API_URL`). In `ticketing serve` its router is the fallback for every
//! path outside `/api`.
//!
//! Pages are plain HTML forms that work without CSS or JavaScript; the only scripts are the
//! countdown on an order's page and, when `STRIPE_PUBLISHABLE_KEY` is set, Stripe's card
//! element. Every POST carries a CSRF token (`csrf`). Static assets (`assets`) have their
//! content hash in their URL and are cached for a year.

mod api;
mod assets;
mod csrf;
mod form;
mod pages;
mod routes;
mod visitor;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{any, get, post};
use contract::money::Currency;
use httpkit::http::Service;
use httpkit::session::SessionKeys;
use httpkit::settings::Settings;

/// The web service's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct WebSettings {
    /// Base URL of the public API the pages call [default: this server's own address].
    #[arg(long, env = "API_URL")]
    pub api_url: Option<String>,

    /// How long a page waits for one API call, in seconds.
    #[arg(long, env = "API_TIMEOUT_SECONDS", default_value_t = 10)]
    pub api_timeout_seconds: u64,

    /// Stripe publishable key (pk_...). With it the pay form uses Stripe's card element;
    /// without it the form offers the sandbox's test cards.
    #[arg(long, env = "STRIPE_PUBLISHABLE_KEY")]
    pub stripe_publishable_key: Option<String>,
}

/// Everything the pages need, resolved: what [`start`] derives from the settings, and what
/// tests build directly.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Base URL of the API, without a trailing slash.
    pub api_url: String,
    pub api_timeout: Duration,
    pub currency: Currency,
    pub stripe_publishable_key: Option<String>,
    /// Who a visitor is (trusted proxies), and the key that signs it for the API.
    pub addresses: httpkit::client_addr::ClientAddresses,
    /// Largest form accepted, in bytes.
    pub max_body_bytes: usize,
}

impl WebConfig {
    pub fn new(settings: &Settings, web: &WebSettings, keys: Arc<SessionKeys>) -> Self {
        Self {
            api_url: web.api_url.clone().unwrap_or_else(|| own_url(settings.addr)),
            api_timeout: Duration::from_secs(web.api_timeout_seconds.max(1)),
            currency: Currency::new(&settings.currency),
            stripe_publishable_key: web.stripe_publishable_key.clone().filter(|key| !key.trim().is_empty()),
            addresses: httpkit::client_addr::ClientAddresses::from_settings(settings, keys),
            max_body_bytes: settings.max_body_bytes,
        }
    }
}

/// `http://` and the address this server is bound to, reachable from itself: a wildcard
/// address becomes the loopback address of its family.
fn own_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Starts the web service. Its router is the fallback for every path outside `/api`. It keeps
/// no data and sends no events, so it starts from the process's settings and session keys
/// alone, not from a `platform` context (and links no database or bus).
pub async fn start(settings: &Settings, keys: Arc<SessionKeys>, web: &WebSettings) -> anyhow::Result<Service> {
    let config = WebConfig::new(settings, web, keys);
    tracing::info!(api_url = %config.api_url, stripe = config.stripe_publishable_key.is_some(), "web pages call the API");
    Ok(Service { name: "web", router: router(config)?, checks: Vec::new(), tasks: Vec::new() })
}

/// The pages, the assets and their layers, ready to be the app's fallback.
pub fn router(config: WebConfig) -> anyhow::Result<Router> {
    let csrf_config = csrf::CsrfConfig { max_body_bytes: config.max_body_bytes, keys: config.addresses.keys().clone() };
    let api =
        api::Api::new(&config.api_url, config.api_timeout, config.addresses.clone()).context("invalid API_URL")?;
    let headers = Arc::new(pages::SecurityHeaders::new(config.stripe_publishable_key.is_some()));
    let web = Arc::new(routes::Web {
        api,
        currency: config.currency,
        stripe_publishable_key: config.stripe_publishable_key,
        addresses: config.addresses,
    });
    // Fail at start, not on the first visit, if a template does not parse.
    pages::check_templates()?;

    let pages = Router::new()
        .route("/", get(routes::home::list_tickets))
        .route("/auth/signup", get(routes::auth::show_sign_up).post(routes::auth::sign_up))
        .route("/auth/signin", get(routes::auth::show_sign_in).post(routes::auth::sign_in))
        .route("/auth/signout", get(routes::auth::show_sign_out).post(routes::auth::sign_out))
        .route("/tickets/new", get(routes::tickets::new_ticket).post(routes::tickets::create_ticket))
        .route("/tickets/{id}", get(routes::tickets::show_ticket))
        .route("/tickets/{id}/edit", get(routes::tickets::edit_ticket).post(routes::tickets::update_ticket))
        .route("/tickets/{id}/purchase", post(routes::tickets::purchase_ticket))
        .route("/orders", get(routes::orders::list_orders))
        .route("/orders/{id}", get(routes::orders::show_order))
        .route("/orders/{id}/pay", post(routes::orders::pay_order))
        .route("/orders/{id}/cancel", post(routes::orders::cancel_order))
        // Only matched routes: an unknown path is a 404 whatever its method, not a 403.
        .route_layer(middleware::from_fn_with_state(csrf_config, csrf::protect))
        .method_not_allowed_fallback(routes::method_not_allowed)
        .with_state(web);

    Ok(Router::new()
        .route(
            "/assets/{file}",
            get(|axum::extract::Path(file): axum::extract::Path<String>, headers: axum::http::HeaderMap| async move {
                assets::serve(&file, &headers).unwrap_or_else(pages::not_found_page)
            }),
        )
        // In a process without the API, its paths still answer in the API's language.
        .route("/api", any(httpkit::error::not_found))
        .route("/api/{*rest}", any(httpkit::error::not_found))
        .merge(pages)
        .fallback(routes::not_found)
        .layer(middleware::from_fn_with_state(headers, pages::security_headers))
        .layer(DefaultBodyLimit::max(config.max_body_bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_api_url_is_this_server_reachable_from_itself() {
        assert_eq!(own_url("127.0.0.1:3000".parse().unwrap()), "http://127.0.0.1:3000");
        assert_eq!(own_url("0.0.0.0:8080".parse().unwrap()), "http://127.0.0.1:8080");
        assert_eq!(own_url("[::]:8080".parse().unwrap()), "http://[::1]:8080");
        assert_eq!(own_url("10.1.2.3:80".parse().unwrap()), "http://10.1.2.3:80");
    }
}
