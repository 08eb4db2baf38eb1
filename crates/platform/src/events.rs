//! The contract's events, as typed payloads. Every service that publishes or consumes an
//! event uses these types, so a shape change is a compile error, not a parked event.
//!
//! Prices in events are integer minor units (cents), never floats.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::bus::Event;

/// A payload with its contract name.
pub trait ContractEvent: Serialize + DeserializeOwned {
    const KIND: &'static str;

    /// Wraps the payload in a fresh envelope.
    fn to_event(&self) -> Event {
        Event::new(Self::KIND, serde_json::to_value(self).expect("contract events serialize"))
    }
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub id: Uuid,
    pub version: i64,
    pub status: String,
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
}

impl ContractEvent for PaymentCreated {
    const KIND: &'static str = "payment:created";
}
