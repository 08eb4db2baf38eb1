//! The payments HTTP API.

pub mod payments;
