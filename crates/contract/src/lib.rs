//! The wire contract: what crosses a process boundary, and nothing that runs.
//!
//! Every service and the pages speak these types, so the server that writes a body and the
//! client that reads it cannot drift apart: a shape change is a compile error on both sides.
//! This crate has no storage, no bus and no HTTP server (no sqlx, axum, tokio or async-nats);
//! what the services run lives in `platform`.
//!
//! - [`api`]: the public HTTP API's request and response bodies, with their OpenAPI schemas;
//! - [`error`]: the error envelope every failed request answers with;
//! - [`events`]: the event payloads the services publish and consume;
//! - [`money`]: prices on the wire (major units) and in storage and events (minor units);
//! - [`text`]: what text a person may type into a title or an email.

pub mod api;
pub mod error;
pub mod events;
pub mod money;
pub mod text;
