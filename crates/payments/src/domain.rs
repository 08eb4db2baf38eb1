//! What payments keeps and the rules it decides by: the orders replica, charge attempts and
//! payments with their statuses, when an order can be paid, whether a charge is kept or
//! given back, how long an owed refund waits before it is asked again.
//!
//! Nothing here does I/O: [`crate::charges`] asks the gateway and the store and applies these
//! rules to what they answer; [`crate::store`] writes the outcome.

use crate::gateway::{ChargeRequest, GatewayError};
use contract::events::OrderStatus;
use contract::money::Currency;
use std::time::Duration;
use uuid::Uuid;

/// How long Stripe remembers an idempotency key.
pub const GATEWAY_KEY_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The longest pause between two tries of an owed refund.
pub const MAX_REFUND_BACKOFF: Duration = Duration::from_secs(300);

/// Payment statuses.
pub mod payment_status {
    /// The charge is kept: it paid the order.
    pub const SUCCEEDED: &str = "succeeded";
    /// The charge must not be kept and its refund has not gone through yet.
    pub const REFUNDING: &str = "refunding";
    pub const REFUNDED: &str = "refunded";
}

/// Charge attempt statuses (see `migrations/0002_charge_attempts.sql`).
pub mod attempt_status {
    /// Asked of the gateway (or about to be); its answer is not recorded yet.
    pub const CHARGING: &str = "charging";
    /// The gateway took the charge, and it is recorded in `payments` (kept or given back).
    pub const CHARGED: &str = "charged";
    /// The card was declined: nothing was charged.
    pub const DECLINED: &str = "declined";
    /// The gateway refused the request otherwise: nothing was charged.
    pub const FAILED: &str = "failed";
}

/// What payments knows of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    /// In minor units.
    pub price: i64,
    pub status: OrderStatus,
    pub version: i64,
    /// Milliseconds since the epoch.
    pub expires_at: i64,
}

/// A charge payments took, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentRecord {
    pub id: Uuid,
    pub order_id: Uuid,
    pub charge_id: String,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub refund_id: Option<String>,
    /// When the payment was accepted (ms since the epoch): its charge attempt's first arming.
    pub accepted_at: Option<i64>,
    /// How often the gateway failed its refund so far.
    pub refund_tries: i64,
    /// When its owed refund is next due (ms since the epoch).
    pub refund_next_at: i64,
}

impl PaymentRecord {
    /// A new payment for the charge `charge_id` an attempt got from the gateway, kept until
    /// decided otherwise.
    pub fn for_charge(attempt: &ChargeAttempt, charge_id: &str) -> Self {
        Self {
            id: Uuid::new_v4(),
            order_id: attempt.order_id,
            charge_id: charge_id.to_owned(),
            amount: attempt.amount,
            currency: attempt.currency.clone(),
            status: payment_status::SUCCEEDED.to_owned(),
            refund_id: None,
            // Accepted when the request that armed the attempt passed its checks (in time).
            accepted_at: Some(attempt.created_at),
            refund_tries: 0,
            refund_next_at: 0,
        }
    }
}

/// A charge asked of the gateway, recorded before it was asked: the write-ahead record that
/// lets a charge whose answer was lost be asked for again, with the same idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeAttempt {
    pub idempotency_key: String,
    pub order_id: Uuid,
    /// In minor units.
    pub amount: i64,
    pub currency: String,
    /// The card token, only while `charging` (asking again must repeat the same request).
    pub token: Option<String>,
    pub status: String,
    /// The gateway's charge, once `charged`.
    pub charge_id: Option<String>,
    /// Why it was declined or failed.
    pub outcome: Option<String>,
    /// How many times the reconciler asked the gateway again.
    pub tries: i64,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Milliseconds since the epoch: last (re-)armed or claimed by the reconciler.
    pub updated_at: i64,
}

impl ChargeAttempt {
    /// A new attempt to charge `order`'s price with `token`, under `idempotency_key`, at `now`.
    pub fn new(order: &OrderRecord, token: &str, idempotency_key: String, currency: &Currency, now: i64) -> Self {
        Self {
            idempotency_key,
            order_id: order.id,
            amount: order.price,
            currency: currency.code.clone(),
            token: Some(token.to_owned()),
            status: attempt_status::CHARGING.to_owned(),
            charge_id: None,
            outcome: None,
            tries: 0,
            created_at: now,
            updated_at: now,
        }
    }

    /// The request this attempt asks of the gateway, every time: same parameters, same
    /// idempotency key. `None` once settled (the token is forgotten then).
    pub fn request(&self) -> Option<ChargeRequest> {
        Some(ChargeRequest {
            amount: self.amount,
            currency: Currency::new(&self.currency),
            token: self.token.clone()?,
            order_id: self.order_id,
            idempotency_key: self.idempotency_key.clone(),
        })
    }

    /// Whether it was asked again after the gateway forgot its idempotency key: a refusal
    /// then may hide a first request that did charge.
    pub fn outlived_gateway_key(&self, now: i64) -> bool {
        self.tries > 0 && self.age(now) > GATEWAY_KEY_LIFETIME
    }

    /// How long ago it was first armed.
    pub fn age(&self, now: i64) -> Duration {
        Duration::from_millis(u64::try_from(now - self.created_at).unwrap_or(0))
    }
}

