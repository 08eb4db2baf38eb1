//! What payments hears from orders: the replica of orders it checks payments against, and
//! the payments orders rejected, which oblige it to give their charge back. The refund owed
//! is recorded here, in the event's transaction; the gateway is asked by the [`Reconciler`]
//! outside any transaction.
//!
//! [`Reconciler`]: crate::charges::Reconciler
//!
//! The replica follows the version rule: `order:created` adds the order at version 0; a
//! change applies only on top of the version just before it; an older event is old news;
//! a newer one waits (retry) for the missing one.

use std::sync::Arc;

use contract::events::{
    ContractEvent, OrderCancelled, OrderCompleted, OrderCreated, OrderPaymentRejected, OrderStatus, SessionRevoked,
};
use platform::bus::Event;
use platform::consumer::{EventHandler, HandleError, payload};
use platform::db::{Tx, millis};
use platform::revocation;
use uuid::Uuid;

use crate::charges::PaymentService;
use crate::domain::OrderRecord;
use crate::store;

/// The event kinds payments consumes.
pub const KINDS: &[&str] =
    &[OrderCreated::KIND, OrderCancelled::KIND, OrderCompleted::KIND, OrderPaymentRejected::KIND, SessionRevoked::KIND];

/// Applies order events to the replica, and records the refunds orders' rejections owe.
/// Wrap it in [`platform::consumer::Consumer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderEvents;

/// How an order change relates to the replica.
enum Step {
    Applied,
    OldNews,
}

impl OrderEvents {
    /// Applies a status change at `version` with the version rule.
    async fn change_status(
        &self,
        tx: &mut Tx,
        id: Uuid,
        new_status: OrderStatus,
        version: i64,
    ) -> Result<Step, HandleError> {
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
                if let Step::Applied = self.change_status(tx, order.id, OrderStatus::Cancelled, order.version).await? {
                    tracing::debug!(order_id = %order.id, "order cancelled");
                }
                // A payment of the order is not refunded here: one accepted before the order
                // ended still wins. Orders rejects the others (`order:payment-rejected`).
            }
            OrderPaymentRejected::KIND => {
                let rejected: OrderPaymentRejected = payload(event)?;
                let payment_id = rejected.payment_id;
                match store::owe_refund(tx, payment_id).await? {
                    Some(payment) => {
                        tracing::warn!(order_id = %payment.order_id, %payment_id, charge_id = %payment.charge_id, amount = payment.amount, reason = %rejected.reason, "refund owed");
                    }
                    None => tracing::debug!(%payment_id, "payment not kept (refund owed or made already)"),
                }
            }
            OrderCompleted::KIND => {
                let order: OrderCompleted = payload(event)?;
                if let Step::Applied = self.change_status(tx, order.id, OrderStatus::Complete, order.version).await? {
                    tracing::debug!(order_id = %order.id, "order complete");
                }
            }
            SessionRevoked::KIND => revocation::apply_event(tx, event).await?,
            other => return Err(HandleError::Malformed(anyhow::anyhow!("payments does not consume {other}"))),
        }
        Ok(())
    }
}

/// The consumer, plus wake-ups once an event's effect has committed: the reconciler when a
/// refund became owed, so it is asked for at once rather than at its next round; and the
/// payment requests waiting for orders' verdict on an order this event changed.
pub struct WakeAfterCommit<H> {
    pub consumer: Arc<platform::consumer::Consumer<H>>,
    pub payments: Arc<PaymentService>,
}

/// What to wake once an event's effect has committed.
#[derive(Debug, Clone, Copy)]
struct WakeUps {
    /// A refund became owed.
    reconciler: bool,
    /// The order whose payment the event decides (completes it, rejects a payment, or ends
    /// the order).
    verdict: Option<Uuid>,
}

impl WakeUps {
    fn of(event: &Event) -> Self {
        let verdict = match event.kind.as_str() {
            OrderCompleted::KIND => payload::<OrderCompleted>(event).ok().map(|order| order.id),
            OrderCancelled::KIND => payload::<OrderCancelled>(event).ok().map(|order| order.id),
            OrderPaymentRejected::KIND => payload::<OrderPaymentRejected>(event).ok().map(|rejected| rejected.id),
            _ => None,
        };
        Self { reconciler: event.kind == OrderPaymentRejected::KIND, verdict }
    }

    fn wake(self, payments: &PaymentService) {
        if self.reconciler {
            payments.wake_reconciler();
        }
        if let Some(order_id) = self.verdict {
            payments.verdict_applied(order_id);
        }
    }
}

impl<H: EventHandler> platform::bus::Handler for WakeAfterCommit<H> {
    async fn handle(&self, delivery: platform::bus::Delivery) -> platform::bus::Outcome {
        let wake_ups = WakeUps::of(&delivery.event);
        let outcome = self.consumer.handle(delivery).await;
        if matches!(outcome, platform::bus::Outcome::Ack) {
            wake_ups.wake(&self.payments);
        }
        outcome
    }

    async fn handle_batch(&self, deliveries: Vec<platform::bus::Delivery>) -> Vec<platform::bus::Outcome> {
        let wake_ups: Vec<WakeUps> = deliveries.iter().map(|delivery| WakeUps::of(&delivery.event)).collect();
        let outcomes = self.consumer.handle_batch(deliveries).await;
        for (wake_ups, outcome) in wake_ups.into_iter().zip(&outcomes) {
            if matches!(outcome, platform::bus::Outcome::Ack) {
                wake_ups.wake(&self.payments);
            }
        }
        outcomes
    }
}

#[cfg(test)]
mod tests {
    use contract::events::TicketRef;
    use platform::envelope::ToEvent;

    use super::*;

    /// The wake-ups after commit follow the events that decide a payment: without them a
    /// waiting payment request would only notice on its fallback poll.
    #[test]
    fn events_that_decide_an_order_wake_its_waiting_payments_and_a_rejection_the_reconciler() {
        let (order, payment) = (Uuid::new_v4(), Uuid::new_v4());
        let ticket = TicketRef { id: Uuid::new_v4() };
        let completed = WakeUps::of(&OrderCompleted { id: order, version: 1, ticket: ticket.clone() }.to_event());
        assert_eq!((completed.verdict, completed.reconciler), (Some(order), false));
        let cancelled = WakeUps::of(&OrderCancelled { id: order, version: 1, ticket }.to_event());
        assert_eq!((cancelled.verdict, cancelled.reconciler), (Some(order), false));
        let rejected = WakeUps::of(
            &OrderPaymentRejected { id: order, payment_id: payment, reason: "cancelled".into() }.to_event(),
        );
        assert_eq!((rejected.verdict, rejected.reconciler), (Some(order), true));
        let revoked = WakeUps::of(&Event::new(SessionRevoked::KIND, serde_json::json!({})));
        assert_eq!((revoked.verdict, revoked.reconciler), (None, false));
    }
}
