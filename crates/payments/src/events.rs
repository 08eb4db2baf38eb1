//! What payments hears from orders: the replica of orders it checks payments against, and
//! the cancellations that oblige it to give a kept charge back.
//!
//! The replica follows the version rule: `order:created` adds the order at version 0; a
//! change applies only on top of the version just before it; an older event is old news;
//! a newer one waits (retry) for the missing one.

use std::sync::Arc;

use platform::bus::Event;
use platform::consumer::{EventHandler, HandleError, payload};
use platform::db::{Tx, millis, now_millis};
use platform::events::{ContractEvent, OrderCancelled, OrderCompleted, OrderCreated};
use uuid::Uuid;

use crate::domain::PaymentService;
use crate::store::{self, OrderRecord, payment_status, status};

/// The event kinds payments consumes.
pub const KINDS: &[&str] = &[OrderCreated::KIND, OrderCancelled::KIND, OrderCompleted::KIND];

pub struct OrderEvents {
    pub payments: Arc<PaymentService>,
}

/// How an order change relates to the replica.
enum Step {
    Applied,
    OldNews,
}

impl OrderEvents {
    /// Applies a status change at `version` with the version rule.
    async fn change_status(&self, tx: &mut Tx, id: Uuid, new_status: &str, version: i64) -> Result<Step, HandleError> {
        let Some(order) = store::find_order(tx, id).await? else {
            return Err(HandleError::Retry(anyhow::anyhow!("order {id} is not known yet (order:created pending)")));
        };
        if order.version >= version {
            return Ok(Step::OldNews);
        }
        if order.version != version - 1 || !store::update_order_status(tx, id, new_status, version).await? {
            return Err(HandleError::Retry(anyhow::anyhow!(
                "order {id} is at version {}, event is version {version}: waiting for the ones between",
                order.version
            )));
        }
        Ok(Step::Applied)
    }

    /// Gives back the kept charge of a cancelled order, inside the transaction that applies
    /// the cancellation: if the gateway fails, the whole event is retried.
    async fn refund_kept_payment(&self, tx: &mut Tx, order_id: Uuid) -> Result<(), HandleError> {
        let cancelled = store::find_order(tx, order_id).await?.is_some_and(|order| order.status == status::CANCELLED);
        let Some(payment) = store::kept_payment(tx, order_id).await?.filter(|_| cancelled) else {
            return Ok(());
        };
        tracing::warn!(%order_id, charge_id = %payment.charge_id, "paid order was cancelled: refunding its charge");
        let refund = self.payments.refund_charge(&payment).await.map_err(|err| {
            HandleError::Retry(anyhow::Error::from(err).context(format!("cannot refund charge {}", payment.charge_id)))
        })?;
        store::mark_refunded(tx, payment.id, refund.id.as_deref(), now_millis()).await?;
        tracing::info!(%order_id, charge_id = %payment.charge_id, refund_id = ?refund.id, status = payment_status::REFUNDED, "charge of a cancelled order refunded");
        Ok(())
    }
}

impl EventHandler for OrderEvents {
    async fn apply(&self, tx: &mut Tx, event: &Event) -> Result<(), HandleError> {
        match event.kind.as_str() {
            OrderCreated::KIND => {
                let order: OrderCreated = payload(event)?;
                let record = OrderRecord {
                    id: order.id,
                    user_id: order.user_id,
                    price: order.ticket.price,
                    status: order.status,
                    version: order.version,
                    expires_at: millis(order.expires_at),
                };
                if store::insert_order(tx, &record).await? {
                    tracing::debug!(order_id = %order.id, "order known to payments");
                }
            }
            OrderCancelled::KIND => {
                let order: OrderCancelled = payload(event)?;
                if let Step::Applied = self.change_status(tx, order.id, status::CANCELLED, order.version).await? {
                    tracing::debug!(order_id = %order.id, "order cancelled");
                }
                // Also for old news: a cancelled order never keeps a charge.
                self.refund_kept_payment(tx, order.id).await?;
            }
            OrderCompleted::KIND => {
                let order: OrderCompleted = payload(event)?;
                if let Step::Applied = self.change_status(tx, order.id, status::COMPLETE, order.version).await? {
                    tracing::debug!(order_id = %order.id, "order complete");
                }
            }
            other => return Err(HandleError::Malformed(anyhow::anyhow!("payments does not consume {other}"))),
        }
        Ok(())
    }
}
