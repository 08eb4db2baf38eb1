//! What every service shares: the envelope for unknown routes, health endpoints.

use reqwest::StatusCode;
use serde_json::json;
use testkit::Backend;

use crate::helpers::{into_parts, spawn_app};
use crate::on_both_backends;

on_both_backends!(unknown_routes_and_methods_get_the_envelope, health_and_readiness_answer);

async fn unknown_routes_and_methods_get_the_envelope(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = app.client();
    for path in ["/api/nothing", "/api/users/nothing", "/api"] {
        let response = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(into_parts(response).await, (StatusCode::NOT_FOUND, json!({"errors": [{"message": "Not Found"}]})), "{path}");
    }
    let response = client.delete(app.url("/api/users/signup")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(into_parts(response).await.1, json!({"errors": [{"message": "Method not allowed"}]}));
    app.stop().await;
}

async fn health_and_readiness_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    let client = app.client();
    let response = client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().contains_key("x-request-id"));
    app.stop().await;
}
