//! Paying for an order, and giving back what must not be kept: the payments application
//! service ([`PaymentService`]) and its [`Reconciler`].
//!
//! Why a module of its own rather than `domain.rs`: this is where the gateway (network calls
//! that may hang or fail) and the store (transactions) meet, and the order of those calls is
//! what keeps the money invariants (never charge twice, a refund owed is never lost). The rules
//! it applies are in [`crate::domain`] (no I/O), every query in [`crate::store`].
//!
//! A payment goes: check the order (known, live, unpaid, not expired, the caller's) → write
//! down the charge attempt → charge through the [`Gateway`] with an idempotency key derived
//! from the order and the card token → settle the attempt.
//!
//! The attempt (`charge_attempts`, status `charging`, with the idempotency key, order, amount,
//! currency and the card token) is committed on its own before the gateway is asked: it is
//! the write-ahead record that nothing the gateway charged can go unrecorded. Settling it:
//! - the gateway charged: the charge is recorded (below) and the attempt becomes `charged`,
//!   in one transaction;
//! - the card was declined (or the gateway refused the request): the attempt becomes
//!   `declined` (or `failed`); nothing was charged and the order can still be paid;
//! - the gateway is unavailable (no answer, a timeout, its 5xx), or the database fails while
//!   recording: the attempt stays `charging`, the client gets 503, and the [`Reconciler`]
//!   settles it later.
//!
//! Recording a charge is one transaction that holds the order's row and re-reads it, so it is
//! ordered against a cancellation of the same order:
//! - the order was cancelled meanwhile: the charge is recorded `refunding`, then refunded;
//! - another charge paid the order meanwhile (a concurrent request with another card): the
//!   same, and the unique index on kept payments is the backstop if two ever got that far;
//! - the very same charge is recorded already (a concurrent request with the same card got
//!   the same charge back from the idempotency key): nothing to record, nothing to refund;
//! - otherwise the payment is recorded `succeeded` and `payment:created` is enqueued.
//!
//! A refund owed is recorded (`refunding`) before it is attempted, in the same transaction
//! that decided it, so a gateway outage or a crash cannot turn it into a kept charge.
//!
//! The [`Reconciler`] runs in every instance. Each round it takes the attempts still
//! `charging` after a grace period (a crash, a database or gateway outage came between the
//! attempt and its settlement), claims each one (so two instances do not ask at once), asks
//! the gateway again with the attempt's own request and idempotency key, and settles the
//! answer exactly as a request would. Stripe answers a repeated key with the first request's
//! result, so a charge that went through is returned, not taken twice, and a charge that
//! never left is made now. Then it retries the refunds still owed. The grace period should
//! be longer than a gateway call can take, so that it does not ask while the request itself
//! is still waiting for its answer (harmless, but wasted).
//!
//! Limits, written down:
//! - the card token is stored while the attempt is `charging`, because asking again with the
//!   same key must repeat the very same request (Stripe refuses a key reused with other
//!   parameters); it is a single-use token, not card data, and is cleared on settlement;
//! - Stripe forgets idempotency keys after 24 hours: an attempt left `charging` longer (the
//!   service down for a day) is answered "token already used" if its charge went through,
//!   and is settled `failed`, logged as an error naming the order: find its charge in the
//!   dashboard by `metadata[order_id]`;
//! - the sandbox keeps its idempotency keys in memory: after a restart, asking again makes a
//!   new sandbox charge (the first one died with the process). Nothing is charged in the
//!   sandbox, so this is accepted.

use crate::domain::{
    ChargeAttempt, Decision, MAX_REFUND_BACKOFF, OrderRecord, PayError, PaymentRecord, attempt_status, check_payable,
    payment_status, refund_pause,
};
use crate::gateway::{
    Charge, Gateway, GatewayError, Refund, RefundRequest, charge_idempotency_key, refund_idempotency_key,
};
use crate::store;
use contract::events::OrderStatus;
use contract::money::Currency;
use platform::clock::Clock;
use platform::db::{Db, now_millis};
use platform::outbox::OutboxWaker;
use platform::worker::{Job, Step, Waker, Worker};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How many unsettled attempts, and owed refunds, one reconciler round takes on.
const BATCH: i64 = 100;
/// How often a payment request waiting for orders' verdict looks again without a wake-up:
/// another instance of payments may be the one that applies the verdict.
const VERDICT_POLL: Duration = Duration::from_millis(50);
/// How long an instance holds an owed refund it is asking the gateway for.
const REFUND_LEASE: Duration = Duration::from_secs(60);

