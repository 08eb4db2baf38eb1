//! The contract's events, as typed payloads. Every service that publishes or consumes an
//! event uses these types, so a shape change is a compile error, not a parked event.
//!
//! Prices in events are integer minor units (cents), never floats. The envelope around a
//! payload (its id, time and trace id) is the bus's: `platform::envelope` wraps a payload in it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// A payload with its contract name (the envelope's `type`).
pub trait ContractEvent: Serialize + DeserializeOwned {
    const KIND: &'static str;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketCreated {
    pub id: Uuid,
    pub version: i64,
    pub title: String,
    pub price: i64,
    pub user_id: Uuid,
}

impl ContractEvent for TicketCreated {
    const KIND: &'static str = "ticket:created";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TicketUpdated {
    pub id: Uuid,
    pub version: i64,
    pub title: String,
    pub price: i64,
    pub user_id: Uuid,
    #[serde(default)]
    pub order_id: Option<Uuid>,
}

impl ContractEvent for TicketUpdated {
    const KIND: &'static str = "ticket:updated";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketRef {
    pub id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedTicketRef {
    pub id: Uuid,
    pub price: i64,
}

/// An order's status, spelled as the contract spells it on the wire and in every database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum OrderStatus {
    #[serde(rename = "created")]
    Created,
    #[serde(rename = "cancelled")]
    Cancelled,
    #[serde(rename = "awaiting:payment")]
    AwaitingPayment,
    #[serde(rename = "complete")]
    Complete,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Cancelled => "cancelled",
            Self::AwaitingPayment => "awaiting:payment",
            Self::Complete => "complete",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Created, Self::Cancelled, Self::AwaitingPayment, Self::Complete]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub id: Uuid,
    pub version: i64,
    pub status: OrderStatus,
    pub user_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    pub ticket: PricedTicketRef,
}

impl ContractEvent for OrderCreated {
    const KIND: &'static str = "order:created";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub id: Uuid,
    pub version: i64,
    pub ticket: TicketRef,
}

impl ContractEvent for OrderCancelled {
    const KIND: &'static str = "order:cancelled";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCompleted {
    pub id: Uuid,
    pub version: i64,
    pub ticket: TicketRef,
}

impl ContractEvent for OrderCompleted {
    const KIND: &'static str = "order:completed";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpirationComplete {
    pub order_id: Uuid,
}

impl ContractEvent for ExpirationComplete {
    const KIND: &'static str = "expiration:complete";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentCreated {
    pub id: Uuid,
    pub order_id: Uuid,
    pub charge_id: String,
    /// When `POST /api/payments` accepted the payment (its charge attempt was written down,
    /// before `expiresAt`). A payment accepted in time completes the order even when the
    /// order's expiry was processed first. **(ours; absent from older events)**
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<OffsetDateTime>,
}

impl ContractEvent for PaymentCreated {
    const KIND: &'static str = "payment:created";
}

/// Orders will not keep a payment: the order ended before the payment was accepted, or its
/// ticket went to another buyer before a late payment arrived. Payments owes its refund. **(ours)**
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPaymentRejected {
    /// The order.
    pub id: Uuid,
    pub payment_id: Uuid,
    pub reason: String,
}

impl ContractEvent for OrderPaymentRejected {
    const KIND: &'static str = "order:payment-rejected";
}

/// A refund is owed for a payment: recorded by payments, to be retried until the gateway
/// confirms it. **(ours)**
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundCreated {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    /// Minor units.
    pub amount: i64,
}

impl ContractEvent for RefundCreated {
    const KIND: &'static str = "refund:created";
}

/// The gateway confirmed a refund. **(ours)**
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefundCompleted {
    pub payment_id: Uuid,
    pub order_id: Uuid,
    /// Minor units.
    pub amount: i64,
    pub refund_id: Option<String>,
}

impl ContractEvent for RefundCompleted {
    const KIND: &'static str = "refund:completed";
}

/// A session token was revoked (its holder signed out): every service that authenticates
/// requests refuses it from now on, until it would have expired anyway. Published by auth.
/// **(ours)**
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRevoked {
    /// The session id: the token's `jti`.
    pub id: Uuid,
    pub user_id: Uuid,
    /// The token's `exp`: after it the token is refused anyway, so the revocation can go.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl ContractEvent for SessionRevoked {
    const KIND: &'static str = "session:revoked";
}
