//! The tickets service's consumer of order events: reserving, releasing and selling tickets.
//!
//! Orders are replicated into `known_orders` with the version rule: an event is applied only
//! when the stored version is exactly one less than the event's; an event already covered by
//! the stored version is old news (acknowledged, no change); an event further ahead waits
//! (`Retry`) for the ones before it. So an `order:cancelled` that overtakes its
//! `order:created` is not lost, and an `order:created` of an order already known never
//! reserves again. Every ticket change bumps the ticket's version, and the store function that
//! makes it enqueues `ticket:updated` in the same transaction.

use contract::events::{ContractEvent, OrderCancelled, OrderCompleted, OrderCreated, OrderStatus, SessionRevoked};
use platform::bus::Event;
use platform::consumer::{EventHandler, HandleError, payload};
use platform::db::Tx;
use platform::revocation;
use uuid::Uuid;

use crate::store;

/// The event kinds the tickets service consumes.
pub const KINDS: &[&str] = &[OrderCreated::KIND, OrderCancelled::KIND, OrderCompleted::KIND, SessionRevoked::KIND];

/// Applies order events to tickets. Wrap it in [`platform::consumer::Consumer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderEvents;

impl EventHandler for OrderEvents {
    async fn apply(&self, tx: &mut Tx, event: &Event) -> Result<(), HandleError> {
        match event.kind.as_str() {
            OrderCreated::KIND => order_created(tx, payload(event)?).await,
            OrderCancelled::KIND => {
                let cancelled: OrderCancelled = payload(event)?;
                order_ended(tx, cancelled.id, cancelled.version, End::Cancelled).await
            }
            OrderCompleted::KIND => {
                let completed: OrderCompleted = payload(event)?;
                order_ended(tx, completed.id, completed.version, End::Completed).await
            }
            SessionRevoked::KIND => revocation::apply_event(tx, event).await,
            other => Err(HandleError::Malformed(anyhow::anyhow!("tickets does not consume {other}"))),
        }
    }
}

fn retry(message: String) -> HandleError {
    HandleError::Retry(anyhow::anyhow!(message))
}

/// Reserves the ticket for the new order.
async fn order_created(tx: &mut Tx, order: OrderCreated) -> Result<(), HandleError> {
    if let Some(stored) = store::known_order_version(tx, order.id).await? {
        // An order's first event: whatever is stored is at least as new.
        tracing::debug!(order_id = %order.id, stored, "order already known; nothing to reserve");
        return Ok(());
    }
    store::insert_known_order(tx, order.id, order.ticket.id, order.version, "created").await?;
    if let Some(ticket) = store::reserve_ticket(tx, order.ticket.id, order.id).await? {
        tracing::info!(ticket_id = %ticket.id, order_id = %order.id, version = ticket.version, "ticket reserved");
        return Ok(());
    }
    match store::find(tx, order.ticket.id).await? {
        // Tickets are created here before any order can name them: this cannot get better.
        None => {
            Err(HandleError::Malformed(anyhow::anyhow!("order {} is for unknown ticket {}", order.id, order.ticket.id)))
        }
        // The orders service allows one live order per ticket, so the holder's
        // `order:cancelled` is on its way: wait for it.
        Some(ticket) => Err(retry(format!("ticket {} is held by another order ({:?})", ticket.id, ticket.order_id))),
    }
}

#[derive(Debug, Clone, Copy)]
enum End {
    Cancelled,
    Completed,
}

/// Releases (cancelled) or sells (completed) the ticket the order holds.
async fn order_ended(tx: &mut Tx, order_id: Uuid, version: i64, end: End) -> Result<(), HandleError> {
    let status = match end {
        End::Cancelled => OrderStatus::Cancelled,
        End::Completed => OrderStatus::Complete,
    };
    let ticket_id = match store::advance_known_order(tx, order_id, version, status).await? {
        Some(ticket_id) => ticket_id,
        None => return old_or_early(tx, order_id, version).await,
    };
    let changed = match end {
        End::Cancelled => store::release_ticket(tx, ticket_id, order_id).await?,
        End::Completed => store::sell_ticket(tx, ticket_id, order_id).await?,
    };
    match changed {
        Some(ticket) => {
            tracing::info!(%ticket_id, %order_id, version = ticket.version, ?end, "ticket changed by its order");
            Ok(())
        }
        None => match (end, store::find(tx, ticket_id).await?) {
            // Completed after a cancellation (a payment accepted in time revived it) while
            // another order holds the ticket: orders lets one order hold a ticket, so that
            // order's `order:cancelled` is on its way. Wait for it.
            (End::Completed, Some(ticket)) if ticket.order_id.is_some_and(|holder| holder != order_id) => {
                if store::is_sold(tx, ticket_id).await? {
                    tracing::error!(%ticket_id, %order_id, holder = ?ticket.order_id, "order completed for a ticket sold to another order");
                    return Ok(());
                }
                Err(retry(format!("ticket {ticket_id} is held by another order ({:?})", ticket.order_id)))
            }
            // The order did not hold the ticket (a sold ticket is never released).
            _ => Ok(()),
        },
    }
}

/// An order event that does not apply on top of the stored version: old news, or early.
async fn old_or_early(tx: &mut Tx, order_id: Uuid, version: i64) -> Result<(), HandleError> {
    match store::known_order_version(tx, order_id).await? {
        Some(stored) if stored >= version => {
            tracing::debug!(%order_id, stored, version, "old order event; nothing to do");
            Ok(())
        }
        Some(stored) => Err(retry(format!("order {order_id} is at version {stored}, event is {version}"))),
        None => Err(retry(format!("order {order_id} is not known yet"))),
    }
}
