//! What every ticketing service runs on: storage, the bus, background loops, sessions and the
//! HTTP layer. The types that cross a process boundary (API bodies, the error envelope, event
//! payloads, money) are the `contract` crate's; this crate runs them.
//!
//! - [`error`]: errors into the contract's error envelope, and the extractors that speak it;
//! - [`session`]: JWT sessions in a cookie or bearer header;
//! - [`settings`]: shared settings from flags and environment;
//! - [`db`]: one portable-SQL storage path for PostgreSQL and SQLite;
//! - [`bus`]: the durable event bus (NATS JetStream or embedded);
//! - [`envelope`]: a contract event payload inside the bus's envelope;
//! - [`outbox`] and [`consumer`]: exactly-once effects over an at-least-once bus;
//! - [`openapi`]: what the API description says alike for every service;
//! - [`revocation`]: the revoked-session list every authenticating service keeps;
//! - [`worker`]: the one background loop (relay, timers, reconciler, retention);
//! - [`clock`]: the wall clock reservation windows are measured on, which tests move by hand;
//! - [`retention`]: deleting what only grows;
//! - [`http`], [`telemetry`], [`metrics`]: the HTTP surface, logs and metrics every service
//!   shares.

pub mod bus;
pub mod client_addr;
pub mod clock;
pub mod consumer;
pub mod db;
pub mod envelope;
pub mod error;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod outbox;
pub mod retention;
pub mod revocation;
pub mod service;
pub mod session;
pub mod settings;
pub mod telemetry;
pub mod worker;
