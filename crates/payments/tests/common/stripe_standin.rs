//! A stand-in for Stripe's API on 127.0.0.1:0, answering as Stripe documents, and recording
//! every request it got so tests can check what was sent.
//!
//! Tokens pick the answer, like Stripe's test tokens: `tok_visa` charges,
//! `tok_chargeDeclinedInsufficientFunds` is declined (402 `card_error`), `tok_outage` gets a
//! 500, any other token is unknown (400 `invalid_request_error` on `source`). An unknown key
//! gets 401. Idempotency keys are honoured for successful requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::{Value, json};

pub const KEY: &str = "sk_test_standin";

/// One request the stand-in received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub authorization: Option<String>,
    pub idempotency_key: Option<String>,
    pub content_type: Option<String>,
    pub form: HashMap<String, String>,
}

#[derive(Default)]
struct Inner {
    seen: Mutex<Vec<Seen>>,
    /// Idempotency key → the answer given.
    answers: Mutex<HashMap<String, Value>>,
    /// Charge id → refunded?
    charges: Mutex<HashMap<String, bool>>,
    /// Refund requests still to fail with a 500.
    failing_refunds: AtomicUsize,
    counter: AtomicUsize,
}

#[derive(Clone)]
pub struct StripeStandIn {
    pub base: String,
    inner: Arc<Inner>,
}

impl StripeStandIn {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/v1/charges", post(charge))
            .route("/v1/refunds", post(refund))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, inner }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.inner.seen.lock().unwrap().clone()
    }

    pub fn seen_at(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|seen| seen.path == path).collect()
    }

    /// The next `n` refund requests fail with a 500.
    pub fn fail_next_refunds(&self, n: usize) {
        self.inner.failing_refunds.store(n, Ordering::SeqCst);
    }

    pub fn is_refunded(&self, charge_id: &str) -> bool {
        self.inner.charges.lock().unwrap().get(charge_id).copied().unwrap_or(false)
    }
}

fn record(inner: &Inner, path: &str, headers: &HeaderMap, form: &HashMap<String, String>) -> Option<String> {
    let text = |name: header::HeaderName| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    let seen = Seen {
        path: path.to_owned(),
        authorization: text(header::AUTHORIZATION),
        idempotency_key: headers.get("idempotency-key").map(|v| v.to_str().unwrap().to_owned()),
        content_type: text(header::CONTENT_TYPE),
        form: form.clone(),
    };
    let key = seen.idempotency_key.clone();
    inner.seen.lock().unwrap().push(seen);
    key
}

fn stripe_error(status: StatusCode, error: Value) -> (StatusCode, Json<Value>) {
    (status, Json(json!({ "error": error })))
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {KEY}"))
}

fn unauthorized() -> (StatusCode, Json<Value>) {
    stripe_error(
        StatusCode::UNAUTHORIZED,
        json!({"type": "invalid_request_error", "message": "Invalid API Key provided: sk_test_******"}),
    )
}

async fn charge(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let key = record(&inner, "/v1/charges", &headers, &form);
    if !authorized(&headers) {
        return unauthorized();
    }
    if let Some(answer) = key.as_ref().and_then(|key| inner.answers.lock().unwrap().get(key).cloned()) {
        return (StatusCode::OK, Json(answer));
    }
    let n = inner.counter.fetch_add(1, Ordering::SeqCst);
    match form.get("source").map(String::as_str) {
        Some("tok_visa") => {
            let id = format!("ch_standin{n}");
            let answer = json!({
                "id": id, "object": "charge", "status": "succeeded", "paid": true,
                "amount": form["amount"].parse::<i64>().unwrap(), "currency": form["currency"],
                "metadata": {"order_id": form.get("metadata[order_id]")},
            });
            inner.charges.lock().unwrap().insert(id, false);
            if let Some(key) = key {
                inner.answers.lock().unwrap().insert(key, answer.clone());
            }
            (StatusCode::OK, Json(answer))
        }
        Some("tok_chargeDeclinedInsufficientFunds") => stripe_error(
            StatusCode::PAYMENT_REQUIRED,
            json!({
                "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.", "charge": format!("ch_declined{n}"),
            }),
        ),
        Some("tok_outage") => stripe_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"type": "api_error", "message": "An unknown error occurred"}),
        ),
        other => stripe_error(
            StatusCode::BAD_REQUEST,
            json!({
                "type": "invalid_request_error", "code": "resource_missing", "param": "source",
                "message": format!("No such token: '{}'", other.unwrap_or("")),
            }),
        ),
    }
}

async fn refund(
    State(inner): State<Arc<Inner>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let key = record(&inner, "/v1/refunds", &headers, &form);
    if !authorized(&headers) {
        return unauthorized();
    }
    if inner.failing_refunds.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        return stripe_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"type": "api_error", "message": "An unknown error occurred"}),
        );
    }
    if let Some(answer) = key.as_ref().and_then(|key| inner.answers.lock().unwrap().get(key).cloned()) {
        return (StatusCode::OK, Json(answer));
    }
    let charge_id = form.get("charge").cloned().unwrap_or_default();
    let mut charges = inner.charges.lock().unwrap();
    match charges.get(&charge_id) {
        None => stripe_error(
            StatusCode::BAD_REQUEST,
            json!({"type": "invalid_request_error", "code": "resource_missing", "param": "charge",
                   "message": format!("No such charge: '{charge_id}'")}),
        ),
        Some(true) => stripe_error(
            StatusCode::BAD_REQUEST,
            json!({"type": "invalid_request_error", "code": "charge_already_refunded",
                   "message": format!("Charge {charge_id} has already been refunded.")}),
        ),
        Some(false) => {
            charges.insert(charge_id.clone(), true);
            let n = inner.counter.fetch_add(1, Ordering::SeqCst);
            let answer =
                json!({"id": format!("re_standin{n}"), "object": "refund", "status": "succeeded", "charge": charge_id});
            if let Some(key) = key {
                inner.answers.lock().unwrap().insert(key, answer.clone());
            }
            (StatusCode::OK, Json(answer))
        }
    }
}
