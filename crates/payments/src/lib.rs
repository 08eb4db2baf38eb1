//! The payments service: charges orders, and never keeps a charge it should not.
//!
//! - [`gateway`]: Stripe, or the offline sandbox, chosen by `PAYMENT_GATEWAY` (fail closed:
//!   `stripe` without a usable key refuses to start);
//! - [`events`]: the replica of orders payments checks against, and refunds for cancelled
//!   orders;
//! - [`charges`]: taking a payment (charge attempts written down before the gateway is
//!   asked), keeping or giving back its charge, refunding, and the reconciler that settles
//!   what a crash or an outage left unsettled: the gateway and the store, called in the order
//!   that keeps the money right;
//! - [`domain`]: the types and the rules `charges` decides by (when an order can be paid,
//!   whether a charge is kept), without I/O;
//! - [`routes`]: `POST /api/payments`;
//! - [`store`]: its tables, every query.
//!
//! A kept charge becomes `payment:created` (through the outbox), on which orders completes
//! the order. Amounts are the order's price in minor units, in the marketplace's currency.

pub mod charges;
pub mod domain;
pub mod events;
pub mod gateway;
pub mod routes;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use contract::money::Currency;
use httpkit::http::Service;
use platform::bus::dyn_handler;
use platform::consumer::Consumer;
use platform::service::Context;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use charges::{PaymentService, Reconciler};
pub use gateway::{Gateway, SandboxGateway, StripeGateway};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The service's name: its schema or database file, consumer group and consumer.
pub const NAME: &str = "payments";

/// Which payment gateway charges cards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GatewayChoice {
    /// The offline sandbox: Stripe's test tokens, nothing is charged.
    Sandbox,
    /// Stripe, with STRIPE_KEY or STRIPE_KEY_FILE (required).
    Stripe,
}

/// The payments service's own settings.
#[derive(Clone, clap::Args)]
pub struct PaymentsSettings {
    /// The payment gateway: `sandbox` or `stripe`. Unset: `stripe` when a Stripe key is given,
    /// else the sandbox (the embedded default). `stripe` without a usable key refuses to start.
    #[arg(long, env = "PAYMENT_GATEWAY", value_enum)]
    pub payment_gateway: Option<GatewayChoice>,

    /// Stripe secret key (`sk_live_...`, `sk_test_...` or a restricted `rk_...` key).
    #[arg(long, env = "STRIPE_KEY", hide_env_values = true)]
    pub stripe_key: Option<String>,

    /// File holding the Stripe secret key, instead of STRIPE_KEY.
    #[arg(long, env = "STRIPE_KEY_FILE")]
    pub stripe_key_file: Option<PathBuf>,

    /// Base URL of Stripe's API.
    #[arg(long, env = "STRIPE_API_BASE", default_value = "https://api.stripe.com")]
    pub stripe_api_base: String,

    /// How often the reconciler runs: it settles charge attempts left unsettled and retries
    /// refunds that could not be made at once.
    #[arg(long, env = "PAYMENTS_RECONCILE_EVERY_MILLIS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub reconcile_every_millis: u64,

    /// How long a charge attempt may stay unsettled before the reconciler asks the gateway
    /// again (same idempotency key). Longer than a gateway call can take (30 s for Stripe),
    /// so it does not ask while the request itself still waits for the answer.
    #[arg(long, env = "PAYMENTS_CHARGE_GRACE_MILLIS", default_value_t = 60_000)]
    pub charge_grace_millis: u64,

    /// How long `POST /api/payments` waits for orders to complete the order before answering
    /// 201 anyway (the payment stands accepted either way).
    #[arg(long, env = "PAYMENTS_CONFIRM_WAIT_MILLIS", default_value_t = 5000)]
    pub confirm_wait_millis: u64,

    /// The first pause before a failed refund is asked again; it doubles on each failure, up
    /// to 5 minutes, for as long as it takes. A refund owed is never given up.
    #[arg(long, env = "PAYMENTS_REFUND_BACKOFF_MILLIS", default_value_t = 1000)]
    pub refund_backoff_millis: u64,
}

