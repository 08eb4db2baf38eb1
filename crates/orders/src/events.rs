//! The orders service's consumer: the tickets replica, expirations, payments and refunds.
//!
//! - `ticket:created` / `ticket:updated` keep the `tickets` replica, with the version rule: an
//!   update applies only on top of the version just before it; one already covered is old
//!   news (acknowledged, no change). One further ahead is *held* (stored and acknowledged)
//!   and applied in the very transaction that applies its predecessor, so a burst of edits
//!   reaches the replica as soon as the gap fills, not after the bus's growing retry backoff.
//!   The replica feeds new orders only: an existing order keeps its own snapshot.
//! - `expiration:complete` cancels the order unless it already ended (`order:cancelled`).
//! - `payment:created` completes the order. A payment accepted before `expiresAt` wins even
//!   when its event comes after the expiry was processed: the cancelled order is revived as
//!   complete when its ticket is still free. Otherwise (the buyer cancelled first, or the
//!   ticket went to another buyer) the payment is rejected with `order:payment-rejected`, and
//!   payments owes its refund.
//! - `refund:created` / `refund:completed` record what the order shows about refunds.
//! - `session:revoked` adds the session to the revoked list ([`platform::revocation`]).

use crate::domain::{EndReason, Ended, OrderStatus};
use crate::store;
use contract::events::{
    ContractEvent, ExpirationComplete, OrderPaymentRejected, PaymentCreated, RefundCompleted, RefundCreated,
    SessionRevoked, TicketCreated, TicketUpdated,
};
use platform::bus::Event;
use platform::consumer::{EventHandler, HandleError, payload};
use platform::db::{Tx, millis};
use platform::revocation;
use uuid::Uuid;

/// The event kinds the orders service consumes.
pub const KINDS: &[&str] = &[
    TicketCreated::KIND,
    TicketUpdated::KIND,
    ExpirationComplete::KIND,
    PaymentCreated::KIND,
    RefundCreated::KIND,
    RefundCompleted::KIND,
    SessionRevoked::KIND,
];

/// Applies ticket, expiration, payment and refund events. Wrap it in
/// [`platform::consumer::Consumer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct TicketExpirationAndPaymentEvents;

impl EventHandler for TicketExpirationAndPaymentEvents {
    async fn apply(&self, tx: &mut Tx, event: &Event) -> Result<(), HandleError> {
        match event.kind.as_str() {
            TicketCreated::KIND => ticket_created(tx, payload(event)?).await,
            TicketUpdated::KIND => ticket_updated(tx, payload(event)?).await,
            ExpirationComplete::KIND => {
                let expired: ExpirationComplete = payload(event)?;
                let ended = store::cancel_order(tx, expired.order_id, EndReason::Expired).await?;
                require_known_order(expired.order_id, ended, "expiration")
            }
            PaymentCreated::KIND => payment_created(tx, event, payload(event)?).await,
            RefundCreated::KIND => {
                let owed: RefundCreated = payload(event)?;
                store::refund_owed(tx, owed.payment_id, owed.order_id, owed.amount).await?;
                tracing::info!(order_id = %owed.order_id, payment_id = %owed.payment_id, amount = owed.amount, "refund pending");
                Ok(())
            }
            RefundCompleted::KIND => {
                let done: RefundCompleted = payload(event)?;
                store::refund_done(tx, done.payment_id, done.order_id, done.amount).await?;
                tracing::info!(order_id = %done.order_id, payment_id = %done.payment_id, amount = done.amount, "refunded");
                Ok(())
            }
            SessionRevoked::KIND => revocation::apply_event(tx, event).await,
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

/// Completes the order a payment paid for, reviving it if the payment came in time; or
/// rejects the payment (see the module documentation).
async fn payment_created(tx: &mut Tx, event: &Event, paid: PaymentCreated) -> Result<(), HandleError> {
    let order_id = paid.order_id;
    let Some(order) = store::lock_order(tx, order_id).await? else {
        return Err(HandleError::Malformed(anyhow::anyhow!("payment for unknown order {order_id}")));
    };
    // Events from before `acceptedAt` existed: their publication is the latest it can have been.
    let accepted_at = millis(paid.accepted_at.unwrap_or(event.occurred_at));
    match order.status {
        OrderStatus::Created | OrderStatus::AwaitingPayment => {
            store::complete_order(tx, order_id).await?;
            Ok(())
        }
        OrderStatus::Complete => {
            // Payments keeps one payment per order; a second one is its own to refund.
            tracing::info!(%order_id, payment_id = %paid.id, "payment for an order complete already; order unchanged");
            Ok(())
        }
        OrderStatus::Cancelled => {
            let reason = if !order.paid_in_time(accepted_at) {
                "the order was cancelled before the payment reached it"
            } else if store::ticket_held_by_other(tx, order.ticket_id, order_id).await? {
                "the ticket went to another buyer before the payment arrived"
            } else {
                // Paid in time and the ticket is free: the payment wins. A concurrent new
                // order for the ticket makes this a unique violation, and the event is
                // retried (then rejected, as the ticket is taken).
                store::revive_as_complete(tx, order_id).await?.ok_or_else(|| {
                    HandleError::Retry(anyhow::anyhow!("order {order_id} changed while being revived"))
                })?;
                tracing::warn!(%order_id, payment_id = %paid.id, accepted_at, expires_at = %order.expires_at, "payment accepted in time arrived after the order ended: order revived as complete");
                return Ok(());
            };
            let rejected = OrderPaymentRejected { id: order_id, payment_id: paid.id, reason: reason.to_owned() };
            store::reject_payment(tx, &rejected).await?;
            tracing::warn!(%order_id, payment_id = %paid.id, reason, "payment rejected: payments owes its refund");
            Ok(())
        }
    }
}

async fn ticket_created(tx: &mut Tx, created: TicketCreated) -> Result<(), HandleError> {
    if !store::insert_ticket(tx, &created).await? {
        tracing::debug!(ticket_id = %created.id, "ticket already replicated");
    }
    Ok(())
}

async fn ticket_updated(tx: &mut Tx, updated: TicketUpdated) -> Result<(), HandleError> {
    // Held until this transaction ends: a concurrent update of the same ticket waits, then
    // sees this one's effect (applied, or held for it to pick up).
    let Some(stored) = store::lock_ticket_version(tx, updated.id).await? else {
        return Err(HandleError::Retry(anyhow::anyhow!("ticket {} is not replicated yet", updated.id)));
    };
    if stored >= updated.version {
        tracing::debug!(ticket_id = %updated.id, stored, version = updated.version, "old ticket update; nothing to do");
        return Ok(());
    }
    if stored < updated.version - 1 {
        store::hold_ticket_update(tx, &updated).await?;
        tracing::debug!(ticket_id = %updated.id, stored, version = updated.version, "ticket update ahead of its predecessor: held");
        return Ok(());
    }
    let mut next = Some(updated);
    while let Some(update) = next {
        if !store::advance_ticket(tx, &update).await? {
            return Err(HandleError::Retry(anyhow::anyhow!("ticket {} moved while applying an update", update.id)));
        }
        next = store::take_held_update(tx, update.id, update.version + 1).await?;
        if let Some(held) = &next {
            tracing::debug!(ticket_id = %held.id, version = held.version, "held ticket update applied");
        }
    }
    Ok(())
}
