//! Composes the services into one HTTP server: all of them (the embedded default) or the
//! ones named on the command line (one service per process in a cluster).

pub mod admin;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::response::IntoResponse;
use httpkit::error::ApiError;
use httpkit::http::{Readiness, ReadinessCheck, Service};
use httpkit::session::SessionKeys;
use httpkit::settings::Settings;
use platform::bus::embedded::{DataDirInUse, EmbeddedBus};
use platform::bus::nats::{NatsBus, NatsConnection, StreamSettings};
use platform::bus::{EventBus, RetryPolicy};
use platform::retention::RETENTION_EVERY;
use platform::service::Context;
use platform::worker::Worker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

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

    /// The clock reservation windows are measured on: the system's, unless a test set its own.
    /// Not a flag.
    #[arg(skip)]
    pub clock: platform::clock::Clock,

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

/// `ticketing migrate`: the services whose migrations to run, and the settings saying where.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// Services to migrate; all of them when none is named.
    #[arg(value_enum)]
    pub services: Vec<ServiceName>,

    #[command(flatten)]
    pub settings: Settings,
}

/// A running marketplace (or part of one).
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when `METRICS_ADDR` is set.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    tasks: Vec<JoinHandle<()>>,
    admin: Option<JoinHandle<std::io::Result<()>>>,
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
        if let Some(admin) = self.admin {
            let _ = admin.await;
        }
        served.context("HTTP server failed")
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// The retry policy of both buses, from the settings.
fn retry_policy(settings: &Settings) -> RetryPolicy {
    RetryPolicy {
        ack_wait: Duration::from_secs(settings.ack_wait_seconds),
        max_batch: usize::from(settings.event_batch_size),
        ..RetryPolicy::default()
    }
}

/// The bus named by the settings, with the loops it runs of its own (the embedded bus's
/// retention). NATS connects in the background (the process runs while it is down); this fails
/// only on settings that cannot work, or when the embedded bus's data dir is held by another
/// process.
async fn connect_bus(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Arc<dyn EventBus>, Vec<JoinHandle<()>>)> {
    let policy = retry_policy(settings);
    let mut tasks = Vec::new();
    let bus: Arc<dyn EventBus> = match &settings.nats_url {
        Some(url) => {
            let mut connection = NatsConnection::to(url);
            connection.creds_file = settings.nats_creds.clone();
            if let Some(user) = &settings.nats_user {
                let password = settings.nats_password()?.unwrap_or_default();
                connection.user_password = Some((user.clone(), password));
            }
            if let Some(path) = &settings.nats_nkey_file {
                let seed = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read NATS_NKEY_FILE {}", path.display()))?;
                connection.nkey_seed = Some(seed.trim().to_owned());
            }
            connection.tls_ca_file = settings.nats_tls_ca_file.clone();
            let stream = StreamSettings {
                name: settings.nats_stream.clone(),
                replicas: settings.nats_stream_replicas as usize,
                max_age: Duration::from_secs(settings.nats_stream_max_age_seconds),
                max_bytes: settings.nats_stream_max_bytes,
                storage: settings.nats_stream_storage,
            };
            Arc::new(NatsBus::start(connection, stream, &settings.subject_prefix, policy).await?)
        }
        None => {
            httpkit::settings::create_private_dir(&settings.data_dir)?;
            let bus = EmbeddedBus::open(&settings.data_dir.join("bus.db"), &settings.subject_prefix, policy).await?;
            if let Some(keep) = settings.retention() {
                tasks.push(Worker::new(bus.retention(keep)).poll_every(RETENTION_EVERY).spawn(shutdown.clone()));
            }
            Arc::new(bus)
        }
    };
    Ok((bus, tasks))
}

/// The services that keep a database, and so share the process's connection budget.
fn uses_database(name: ServiceName) -> bool {
    name != ServiceName::Web
}

/// Starts the requested services and serves them on `args.settings.addr`.
pub async fn start(args: ServeArgs) -> anyhow::Result<Running> {
    start_until(args, CancellationToken::new()).await
}

