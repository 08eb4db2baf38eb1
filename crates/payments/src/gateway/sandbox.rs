//! The sandbox gateway: Stripe's test mode, in-process, with no network and no account.
//!
//! It knows Stripe's documented test tokens: the card tokens (`tok_visa`, `tok_mastercard`,
//! ...) charge, the decline tokens (`tok_chargeDeclined...`) are declined with the message
//! Stripe gives, and any other token is unknown, as it would be to Stripe. Like Stripe it
//! remembers idempotency keys (a repeated key returns the first answer, declines included,
//! and charges nothing more; reusing a key with other parameters is refused), refuses
//! amounts under the currency's minimum, and refunds a charge once.
//!
//! Its ledger (charges, refunds, idempotency keys) is kept in the payments database
//! (`sandbox_*` tables), so, like Stripe, it outlives a restart and is shared by every
//! instance: a charge one instance took can be refunded by another. Each answer is decided in
//! one transaction that first claims the idempotency key, so two requests with one key charge
//! once. [`SandboxGateway::in_memory`] keeps the ledger in a private in-memory database instead, for
//! tests that use the gateway on its own. Nothing real is ever charged.

use anyhow::anyhow;
use platform::db::{Db, now_millis};
use sqlx::Row;
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

/// See the module documentation.
#[derive(Debug)]
pub struct SandboxGateway {
    ledger: Db,
}

const IDEMPOTENCY_MISMATCH: &str =
    "Keys for idempotent requests can only be used with the same parameters they were first used with";

fn unavailable(err: impl Into<anyhow::Error>) -> GatewayError {
    GatewayError::Unavailable(err.into().context("sandbox ledger"))
}

impl SandboxGateway {
    /// A sandbox whose ledger is a private in-memory database (tests of the gateway alone;
    /// one connection, as each SQLite in-memory connection is a database of its own).
    pub async fn in_memory() -> anyhow::Result<Self> {
        Ok(Self { ledger: Db::connect("sqlite::memory:", "sandbox", &crate::MIGRATOR).await? })
    }

    /// A sandbox whose ledger is in the payments database `db` (migrated by payments).
    pub fn with_ledger(db: Db) -> Self {
        Self { ledger: db }
    }

    async fn db(&self) -> Result<&Db, GatewayError> {
        Ok(&self.ledger)
    }

    /// Every charge taken so far, refunded ones included, oldest first.
    pub async fn charges(&self) -> Vec<SandboxCharge> {
        let db = self.db().await.expect("sandbox ledger");
        sqlx::query(
            "SELECT id, amount, currency, order_id, token, refund_id FROM sandbox_charges ORDER BY created_at, id",
        )
        .fetch_all(&db.pool)
        .await
        .expect("sandbox ledger readable")
        .iter()
        .map(|row| SandboxCharge {
            id: row.get("id"),
            amount: row.get("amount"),
            currency: row.get("currency"),
            order_id: platform::db::uuid_column(row, "order_id").expect("order id"),
            token: row.get("token"),
            refund_id: row.get("refund_id"),
        })
        .collect()
    }

    /// The charges for an order whose money is still taken.
    pub async fn kept_charges_for(&self, order_id: Uuid) -> Vec<SandboxCharge> {
        self.charges().await.into_iter().filter(|charge| charge.order_id == order_id && charge.is_kept()).collect()
    }
}

/// Claims `key` for `request` in `tx`; the first answer if the key was used before.
async fn claim_key(
    tx: &mut platform::db::Tx,
    key: &str,
    request: &str,
) -> Result<Option<sqlx::any::AnyRow>, GatewayError> {
    let claimed = sqlx::query(
        "INSERT INTO sandbox_idempotency_keys (idempotency_key, request, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (idempotency_key) DO NOTHING",
    )
    .bind(key)
    .bind(request)
    .bind(now_millis())
    .execute(&mut **tx)
    .await
    .map_err(unavailable)?
    .rows_affected();
    if claimed == 1 {
        return Ok(None);
    }
    let first = sqlx::query(
        "SELECT request, charge_id, refund_id, declined FROM sandbox_idempotency_keys WHERE idempotency_key = $1",
    )
    .bind(key)
    .fetch_one(&mut **tx)
    .await
    .map_err(unavailable)?;
    if first.get::<String, _>("request") != request {
        return Err(GatewayError::Rejected(anyhow!(IDEMPOTENCY_MISMATCH)));
    }
    Ok(Some(first))
}

