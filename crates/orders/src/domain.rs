//! What an order is, its life cycle, and what the rest of the marketplace is told about it.
//!
//! An order starts `created`, and ends `cancelled` (by its buyer, or when its reservation
//! window passes unpaid) or `complete` (paid). `awaiting:payment` is in the contract and is
//! treated as live, like `created`. Every change bumps the order's version by one and emits
//! the matching event ([`Order::ended_event`]); [`crate::store`] writes both in one
//! transaction. Nothing here touches the database.

pub use contract::events::OrderStatus;
use contract::events::{OrderCancelled, OrderCompleted, OrderCreated, PricedTicketRef, TicketRef};
use platform::bus::Event;
use platform::envelope::ToEvent;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

pub const ALREADY_RESERVED: &str = "Ticket is already reserved";
pub const OWN_TICKET: &str = "Cannot purchase your own ticket";
pub const COMPLETED: &str = "Cannot cancel a completed order";

/// The replica of a ticket, as the tickets service last described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub id: Uuid,
    pub title: String,
    /// Minor units.
    pub price: i64,
    pub user_id: Uuid,
    pub version: i64,
}

/// The ticket as it was when an order was placed: what the buyer saw, what the buyer is
/// charged and what the order shows for ever, whatever the ticket becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub title: String,
    /// Minor units.
    pub price: i64,
    pub version: i64,
}

/// Why an order ended cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its reservation window passed (`expiration:complete`).
    Expired,
    /// Its buyer cancelled it.
    Buyer,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::Buyer => "buyer",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Expired, Self::Buyer].into_iter().find(|reason| reason.as_str() == text)
    }
}

/// What payments gives back (or owes) for an order's charges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refund {
    /// Some refund is not confirmed by the gateway yet.
    pub pending: bool,
    /// Minor units, all refunds of the order together.
    pub amount: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: Uuid,
    pub user_id: Uuid,
    pub ticket_id: Uuid,
    pub status: OrderStatus,
    pub expires_at: OffsetDateTime,
    pub version: i64,
    pub snapshot: Snapshot,
    /// Milliseconds since the epoch, once ended.
    pub ended_at: Option<i64>,
    pub end_reason: Option<EndReason>,
}

impl Order {
    /// A new order by `user_id` for `ticket` as the replica knows it now, holding the ticket
    /// until `expires_at`.
    pub fn new(user_id: Uuid, ticket: &Ticket, expires_at: OffsetDateTime) -> Self {
        Self {
            id: Uuid::now_v7(),
            user_id,
            ticket_id: ticket.id,
            status: OrderStatus::Created,
            expires_at,
            version: 0,
            snapshot: Snapshot { title: ticket.title.clone(), price: ticket.price, version: ticket.version },
            ended_at: None,
            end_reason: None,
        }
    }

    /// `order:created`, priced from the order's own snapshot (what the buyer is charged).
    pub fn created_event(&self) -> OrderCreated {
        OrderCreated {
            id: self.id,
            version: self.version,
            status: self.status,
            user_id: self.user_id,
            expires_at: self.expires_at,
            ticket: PricedTicketRef { id: self.ticket_id, price: self.snapshot.price },
        }
    }

    /// The event telling an order's end: `order:completed` when complete, else
    /// `order:cancelled`, at the order's (new) version.
    pub fn ended_event(&self) -> Event {
        let ticket = TicketRef { id: self.ticket_id };
        match self.status {
            OrderStatus::Complete => OrderCompleted { id: self.id, version: self.version, ticket }.to_event(),
            _ => OrderCancelled { id: self.id, version: self.version, ticket }.to_event(),
        }
    }

    /// Whether a payment accepted at `accepted_at` (ms) must win although the order was
    /// cancelled: only an expiry, and only if accepted before `expiresAt`. A buyer's own
    /// cancellation that reached orders before the payment wins over it: the payment request
    /// waits for orders' verdict, so that buyer is told the order is cancelled (and refunded),
    /// never "paid".
    pub fn paid_in_time(&self, accepted_at: i64) -> bool {
        let in_window = accepted_at <= platform::db::millis(self.expires_at);
        match (self.status, self.end_reason) {
            (OrderStatus::Cancelled, Some(EndReason::Expired)) => in_window,
            (OrderStatus::Cancelled, _) => false,
            _ => in_window,
        }
    }
}

/// The `ticketId` of a new order, or the message for it.
pub fn parse_ticket_id(value: &Value) -> Result<Uuid, &'static str> {
    value.as_str().and_then(|text| Uuid::parse_str(text).ok()).ok_or("ticketId must be a valid id")
}

/// What became of a request to end an order.
#[derive(Debug)]
pub enum Ended {
    /// This call ended it; its event is enqueued.
    Now,
    /// It had already ended (cancelled or complete): nothing changed.
    Already(OrderStatus),
    /// There is no such order.
    Unknown,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn statuses_round_trip_in_the_contract_spelling() {
        for status in
            [OrderStatus::Created, OrderStatus::Cancelled, OrderStatus::AwaitingPayment, OrderStatus::Complete]
        {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), json!(status.as_str()));
        }
        assert_eq!(OrderStatus::parse("paid"), None);
    }

    #[test]
    fn ticket_ids_must_be_uuid_strings() {
        let id = Uuid::new_v4();
        assert_eq!(parse_ticket_id(&json!(id.to_string())), Ok(id));
        for bad in [json!("nope"), json!(""), json!(42), json!(null), json!([id.to_string()])] {
            assert!(parse_ticket_id(&bad).is_err(), "{bad}");
        }
    }
}