/// Like [`start`], stopping when `shutdown` is cancelled. The HTTP server answers at once:
/// `/healthz` says the process lives and `/readyz` says "starting" while the services wait for
/// their database and bus, retrying with backoff and saying why in the log, for as long as it
/// takes (or until `shutdown`).
pub async fn start_until(args: ServeArgs, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let mut settings = args.settings.clone();
    // Bind first: services (the web pages calling the API) need the real address when the
    // setting asked for port 0.
    let listener = tokio::net::TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.addr))?;
    let addr = listener.local_addr()?;
    settings.addr = addr;
    // The admin port (metrics) answers from the start too, so a starting process can be watched.
    let (metrics_addr, admin) = match settings.metrics_addr {
        Some(wanted) => {
            let admin_listener = tokio::net::TcpListener::bind(wanted)
                .await
                .with_context(|| format!("cannot listen on METRICS_ADDR {wanted}"))?;
            let bound = admin_listener.local_addr()?;
            let stop = shutdown.clone();
            let app = httpkit::metrics::admin_router();
            (
                Some(bound),
                Some(tokio::spawn(httpkit::http::serve(admin_listener, app, async move { stop.cancelled().await }))),
            )
        }
        None => (None, None),
    };
    let keys =
        Arc::new(SessionKeys::new(&settings.session_secret()?, time::Duration::seconds(settings.session_ttl_seconds)));

    let names: Vec<ServiceName> =
        if args.services.is_empty() { ServiceName::ALL.to_vec() } else { args.services.clone() };
    // Fail closed on a payment gateway configuration error: no retry can fix it.
    if names.contains(&ServiceName::Payments) {
        args.payments.check().context("payments")?;
    }
    let with_database = names.iter().filter(|name| uses_database(**name)).count().max(1) as u32;
    settings.database_pool_per_service = Some(match settings.database_pool_size {
        Some(total) => (total / with_database).max(1),
        None => platform::db::DEFAULT_POOL_SIZE,
    });
    let serves_api = names.iter().any(|name| !matches!(name, ServiceName::Web | ServiceName::Expiration));
    if names.contains(&ServiceName::Web) && !serves_api && args.web.api_url.is_none() {
        tracing::warn!(
            "the web pages run without the API in this process and API_URL is not set: they will call themselves and find nothing"
        );
    }

    // Until the services are up, every route but the health endpoints answers 503.
    let services_app: Arc<OnceLock<Router>> = Arc::default();
    let readiness = Readiness::default();
    let app = {
        let services_app = services_app.clone();
        Router::new().fallback(move |request: axum::extract::Request| {
            let services_app = services_app.get().cloned();
            async move {
                match services_app {
                    Some(app) => app.oneshot(request).await.into_response(),
                    None => ApiError::Starting.into_response(),
                }
            }
        })
    };
    let app = httpkit::http::with_observability(app, readiness.clone());
    let stop = shutdown.clone();
    let server = tokio::spawn(httpkit::http::serve_with_limits(
        listener,
        app,
        async move { stop.cancelled().await },
        httpkit::http::ServeLimits::from_settings(&settings),
    ));

    let mut failures = 0u32;
    let (router, checks, tasks) = loop {
        let attempt = shutdown.child_token();
        let started = tokio::select! {
            () = shutdown.clone().cancelled_owned() => None,
            started = start_services(args.clone(), names.clone(), settings.clone(), keys.clone(), attempt.clone()) => Some(started),
        };
        match started {
            None => {
                attempt.cancel();
                let _ = server.await;
                anyhow::bail!("stopped before the services started");
            }
            Some(Ok(started)) => break started,
            // Another process owns the embedded data dir: retrying cannot help.
            Some(Err(err)) if err.chain().any(|cause| cause.is::<DataDirInUse>()) => {
                attempt.cancel();
                shutdown.cancel();
                let _ = server.await;
                return Err(err);
            }
            Some(Err(err)) => {
                failures += 1;
                let pause = Duration::from_millis(250 * 2u64.pow(failures.min(5))).min(Duration::from_secs(5));
                tracing::warn!(attempt = failures, error = %format!("{err:#}"), retry_in = ?pause, "cannot start the services yet; retrying");
                tokio::select! {
                    () = shutdown.clone().cancelled_owned() => {}
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    };
    let _ = services_app.set(router);
    readiness.started(checks);
    let tasks = tasks.into_iter().map(|(service, task)| readiness.watch(service, task, shutdown.clone())).collect();
    tracing::info!(
        %addr,
        services = ?names,
        storage = if settings.database_url.is_some() { "postgres" } else { "sqlite" },
        bus = if settings.nats_url.is_some() { "nats" } else { "embedded" },
        metrics = ?metrics_addr,
        "ticketing is serving http://{addr}"
    );
    Ok(Running { addr, metrics_addr, shutdown, server, tasks, admin })
}

/// One attempt at starting the services. On failure the ones already started are stopped (their
/// loops run under `attempt`), so a retry starts from nothing.
async fn start_services(
    args: ServeArgs,
    names: Vec<ServiceName>,
    settings: Settings,
    keys: Arc<SessionKeys>,
    attempt: CancellationToken,
) -> anyhow::Result<(Router, Vec<ReadinessCheck>, Vec<(&'static str, JoinHandle<()>)>)> {
    let mut services: Vec<Service> = Vec::new();
    let started = start_each(&args, &names, &settings, &keys, &attempt, &mut services).await;
    if let Err(err) = started {
        attempt.cancel();
        for service in services {
            for task in service.tasks {
                let _ = task.await;
            }
        }
        return Err(err);
    }

    let mut app = Router::new();
    let mut checks = Vec::new();
    let mut tasks = Vec::new();
    for service in services {
        app = app.merge(service.router);
        checks.extend(service.checks);
        tasks.extend(service.tasks.into_iter().map(|task| (service.name, task)));
    }
    if names.iter().any(|name| *name != ServiceName::Web) {
        let spec = openapi(&names);
        app = app.route("/api/docs/openapi.json", axum::routing::get(move || async move { axum::Json(spec) }));
    }
    // The web pages, when served here, answer every unknown path (with the envelope under
    // /api); without them, unknown paths get the envelope.
    if !names.contains(&ServiceName::Web) {
        app = app.fallback(httpkit::error::not_found);
    }
    Ok((httpkit::http::with_metrics(app), checks, tasks))
}

/// Starts the named services one after the other into `services`, stopping at the first failure.
async fn start_each(
    args: &ServeArgs,
    names: &[ServiceName],
    settings: &Settings,
    keys: &Arc<SessionKeys>,
    attempt: &CancellationToken,
    services: &mut Vec<Service>,
) -> anyhow::Result<()> {
    let (bus, bus_tasks) = connect_bus(settings, attempt).await?;
    // The bus's own loops are watched like a service's: one that stops makes the process not live.
    services.push(Service { name: "bus", router: Router::new(), checks: Vec::new(), tasks: bus_tasks });
    let ctx = Context {
        settings: settings.clone(),
        keys: keys.clone(),
        bus,
        shutdown: attempt.clone(),
        clock: args.clock.clone(),
    };
    for name in names {
        let service = match name {
            ServiceName::Auth => auth::start(&ctx, &args.auth).await,
            ServiceName::Tickets => tickets::start(&ctx, &args.tickets).await,
            ServiceName::Orders => orders::start(&ctx, &args.orders).await,
            ServiceName::Expiration => expiration::start(&ctx, &args.expiration).await,
            ServiceName::Payments => payments::start(&ctx, &args.payments).await,
            ServiceName::Web => web::start(settings, keys.clone(), &args.web).await,
        };
        let service = service.with_context(|| format!("cannot start the {name:?} service"))?;
        tracing::info!(service = service.name, "started");
        services.push(service);
    }
    Ok(())
}

/// `ticketing migrate`: runs the migrations of the named services (all when none) and exits, so
/// a Kubernetes Job can migrate before the services roll out. `serve` migrates too; both take the
/// same lock, so running them together is safe.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let names: Vec<ServiceName> =
        if args.services.is_empty() { ServiceName::ALL.to_vec() } else { args.services.clone() };
    let settings = &args.settings;
    if settings.database_url.is_none() {
        httpkit::settings::create_private_dir(&settings.data_dir)?;
    }
    for name in names {
        let (service, migrator) = match name {
            ServiceName::Auth => (auth::NAME, &auth::MIGRATOR),
            ServiceName::Tickets => (tickets::NAME, &tickets::MIGRATOR),
            ServiceName::Orders => (orders::NAME, &orders::MIGRATOR),
            ServiceName::Expiration => (expiration::NAME, &expiration::MIGRATOR),
            ServiceName::Payments => (payments::NAME, &payments::MIGRATOR),
            ServiceName::Web => continue,
        };
        let url = platform::db::database_url(settings.database_url.as_deref(), &settings.data_dir, service);
        let db = platform::db::Db::connect_with(&url, service, migrator, 1).await?;
        db.pool.close().await;
        tracing::info!(service, "migrated");
    }
    Ok(())
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
    httpkit::openapi::complete(&mut spec);
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation says what the contract says it can answer, in the envelope: the rules
    /// are read off the spec itself (which the routers are built from), not from a list here.
    #[test]
    fn every_operation_documents_its_errors_in_the_envelope() {
        let spec = serde_json::to_value(openapi(ServiceName::ALL)).unwrap();
        let schemes = spec["components"]["securitySchemes"].as_object().expect("security schemes");
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(
            (schemes["session"]["in"].as_str(), schemes["session"]["name"].as_str()),
            (Some("cookie"), Some("session"))
        );
        let mut protected = 0;
        for (path, item) in spec["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().unwrap() {
                let responses = operation["responses"].as_object().unwrap();
                let has = |status: &str| responses.contains_key(status);
                let requirements = operation["security"].as_array().cloned().unwrap_or_default();
                // `{}` among the requirements: signing in is optional there.
                let required = !requirements.is_empty()
                    && requirements.iter().all(|r| r.as_object().is_some_and(|r| !r.is_empty()));
                if required {
                    protected += 1;
                    assert!(has("401"), "{method} {path} needs a session but documents no 401");
                }
                if operation.get("requestBody").is_some() {
                    assert!(has("400") && has("413"), "{method} {path} takes a body but documents no 400/413");
                    assert_eq!(operation["requestBody"]["required"], true, "{method} {path}");
                }
                if path.contains('{') {
                    assert!(has("404"), "{method} {path} has an id but documents no 404");
                }
                for (status, response) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        assert_eq!(
                            response["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                            "{method} {path} {status}"
                        );
                    }
                }
            }
        }
        assert!(protected >= 6, "the protected operations name their security ({protected})");
    }
}
