//! The web service in a process of its own (`ticketing serve web`), against a stand-in API:
//! what it forwards, and pages for answers the real API rarely gives (outages, expired
//! orders, Stripe mode).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::{Browser, FakeApi, spawn_web};

pub const ORDER_ID: &str = "7d0e2a55-3b1c-4d7a-9f0e-5c3b2a1d0e9f";
const TICKET_ID: &str = "1c7f3e1a-8b2d-4e5f-a6b7-c8d9e0f1a2b3";
const USER_ID: &str = "3f2e1d0c-9b8a-4765-8432-10fedcba9876";

/// A signed-in user and one order with status `status`, expiring `expires_in` after it is
/// first looked at.
pub fn api_with_order(status: &'static str, expires_in: Duration) -> Router {
    let first_seen: Arc<OnceLock<OffsetDateTime>> = Arc::default();
    Router::new()
        .route(
            "/api/users/signin",
            post(|| async {
                (
                    StatusCode::OK,
                    [(header::SET_COOKIE, "session=fake-token; Path=/; HttpOnly; SameSite=Lax")],
                    axum::Json(json!({ "id": USER_ID, "email": "buyer@example.com" })),
                )
            }),
        )
        .route(
            "/api/users/currentuser",
            get(|| async {
                axum::Json(json!({ "currentUser": { "id": USER_ID, "email": "buyer@example.com", "iat": 1 } }))
            }),
        )
        .route(
            "/api/orders/{id}",
            get(move || {
                let expires_at = (*first_seen.get_or_init(|| OffsetDateTime::now_utc() + expires_in))
                    .format(&Rfc3339)
                    .expect("a formattable time");
                async move {
                    axum::Json(json!({
                        "id": ORDER_ID, "userId": USER_ID, "status": status, "expiresAt": expires_at, "version": 0,
                        "ticket": { "id": TICKET_ID, "title": "Opera <night>", "price": 42.5, "version": 1 }
                    }))
                }
            }),
        )
}

