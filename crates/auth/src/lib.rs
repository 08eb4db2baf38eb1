//! The auth service: accounts and sessions.
//!
//! Passwords are hashed with argon2id (OWASP's parameters) on the blocking pool, never on
//! the async executor. Sign-in answers the same error, after the same work, for an unknown
//! email and a wrong password. Failed sign-ins are limited per (email, client address) pair,
//! so an attacker guessing from one address is slowed there while the owner still signs in
//! from theirs, and per client; sign-ups per client.
//!
//! Other services trust the session token, verified locally. Signing out revokes it: auth
//! records the session id in its `revoked_sessions` and, in the same transaction, writes
//! `session:revoked` to its outbox, which the other services apply to their own lists
//! ([`platform::revocation`]). Auth refuses the token at once; the others within the event's
//! delivery time.

mod domain;
mod password;
mod ratelimit;
mod routes;
mod store;

use std::sync::Arc;
use std::time::Duration;

use crate::ratelimit::WindowLimiter;
use httpkit::http::Service;
use platform::outbox::OutboxWaker;
use platform::service::Context;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The service's name: its database, its logs.
pub const NAME: &str = "auth";

/// The auth service's own settings.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthSettings {
    /// Failed sign-ins allowed per (email, client address) pair per window (0: unlimited)
    /// [default: 5]. Only that pair is locked: the owner signing in from another address is not.
    #[arg(long, env = "SIGNIN_FAILURES_PER_EMAIL_AND_CLIENT")]
    pub signin_failures_per_email_and_client: Option<u32>,

    /// The former name of the setting above, from when failures were counted per email alone;
    /// used when that one is unset.
    #[arg(long, env = "SIGNIN_FAILURES_PER_EMAIL", hide = true)]
    pub signin_failures_per_email: Option<u32>,

    /// Failed sign-ins allowed per client address per window (0: unlimited).
    #[arg(long, env = "SIGNIN_FAILURES_PER_CLIENT", default_value_t = 20)]
    pub signin_failures_per_client: u32,

    /// Sign-ups allowed per client address per window (0: unlimited).
    #[arg(long, env = "SIGNUPS_PER_CLIENT", default_value_t = 20)]
    pub signups_per_client: u32,

    /// Length of the rate-limit window, in seconds.
    #[arg(long, env = "RATE_LIMIT_WINDOW_SECONDS", default_value_t = 900)]
    pub rate_limit_window_seconds: u64,
}

impl AuthSettings {
    /// Failed sign-ins allowed per (email, client address) pair per window.
    pub fn signin_failures_per_pair(&self) -> u32 {
        self.signin_failures_per_email_and_client.or(self.signin_failures_per_email).unwrap_or(5)
    }
}

pub(crate) struct AppState {
    db: platform::db::Db,
    keys: Arc<httpkit::session::SessionKeys>,
    outbox: OutboxWaker,
    addresses: httpkit::client_addr::ClientAddresses,
    failures_per_pair: WindowLimiter,
    failures_per_client: WindowLimiter,
    signups_per_client: WindowLimiter,
}

/// Starts the auth service.
pub async fn start(ctx: &Context, settings: &AuthSettings) -> anyhow::Result<Service> {
    let db = ctx.database(NAME, &MIGRATOR).await?;
    let window = Duration::from_secs(settings.rate_limit_window_seconds);
    let (outbox, relay) = ctx.start_outbox_relay(&db);
    let state = Arc::new(AppState {
        db: db.clone(),
        keys: ctx.keys.clone(),
        outbox,
        addresses: httpkit::client_addr::ClientAddresses::from_settings(&ctx.settings, ctx.keys.clone()),
        failures_per_pair: WindowLimiter::new(settings.signin_failures_per_pair(), window),
        failures_per_client: WindowLimiter::new(settings.signin_failures_per_client, window),
        signups_per_client: WindowLimiter::new(settings.signups_per_client, window),
    });
    // Pay the one-off cost of the dummy hash now, not in the first sign-in.
    tokio::spawn(password::warm_up());
    let (api, _) = api().split_for_parts();
    let api = api.with_state(state);
    Ok(ctx.service(NAME, api, &db, vec![relay, ctx.start_retention(&db, &[])]))
}

/// The service's routes and their documentation, from one list: a route cannot exist without
/// its description in the spec.
fn api() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::new()
        .routes(routes!(routes::sign_up))
        .routes(routes!(routes::sign_in))
        .routes(routes!(routes::sign_out))
        .routes(routes!(routes::current_user))
}

/// The OpenAPI description of this service's routes.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}
