//! What every service shares: the envelope for unknown routes, health endpoints.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use testkit::Backend;

use apptest::{into_parts, spawn_app};
use testkit::on_both_backends;

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
    for path in [
        "/api/users/signup",
        "/api/users/signin",
        "/api/users/signout",
        "/api/users/currentuser",
        "/api/tickets",
        "/api/tickets/{id}",
        "/api/orders",
        "/api/orders/{id}",
        "/api/payments",
    ] {
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

/// PostgreSQL and NATS go away and come back: readiness says so, requests fail with the
/// envelope (never a hang), events written meanwhile are not lost, and everything recovers
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marketplace_rides_out_database_and_bus_outages() {
    let db_url = testkit::fresh_postgres_url().await;
    let nats_url = testkit::nats_url();
    let db_proxy = testkit::TcpProxy::start(&testkit::host_port(&db_url)).await;
    let bus_proxy = testkit::TcpProxy::start(&testkit::host_port(&nats_url)).await;
    let proxied_db = db_url.replacen(&testkit::host_port(&db_url), &db_proxy.addr.to_string(), 1);
    let app = apptest::spawn_app_with(Backend::Distributed, |args| {
        args.settings.database_url = Some(proxied_db);
        args.settings.nats_url = Some(format!("nats://{}", bus_proxy.addr));
    })
    .await;
    let seller = app.user().await;
    let client = app.client();
    let ready = || async { client.get(app.url("/readyz")).send().await.unwrap().status() };
    assert_eq!(ready().await, StatusCode::OK);

    // Database down: not ready, and a request fails cleanly in the envelope.
    db_proxy.cut();
    testkit::eventually(Duration::from_secs(15), "readyz to fail without the database", || async {
        (ready().await == StatusCode::SERVICE_UNAVAILABLE).then_some(())
    })
    .await;
    let (status, body) = seller.post("/api/tickets", json!({"title": "Outage", "price": 10})).await;
    assert!(status.is_server_error(), "{status}");
    assert!(!apptest::messages(&body).is_empty());
    db_proxy.restore();
    testkit::eventually(Duration::from_secs(30), "readyz to recover with the database", || async {
        (ready().await == StatusCode::OK).then_some(())
    })
    .await;

    // Bus down: still ready, since writes still commit and their events wait in the outbox;
    // /readyz says the bus is unavailable.
    bus_proxy.cut();
    testkit::eventually(Duration::from_secs(15), "readyz to report the bus outage", || async {
        let response = client.get(app.url("/readyz")).send().await.unwrap();
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap();
        (body["checks"]["bus"] == "unavailable").then_some((status, body))
    })
    .await;
    let (status, body) = {
        let response = client.get(app.url("/readyz")).send().await.unwrap();
        (response.status(), response.json::<serde_json::Value>().await.unwrap())
    };
    assert_eq!(status, StatusCode::OK, "a bus outage leaves the API ready: {body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    let (status, ticket) =
        seller.post("/api/tickets", json!({"title": "Written during the outage", "price": 10})).await;
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    bus_proxy.restore();
    let buyer = app.user().await;
    let ticket_id = ticket["id"].as_str().unwrap().to_owned();
    testkit::eventually(Duration::from_secs(60), "the ticket's event to reach orders after the outage", || async {
        let (status, _) = buyer.post("/api/orders", json!({"ticketId": ticket_id})).await;
        (status == StatusCode::CREATED).then_some(())
    })
    .await;
    assert_eq!(ready().await, StatusCode::OK);
    app.stop().await;
}

/// A process started while its database and bus are down keeps running: `/healthz` answers,
/// `/readyz` says "starting" and every API route 503 in the envelope, until the database comes
/// back; then it serves, and reports the bus outage without going unready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_started_while_its_database_and_bus_are_down_serves_once_they_return() {
    let db_url = testkit::fresh_postgres_url().await;
    let nats_url = testkit::nats_url();
    let db_proxy = testkit::TcpProxy::start(&testkit::host_port(&db_url)).await;
    let bus_proxy = testkit::TcpProxy::start(&testkit::host_port(&nats_url)).await;
    db_proxy.cut();
    bus_proxy.cut();
    let data_dir = testkit::TempDir::new();
    let mut args = apptest::test_args(Backend::Distributed, &data_dir).await;
    args.settings.database_url = Some(db_url.replacen(&testkit::host_port(&db_url), &db_proxy.addr.to_string(), 1));
    args.settings.nats_url = Some(format!("nats://{}", bus_proxy.addr));
    args.services = vec![ticketing::ServiceName::Auth, ticketing::ServiceName::Tickets];
    // A port of our choosing, since start() returns only once the services are up.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    args.settings.addr = format!("127.0.0.1:{port}").parse().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let get = |path: &'static str| {
        let client = client.clone();
        let url = format!("{base}{path}");
        async move {
            let response = client.get(url).send().await.ok()?;
            let status = response.status();
            Some((status, response.json::<serde_json::Value>().await.unwrap_or_default()))
        }
    };
    // Start-up runs beside the checks (not spawned: it is not `Send`, and need not be).
    let while_starting = async {
        testkit::eventually(Duration::from_secs(15), "the process to answer /healthz", || async {
            let response = client.get(format!("{base}/healthz")).send().await.ok()?;
            (response.status() == StatusCode::OK).then_some(())
        })
        .await;
        assert_eq!(
            get("/readyz").await,
            Some((StatusCode::SERVICE_UNAVAILABLE, json!({"status": "starting"}))),
            "not ready while the database is down"
        );
        let (status, body) = get("/api/tickets").await.expect("an answer");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, json!({"errors": [{"message": "Service is starting, try again shortly"}]}));
        // The database returns, NATS not yet: the process starts and is ready, saying the bus
        // is out.
        db_proxy.restore();
    };
    let (running, ()) =
        tokio::join!(tokio::time::timeout(Duration::from_secs(45), ticketing::start(args)), while_starting);
    let running = running.expect("the services start once the database is back").expect("start-up succeeds");
    let (status, body) = get("/readyz").await.expect("an answer");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    assert_eq!(body["checks"]["bus"], "unavailable", "{body}");
    let seller = apptest::TestApp::user_at(&base).await;
    let (status, ticket) = seller.post("/api/tickets", json!({"title": "Before NATS", "price": 10})).await;
    assert_eq!(status, StatusCode::CREATED, "tickets takes writes while the bus is down: {ticket}");

    bus_proxy.restore();
    testkit::eventually(Duration::from_secs(30), "readyz to see the bus again", || async {
        let (_, body) = get("/readyz").await?;
        (body["checks"]["bus"] == "ok").then_some(())
    })
    .await;
    running.stop().await.unwrap();
}
