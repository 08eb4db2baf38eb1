//! `POST /api/payments`: pay for an order with a card token.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use contract::api::{CreatePayment, PaymentBody};
use contract::error::ErrorItem;
use httpkit::error::{ApiError, ApiResult, Json};
use httpkit::session::RequireUser;
use uuid::Uuid;

use crate::charges::PaymentService;
use crate::domain::PayError;

/// The longest card token accepted (Stripe's tokens are far shorter).
pub const MAX_TOKEN_CHARS: usize = 255;

fn parse(input: &CreatePayment) -> Result<(Uuid, &str), ApiError> {
    let order_id = input.order_id.as_str().and_then(|text| Uuid::parse_str(text.trim()).ok());
    let token = input.token.as_str().filter(|token| !token.trim().is_empty());
    let mut errors = Vec::new();
    if order_id.is_none() {
        errors.push(ErrorItem::field("orderId", "OrderId must be a valid id"));
    }
    match token {
        None => errors.push(ErrorItem::field("token", "Token is required")),
        Some(token) if token.chars().count() > MAX_TOKEN_CHARS => {
            errors.push(ErrorItem::field("token", format!("Token must be at most {MAX_TOKEN_CHARS} characters")));
        }
        Some(_) => {}
    }
    match (order_id, token) {
        (Some(order_id), Some(token)) if errors.is_empty() => Ok((order_id, token)),
        _ => Err(ApiError::Invalid(errors)),
    }
}

impl From<PayError> for ApiError {
    fn from(err: PayError) -> Self {
        match err {
            PayError::UnknownOrder => Self::NotFound,
            PayError::Cancelled | PayError::AlreadyPaid | PayError::Expired => Self::BadRequest(err.to_string()),
            PayError::AmountTooSmall(message) => Self::BadRequest(message),
            PayError::NotOwner => Self::Unauthorized,
            PayError::Declined(message) => Self::PaymentRequired(message),
            PayError::InvalidToken(message) => Self::invalid("token", message),
            PayError::Unavailable(err) => Self::Unavailable(err),
            PayError::Unexpected(err) => Self::Unexpected(err),
        }
    }
}

/// Pays for one of the caller's orders. The card is charged once however often the request
/// is repeated; the order becomes `complete` shortly after (orders hears `payment:created`).
/// A 503 leaves the attempt to the service's reconciler, which settles it.
#[utoipa::path(post, path = "/api/payments", tag = "payments", request_body = CreatePayment,
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 201, description = "Charged", body = PaymentBody),
        (status = 400, description = "Invalid input or token; the order is cancelled, paid or expired; the amount is under the minimum", body = contract::error::ErrorBody),
        (status = 401, description = "Not signed in, or not the order's owner", body = contract::error::ErrorBody),
        (status = 402, description = "The card was declined; the order can still be paid with another card", body = contract::error::ErrorBody),
        (status = 404, description = "Unknown order", body = contract::error::ErrorBody),
        (status = 503, description = "The payment gateway (or the service's database) is unavailable and the outcome of the charge is not known yet. The service settles it on its own: if the card was charged the order completes (or the charge is refunded if the order cannot be kept); retrying with the same card charges nothing twice", body = contract::error::ErrorBody),
    ))]
pub async fn create_payment(
    State(payments): State<Arc<PaymentService>>,
    RequireUser(user): RequireUser,
    Json(input): Json<CreatePayment>,
) -> ApiResult<(StatusCode, Json<PaymentBody>)> {
    let (order_id, token) = parse(&input)?;
    let id = payments.pay(user.id, order_id, token).await?;
    Ok((StatusCode::CREATED, Json(PaymentBody { id })))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn errors(body: Value) -> Vec<(String, String)> {
        let input: CreatePayment = serde_json::from_value(body).unwrap();
        match parse(&input) {
            Ok(_) => Vec::new(),
            Err(ApiError::Invalid(items)) => {
                items.into_iter().map(|item| (item.field.unwrap_or_default(), item.message)).collect()
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn input_is_checked_field_by_field() {
        let id = Uuid::new_v4().to_string();
        assert!(errors(json!({"orderId": id, "token": "tok_visa"})).is_empty());
        let order_id = ("orderId".to_owned(), "OrderId must be a valid id".to_owned());
        let token = ("token".to_owned(), "Token is required".to_owned());
        assert_eq!(errors(json!({})), vec![order_id.clone(), token.clone()]);
        assert_eq!(errors(json!({"orderId": "nope", "token": "tok_visa"})), vec![order_id.clone()]);
        assert_eq!(errors(json!({"orderId": 42, "token": "tok_visa"})), vec![order_id.clone()]);
        assert_eq!(errors(json!({"orderId": id, "token": "  "})), vec![token.clone()]);
        assert_eq!(errors(json!({"orderId": id, "token": 7})), vec![token]);
        assert_eq!(
            errors(json!({"orderId": id, "token": "t".repeat(256)})),
            vec![("token".to_owned(), "Token must be at most 255 characters".to_owned())]
        );
        assert!(errors(json!({"orderId": id, "token": "t".repeat(255)})).is_empty());
    }
}
