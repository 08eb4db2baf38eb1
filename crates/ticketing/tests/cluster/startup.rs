//! Start-up in company and start-up without the bus (issue 8, items 4 and 6): any number of
//! instances may start at once on an empty database, and a process started while NATS is down
//! keeps running and serves once NATS is there.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::nats::NatsCluster;
use crate::postgres::TestDatabase;
use crate::scale_out::common_env;
use crate::services::{Api, Instance, Launch, Svc, probe_ready, ticketing_bin, wait_ready};
use crate::workload::sign_up;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_instances_started_at_once_on_an_empty_database_all_become_ready() {
    let temp = testkit::TempDir::new();
    let mut nats = NatsCluster::start(1, temp.path());
    nats.wait_until_ready(Duration::from_secs(30)).await;
    let db = TestDatabase::create().await;
    let launch = Launch::new(ticketing_bin(), temp.path(), common_env(&db.url, 1), &nats);
    // Five processes of the same service race for the same schema's migrations.
    let mut instances: Vec<Instance> = (1..=5).map(|n| launch.start(&format!("orders-{n}"), &[Svc::Orders])).collect();
    wait_ready(&mut instances, Duration::from_secs(90)).await;

    // Migrations alone (the Kubernetes Job), on the database the instances migrated: a no-op.
    let migrate = std::process::Command::new(ticketing_bin())
        .arg("migrate")
        .env_clear()
        .envs(common_env(&db.url, 1))
        .output()
        .expect("ticketing migrate runs");
    assert!(
        migrate.status.success(),
        "ticketing migrate failed ({}):\n{}{}",
        migrate.status,
        String::from_utf8_lossy(&migrate.stdout),
        String::from_utf8_lossy(&migrate.stderr)
    );
    for instance in &mut instances {
        instance.check_running();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_started_while_nats_is_down_serve_once_it_is_up() {
    let temp = testkit::TempDir::new();
    let mut nats = NatsCluster::start(3, temp.path());
    nats.wait_until_ready(Duration::from_secs(30)).await;
    let db = TestDatabase::create().await;
    let launch = Launch::new(ticketing_bin(), temp.path(), common_env(&db.url, 3), &nats);
    // The servers are gone before any service connects; their ports refuse connections.
    for node in ["nats-1", "nats-2", "nats-3"] {
        nats.kill(node);
    }

    let mut instances: Vec<Instance> =
        [Svc::Auth, Svc::Tickets, Svc::Orders].iter().map(|svc| launch.start(svc.name(), &[*svc])).collect();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Every process answers /healthz without NATS, and auth (which does not need the bus) is
    // ready.
    loop {
        let mut waiting = Vec::new();
        for instance in &mut instances {
            instance.check_running();
            let healthy = client
                .get(instance.info.url("/healthz"))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|response| response.status() == StatusCode::OK);
            if !healthy {
                waiting.push(format!("{} /healthz", instance.info.label));
            }
        }
        if probe_ready(&client, &instances[0].info).await.is_none() {
            waiting.push("auth /readyz".to_owned());
        }
        if waiting.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "with NATS down, still waiting for {waiting:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for instance in &mut instances {
        instance.check_running();
    }

    for node in ["nats-1", "nats-2", "nats-3"] {
        nats.restart(node);
    }
    nats.wait_until_ready(Duration::from_secs(30)).await;
    wait_ready(&mut instances, Duration::from_secs(60)).await;

    // They serve, events included: a listed ticket becomes orderable.
    let api = Api::new(instances.iter().map(|instance| instance.info.clone()).collect());
    let seller = sign_up(&api, "seller").await;
    let buyer = sign_up(&api, "buyer").await;
    let listed = api
        .call(
            Method::POST,
            "/api/tickets",
            Some(&seller.token),
            Some(&json!({ "title": "After the outage", "price": 20 })),
        )
        .await
        .expect("tickets answers");
    assert_eq!(listed.status, StatusCode::CREATED, "{}", listed.body);
    let ticket = listed.body["id"].as_str().expect("ticket id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for instance in &mut instances {
            instance.check_running();
        }
        let reply = api
            .call(Method::POST, "/api/orders", Some(&buyer.token), Some(&json!({ "ticketId": ticket })))
            .await
            .expect("orders answers");
        if reply.status == StatusCode::CREATED {
            break;
        }
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
        assert!(Instant::now() < deadline, "the ticket never reached the orders service");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
