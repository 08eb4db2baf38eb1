//! The production topology on loopback, as an operator would run it (issue 8): a 3-node NATS
//! JetStream cluster started from the shipped configuration, one PostgreSQL database, and
//! several `ticketing serve <service>` processes per service, each a real process of the
//! binary cargo built, so that `kill -9` means what it means in production.
//!
//! Needs `NATS_SERVER_BIN` (nats-server 2.12) and `TEST_DATABASE_URL`, which `scripts/test`
//! provides; without them the tests fail saying so.
//!
//! - `scale_out`: workload, kills of the stream leader and of instances, checks and report.
//! - `startup`: five instances starting at once on an empty database; processes started
//!   while NATS is down.

mod nats;
mod postgres;
mod process;
mod scale_out;
mod services;
mod startup;
mod workload;
