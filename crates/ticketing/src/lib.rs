//! Composes the services into one HTTP server: all of them (the embedded default) or the
//! ones named on the command line (one service per process in a cluster).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use platform::bus::embedded::EmbeddedBus;
use platform::bus::nats::NatsBus;
use platform::bus::{EventBus, RetryPolicy};
use platform::service::{Context, Service};
use platform::session::SessionKeys;
use platform::settings::Settings;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The services this binary can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceName {
    Auth,
    Tickets,
    Orders,
    Expiration,
    Payments,
    Web,
}

impl ServiceName {
    pub const ALL: &[ServiceName] = &[
        ServiceName::Auth,
        ServiceName::Tickets,
        ServiceName::Orders,
        ServiceName::Expiration,
        ServiceName::Payments,
        ServiceName::Web,
    ];
}

/// `ticketing serve`: every setting, from flags or the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Services to run in this process; all of them when none is named.
    #[arg(value_enum)]
    pub services: Vec<ServiceName>,

    #[command(flatten)]
    pub settings: Settings,

    #[command(flatten)]
    pub auth: auth::AuthSettings,

    #[command(flatten)]
    pub tickets: tickets::TicketsSettings,

    #[command(flatten)]
    pub orders: orders::OrdersSettings,

    #[command(flatten)]
    pub expiration: expiration::ExpirationSettings,

    #[command(flatten)]
    pub payments: payments::PaymentsSettings,

    #[command(flatten)]
    pub web: web::WebSettings,
}

/// A running marketplace (or part of one).
pub struct Running {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops accepting requests, finishes in-flight ones, stops background loops.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Runs until the shutdown token is cancelled (by a signal or [`Running::stop`]).
    pub async fn wait(self) -> anyhow::Result<()> {
        let served = self.server.await.context("HTTP server task failed")?;
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        served.context("HTTP server failed")
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

async fn connect_bus(settings: &Settings) -> anyhow::Result<Arc<dyn EventBus>> {
    let policy = RetryPolicy::default();
    Ok(match &settings.nats_url {
        Some(url) => Arc::new(NatsBus::connect(url, &settings.nats_stream, &settings.subject_prefix, policy).await?),
        None => {
            platform::settings::create_private_dir(&settings.data_dir)?;
            Arc::new(EmbeddedBus::open(&settings.data_dir.join("bus.db"), &settings.subject_prefix, policy).await?)
        }
    })
}

/// Starts the requested services and serves them on `args.settings.addr`.
pub async fn start(args: ServeArgs) -> anyhow::Result<Running> {
    let mut settings = args.settings.clone();
    // Bind first: services (the web pages calling the API) need the real address when the
    // setting asked for port 0.
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.addr))?;
    let addr = listener.local_addr()?;
    settings.addr = addr;
    let keys =
        Arc::new(SessionKeys::new(&settings.session_secret()?, time::Duration::seconds(settings.session_ttl_seconds)));
    let shutdown = CancellationToken::new();
    let bus = connect_bus(&settings).await?;
    let ctx = Context { settings: settings.clone(), keys, bus, shutdown: shutdown.clone() };

    let names: Vec<ServiceName> =
        if args.services.is_empty() { ServiceName::ALL.to_vec() } else { args.services.clone() };
    let serves_api = names.iter().any(|name| !matches!(name, ServiceName::Web | ServiceName::Expiration));
    if names.contains(&ServiceName::Web) && !serves_api && args.web.api_url.is_none() {
        tracing::warn!(
            "the web pages run without the API in this process and API_URL is not set: they will call themselves and find nothing"
        );
    }
    let mut services: Vec<Service> = Vec::new();
    for name in &names {
        let service = match name {
            ServiceName::Auth => auth::start(&ctx, &args.auth).await,
            ServiceName::Tickets => tickets::start(&ctx, &args.tickets).await,
            ServiceName::Orders => orders::start(&ctx, &args.orders).await,
            ServiceName::Expiration => expiration::start(&ctx, &args.expiration).await,
            ServiceName::Payments => payments::start(&ctx, &args.payments).await,
            ServiceName::Web => web::start(&ctx, &args.web).await,
        };
        services.push(service.with_context(|| format!("cannot start the {name:?} service"))?);
    }

    let mut app = Router::new();
    let mut checks = Vec::new();
    let mut tasks = Vec::new();
    for service in services {
        app = app.merge(service.router);
        checks.extend(service.checks);
        tasks.extend(service.tasks);
    }
    if names.iter().any(|name| *name != ServiceName::Web) {
        let spec = openapi(&names);
        app = app.route("/api/docs/openapi.json", axum::routing::get(move || async move { axum::Json(spec) }));
    }
    // The web pages, when served here, answer every unknown path (with the envelope under
    // /api); without them, unknown paths get the envelope.
    if !names.contains(&ServiceName::Web) {
        app = app.fallback(platform::error::not_found);
    }
    let app = platform::http::with_observability(app, checks);

    let stop = shutdown.clone();
    let server = tokio::spawn(platform::http::serve(listener, app, async move { stop.cancelled().await }));
    tracing::info!(
        %addr,
        services = ?names,
        storage = if settings.database_url.is_some() { "postgres" } else { "sqlite" },
        bus = if settings.nats_url.is_some() { "nats" } else { "embedded" },
        "ticketing is serving http://{addr}"
    );
    Ok(Running { addr, shutdown, server, tasks })
}

/// The OpenAPI description of the API this process serves, assembled from each service's
/// annotated handlers, so it cannot drift from the code.
pub fn openapi(names: &[ServiceName]) -> utoipa::openapi::OpenApi {
    let mut spec = utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("ticketing")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "A ticket resale marketplace. Errors use the envelope \
                     `{\"errors\":[{\"message\":\"...\",\"field\":\"...\"}]}`. Sessions are a JWT in the \
                     `session` cookie or an `Authorization: Bearer` header.",
                ))
                .build(),
        )
        .build();
    for name in names {
        let part = match name {
            ServiceName::Auth => auth::openapi(),
            ServiceName::Tickets => tickets::openapi(),
            ServiceName::Orders => orders::openapi(),
            ServiceName::Expiration => expiration::openapi(),
            ServiceName::Payments => payments::openapi(),
            ServiceName::Web => continue,
        };
        spec.merge(part);
    }
    spec
}
