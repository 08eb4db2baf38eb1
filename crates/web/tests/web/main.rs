//! Tests of the web pages: the router alone, the web service alone against a stand-in API,
//! every page against the whole marketplace, and end to end in a real Chromium.

// The marketplace's own harness (`spawn_app`), shared with the API tests.
#[allow(dead_code)]
#[path = "../../../ticketing/tests/api/helpers.rs"]
mod helpers;

mod browser;
mod fake_api;
mod pages;
mod router;
mod support;