/// Takes payments for orders and gives back charges that must not be kept.
pub struct PaymentService {
    db: Db,
    gateway: Arc<dyn Gateway>,
    currency: Currency,
    outbox: OutboxWaker,
    /// How long `POST /api/payments` waits for orders' verdict on an accepted payment.
    confirm_wait: Duration,
    /// The first pause before an owed refund is asked again (doubling, up to
    /// [`MAX_REFUND_BACKOFF`]).
    refund_backoff: Duration,
    /// Wakes the [`Reconciler`] when a refund becomes owed.
    reconcile: Waker,
    /// The payment requests waiting for orders' verdict, woken when this instance applies it.
    verdicts: Verdicts,
    /// The clock an order's `expiresAt` is checked on, and owed refunds are scheduled on (their
    /// lease and the pause before the next try).
    clock: Clock,
}

impl PaymentService {
    pub fn new(db: Db, gateway: Arc<dyn Gateway>, currency: Currency, outbox: OutboxWaker) -> Self {
        Self {
            db,
            gateway,
            currency,
            outbox,
            confirm_wait: Duration::ZERO,
            refund_backoff: Duration::from_secs(1),
            reconcile: Waker::default(),
            verdicts: Verdicts::default(),
            clock: Clock::System,
        }
    }

    /// Checks windows on `clock` rather than the system's (see [`platform::clock`]).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// How long a payment request waits for orders to complete the order (see [`Self::pay`]),
    /// and the first pause before a failed refund is asked again.
    pub fn with_timing(mut self, confirm_wait: Duration, refund_backoff: Duration) -> Self {
        self.confirm_wait = confirm_wait;
        self.refund_backoff = refund_backoff.max(Duration::from_millis(1));
        self
    }

    /// Wakes the reconciler (a refund is owed).
    pub fn wake_reconciler(&self) {
        self.reconcile.wake();
    }

    /// Wakes the payment requests waiting for orders' verdict on `order_id` (its replica here
    /// has just changed: complete, cancelled, or a payment rejected).
    pub fn verdict_applied(&self, order_id: Uuid) {
        self.verdicts.wake(order_id);
    }

    /// The reconciler's wake-up.
    pub fn reconciler_waker(&self) -> Waker {
        self.reconcile.clone()
    }

    /// Pays `order_id` for `user_id` with a card `token`; the new payment's id.
    pub async fn pay(&self, user_id: Uuid, order_id: Uuid, token: &str) -> Result<Uuid, PayError> {
        let order = {
            // Held only for the checks: never across the gateway call.
            let mut conn = self.db.pool.acquire().await?;
            let order = store::find_order(&mut conn, order_id).await?.ok_or(PayError::UnknownOrder)?;
            let paid = store::kept_payment(&mut conn, order_id).await?.is_some();
            check_payable(&order, paid, user_id, self.clock.now_millis())?;
            order
        };
        let attempt = self.begin_charge(&order, token).await?;
        let request = attempt.request().ok_or_else(|| PayError::Unexpected(anyhow::anyhow!("attempt has no token")))?;
        let answer = self.gateway.charge(&request).await;
        let payment_id = self.settle(&attempt, answer).await?;
        self.await_verdict(order_id, payment_id).await
    }