#[async_trait::async_trait]
impl Gateway for SandboxGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        check_minimum(request.amount, &request.currency)?;
        let decline = DECLINE_TOKENS.iter().find(|(token, ..)| *token == request.token).map(|(_, message, _)| *message);
        if !CARD_TOKENS.contains(&request.token.as_str()) && decline.is_none() {
            // Stripe keeps no idempotent answer for a request that failed validation.
            return Err(GatewayError::InvalidToken(format!("No such token: '{}'", request.token)));
        }
        let db = self.db().await?;
        let asked = format!("charge:{}:{}:{}", request.amount, request.currency.code, request.token);
        let mut tx = db.begin().await.map_err(unavailable)?;
        if let Some(first) = claim_key(&mut tx, &request.idempotency_key, &asked).await? {
            return match first.get::<Option<String>, _>("charge_id") {
                Some(id) => Ok(Charge { id }),
                None => Err(GatewayError::Declined(first.get::<Option<String>, _>("declined").unwrap_or_default())),
            };
        }
        if let Some(message) = decline {
            sqlx::query("UPDATE sandbox_idempotency_keys SET declined = $1 WHERE idempotency_key = $2")
                .bind(message)
                .bind(&request.idempotency_key)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            return Err(GatewayError::Declined(message.to_owned()));
        }
        let id = format!("ch_sandbox_{}", Uuid::new_v4().simple());
        sqlx::query(
            "INSERT INTO sandbox_charges (id, amount, currency, order_id, token, refund_id, created_at) \
             VALUES ($1, $2, $3, $4, $5, NULL, $6)",
        )
        .bind(&id)
        .bind(request.amount)
        .bind(&request.currency.code)
        .bind(request.order_id.to_string())
        .bind(&request.token)
        .bind(now_millis())
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        sqlx::query("UPDATE sandbox_idempotency_keys SET charge_id = $1 WHERE idempotency_key = $2")
            .bind(&id)
            .bind(&request.idempotency_key)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Charge { id })
    }

    async fn refund(&self, request: &RefundRequest) -> Result<Refund, GatewayError> {
        let db = self.db().await?;
        let asked = format!("refund:{}", request.charge_id);
        let mut tx = db.begin().await.map_err(unavailable)?;
        if let Some(first) = claim_key(&mut tx, &request.idempotency_key, &asked).await? {
            return Ok(Refund { id: first.get("refund_id") });
        }
        let refunded: Option<Option<String>> =
            sqlx::query_scalar("SELECT refund_id FROM sandbox_charges WHERE id = $1")
                .bind(&request.charge_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(unavailable)?;
        let refund = match refunded {
            None => return Err(GatewayError::Rejected(anyhow!("No such charge: '{}'", request.charge_id))),
            // Stripe says charge_already_refunded; the gateways report that as done.
            Some(Some(_)) => Refund { id: None },
            Some(None) => {
                let id = format!("re_sandbox_{}", Uuid::new_v4().simple());
                sqlx::query("UPDATE sandbox_charges SET refund_id = $1 WHERE id = $2")
                    .bind(&id)
                    .bind(&request.charge_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                Refund { id: Some(id) }
            }
        };
        sqlx::query("UPDATE sandbox_idempotency_keys SET refund_id = $1 WHERE idempotency_key = $2")
            .bind(&refund.id)
            .bind(&request.idempotency_key)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        Ok(refund)
    }

    fn name(&self) -> &'static str {
        "sandbox"
    }
}