pub async fn signed_in(browser: &Browser) {
    let form = browser.get("/auth/signin").await;
    let home =
        browser.submit(&form, "/auth/signin", &[("email", "buyer@example.com"), ("password", "whatever1")]).await;
    assert_ne!(home.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_carry_the_visitors_session_and_address_and_nothing_else_of_theirs() {
    let api = FakeApi::start(
        Router::new()
            .route("/api/tickets", get(|| async { axum::Json(json!([])) }))
            .route("/api/users/currentuser", get(|| async { axum::Json(json!({ "currentUser": null })) })),
    )
    .await;
    let app = spawn_web(&api.url, |_| {}).await;
    let response = reqwest::Client::new()
        .get(app.url("/"))
        .header(header::COOKIE, "session=the-jwt; tracking=secret; csrf=also-secret")
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.text().await.unwrap();
    assert!(body.contains("No tickets for sale right now."), "{body}");

    let seen = api.requests();
    let paths: Vec<_> = seen.iter().map(|s| format!("{} {}", s.method, s.path)).collect();
    assert!(paths.contains(&"GET /api/tickets".to_owned()) && paths.contains(&"GET /api/users/currentuser".to_owned()));
    for request in &seen {
        assert_eq!(request.headers[header::COOKIE], "session=the-jwt", "only the session cookie goes to the API");
        assert!(request.headers.get("x-forwarded-for").is_none(), "the API believes no X-Forwarded-For");
        let signed = request.headers[httpkit::client_addr::SIGNED_HEADER].to_str().unwrap();
        assert!(signed.starts_with("127.0.0.1;"), "the visitor's address, signed: {signed}");
        assert_eq!(request.headers["x-request-id"], "req-123", "logs of both sides line up");
        assert!(request.headers.get("x-forwarded-proto").is_none());
    }

    // A visitor behind TLS: the API learns it, so the cookie it sets is Secure.
    let before = api.requests().len();
    reqwest::Client::new()
        .get(app.url("/"))
        .header(header::COOKIE, "session=the-jwt")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    for request in &api.requests()[before..] {
        assert_eq!(request.headers["x-forwarded-proto"], "https");
    }

    // No session cookie, no session question.
    let before = api.requests().len();
    reqwest::get(app.url("/")).await.unwrap();
    let after: Vec<_> = api.requests()[before..].iter().map(|s| s.path.clone()).collect();
    assert_eq!(after, vec!["/api/tickets"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_hands_the_apis_session_cookie_to_the_browser() {
    let api = FakeApi::start(api_with_order("created", Duration::from_secs(600))).await;
    let app = spawn_web(&api.url, |_| {}).await;
    let browser = Browser::new(&app.base);
    let form = browser.get("/auth/signin").await;
    let no_redirects = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let cookie = form
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .find(|v| v.starts_with("csrf="))
        .unwrap();
    let response = no_redirects
        .post(app.url("/auth/signin"))
        .header(header::COOKIE, &cookie)
        .form(&[("_csrf", form.csrf().as_str()), ("email", "buyer@example.com"), ("password", "whatever1")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/");
    let set_cookie: Vec<_> =
        response.headers().get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(set_cookie, vec!["session=fake-token; Path=/; HttpOnly; SameSite=Lax"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_is_down_or_failing_gets_a_friendly_page_without_details() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let app = spawn_web(&closed, |_| {}).await;
    let page = Browser::new(&app.base).get("/").await;
    assert_eq!(page.status, StatusCode::BAD_GATEWAY);
    assert!(page.has("cannot be reached right now"), "{}", page.body);
    app.stop().await;

    let api = FakeApi::start(Router::new().route(
        "/api/tickets",
        get(|| async {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({ "errors": [{ "message": "Something went wrong" }] })),
            )
                .into_response()
        }),
    ))
    .await;
    let app = spawn_web(&api.url, |_| {}).await;
    let page = Browser::new(&app.base).get("/").await;
    assert_eq!(page.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(page.has("Something went wrong on our side"), "{}", page.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_past_its_time_says_so_and_offers_no_payment() {
    let api = FakeApi::start(api_with_order("created", Duration::ZERO)).await;
    let app = spawn_web(&api.url, |_| {}).await;
    let browser = Browser::new(&app.base);
    signed_in(&browser).await;
    let page = browser.get(&format!("/orders/{ORDER_ID}")).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.has("Order expired"), "{}", page.body);
    assert!(page.has("Opera <night>"), "titles are escaped and shown as typed");
    assert!(!page.body.contains("Opera <night>"), "never raw");
    assert!(!page.has("Time left to pay") && !page.has(">Pay "), "{}", page.body);
    assert!(!page.body.contains("countdown-"), "no script without a countdown");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payable_order_counts_down_and_offers_the_sandbox_test_cards() {
    let api = FakeApi::start(api_with_order("created", Duration::from_secs(600))).await;
    let app = spawn_web(&api.url, |_| {}).await;
    let browser = Browser::new(&app.base);
    signed_in(&browser).await;
    let page = browser.get(&format!("/orders/{ORDER_ID}")).await;
    assert!(page.has("Time left to pay"), "{}", page.body);
    let ms_left = page.ms_left().expect("a countdown");
    assert!((590_000..=600_000).contains(&ms_left), "{ms_left}");
    assert!(page.has("$42.50"));
    assert!(page.has_label("token", "Test card"));
    assert!(page.body.contains(r#"<option value="tok_visa" selected>"#), "a succeeding card is the default");
    assert!(page.body.contains("tok_chargeDeclined"));
    assert!(page.body.contains("/assets/countdown-") || page.text().contains("/assets/countdown-"));
    assert!(!page.text().contains("js.stripe.com"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_stripe_key_the_pay_form_uses_stripes_card_element() {
    let api = FakeApi::start(api_with_order("created", Duration::from_secs(600))).await;
    let app = spawn_web(&api.url, |args| args.web.stripe_publishable_key = Some("pk_test_123".into())).await;
    let browser = Browser::new(&app.base);
    signed_in(&browser).await;
    let page = browser.get(&format!("/orders/{ORDER_ID}")).await;
    let text = page.text();
    assert!(text.contains(r#"data-stripe-key="pk_test_123""#), "{text}");
    assert!(text.contains(r#"<script src="https://js.stripe.com/v3/"></script>"#));
    assert!(text.contains(r#"id="card-element""#) && !text.contains("tok_visa"));
    let csp = page.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("script-src 'self' https://js.stripe.com"), "{csp}");
    app.stop().await;
}

/// Issue 10: the visitor's address reaches the API signed, from `X-Forwarded-For` only when
/// the proxy that sent it is in `TRUSTED_PROXIES`, and then the rightmost untrusted hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_visitor_address_is_taken_from_trusted_proxies_only_and_signed_for_the_api() {
    let api = FakeApi::start(
        Router::new()
            .route("/api/tickets", get(|| async { axum::Json(json!([])) }))
            .route("/api/users/currentuser", get(|| async { axum::Json(json!({ "currentUser": null })) })),
    )
    .await;
    let signed_address = |api: &FakeApi| {
        let seen = api.requests();
        let last = seen.last().expect("the API was called");
        let value = last.headers[httpkit::client_addr::SIGNED_HEADER].to_str().unwrap().to_owned();
        value.split(';').next().unwrap().to_owned()
    };
    let visit = |app: &apptest::TestApp, forwarded: &'static str| {
        reqwest::Client::new().get(app.url("/")).header("x-forwarded-for", forwarded).send()
    };

    let untrusting = spawn_web(&api.url, |_| {}).await;
    assert_eq!(visit(&untrusting, "198.51.100.7").await.unwrap().status(), StatusCode::OK);
    assert_eq!(signed_address(&api), "127.0.0.1", "a loopback peer is not a proxy by itself");
    untrusting.stop().await;

    let behind_proxy =
        spawn_web(&api.url, |args| args.settings.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]).await;
    assert_eq!(visit(&behind_proxy, "6.6.6.6, 198.51.100.7").await.unwrap().status(), StatusCode::OK);
    assert_eq!(signed_address(&api), "198.51.100.7", "the hop the trusted proxy appended");
    assert_eq!(visit(&behind_proxy, "<script>").await.unwrap().status(), StatusCode::OK);
    assert_eq!(signed_address(&api), "127.0.0.1", "anything but an address is nobody's address");
    behind_proxy.stop().await;
}

/// Issues 10 and 12: the home page shows one page of the API's list, links the next page with
/// the cursor of the API's `Link` header, and keeps the visitor's search on every page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_home_page_follows_the_apis_cursor_and_keeps_the_search() {
    type Query = Vec<(String, String)>;
    let queries: Arc<std::sync::Mutex<Vec<Query>>> = Arc::default();
    let seen = queries.clone();
    let tickets = move |axum::extract::RawQuery(query): axum::extract::RawQuery| {
        let seen = seen.clone();
        async move {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&query.unwrap_or_default()).unwrap();
            seen.lock().unwrap().push(pairs.clone());
            let param = |name: &str| pairs.iter().find(|(key, _)| key == name).map(|(_, value)| value.clone());
            let title = |n: u32| format!("{} {n}", param("q").unwrap_or_else(|| "Concert".to_owned()));
            let ticket = |n: u32| json!({ "id": TICKET_ID, "title": title(n), "price": 10, "userId": USER_ID, "version": 0, "orderId": null });
            match param("cursor").as_deref() {
                None => {
                    let q = param("q").map(|q| format!("&q={}", q.replace(' ', "+").replace('&', "%26"))).unwrap_or_default();
                    let link = format!("</api/tickets?limit=50{q}&cursor=second%2Bpage>; rel=\"next\"");
                    ([(header::LINK, link)], axum::Json(json!([ticket(1)]))).into_response()
                }
                Some("second+page") => axum::Json(json!([ticket(2)])).into_response(),
                Some(_) => (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({ "errors": [{ "message": "Cursor is invalid; use the link of the page before", "field": "cursor" }] })),
                )
                    .into_response(),
            }
        }
    };
    let api = FakeApi::start(
        Router::new()
            .route("/api/tickets", get(tickets))
            .route("/api/users/currentuser", get(|| async { axum::Json(json!({ "currentUser": null })) })),
    )
    .await;
    let app = spawn_web(&api.url, |_| {}).await;
    let browser = Browser::new(&app.base);

    let first = browser.get("/").await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first.has(">Concert 1</a>"), "{}", first.body);
    assert!(first.has(r#"<form class="search" method="get" action="/" role="search">"#), "{}", first.body);
    assert!(first.has_label("q", "Search titles"));
    assert!(first.has(r#"<a class="next" href="/?cursor=second%2Bpage" rel="next">Next page</a>"#), "{}", first.body);
    assert!(!first.has("Newest tickets"), "the first page links no first page");
    let second = browser.get("/?cursor=second%2Bpage").await;
    assert!(second.has(">Concert 2</a>") && !second.has(">Concert 1</a>"), "{}", second.body);
    assert!(!second.has("Next page"), "the last page links no next page");
    assert!(second.has(r#"<a href="/">Newest tickets</a>"#), "{}", second.body);

    // A search: the API is asked with `q`, the box keeps it, the next page keeps it.
    let found = browser.get("/?q=jazz+%26+blues").await;
    assert!(found.has(">jazz & blues 1</a>"), "{}", found.body);
    assert_eq!(found.input_value("q").as_deref(), Some("jazz & blues"));
    let next = r#"href="/?q=jazz%20%26%20blues&cursor=second%2Bpage" rel="next""#;
    assert!(found.has(next), "{}", found.body);
    let found_next = browser.get("/?q=jazz%20%26%20blues&cursor=second%2Bpage").await;
    assert!(found_next.has(">jazz & blues 2</a>"), "{}", found_next.body);
    assert!(found_next.has(r#"<a href="/?q=jazz%20%26%20blues">Newest tickets</a>"#), "{}", found_next.body);

    // A cursor the API refuses gets the error page with the API's message.
    let refused = browser.get("/?cursor=bogus").await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.has("Cursor is invalid"), "{}", refused.body);

    let pair = |key: &str, value: &str| (key.to_owned(), value.to_owned());
    assert_eq!(
        *queries.lock().unwrap(),
        vec![
            vec![],
            vec![pair("cursor", "second+page")],
            vec![pair("q", "jazz & blues")],
            vec![pair("q", "jazz & blues"), pair("cursor", "second+page")],
            vec![pair("cursor", "bogus")],
        ]
    );
    app.stop().await;
}
