//! Every auth case in the contract, through HTTP.

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, SET_COOKIE};
use serde_json::{Value, json};
use testkit::Backend;

use apptest::{field_errors, into_parts, messages, spawn_app, spawn_app_with};
use testkit::on_both_backends;

on_both_backends!(
    sign_up_creates_a_user_and_a_session,
    sign_up_rejects_bad_input_and_changes_nothing,
    sign_up_refuses_an_email_in_use_whatever_its_case,
    sign_in_works_and_fails_the_same_way_for_unknown_email_and_wrong_password,
    sign_out_clears_the_session,
    current_user_treats_bad_tokens_as_anonymous,
    bearer_tokens_work_like_the_cookie,
    failed_sign_ins_are_rate_limited,
    sign_ups_are_rate_limited_per_client,
    users_survive_a_restart,
);

async fn post(client: &reqwest::Client, url: String, body: Value) -> (StatusCode, Value, Option<String>) {
    let response = client.post(url).json(&body).send().await.expect("request sent");
    let cookie = response.headers().get(SET_COOKIE).map(|v| v.to_str().expect("ascii").to_owned());
    let (status, body) = into_parts(response).await;
    (status, body, cookie)
}

async fn sign_up_creates_a_user_and_a_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = app.client();
    let (status, body, cookie) =
        post(&client, app.url("/api/users/signup"), json!({"email": " Ann@Example.com ", "password": "password123"}))
            .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["email"], "ann@example.com");
    assert!(uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok());
    let cookie = cookie.expect("a session cookie");
    assert!(cookie.starts_with("session="), "{cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    assert!(!cookie.contains("Secure"), "plain-http loopback must not get a Secure cookie: {cookie}");

    let (status, me) = into_parts(client.get(app.url("/api/users/currentuser")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["currentUser"]["id"], body["id"]);
    assert_eq!(me["currentUser"]["email"], "ann@example.com");
    assert!(me["currentUser"]["iat"].is_i64());

    // Behind a TLS-terminating proxy the cookie is Secure.
    let response = app
        .client()
        .post(app.url("/api/users/signup"))
        .header("x-forwarded-proto", "https")
        .json(&json!({"email": "bob@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    let cookie = response.headers().get(SET_COOKIE).unwrap().to_str().unwrap().to_owned();
    assert!(cookie.contains("; Secure"), "{cookie}");
    app.stop().await;
}

async fn sign_up_rejects_bad_input_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = app.client();
    let url = || app.url("/api/users/signup");
    let cases = [
        (json!({"email": "not-an-email", "password": "password123"}), vec![("email", "Email must be valid")]),
        (
            json!({"email": "a@b.co", "password": "short"}),
            vec![("password", "Password must be between 8 and 128 characters")],
        ),
        (
            json!({"email": "a@b.co", "password": "x".repeat(129)}),
            vec![("password", "Password must be between 8 and 128 characters")],
        ),
        (
            json!({"email": 5, "password": ["password123"]}),
            vec![("email", "Email must be valid"), ("password", "Password must be between 8 and 128 characters")],
        ),
        (
            json!({}),
            vec![("email", "Email must be valid"), ("password", "Password must be between 8 and 128 characters")],
        ),
    ];
    for (body, expected) in cases {
        let (status, response, cookie) = post(&client, url(), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let expected: Vec<(String, String)> =
            expected.iter().map(|(f, m)| ((*f).to_owned(), (*m).to_owned())).collect();
        assert_eq!(field_errors(&response), expected, "{body}");
        assert!(cookie.is_none());
    }

    // Malformed JSON, wrong content type, wrong shape.
    let response =
        client.post(url()).header("content-type", "application/json").body("{\"email\":").send().await.unwrap();
    let (status, body) = into_parts(response).await;
    assert_eq!((status, messages(&body)), (StatusCode::BAD_REQUEST, vec!["Malformed JSON".to_owned()]));
    let response = client.post(url()).body("email=a@b.co").send().await.unwrap();
    assert_eq!(into_parts(response).await.0, StatusCode::BAD_REQUEST);
    let (status, body, _) = post(&client, url(), json!(["a@b.co", "password123"])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(messages(&body).len(), 1);

    // A body past the cap is refused with 413 in the envelope.
    // On a connection of its own: the server closes it rather than read the rest of the body,
    // and a pooled connection could be picked for the next request as it closes.
    let huge = json!({"email": "a@b.co", "password": "p".repeat(100_000)});
    let (status, body, _) = post(&app.client(), url(), huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(messages(&body), vec!["Request body is too large"]);

    // None of that created an account.
    let (status, body, _) =
        post(&client, app.url("/api/users/signin"), json!({"email": "a@b.co", "password": "password123"})).await;
    assert_eq!((status, messages(&body)), (StatusCode::BAD_REQUEST, vec!["Invalid credentials".to_owned()]));
    app.stop().await;
}

async fn sign_up_refuses_an_email_in_use_whatever_its_case(backend: Backend) {
    let app = spawn_app(backend).await;
    app.sign_up("carol@example.com", "password123").await;
    let (status, body, cookie) = post(
        &app.client(),
        app.url("/api/users/signup"),
        json!({"email": "  CAROL@example.COM", "password": "another-password"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(field_errors(&body), vec![("email".to_owned(), "Email in use".to_owned())]);
    assert!(cookie.is_none());
    // The first password still works; the second was not stored.
    let (status, _, _) = post(
        &app.client(),
        app.url("/api/users/signin"),
        json!({"email": "carol@example.com", "password": "password123"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}

async fn sign_in_works_and_fails_the_same_way_for_unknown_email_and_wrong_password(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.sign_up("dave@example.com", "password123").await;
    let client = app.client();
    let (status, body, cookie) =
        post(&client, app.url("/api/users/signin"), json!({"email": "DAVE@example.com ", "password": "password123"}))
            .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"id": user.id, "email": "dave@example.com"}));
    assert!(cookie.unwrap().starts_with("session="));

    let wrong =
        post(&client, app.url("/api/users/signin"), json!({"email": "dave@example.com", "password": "wrong-password"}))
            .await;
    let unknown =
        post(&client, app.url("/api/users/signin"), json!({"email": "nobody@example.com", "password": "password123"}))
            .await;
    assert_eq!(
        (wrong.0, &wrong.1),
        (StatusCode::BAD_REQUEST, &json!({"errors": [{"message": "Invalid credentials"}]}))
    );
    assert_eq!((unknown.0, &unknown.1), (wrong.0, &wrong.1));
    assert!(wrong.2.is_none() && unknown.2.is_none());

    let (status, body, _) = post(&client, app.url("/api/users/signin"), json!({"email": "bad", "password": ""})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        field_errors(&body),
        vec![
            ("email".to_owned(), "Email must be valid".to_owned()),
            ("password".to_owned(), "You must supply a password".to_owned())
        ]
    );
    app.stop().await;
}

async fn sign_out_clears_the_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.user().await;
    let (_, me) = user.get("/api/users/currentuser").await;
    assert_eq!(me["currentUser"]["email"], user.email.as_str());
    let response = user.client.post(user.url("/api/users/signout")).send().await.unwrap();
    let cookie = response.headers().get(SET_COOKIE).unwrap().to_str().unwrap().to_owned();
    assert!(cookie.starts_with("session=;") && cookie.contains("Max-Age=0"), "{cookie}");
    assert_eq!(into_parts(response).await, (StatusCode::OK, json!({})));
    let (status, me) = user.get("/api/users/currentuser").await;
    assert_eq!((status, me), (StatusCode::OK, json!({"currentUser": null})));
    app.stop().await;
}

async fn current_user_treats_bad_tokens_as_anonymous(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = app.client();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = json!({"id": uuid::Uuid::new_v4(), "email": "eve@example.com", "iat": now, "exp": now + 600});
    let b64 = |v: &Value| base64url(v.to_string().as_bytes());
    let unsigned = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims));
    let forged = format!("{}.{}.{}", b64(&json!({"alg": "HS256", "typ": "JWT"})), b64(&claims), base64url(b"forged"));
    for token in ["garbage", "a.b.c", unsigned.as_str(), forged.as_str(), ""] {
        for header in [("cookie", format!("session={token}")), ("authorization", format!("Bearer {token}"))] {
            let response =
                client.get(app.url("/api/users/currentuser")).header(header.0, &header.1).send().await.unwrap();
            assert_eq!(into_parts(response).await, (StatusCode::OK, json!({"currentUser": null})), "{header:?}");
        }
    }
    // An expired token, signed with the right key, is anonymous too.
    let expired = httpkit::session::SessionKeys::new(
        app.args.settings.jwt_key.as_ref().unwrap().as_bytes(),
        time::Duration::seconds(-60),
    )
    .issue(uuid::Uuid::new_v4(), "eve@example.com")
    .unwrap();
    let response = client
        .get(app.url("/api/users/currentuser"))
        .header(AUTHORIZATION, format!("Bearer {expired}"))
        .send()
        .await
        .unwrap();
    assert_eq!(into_parts(response).await, (StatusCode::OK, json!({"currentUser": null})));
    app.stop().await;
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn bearer_tokens_work_like_the_cookie(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.user().await;
    let cookie_client = reqwest::Client::new();
    let response = cookie_client
        .post(app.url("/api/users/signin"))
        .json(&json!({"email": user.email, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    let cookie = response.headers().get(SET_COOKIE).unwrap().to_str().unwrap().to_owned();
    let token = cookie.trim_start_matches("session=").split(';').next().unwrap().to_owned();
    let response =
        reqwest::Client::new().get(app.url("/api/users/currentuser")).bearer_auth(&token).send().await.unwrap();
    let (_, me) = into_parts(response).await;
    assert_eq!(me["currentUser"]["id"], user.id.as_str());
    app.stop().await;
}

async fn failed_sign_ins_are_rate_limited(backend: Backend) {
    let app = spawn_app_with(backend, |args| {
        args.auth.signin_failures_per_email_and_client = Some(3);
        args.auth.signin_failures_per_client = 5;
    })
    .await;
    let user = app.user().await;
    let client = app.client();
    let attempt = |email: &str, password: &str| {
        client.post(app.url("/api/users/signin")).json(&json!({"email": email, "password": password})).send()
    };
    for _ in 0..3 {
        assert_eq!(attempt(&user.email, "wrong-password").await.unwrap().status(), StatusCode::BAD_REQUEST);
    }
    // The email is locked for this client now, even with the right password.
    let response = attempt(&user.email, "correct horse battery").await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after > 0);
    assert_eq!(messages(&into_parts(response).await.1), vec!["Too many requests, try again later"]);

    // The client has 2 failures left across other emails, then it is locked out entirely.
    for _ in 0..2 {
        assert_eq!(attempt("other@example.com", "wrong-password").await.unwrap().status(), StatusCode::BAD_REQUEST);
    }
    assert_eq!(attempt("third@example.com", "wrong-password").await.unwrap().status(), StatusCode::TOO_MANY_REQUESTS);
    app.stop().await;
}

async fn sign_ups_are_rate_limited_per_client(backend: Backend) {
    let app = spawn_app_with(backend, |args| args.auth.signups_per_client = 2).await;
    app.user().await;
    app.user().await;
    let response = app
        .client()
        .post(app.url("/api/users/signup"))
        .json(&json!({"email": "late@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key("retry-after"));
    // Issue 10: X-Forwarded-For from a peer that is not a trusted proxy (loopback included)
    // does not make another client (see `security` for trusted proxies and the pages).
    let response = app
        .client()
        .post(app.url("/api/users/signup"))
        .header("x-forwarded-for", "203.0.113.7")
        .json(&json!({"email": "visitor@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    app.stop().await;
}

async fn users_survive_a_restart(backend: Backend) {
    let mut app = spawn_app(backend).await;
    let user = app.user().await;
    app.restart().await;
    let (status, body, _) = post(
        &app.client(),
        app.url("/api/users/signin"),
        json!({"email": user.email, "password": "correct horse battery"}),
    )
    .await;
    assert_eq!((status, body["id"].as_str()), (StatusCode::OK, Some(user.id.as_str())));
    // The session issued before the restart is still valid.
    let (_, me) = user.get("/api/users/currentuser").await;
    assert_eq!(me["currentUser"]["id"], user.id.as_str());
    app.stop().await;
}
