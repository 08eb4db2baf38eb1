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
        assert_eq!(
            into_parts(response).await,
            (StatusCode::NOT_FOUND, json!({"errors": [{"message": "Not Found"}]})),
            "{path}"
        );
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

on_both_backends!(openapi_spec_describes_the_api);

async fn openapi_spec_describes_the_api(backend: Backend) {
    let app = spawn_app(backend).await;
    let response = app.client().get(app.url("/api/docs/openapi.json")).send().await.unwrap();
    let (status, spec) = into_parts(response).await;
    assert_eq!(status, StatusCode::OK);
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let paths = spec["paths"].as_object().expect("paths");
    for path in ["/api/users/signup", "/api/users/signin", "/api/users/signout", "/api/users/currentuser"] {
        assert!(paths.contains_key(path), "{path} missing from the spec");
    }
    // Every documented operation is routed: none answers "unknown route".
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            let url = app.url(&path.replace("{id}", &uuid::Uuid::new_v4().to_string()));
            let request = app.client().request(method.to_uppercase().parse().unwrap(), url);
            let status = request.send().await.unwrap().status();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            if !path.contains("{id}") {
                assert_ne!(status, StatusCode::NOT_FOUND, "{method} {path}");
            }
        }
    }
    app.stop().await;
}
