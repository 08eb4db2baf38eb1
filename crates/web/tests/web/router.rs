//! The web router on its own (`oneshot`, no server): what needs no API answer. Its API is
//! a closed port, so a test that gets past a check without calling the API shows it.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use contract::money::Currency;
use tower::ServiceExt;
use web::WebConfig;

use crate::support::unescape;

fn router() -> Router {
    web::router(WebConfig {
        // Nothing listens on the discard port.
        api_url: "http://127.0.0.1:9".into(),
        api_timeout: Duration::from_secs(2),
        currency: Currency::new("usd"),
        stripe_publishable_key: None,
        addresses: httpkit::client_addr::ClientAddresses::new(
            Vec::new(),
            Arc::new(httpkit::session::SessionKeys::new(b"router test key", time::Duration::hours(1))),
        ),
        max_body_bytes: 16 * 1024,
    })
    .expect("the router builds")
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn send(request: Request<Body>) -> Answer {
    let response: Response = router().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
    Answer { status, headers, body: String::from_utf8_lossy(&bytes).into_owned() }
}

async fn get(path: &str) -> Answer {
    send(Request::get(path).body(Body::empty()).unwrap()).await
}

fn post(path: &str, cookie: Option<&str>, form: &str) -> Request<Body> {
    let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    request.body(Body::from(form.to_owned())).unwrap()
}

/// The CSRF cookie a page set, as `csrf=<token>`, and the token in its forms.
fn csrf_of(answer: &Answer) -> (String, String) {
    let cookie = answer
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("csrf="))
        .expect("a csrf cookie is set")
        .to_owned();
    let pair = cookie.split(';').next().unwrap().to_owned();
    let marker = r#"name="_csrf" value=""#;
    let start = answer.body.find(marker).expect("a token field") + marker.len();
    let token = answer.body[start..].split('"').next().unwrap().to_owned();
    (pair, token)
}

