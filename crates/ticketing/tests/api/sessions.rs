//! Issue 10: sign-out that signs out everywhere, sign-in lockout per (email, client) pair, and
//! the per-user limit on ticket creation, each reproduced and shown refused.

use std::time::Duration;

use contract::events::SessionRevoked;
use platform::bus::{Delivery, Handler, Outcome};
use platform::envelope::ToEvent;
use reqwest::StatusCode;
use reqwest::header::{RETRY_AFTER, SET_COOKIE};
use serde_json::{Value, json};
use sqlx::Row;
use testkit::{Backend, eventually, on_both_backends};

use crate::service_db::service_db;
use apptest::{TestApp, into_parts, messages, sign_in_token, spawn_app, spawn_app_with};

on_both_backends!(
    a_copied_token_is_refused_everywhere_after_sign_out,
    a_redelivered_revocation_changes_nothing_and_each_service_keeps_its_own_list,
    ticket_creation_is_limited_per_user,
);

/// How long the services may take to apply `session:revoked` ("within seconds").
const REVOCATION_DEADLINE: Duration = Duration::from_secs(10);

/// What each authenticating service makes of a bearer token: auth's current user, tickets'
/// and payments' status for a POST, orders' status for the list.
#[derive(Debug, PartialEq)]
struct Seen {
    current_user: Value,
    create_ticket: StatusCode,
    list_orders: StatusCode,
    pay: StatusCode,
}

async fn seen_with(app: &TestApp, token: &str) -> Seen {
    let client = reqwest::Client::new();
    let (_, me) =
        into_parts(client.get(app.url("/api/users/currentuser")).bearer_auth(token).send().await.unwrap()).await;
    let create_ticket = client
        .post(app.url("/api/tickets"))
        .bearer_auth(token)
        .json(&json!({"title": "Copied", "price": 5}))
        .send()
        .await
        .unwrap()
        .status();
    let list_orders = client.get(app.url("/api/orders")).bearer_auth(token).send().await.unwrap().status();
    // Signed in: the empty body is invalid (400); signed out: 401 comes first.
    let pay = client.post(app.url("/api/payments")).bearer_auth(token).json(&json!({})).send().await.unwrap().status();
    Seen { current_user: me["currentUser"].clone(), create_ticket, list_orders, pay }
}

fn signed_out() -> Seen {
    Seen {
        current_user: Value::Null,
        create_ticket: StatusCode::UNAUTHORIZED,
        list_orders: StatusCode::UNAUTHORIZED,
        pay: StatusCode::UNAUTHORIZED,
    }
}

