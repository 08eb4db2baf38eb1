//! The public HTTP API's bodies: what the services answer and what they accept, with the
//! OpenAPI schema of each (the services' handlers name them in `#[utoipa::path]`).
//!
//! The services build the answers from their domain types; the pages read the same types back,
//! so a field renamed here is renamed on both sides; the pages send the request bodies too.
//! Request bodies take their fields as raw JSON (`Value`, [`PriceText`]) so that a missing or
//! mistyped field is reported against that field, like any other invalid input; the services
//! parse them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::events::OrderStatus;
use crate::money::{Price, PriceText};

// --- auth: `/api/users/*`. Doc comments are the spec's descriptions, word for word: the
// `Credentials` they name is auth's (`routes::Credentials`), which reads both fields as raw JSON.

/// The public shape of a user.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UserBody {
    pub id: Uuid,
    #[schema(format = Email)]
    pub email: String,
}

/// `{"currentUser": {...}}` or `{"currentUser": null}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentUserBody {
    #[schema(required = true)]
    pub current_user: Option<SessionUser>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionUser {
    pub id: Uuid,
    #[schema(format = Email)]
    pub email: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
}

/// Sign-up's body, as documented (read as [`Credentials`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NewAccount {
    /// Compared case-insensitively, after Unicode normalisation (NFC).
    #[schema(format = Email, example = "ann@example.com")]
    pub email: String,
    #[schema(min_length = 8, max_length = 128, example = "correct horse battery")]
    pub password: String,
}

/// Sign-in's body, as documented (read as [`Credentials`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignIn {
    #[schema(format = Email, example = "ann@example.com")]
    pub email: String,
    #[schema(min_length = 1, max_length = 1024, example = "correct horse battery")]
    pub password: String,
}

// --- tickets: `/api/tickets/*`

/// `{title, price}`. Taken as raw JSON so a missing or mistyped field is reported against
/// that field.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TicketInput {
    /// Trimmed; at least one visible character, no control characters or bidi overrides.
    #[serde(default)]
    #[schema(value_type = String, required = true, example = "Concert", min_length = 1, max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*[^\s\x00-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\u2800\u3164\ufeff\uffa0][^\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]*$")]
    pub title: Value,
    /// In major units, with at most the currency's decimals: a JSON number or a decimal string
    /// (`"12.50"`). Read from its text, never through a float.
    #[serde(default)]
    #[schema(schema_with = crate::money::price_input, required = true)]
    pub price: PriceText,
}

/// A ticket as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TicketBody {
    pub id: Uuid,
    pub title: String,
    #[schema(schema_with = crate::money::price_output)]
    pub price: Price,
    pub user_id: Uuid,
    pub version: i64,
    /// The order holding the ticket; null while it is for sale.
    #[schema(required = true)]
    pub order_id: Option<Uuid>,
}

// --- orders: `/api/orders/*`

/// `{ticketId}`. Taken as raw JSON so a missing or mistyped id is reported against the field.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewOrder {
    #[serde(default)]
    #[schema(value_type = String, format = Uuid, required = true)]
    pub ticket_id: Value,
}

/// An order as its buyer sees it, with the ticket it reserves.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderBody {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    /// When the reservation ends unless paid (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    pub version: i64,
    /// The ticket as it was when the order was placed: the price charged, whatever the ticket
    /// became since.
    pub ticket: OrderTicketBody,
    /// Money given back (or owed back) for this order's charges; `null` when none. **(ours)**
    #[schema(required = true)]
    pub refund: Option<RefundBody>,
}

/// A refund of an order's charge: `pending` until the gateway confirmed it, then `refunded`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RefundBody {
    /// `pending` or `refunded`.
    #[schema(value_type = String, example = "refunded")]
    pub status: RefundStatus,
    #[schema(schema_with = crate::money::price_output)]
    pub amount: Price,
}

/// Where a refund is: owed (`pending`) or confirmed by the gateway (`refunded`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RefundStatus {
    Pending,
    Refunded,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderTicketBody {
    pub id: Uuid,
    pub title: String,
    #[schema(schema_with = crate::money::price_output)]
    pub price: Price,
    pub version: i64,
}

// --- payments: `/api/payments`

/// Both fields are taken as raw JSON so that a missing or mistyped field is reported against
/// that field, like any other invalid input.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatePayment {
    /// The order to pay, which must be the caller's.
    #[serde(default)]
    #[schema(value_type = String, format = Uuid, required = true, example = "0b7f3c1e-8f9a-4a57-9d5c-2f1e0b6c7d8e")]
    pub order_id: Value,
    /// A card token from Stripe.js or Elements (`tok_...`); the sandbox takes Stripe's test
    /// tokens such as `tok_visa`.
    #[serde(default)]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 255, pattern = r"\S", example = "tok_visa")]
    pub token: Value,
}

/// The payment taken.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PaymentBody {
    pub id: Uuid,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// What the pages read is what the services wrote, field for field.
    #[test]
    fn an_order_reads_back_as_it_was_written() {
        let body = json!({
            "id": Uuid::nil(), "userId": Uuid::nil(), "status": "awaiting:payment",
            "expiresAt": "2026-01-02T03:04:05.5Z", "version": 2,
            "ticket": { "id": Uuid::nil(), "title": "Opera", "price": 42.5, "version": 1 },
            "refund": { "status": "refunded", "amount": 42.5 },
        });
        let order: OrderBody = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(order.status, OrderStatus::AwaitingPayment);
        assert_eq!(order.refund.as_ref().map(|refund| refund.status), Some(RefundStatus::Refunded));
        assert_eq!(serde_json::to_value(&order).unwrap(), body);
    }

    /// A request body the pages send reads back on the service's side as it was sent.
    #[test]
    fn a_typed_price_is_sent_as_its_text() {
        let input = TicketInput { title: json!("Concert"), price: PriceText::string("10.999999999999999999") };
        let sent = serde_json::to_string(&input).unwrap();
        assert_eq!(sent, r#"{"title":"Concert","price":"10.999999999999999999"}"#);
        let read: TicketInput = serde_json::from_str(&sent).unwrap();
        let usd = crate::money::Currency::new("usd");
        assert_eq!(usd.parse_price_text(&read.price), Err("Price must have at most 2 decimals".to_owned()));
        let blank = TicketInput { title: json!("Concert"), price: PriceText::default() };
        assert_eq!(serde_json::to_string(&blank).unwrap(), r#"{"title":"Concert","price":null}"#);
    }
}
