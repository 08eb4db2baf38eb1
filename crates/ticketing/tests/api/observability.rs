//! What operators see: `/metrics` counting what happened, `ticketing admin` over parked events,
//! the outbox and payments, and one purchase followed by its request id through every service.

use std::sync::{Arc, Mutex, OnceLock};

use contract::events::TicketCreated;
use platform::bus::Event;
use platform::envelope::ToEvent;
use reqwest::StatusCode;
use serde_json::json;
use testkit::{Backend, on_both_backends};
use ticketing::ServiceName;
use ticketing::admin::{AdminArgs, AdminCommand, Selection};
use uuid::Uuid;

use crate::orders::wait_until_orderable;
use crate::payments::{order_with_status, wait_until_payable};
use crate::tickets::{EVENTUAL, id, list_ticket};
use apptest::{TestApp, spawn_app_with};

on_both_backends!(
    metrics_and_admin_follow_a_scripted_scenario,
    a_purchase_is_traced_through_every_service,
    an_order_left_unpaid_is_traced_to_its_end,
);

async fn spawn_observed(backend: Backend) -> TestApp {
    spawn_app_with(backend, |args| args.settings.metrics_addr = Some("127.0.0.1:0".parse().expect("address"))).await
}

/// The value of one series (`name{labels}`) in a scrape, if present.
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

async fn scrape(app: &TestApp) -> String {
    let response = reqwest::get(app.metrics_url()).await.expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().expect("ASCII").to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    response.text().await.expect("body")
}

/// Waits until `series` has `expected` in a scrape.
async fn wait_for_value(app: &TestApp, series: &str, expected: f64) -> String {
    testkit::eventually(EVENTUAL, &format!("{series} to be {expected}"), || async {
        let text = scrape(app).await;
        (value(&text, series) == Some(expected)).then_some(text)
    })
    .await
}

fn admin(app: &TestApp, command: AdminCommand) -> AdminArgs {
    AdminArgs { command, settings: app.args.settings.clone() }
}