impl std::fmt::Debug for PaymentsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentsSettings")
            .field("stripe_key", &self.stripe_key.as_ref().map(|_| "<set>"))
            .field("stripe_key_file", &self.stripe_key_file)
            .field("stripe_api_base", &self.stripe_api_base)
            .field("reconcile_every_millis", &self.reconcile_every_millis)
            .field("charge_grace_millis", &self.charge_grace_millis)
            .field("payment_gateway", &self.payment_gateway)
            .field("confirm_wait_millis", &self.confirm_wait_millis)
            .field("refund_backoff_millis", &self.refund_backoff_millis)
            .finish()
    }
}

impl PaymentsSettings {
    /// The Stripe key: STRIPE_KEY, else the contents of STRIPE_KEY_FILE, else none.
    pub fn stripe_key(&self) -> anyhow::Result<Option<String>> {
        if let Some(key) = self.stripe_key.as_deref().map(str::trim).filter(|key| !key.is_empty()) {
            return Ok(Some(key.to_owned()));
        }
        let Some(path) = &self.stripe_key_file else {
            return Ok(None);
        };
        let key = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read STRIPE_KEY_FILE {}", path.display()))?
            .trim()
            .to_owned();
        anyhow::ensure!(!key.is_empty(), "STRIPE_KEY_FILE {} is empty", path.display());
        Ok(Some(key))
    }

    /// The reconciler's schedule: how often it runs, and how long an attempt may stay unsettled.
    pub fn reconcile_schedule(&self) -> (Duration, Duration) {
        (Duration::from_millis(self.reconcile_every_millis.max(1)), Duration::from_millis(self.charge_grace_millis))
    }

    /// The gateway these settings choose, failing closed: `stripe` needs a usable secret key,
    /// and a Stripe key never silently falls back to the sandbox. A configuration error, so
    /// checked before start-up retries anything (retrying cannot fix it).
    pub fn check(&self) -> anyhow::Result<GatewayChoice> {
        let key = self.stripe_key()?;
        let choice =
            self.payment_gateway.unwrap_or(if key.is_some() { GatewayChoice::Stripe } else { GatewayChoice::Sandbox });
        match (choice, key) {
            (GatewayChoice::Stripe, None) => {
                anyhow::bail!("PAYMENT_GATEWAY=stripe needs a Stripe secret key: set STRIPE_KEY or STRIPE_KEY_FILE")
            }
            (GatewayChoice::Stripe, Some(key)) => anyhow::ensure!(
                ["sk_live_", "sk_test_", "rk_live_", "rk_test_"].iter().any(|prefix| key.starts_with(prefix)),
                "PAYMENT_GATEWAY=stripe: the Stripe key is not a secret key (it must start with sk_live_, sk_test_, rk_live_ or rk_test_)"
            ),
            (GatewayChoice::Sandbox, Some(_)) => anyhow::bail!(
                "PAYMENT_GATEWAY=sandbox but a Stripe key is set: choose PAYMENT_GATEWAY=stripe, or remove the key"
            ),
            (GatewayChoice::Sandbox, None) => {}
        }
        Ok(choice)
    }

    /// The gateway these settings choose (see [`Self::check`]). The sandbox keeps its ledger
    /// in `db`, the payments database.
    pub fn gateway(&self, db: &platform::db::Db) -> anyhow::Result<Arc<dyn Gateway>> {
        Ok(match self.check()? {
            GatewayChoice::Stripe => {
                let key = self.stripe_key()?.expect("checked");
                tracing::info!(api = %self.stripe_api_base, "payments go to Stripe");
                Arc::new(StripeGateway::new(&self.stripe_api_base, &key)?)
            }
            GatewayChoice::Sandbox => {
                tracing::warn!(
                    "PAYMENT_GATEWAY=sandbox: payments use the offline sandbox (Stripe test tokens, nothing is charged)"
                );
                Arc::new(SandboxGateway::with_ledger(db.clone()))
            }
        })
    }
}

