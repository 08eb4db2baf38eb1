//! What the payments tests share: the Stripe stand-in, a gateway wrapper that records what
//! it was asked and can fail on demand, and a payments service started on its own with a bus
//! to speak orders' events into (and restarted on the same database, as after a crash).
#![allow(dead_code)]

pub mod stripe_standin;

use contract::events::{
    ContractEvent, OrderCancelled, OrderCompleted, OrderCreated, PaymentCreated, PricedTicketRef, TicketRef,
};
use httpkit::session::SessionKeys;
use httpkit::settings::Settings;
use payments::domain::ChargeAttempt;
use payments::gateway::{Charge, ChargeRequest, GatewayError, Refund, RefundRequest};
use payments::{Gateway, PaymentService, PaymentsSettings};
use platform::bus::embedded::EmbeddedBus;
use platform::bus::nats::NatsBus;
use platform::bus::{Delivery, EventBus, Handler, Outcome, RetryPolicy, dyn_handler};
use platform::clock::Clock;
use platform::envelope::ToEvent;
use platform::service::Context;
use reqwest::StatusCode;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use testkit::{Backend, TempDir, eventually, unique_name};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(15);

/// Payments settings for tests that want the reconciler quick: it runs every 50 ms and asks
/// again for attempts unsettled for 300 ms.
/// Runs `rounds` reconciler rounds now, with no grace period (every unsettled attempt is asked
/// again), so a test shows what later rounds do without waiting for the service's own loop.
pub async fn reconcile_rounds(payments: &Arc<PaymentService>, rounds: usize) {
    use platform::worker::Job as _;
    let reconciler = payments::Reconciler::new(payments.clone(), Duration::from_secs(3600), Duration::ZERO);
    for _ in 0..rounds {
        reconciler.step().await.expect("a reconciler round");
    }
}

pub fn quick_reconciler(settings: &mut PaymentsSettings) {
    settings.reconcile_every_millis = 50;
    settings.charge_grace_millis = 300;
    settings.refund_backoff_millis = 20;
}

/// A running payments service, its bus and an HTTP address.
pub struct Stand {
    pub base: String,
    pub bus: Arc<dyn EventBus>,
    pub payments: Arc<PaymentService>,
    pub keys: Arc<SessionKeys>,
    pub created: Collected,
    settings: Settings,
    clock: Clock,
    /// The whole stand (the bus collector included).
    shutdown: CancellationToken,
    /// The payments service only: cancelled to "crash" it.
    service: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _dir: TempDir,
}

impl Stand {
    /// With the default payments settings.
    pub async fn start(backend: Backend, gateway: Arc<dyn Gateway>) -> Self {
        Self::start_with(backend, gateway, |_| {}).await
    }

    pub async fn start_with(
        backend: Backend,
        gateway: Arc<dyn Gateway>,
        tweak: impl FnOnce(&mut PaymentsSettings),
    ) -> Self {
        Self::start_on(backend, gateway, tweak, Clock::System).await
    }

