//! What every ticketing service that keeps data runs on: storage, the bus, background loops,
//! and how a service is composed from them. The HTTP layer they serve through (errors,
//! sessions, settings, logs, metrics) is the `httpkit` crate, which links no database and no
//! bus, so a server without data (the web pages) uses it alone. The types that cross a process
//! boundary (API bodies, the error envelope, event payloads, money) are the `contract` crate's.
//!
//! - [`db`]: one portable-SQL storage path for PostgreSQL and SQLite;
//! - [`bus`]: the durable event bus (NATS JetStream or embedded);
//! - [`envelope`]: a contract event payload inside the bus's envelope;
//! - [`outbox`] and [`consumer`]: exactly-once effects over an at-least-once bus;
//! - [`revocation`]: the revoked-session list every authenticating service keeps, which the
//!   HTTP layer's session extractors consult through `httpkit::session::RevocationCheck`;
//! - [`worker`]: the one background loop (relay, timers, reconciler, retention);
//! - [`clock`]: the wall clock reservation windows are measured on, which tests move by hand;
//! - [`retention`]: deleting what only grows;
//! - [`service`]: the context a service starts with, and its database, relay and readiness.

pub mod bus;
pub mod clock;
pub mod consumer;
pub mod db;
pub mod envelope;
pub mod outbox;
pub mod retention;
pub mod revocation;
pub mod service;
pub mod worker;
