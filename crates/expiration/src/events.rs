//! What expiration hears from orders: a new order starts its timer, an order that is
//! cancelled or paid no longer needs one.

use contract::events::{ContractEvent, OrderCancelled, OrderCompleted, OrderCreated};
use platform::bus::{Delivery, Handler, Outcome};
use platform::consumer::{Consumer, EventHandler, HandleError, payload};
use platform::db::{Tx, millis};

use crate::store;
use crate::timers::TimerWaker;

/// The event kinds expiration consumes.
pub const KINDS: &[&str] = &[OrderCreated::KIND, OrderCancelled::KIND, OrderCompleted::KIND];

/// Applies order events to the timers table.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderEvents;

impl EventHandler for OrderEvents {
    async fn apply(&self, tx: &mut Tx, event: &platform::bus::Event) -> Result<(), HandleError> {
        match event.kind.as_str() {
            OrderCreated::KIND => {
                let order: OrderCreated = payload(event)?;
                let fire_at = millis(order.expires_at);
                if store::schedule(tx, order.id, fire_at).await? {
                    tracing::debug!(order_id = %order.id, expires_at = %order.expires_at, "expiration timer scheduled");
                }
            }
            OrderCancelled::KIND => {
                let order: OrderCancelled = payload(event)?;
                if store::unschedule(tx, order.id).await? {
                    tracing::debug!(order_id = %order.id, "order cancelled: expiration timer dropped");
                }
            }
            OrderCompleted::KIND => {
                let order: OrderCompleted = payload(event)?;
                if store::unschedule(tx, order.id).await? {
                    tracing::debug!(order_id = %order.id, "order paid: expiration timer dropped");
                }
            }
            other => return Err(HandleError::Malformed(anyhow::anyhow!("expiration does not consume {other}"))),
        }
        Ok(())
    }
}

/// The consumer, plus a wake-up for the timer loop once an event's effect has committed, so
/// a new timer is taken into account at once rather than at the loop's next look.
pub struct WakeTimersAfter<H> {
    pub consumer: std::sync::Arc<Consumer<H>>,
    pub timers: TimerWaker,
}

impl<H: EventHandler> Handler for WakeTimersAfter<H> {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        let outcome = self.consumer.handle(delivery).await;
        if matches!(outcome, Outcome::Ack) {
            self.timers.wake();
        }
        outcome
    }

    async fn handle_batch(&self, deliveries: Vec<Delivery>) -> Vec<Outcome> {
        let outcomes = self.consumer.handle_batch(deliveries).await;
        if outcomes.iter().any(|outcome| matches!(outcome, Outcome::Ack)) {
            self.timers.wake();
        }
        outcomes
    }
}