    /// Waits (at most `confirm_wait`) until orders has completed the order with this payment,
    /// so that the buyer told "paid" finds the order complete, and a cancellation asked after
    /// this answer is refused. If orders rejected the payment meanwhile (the buyer's cancel
    /// reached orders first), the charge is being refunded: the answer says the order is
    /// cancelled. On timeout (the bus is slow) the payment stands as accepted: orders completes
    /// the order, reviving it if needed, when the event arrives.
    async fn await_verdict(&self, order_id: Uuid, payment_id: Uuid) -> Result<Uuid, PayError> {
        if self.confirm_wait.is_zero() {
            return Ok(payment_id);
        }
        let deadline = tokio::time::Instant::now() + self.confirm_wait;
        let watch = self.verdicts.watch(order_id);
        loop {
            // Listening before looking, so a verdict applied in between still wakes us.
            let woken = watch.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            {
                let mut conn = self.db.pool.acquire().await?;
                if store::find_order(&mut conn, order_id)
                    .await?
                    .is_some_and(|order| order.status == OrderStatus::Complete)
                {
                    return Ok(payment_id);
                }
                let payment = store::find_payment(&mut conn, payment_id).await?;
                if payment.is_some_and(|payment| payment.status != payment_status::SUCCEEDED) {
                    return Err(PayError::Cancelled);
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                tracing::warn!(%order_id, %payment_id, wait = ?self.confirm_wait, "payment accepted; orders has not confirmed it yet");
                return Ok(payment_id);
            }
            tokio::select! {
                () = &mut woken => {}
                () = tokio::time::sleep(VERDICT_POLL.min(deadline - now)) => {}
            }
        }
    }

    /// Writes down (and commits) the attempt to charge `order` with `token`, before the
    /// gateway is asked: from here on, whatever the gateway does is settled, by the request
    /// or by the [`Reconciler`].
    pub async fn begin_charge(&self, order: &OrderRecord, token: &str) -> Result<ChargeAttempt, PayError> {
        let now = now_millis();
        let key = charge_idempotency_key(order.id, token);
        let attempt = ChargeAttempt::new(order, token, key, &self.currency, now);
        let mut conn = self.db.pool.acquire().await?;
        let stored = store::arm_attempt(&mut conn, &attempt, now).await?;
        // Already `charged` (a request racing one that has just settled): the gateway returns
        // that same charge, and recording it finds it recorded. The request is the same.
        Ok(ChargeAttempt { token: attempt.token, ..stored })
    }

    /// Settles an attempt with the gateway's answer (see the module documentation).
    pub async fn settle(
        &self,
        attempt: &ChargeAttempt,
        answer: Result<Charge, GatewayError>,
    ) -> Result<Uuid, PayError> {
        let order_id = attempt.order_id;
        let charges = &httpkit::metrics::metrics().payments_charges;
        let outcome = |outcome| charges.get_or_create(&httpkit::metrics::OutcomeLabels { outcome }).inc();
        let err = match answer {
            Ok(charge) => {
                outcome("charged");
                return self.record_charge(attempt, &charge).await;
            }
            Err(GatewayError::Unavailable(err)) => {
                outcome("unknown");
                tracing::warn!(%order_id, idempotency_key = %attempt.idempotency_key, gateway = self.gateway.name(), error = %format!("{err:#}"), "charge outcome unknown: gateway unavailable; the attempt stays charging for the reconciler");
                return Err(PayError::Unavailable(err));
            }
            Err(err) => err,
        };
        let outcome = match &err {
            GatewayError::Declined(message) => {
                outcome("declined");
                tracing::info!(%order_id, reason = %message, "card declined");
                attempt_status::DECLINED
            }
            other => {
                outcome("failed");
                tracing::warn!(%order_id, gateway = self.gateway.name(), error = %other, "charge refused");
                attempt_status::FAILED
            }
        };
        let now = now_millis();
        if attempt.outlived_gateway_key(now) && outcome == attempt_status::FAILED {
            tracing::error!(%order_id, idempotency_key = %attempt.idempotency_key, age = ?attempt.age(now), error = %err, "a charge attempt older than the gateway's idempotency window was refused when asked again: if its first request charged, that charge is unrecorded; look it up by metadata[order_id]");
        }
        let marked = async {
            let mut conn = self.db.pool.acquire().await?;
            store::mark_attempt_refused(&mut conn, &attempt.idempotency_key, outcome, &err.to_string(), now_millis())
                .await
        };
        if let Err(db_err) = marked.await {
            // Left `charging`: the reconciler asks again and gets the same answer.
            tracing::warn!(%order_id, error = %db_err, "cannot record the refused charge attempt; the reconciler will settle it");
        }
        Err(err.into())
    }

    /// Records a charge the gateway took for an attempt, and settles the attempt `charged`:
    /// the charge is kept, or given back if the order was cancelled or paid by another charge
    /// meanwhile (see the module documentation).
    pub async fn record_charge(&self, attempt: &ChargeAttempt, charge: &Charge) -> Result<Uuid, PayError> {
        let order_id = attempt.order_id;
        let payment = PaymentRecord::for_charge(attempt, &charge.id);
        let mut tx = self.db.begin().await?;
        // Held until commit: a cancellation of the order is decided before or after this.
        let current = store::lock_order(&mut tx, order_id).await?.map(|order| order.status);
        let recorded = store::payment_by_charge(&mut tx, &charge.id).await?;
        let other_kept = recorded.is_none() && store::kept_payment(&mut tx, order_id).await?.is_some();
        match Decision::for_charge(current, recorded.as_ref(), other_kept) {
            Decision::AlreadyRecorded(err) => {
                store::mark_attempt_charged(&mut tx, &attempt.idempotency_key, &charge.id, now_millis()).await?;
                tx.commit().await?;
                tracing::info!(%order_id, charge_id = %charge.id, "charge recorded already by another request");
                Err(err)
            }
            Decision::Keep => {
                match store::keep_payment(&mut tx, attempt, &payment, now_millis()).await {
                    Ok(()) => {}
                    // The backstop: another payment was recorded between the checks and the
                    // insert. Decide again, now that it is visible.
                    Err(err) if platform::db::is_unique_violation(&err) => {
                        drop(tx);
                        return Box::pin(self.record_charge(attempt, charge)).await;
                    }
                    Err(err) => return Err(err.into()),
                }
                tx.commit().await?;
                self.outbox.wake();
                tracing::info!(%order_id, payment_id = %payment.id, charge_id = %charge.id, amount = attempt.amount, "payment taken");
                Ok(payment.id)
            }
            Decision::GiveBack(err) => {
                store::give_back_payment(&mut tx, attempt, &payment, now_millis()).await?;
                tx.commit().await?;
                self.outbox.wake();
                self.wake_reconciler();
                tracing::warn!(%order_id, charge_id = %charge.id, reason = %err, "charge must not be kept: refund owed");
                Err(err)
            }
        }
    }

    /// Asks the gateway again for every attempt left `charging` for longer than `grace`, and
    /// settles each answer; how many were settled.
    pub async fn reconcile_charges(&self, grace: Duration) -> Result<usize, sqlx::Error> {
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let unsettled = {
            let mut conn = self.db.pool.acquire().await?;
            store::unsettled_attempts(&mut conn, now_millis().saturating_sub(grace_ms), BATCH).await?
        };
        let mut settled = 0;
        for attempt in unsettled {
            let claimed = {
                let mut conn = self.db.pool.acquire().await?;
                store::claim_attempt(&mut conn, &attempt, now_millis()).await?
            };
            if !claimed {
                continue; // a retried request, or another instance, is on it
            }
            let attempt = ChargeAttempt { tries: attempt.tries + 1, ..attempt };
            let order_id = attempt.order_id;
            let Some(request) = attempt.request() else {
                tracing::error!(%order_id, idempotency_key = %attempt.idempotency_key, "unsettled charge attempt has no token: cannot ask the gateway again");
                continue;
            };
            tracing::info!(%order_id, idempotency_key = %attempt.idempotency_key, tries = attempt.tries, "charge attempt left unsettled: asking the gateway again with its idempotency key");
            let answer = self.gateway.charge(&request).await;
            let refused = matches!(&answer, Err(err) if !matches!(err, GatewayError::Unavailable(_)));
            match self.settle(&attempt, answer).await {
                Ok(payment_id) => {
                    settled += 1;
                    tracing::info!(%order_id, %payment_id, "unsettled charge attempt settled: payment taken");
                }
                Err(err @ (PayError::Unavailable(_) | PayError::Unexpected(_))) if !refused => {
                    tracing::warn!(%order_id, error = %err, "charge attempt still unsettled; will ask again");
                }
                Err(err) => {
                    settled += 1;
                    tracing::info!(%order_id, outcome = %err, "unsettled charge attempt settled: nothing kept");
                }
            }
        }
        Ok(settled)
    }

    /// Asks the gateway to refund a payment's charge. Safe to repeat: the gateway sees the
    /// same idempotency key each time, and refunds once.
    pub async fn refund_charge(&self, payment: &PaymentRecord) -> Result<Refund, GatewayError> {
        let refund = self
            .gateway
            .refund(&RefundRequest {
                charge_id: payment.charge_id.clone(),
                idempotency_key: refund_idempotency_key(&payment.charge_id),
            })
            .await?;
        httpkit::metrics::metrics().payments_refunds.inc();
        Ok(refund)
    }

    /// Asks the gateway for every owed refund that is due, and records each one confirmed
    /// (with `refund:completed`); a failure is recorded with the next try after a doubling
    /// pause. Never given up. How many were confirmed, and how many were tried.
    pub async fn refund_due(&self) -> Result<(usize, usize), sqlx::Error> {
        let due = {
            let mut conn = self.db.pool.acquire().await?;
            store::refunds_due(&mut conn, self.clock.now_millis(), BATCH).await?
        };
        let (mut done, mut tried) = (0, 0);
        for payment in due {
            let claimed = {
                let mut conn = self.db.pool.acquire().await?;
                let lease_until = self.clock.now_millis() + REFUND_LEASE.as_millis() as i64;
                store::claim_refund(&mut conn, &payment, lease_until).await?
            };
            if !claimed {
                continue; // another instance is on it
            }
            tried += 1;
            // No connection is held while the gateway is asked.
            match self.refund_charge(&payment).await {
                Ok(refund) => {
                    let mut tx = self.db.begin().await?;
                    store::refund_made(&mut tx, &payment, refund.id.as_deref(), now_millis()).await?;
                    tx.commit().await?;
                    self.outbox.wake();
                    done += 1;
                    tracing::info!(order_id = %payment.order_id, payment_id = %payment.id, charge_id = %payment.charge_id, refund_id = ?refund.id, amount = payment.amount, tries = payment.refund_tries + 1, "refunded");
                }
                Err(err) => {
                    let tries = payment.refund_tries + 1;
                    let pause = refund_pause(self.refund_backoff, tries);
                    let mut conn = self.db.pool.acquire().await?;
                    store::refund_failed(
                        &mut conn,
                        payment.id,
                        self.clock.now_millis() + pause.as_millis() as i64,
                        &err.to_string(),
                    )
                    .await?;
                    tracing::warn!(order_id = %payment.order_id, payment_id = %payment.id, charge_id = %payment.charge_id, tries, retry_in = ?pause, error = %err, "refund failed; it stays owed and will be asked again");
                }
            }
        }
        Ok((done, tried))
    }

    /// Every refund still owed.
    pub async fn refunds_owed(&self) -> Result<Vec<PaymentRecord>, sqlx::Error> {
        let mut conn = self.db.pool.acquire().await?;
        store::refunds_owed(&mut conn).await
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

    /// Every charge attempt of an order, oldest first.
    pub async fn charge_attempts(&self, order_id: Uuid) -> Result<Vec<ChargeAttempt>, sqlx::Error> {
        let mut conn = self.db.pool.acquire().await?;
        store::attempts_for_order(&mut conn, order_id).await
    }
}

/// Settles charge attempts left unsettled and gives back every refund owed (see the module
/// documentation). Each [`Reconciler::step`] is one round; [`Reconciler::spawn`] runs rounds
/// every `every`, at once when woken (a refund became owed) or when the last round was busy.
pub struct Reconciler {
    payments: Arc<PaymentService>,
    every: Duration,
    grace: Duration,
}

impl Reconciler {
    /// Runs a round every `every`; asks again for attempts left `charging` for over `grace`.
    pub fn new(payments: Arc<PaymentService>, every: Duration, grace: Duration) -> Self {
        Self { payments, every, grace }
    }

    /// Runs rounds in a [`Worker`] until shutdown: every `every`, at once when a refund became
    /// owed, again at once while busy; a failed round backs off.
    pub fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let (every, waker) = (self.every, self.payments.reconciler_waker());
        Worker::new(self).poll_every(every).max_backoff(MAX_REFUND_BACKOFF).woken_by(waker).spawn(shutdown)
    }
}

#[async_trait::async_trait]
impl Job for Reconciler {
    fn name(&self) -> &'static str {
        "payments-reconciler"
    }

