//! Every page against the whole marketplace (`spawn_app`), through plain HTTP as a browser
//! without JavaScript would use it: forms, redirects, cookies.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use testkit::{Backend, eventually};

use crate::support::{Browser, ticket_id_of};
use apptest::spawn_app;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_lists_tickets_for_sale_with_prices_in_the_currency() {
    let app = spawn_app(Backend::Embedded).await;
    let visitor = Browser::new(&app.base);
    let home = visitor.get("/").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(home.has("<h1>Tickets for sale</h1>") && home.has("No tickets for sale right now."), "{}", home.body);
    assert!(home.has(">Sign Up</a>") && home.has(">Sign In</a>"));

    let seller = app.user().await;
    let (status, ticket) = seller.post("/api/tickets", json!({ "title": "Cello & <Bass> duo", "price": 1234.5 })).await;
    assert_eq!(status, StatusCode::CREATED, "{ticket}");
    let id = ticket["id"].as_str().unwrap();
    let home = eventually(WAIT, "the ticket to be listed", || async {
        let home = visitor.get("/").await;
        home.has("Cello & <Bass> duo").then_some(home)
    })
    .await;
    assert!(home.has("$1,234.50"), "{}", home.body);
    assert!(home.has(&format!(r#"href="/tickets/{id}""#)));
    assert!(!home.body.contains("<Bass>"), "titles are escaped");
    assert!(!home.has("No tickets for sale"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_up_signs_in_and_the_header_says_who() {
    let app = spawn_app(Backend::Embedded).await;
    let visitor = Browser::new(&app.base);
    let form = visitor.get("/auth/signup").await;
    assert!(form.has_label("email", "Email") && form.has_label("password", "Password"));
    assert!(form.has(r#"<button type="submit" class="button primary">Sign Up</button>"#));

    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let home = visitor.submit(&form, "/auth/signup", &[("email", &email), ("password", "correct horse battery")]).await;
    assert_eq!((home.status, home.path.as_str()), (StatusCode::OK, "/"));
    for link in [">Sell Tickets</a>", ">My Orders</a>", "Sign Out</button>", email.as_str()] {
        assert!(home.has(link), "{link} in the header: {}", home.body);
    }
    assert!(!home.has(">Sign In</a>"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_errors_are_shown_next_to_their_field_with_the_email_kept() {
    let app = spawn_app(Backend::Embedded).await;
    let visitor = Browser::new(&app.base);
    let page = visitor.sign_up("someone@example", "short").await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST);
    assert_eq!(page.path, "/auth/signup");
    assert_eq!(page.field_error("email").as_deref(), Some("Email must be valid"), "{}", page.body);
    assert!(page.field_error("password").unwrap().contains("Password must be between 8 and 128 characters"));
    assert_eq!(page.input_value("email").as_deref(), Some("someone@example"));
    assert!(page.body.contains(r#"aria-invalid="true" aria-describedby="email-error""#), "{}", page.body);
    assert!(!page.body.contains("short"), "the password is never sent back");

    let taken = app.user().await;
    let page = visitor.sign_up(&taken.email.to_uppercase(), "correct horse battery").await;
    assert_eq!(page.field_error("email").as_deref(), Some("Email in use"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_goes_back_where_the_visitor_was_going_and_signing_out_returns_home() {
    let app = spawn_app(Backend::Embedded).await;
    let user = app.user().await;
    let visitor = Browser::new(&app.base);

    let form = visitor.get("/orders").await;
    assert_eq!(form.path, "/auth/signin?next=/orders");
    let wrong = visitor
        .submit(&form, "/auth/signin", &[("email", &user.email), ("password", "not the password"), ("next", "/orders")])
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert!(wrong.has(r#"<div class="alert" role="alert">"#) && wrong.has("Invalid credentials"), "{}", wrong.body);
    assert_eq!(wrong.input_value("email").as_deref(), Some(user.email.as_str()));
    assert_eq!(wrong.input_value("next").as_deref(), Some("/orders"));

    let orders = visitor
        .submit(
            &wrong,
            "/auth/signin",
            &[("email", &user.email), ("password", "correct horse battery"), ("next", "/orders")],
        )
        .await;
    assert_eq!((orders.status, orders.path.as_str()), (StatusCode::OK, "/orders"), "{}", orders.body);
    assert!(orders.has("<h1>My Orders</h1>") && orders.has("You have no orders yet."));

    // GET /auth/signout asks; the button signs out and returns home.
    let confirm = visitor.get("/auth/signout").await;
    assert!(confirm.has(&format!("You are signed in as <strong>{}</strong>", user.email)), "{}", confirm.body);
    let home = visitor.submit(&confirm, "/auth/signout", &[]).await;
    assert_eq!(home.path, "/");
    assert!(home.has(">Sign In</a>") && !home.has(&user.email));
    assert_eq!(visitor.get("/auth/signout").await.path, "/", "nothing to sign out of");
    app.stop().await;
}

/// Issue 10: the sign-out button revokes the session, so a copy of the cookie taken before is
/// refused afterwards by the API (auth and the other services) and by the pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_out_in_the_pages_revokes_the_session_everywhere() {
    use reqwest::cookie::CookieStore;

    let app = spawn_app(Backend::Embedded).await;
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    let visitor = Browser::with_jar(&app.base, jar.clone());
    visitor.sign_up_fresh().await;
    let cookies = jar.cookies(&app.base.parse().unwrap()).expect("the visitor has cookies");
    let copied = cookies.to_str().unwrap().split("; ").find(|c| c.starts_with("session=")).unwrap().to_owned();
    let thief = reqwest::Client::new();
    let orders_with_copy =
        || async { thief.get(app.url("/api/orders")).header("cookie", &copied).send().await.unwrap().status() };
    assert_eq!(orders_with_copy().await, StatusCode::OK);

    let confirm = visitor.get("/auth/signout").await;
    let home = visitor.submit(&confirm, "/auth/signout", &[]).await;
    assert_eq!(home.path, "/");
    let me = thief.get(app.url("/api/users/currentuser")).header("cookie", &copied).send().await.unwrap();
    assert_eq!(me.json::<serde_json::Value>().await.unwrap(), json!({"currentUser": null}));
    let page = thief.get(app.url("/orders")).header("cookie", &copied).send().await.unwrap();
    assert_eq!(page.url().path(), "/auth/signin", "the pages see no session either");
    eventually(WAIT, "orders to refuse the copied session", || async {
        (orders_with_copy().await == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selling_a_ticket_validates_in_place_and_lists_it() {
    let app = spawn_app(Backend::Embedded).await;
    let seller = Browser::new(&app.base);
    seller.sign_up_fresh().await;
    let form = seller.get("/tickets/new").await;
    assert_eq!(form.status, StatusCode::OK);
    assert!(form.has_label("title", "Title") && form.has_label("price", "Price"));
    assert!(form.has(r#"aria-current="page">Sell Tickets</a>"#));

    let invalid = seller.submit(&form, "/tickets/new", &[("title", "  "), ("price", "0")]).await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    assert_eq!(invalid.field_error("title").as_deref(), Some("Title is required"));
    assert_eq!(invalid.field_error("price").as_deref(), Some("Price must be greater than 0"));
    let invalid = seller.submit(&form, "/tickets/new", &[("title", "Opera"), ("price", "12,50")]).await;
    assert!(invalid.field_error("price").is_some(), "{}", invalid.body);
    assert_eq!(invalid.input_value("title").as_deref(), Some("Opera"));
    assert_eq!(invalid.input_value("price").as_deref(), Some("12,50"));
    // Issue 10: the form's text reaches the API exactly, so this is not rounded to 11.00.
    let invalid = seller.submit(&form, "/tickets/new", &[("title", "Opera"), ("price", "10.999999999999999999")]).await;
    assert_eq!(invalid.field_error("price").as_deref(), Some("Price must have at most 2 decimals"), "{}", invalid.body);

    // Issue 10: a post without the form's fields is told what is missing, on the form, in the
    // site's layout (never framework text).
    let missing = seller.submit(&form, "/tickets/new", &[]).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{}", missing.body);
    assert!(missing.content_type().starts_with("text/html") && missing.has(r#"class="site-header""#));
    assert_eq!(missing.field_error("title").as_deref(), Some("Title is required"), "{}", missing.body);
    assert!(missing.field_error("price").is_some(), "{}", missing.body);

    let id = seller.sell("Opera", "12.5").await;
    let listed = seller.get("/").await;
    assert!(listed.has("$12.50") && listed.has(r#"<span class="badge">Yours</span>"#), "{}", listed.body);
    assert_eq!(ticket_id_of(&listed, "Opera"), id);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ticket_page_offers_edit_to_its_seller_and_purchase_to_others() {
    let app = spawn_app(Backend::Embedded).await;
    let seller = Browser::new(&app.base);
    seller.sign_up_fresh().await;
    let id = seller.sell("Ballet", "30").await;

    let own = seller.get(&format!("/tickets/{id}")).await;
    assert!(own.has("<h1>Ballet</h1>") && own.has("$30.00"));
    assert!(own.has(&format!(r#"href="/tickets/{id}/edit">Edit</a>"#)) && !own.has(">Purchase</button>"));

    let buyer = Browser::new(&app.base);
    buyer.sign_up_fresh().await;
    let other = buyer.get(&format!("/tickets/{id}")).await;
    assert!(other.has(">Purchase</button>") && !other.has(">Edit</a>"), "{}", other.body);

    let anonymous = Browser::new(&app.base).get(&format!("/tickets/{id}")).await;
    assert!(anonymous.has(&format!(r#"href="/auth/signin?next=/tickets/{id}">Sign in to purchase</a>"#)));

    let missing = buyer.get(&format!("/tickets/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.has("Page not found"));

    // Buying your own ticket, even by forging the form, is explained on the page.
    let refused = seller.submit(&own, &format!("/tickets/{id}/purchase"), &[]).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(refused.has("Cannot purchase your own ticket"), "{}", refused.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_a_ticket_prefills_the_form_and_only_the_seller_may() {
    let app = spawn_app(Backend::Embedded).await;
    let seller = Browser::new(&app.base);
    seller.sign_up_fresh().await;
    let id = seller.sell("Recital", "15").await;

    let form = seller.get(&format!("/tickets/{id}/edit")).await;
    assert_eq!(form.status, StatusCode::OK);
    assert_eq!(form.input_value("title").as_deref(), Some("Recital"));
    assert_eq!(form.input_value("price").as_deref(), Some("15.00"));

    let invalid = seller.submit(&form, &format!("/tickets/{id}/edit"), &[("title", ""), ("price", "15")]).await;
    assert_eq!(invalid.field_error("title").as_deref(), Some("Title is required"));

    let saved =
        seller.submit(&form, &format!("/tickets/{id}/edit"), &[("title", "Recital, row A"), ("price", "17.25")]).await;
    assert_eq!(saved.path, format!("/tickets/{id}"));
    assert!(saved.has("<h1>Recital, row A</h1>") && saved.has("$17.25"), "{}", saved.body);

    let other = Browser::new(&app.base);
    other.sign_up_fresh().await;
    let refused = other.get(&format!("/tickets/{id}/edit")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.has("Only the seller can edit this ticket."));
    let page = other.get("/").await;
    let forged = other.submit(&page, &format!("/tickets/{id}/edit"), &[("title", "Mine now"), ("price", "1")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(seller.get(&format!("/tickets/{id}")).await.has("Recital, row A"));
    app.stop().await;
}

testkit::on_both_backends!(buying_reserves_the_ticket_pays_and_completes_the_order);

/// The whole story through the pages, on both storage/bus combinations.
async fn buying_reserves_the_ticket_pays_and_completes_the_order(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = Browser::new(&app.base);
    seller.sign_up_fresh().await;
    let id = seller.sell("Symphony", "45").await;
    let buyer = Browser::new(&app.base);
    buyer.sign_up_fresh().await;

    // The orders service learns of the ticket through an event.
    let order = eventually(WAIT, "the ticket to be orderable", || async {
        let ticket = buyer.get(&format!("/tickets/{id}")).await;
        let order = buyer.submit(&ticket, &format!("/tickets/{id}/purchase"), &[]).await;
        order.path.starts_with("/orders/").then_some(order)
    })
    .await;
    let order_id = order.path.trim_start_matches("/orders/").to_owned();
    assert!(order.has("<h1>Symphony</h1>") && order.has("Awaiting payment") && order.has("Time left to pay"));
    let ms_left = order.ms_left().expect("a countdown");
    assert!((880_000..=900_000).contains(&ms_left), "about 15 minutes: {ms_left}");
    assert!(order.body.contains(r#"<option value="tok_visa" selected>"#));

    // Reserved: gone from the list, not editable, not purchasable by anyone else.
    eventually(WAIT, "the ticket to leave the list", || async {
        (!seller.get("/").await.has("Symphony")).then_some(())
    })
    .await;
    let locked = eventually(WAIT, "the ticket to be reserved", || async {
        let page = seller.get(&format!("/tickets/{id}/edit")).await;
        page.has("cannot be edited now").then_some(page)
    })
    .await;
    assert!(!locked.has(r#"name="title""#));
    let third = Browser::new(&app.base);
    third.sign_up_fresh().await;
    let ticket = third.get(&format!("/tickets/{id}")).await;
    assert!(ticket.has("Reserved") && !ticket.has(">Purchase</button>"));
    let late = third.submit(&ticket, &format!("/tickets/{id}/purchase"), &[]).await;
    assert_eq!(late.status, StatusCode::BAD_REQUEST);
    assert!(late.has("Ticket is already reserved"), "{}", late.body);

    // Someone else's order is as good as missing.
    assert_eq!(third.get(&format!("/orders/{order_id}")).await.status, StatusCode::NOT_FOUND);

    // A declined card is explained and the order stays payable.
    let declined = buyer.submit(&order, &format!("/orders/{order_id}/pay"), &[("token", "tok_chargeDeclined")]).await;
    assert_eq!(declined.status, StatusCode::PAYMENT_REQUIRED);
    assert!(declined.has("Your card was declined.") && declined.has("Time left to pay"), "{}", declined.body);

    let orders = buyer.submit(&order, &format!("/orders/{order_id}/pay"), &[("token", "tok_visa")]).await;
    assert!(orders.path.starts_with("/orders?paid="), "{}", orders.path);
    assert!(orders.has("Your payment was received"));
    let orders = eventually(WAIT, "the order to be complete", || async {
        let page = buyer.get("/orders").await;
        page.has(">Complete</span>").then_some(page)
    })
    .await;
    assert!(orders.has("Symphony") && orders.has("$45.00"));
    let done = buyer.get(&format!("/orders/{order_id}")).await;
    assert!(done.has("Paid. The ticket is yours.") && !done.has("Time left to pay"));
    assert!(!seller.get("/").await.has("Symphony"), "a sold ticket never comes back");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_an_order_puts_the_ticket_back_on_sale_and_my_orders_lists_newest_first() {
    let app = spawn_app(Backend::Embedded).await;
    let seller = Browser::new(&app.base);
    seller.sign_up_fresh().await;
    let first = seller.sell("First show", "10").await;
    let second = seller.sell("Second show", "20").await;
    let buyer = Browser::new(&app.base);
    buyer.sign_up_fresh().await;

    let mut order_pages = Vec::new();
    for id in [&first, &second] {
        let order = eventually(WAIT, "the ticket to be orderable", || async {
            let ticket = buyer.get(&format!("/tickets/{id}")).await;
            let order = buyer.submit(&ticket, &format!("/tickets/{id}/purchase"), &[]).await;
            order.path.starts_with("/orders/").then_some(order)
        })
        .await;
        order_pages.push(order);
    }
    let orders = buyer.get("/orders").await;
    let (newer, older) = (orders.body.find("Second show").unwrap(), orders.body.find("First show").unwrap());
    assert!(newer < older, "newest first: {}", orders.body);

    let first_order = &order_pages[0];
    let order_id = first_order.path.trim_start_matches("/orders/").to_owned();
    let cancelled = buyer.submit(first_order, &format!("/orders/{order_id}/cancel"), &[]).await;
    assert_eq!(cancelled.path, format!("/orders/{order_id}"));
    assert!(cancelled.has("Cancelled") && cancelled.has("This order was cancelled"), "{}", cancelled.body);
    eventually(WAIT, "the ticket to be back on sale", || async {
        seller.get("/").await.has("First show").then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_without_the_visitors_own_token_are_refused() {
    let app = spawn_app(Backend::Embedded).await;
    let victim = Browser::new(&app.base);
    victim.sign_up_fresh().await;
    let attacker = Browser::new(&app.base);
    let attackers_page = attacker.get("/auth/signup").await;

    // A forged form: no token, or the attacker's own token (not the victim's cookie).
    let forged = victim.post("/tickets/new", &[("title", "Forged"), ("price", "1")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let forged = victim.submit(&attackers_page, "/tickets/new", &[("title", "Forged"), ("price", "1")]).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(forged.has("This form has expired"));
    assert!(!victim.get("/").await.has("Forged"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_the_whole_marketplace_unknown_pages_are_html_and_unknown_api_paths_json() {
    let app = spawn_app(Backend::Embedded).await;
    let visitor = Browser::new(&app.base);
    let page = visitor.get("/nowhere").await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert!(page.content_type().starts_with("text/html") && page.has("Page not found"));
    let api = visitor.get("/api/nowhere").await;
    assert_eq!(api.status, StatusCode::NOT_FOUND);
    assert_eq!(api.body, r#"{"errors":[{"message":"Not Found"}]}"#);
    let health = visitor.get("/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (StatusCode::OK, "ok"));
    app.stop().await;
}

/// Issues 10 and 12: the home page shows one page (50 tickets) and links the next one with the
/// API's cursor until every ticket was shown once; the search box finds titles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_pages_through_every_ticket_and_searches_titles() {
    let app = spawn_app(Backend::Embedded).await;
    let mut titles = Vec::new();
    // A few tickets per seller: sellers may be limited in how many they list.
    for _ in 0..11 {
        let seller = app.user().await;
        for n in 0..5 {
            let title = format!("{} {}-{n}", if n == 0 { "Jazz" } else { "Show" }, titles.len());
            let (status, body) = seller.post("/api/tickets", json!({ "title": title, "price": 10 })).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            titles.push(title);
        }
    }
    let visitor = Browser::new(&app.base);
    let cards = |page: &crate::support::Page| page.body.matches(r#"class="card ticket-card""#).count();
    let first = visitor.get("/").await;
    assert_eq!((first.status, cards(&first)), (StatusCode::OK, 50), "{}", first.body);
    let text = first.text();
    let link =
        text.split(r#"<a class="next" href=""#).nth(1).and_then(|rest| rest.split('"').next()).expect("a next page");
    let second = visitor.get(link).await;
    assert_eq!((second.status, cards(&second)), (StatusCode::OK, 5), "{}", second.body);
    assert!(!second.has("Next page"));
    let shown: Vec<&String> = titles
        .iter()
        .filter(|title| first.has(&format!(">{title}</a>")) || second.has(&format!(">{title}</a>")))
        .collect();
    assert_eq!(shown.len(), titles.len(), "every ticket on one of the pages");
    // Newest first: the last listed opens the first page, the first listed closes the last.
    assert!(first.has(&format!(">{}</a>", titles[54])) && second.has(&format!(">{}</a>", titles[0])));

    let found = visitor.get("/?q=jazz").await;
    assert_eq!((found.status, cards(&found)), (StatusCode::OK, 11), "{}", found.body);
    assert!(!found.has("Show ") && !found.has("Next page"));
    assert_eq!(found.input_value("q").as_deref(), Some("jazz"));
    let none = visitor.get("/?q=opera").await;
    assert!(none.has("No tickets for sale match “opera”."), "{}", none.body);
    app.stop().await;
}
