//! The sandbox gateway: Stripe's test mode, in-process, with no network and no account.
//!
//! It knows Stripe's documented test tokens: the card tokens (`tok_visa`, `tok_mastercard`,
//! ...) charge, the decline tokens (`tok_chargeDeclined...`) are declined with the message
//! Stripe gives, and any other token is unknown, as it would be to Stripe. Like Stripe it
//! remembers idempotency keys (a repeated key returns the first answer, declines included,
//! and charges nothing more; reusing a key with other parameters is refused), refuses
//! amounts under the currency's minimum, and refunds a charge once. Its ledger lives in
//! memory: it is for development and tests, where nothing real is charged.

use std::collections::HashMap;
use std::sync::Mutex;

use anyhow::anyhow;
use uuid::Uuid;

use super::{Charge, ChargeRequest, Gateway, GatewayError, Refund, RefundRequest, check_minimum};

/// Tokens of Stripe's test cards that charge successfully.
const CARD_TOKENS: &[&str] = &[
    "tok_visa",
    "tok_visa_debit",
    "tok_mastercard",
    "tok_mastercard_debit",
    "tok_mastercard_prepaid",
    "tok_amex",
    "tok_discover",
    "tok_diners",
    "tok_jcb",
    "tok_unionpay",
    "tok_bypassPending",
    "tok_domesticPricing",
];

const DECLINED: &str = "Your card was declined.";

/// Stripe's decline tokens and the message (and decline code) a charge with each gets.
const DECLINE_TOKENS: &[(&str, &str, &str)] = &[
    ("tok_chargeDeclined", DECLINED, "generic_decline"),
    ("tok_chargeDeclinedInsufficientFunds", "Your card has insufficient funds.", "insufficient_funds"),
    ("tok_chargeDeclinedFraudulent", DECLINED, "fraudulent"),
    ("tok_chargeDeclinedIncorrectCvc", "Your card's security code is incorrect.", "incorrect_cvc"),
    ("tok_chargeDeclinedExpiredCard", "Your card has expired.", "expired_card"),
    (
        "tok_chargeDeclinedProcessingError",
        "An error occurred while processing your card. Try again in a little bit.",
        "processing_error",
    ),
    ("tok_chargeDeclinedLostCard", DECLINED, "lost_card"),
    ("tok_chargeDeclinedStolenCard", DECLINED, "stolen_card"),
];

/// A charge in the sandbox's ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxCharge {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub order_id: Uuid,
    pub token: String,
    pub refund_id: Option<String>,
}

impl SandboxCharge {
    /// Whether the money is still taken.
    pub fn is_kept(&self) -> bool {
        self.refund_id.is_none()
    }
}

/// The first answer to an idempotency key, with what was asked (a key is bound to its request).
#[derive(Debug, Clone)]
struct Remembered {
    request: (i64, String, String),
    answer: Result<String, String>,
}

#[derive(Debug, Default)]
struct Ledger {
    charges: Vec<SandboxCharge>,
    charge_keys: HashMap<String, Remembered>,
    refund_keys: HashMap<String, (String, Refund)>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct SandboxGateway {
    ledger: Mutex<Ledger>,
}

impl SandboxGateway {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every charge taken so far, refunded ones included, oldest first.
    pub fn charges(&self) -> Vec<SandboxCharge> {
        self.ledger.lock().expect("sandbox ledger poisoned").charges.clone()
    }

    /// The charges for an order whose money is still taken.
    pub fn kept_charges_for(&self, order_id: Uuid) -> Vec<SandboxCharge> {
        self.charges().into_iter().filter(|charge| charge.order_id == order_id && charge.is_kept()).collect()
    }
}

#[async_trait::async_trait]
impl Gateway for SandboxGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        check_minimum(request.amount, &request.currency)?;
        let mut ledger = self.ledger.lock().expect("sandbox ledger poisoned");
        let asked = (request.amount, request.currency.code.clone(), request.token.clone());
        if let Some(remembered) = ledger.charge_keys.get(&request.idempotency_key) {
            if remembered.request != asked {
                return Err(GatewayError::Rejected(anyhow!(
                    "Keys for idempotent requests can only be used with the same parameters they were first used with"
                )));
            }
            return remembered.answer.clone().map(|id| Charge { id }).map_err(GatewayError::Declined);
        }
        let answer = if CARD_TOKENS.contains(&request.token.as_str()) {
            let id = format!("ch_sandbox_{}", Uuid::new_v4().simple());
            ledger.charges.push(SandboxCharge {
                id: id.clone(),
                amount: request.amount,
                currency: request.currency.code.clone(),
                order_id: request.order_id,
                token: request.token.clone(),
                refund_id: None,
            });
            Ok(id)
        } else if let Some((_, message, _)) = DECLINE_TOKENS.iter().find(|(token, ..)| *token == request.token) {
            Err((*message).to_owned())
        } else {
            // Stripe keeps no idempotent answer for a request that failed validation.
            return Err(GatewayError::InvalidToken(format!("No such token: '{}'", request.token)));
        };
        ledger
            .charge_keys
            .insert(request.idempotency_key.clone(), Remembered { request: asked, answer: answer.clone() });
        answer.map(|id| Charge { id }).map_err(GatewayError::Declined)
    }

    async fn refund(&self, request: &RefundRequest) -> Result<Refund, GatewayError> {
        let mut ledger = self.ledger.lock().expect("sandbox ledger poisoned");
        if let Some((charge_id, refund)) = ledger.refund_keys.get(&request.idempotency_key) {
            if *charge_id != request.charge_id {
                return Err(GatewayError::Rejected(anyhow!(
                    "Keys for idempotent requests can only be used with the same parameters they were first used with"
                )));
            }
            return Ok(refund.clone());
        }
        let Some(charge) = ledger.charges.iter_mut().find(|charge| charge.id == request.charge_id) else {
            return Err(GatewayError::Rejected(anyhow!("No such charge: '{}'", request.charge_id)));
        };
        let refund = if charge.refund_id.is_some() {
            // Stripe says charge_already_refunded; the gateways report that as done.
            Refund { id: None }
        } else {
            let id = format!("re_sandbox_{}", Uuid::new_v4().simple());
            charge.refund_id = Some(id.clone());
            Refund { id: Some(id) }
        };
        ledger.refund_keys.insert(request.idempotency_key.clone(), (request.charge_id.clone(), refund.clone()));
        Ok(refund)
    }

    fn name(&self) -> &'static str {
        "sandbox"
    }
}
