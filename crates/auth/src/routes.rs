//! Handlers for `/api/users/*`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use contract::api::{CurrentUserBody, NewAccount, SessionUser, SignIn, UserBody};
use contract::error::ErrorItem;
use contract::events::SessionRevoked;
use httpkit::error::{ApiError, ApiResult, Json};
use httpkit::http::PeerAddr;
use httpkit::session::{self, MaybeUser};
use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{AppState, domain, password, store};

const PASSWORD_RULE: &str = "Password must be between 8 and 128 characters";

/// Both fields are taken as raw JSON so that a missing or mistyped field is reported
/// against that field, like any other invalid input. What each operation accepts is
/// documented by [`NewAccount`] and [`SignIn`].
#[derive(Debug, Deserialize)]
pub struct Credentials {
    #[serde(default)]
    email: Value,
    #[serde(default)]
    password: Value,
}

impl Credentials {
    /// The normalised email and the password, if the password passes `password_rule`; else a
    /// 400 naming each bad field (`rule_message` for the password).
    fn parse(&self, password_rule: impl Fn(&str) -> bool, rule_message: &str) -> ApiResult<(String, &str)> {
        let email = self.email.as_str().and_then(domain::normalize_email);
        let password = self.password.as_str().filter(|p| password_rule(p));
        match (email, password) {
            (Some(email), Some(password)) => Ok((email, password)),
            (email, password) => Err(ApiError::Invalid(
                [
                    email.is_none().then(|| ErrorItem::field("email", "Email must be valid")),
                    password.is_none().then(|| ErrorItem::field("password", rule_message)),
                ]
                .into_iter()
                .flatten()
                .collect(),
            )),
        }
    }
}

fn client_key(state: &AppState, headers: &HeaderMap, peer: Option<SocketAddr>) -> String {
    state.addresses.client_ip(headers, peer)
}

fn too_many(retry_after: std::time::Duration) -> ApiError {
    ApiError::TooManyRequests { retry_after_secs: retry_after.as_secs_f64().ceil() as u64 }
}

/// 200/201 with `{id,email}` and the session cookie.
fn signed_in(
    state: &AppState,
    status: StatusCode,
    id: Uuid,
    email: &str,
    headers: &HeaderMap,
    uri: &Uri,
) -> ApiResult<Response> {
    let token = state.keys.issue(id, email)?;
    let cookie = session::session_cookie_header(&token, state.keys.lifetime(), session::is_https(headers, uri));
    Ok((status, [(header::SET_COOKIE, cookie)], Json(UserBody { id, email: email.to_owned() })).into_response())
}

/// Creates an account and signs it in.
#[utoipa::path(post, path = "/api/users/signup", tag = "auth", request_body = NewAccount,
    responses(
        (status = 201, description = "Signed up; sets the `session` cookie", body = UserBody),
        (status = 400, description = "`Email must be valid`, `Password must be between 8 and 128 characters`, `Email in use`, or malformed JSON", body = contract::error::ErrorBody),
        (status = 429, description = "Too many sign-ups from this client", body = contract::error::ErrorBody),
    ))]
pub async fn sign_up(
    State(state): State<Arc<AppState>>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    uri: Uri,
    Json(input): Json<Credentials>,
) -> ApiResult<Response> {
    let client = client_key(&state, &headers, peer);
    state.signups_per_client.check(&client).map_err(too_many)?;

    let (email, password) = input.parse(|p| (8..=128).contains(&p.chars().count()), PASSWORD_RULE)?;
    state.signups_per_client.hit(&client);

    let hash = password::hash(password.to_owned()).await?;
    let id = Uuid::new_v4();
    if !store::insert_user(&mut *state.db.pool.acquire().await?, id, &email, &hash).await? {
        return Err(ApiError::invalid("email", "Email in use"));
    }
    tracing::info!(user_id = %id, "user signed up");
    signed_in(&state, StatusCode::CREATED, id, &email, &headers, &uri)
}

/// Signs in with email and password.
#[utoipa::path(post, path = "/api/users/signin", tag = "auth", request_body = SignIn,
    responses(
        (status = 200, description = "Signed in; sets the `session` cookie", body = UserBody),
        (status = 400, description = "`Invalid credentials`, or invalid input", body = contract::error::ErrorBody),
        (status = 429, description = "Too many failed sign-ins", body = contract::error::ErrorBody),
    ))]
pub async fn sign_in(
    State(state): State<Arc<AppState>>,
    PeerAddr(peer): PeerAddr,
    headers: HeaderMap,
    uri: Uri,
    Json(input): Json<Credentials>,
) -> ApiResult<Response> {
    let (email, password) =
        input.parse(|p| !p.is_empty() && p.chars().count() <= 1024, "You must supply a password")?;

    let client = client_key(&state, &headers, peer);
    // Per pair, not per email: guesses from one address must not lock the owner out of theirs.
    let pair = format!("{client}/{email}");
    state.failures_per_client.check(&client).map_err(too_many)?;
    state.failures_per_pair.check(&pair).map_err(too_many)?;

    let account = store::find_by_email(&mut *state.db.reader().acquire().await?, &email).await?;
    let (id, stored) = account.map(|account| (account.id, account.password_hash)).unzip();
    let verified = password::verify(password.to_owned(), stored).await?;
    let id = match id {
        Some(id) if verified => id,
        _ => {
            state.failures_per_client.hit(&client);
            state.failures_per_pair.hit(&pair);
            return Err(ApiError::bad_request("Invalid credentials"));
        }
    };
    state.failures_per_pair.reset(&pair);
    signed_in(&state, StatusCode::OK, id, &email, &headers, &uri)
}

/// Signs out: revokes the session everywhere and clears the `session` cookie.
#[utoipa::path(post, path = "/api/users/signout", tag = "auth",
    responses((status = 200, description = "Signed out: `{}`, the `session` cookie cleared; the session's token is refused from now on", body = Object)))]
pub async fn sign_out(
    State(state): State<Arc<AppState>>,
    MaybeUser(user): MaybeUser,
    headers: HeaderMap,
    uri: Uri,
) -> ApiResult<Response> {
    if let Some(claims) = user {
        revoke(&state, &claims).await?;
    }
    let cookie = session::clear_session_cookie_header(session::is_https(&headers, &uri));
    Ok((StatusCode::OK, [(header::SET_COOKIE, cookie)], Json(json!({}))).into_response())
}

/// Records the session as revoked here and tells the other services.
async fn revoke(state: &AppState, claims: &session::Claims) -> ApiResult<()> {
    let expires_at = OffsetDateTime::from_unix_timestamp(claims.exp).map_err(|err| ApiError::Unexpected(err.into()))?;
    let revoked = SessionRevoked { id: claims.jti, user_id: claims.id, expires_at };
    let mut tx = state.db.begin().await?;
    store::revoke_session(&mut tx, &revoked).await?;
    tx.commit().await?;
    state.outbox.wake();
    tracing::info!(user_id = %claims.id, session_id = %claims.jti, "user signed out");
    Ok(())
}

/// The signed-in user, or null.
#[utoipa::path(get, path = "/api/users/currentuser", tag = "auth",
    security((), ("bearer" = []), ("session" = [])),
    responses((status = 200, description = "The session's user, or null", body = CurrentUserBody)))]
pub async fn current_user(MaybeUser(user): MaybeUser) -> Json<CurrentUserBody> {
    let current_user = user.map(|claims| SessionUser { id: claims.id, email: claims.email, iat: claims.iat });
    Json(CurrentUserBody { current_user })
}