async fn metrics_and_admin_follow_a_scripted_scenario(backend: Backend) {
    let app = spawn_observed(backend).await;
    let seller = app.user().await;
    let ticket = list_ticket(&seller, "Concert", json!(20)).await;
    wait_until_orderable(&seller, &id(&ticket)).await;

    let text = wait_for_value(&app, r#"events_handled_total{group="orders",kind="ticket:created"}"#, 1.0).await;
    assert_eq!(value(&text, r#"http_requests_total{route="/api/users/signup",method="POST",status="201"}"#), Some(1.0));
    assert_eq!(value(&text, r#"http_requests_total{route="/api/tickets",method="POST",status="201"}"#), Some(1.0));
    assert_eq!(
        value(&text, r#"http_request_duration_seconds_count{route="/api/tickets",method="POST",status="201"}"#),
        Some(1.0)
    );
    assert_eq!(value(&text, r#"parked_events{group="orders"}"#), Some(0.0));
    assert!(value(&text, r#"event_lag_seconds_count{group="orders"}"#).is_some_and(|n| n >= 1.0), "{text}");
    assert!(value(&text, "process_resident_memory_bytes").is_some_and(|bytes| bytes > 0.0), "{text}");
    assert!(value(&text, r#"db_pool_max_connections{service="orders"}"#).is_some_and(|n| n >= 1.0), "{text}");

    // A malformed ticket:created leaves the tickets service's outbox; orders parks it.
    let tickets_db = crate::service_db::service_db(&app.args.settings, tickets::NAME, &tickets::MIGRATOR).await;
    let malformed = Event::new("ticket:created", json!({"bogus": true}));
    let mut tx = tickets_db.begin().await.expect("transaction");
    platform::outbox::enqueue(&mut tx, &malformed).await.expect("enqueued");
    tx.commit().await.expect("committed");
    let text = wait_for_value(&app, r#"parked_events{group="orders"}"#, 1.0).await;
    assert_eq!(value(&text, r#"events_parked_total{group="orders",kind="ticket:created"}"#), Some(1.0));

    // A valid event parked while its consumer could not apply it (retries exhausted).
    let ticket_id = Uuid::new_v4();
    let valid = TicketCreated {
        id: ticket_id,
        version: 0,
        title: "Parked show".into(),
        price: 1500,
        user_id: Uuid::parse_str(&seller.id).expect("uuid"),
    }
    .to_event();
    let orders_db = crate::service_db::service_db(&app.args.settings, orders::NAME, &orders::MIGRATOR).await;
    platform::consumer::park(&orders_db, orders::NAME, &valid, "retries exhausted: database unavailable")
        .await
        .expect("parked");
    wait_for_value(&app, r#"parked_events{group="orders"}"#, 2.0).await;

    let listing =
        ticketing::admin::run(&admin(&app, AdminCommand::Parked { service: None })).await.expect("admin parked");
    let lines: Vec<&str> = listing.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{listing}");
    assert!(
        lines.iter().any(|line| line.starts_with(&format!("orders\t{}\tticket:created\t", malformed.id))
            && line.ends_with("ticket:created payload: missing field `id`")),
        "{listing}"
    );
    assert!(
        lines.iter().any(|line| line.starts_with(&format!("orders\t{}\t", valid.id))
            && line.ends_with("retries exhausted: database unavailable")),
        "{listing}"
    );

    // Replaying both: the valid one applies (orders now knows the ticket), the malformed one is
    // parked again.
    let replay = AdminCommand::Replay(Selection { service: ServiceName::Orders, event_id: None, all: true });
    let replayed = ticketing::admin::run(&admin(&app, replay)).await.expect("admin replay");
    assert!(replayed.contains(&format!("{}\treplayed", valid.id)), "{replayed}");
    assert!(replayed.contains(&format!("{}\tparked again: ticket:created payload", malformed.id)), "{replayed}");
    let buyer = app.user().await;
    let (status, order) = buyer.post("/api/orders", json!({"ticketId": ticket_id})).await;
    assert_eq!(status, StatusCode::CREATED, "the replayed ticket is known to orders: {order}");
    wait_for_value(&app, r#"parked_events{group="orders"}"#, 1.0).await;

    // Replaying the same event again changes nothing: it is recorded as processed.
    let again = AdminCommand::Replay(Selection { service: ServiceName::Orders, event_id: Some(valid.id), all: false });
    let err = ticketing::admin::run(&admin(&app, again)).await.expect_err("nothing parked under that id");
    assert!(err.to_string().contains("has no parked event"), "{err:#}");

    let discard =
        AdminCommand::Discard(Selection { service: ServiceName::Orders, event_id: Some(malformed.id), all: false });
    let discarded = ticketing::admin::run(&admin(&app, discard)).await.expect("admin discard");
    assert_eq!(discarded, "discarded 1 parked event(s) of orders\n");
    let text = wait_for_value(&app, r#"parked_events{group="orders"}"#, 0.0).await;
    // The counter only grows: parked by the service, then again by the replay (run in this
    // process here; `ticketing admin` is a process of its own in real use).
    assert_eq!(value(&text, r#"events_parked_total{group="orders",kind="ticket:created"}"#), Some(2.0));

    let outbox = ticketing::admin::run(&admin(&app, AdminCommand::Outbox)).await.expect("admin outbox");
    let services: Vec<&str> = outbox.lines().skip(1).map(|line| line.split('\t').next().unwrap_or("")).collect();
    assert_eq!(services, ["auth", "tickets", "orders", "expiration", "payments"], "{outbox}");
    let payments = ticketing::admin::run(&admin(&app, AdminCommand::Payments)).await.expect("admin payments");
    assert!(payments.starts_with("REFUNDS OWED\n") && payments.contains("CHARGE ATTEMPTS NOT SETTLED"), "{payments}");
    app.stop().await;
}

/// Log lines of this test process, captured from the first test that asks.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber_for_test(move || Writer(sink.clone()));
        tracing::subscriber::set_global_default(subscriber).expect("no subscriber installed yet");
        logs
    })
    .clone()
}

fn tracing_subscriber_for_test<W>(make: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt().with_ansi(false).with_env_filter("info").with_writer(make).finish()
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until some log line holds every one of `needles`.
async fn wait_for_log_line(logs: &Arc<Mutex<Vec<u8>>>, needles: &[&str]) {
    testkit::eventually(EVENTUAL, &format!("a log line with {needles:?}"), || async {
        let text = String::from_utf8_lossy(&logs.lock().expect("log buffer")).into_owned();
        text.lines().any(|line| needles.iter().all(|needle| line.contains(needle))).then_some(())
    })
    .await
}

async fn a_purchase_is_traced_through_every_service(backend: Backend) {
    let logs = captured_logs();
    let app = spawn_observed(backend).await;
    let (seller, buyer) = (app.user().await, app.user().await);
    let ticket = list_ticket(&seller, "Concert", json!(20)).await;
    wait_until_orderable(&seller, &id(&ticket)).await;

    let order_request = format!("order-{}", Uuid::new_v4());
    let response = buyer
        .client
        .post(app.url("/api/orders"))
        .header("x-request-id", &order_request)
        .json(&json!({"ticketId": id(&ticket)}))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()["x-request-id"], order_request.as_str());
    let order: serde_json::Value = response.json().await.expect("JSON");
    let order_id = id(&order);
    wait_until_payable(&seller, &order_id).await;

    let pay_request = format!("pay-{}", Uuid::new_v4());
    let response = buyer
        .client
        .post(app.url("/api/payments"))
        .header("x-request-id", &pay_request)
        .json(&json!({"orderId": order_id, "token": "tok_visa"}))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), StatusCode::CREATED);
    order_with_status(&buyer, &order_id, "complete").await;

    // The order's request: orders answered it; order:created reached tickets, expiration and
    // payments with its id.
    let order_id_field = format!("request_id={order_request}");
    let order_trace = format!("trace_id={order_request}");
    wait_for_log_line(&logs, &["path=/api/orders", &order_id_field, "finished processing request"]).await;
    for consumer in ["tickets", "expiration", "payments"] {
        let group = format!("consumer={consumer}");
        wait_for_log_line(&logs, &[&group, "kind=order:created", &order_trace, "event handled"]).await;
    }
    // The payment's request: payments answered it; payment:created reached orders, and the
    // order:completed that orders published while handling it carried the id on to tickets,
    // expiration and payments.
    let pay_id_field = format!("request_id={pay_request}");
    let pay_trace = format!("trace_id={pay_request}");
    wait_for_log_line(&logs, &["path=/api/payments", &pay_id_field, "finished processing request"]).await;
    wait_for_log_line(&logs, &["consumer=orders", "kind=payment:created", &pay_trace, "event handled"]).await;
    for consumer in ["tickets", "expiration", "payments"] {
        let group = format!("consumer={consumer}");
        wait_for_log_line(&logs, &[&group, "kind=order:completed", &pay_trace, "event handled"]).await;
    }
    app.stop().await;
}

/// The request that created an order is followed through its timer: expiration:complete and
/// the order:cancelled it causes carry its id.
async fn an_order_left_unpaid_is_traced_to_its_end(backend: Backend) {
    let logs = captured_logs();
    let app = spawn_app_with(backend, apptest::on_manual_clock).await;
    let (seller, buyer) = (app.user().await, app.user().await);
    let ticket = list_ticket(&seller, "Concert", json!(20)).await;
    wait_until_orderable(&seller, &id(&ticket)).await;
    let request = format!("lapse-{}", Uuid::new_v4());
    let response = buyer
        .client
        .post(app.url("/api/orders"))
        .header("x-request-id", &request)
        .json(&json!({"ticketId": id(&ticket)}))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: serde_json::Value = response.json().await.expect("JSON");
    app.end_window(&order);
    order_with_status(&buyer, &id(&order), "cancelled").await;
    let trace = format!("trace_id={request}");
    wait_for_log_line(&logs, &["expiration:complete enqueued", &trace]).await;
    wait_for_log_line(&logs, &["consumer=orders", "kind=expiration:complete", &trace, "event handled"]).await;
    for consumer in ["tickets", "payments"] {
        let group = format!("consumer={consumer}");
        wait_for_log_line(&logs, &[&group, "kind=order:cancelled", &trace, "event handled"]).await;
    }
    app.stop().await;
}

/// Every series the alert rules and the dashboard use is one the processes export (a renamed
/// metric would silently leave an alert that can never fire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_use_series_the_processes_export() {
    let app = spawn_observed(Backend::Embedded).await;
    // A family shows in a scrape once it has a series: give each one a series, so the scrape
    // lists every name the processes register.
    let m = httpkit::metrics::metrics();
    let event = httpkit::metrics::EventLabels { group: "probe".into(), kind: "probe".into() };
    let group = httpkit::metrics::GroupLabels { group: "probe".into() };
    let http = httpkit::metrics::HttpLabels { route: "/probe".into(), method: "GET".into(), status: 200 };
    drop(m.http_requests.get_or_create(&http));
    drop(m.http_request_duration.get_or_create(&http));
    for family in [&m.events_handled, &m.events_failed, &m.events_redelivered, &m.events_parked] {
        drop(family.get_or_create(&event));
    }
    drop(m.event_handling_duration.get_or_create(&group));
    drop(m.event_lag.get_or_create(&group));
    drop(m.consumer_lag.get_or_create(&group));
    drop(m.payments_charges.get_or_create(&httpkit::metrics::OutcomeLabels { outcome: "charged" }));
    let text = scrape(&app).await;
    app.stop().await;
    let exported: Vec<&str> = text.lines().filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next()).collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let alerts = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yaml")).expect("alerts");
    let exprs: Vec<String> = alerts
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr: ").map(str::to_owned))
        .chain({
            let dashboard: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(root.join("deploy/grafana/ticketing.json")).expect("dashboard"),
            )
            .expect("JSON");
            dashboard["panels"]
                .as_array()
                .expect("panels")
                .iter()
                .flat_map(|panel| panel["targets"].as_array().expect("targets").clone())
                .map(|target| target["expr"].as_str().expect("expr").to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(exprs.len() > 10, "{exprs:?}");
    for expr in &exprs {
        // Series names: identifiers outside braces and not followed by `(` (functions).
        let mut names = Vec::new();
        let mut depth = 0;
        let mut word = String::new();
        for c in expr.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' {
                word.push(c);
                continue;
            }
            if !word.is_empty() && depth == 0 && c != '(' && word.contains('_') && !word.starts_with(char::is_numeric) {
                names.push(std::mem::take(&mut word));
            }
            word.clear();
            match c {
                '{' | '[' => depth += 1,
                '}' | ']' => depth -= 1,
                _ => {}
            }
        }
        for name in names {
            let family = ["_bucket", "_count", "_sum", "_total"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name);
            assert!(exported.contains(&family), "{expr}: {name} is not exported (exported: {exported:?})");
        }
    }
}