/// Why a payment was not taken (or not kept).
#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error("unknown order")]
    UnknownOrder,
    #[error("Cannot pay for a cancelled order")]
    Cancelled,
    #[error("Order has already been paid")]
    AlreadyPaid,
    #[error("Order has expired")]
    Expired,
    #[error("not the order's owner")]
    NotOwner,
    #[error("card declined: {0}")]
    Declined(String),
    #[error("invalid card token: {0}")]
    InvalidToken(String),
    #[error("{0}")]
    AmountTooSmall(String),
    #[error("payment gateway unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    #[error("unexpected: {0:#}")]
    Unexpected(anyhow::Error),
}

impl From<GatewayError> for PayError {
    fn from(err: GatewayError) -> Self {
        match err {
            GatewayError::Declined(message) => Self::Declined(message),
            GatewayError::InvalidToken(message) => Self::InvalidToken(message),
            GatewayError::AmountTooSmall(message) => Self::AmountTooSmall(message),
            GatewayError::Unavailable(err) => Self::Unavailable(err),
            GatewayError::Rejected(err) => Self::Unexpected(err),
        }
    }
}

/// Whether `user_id` may pay `order` at `now` (ms), `paid` telling whether a payment of it is
/// kept already. The checks run in the contract's order: cancelled, paid, expired, owner.
pub fn check_payable(order: &OrderRecord, paid: bool, user_id: Uuid, now: i64) -> Result<(), PayError> {
    if order.status == OrderStatus::Cancelled {
        return Err(PayError::Cancelled);
    }
    if order.status == OrderStatus::Complete || paid {
        return Err(PayError::AlreadyPaid);
    }
    if now > order.expires_at {
        return Err(PayError::Expired);
    }
    if order.user_id != user_id {
        return Err(PayError::NotOwner);
    }
    Ok(())
}

/// What to do with a charge the gateway took, decided with the order's row held.
#[derive(Debug)]
pub enum Decision {
    Keep,
    /// Record it `refunding` and refund it; answer with the error.
    GiveBack(PayError),
    /// Already recorded by another request; answer with the error.
    AlreadyRecorded(PayError),
}

impl Decision {
    /// The decision for a charge, given the order as it is now (`None`: unknown to the
    /// replica), the payment already recorded for this very charge, if any, and whether
    /// another payment of the order is kept.
    ///
    /// A cancelled order is orders' to decide: a payment accepted before it ended wins (see
    /// docs/purchase-flow.md); one that did not is rejected by orders, then refunded.
    pub fn for_charge(order: Option<OrderStatus>, recorded: Option<&PaymentRecord>, other_kept: bool) -> Self {
        match recorded {
            Some(recorded) => Self::AlreadyRecorded(match order {
                Some(OrderStatus::Cancelled) if recorded.status != payment_status::SUCCEEDED => PayError::Cancelled,
                _ => PayError::AlreadyPaid,
            }),
            None => match order {
                Some(OrderStatus::Complete) => Self::GiveBack(PayError::AlreadyPaid),
                _ if other_kept => Self::GiveBack(PayError::AlreadyPaid),
                _ => Self::Keep,
            },
        }
    }
}

/// The pause before an owed refund that failed `tries` times is asked again: `first`, doubling
/// with each failure, at most [`MAX_REFUND_BACKOFF`].
pub fn refund_pause(first: Duration, tries: i64) -> Duration {
    first
        .saturating_mul(2u32.saturating_pow(u32::try_from(tries - 1).unwrap_or(u32::MAX).min(20)))
        .min(MAX_REFUND_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(status: &str) -> PaymentRecord {
        PaymentRecord {
            id: Uuid::new_v4(),
            order_id: Uuid::new_v4(),
            charge_id: "ch_1".to_owned(),
            amount: 100,
            currency: "usd".to_owned(),
            status: status.to_owned(),
            refund_id: None,
            accepted_at: None,
            refund_tries: 0,
            refund_next_at: 0,
        }
    }

    #[test]
    fn a_charge_is_kept_once_and_never_on_a_paid_order() {
        use OrderStatus::*;
        assert!(matches!(Decision::for_charge(Some(Created), None, false), Decision::Keep));
        // Orders decides about a cancelled order (a payment in time wins).
        assert!(matches!(Decision::for_charge(Some(Cancelled), None, false), Decision::Keep));
        assert!(matches!(Decision::for_charge(Some(Complete), None, false), Decision::GiveBack(PayError::AlreadyPaid)));
        assert!(matches!(Decision::for_charge(Some(Created), None, true), Decision::GiveBack(PayError::AlreadyPaid)));
        let kept = payment(payment_status::SUCCEEDED);
        assert!(matches!(
            Decision::for_charge(Some(Cancelled), Some(&kept), false),
            Decision::AlreadyRecorded(PayError::AlreadyPaid)
        ));
        let refunding = payment(payment_status::REFUNDING);
        assert!(matches!(
            Decision::for_charge(Some(Cancelled), Some(&refunding), false),
            Decision::AlreadyRecorded(PayError::Cancelled)
        ));
    }

    #[test]
    fn refund_pauses_double_up_to_the_cap() {
        let first = Duration::from_secs(1);
        assert_eq!(refund_pause(first, 1), first);
        assert_eq!(refund_pause(first, 2), Duration::from_secs(2));
        assert_eq!(refund_pause(first, 4), Duration::from_secs(8));
        assert_eq!(refund_pause(first, 40), MAX_REFUND_BACKOFF);
    }
}
