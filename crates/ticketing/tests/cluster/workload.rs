//! The marketplace workload of the scale-out test, and the ledger of everything the API
//! acknowledged while it ran.
//!
//! Purchase lanes each loop: a seller lists a ticket; several buyers race to order it the
//! moment the orders service knows it (exactly one may win); the winner then pays (most
//! rounds), leaves the order to expire, or cancels it. An edit lane lists tickets and edits
//! them, so the orders service's replica has updates to follow through the faults.
//!
//! Each wait on the event flow is a *step* with a start and an end: a listed ticket becoming
//! orderable (orders learned `ticket:created`), a payment being accepted (payments learned
//! `order:created`), a paid order becoming complete (orders learned `payment:created`), an
//! unpaid order being cancelled at its expiry (expiration's timer, then orders). The stall
//! after a NATS node's death and the recovery after an instance's death are read off these.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::services::Api;

/// How long a lane waits for one step before it records the step as never done.
const STEP_DEADLINE: Duration = Duration::from_secs(30);
/// How often a waiting lane asks again.
pub const POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct User {
    pub token: String,
}

/// Signs a user up (retrying while no auth instance answers).
pub async fn sign_up(api: &Api, label: &str) -> User {
    let email = format!("{label}-{}@example.com", uuid::Uuid::new_v4().simple());
    let body = json!({ "email": email, "password": "correct horse battery" });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match api.call(Method::POST, "/api/users/signup", None, Some(&body)).await {
            Ok(reply) if reply.status == StatusCode::CREATED => {
                assert_eq!(reply.body["email"], email.as_str(), "sign-up answer");
                return User { token: reply.session.expect("sign-up sets the session cookie") };
            }
            other => assert!(Instant::now() < deadline, "cannot sign up {label}: {other:?}"),
        }
        tokio::time::sleep(POLL).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Orderable,
    PaymentAccepted,
    Completed,
    ExpiredCancelled,
}

#[derive(Debug, Clone)]
pub struct StepRecord {
    pub step: Step,
    pub subject: String,
    pub started: Instant,
    pub done: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Pay,
    Expire,
    Cancel,
}

#[derive(Debug, Clone)]
pub struct TicketRecord {
    pub id: String,
    pub title: String,
    pub price: f64,
    /// An edit whose answer was lost: the final title and price are one of two.
    pub uncertain: bool,
    pub edited: bool,
}

#[derive(Debug, Clone)]
pub struct OrderRecord {
    pub id: String,
    pub ticket: String,
    pub intent: Intent,
    pub price: f64,
}

#[derive(Debug, Clone)]
pub struct Contention {
    pub ticket: String,
    pub contenders: usize,
    pub wins: usize,
    pub already_reserved: usize,
    pub unanswered: usize,
}

/// Everything acknowledged, and every step.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    pub tickets: Vec<TicketRecord>,
    pub orders: Vec<OrderRecord>,
    /// Payments answered 201: (payment id, order id).
    pub payments: Vec<(String, String)>,
    /// Orders whose cancel answered 204.
    pub cancels: Vec<String>,
    /// Orders whose payment was refused because the window had closed: left to expire.
    pub expired_before_payment: Vec<String>,
    pub contention: Vec<Contention>,
    pub steps: Vec<StepRecord>,
    /// Requests with no answer or an unexpected one (5xx, connection reset): not acknowledged.
    pub unanswered: Vec<String>,
}

impl Ledger {
    fn begin(&mut self, step: Step, subject: &str, started: Instant) -> usize {
        self.steps.push(StepRecord { step, subject: subject.to_owned(), started, done: None });
        self.steps.len() - 1
    }

    /// Completion times of the steps, sorted.
    pub fn done_times(&self) -> Vec<Instant> {
        let mut times: Vec<Instant> = self.steps.iter().filter_map(|step| step.done).collect();
        times.sort();
        times
    }