    /// With tweaked settings, measuring windows and refund pauses on `clock`.
    pub async fn start_on(
        backend: Backend,
        gateway: Arc<dyn Gateway>,
        tweak: impl FnOnce(&mut PaymentsSettings),
        clock: Clock,
    ) -> Self {
        if std::env::var_os("RUST_LOG").is_some() {
            httpkit::telemetry::init(httpkit::settings::LogFormat::Human);
        }
        let dir = TempDir::new();
        let mut settings = testkit::settings();
        let mut payments_settings: PaymentsSettings = testkit::defaults();
        // No orders service here to confirm payments: answer at once.
        payments_settings.confirm_wait_millis = 0;
        tweak(&mut payments_settings);
        settings.data_dir = dir.path().to_owned();
        let policy = RetryPolicy {
            backoff: [20, 50, 100, 200].into_iter().map(Duration::from_millis).collect(),
            ..RetryPolicy::default()
        };
        let bus: Arc<dyn EventBus> = match backend {
            Backend::Embedded => Arc::new(EmbeddedBus::open(&dir.path().join("bus.db"), "t", policy).await.unwrap()),
            Backend::Distributed => {
                settings.database_url = Some(testkit::fresh_postgres_url().await);
                settings.nats_stream = unique_name("PAYMENTS");
                settings.subject_prefix = unique_name("t");
                Arc::new(
                    NatsBus::connect(&testkit::nats_url(), &settings.nats_stream, &settings.subject_prefix, policy)
                        .await
                        .unwrap(),
                )
            }
        };
        let keys = Arc::new(SessionKeys::new(b"payments-test-key-payments-test-key!", time::Duration::hours(1)));
        let shutdown = CancellationToken::new();
        let created = Collected::default();
        bus.subscribe(
            &unique_name("collector"),
            &[PaymentCreated::KIND],
            dyn_handler(Arc::new(created.clone())),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let service = shutdown.child_token();
        let (base, payments, tasks) =
            launch(&settings, &clock, &keys, &bus, &service, &payments_settings, gateway).await;
        Self { base, bus, payments, keys, created, settings, clock, shutdown, service, tasks, _dir: dir }
    }

    /// Stops the payments service where it stands (in-flight work is dropped, as in a crash:
    /// whatever was committed stays, nothing else happens) and starts it again on the same
    /// database and bus, with `gateway` and tweaked settings.
    pub async fn restart(mut self, gateway: Arc<dyn Gateway>, tweak: impl FnOnce(&mut PaymentsSettings)) -> Self {
        self.service.cancel();
        for task in std::mem::take(&mut self.tasks) {
            tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops promptly").unwrap();
        }
        self.service = self.shutdown.child_token();
        let mut payments_settings: PaymentsSettings = testkit::defaults();
        payments_settings.confirm_wait_millis = 0;
        tweak(&mut payments_settings);
        (self.base, self.payments, self.tasks) =
            launch(&self.settings, &self.clock, &self.keys, &self.bus, &self.service, &payments_settings, gateway)
                .await;
        self
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), task).await.expect("stops promptly").unwrap();
        }
    }

    /// A client signed in as the user `id` (after a restart, the same buyer).
    pub fn user_as(&self, id: Uuid) -> Buyer {
        let token = self.keys.issue(id, &format!("{}@example.com", id.simple())).unwrap();
        Buyer { id, token: Some(token), base: self.base.clone(), client: reqwest::Client::new() }
    }

    /// The charge attempts of an order.
    pub async fn attempts_of(&self, order_id: Uuid) -> Vec<ChargeAttempt> {
        self.payments.charge_attempts(order_id).await.unwrap()
    }

    pub fn user(&self) -> Buyer {
        self.user_as(Uuid::new_v4())
    }

    pub fn anonymous(&self) -> Buyer {
        Buyer { id: Uuid::nil(), token: None, base: self.base.clone(), client: reqwest::Client::new() }
    }

    pub async fn publish(&self, event: &impl ContractEvent) {
        self.bus.publish(&event.to_event()).await.unwrap();
    }

    /// Publishes `order:created` for a new order of `owner`, and waits until payments knows it.
    pub async fn order(&self, owner: &Buyer, price: i64, expires_in: time::Duration) -> OrderCreated {
        let order = OrderCreated {
            id: Uuid::new_v4(),
            version: 0,
            status: contract::events::OrderStatus::Created,
            user_id: owner.id,
            expires_at: OffsetDateTime::now_utc() + expires_in,
            ticket: PricedTicketRef { id: Uuid::new_v4(), price },
        };
        self.publish(&order).await;
        self.wait_for_order_status(order.id, "created").await;
        order
    }

    pub async fn cancel(&self, order: &OrderCreated) {
        self.publish(&OrderCancelled { id: order.id, version: 1, ticket: TicketRef { id: order.ticket.id } }).await;
        self.wait_for_order_status(order.id, "cancelled").await;
    }

    pub async fn complete(&self, order: &OrderCreated) {
        self.publish(&OrderCompleted { id: order.id, version: 1, ticket: TicketRef { id: order.ticket.id } }).await;
        self.wait_for_order_status(order.id, "complete").await;
    }

    /// Orders rejects a payment (`order:payment-rejected`): payments owes its refund.
    pub async fn reject(&self, order_id: Uuid, payment_id: Uuid) {
        let reason = "the ticket went to another buyer before the payment arrived".to_owned();
        self.publish(&contract::events::OrderPaymentRejected { id: order_id, payment_id, reason }).await;
    }

    pub async fn wait_for_order_status(&self, order_id: Uuid, status: &str) {
        eventually(WAIT, &format!("order {order_id} to be {status} in payments"), || async {
            let order = self.payments.order(order_id).await.unwrap();
            order.filter(|order| order.status.as_str() == status).map(drop)
        })
        .await;
    }

    /// `(status, charge_id, refund_id)` of each payment of an order.
    pub async fn payments_of(&self, order_id: Uuid) -> Vec<(String, String, Option<String>)> {
        self.payments
            .payments_for_order(order_id)
            .await
            .unwrap()
            .into_iter()
            .map(|payment| (payment.status, payment.charge_id, payment.refund_id))
            .collect()
    }
}

