//! Page handlers, a file per resource, and what they share: the page shell (who is signed
//! in, the form token), field errors from the API's envelope, and how prices and times read.

pub mod auth;
pub mod home;
pub mod orders;
pub mod tickets;

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use contract::api::SessionUser;
use contract::error::ErrorItem;
use contract::money::{Currency, Price, PriceText};
use minijinja::value::Serde;
use minijinja::{Value, context};
use serde::Serialize;

use crate::api::{Api, ApiFailure, ApiResult};
use crate::pages::{self, error_page, not_found_page, sign_in_url};
use crate::visitor::{Visitor, VisitorAddresses};

/// State shared by every page handler.
pub(crate) struct Web {
    pub api: Api,
    pub currency: Currency,
    pub stripe_publishable_key: Option<String>,
    pub addresses: httpkit::client_addr::ClientAddresses,
}

impl VisitorAddresses for Web {
    fn addresses(&self) -> &httpkit::client_addr::ClientAddresses {
        &self.addresses
    }
}

/// Why a page could not be shown, and what to show instead.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    #[error("not found")]
    NotFound,
    /// The visitor must sign in, then come back to `next`.
    #[error("sign in first")]
    SignIn { next: String },
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error(transparent)]
    Api(#[from] ApiFailure),
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound => not_found_page(),
            Self::SignIn { next } => Redirect::to(&sign_in_url(&next)).into_response(),
            Self::Forbidden(message) => error_page(StatusCode::FORBIDDEN, message),
            Self::Api(ApiFailure::Refused { status, errors }) => {
                let message = errors.first().map(|e| e.message.as_str());
                match status {
                    StatusCode::NOT_FOUND => not_found_page(),
                    StatusCode::TOO_MANY_REQUESTS => {
                        error_page(status, message.unwrap_or("Too many requests. Please wait a little and try again."))
                    }
                    status if status.is_client_error() => {
                        error_page(status, message.unwrap_or("That request could not be completed."))
                    }
                    status => error_page(
                        if status.is_server_error() { status } else { StatusCode::BAD_GATEWAY },
                        "Something went wrong on our side. Please try again in a moment.",
                    ),
                }
            }
            Self::Api(ApiFailure::Unavailable(err)) => {
                tracing::error!(error = %format!("{err:#}"), "the API is unreachable");
                error_page(
                    StatusCode::BAD_GATEWAY,
                    "The marketplace cannot be reached right now. Please try again in a moment.",
                )
            }
        }
    }
}

pub type PageResult = Result<Response, PageError>;

/// What the layout needs on every page: who is signed in, the form token, where we are.
#[derive(Serialize)]
struct Shell<'a> {
    user: Option<&'a SessionUser>,
    csrf: &'a str,
    path: &'a str,
}

/// A full page: `template` with `ctx`, in the layout.
pub fn page(status: StatusCode, template: &str, visitor: &Visitor, user: Option<&SessionUser>, ctx: Value) -> Response {
    let path = visitor.path.split('?').next().unwrap_or("/");
    let shell = Shell { user, csrf: &visitor.csrf, path };
    pages::html(status, template, context! { shell => Serde(&shell), ..ctx })
}

/// The API's errors, placed: next to the field they concern when it is on the form, else
/// above it.
#[derive(Debug, Default, Serialize)]
pub struct FormErrors {
    /// Field name → messages.
    pub fields: BTreeMap<String, Vec<String>>,
    /// Messages about no field of this form.
    pub general: Vec<String>,
}

impl FormErrors {
    pub fn from_api(items: &[ErrorItem], form_fields: &[&str]) -> Self {
        let mut errors = Self::default();
        for item in items {
            match item.field.as_deref() {
                Some(field) if form_fields.contains(&field) => {
                    errors.fields.entry(field.to_owned()).or_default().push(item.message.clone());
                }
                _ => errors.general.push(item.message.clone()),
            }
        }
        if items.is_empty() {
            errors.general.push("That did not work. Please try again.".to_owned());
        }
        errors
    }
}

/// An API refusal the page explains on the form itself (invalid input, a broken rule, a
/// declined card, too many attempts); anything else is for [`PageError`].
pub fn form_refusal(failure: ApiFailure) -> Result<(StatusCode, Vec<ErrorItem>), PageError> {
    match failure {
        ApiFailure::Refused { status, errors }
            if matches!(
                status,
                StatusCode::BAD_REQUEST
                    | StatusCode::PAYMENT_REQUIRED
                    | StatusCode::TOO_MANY_REQUESTS
                    | StatusCode::PAYLOAD_TOO_LARGE
            ) =>
        {
            Ok((status, errors))
        }
        other => Err(PageError::Api(other)),
    }
}

/// The signed-in user, or a trip to the sign-in page and back to `next`.
pub fn require_user(user: Option<SessionUser>, next: &str) -> Result<SessionUser, PageError> {
    user.ok_or_else(|| PageError::SignIn { next: next.to_owned() })
}

/// A 401 from the API: not signed in (any more), or signed in but not allowed.
pub async fn unauthorized(web: &Web, visitor: &Visitor, next: &str, forbidden: &'static str) -> PageError {
    match web.api.current_user(visitor).await {
        Ok(Some(_)) => PageError::Forbidden(forbidden),
        Ok(None) => PageError::SignIn { next: next.to_owned() },
        Err(err) => PageError::Api(err),
    }
}

