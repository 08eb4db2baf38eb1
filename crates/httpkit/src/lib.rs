//! What every ticketing HTTP server shares: the data services (through `platform`) and the web
//! pages (directly). Nothing here keeps data or talks to the bus, so a server without a
//! database links neither a database driver nor a bus client: what a session check needs from
//! stored data comes through [`session::RevocationCheck`], which the runtime implements, and
//! the conversion of database errors into [`error::ApiError`] is behind the `sqlx` feature.
//!
//! - [`http`]: serving until shutdown with per-process limits, request ids and logs, `/healthz`
//!   and `/readyz`, the layers of a service's API router, and [`http::Service`];
//! - [`error`]: errors into the contract's error envelope, and the extractors that speak it;
//! - [`session`]: JWT sessions in a cookie or bearer header;
//! - [`client_addr`]: who a request comes from, behind trusted proxies or the web tier;
//! - [`openapi`]: what the API description says alike for every service;
//! - [`settings`]: the process's settings from flags and environment, one struct for every
//!   service it runs (the runtime's too: they are plain values, linking nothing);
//! - [`telemetry`], [`metrics`]: logs and trace ids, and the process's metrics registry.

pub mod client_addr;
pub mod error;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod session;
pub mod settings;
pub mod telemetry;
