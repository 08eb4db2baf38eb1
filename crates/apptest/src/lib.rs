//! `spawn_app`: the whole marketplace on port 0 with its own storage and bus namespace, and
//! the users that drive it through its HTTP API.
//!
//! A crate of its own, rather than a file of ticketing's tests, so that ticketing's tests and
//! web's (which check the pages against the real API) share it as an ordinary dependency.
//!
//! Reservation windows: a test that needs one to end spawns the app [`on_manual_clock`] and
//! ends it with [`TestApp::end_window`], instead of setting a short window and waiting for it.

use std::time::Duration;

use platform::clock::{Clock, ManualClock};
use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{Backend, TempDir};
pub use testkit::{field_errors, messages};
use ticketing::{Running, ServeArgs};

pub struct TestApp {
    pub base: String,
    pub args: ServeArgs,
    running: Option<Running>,
    _data_dir: TempDir,
}

/// Settings for a test marketplace: port 0, its own data dir, database, stream, prefix.
pub async fn test_args(backend: Backend, data_dir: &TempDir) -> ServeArgs {
    let mut args: ServeArgs = testkit::defaults();
    let settings = &mut args.settings;
    settings.addr = "127.0.0.1:0".parse().expect("valid address");
    settings.data_dir = data_dir.path().to_owned();
    settings.jwt_key = Some("test-session-key-that-is-at-least-32-bytes".into());
    settings.jwt_key_file = None;
    match backend {
        Backend::Embedded => {
            settings.database_url = None;
            settings.nats_url = None;
        }
        Backend::Distributed => {
            settings.database_url = Some(testkit::fresh_postgres_url().await);
            settings.nats_url = Some(testkit::nats_url());
            settings.nats_stream = testkit::unique_name("TICKETING");
            settings.subject_prefix = testkit::unique_name("ticketing");
        }
    }
    // Tests sign up many users from one address; the limits have tests of their own.
    args.auth.signups_per_client = 0;
    args.auth.signin_failures_per_client = 0;
    args.auth.signin_failures_per_email_and_client = Some(0);
    args.tickets.ticket_creations_per_user_per_hour = 0;
    args
}

/// Has the marketplace measure reservation windows on a clock of the test's (see
/// [`platform::clock`]): pass it to [`spawn_app_with`], then move it with [`TestApp::clock`] or
/// [`TestApp::end_window`].
pub fn on_manual_clock(args: &mut ServeArgs) {
    args.clock = ManualClock::starting_now().into();
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut ServeArgs)) -> TestApp {
    testkit_logs();
    let data_dir = TempDir::new();
    let mut args = test_args(backend, &data_dir).await;
    configure(&mut args);
    let running = ticketing::start(args.clone()).await.expect("the marketplace starts");
    TestApp { base: format!("http://{}", running.addr), args, running: Some(running), _data_dir: data_dir }
}

