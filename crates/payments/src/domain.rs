//! Paying for an order, and giving back what must not be kept.
//!
//! A payment goes: check the order (known, live, unpaid, not expired, the caller's) → charge
//! through the [`Gateway`] with an idempotency key derived from the order and the card
//! token → record it. Recording is one transaction that holds the order's row and re-reads
//! it, so it is ordered against a cancellation of the same order:
//! - the order was cancelled meanwhile: the charge is recorded `refunding`, then refunded;
//! - another charge paid the order meanwhile (a concurrent request with another card): the
//!   same, and the unique index on kept payments is the backstop if two ever got that far;
//! - the very same charge is recorded already (a concurrent request with the same card got
//!   the same charge back from the idempotency key): nothing to record, nothing to refund;
//! - otherwise the payment is recorded `succeeded` and `payment:created` is enqueued.
//!
//! A refund owed is recorded (`refunding`) before it is attempted, in the same transaction
//! that decided it, so a gateway outage or a crash cannot turn it into a kept charge: the
//! [`RefundSweeper`] retries owed refunds until they go through.
//!
//! What remains exposed: a crash (or a database outage) between the gateway's charge and the
//! recording transaction leaves a charge nobody recorded. The client sees an error and pays
//! again with the same card, which returns the same charge (same idempotency key) and
//! records it; a client that never retries leaves it to be found in the gateway's dashboard
//! by its `metadata[order_id]`.

use std::sync::Arc;
use std::time::Duration;

use platform::db::{Db, now_millis};
use platform::events::{ContractEvent, PaymentCreated};
use platform::money::Currency;
use platform::outbox::{self, OutboxWaker};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::gateway::{
    Charge, ChargeRequest, Gateway, GatewayError, Refund, RefundRequest, charge_idempotency_key, refund_idempotency_key,
};
use crate::store::{self, OrderRecord, PaymentRecord, payment_status, status};

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

impl From<sqlx::Error> for PayError {
    fn from(err: sqlx::Error) -> Self {
        if platform::db::is_unavailable(&err) { Self::Unavailable(err.into()) } else { Self::Unexpected(err.into()) }
    }
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

/// What a recording transaction decided about a charge.
enum Decision {
    Keep,
    /// Record it `refunding` and refund it; answer with the error.
    GiveBack(PayError),
    /// Already recorded by another request; answer with the error.
    AlreadyRecorded(PayError),
}

/// Takes payments for orders and gives back charges that must not be kept.
pub struct PaymentService {
    db: Db,
    gateway: Arc<dyn Gateway>,
    currency: Currency,
    outbox: OutboxWaker,
}

impl PaymentService {
    pub fn new(db: Db, gateway: Arc<dyn Gateway>, currency: Currency, outbox: OutboxWaker) -> Self {
        Self { db, gateway, currency, outbox }
    }

    /// Pays `order_id` for `user_id` with a card `token`; the new payment's id.
    pub async fn pay(&self, user_id: Uuid, order_id: Uuid, token: &str) -> Result<Uuid, PayError> {
        let order = {
            // Held only for the checks: never across the gateway call.
            let mut conn = self.db.pool.acquire().await?;
            let order = store::find_order(&mut conn, order_id).await?.ok_or(PayError::UnknownOrder)?;
            if order.status == status::CANCELLED {
                return Err(PayError::Cancelled);
            }
            if order.status == status::COMPLETE || store::kept_payment(&mut conn, order_id).await?.is_some() {
                return Err(PayError::AlreadyPaid);
            }
            if now_millis() > order.expires_at {
                return Err(PayError::Expired);
            }
            if order.user_id != user_id {
                return Err(PayError::NotOwner);
            }
            order
        };
        let request = ChargeRequest {
            amount: order.price,
            currency: self.currency.clone(),
            token: token.to_owned(),
            order_id,
            idempotency_key: charge_idempotency_key(order_id, token),
        };
        let charge = self.gateway.charge(&request).await.inspect_err(|err| match err {
            GatewayError::Declined(message) => tracing::info!(%order_id, reason = %message, "card declined"),
            other => tracing::warn!(%order_id, gateway = self.gateway.name(), error = %other, "charge failed"),
        })?;
        self.record_charge(&order, &charge).await
    }