/// Starts the payments service with the gateway its settings name.
pub async fn start(ctx: &Context, settings: &PaymentsSettings) -> anyhow::Result<Service> {
    settings.check()?;
    let db = ctx.database(NAME, &MIGRATOR).await?;
    let gateway = settings.gateway(&db)?;
    let (service, _) = launch(ctx, settings, db, gateway).await?;
    Ok(service)
}

/// Starts the payments service on a given gateway; also returns the service's core, for
/// callers (tests) that drive it below HTTP.
pub async fn start_with_gateway(
    ctx: &Context,
    settings: &PaymentsSettings,
    gateway: Arc<dyn Gateway>,
) -> anyhow::Result<(Service, Arc<PaymentService>)> {
    let db = ctx.database(NAME, &MIGRATOR).await?;
    launch(ctx, settings, db, gateway).await
}

async fn launch(
    ctx: &Context,
    settings: &PaymentsSettings,
    db: platform::db::Db,
    gateway: Arc<dyn Gateway>,
) -> anyhow::Result<(Service, Arc<PaymentService>)> {
    let (outbox, relay) = ctx.start_outbox_relay(&db);
    let currency = Currency::new(&ctx.settings.currency);
    let payments = Arc::new(
        PaymentService::new(db.clone(), gateway, currency, outbox.clone())
            .with_timing(
                Duration::from_millis(settings.confirm_wait_millis),
                Duration::from_millis(settings.refund_backoff_millis),
            )
            .with_clock(ctx.clock.clone()),
    );
    let consumer = Consumer::new(NAME, db.clone(), events::OrderEvents, Some(outbox));
    let handler = events::WakeAfterCommit { consumer, payments: payments.clone() };
    let subscription =
        ctx.bus.subscribe(NAME, events::KINDS, dyn_handler(Arc::new(handler)), ctx.shutdown.clone()).await?;
    let (every, grace) = settings.reconcile_schedule();
    let reconciler = Reconciler::new(payments.clone(), every, grace).spawn(ctx.shutdown.clone());
    sample_obligations(ctx, &db);
    let (api, _) = api().split_for_parts();
    let api = api.with_state(payments.clone());
    let tasks = vec![relay, subscription, reconciler, ctx.start_retention(&db, &[])];
    let service = ctx.service(NAME, api, &db, tasks);
    Ok((service, payments))
}

/// Samples, at each scrape, the refunds owed and the charge attempts not settled yet: money
/// that is not where it should be until the reconciler or an operator acts.
fn sample_obligations(ctx: &Context, db: &platform::db::Db) {
    let db = db.clone();
    httpkit::metrics::sample_with(ctx.shutdown.clone(), move || {
        let db = db.clone();
        Box::pin(async move {
            if let Err(err) = sample_obligations_now(&db).await {
                tracing::debug!(error = %err, "cannot sample owed refunds");
            }
        })
    });
}

async fn sample_obligations_now(db: &platform::db::Db) -> Result<(), sqlx::Error> {
    let m = httpkit::metrics::metrics();
    let mut conn = db.pool.acquire().await?;
    let (owed, oldest, unsettled) = store::obligations(&mut conn).await?;
    m.payments_refunds_owed.set(owed);
    let age = oldest.map_or(0.0, |at| (platform::db::now_millis() - at).max(0) as f64 / 1000.0);
    m.payments_refund_owed_oldest_age.set(age);
    m.payments_charge_attempts_unsettled.set(unsettled);
    Ok(())
}

/// The service's routes and their documentation, from one list: a route cannot exist without
/// its description in the spec.
fn api() -> OpenApiRouter<Arc<PaymentService>> {
    OpenApiRouter::new().routes(routes!(routes::payments::create_payment))
}

/// The OpenAPI description of this service's routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}