    /// One round: unsettled charge attempts first (a recovered charge may owe a refund), then
    /// owed refunds that are due.
    async fn step(&self) -> anyhow::Result<Step> {
        let settled = self.payments.reconcile_charges(self.grace).await?;
        if settled > 0 {
            tracing::info!(settled, "unsettled charge attempts settled");
        }
        let (refunded, tried) = self.payments.refund_due().await?;
        if tried > 0 {
            tracing::info!(refunded, tried, "owed refunds asked of the gateway");
        }
        Ok(if settled + refunded > 0 { Step::Busy } else { Step::Idle })
    }
}

/// The payment requests waiting for orders' verdict, by order. The consumer that applies the
/// verdict to the replica wakes them ([`PaymentService::verdict_applied`]), so a request looks
/// at the database when something changed instead of every few milliseconds.
#[derive(Debug, Default)]
struct Verdicts {
    waiting: std::sync::Mutex<std::collections::HashMap<Uuid, Arc<tokio::sync::Notify>>>,
}

/// One request's registration in [`Verdicts`]; dropping it unregisters the request.
struct VerdictWatch<'a> {
    verdicts: &'a Verdicts,
    order_id: Uuid,
    notify: Arc<tokio::sync::Notify>,
}

impl Verdicts {
    fn watch(&self, order_id: Uuid) -> VerdictWatch<'_> {
        let notify = self.waiting.lock().expect("verdicts lock").entry(order_id).or_default().clone();
        VerdictWatch { verdicts: self, order_id, notify }
    }

    fn wake(&self, order_id: Uuid) {
        if let Some(notify) = self.waiting.lock().expect("verdicts lock").get(&order_id) {
            notify.notify_waiters();
        }
    }
}