/// Starts the payments service on the stand's database and bus: its address, its core and
/// its tasks (the HTTP server's included), all stopped by `service`.
async fn launch(
    settings: &Settings,
    clock: &Clock,
    keys: &Arc<SessionKeys>,
    bus: &Arc<dyn EventBus>,
    service: &CancellationToken,
    payments_settings: &PaymentsSettings,
    gateway: Arc<dyn Gateway>,
) -> (String, Arc<PaymentService>, Vec<tokio::task::JoinHandle<()>>) {
    let ctx = Context {
        settings: settings.clone(),
        keys: keys.clone(),
        bus: bus.clone(),
        shutdown: service.clone(),
        clock: clock.clone(),
    };
    let (started, payments) =
        payments::start_with_gateway(&ctx, payments_settings, gateway).await.expect("payments starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = service.clone();
    let mut tasks = started.tasks;
    tasks.push(tokio::spawn(async move {
        httpkit::http::serve(listener, started.router, async move { stop.cancelled().await }).await.unwrap();
    }));
    (base, payments, tasks)
}

/// A client with (or without) a session.
pub struct Buyer {
    pub id: Uuid,
    token: Option<String>,
    base: String,
    client: reqwest::Client,
}

impl Buyer {
    pub async fn pay(&self, order_id: Uuid, token: &str) -> (StatusCode, Value) {
        self.post(serde_json::json!({ "orderId": order_id, "token": token })).await
    }

    pub async fn post(&self, body: Value) -> (StatusCode, Value) {
        let mut request = self.client.post(format!("{}/api/payments", self.base)).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }
}

/// Every `payment:created` published.
#[derive(Clone, Default)]
pub struct Collected(Arc<Mutex<Vec<PaymentCreated>>>);

impl Handler for Collected {
    async fn handle(&self, delivery: Delivery) -> Outcome {
        self.0.lock().unwrap().push(serde_json::from_value(delivery.event.data).unwrap());
        Outcome::Ack
    }
}

impl Collected {
    pub fn for_order(&self, order_id: Uuid) -> Vec<PaymentCreated> {
        self.0.lock().unwrap().iter().filter(|event| event.order_id == order_id).cloned().collect()
    }

    pub async fn wait_for(&self, order_id: Uuid) -> PaymentCreated {
        eventually(WAIT, &format!("payment:created for {order_id}"), || {
            let found = self.for_order(order_id).into_iter().next();
            async move { found }
        })
        .await
    }
}

/// How a [`TestGateway`] fails charges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Outage {
    #[default]
    None,
    /// Charges fail as unavailable before reaching the gateway: nothing is charged.
    Down,
    /// Charges reach the gateway, which charges, but the answer is lost (a timeout): the
    /// caller sees "unavailable".
    LosesAnswers,
}

/// A gateway in front of another one, which records every charge it is asked for and fails
/// charges on demand.
pub struct TestGateway {
    inner: Arc<dyn Gateway>,
    asked: Mutex<Vec<ChargeRequest>>,
    outage: Mutex<Outage>,
}

impl TestGateway {
    pub fn new(inner: Arc<dyn Gateway>) -> Arc<Self> {
        Arc::new(Self { inner, asked: Mutex::default(), outage: Mutex::default() })
    }

    pub fn set_outage(&self, outage: Outage) {
        *self.outage.lock().unwrap() = outage;
    }

    /// The idempotency keys of the charges asked for an order, in order.
    pub fn keys_asked_for(&self, order_id: Uuid) -> Vec<String> {
        let asked = self.asked.lock().unwrap();
        asked
            .iter()
            .filter(|request| request.order_id == order_id)
            .map(|request| request.idempotency_key.clone())
            .collect()
    }
}

#[async_trait::async_trait]
impl Gateway for TestGateway {
    async fn charge(&self, request: &ChargeRequest) -> Result<Charge, GatewayError> {
        self.asked.lock().unwrap().push(request.clone());
        let outage = *self.outage.lock().unwrap();
        match outage {
            Outage::None => self.inner.charge(request).await,
            Outage::Down => Err(GatewayError::Unavailable(anyhow::anyhow!("test outage: gateway unreachable"))),
            Outage::LosesAnswers => {
                let charged = self.inner.charge(request).await;
                Err(GatewayError::Unavailable(anyhow::anyhow!("test outage: the answer was lost ({charged:?})")))
            }
        }
    }

    async fn refund(&self, request: &RefundRequest) -> Result<Refund, GatewayError> {
        self.inner.refund(request).await
    }

    fn name(&self) -> &'static str {
        "test"
    }
}
