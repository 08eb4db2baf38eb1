//! Card payments behind one trait, with two real implementations:
//! - [`StripeGateway`], Stripe's HTTP API, in production (`STRIPE_KEY`);
//! - [`SandboxGateway`], in-process and offline, the default without a key: it answers
//!   Stripe's documented test tokens the way Stripe's test mode does.
//!
//! Both honour idempotency keys (a repeated request returns the first answer and charges
//! nothing more) and both refuse amounts under Stripe's minimum for the currency before
//! anything is charged.

mod sandbox;
mod stripe;

use contract::money::Currency;
use uuid::Uuid;

pub use sandbox::{SandboxCharge, SandboxGateway};
pub use stripe::StripeGateway;

/// A card charge to make.
#[derive(Debug, Clone)]
pub struct ChargeRequest {
    /// In the currency's minor units.
    pub amount: i64,
    pub currency: Currency,
    /// The card token from the client (Stripe.js / Elements), e.g. `tok_visa`.
    pub token: String,
    pub order_id: Uuid,
    /// The same key returns the same charge instead of charging again.
    pub idempotency_key: String,
}

/// A charge the gateway took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub id: String,
}

/// Giving a whole charge back.
#[derive(Debug, Clone)]
pub struct RefundRequest {
    pub charge_id: String,
    pub idempotency_key: String,
}

/// A refund the gateway made. `id` is `None` when the charge turned out to be refunded
/// already (by an earlier attempt whose answer was lost): the money is back either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub id: Option<String>,
}

/// Why a gateway did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The card was declined; the message is the gateway's, meant for the card holder.
    #[error("card declined: {0}")]
    Declined(String),
    /// The token is unknown, used up or malformed; the message is meant for the client.
    #[error("invalid card token: {0}")]
    InvalidToken(String),
    /// The amount is under the gateway's minimum for the currency; the message says the minimum.
    #[error("{0}")]
    AmountTooSmall(String),
    /// The gateway could not be reached or failed on its side: the same request (same
    /// idempotency key) may be tried again.
    #[error("payment gateway unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// The gateway refused the request for a reason that is ours (configuration, a bug).
    #[error("payment gateway refused the request: {0:#}")]
    Rejected(anyhow::Error),
}

/// A payment gateway: charges cards and refunds charges.
#[async_trait::async_trait]
pub trait Gateway: Send + Sync + 'static {
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError>;

    async fn refund(&self, request: &RefundRequest) -> Result<Refund, GatewayError>;

    /// For logs: `stripe` or `sandbox`.
    fn name(&self) -> &'static str;
}

/// The idempotency key of the charge for `order_id` with `token`: a retried request charges
/// nothing new, while paying with another card after a decline is a new attempt.
pub fn charge_idempotency_key(order_id: Uuid, token: &str) -> String {
    format!("charge-{}", Uuid::new_v5(&order_id, token.as_bytes()))
}

/// The idempotency key of the refund of a charge: one refund per charge, however many
/// times it is asked for.
pub fn refund_idempotency_key(charge_id: &str) -> String {
    format!("refund-{charge_id}")
}

/// Stripe's minimum charge amount for a currency, in minor units, per Stripe's "minimum and
/// maximum charge amounts" table. `None` for currencies the table does not list (Stripe
/// checks those against the settlement currency's minimum itself).
pub fn minimum_charge(currency: &Currency) -> Option<i64> {
    let minimum = match currency.code.as_str() {
        "usd" | "aud" | "brl" | "cad" | "chf" | "eur" | "inr" | "nzd" | "sgd" => 50,
        "gbp" => 30,
        "jpy" => 50,
        "bgn" => 100,
        "aed" | "myr" | "pln" | "ron" => 200,
        "dkk" => 250,
        "nok" | "sek" => 300,
        "hkd" => 400,
        "mxn" | "thb" => 1000,
        "czk" => 1500,
        "huf" => 17500,
        _ => return None,
    };
    Some(minimum)
}

/// Refuses, before anything is sent, an amount the gateway would refuse.
pub fn check_minimum(amount: i64, currency: &Currency) -> Result<(), GatewayError> {
    match minimum_charge(currency) {
        Some(minimum) if amount < minimum => {
            Err(GatewayError::AmountTooSmall(format!("Amount must be at least {}", currency.format(minimum))))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimums_follow_stripes_table() {
        let check = |amount, code| check_minimum(amount, &Currency::new(code)).map_err(|err| err.to_string());
        assert_eq!(check(49, "usd"), Err("Amount must be at least $0.50".into()));
        assert!(check(50, "usd").is_ok());
        assert_eq!(check(29, "gbp"), Err("Amount must be at least £0.30".into()));
        assert!(check(30, "gbp").is_ok());
        assert_eq!(check(49, "eur"), Err("Amount must be at least €0.50".into()));
        assert_eq!(check(49, "jpy"), Err("Amount must be at least ¥50".into()));
        assert!(check(50, "jpy").is_ok());
        assert_eq!(check(399, "hkd"), Err("Amount must be at least 4.00 HKD".into()));
        assert!(check(1, "xyz").is_ok(), "unlisted currencies are left to the gateway");
    }

    #[test]
    fn idempotency_keys_depend_on_order_and_token() {
        let order = Uuid::new_v4();
        assert_eq!(charge_idempotency_key(order, "tok_visa"), charge_idempotency_key(order, "tok_visa"));
        assert_ne!(charge_idempotency_key(order, "tok_visa"), charge_idempotency_key(order, "tok_mastercard"));
        assert_ne!(charge_idempotency_key(order, "tok_visa"), charge_idempotency_key(Uuid::new_v4(), "tok_visa"));
        assert!(charge_idempotency_key(order, &"x".repeat(255)).len() <= 255, "Stripe keys are at most 255 characters");
    }
}
