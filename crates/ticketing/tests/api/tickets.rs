//! Every tickets case in the contract, through HTTP, including what the orders service sees.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::Backend;

use crate::orders::{order_ticket, wait_until_orderable};
use apptest::{TestApp, User, field_errors, into_parts, messages, spawn_app};
use testkit::on_both_backends;

on_both_backends!(
    listing_and_editing_require_a_session,
    listing_a_ticket_validates_every_field_and_changes_nothing,
    a_listed_ticket_can_be_read_and_is_for_sale,
    unknown_and_malformed_ids_are_not_found,
    only_the_owner_can_edit_and_each_edit_bumps_the_version,
    edits_reach_the_orders_service,
    a_reserved_ticket_is_off_the_list_and_locked_until_released,
);

/// How long events may take to travel between services in a test.
pub const EVENTUAL: Duration = Duration::from_secs(20);

/// Lists a ticket and returns its body.
pub async fn list_ticket(seller: &User, title: &str, price: Value) -> Value {
    let (status, body) = seller.post("/api/tickets", json!({"title": title, "price": price})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

pub fn id(body: &Value) -> String {
    body["id"].as_str().unwrap_or_else(|| panic!("no id in {body}")).to_owned()
}

/// The ids of the tickets for sale, as anybody sees them.
pub async fn listed(app: &TestApp) -> Vec<String> {
    let (status, body) = into_parts(app.client().get(app.url("/api/tickets")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    body.as_array().expect("an array").iter().map(id).collect()
}

/// Waits until the tickets service shows the ticket with this `version` and returns it.
pub async fn ticket_at_version(user: &User, ticket_id: &str, version: i64) -> Value {
    let path = format!("/api/tickets/{ticket_id}");
    testkit::eventually(EVENTUAL, &format!("ticket {ticket_id} at version {version}"), || async {
        let (status, body) = user.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (body["version"] == version).then_some(body)
    })
    .await
}

async fn listing_and_editing_require_a_session(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let ticket = list_ticket(&seller, "Concert", json!(10)).await;
    let anonymous = app.client();
    let not_authorized = json!({"errors": [{"message": "Not authorized"}]});

    let requests = [
        anonymous.post(app.url("/api/tickets")).json(&json!({"title": "Concert", "price": 10})),
        // Even invalid input gets 401 first.
        anonymous.post(app.url("/api/tickets")).json(&json!({})),
        anonymous.put(app.url(&format!("/api/tickets/{}", id(&ticket)))).json(&json!({"title": "Mine", "price": 1})),
        anonymous
            .post(app.url("/api/tickets"))
            .bearer_auth("not-a-token")
            .json(&json!({"title": "Concert", "price": 10})),
    ];
    for request in requests {
        assert_eq!(into_parts(request.send().await.unwrap()).await, (StatusCode::UNAUTHORIZED, not_authorized.clone()));
    }

    // Reading needs no session; nothing changed.
    let (status, body) =
        into_parts(anonymous.get(app.url(&format!("/api/tickets/{}", id(&ticket)))).send().await.unwrap()).await;
    assert_eq!((status, body), (StatusCode::OK, ticket.clone()));
    assert_eq!(listed(&app).await, vec![id(&ticket)]);
    app.stop().await;
}

async fn listing_a_ticket_validates_every_field_and_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let title_required = ("title", "Title is required");
    let title_too_long = ("title", "Title must be at most 200 characters");
    let not_a_number = ("price", "Price must be a number");
    let not_positive = ("price", "Price must be greater than 0");
    let cases = [
        (json!({}), vec![title_required, not_a_number]),
        (json!({"title": "", "price": 10}), vec![title_required]),
        (json!({"title": "   ", "price": 10}), vec![title_required]),
        (json!({"title": 42, "price": 10}), vec![title_required]),
        (json!({"title": ["Concert"], "price": 10}), vec![title_required]),
        (json!({"title": null, "price": 10}), vec![title_required]),
        (json!({"title": "x".repeat(201), "price": 10}), vec![title_too_long]),
        (json!({"title": "x".repeat(10_000), "price": 10}), vec![title_too_long]),
        (json!({"title": "Concert", "price": -10}), vec![not_positive]),
        (json!({"title": "Concert", "price": 0}), vec![not_positive]),
        (json!({"title": "Concert", "price": 0.001}), vec![("price", "Price must have at most 2 decimals")]),
        (json!({"title": "Concert", "price": 10.001}), vec![("price", "Price must have at most 2 decimals")]),
        (json!({"title": "Concert", "price": 1_000_000.01}), vec![("price", "Price must be at most 1000000")]),
        (json!({"title": "Concert", "price": 1e300}), vec![("price", "Price must be at most 1000000")]),
        (json!({"title": "Concert", "price": "ten"}), vec![not_a_number]),
        (
            json!({"title": "\u{0}", "price": 10}),
            vec![("title", "Title must not contain control or text-direction characters")],
        ),
        (json!({"title": "\u{200b}\u{200b}", "price": 10}), vec![title_required]),
        (json!({"title": "Concert", "price": null}), vec![not_a_number]),
        (json!({"title": "Concert", "price": {"amount": 10}}), vec![not_a_number]),
        (json!({"title": "", "price": -1}), vec![title_required, not_positive]),
    ];
    for (body, expected) in cases {
        let (status, response) = seller.post("/api/tickets", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let expected: Vec<(String, String)> =
            expected.iter().map(|(f, m)| ((*f).to_owned(), (*m).to_owned())).collect();
        assert_eq!(field_errors(&response), expected, "{body}");
    }

    // Malformed JSON, a body that is not an object, a body past the size cap.
    let client = &seller.client;
    let response = client
        .post(seller.url("/api/tickets"))
        .header("content-type", "application/json")
        .body("{\"title\":")
        .send()
        .await
        .unwrap();
    assert_eq!(
        into_parts(response).await,
        (StatusCode::BAD_REQUEST, json!({"errors": [{"message": "Malformed JSON"}]}))
    );
    let (status, body) = seller.post("/api/tickets", json!(["Concert", 10])).await;
    assert_eq!((status, messages(&body).len()), (StatusCode::BAD_REQUEST, 1));
    let (status, body) = seller.post("/api/tickets", json!({"title": "x".repeat(100_000), "price": 10})).await;
    assert_eq!(
        (status, messages(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, vec!["Request body is too large".to_owned()])
    );

    assert!(listed(&app).await.is_empty());

    // The limits themselves are allowed.
    let (status, body) = seller.post("/api/tickets", json!({"title": "é".repeat(200), "price": 1_000_000})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["price"].as_f64(), Some(1_000_000.0));
    let (status, body) = seller.post("/api/tickets", json!({"title": "Cheap", "price": 0.01})).await;
    assert_eq!((status, &body["price"]), (StatusCode::CREATED, &json!(0.01)));
    app.stop().await;
}

async fn a_listed_ticket_can_be_read_and_is_for_sale(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let first = list_ticket(&seller, "  Concert  ", json!(12.5)).await;
    let first_id = id(&first);
    assert!(uuid::Uuid::parse_str(&first_id).is_ok());
    assert_eq!(
        first,
        json!({"id": first_id, "title": "Concert", "price": 12.5, "userId": seller.id, "version": 0, "orderId": null})
    );

    let anybody = app.client();
    let (status, body) =
        into_parts(anybody.get(app.url(&format!("/api/tickets/{first_id}"))).send().await.unwrap()).await;
    assert_eq!((status, body), (StatusCode::OK, first.clone()));

    let second = list_ticket(&seller, "Opera", json!(20)).await;
    assert_eq!(second["price"].as_f64(), Some(20.0));
    assert_eq!(listed(&app).await, vec![id(&second), first_id.clone()], "newest first");

    // The orders service learns of it: the seller is told they cannot buy it, not that it is unknown.
    wait_until_orderable(&seller, &first_id).await;
    app.stop().await;
}

async fn unknown_and_malformed_ids_are_not_found(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = app.user().await;
    let not_found = json!({"errors": [{"message": "Not Found"}]});
    let unknown = format!("/api/tickets/{}", uuid::Uuid::new_v4());
    let valid = json!({"title": "Concert", "price": 10});
    for path in [unknown.as_str(), "/api/tickets/not-a-uuid", "/api/tickets/1"] {
        assert_eq!(user.get(path).await, (StatusCode::NOT_FOUND, not_found.clone()), "GET {path}");
        assert_eq!(user.put(path, valid.clone()).await, (StatusCode::NOT_FOUND, not_found.clone()), "PUT {path}");
    }
    // Input is checked before existence.
    let (status, body) = user.put(&unknown, json!({"title": "", "price": 10})).await;
    assert_eq!(
        (status, field_errors(&body)),
        (StatusCode::BAD_REQUEST, vec![("title".to_owned(), "Title is required".to_owned())])
    );
    app.stop().await;
}

async fn only_the_owner_can_edit_and_each_edit_bumps_the_version(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let other = app.user().await;
    let ticket = list_ticket(&seller, "Concert", json!(10)).await;
    let path = format!("/api/tickets/{}", id(&ticket));

    assert_eq!(
        other.put(&path, json!({"title": "Mine now", "price": 1})).await,
        (StatusCode::UNAUTHORIZED, json!({"errors": [{"message": "Not authorized"}]}))
    );
    let (status, body) = other.put(&path, json!({"title": "Mine now"})).await;
    assert_eq!(
        (status, field_errors(&body)),
        (StatusCode::BAD_REQUEST, vec![("price".to_owned(), "Price must be a number".to_owned())])
    );
    let (status, body) = seller.put(&path, json!({"title": "   ", "price": 10.555})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(field_errors(&body).len(), 2, "{body}");
    assert_eq!(seller.get(&path).await, (StatusCode::OK, ticket.clone()), "refused edits change nothing");

    let (status, edited) = seller.put(&path, json!({"title": " Concert, front row ", "price": 30.25})).await;
    assert_eq!(status, StatusCode::OK);
    let mut expected = ticket.clone();
    expected["title"] = json!("Concert, front row");
    expected["price"] = json!(30.25);
    expected["version"] = json!(1);
    assert_eq!(edited, expected);

    let (status, edited) = seller.put(&path, json!({"title": "Concert, front row", "price": 35})).await;
    assert_eq!((status, &edited["version"]), (StatusCode::OK, &json!(2)));
    assert_eq!(seller.get(&path).await, (StatusCode::OK, edited.clone()));
    app.stop().await;
}

async fn edits_reach_the_orders_service(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let buyer = app.user().await;
    let ticket = list_ticket(&seller, "Concert", json!(10)).await;
    let path = format!("/api/tickets/{}", id(&ticket));
    for (title, price) in [("Concert, row 2", 15), ("Concert, row 1", 25)] {
        let (status, _) = seller.put(&path, json!({"title": title, "price": price})).await;
        assert_eq!(status, StatusCode::OK);
    }

    // Once orders has both edits (read from its replica), an order is placed at the edited
    // title and price.
    let settings = &app.args.settings;
    let replica = crate::service_db::service_db(settings, ::orders::NAME, &::orders::MIGRATOR).await;
    testkit::eventually(EVENTUAL, "orders to have both edits", || async {
        let version: Option<i64> = sqlx::query_scalar("SELECT version FROM tickets WHERE id = $1")
            .bind(id(&ticket))
            .fetch_optional(&replica.pool)
            .await
            .unwrap();
        (version == Some(2)).then_some(())
    })
    .await;
    replica.pool.close().await;
    let order = order_ticket(&buyer, &id(&ticket)).await;
    let snapshot = json!({"id": id(&ticket), "title": "Concert, row 1", "price": 25.0, "version": 2});
    assert_eq!(order["ticket"], snapshot);
    // The reservation moves the ticket on (version 3); the order keeps what it was placed at.
    ticket_at_version(&seller, &id(&ticket), 3).await;
    let (status, shown) = buyer.get(&format!("/api/orders/{}", id(&order))).await;
    assert_eq!((status, &shown["ticket"]), (StatusCode::OK, &snapshot));
    app.stop().await;
}

async fn a_reserved_ticket_is_off_the_list_and_locked_until_released(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let buyer = app.user().await;
    let other = app.user().await;
    let ticket = list_ticket(&seller, "Concert", json!(10)).await;
    let ticket_id = id(&ticket);
    let path = format!("/api/tickets/{ticket_id}");
    let other_ticket = list_ticket(&seller, "Opera", json!(5)).await;

    wait_until_orderable(&seller, &ticket_id).await;
    let order = order_ticket(&buyer, &ticket_id).await;
    let reserved = ticket_at_version(&seller, &ticket_id, 1).await;
    assert_eq!(reserved["orderId"], order["id"]);
    assert_eq!(listed(&app).await, vec![id(&other_ticket)]);

    // Locked for everyone: the rule is checked before ownership.
    let reserved_error = json!({"errors": [{"message": "Cannot edit a reserved ticket"}]});
    for user in [&seller, &other] {
        assert_eq!(
            user.put(&path, json!({"title": "Changed", "price": 1})).await,
            (StatusCode::BAD_REQUEST, reserved_error.clone())
        );
    }
    assert_eq!(seller.get(&path).await, (StatusCode::OK, reserved.clone()));

    // Cancelled: back on the list, editable again.
    let (status, _) = buyer.delete(&format!("/api/orders/{}", id(&order))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let released = ticket_at_version(&seller, &ticket_id, 2).await;
    assert_eq!(released["orderId"], Value::Null);
    assert_eq!(listed(&app).await, vec![id(&other_ticket), ticket_id.clone()]);
    let (status, edited) = seller.put(&path, json!({"title": "Changed", "price": 1})).await;
    assert_eq!((status, &edited["version"], &edited["title"]), (StatusCode::OK, &json!(3), &json!("Changed")));
    app.stop().await;
}