    /// How many steps of a kind were done after `since`.
    pub fn done_since(&self, step: Step, since: Instant) -> usize {
        self.steps.iter().filter(|record| record.step == step && record.done.is_some_and(|done| done > since)).count()
    }

    /// Steps waiting at `moment`.
    pub fn pending_at(&self, moment: Instant) -> Vec<StepRecord> {
        self.steps
            .iter()
            .filter(|record| record.started <= moment && record.done.is_none_or(|done| done > moment))
            .cloned()
            .collect()
    }
}

pub struct Workload {
    pub api: Api,
    pub sellers: Vec<User>,
    pub buyers: Vec<User>,
    pub ledger: Arc<Mutex<Ledger>>,
    pub stop: CancellationToken,
    pub contenders: usize,
}

impl Workload {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("ledger lock")
    }

    fn unanswered(&self, what: &str, outcome: Result<crate::services::Reply, String>) {
        let text = match outcome {
            Ok(reply) => format!("{what}: {} {}", reply.status, reply.body),
            Err(err) => format!("{what}: {err}"),
        };
        self.ledger().unanswered.push(text);
    }

    /// Lists a ticket; `None` when it was not acknowledged.
    async fn list_ticket(&self, seller: usize, title: String, price: f64) -> Option<String> {
        let body = json!({ "title": title, "price": price });
        let outcome = self.api.call(Method::POST, "/api/tickets", Some(&self.sellers[seller].token), Some(&body)).await;
        match outcome {
            Ok(reply) if reply.status == StatusCode::CREATED => {
                let id = reply.body["id"].as_str().expect("ticket id").to_owned();
                self.ledger().tickets.push(TicketRecord {
                    id: id.clone(),
                    title,
                    price,
                    uncertain: false,
                    edited: false,
                });
                Some(id)
            }
            other => {
                self.unanswered("POST /api/tickets", other);
                None
            }
        }
    }

    /// One purchase lane, until the workload stops.
    pub async fn purchase_lane(self: Arc<Self>, lane: usize) {
        let mut round = 0usize;
        while !self.stop.is_cancelled() {
            let intent = match (round + lane) % 6 {
                0..=3 => Intent::Pay,
                4 => Intent::Expire,
                _ => Intent::Cancel,
            };
            self.purchase(lane, round, intent).await;
            round += 1;
        }
    }

    async fn purchase(self: &Arc<Self>, lane: usize, round: usize, intent: Intent) {
        let seller = (lane + round) % self.sellers.len();
        let price = 10.0 + (lane * 1000 + round) as f64 + 0.25;
        let Some(ticket) = self.list_ticket(seller, format!("lane {lane} round {round}"), price).await else { return };
        let listed = Instant::now();
        let step = self.ledger().begin(Step::Orderable, &ticket, listed);

        // The race: every contender orders as soon as the orders service knows the ticket.
        let contenders: Vec<usize> = (0..self.contenders).map(|k| (lane * 3 + round + k) % self.buyers.len()).collect();
        let mut race = tokio::task::JoinSet::new();
        for buyer in contenders.clone() {
            let this = self.clone();
            let ticket = ticket.clone();
            race.spawn(async move { (buyer, this.order_when_known(buyer, &ticket).await) });
        }
        let mut contention = Contention {
            ticket: ticket.clone(),
            contenders: contenders.len(),
            wins: 0,
            already_reserved: 0,
            unanswered: 0,
        };
        let mut winner = None;
        let mut first_answer: Option<Instant> = None;
        while let Some(result) = race.join_next().await {
            let (buyer, (outcome, at)) = result.expect("contender task");
            match outcome {
                RaceOutcome::Won(order) => {
                    contention.wins += 1;
                    first_answer = Some(first_answer.map_or(at, |first| first.min(at)));
                    winner = Some((buyer, order));
                }
                RaceOutcome::AlreadyReserved => {
                    contention.already_reserved += 1;
                    first_answer = Some(first_answer.map_or(at, |first| first.min(at)));
                }
                RaceOutcome::Unanswered => contention.unanswered += 1,
            }
        }
        {
            let mut ledger = self.ledger();
            ledger.steps[step].done = first_answer;
            ledger.contention.push(contention);
        }
        let Some((buyer, order)) = winner else { return };
        let order_id = order["id"].as_str().expect("order id").to_owned();
        self.ledger().orders.push(OrderRecord {
            id: order_id.clone(),
            ticket: ticket.clone(),
            intent,
            price: order["ticket"]["price"].as_f64().unwrap_or(f64::NAN),
        });
        match intent {
            Intent::Pay => self.pay(buyer, &order_id).await,
            Intent::Expire => {
                let this = self.clone();
                tokio::spawn(async move { this.watch_expiry(buyer, order_id).await });
            }
            Intent::Cancel => {
                let token = &self.buyers[buyer].token;
                let outcome =
                    self.api.call(Method::DELETE, &format!("/api/orders/{order_id}"), Some(token), None).await;
                match outcome {
                    Ok(reply) if reply.status == StatusCode::NO_CONTENT => self.ledger().cancels.push(order_id),
                    other => self.unanswered("DELETE /api/orders/:id", other),
                }
            }
        }
    }

    /// Orders `ticket` as soon as the orders service knows it.
    async fn order_when_known(&self, buyer: usize, ticket: &str) -> (RaceOutcome, Instant) {
        let token = &self.buyers[buyer].token;
        let body = json!({ "ticketId": ticket });
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            let outcome = self.api.call(Method::POST, "/api/orders", Some(token), Some(&body)).await;
            let now = Instant::now();
            match outcome {
                Ok(reply) if reply.status == StatusCode::CREATED => return (RaceOutcome::Won(reply.body), now),
                Ok(reply)
                    if reply.status == StatusCode::BAD_REQUEST && reply.message() == "Ticket is already reserved" =>
                {
                    return (RaceOutcome::AlreadyReserved, now);
                }
                Ok(reply) if reply.status == StatusCode::NOT_FOUND => {}
                other => self.unanswered("POST /api/orders", other),
            }
            if now > deadline {
                return (RaceOutcome::Unanswered, now);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Pays for an order as soon as the payments service knows it, then waits for it to be
    /// complete.
    async fn pay(&self, buyer: usize, order: &str) {
        let token = &self.buyers[buyer].token;
        let step = self.ledger().begin(Step::PaymentAccepted, order, Instant::now());
        let body = json!({ "orderId": order, "token": "tok_visa" });
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            let outcome = self.api.call(Method::POST, "/api/payments", Some(token), Some(&body)).await;
            let now = Instant::now();
            match outcome {
                Ok(reply) if reply.status == StatusCode::CREATED => {
                    let mut ledger = self.ledger();
                    ledger.steps[step].done = Some(now);
                    ledger.payments.push((reply.body["id"].as_str().unwrap_or("").to_owned(), order.to_owned()));
                    break;
                }
                // The window (a few seconds here) can pass while NATS elects a leader: then the
                // order expires before payments learns of it, and once it knows, it refuses.
                Ok(reply)
                    if reply.status == StatusCode::BAD_REQUEST
                        && matches!(
                            reply.message().as_str(),
                            "Order has expired" | "Cannot pay for a cancelled order"
                        ) =>
                {
                    let mut ledger = self.ledger();
                    ledger.steps[step].done = Some(now);
                    ledger.expired_before_payment.push(order.to_owned());
                    return;
                }
                // An earlier attempt whose answer was lost went through: not acknowledged, so
                // not in the ledger, but the order is to complete all the same.
                Ok(reply)
                    if reply.status == StatusCode::BAD_REQUEST && reply.message() == "Order has already been paid" =>
                {
                    self.ledger().steps[step].done = Some(now);
                    break;
                }
                Ok(reply) if reply.status == StatusCode::NOT_FOUND => {}
                other => self.unanswered("POST /api/payments", other),
            }
            if now > deadline {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
        let step = self.ledger().begin(Step::Completed, order, Instant::now());
        if let Some(done) = self.wait_for_status(buyer, order, "complete").await {
            self.ledger().steps[step].done = Some(done);
        }
    }

    /// Watches an order left unpaid until it is cancelled.
    async fn watch_expiry(&self, buyer: usize, order: String) {
        // The step starts at the order's expiry, measured on this clock: the window from now.
        let window = Duration::from_secs(crate::scale_out::ORDER_EXPIRATION_SECONDS);
        let step = self.ledger().begin(Step::ExpiredCancelled, &order, Instant::now() + window);
        if let Some(done) = self.wait_for_status(buyer, &order, "cancelled").await {
            self.ledger().steps[step].done = Some(done);
        }
    }

    /// Polls the order until it has `status`; `None` when it ends otherwise or not in time.
    async fn wait_for_status(&self, buyer: usize, order: &str, status: &str) -> Option<Instant> {
        let token = &self.buyers[buyer].token;
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            let outcome = self.api.call(Method::GET, &format!("/api/orders/{order}"), Some(token), None).await;
            let now = Instant::now();
            if let Ok(reply) = &outcome
                && reply.status == StatusCode::OK
            {
                let seen = reply.body["status"].as_str().unwrap_or("");
                if seen == status {
                    return Some(now);
                }
                // A paid order may show `cancelled` for a moment: when its expiry was processed
                // before its payment event (an election held the bus), the payment accepted in
                // time revives it. It has ended only once a refund says the ticket went elsewhere.
                let revivable = status == "complete" && seen == "cancelled" && reply.body["refund"].is_null();
                if (seen == "cancelled" || seen == "complete") && !revivable {
                    self.ledger().unanswered.push(format!("order {order} ended {seen}, expected {status}"));
                    return None;
                }
            }
            if now > deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The edit lane: lists tickets and edits each twice; nobody orders them.
    pub async fn edit_lane(self: Arc<Self>) {
        let mut round = 0usize;
        while !self.stop.is_cancelled() {
            let seller = round % self.sellers.len();
            let price = 5.0 + round as f64;
            let Some(ticket) = self.list_ticket(seller, format!("edited {round}"), price).await else { continue };
            for edit in 1..=2 {
                let title = format!("edited {round} v{edit}");
                let price = price + f64::from(edit);
                let body = json!({ "title": title, "price": price });
                let outcome = self
                    .api
                    .call(
                        Method::PUT,
                        &format!("/api/tickets/{ticket}"),
                        Some(&self.sellers[seller].token),
                        Some(&body),
                    )
                    .await;
                let acknowledged = matches!(&outcome, Ok(reply) if reply.status == StatusCode::OK);
                let mut ledger = self.ledger();
                let record = ledger.tickets.iter_mut().find(|record| record.id == ticket).expect("listed ticket");
                record.edited = true;
                if acknowledged {
                    record.title = title;
                    record.price = price;
                    record.uncertain = false;
                } else {
                    record.uncertain = true;
                    drop(ledger);
                    self.unanswered("PUT /api/tickets/:id", outcome);
                }
            }
            round += 1;
            // Edits are a trickle beside the purchases.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

enum RaceOutcome {
    Won(Value),
    AlreadyReserved,
    Unanswered,
}

/// The longest time in `[from, to]` without a step done: from `from` to the first, between
/// consecutive ones, and from the last to `to`.
pub fn longest_gap(done: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut previous = from;
    let mut longest = Duration::ZERO;
    for &moment in done.iter().filter(|&&moment| moment > from && moment <= to) {
        longest = longest.max(moment - previous);
        previous = moment;
    }
    longest.max(to.saturating_duration_since(previous))
}