    /// Records a charge the gateway took for `order`: kept, or given back if the order was
    /// cancelled or paid by another charge meanwhile (see the module documentation).
    pub async fn record_charge(&self, order: &OrderRecord, charge: &Charge) -> Result<Uuid, PayError> {
        let mut payment = PaymentRecord {
            id: Uuid::new_v4(),
            order_id: order.id,
            charge_id: charge.id.clone(),
            amount: order.price,
            currency: self.currency.code.clone(),
            status: payment_status::SUCCEEDED.to_owned(),
            refund_id: None,
        };
        let mut tx = self.db.begin().await?;
        let current = store::lock_order(&mut tx, order.id).await?;
        let decision = match store::payment_by_charge(&mut tx, &charge.id).await? {
            Some(recorded) => Decision::AlreadyRecorded(match current.as_ref().map(|order| order.status.as_str()) {
                Some(status::CANCELLED) if recorded.status != payment_status::SUCCEEDED => PayError::Cancelled,
                _ => PayError::AlreadyPaid,
            }),
            None => match current.as_ref().map(|order| order.status.as_str()) {
                Some(status::CANCELLED) => Decision::GiveBack(PayError::Cancelled),
                Some(status::COMPLETE) => Decision::GiveBack(PayError::AlreadyPaid),
                _ if store::kept_payment(&mut tx, order.id).await?.is_some() => {
                    Decision::GiveBack(PayError::AlreadyPaid)
                }
                _ => Decision::Keep,
            },
        };
        match decision {
            Decision::AlreadyRecorded(err) => {
                tracing::info!(order_id = %order.id, charge_id = %charge.id, "charge recorded already by another request");
                Err(err)
            }
            Decision::Keep => {
                match store::insert_payment(&mut tx, &payment, now_millis()).await {
                    Ok(()) => {}
                    // The backstop: another payment was recorded between the checks and the
                    // insert. Decide again, now that it is visible.
                    Err(err) if platform::db::is_unique_violation(&err) => {
                        drop(tx);
                        return Box::pin(self.record_charge(order, charge)).await;
                    }
                    Err(err) => return Err(err.into()),
                }
                let event = PaymentCreated { id: payment.id, order_id: order.id, charge_id: charge.id.clone() };
                outbox::enqueue(&mut tx, &event.to_event()).await?;
                tx.commit().await?;
                self.outbox.wake();
                tracing::info!(order_id = %order.id, payment_id = %payment.id, charge_id = %charge.id, amount = order.price, "payment taken");
                Ok(payment.id)
            }
            Decision::GiveBack(err) => {
                payment.status = payment_status::REFUNDING.to_owned();
                store::insert_payment(&mut tx, &payment, now_millis()).await?;
                tx.commit().await?;
                tracing::warn!(order_id = %order.id, charge_id = %charge.id, reason = %err, "charge must not be kept: refunding it");
                if let Err(refund_err) = self.refund(&payment).await {
                    // Recorded as owed: the sweeper gives it back once the gateway answers.
                    tracing::warn!(order_id = %order.id, charge_id = %charge.id, error = %refund_err, "refund failed; it will be retried");
                }
                Err(err)
            }
        }
    }

    /// Asks the gateway to refund a payment's charge. Safe to repeat: the gateway sees the
    /// same idempotency key each time, and refunds once.
    pub async fn refund_charge(&self, payment: &PaymentRecord) -> Result<Refund, GatewayError> {
        self.gateway
            .refund(&RefundRequest {
                charge_id: payment.charge_id.clone(),
                idempotency_key: refund_idempotency_key(&payment.charge_id),
            })
            .await
    }

    /// Refunds a payment's charge and records it refunded.
    pub async fn refund(&self, payment: &PaymentRecord) -> Result<(), RefundError> {
        let refund = self.refund_charge(payment).await?;
        let mut conn = self.db.pool.acquire().await?;
        store::mark_refunded(&mut conn, payment.id, refund.id.as_deref(), now_millis()).await?;
        tracing::info!(order_id = %payment.order_id, charge_id = %payment.charge_id, refund_id = ?refund.id, "charge refunded");
        Ok(())
    }

    /// Retries refunds still owed; how many went through.
    pub async fn retry_owed_refunds(&self) -> Result<usize, sqlx::Error> {
        let owed = {
            let mut conn = self.db.pool.acquire().await?;
            store::refunds_owed(&mut conn, 100).await?
        };
        let mut done = 0;
        for payment in &owed {
            match self.refund(payment).await {
                Ok(()) => done += 1,
                Err(err) => {
                    tracing::warn!(order_id = %payment.order_id, charge_id = %payment.charge_id, error = %err, "owed refund failed again; will retry")
                }
            }
        }
        Ok(done)
    }

    /// What payments knows of an order, if anything yet.
    pub async fn order(&self, order_id: Uuid) -> Result<Option<OrderRecord>, sqlx::Error> {
        let mut conn = self.db.pool.acquire().await?;
        store::find_order(&mut conn, order_id).await
    }

    /// Every payment of an order, oldest first.
    pub async fn payments_for_order(&self, order_id: Uuid) -> Result<Vec<PaymentRecord>, sqlx::Error> {
        let mut conn = self.db.pool.acquire().await?;
        store::payments_for_order(&mut conn, order_id).await
    }
}

/// A refund that failed at the gateway, or could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("cannot record the refund: {0}")]
    Db(#[from] sqlx::Error),
}

/// Retries owed refunds until shutdown.
pub struct RefundSweeper {
    payments: Arc<PaymentService>,
    every: Duration,
}

impl RefundSweeper {
    pub fn new(payments: Arc<PaymentService>, every: Duration) -> Self {
        Self { payments, every }
    }

    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                match self.payments.retry_owed_refunds().await {
                    Ok(0) => {}
                    Ok(done) => tracing::info!(done, "owed refunds went through"),
                    Err(err) => tracing::warn!(error = %err, "cannot look for owed refunds"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(self.every) => {}
                }
            }
            tracing::debug!("refund sweeper stopped");
        })
    }
}