fn testkit_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        httpkit::telemetry::init(httpkit::settings::LogFormat::Human);
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `/metrics` on the admin port (the app must have been started with `METRICS_ADDR`).
    pub fn metrics_url(&self) -> String {
        let running = self.running.as_ref().expect("the marketplace runs");
        format!("http://{}/metrics", running.metrics_addr.expect("METRICS_ADDR was set"))
    }

    /// A browser-like client: keeps cookies.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder().cookie_store(true).timeout(Duration::from_secs(30)).build().expect("client builds")
    }

    /// The clock the marketplace measures reservation windows on; it must have been spawned
    /// [`on_manual_clock`].
    pub fn clock(&self) -> ManualClock {
        match &self.args.clock {
            Clock::Manual(clock) => clock.clone(),
            Clock::System => panic!("the marketplace runs on the system clock: spawn it with apptest::on_manual_clock"),
        }
    }

    /// Moves the marketplace's clock just past `order`'s `expiresAt`: its reservation window has
    /// ended, for the expiration timers (due at `expiresAt`) and for payments (refused after it).
    pub fn end_window(&self, order: &Value) {
        self.clock().advance_to(expires_at_millis(order) + 1);
    }

    /// Stops the marketplace and starts it again on the same storage and bus.
    pub async fn restart(&mut self) {
        self.halt().await;
        self.resume().await;
    }

    /// Stops the marketplace, keeping its storage for [`TestApp::resume`].
    pub async fn halt(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("clean stop");
        }
    }

    /// Starts a halted marketplace again on the same port, storage and bus.
    pub async fn resume(&mut self) {
        let mut args = self.args.clone();
        // Same port, so clients keep talking to "the same" marketplace.
        args.settings.addr = self.base.trim_start_matches("http://").parse().expect("valid address");
        let running = ticketing::start(args).await.expect("the marketplace restarts");
        self.running = Some(running);
    }

    pub async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop().await.expect("clean stop");
        }
    }

    /// Signs up a fresh user and returns a client holding their session.
    pub async fn user(&self) -> User {
        Self::user_at(&self.base).await
    }

    /// A fresh signed-up user of the marketplace at `base`.
    pub async fn user_at(base: &str) -> User {
        let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
        sign_up_at(base, &email, "correct horse battery").await
    }

    pub async fn sign_up(&self, email: &str, password: &str) -> User {
        sign_up_at(&self.base, email, password).await
    }
}

/// An order's `expiresAt`, in milliseconds since the epoch.
pub fn expires_at_millis(order: &Value) -> i64 {
    let expires_at = order["expiresAt"].as_str().unwrap_or_else(|| panic!("no expiresAt in {order}"));
    let expires_at = time::OffsetDateTime::parse(expires_at, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|err| panic!("expiresAt {expires_at} is not RFC 3339: {err}"));
    platform::db::millis(expires_at)
}

/// Signs up a fresh user on the marketplace at `base`.
pub async fn new_user_at(base: &str) -> User {
    sign_up_at(base, &format!("{}@example.com", uuid::Uuid::new_v4().simple()), "correct horse battery").await
}

async fn sign_up_at(base: &str, email: &str, password: &str) -> User {
    let client =
        reqwest::Client::builder().cookie_store(true).timeout(Duration::from_secs(30)).build().expect("client builds");
    let response = client
        .post(format!("{base}/api/users/signup"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), StatusCode::CREATED, "sign-up of {email}");
    let token = session_token(&response);
    let body: Value = response.json().await.expect("JSON body");
    User {
        client,
        id: body["id"].as_str().expect("id").to_owned(),
        email: body["email"].as_str().expect("email").to_owned(),
        token,
        base: base.to_owned(),
    }
}

/// A signed-up user: a client holding their session cookie, and who they are.
pub struct User {
    pub client: reqwest::Client,
    pub id: String,
    pub email: String,
    /// The session token their sign-up set in `client`'s cookie: a copy, for bearer requests
    /// or a cookie sent by another client.
    pub token: String,
    base: String,
}

impl User {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        into_parts(self.client.get(self.url(path)).send().await.expect("request sent")).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        into_parts(self.client.post(self.url(path)).json(&body).send().await.expect("request sent")).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        into_parts(self.client.put(self.url(path)).json(&body).send().await.expect("request sent")).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        into_parts(self.client.delete(self.url(path)).send().await.expect("request sent")).await
    }
}

/// The `session` token a sign-up or sign-in answer sets.
pub fn session_token(response: &reqwest::Response) -> String {
    let cookie = response.headers().get(reqwest::header::SET_COOKIE).expect("a session cookie").to_str().unwrap();
    cookie.trim_start_matches("session=").split(';').next().unwrap().to_owned()
}

/// A fresh session token for `email` (password as the helpers sign up with).
pub async fn sign_in_token(app: &TestApp, email: &str) -> String {
    let response = reqwest::Client::new()
        .post(app.url("/api/users/signin"))
        .json(&json!({"email": email, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    session_token(&response)
}

/// Status and JSON body (Null for an empty body).
pub async fn into_parts(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = response.bytes().await.expect("body read");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("non-JSON body: {}", String::from_utf8_lossy(&bytes)))
    };
    (status, body)
}
