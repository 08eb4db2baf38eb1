//! Reservation windows end by themselves, through HTTP: an unpaid order is cancelled when
//! its window ends (not before) and its ticket is for sale again; a window that ends while
//! the expiration service is down ends the order as soon as it is back.
//!
//! The first runs on the system clock with a short window, so the path production takes (a
//! loop sleeping until the due time) is covered end to end; the second moves a manual clock.

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::Backend;
use ticketing::{Running, ServiceName};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::orders::order_ticket;
use crate::payments::{order_with_status, ordered, pay};
use crate::tickets::{EVENTUAL, id, listed};
use apptest::{TestApp, User, messages, spawn_app_with};
use testkit::on_both_backends;

on_both_backends!(
    an_unpaid_order_is_cancelled_when_its_window_ends_and_not_before,
    a_window_that_ends_while_expiration_is_down_ends_the_order_after_it_starts,
);

const WINDOW_SECONDS: u32 = 2;

fn expires_at(order: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(order["expiresAt"].as_str().expect("expiresAt"), &Rfc3339).expect("RFC 3339")
}

/// Watches the order until it is cancelled, checking it is still `created` whenever asked
/// before `expiresAt`. Returns when the cancellation was first seen.
async fn watch_until_cancelled(buyer: &User, order: &Value) -> OffsetDateTime {
    let ends = expires_at(order);
    testkit::eventually(EVENTUAL, "the order to be cancelled", || async {
        let asked_at = OffsetDateTime::now_utc();
        let (status, now) = buyer.get(&format!("/api/orders/{}", id(order))).await;
        assert_eq!(status, StatusCode::OK, "{now}");
        if asked_at < ends {
            assert_eq!(now["status"], "created", "the order changed before its window ended at {ends}");
        }
        (now["status"] == "cancelled").then(OffsetDateTime::now_utc)
    })
    .await
}

/// After expiry the order cannot be paid: first because it is past its window, then because
/// it is cancelled, once payments has heard. Never a charge.
async fn wait_until_payments_knows_it_is_cancelled(buyer: &User, order_id: &str) {
    testkit::eventually(EVENTUAL, "payments to hear of the cancellation", || async {
        let (status, body) = pay(buyer, order_id, "tok_visa").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        match messages(&body).as_slice() {
            [message] if message == "Order has expired" => None,
            [message] if message == "Cannot pay for a cancelled order" => Some(()),
            other => panic!("unexpected answer: {other:?}"),
        }
    })
    .await
}

async fn an_unpaid_order_is_cancelled_when_its_window_ends_and_not_before(backend: Backend) {
    let app = spawn_app_with(backend, |args| args.orders.order_expiration_seconds = WINDOW_SECONDS).await;
    let (seller, buyer, next_buyer) = (app.user().await, app.user().await, app.user().await);
    let order = ordered(&seller, &buyer, json!(12)).await;
    let ticket_id = order["ticket"]["id"].as_str().unwrap().to_owned();

    let cancelled_seen = watch_until_cancelled(&buyer, &order).await;
    let late = cancelled_seen - expires_at(&order);
    assert!(late < time::Duration::seconds(10), "cancelled {late} after the window ended");
    assert_eq!(order_with_status(&buyer, &id(&order), "cancelled").await["version"], 1);

    // The ticket is for sale again, and someone else can buy it.
    testkit::eventually(EVENTUAL, "the ticket to be listed again", || async {
        listed(&app).await.contains(&ticket_id).then_some(())
    })
    .await;
    order_ticket(&next_buyer, &ticket_id).await;
    wait_until_payments_knows_it_is_cancelled(&buyer, &id(&order)).await;
    app.stop().await;
}

/// Starts the expiration service alone, as its own process would, on `app`'s storage and bus.
async fn start_expiration(app: &TestApp) -> Running {
    let mut args = app.args.clone();
    args.services = vec![ServiceName::Expiration];
    args.settings.addr = "127.0.0.1:0".parse().unwrap();
    ticketing::start(args).await.expect("expiration starts")
}

/// Whether the expiration service holds a timer for the order, from its own database.
async fn has_timer(app: &TestApp, order_id: &str) -> bool {
    let settings = &app.args.settings;
    let db = crate::service_db::service_db(settings, expiration::NAME, &expiration::MIGRATOR).await;
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM timers WHERE order_id = $1 AND status = 'scheduled'")
        .bind(order_id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    db.pool.close().await;
    count == 1
}

async fn a_window_that_ends_while_expiration_is_down_ends_the_order_after_it_starts(backend: Backend) {
    // With PostgreSQL and NATS, expiration runs in a process of its own that is stopped while
    // everything else runs. The embedded default is one process per data dir, so there the
    // whole marketplace is down when the window ends.
    let own_process = backend == Backend::Distributed;
    let mut app = spawn_app_with(backend, |args| {
        apptest::on_manual_clock(args);
        if own_process {
            args.services = ServiceName::ALL.iter().copied().filter(|name| *name != ServiceName::Expiration).collect();
        }
    })
    .await;
    let expiration = if own_process { Some(start_expiration(&app).await) } else { None };
    let (seller, buyer) = (app.user().await, app.user().await);
    let order = ordered(&seller, &buyer, json!(12)).await;
    testkit::eventually(EVENTUAL, "the expiration timer to be set", || async {
        has_timer(&app, &id(&order)).await.then_some(())
    })
    .await;
    match expiration {
        Some(expiration) => expiration.stop().await.unwrap(),
        None => app.halt().await,
    }

    app.end_window(&order);
    if own_process {
        let (status, still) = buyer.get(&format!("/api/orders/{}", id(&order))).await;
        assert_eq!(
            (status, &still["status"]),
            (StatusCode::OK, &json!("created")),
            "nothing ended it while expiration was down"
        );
    }

    let expiration = if own_process {
        Some(start_expiration(&app).await)
    } else {
        app.resume().await;
        None
    };
    order_with_status(&buyer, &id(&order), "cancelled").await;
    assert!(!has_timer(&app, &id(&order)).await);
    let ticket_id = order["ticket"]["id"].as_str().unwrap().to_owned();
    testkit::eventually(EVENTUAL, "the ticket to be listed again", || async {
        listed(&app).await.contains(&ticket_id).then_some(())
    })
    .await;
    if let Some(expiration) = expiration {
        expiration.stop().await.unwrap();
    }
    app.stop().await;
}
