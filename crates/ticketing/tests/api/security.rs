//! Issue 10's findings, each reproduced against the whole marketplace and shown refused.
//! Behaviour that does not depend on the storage or bus runs on the embedded default only.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::Backend;

use apptest::{field_errors, into_parts, spawn_app};

/// The raw JSON text, as curl would send it: `json!` would already have rounded the number.
async fn send_raw(user: &apptest::User, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
    let response = user
        .client
        .request(method, user.url(path))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request sent");
    into_parts(response).await
}

/// Finding: `10.999999999999999999` became 11.00 and `100.0000000000000000001` 100.00.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prices_with_too_many_decimals_are_refused_however_close_to_a_whole_number() {
    let app = spawn_app(Backend::Embedded).await;
    let seller = app.user().await;
    let decimals = vec![("price".to_owned(), "Price must have at most 2 decimals".to_owned())];
    for price in ["10.999999999999999999", "100.0000000000000000001", r#""10.999999999999999999""#, "1.000e-20"] {
        let (status, body) =
            send_raw(&seller, Method::POST, "/api/tickets", &format!(r#"{{"title":"p","price":{price}}}"#)).await;
        assert_eq!((status, field_errors(&body)), (StatusCode::BAD_REQUEST, decimals.clone()), "{price}");
    }
    let (status, _) = seller.get("/api/tickets").await;
    assert_eq!(status, StatusCode::OK);

    // Exact numbers and decimal strings (the reference client sends `"25.00"`) are prices.
    for (price, expected) in
        [("19.990000000000000000", json!(19.99)), (r#""25.00""#, json!(25.0)), ("1.5e1", json!(15.0))]
    {
        let (status, body) =
            send_raw(&seller, Method::POST, "/api/tickets", &format!(r#"{{"title":"p","price":{price}}}"#)).await;
        assert_eq!(status, StatusCode::CREATED, "{price}: {body}");
        assert_eq!(body["price"], expected, "{price}");
        let path = format!("/api/tickets/{}", body["id"].as_str().unwrap());
        let (status, body) = send_raw(&seller, Method::PUT, &path, r#"{"title":"q","price":"0.999"}"#).await;
        assert_eq!((status, field_errors(&body)), (StatusCode::BAD_REQUEST, decimals.clone()));
    }
    let (status, body) = send_raw(&seller, Method::POST, "/api/tickets", r#"{"title":"p","price":"1e3"}"#).await;
    assert_eq!(
        (status, field_errors(&body)),
        (StatusCode::BAD_REQUEST, vec![("price".to_owned(), "Price must be a number".to_owned())])
    );
    app.stop().await;
}

/// Finding: `urn:uuid:…`, braces and 32 bare hex digits were accepted in paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_canonical_uuid_spelling_names_a_resource() {
    let app = spawn_app(Backend::Embedded).await;
    let seller = app.user().await;
    let (status, ticket) = seller.post("/api/tickets", json!({"title": "Concert", "price": 10})).await;
    assert_eq!(status, StatusCode::CREATED);
    let id: uuid::Uuid = ticket["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(seller.get(&format!("/api/tickets/{id}")).await.0, StatusCode::OK);
    for spelling in [
        id.urn().to_string(),
        id.braced().to_string(),
        id.simple().to_string(),
        id.hyphenated().to_string().to_uppercase(),
    ] {
        let (status, _) = seller.get(&format!("/api/tickets/{spelling}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{spelling}");
        let page = seller.client.get(seller.url(&format!("/tickets/{spelling}"))).send().await.unwrap();
        assert_eq!(page.status(), StatusCode::NOT_FOUND, "page for {spelling}");
    }
    app.stop().await;
}

async fn sign_in_from(app: &apptest::TestApp, email: &str, forwarded: Option<&str>) -> StatusCode {
    let mut request =
        app.client().post(app.url("/api/users/signin")).json(&json!({"email": email, "password": "wrong-password"}));
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    request.send().await.expect("request sent").status()
}

/// Finding: 30 sign-ins, each with `X-Forwarded-For: 198.51.100.$i`, were 30×400, never 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_forwarded_for_does_not_dodge_the_per_client_limit() {
    let app = apptest::spawn_app_with(Backend::Embedded, |args| {
        args.auth.signin_failures_per_client = 20;
    })
    .await;
    let mut statuses = Vec::new();
    for i in 1..=30 {
        statuses.push(sign_in_from(&app, &format!("victim{i}@example.com"), Some(&format!("198.51.100.{i}"))).await);
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::BAD_REQUEST).count(), 20, "{statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    // A forged signed address is ignored just the same.
    let response = app
        .client()
        .post(app.url("/api/users/signin"))
        .header(httpkit::client_addr::SIGNED_HEADER, "198.51.100.99;1700000000;00ff")
        .json(&json!({"email": "x@example.com", "password": "wrong-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    app.stop().await;
}

/// With the proxy listed in TRUSTED_PROXIES, each client behind it has a budget of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_behind_a_trusted_proxy_are_told_apart() {
    let app = apptest::spawn_app_with(Backend::Embedded, |args| {
        args.auth.signin_failures_per_client = 2;
        args.settings.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    for _ in 0..2 {
        assert_eq!(sign_in_from(&app, "a@example.com", Some("198.51.100.1")).await, StatusCode::BAD_REQUEST);
    }
    assert_eq!(sign_in_from(&app, "a@example.com", Some("198.51.100.1")).await, StatusCode::TOO_MANY_REQUESTS);
    // The client's own prefix to the header does not help: the proxy's hop is the rightmost.
    assert_eq!(
        sign_in_from(&app, "a@example.com", Some("203.0.113.5, 198.51.100.1")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(sign_in_from(&app, "a@example.com", Some("198.51.100.2")).await, StatusCode::BAD_REQUEST);
    app.stop().await;
}

/// Finding: API answers lacked `nosniff`, and signed-in answers `Cache-Control: no-store`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_nosniff_and_personal_ones_are_not_stored() {
    let app = spawn_app(Backend::Embedded).await;
    let user = app.user().await;
    let anonymous = reqwest::Client::new();
    for path in ["/api/tickets", "/api/nowhere", "/", "/nowhere", "/healthz", "/readyz", "/api/docs/openapi.json"] {
        let response = anonymous.get(app.url(path)).send().await.unwrap();
        assert_eq!(
            response.headers().get("x-content-type-options").map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{path}"
        );
    }
    for path in ["/api/orders", "/api/users/currentuser", "/api/tickets", "/api/orders/not-an-id"] {
        let response = user.client.get(user.url(path)).send().await.unwrap();
        let headers = response.headers();
        assert_eq!(headers.get("x-content-type-options").map(|v| v.to_str().unwrap()), Some("nosniff"), "{path}");
        assert_eq!(headers.get("cache-control").map(|v| v.to_str().unwrap()), Some("no-store"), "{path}");
    }
    // Bearer requests too, and the answer that hands out a session.
    let response = anonymous
        .post(app.url("/api/users/signup"))
        .json(&json!({"email": format!("{}@example.com", uuid::Uuid::new_v4().simple()), "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["cache-control"], "no-store");
    let token = apptest::session_token(&response);
    let response = anonymous.get(app.url("/api/orders")).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    app.stop().await;
}

/// Findings: `{"title":"\u0000"}` was listed; NFC and NFD spellings of one email made two
/// accounts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_titles_and_second_spellings_of_an_email_are_refused() {
    let app = spawn_app(Backend::Embedded).await;
    let seller = app.user().await;
    for title in ["\u{0}", "\u{1b}[2J", "bell\u{7}", "gpj\u{202e}exe.pdf"] {
        let (status, body) = seller.post("/api/tickets", json!({"title": title, "price": 5})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{title:?}: {body}");
    }
    let (status, body) = seller.post("/api/tickets", json!({"title": "\u{200b}\u{feff}", "price": 5})).await;
    assert_eq!(
        (status, field_errors(&body)),
        (StatusCode::BAD_REQUEST, vec![("title".to_owned(), "Title is required".to_owned())])
    );

    let local = uuid::Uuid::new_v4().simple().to_string();
    let nfc = format!("jos\u{e9}{local}@example.com");
    let nfd = format!("JOSE\u{301}{local}@example.com");
    let first = app.sign_up(&nfc, "correct horse battery").await;
    let (status, body) = into_parts(
        reqwest::Client::new()
            .post(app.url("/api/users/signup"))
            .json(&json!({"email": nfd, "password": "correct horse battery"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, field_errors(&body)),
        (StatusCode::BAD_REQUEST, vec![("email".to_owned(), "Email in use".to_owned())])
    );
    // And the other spelling signs in to the same account.
    let (status, body) = into_parts(
        reqwest::Client::new()
            .post(app.url("/api/users/signin"))
            .json(&json!({"email": nfd, "password": "correct horse battery"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["id"].as_str()), (StatusCode::OK, Some(first.id.as_str())));
    app.stop().await;
}

/// Reads until the server closes the connection; what it said, or `None` if it is still open
/// at the deadline.
async fn until_closed(socket: &mut tokio::net::TcpStream, deadline: std::time::Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    match tokio::time::timeout(deadline, socket.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

/// Finding: 300 half-sent requests were never dropped and stopped all service; a large
/// `Content-Length` waited for the body instead of answering 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_normal_ones_still_served() {
    use tokio::io::AsyncWriteExt;
    let app = apptest::spawn_app_with(Backend::Embedded, |args| {
        args.settings.http_header_read_timeout_seconds = 1;
        args.settings.http_body_read_timeout_seconds = 1;
        args.settings.http_max_connections = 40;
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let started = std::time::Instant::now();
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        socket.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(socket);
    }
    // A normal client is still served (after the slow ones holding the connection slots are
    // cut off), well within its own time-out.
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(15)).build().unwrap();
    let response = client.get(app.url("/api/tickets")).send().await.expect("served despite 100 slow clients");
    assert_eq!(response.status(), StatusCode::OK);
    let served_after = started.elapsed();
    for socket in &mut slow {
        assert!(until_closed(socket, std::time::Duration::from_secs(15)).await.is_some(), "a slow client was closed");
    }
    eprintln!("normal client served after {served_after:?}; 100 slow clients closed after {:?}", started.elapsed());

    // A body that never comes: cut off too.
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    socket
        .write_all(b"POST /api/users/signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"em")
        .await
        .unwrap();
    assert!(until_closed(&mut socket, std::time::Duration::from_secs(15)).await.is_some(), "a stalled body is cut off");

    // A declared body above the cap is refused before any of it is sent.
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    socket
        .write_all(b"POST /api/users/signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n")
        .await
        .unwrap();
    let answer = until_closed(&mut socket, std::time::Duration::from_secs(15)).await.expect("answered and closed");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    app.stop().await;
}

/// Finding: a planted `csrf` cookie with the same value in the `_csrf` field, from another
/// origin, listed a ticket as the victim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_csrf_cookie_does_not_let_another_site_post_forms() {
    let app = spawn_app(Backend::Embedded).await;
    let victim = app.user().await;
    let (status, _) = victim.get("/api/users/currentuser").await;
    assert_eq!(status, StatusCode::OK);
    let token = victim.token.clone();
    let planted = "a".repeat(64);
    let forge = |origin: Option<&'static str>| {
        let mut request = reqwest::Client::new()
            .post(app.url("/tickets/new"))
            .header("cookie", format!("session={token}; csrf={planted}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("_csrf={planted}&title=Planted&price=2"));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.send()
    };
    for origin in [Some("http://127.0.0.1:1"), None] {
        let response = forge(origin).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "origin {origin:?}");
    }
    // Same origin but a cookie the attacker planted: still refused (the field is bound to the
    // session with the server key).
    let own_origin: &'static str = Box::leak(app.base.clone().into_boxed_str());
    assert_eq!(forge(Some(own_origin)).await.unwrap().status(), StatusCode::FORBIDDEN);
    let (_, mine) = victim.get("/api/tickets").await;
    assert!(mine.as_array().unwrap().iter().all(|t| t["title"] != "Planted"), "{mine}");
    app.stop().await;
}