/// How long a call is retried while the API does not know the record yet.
const CATCH_UP: Duration = Duration::from_secs(3);

/// Calls again, for a moment, while the API answers 404: the services learn of each
/// other's records through events, so one may not have heard yet of the ticket or order
/// the visitor is looking at (usually a matter of milliseconds).
pub async fn catching_up<T, F, Fut>(mut call: F) -> ApiResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ApiResult<T>>,
{
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    let mut pause = Duration::from_millis(20);
    loop {
        match call().await {
            Err(failure)
                if failure.status() == Some(StatusCode::NOT_FOUND) && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(250));
            }
            result => return result,
        }
    }
}

/// A path id: a UUID, or the page does not exist (and nothing else reaches the API's path).
pub fn parse_id(id: &str) -> Result<uuid::Uuid, PageError> {
    contract::error::parse_canonical_uuid(id).ok_or(PageError::NotFound)
}

/// `$12.50` for the API's `12.5`; the raw number if it is not a price we understand.
pub fn format_price(currency: &Currency, price: &Price) -> String {
    match currency.minor_units(price) {
        Ok(minor) => currency.format(minor),
        Err(_) => price.to_string(),
    }
}

/// A price as typed into a form, for the API: the text itself (the API reads decimal strings
/// exactly, and reports what is wrong with one next to the field). Never turned into a JSON
/// number here: that would go through a float and round `10.999999999999999999` to 11.
pub fn price_for_api(text: &str) -> PriceText {
    let text = text.trim();
    if text.is_empty() {
        return PriceText::default();
    }
    PriceText::string(text)
}

/// A price as the form shows it again: the API's number in major units, fixed decimals.
pub fn price_for_form(currency: &Currency, price: &Price) -> String {
    match currency.minor_units(price) {
        Ok(minor) if currency.decimals == 0 => minor.to_string(),
        Ok(minor) => {
            let scale = 10i64.pow(currency.decimals);
            format!("{}.{:0width$}", minor / scale, minor % scale, width = currency.decimals as usize)
        }
        Err(_) => price.to_string(),
    }
}

/// `14m 05s`, `1h 02m 03s`, `42s`: what the countdown shows (the script formats the same way).
pub fn format_time_left(seconds: i64) -> String {
    let seconds = seconds.max(0);
    let (hours, minutes, secs) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    if hours > 0 {
        format!("{hours}h {minutes:02}m {secs:02}s")
    } else if minutes > 0 {
        format!("{minutes}m {secs:02}s")
    } else {
        format!("{secs}s")
    }
}

/// Unknown page (outside `/api`).
pub async fn not_found() -> Response {
    pages::not_found_page()
}

pub async fn method_not_allowed() -> Response {
    pages::error_page(StatusCode::METHOD_NOT_ALLOWED, "This page cannot be used that way.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_go_next_to_their_field_or_above_the_form() {
        let items = vec![
            ErrorItem::field("email", "Email must be valid"),
            ErrorItem::field("password", "Password must be between 8 and 128 characters"),
            ErrorItem::field("other", "Something else"),
            ErrorItem { message: "Invalid credentials".into(), field: None },
        ];
        let errors = FormErrors::from_api(&items, &["email", "password"]);
        assert_eq!(errors.fields["email"], vec!["Email must be valid"]);
        assert_eq!(errors.fields["password"].len(), 1);
        assert_eq!(errors.general, vec!["Something else", "Invalid credentials"]);
    }

    #[test]
    fn prices_read_in_the_currency() {
        let usd = Currency::new("usd");
        let price = |value: serde_json::Value| -> Price { serde_json::from_value(value).unwrap() };
        assert_eq!(format_price(&usd, &price(json!(12.5))), "$12.50");
        assert_eq!(format_price(&usd, &price(json!(123456))), "$123,456.00");
        assert_eq!(format_price(&Currency::new("jpy"), &price(json!(1500))), "¥1,500");
        assert_eq!(format_price(&usd, &price(json!(0.001))), "0.001", "not a price: as the API sent it");
        assert_eq!(price_for_form(&usd, &price(json!(12.5))), "12.50");
        assert_eq!(price_for_form(&Currency::new("jpy"), &price(json!(1500))), "1500");
    }

    #[test]
    fn typed_prices_go_to_the_api_as_numbers_when_they_are() {
        let sent = |text: &str| serde_json::to_value(price_for_api(text)).unwrap();
        assert_eq!(sent(" 12.50 "), json!("12.50"));
        assert_eq!(sent("20"), json!("20"));
        assert_eq!(
            serde_json::to_string(&price_for_api("10.999999999999999999")).unwrap(),
            r#""10.999999999999999999""#
        );
        assert_eq!(sent("twelve"), json!("twelve"));
        assert_eq!(sent("12,50"), json!("12,50"));
        assert_eq!(sent(""), json!(null));
    }

    #[test]
    fn time_left_reads_naturally() {
        assert_eq!(format_time_left(899), "14m 59s");
        assert_eq!(format_time_left(65), "1m 05s");
        assert_eq!(format_time_left(42), "42s");
        assert_eq!(format_time_left(3723), "1h 02m 03s");
        assert_eq!(format_time_left(-5), "0s");
    }
}
