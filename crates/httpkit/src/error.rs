//! The one place where errors become HTTP responses, in the contract's error envelope
//! ([`contract::error::ErrorBody`]).
//!
//! `{"errors":[{"message":"...","field":"..."}]}` is what every client sees. What a client
//! sees is never the internal cause: 5xx bodies are fixed strings and the cause goes to the
//! log, with the request's id attached by the trace span.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use contract::error::{ErrorBody, ErrorItem, parse_canonical_uuid};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Every way a request can fail, as the client will see it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Invalid input: one entry per bad field.
    #[error("invalid input")]
    Invalid(Vec<ErrorItem>),
    /// A business rule was broken, or the request was malformed.
    #[error("{0}")]
    BadRequest(String),
    #[error("not authorized")]
    Unauthorized,
    #[error("{0}")]
    PaymentRequired(String),
    #[error("not found")]
    NotFound,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("rate limited")]
    TooManyRequests { retry_after_secs: u64 },
    /// A dependency (database, bus, gateway) is unreachable; the client may retry.
    #[error("service unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// The process is still starting (waiting for its database or bus); the client may retry.
    #[error("starting")]
    Starting,
    /// Anything unexpected. Logged with its cause; the client sees `Something went wrong`.
    #[error("unexpected: {0:#}")]
    Unexpected(anyhow::Error),
}

impl ApiError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::Invalid(vec![ErrorItem::field(field, message)])
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest(message.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::PaymentRequired(_) => StatusCode::PAYMENT_REQUIRED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) | Self::Starting => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn items(&self) -> Vec<ErrorItem> {
        let message = |m: &str| vec![ErrorItem { message: m.to_owned(), field: None }];
        match self {
            Self::Invalid(items) => items.clone(),
            Self::BadRequest(m) | Self::PaymentRequired(m) => message(m),
            Self::Unauthorized => message("Not authorized"),
            Self::NotFound => message("Not Found"),
            Self::PayloadTooLarge => message("Request body is too large"),
            Self::TooManyRequests { .. } => message("Too many requests, try again later"),
            Self::Unavailable(_) => message("Service unavailable, try again later"),
            Self::Starting => message("Service is starting, try again shortly"),
            Self::Unexpected(_) => message("Something went wrong"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Unexpected(cause) => tracing::error!(error = ?cause, "request failed unexpectedly"),
            Self::Unavailable(cause) => tracing::error!(error = ?cause, "request failed: dependency unavailable"),
            _ => {}
        }
        let mut response = (status, axum::Json(ErrorBody { errors: self.items() })).into_response();
        let retry_after = match &self {
            Self::TooManyRequests { retry_after_secs } => Some(*retry_after_secs),
            Self::Unavailable(_) | Self::Starting => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

/// A database error: 503 while the database cannot be reached, 500 for anything else, the
/// cause logged either way. Here rather than beside the database code because neither the error
/// type nor `ApiError` would be that crate's own (the orphan rule); behind the `sqlx` feature
/// so that a server without a database (the web pages) links no database driver.
#[cfg(feature = "sqlx")]
impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if is_database_unavailable(&err) { Self::Unavailable(err.into()) } else { Self::Unexpected(err.into()) }
    }
}

/// True when the error means the database is unreachable rather than the query being wrong.
#[cfg(feature = "sqlx")]
pub fn is_database_unavailable(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_))
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> Self {
        #[cfg(feature = "sqlx")]
        let err = match err.downcast::<sqlx::Error>() {
            Ok(sql) => return sql.into(),
            Err(other) => other,
        };
        Self::Unexpected(err)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// `axum::Json`, but its rejections speak the envelope.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::bad_request("Expected a JSON body with Content-Type: application/json"));
        }
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::bad_request(rejection.body_text())
            }
        })?;
        // Straight from the bytes, never through a `Value`: a `Value` rounds numbers to f64,
        // and prices must be read from the digits the client sent (`money::PriceText`).
        let raw: &serde_json::value::RawValue =
            serde_json::from_slice(&bytes).map_err(|_| ApiError::bad_request("Malformed JSON"))?;
        // Every request body of the API is an object; serde would also build a struct from
        // an array, which no client means.
        if !raw.get().starts_with('{') {
            return Err(ApiError::bad_request("Request body must be a JSON object"));
        }
        serde_json::from_str(raw.get())
            .map(Self)
            .map_err(|err| ApiError::bad_request(format!("Invalid request body: {}", without_position(&err))))
    }
}

/// `application/json`, or `application/<something>+json`, as axum's own `Json` accepts.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// serde_json's message without its "at line 1 column 30" (a client fixes the field, not a
/// column).
fn without_position(err: &serde_json::Error) -> String {
    let text = err.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A path parameter that must be a canonical UUID; anything else is an unknown resource (404).
#[derive(Debug, Clone, Copy)]
pub struct IdPath(pub uuid::Uuid);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state).await.map_err(|err: PathRejection| {
                tracing::debug!(%err, "path rejected");
                ApiError::NotFound
            })?;
        parse_canonical_uuid(&raw).map(Self).ok_or(ApiError::NotFound)
    }
}

/// Fallback for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}
