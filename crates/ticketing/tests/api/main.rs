//! Integration tests of the marketplace through its HTTP API, against real servers, on both
//! storage/bus combinations: SQLite + embedded bus, and PostgreSQL + NATS JetStream.

mod service_db;

mod auth;
mod expiration;
mod flow;
mod listing;
mod money;
mod observability;
mod orders;
mod payments;
mod platform;
mod security;
mod sessions;
mod tickets;
