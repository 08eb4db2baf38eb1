//! Test helpers shared by every crate's integration tests.
//!
//! Tests run against real servers: PostgreSQL from `TEST_DATABASE_URL` and a NATS server
//! with JetStream from `TEST_NATS_URL` (`scripts/test` starts both and sets them). A test
//! that needs one and finds it unset fails with a message saying how to run the suite;
//! it never skips silently. Every test gets its own database and its own stream and
//! subject prefix, so tests run in parallel without seeing each other.
//!
//! Settings are built in code ([`defaults`], [`settings`]), never read from the shell's
//! environment; a consumer is driven directly with [`ConsumerHarness`].

mod consumer;
mod settings;

use std::time::{Duration, Instant};

pub use consumer::{ConsumerHarness, republished};
pub use settings::{command_without_env, defaults, settings};

use sqlx::Connection;

/// Storage and bus a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite files and the embedded bus in a temporary directory.
    Embedded,
    /// A fresh PostgreSQL database and a NATS JetStream stream of its own.
    Distributed,
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the test suite with scripts/test, which starts PostgreSQL and NATS and sets it")
    })
}

/// The NATS server the tests use.
pub fn nats_url() -> String {
    required_env("TEST_NATS_URL")
}

/// A unique name for this test's stream, subjects, consumer groups.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Creates an empty database for one test and returns its URL.
pub async fn fresh_postgres_url() -> String {
    let admin_url = required_env("TEST_DATABASE_URL");
    let name = unique_name("ticketing_test");
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.expect("cannot connect to TEST_DATABASE_URL");
    sqlx::raw_sql(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("cannot create test database");
    let _ = admin.close().await;
    match admin_url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("TEST_DATABASE_URL must name a database"),
    }
}

/// A temporary directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let path = std::env::temp_dir().join(unique_name("ticketing"));
        std::fs::create_dir_all(&path).expect("cannot create temp dir");
        Self(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
/// Tests wait with this, never with a fixed sleep.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP forwarder in front of a real server, that a test can cut and restore to simulate
/// an outage of a database or a bus without touching the shared server.
pub struct TcpProxy {
    pub addr: std::net::SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Forwards a fresh loopback port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (up, watch) = tokio::sync::watch::channel(true);
        let upstream = upstream.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*watch.borrow() {
                    continue; // dropped: the connection is refused in effect
                }
                let upstream = upstream.clone();
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up, task }
    }

    /// Drops every connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `host:port` of a URL such as `postgres://user@host:port/db`.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.split_once('@').map_or(rest, |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

/// Runs each named `async fn(Backend)` test body once per backend: a `embedded` and a
/// `distributed` test in a module named after the function.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn embedded() {
                    super::$name($crate::Backend::Embedded).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn distributed() {
                    super::$name($crate::Backend::Distributed).await
                }
            }
        )*
    };
}

/// The messages of an error envelope (`{"errors": [{"message": ...}]}`).
pub fn messages(body: &serde_json::Value) -> Vec<String> {
    envelope(body).map(|e| e["message"].as_str().expect("message").to_owned()).collect()
}

/// The `(field, message)` pairs of an error envelope; `""` for an error without a field.
pub fn field_errors(body: &serde_json::Value) -> Vec<(String, String)> {
    envelope(body)
        .map(|e| (e["field"].as_str().unwrap_or("").to_owned(), e["message"].as_str().expect("message").to_owned()))
        .collect()
}

fn envelope(body: &serde_json::Value) -> impl Iterator<Item = &serde_json::Value> {
    body["errors"].as_array().unwrap_or_else(|| panic!("not an error envelope: {body}")).iter()
}