#[tokio::test]
async fn the_sign_in_page_renders_without_the_api_for_an_anonymous_visitor() {
    let page = get("/auth/signin").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    assert_eq!(page.headers[header::CACHE_CONTROL], "no-store");
    assert!(page.body.contains(r#"<label for="email">Email</label>"#));
    assert!(page.body.contains(r#"<label for="password">Password</label>"#));
    assert!(page.body.contains(r#"<button type="submit" class="button primary">Sign In</button>"#));
    // Anonymous header.
    assert!(page.body.contains(">Sign Up</a>") && page.body.contains(">Sign In</a>"));
    assert!(!page.body.contains("Sign Out"));

    let cookie = page
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|v| v.starts_with("csrf="))
        .expect("csrf cookie");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/"), "{cookie}");
    let (pair, token) = csrf_of(&page);
    // Issue 10: the form carries a MAC of the cookie (and session), never the cookie itself.
    assert!(token.len() == 64 && pair.len() == "csrf=".len() + 64 && pair != format!("csrf={token}"));
}

#[tokio::test]
async fn a_post_without_the_right_token_is_refused_with_a_friendly_page() {
    let page = get("/auth/signin").await;
    let (cookie, token) = csrf_of(&page);
    let credentials = "email=a%40example.com&password=longenough";

    for (what, request) in [
        ("no cookie, no token", post("/auth/signin", None, credentials)),
        ("no cookie", post("/auth/signin", None, &format!("{credentials}&_csrf={token}"))),
        ("no token", post("/auth/signin", Some(&cookie), credentials)),
        ("wrong token", post("/auth/signin", Some(&cookie), &format!("{credentials}&_csrf={}", "0".repeat(64)))),
        ("empty token", post("/auth/signin", Some(&cookie), &format!("{credentials}&_csrf="))),
        ("sign out", post("/auth/signout", Some(&cookie), "")),
        ("purchase", post("/tickets/00000000-0000-0000-0000-000000000000/purchase", Some(&cookie), "")),
    ] {
        let answer = send(request).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{what}");
        assert!(answer.body.contains("This form has expired"), "{what}: {}", answer.body);
        assert!(answer.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"));
    }

    // The right token passes the check and reaches the handler, which then finds no API.
    let answer = send(post("/auth/signin", Some(&cookie), &format!("{credentials}&_csrf={token}"))).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY, "{}", answer.body);
    assert!(answer.body.contains("cannot be reached"), "{}", answer.body);
}

#[tokio::test]
async fn assets_have_a_content_hash_and_are_cached_for_a_year() {
    let page = get("/auth/signin").await;
    let marker = r#"<link rel="stylesheet" href=""#;
    let start = page.body.find(marker).expect("a stylesheet link") + marker.len();
    let href = unescape(page.body[start..].split('"').next().unwrap());
    assert!(href.starts_with("/assets/style-") && href.ends_with(".css"), "{href}");

    let css = get(&href).await;
    assert_eq!(css.status, StatusCode::OK);
    assert_eq!(css.headers[header::CONTENT_TYPE], "text/css; charset=utf-8");
    assert_eq!(css.headers[header::CACHE_CONTROL], "public, max-age=31536000, immutable");
    assert!(css.body.contains(".ticket-list"));
    // No CSRF cookie for an asset.
    assert!(css.headers.get(header::SET_COOKIE).is_none());

    let etag = css.headers[header::ETAG].to_str().unwrap().to_owned();
    let again = send(Request::get(&href).header(header::IF_NONE_MATCH, &etag).body(Body::empty()).unwrap()).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);

    assert_eq!(get("/assets/style-000000000000.css").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get("/assets/style.css").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_pages_are_a_friendly_404_and_unknown_api_paths_the_envelope() {
    let page = get("/no/such/page").await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(page.body.contains("Page not found") && page.body.contains("Back to the tickets"));

    for path in ["/api", "/api/nope", "/api/tickets/x/y"] {
        let answer = send(Request::post(path).body(Body::empty()).unwrap()).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(answer.body, r#"{"errors":[{"message":"Not Found"}]}"#, "{path}");
    }

    let wrong_method = send(Request::delete("/auth/signin").body(Body::empty()).unwrap()).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong_method.body.contains("<h1>Not allowed</h1>"));
}

#[tokio::test]
async fn malformed_ids_are_not_found_without_asking_the_api() {
    // The API is unreachable: a 404 (not a 502) shows the id never went into an API path.
    for path in [
        "/tickets/not-a-uuid",
        "/tickets/..%2Fusers%2Fsignout",
        "/tickets/%2e%2e/edit",
        "/orders/123",
        "/orders/..%2F..%2Fusers%2Fcurrentuser",
    ] {
        let answer = get(path).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}: {}", answer.body);
    }
}

#[tokio::test]
async fn pages_that_need_a_user_send_anonymous_visitors_to_sign_in_and_back() {
    for (path, to) in [
        ("/tickets/new", "/auth/signin?next=/tickets/new"),
        ("/orders", "/auth/signin?next=/orders"),
        (
            "/orders/0b4d3c3e-4a4f-4a39-9d59-1f1d6f1f5a11",
            "/auth/signin?next=/orders/0b4d3c3e-4a4f-4a39-9d59-1f1d6f1f5a11",
        ),
    ] {
        let answer = get(path).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{path}");
        assert_eq!(answer.headers[header::LOCATION], to, "{path}");
    }
    // The sign-in form carries where to go back to, and only ever to this site.
    let page = get("/auth/signin?next=/orders").await;
    assert!(unescape(&page.body).contains(r#"<input type="hidden" name="next" value="/orders">"#), "{}", page.body);
    let page = get("/auth/signin?next=//evil.example").await;
    assert!(!page.body.contains(r#"name="next""#));
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    for path in ["/auth/signup", "/no/such/page"] {
        let answer = get(path).await;
        let csp = answer.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
        assert!(!csp.contains("stripe"), "no third party without Stripe: {csp}");
        assert_eq!(answer.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(answer.headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(answer.headers[header::REFERRER_POLICY], "same-origin");
    }
}

#[tokio::test]
async fn an_oversized_form_is_refused() {
    let page = get("/auth/signin").await;
    let (cookie, token) = csrf_of(&page);
    let big = format!("_csrf={token}&email={}", "a".repeat(20 * 1024));
    let answer = send(post("/auth/signin", Some(&cookie), &big)).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn head_requests_work_like_get() {
    let answer = send(Request::builder().method(Method::HEAD).uri("/auth/signup").body(Body::empty()).unwrap()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.is_empty());
}

/// Finding (issue 10): a duplicated field got axum's 422 text/plain "Failed to deserialize
/// form body", a missing content type a 415 text/plain. Every malformed post now gets the
/// site's error page, in its layout, before the API is asked anything.
#[tokio::test]
async fn malformed_form_posts_get_the_friendly_error_page() {
    let page = get("/auth/signin").await;
    let (cookie, token) = csrf_of(&page);
    let with_type = |path: &str, content_type: Option<&str>, body: Vec<u8>| {
        let mut request = Request::post(path).header(header::COOKIE, cookie.as_str());
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        request.body(Body::from(body)).unwrap()
    };
    let form = Some("application/x-www-form-urlencoded");
    let cases = [
        (
            "duplicated field",
            with_type("/tickets/new", form, format!("_csrf={token}&title=a&title=b&price=1").into_bytes()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "duplicated email",
            with_type("/auth/signin", form, format!("_csrf={token}&email=a@b.co&email=c@d.co&password=x").into_bytes()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "missing content type",
            with_type("/tickets/new", None, format!("_csrf={token}&title=a&price=1").into_bytes()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "text/plain",
            with_type("/auth/signup", Some("text/plain"), format!("_csrf={token}&email=a@b.co").into_bytes()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "JSON",
            with_type("/auth/signin", Some("application/json"), format!("_csrf={token}&email=a@b.co").into_bytes()),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "percent-encoded invalid UTF-8",
            with_type("/tickets/new", form, format!("_csrf={token}&title=%FF%FE&price=1").into_bytes()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "raw invalid UTF-8",
            with_type(
                "/tickets/new",
                form,
                [format!("_csrf={token}&price=1&title=").into_bytes(), vec![0xC3, 0x28]].concat(),
            ),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (case, request, status) in cases {
        let answer = send(request).await;
        assert_eq!(answer.status, status, "{case}: {}", answer.body);
        assert!(answer.headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/html"), "{case}");
        assert!(answer.body.contains(r#"class="site-header""#), "{case}: in the site's layout: {}", answer.body);
        assert!(answer.body.contains("Go back, reload the page and try again."), "{case}: {}", answer.body);
        assert!(
            !answer.body.contains("deserialize") && !answer.body.contains("Content-Type"),
            "{case}: {}",
            answer.body
        );
    }
}
