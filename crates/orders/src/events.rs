//! The orders service's consumer: the tickets replica, expirations and payments.
//!
//! - `ticket:created` / `ticket:updated` keep the `tickets` replica, with the version rule: an
//!   update applies only on top of the version just before it; one already covered is old
//!   news (acknowledged, no change); one further ahead waits (`Retry`) for those before it.
//! - `expiration:complete` cancels the order unless it already ended (`order:cancelled`).
//! - `payment:created` completes the order unless it already ended (`order:completed`); a
//!   payment for an order cancelled meanwhile is the payments service's to refund.

use platform::bus::Event;
use platform::consumer::{EventHandler, HandleError, payload};
use platform::db::Tx;
use platform::events::{ContractEvent, ExpirationComplete, PaymentCreated, TicketCreated, TicketUpdated};
use uuid::Uuid;

use crate::domain::{self, Ended};
use crate::store;

/// The event kinds the orders service consumes.
pub const KINDS: &[&str] = &[TicketCreated::KIND, TicketUpdated::KIND, ExpirationComplete::KIND, PaymentCreated::KIND];

/// Applies ticket, expiration and payment events. Wrap it in [`platform::consumer::Consumer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderEvents;

impl EventHandler for OrderEvents {
    async fn apply(&self, tx: &mut Tx, event: &Event) -> Result<(), HandleError> {
        match event.kind.as_str() {
            TicketCreated::KIND => ticket_created(tx, payload(event)?).await,
            TicketUpdated::KIND => ticket_updated(tx, payload(event)?).await,
            ExpirationComplete::KIND => {
                let expired: ExpirationComplete = payload(event)?;
                let ended = domain::cancel_order(tx, expired.order_id).await?;
                require_known_order(expired.order_id, ended, "expiration")
            }
            PaymentCreated::KIND => {
                let paid: PaymentCreated = payload(event)?;
                let ended = domain::complete_order(tx, paid.order_id).await?;
                if let Ended::Already(status) = &ended {
                    tracing::info!(order_id = %paid.order_id, payment_id = %paid.id, status = status.as_str(), "payment for an order that already ended; order unchanged");
                }
                require_known_order(paid.order_id, ended, "payment")
            }
            other => Err(HandleError::Malformed(anyhow::anyhow!("orders does not consume {other}"))),
        }
    }
}

/// Expirations and payments name orders created here; one naming no order can never apply.
fn require_known_order(order_id: Uuid, ended: Ended, what: &str) -> Result<(), HandleError> {
    match ended {
        Ended::Unknown => Err(HandleError::Malformed(anyhow::anyhow!("{what} for unknown order {order_id}"))),
        Ended::Now | Ended::Already(_) => Ok(()),
    }
}

async fn ticket_created(tx: &mut Tx, created: TicketCreated) -> Result<(), HandleError> {
    if !store::insert_ticket(tx, &created).await? {
        tracing::debug!(ticket_id = %created.id, "ticket already replicated");
    }
    Ok(())
}

async fn ticket_updated(tx: &mut Tx, updated: TicketUpdated) -> Result<(), HandleError> {
    if store::advance_ticket(tx, &updated).await? {
        return Ok(());
    }
    match store::ticket_version(tx, updated.id).await? {
        Some(stored) if stored >= updated.version => {
            tracing::debug!(ticket_id = %updated.id, stored, version = updated.version, "old ticket update; nothing to do");
            Ok(())
        }
        Some(stored) => Err(HandleError::Retry(anyhow::anyhow!(
            "ticket {} is at version {stored}, update is {}",
            updated.id,
            updated.version
        ))),
        None => Err(HandleError::Retry(anyhow::anyhow!("ticket {} is not replicated yet", updated.id))),
    }
}