/// Finding: sign up, copy the `session` value, sign out: the copy still worked for 7 days.
async fn a_copied_token_is_refused_everywhere_after_sign_out(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let owner = app.user().await;
    let (id, copied) = (owner.id.clone(), owner.token.clone());
    let other_session = sign_in_token(&app, &owner.email).await;
    let before = seen_with(&app, &copied).await;
    assert_eq!(before.current_user["id"], id.as_str());
    assert_eq!(
        (before.create_ticket, before.list_orders, before.pay),
        (StatusCode::CREATED, StatusCode::OK, StatusCode::BAD_REQUEST)
    );

    // The owner signs out in their browser: the cookie carries the token.
    let response = reqwest::Client::new()
        .post(app.url("/api/users/signout"))
        .header("cookie", format!("session={copied}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));

    // Auth recorded it in the sign-out's own transaction: refused there at once.
    let (_, me) = into_parts(
        reqwest::Client::new().get(app.url("/api/users/currentuser")).bearer_auth(&copied).send().await.unwrap(),
    )
    .await;
    assert_eq!(me, json!({"currentUser": null}));
    // Everywhere else as soon as `session:revoked` is applied.
    let signed_out_at = std::time::Instant::now();
    eventually(REVOCATION_DEADLINE, "every service to refuse the signed-out token", || async {
        (seen_with(&app, &copied).await == signed_out()).then_some(())
    })
    .await;
    // Reported, never asserted: the contract says "within seconds".
    eprintln!("{backend:?}: every service refused the signed-out token after {:?}", signed_out_at.elapsed());

    // The user's other session is not signed out.
    let other = seen_with(&app, &other_session).await;
    assert_eq!(other.current_user["id"], id.as_str());
    assert_eq!(
        (other.create_ticket, other.list_orders, other.pay),
        (StatusCode::CREATED, StatusCode::OK, StatusCode::BAD_REQUEST)
    );
    // Signing out again with the dead token is harmless, and it stays dead after a restart.
    let response = reqwest::Client::new()
        .post(app.url("/api/users/signout"))
        .bearer_auth(&copied)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.restart().await;
    assert_eq!(seen_with(&app, &copied).await, signed_out());
    assert_eq!(seen_with(&app, &other_session).await.current_user["id"], id.as_str());
    app.stop().await;
}

fn deliver(event: &platform::bus::Event) -> Delivery {
    Delivery { event: event.clone(), attempt: 1, is_last_attempt: false }
}

/// A consumer that sees the same `session:revoked` twice (a redelivery), or the same session
/// revoked by two events (two sign-outs racing), records it once. And a service refuses what
/// its own list says, whatever the others know: here tickets learns of a revocation auth never
/// made, so only tickets refuses that token.
async fn a_redelivered_revocation_changes_nothing_and_each_service_keeps_its_own_list(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.user().await;
    let (id, token) = (user.id.clone(), user.token.clone());
    let keys = httpkit::session::SessionKeys::new(
        app.args.settings.jwt_key.as_ref().unwrap().as_bytes(),
        time::Duration::hours(1),
    );
    let claims = keys.verify(&token).expect("a valid token");
    let revoked = SessionRevoked {
        id: claims.jti,
        user_id: uuid::Uuid::parse_str(&id).unwrap(),
        expires_at: time::OffsetDateTime::from_unix_timestamp(claims.exp).unwrap(),
    };
    let db = service_db(&app.args.settings, tickets::NAME, &tickets::MIGRATOR).await;
    let consumer = platform::consumer::Consumer::new(tickets::NAME, db.clone(), tickets::events::OrderEvents, None);
    let event = revoked.to_event();
    let again = revoked.to_event();
    for delivery in [deliver(&event), deliver(&event), deliver(&again)] {
        assert!(matches!(consumer.handle(delivery).await, Outcome::Ack));
    }
    let rows = sqlx::query("SELECT id, user_id, expires_at FROM revoked_sessions WHERE user_id = $1")
        .bind(&id)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one revocation, however often it was told");
    assert_eq!(rows[0].try_get::<String, _>("id").unwrap(), claims.jti.to_string());
    assert_eq!(rows[0].try_get::<i64, _>("expires_at").unwrap(), claims.exp * 1000);
    let processed: i64 =
        sqlx::query("SELECT COUNT(*) AS n FROM processed_events WHERE consumer = $1 AND event_id = $2")
            .bind(tickets::NAME)
            .bind(event.id.to_string())
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
    assert_eq!(processed, 1);

    // Tickets refuses the token, with no event through the bus; auth, which revoked nothing,
    // still knows the user.
    let seen = seen_with(&app, &token).await;
    assert_eq!(seen.create_ticket, StatusCode::UNAUTHORIZED);
    assert_eq!(seen.current_user["id"], id.as_str());
    assert_eq!(seen.list_orders, StatusCode::OK);
    db.pool.close().await;
    app.stop().await;
}

/// Signs in as `email` from `client` (an address the trusted proxy reports).
async fn sign_in_from(app: &TestApp, email: &str, password: &str, client: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url("/api/users/signin"))
        .header("x-forwarded-for", client)
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
}

/// Finding: five wrong passwords from anywhere made the owner's right one answer 429 for 15
/// minutes from every address. Now only the guessing client is locked out of that email.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_lock_out_the_guessing_client_not_the_owner() {
    let app = spawn_app_with(Backend::Embedded, |args| {
        args.auth.signin_failures_per_email_and_client = Some(5);
        args.auth.signin_failures_per_client = 20;
        args.settings.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let victim = app.user().await.email;
    let (attacker, owner) = ("198.51.100.66", "203.0.113.10");
    for attempt in 1..=5 {
        let status = sign_in_from(&app, &victim, "wrong-password", attacker).await.status();
        assert_eq!(status, StatusCode::BAD_REQUEST, "guess {attempt}");
    }
    for attempt in ["wrong-password", "correct horse battery"] {
        let response = sign_in_from(&app, &victim, attempt, attacker).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{attempt} from the guessing client");
        let retry_after: u64 = response.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
        assert!((1..=900).contains(&retry_after), "Retry-After: {retry_after}");
        assert_eq!(messages(&into_parts(response).await.1), vec!["Too many requests, try again later"]);
    }
    // The owner, from their own address, signs in.
    let response = sign_in_from(&app, &victim, "correct horse battery", owner).await;
    assert_eq!(response.status(), StatusCode::OK);
    // The guessing client may still sign in to other accounts (its own budget is per client).
    let other = app.user().await.email;
    assert_eq!(sign_in_from(&app, &other, "correct horse battery", attacker).await.status(), StatusCode::OK);
    app.stop().await;
}

/// Finding: one user created 3,000 tickets in 9 s. Now a user may list a set number per hour.
async fn ticket_creation_is_limited_per_user(backend: Backend) {
    let app = spawn_app_with(backend, |args| args.tickets.ticket_creations_per_user_per_hour = 3).await;
    let seller = app.user().await;
    let other = app.user().await;
    for n in 1..=3 {
        let (status, _) = seller.post("/api/tickets", json!({"title": format!("Ticket {n}"), "price": 5})).await;
        assert_eq!(status, StatusCode::CREATED, "ticket {n}");
    }
    let response =
        seller.client.post(seller.url("/api/tickets")).json(&json!({"title": "One too many", "price": 5})).send().await;
    let response = response.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
    // A slot frees when the first ticket is an hour old.
    assert!((3000..=3600).contains(&retry_after), "Retry-After: {retry_after}");
    assert_eq!(messages(&into_parts(response).await.1), vec!["Too many requests, try again later"]);
    // Invalid input is still reported as such, before the limit.
    let (status, _) = seller.post("/api/tickets", json!({"title": "", "price": 5})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Nothing was created, and other sellers are not affected.
    let (_, listed) = seller.get("/api/tickets").await;
    let titles: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|ticket| ticket["userId"] == seller.id.as_str())
        .map(|ticket| ticket["title"].as_str().unwrap())
        .collect();
    assert_eq!(titles.len(), 3, "{titles:?}");
    assert!(!titles.contains(&"One too many"));
    let (status, _) = other.post("/api/tickets", json!({"title": "Someone else's", "price": 5})).await;
    assert_eq!(status, StatusCode::CREATED);
    // Editing is not creating.
    let id = listed.as_array().unwrap().iter().find(|t| t["userId"] == seller.id.as_str()).unwrap()["id"].clone();
    let (status, _) =
        seller.put(&format!("/api/tickets/{}", id.as_str().unwrap()), json!({"title": "Edited", "price": 6})).await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}