impl Drop for VerdictWatch<'_> {
    fn drop(&mut self) {
        let mut waiting = self.verdicts.waiting.lock().expect("verdicts lock");
        // The map's reference and ours: no other request waits on this order.
        if Arc::strong_count(&self.notify) == 2 {
            waiting.remove(&self.order_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt as _;

    #[test]
    fn a_verdict_wakes_every_request_waiting_on_its_order_and_the_last_one_gone_unregisters() {
        let verdicts = Verdicts::default();
        let (order, other) = (Uuid::new_v4(), Uuid::new_v4());
        let first = verdicts.watch(order);
        let second = verdicts.watch(order);
        let elsewhere = verdicts.watch(other);
        {
            let (woken_first, woken_second, not_woken) =
                (first.notify.notified(), second.notify.notified(), elsewhere.notify.notified());
            tokio::pin!(woken_first, woken_second, not_woken);
            for notified in [woken_first.as_mut(), woken_second.as_mut(), not_woken.as_mut()] {
                notified.enable();
            }

            verdicts.wake(order);
            assert!(woken_first.now_or_never().is_some(), "the first request is woken");
            assert!(woken_second.now_or_never().is_some(), "so is the second, on the same order");
            assert!(not_woken.now_or_never().is_none(), "a request on another order is not");
        }

        drop(first);
        assert!(verdicts.waiting.lock().unwrap().contains_key(&order), "still watched by the second request");
        drop(second);
        drop(elsewhere);
        assert!(verdicts.waiting.lock().unwrap().is_empty(), "nobody waits: nothing left registered");
    }
}
