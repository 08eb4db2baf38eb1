//! Tests of the web pages: the router alone, the web service alone against a stand-in API,
//! every page against the whole marketplace, and end to end in a real Chromium.

mod browser;
mod fake_api;
mod pages;
mod router;
mod support;
