//! `GET /api/tickets` one page at a time (issues 10 and 12): a cursor, a bounded page size,
//! the next page in a `Link` header, and a title search, on both backends.

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::{Backend, on_both_backends};

use crate::orders::{order_ticket, wait_until_orderable};
use crate::tickets::{id, list_ticket, ticket_at_version};
use apptest::{TestApp, User, field_errors, into_parts, spawn_app};

on_both_backends!(
    walking_the_pages_shows_every_ticket_once_while_more_are_listed,
    pages_hold_50_tickets_unless_asked_and_never_more_than_200,
    bad_limits_and_cursors_are_refused_in_the_envelope,
    q_finds_titles_containing_it_ignoring_case,
    reserved_tickets_are_on_no_page,
);

/// One page: status, the tickets' ids, and the `Link` header's next-page URL.
struct Page {
    status: StatusCode,
    body: Value,
    next: Option<String>,
}

impl Page {
    fn ids(&self) -> Vec<String> {
        self.body.as_array().unwrap_or_else(|| panic!("not an array: {}", self.body)).iter().map(id).collect()
    }

    fn titles(&self) -> Vec<String> {
        self.body.as_array().expect("an array").iter().map(|t| t["title"].as_str().expect("title").to_owned()).collect()
    }
}

/// GETs `path` (e.g. `/api/tickets?limit=5`) anonymously.
async fn page(app: &TestApp, path: &str) -> Page {
    let response = app.client().get(app.url(path)).send().await.expect("request sent");
    let links: Vec<String> = response
        .headers()
        .get_all(reqwest::header::LINK)
        .iter()
        .map(|value| value.to_str().expect("ASCII Link").to_owned())
        .collect();
    assert!(links.len() <= 1, "one Link header at most: {links:?}");
    let next = links.first().map(|link| {
        let url = link
            .strip_prefix('<')
            .and_then(|rest| rest.strip_suffix(">; rel=\"next\""))
            .unwrap_or_else(|| panic!("not a next link: {link}"));
        assert!(url.starts_with("/api/tickets?"), "an absolute path on the same origin: {url}");
        url.to_owned()
    });
    let (status, body) = into_parts(response).await;
    Page { status, body, next }
}

/// The query parameters of a URL path.
fn params(path: &str) -> Vec<(String, String)> {
    let query = path.split_once('?').map(|(_, query)| query).unwrap_or_default();
    reqwest::Url::parse(&format!("http://x/?{query}")).unwrap().query_pairs().into_owned().collect()
}

/// Every page from `first` on, following the `Link` headers.
async fn walk(app: &TestApp, first: &str) -> Vec<Page> {
    let mut pages = vec![page(app, first).await];
    while let Some(next) = pages.last().and_then(|page| page.next.clone()) {
        let page = page(app, &next).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        pages.push(page);
        assert!(pages.len() < 1000, "the pages never end");
    }
    pages
}

/// `count` tickets for sale written straight into the tickets database (as `POST /api/tickets`
/// stores them, without the events): many tickets without going through a seller's limits.
async fn seed_tickets(app: &TestApp, count: usize) {
    let db = crate::service_db::service_db(&app.args.settings, ::tickets::NAME, &::tickets::MIGRATOR).await;
    let mut tx = db.begin().await.expect("transaction");
    let seller = uuid::Uuid::new_v4().to_string();
    for n in 0..count {
        let title = format!("Seeded {n}");
        sqlx::query(
            "INSERT INTO tickets (id, title, price, user_id, version, order_id, status, created_at, search_title) \
             VALUES ($1, $2, 1000, $3, 0, NULL, 'available', $4, $5)",
        )
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(&title)
        .bind(&seller)
        .bind(platform::db::now_millis())
        .bind(title.to_lowercase())
        .execute(&mut *tx)
        .await
        .expect("ticket seeded");
    }
    tx.commit().await.expect("seeded");
    db.close().await;
}

/// `count` tickets listed through the API by a few sellers, oldest first.
async fn list_tickets(sellers: &[User], count: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for n in 0..count {
        let ticket = list_ticket(&sellers[n % sellers.len()], &format!("Ticket {n}"), json!(n + 1)).await;
        ids.push(id(&ticket));
    }
    ids
}

async fn walking_the_pages_shows_every_ticket_once_while_more_are_listed(backend: Backend) {
    let app = spawn_app(backend).await;
    let sellers = [app.user().await, app.user().await, app.user().await];
    let listed = list_tickets(&sellers, 12).await;
    let newest_first: Vec<String> = listed.iter().rev().cloned().collect();

    // Pages of 5: 5, 5, 2. Before each next page a new ticket is listed; it is newer than
    // the walk's position, so it shifts nothing the walk has still to read.
    let mut pages = vec![page(&app, "/api/tickets?limit=5").await];
    let mut listed_meanwhile = Vec::new();
    while let Some(next) = pages.last().and_then(|page| page.next.clone()) {
        assert_eq!(params(&next).iter().filter(|(k, v)| k == "limit" && v == "5").count(), 1, "{next}");
        let ticket = list_ticket(&sellers[0], "Listed meanwhile", json!(3)).await;
        listed_meanwhile.push(id(&ticket));
        pages.push(page(&app, &next).await);
        assert!(pages.len() <= 3, "more pages than tickets");
    }
    assert!(pages.iter().all(|page| page.status == StatusCode::OK));
    assert_eq!(pages.iter().map(|page| page.ids().len()).collect::<Vec<_>>(), vec![5, 5, 2]);
    let walked: Vec<String> = pages.iter().flat_map(Page::ids).collect();
    assert_eq!(walked, newest_first, "every ticket once, newest first");
    assert_eq!(pages.last().unwrap().next, None, "no Link on the last page");

    // A new walk starts with what was listed meanwhile, newest first.
    let mut everything = listed_meanwhile.clone();
    everything.reverse();
    everything.extend(newest_first);
    let walked: Vec<String> = walk(&app, "/api/tickets?limit=3").await.iter().flat_map(Page::ids).collect();
    assert_eq!(walked, everything);
    let one_page = page(&app, "/api/tickets").await;
    assert_eq!((one_page.ids(), one_page.next), (everything, None), "one page when all fit");
    app.stop().await;
}

async fn pages_hold_50_tickets_unless_asked_and_never_more_than_200(backend: Backend) {
    let app = spawn_app(backend).await;
    seed_tickets(&app, 205).await;

    let first = page(&app, "/api/tickets").await;
    assert_eq!((first.status, first.ids().len()), (StatusCode::OK, 50));
    let next = first.next.clone().expect("a next page");
    assert!(params(&next).contains(&("limit".to_owned(), "50".to_owned())), "{next}");
    let pages = walk(&app, "/api/tickets").await;
    assert_eq!(pages.iter().map(|page| page.ids().len()).collect::<Vec<_>>(), vec![50, 50, 50, 50, 5]);

    let pages = walk(&app, "/api/tickets?limit=200").await;
    assert_eq!(pages.iter().map(|page| page.ids().len()).collect::<Vec<_>>(), vec![200, 5]);
    let mut all: Vec<String> = pages.iter().flat_map(Page::ids).collect();
    // Seeded oldest first: "Seeded 204" is the newest.
    assert_eq!(pages[0].titles()[..2], ["Seeded 204".to_owned(), "Seeded 203".to_owned()]);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 205, "no ticket twice");

    let single = page(&app, "/api/tickets?limit=1").await;
    assert_eq!(single.titles(), ["Seeded 204"]);
    assert!(single.next.is_some());
    app.stop().await;
}

async fn bad_limits_and_cursors_are_refused_in_the_envelope(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let tickets = list_tickets(std::slice::from_ref(&seller), 3).await;
    let limit_error = vec![("limit".to_owned(), "Limit must be a whole number from 1 to 200".to_owned())];
    for bad in ["0", "201", "-1", "ten", "1.5", "1e2", "99999999999999999999"] {
        let refused = page(&app, &format!("/api/tickets?limit={bad}")).await;
        assert_eq!((refused.status, field_errors(&refused.body)), (StatusCode::BAD_REQUEST, limit_error.clone()));
        assert_eq!(refused.next, None);
    }

    let first = page(&app, "/api/tickets?limit=1").await;
    let cursor = params(first.next.as_deref().expect("a next page"))
        .into_iter()
        .find(|(key, _)| key == "cursor")
        .map(|(_, value)| value)
        .expect("a cursor");
    let cursor_error = vec![("cursor".to_owned(), "Cursor is invalid; use the link of the page before".to_owned())];
    let truncated = &cursor[..cursor.len() - 2];
    for bad in
        ["garbage", truncated, &format!("{cursor}AA"), "%00", tickets[0].as_str(), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]
    {
        let refused = page(&app, &format!("/api/tickets?cursor={bad}")).await;
        assert_eq!(
            (refused.status, field_errors(&refused.body)),
            (StatusCode::BAD_REQUEST, cursor_error.clone()),
            "{bad}"
        );
    }
    // Both wrong: one entry each.
    let refused = page(&app, "/api/tickets?limit=0&cursor=garbage").await;
    let mut both = limit_error.clone();
    both.extend(cursor_error);
    assert_eq!((refused.status, field_errors(&refused.body)), (StatusCode::BAD_REQUEST, both));
    let refused = page(&app, "/api/tickets?limit=1&limit=2").await;
    assert_eq!(
        (refused.status, field_errors(&refused.body)),
        (StatusCode::BAD_REQUEST, vec![("limit".to_owned(), "Give limit at most once".to_owned())])
    );
    // The cursor itself still works, and unknown parameters are ignored.
    let second = page(&app, &format!("/api/tickets?limit=1&cursor={cursor}&sort=price")).await;
    assert_eq!((second.status, second.ids()), (StatusCode::OK, vec![tickets[1].clone()]));
    app.stop().await;
}

async fn q_finds_titles_containing_it_ignoring_case(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let seller_two = app.user().await;
    let titles = ["Jazz night", "Rock concert", "JAZZ brunch", "Café ÉTÉ", "100% fun", "a_b", "Late jazz"];
    let mut ids = Vec::new();
    for (n, title) in titles.iter().enumerate() {
        let seller = if n % 2 == 0 { &seller } else { &seller_two };
        ids.push(id(&list_ticket(seller, title, json!(10)).await));
    }
    let search = |q: &str| {
        let path = format!("/api/tickets?q={}", q.replace('%', "%25").replace(' ', "+"));
        let app = &app;
        async move {
            let found = page(app, &path).await;
            assert_eq!(found.status, StatusCode::OK, "{}", found.body);
            found.titles()
        }
    };
    assert_eq!(search("jazz").await, ["Late jazz", "JAZZ brunch", "Jazz night"]);
    assert_eq!(search("  JaZz ").await, ["Late jazz", "JAZZ brunch", "Jazz night"]);
    assert_eq!(search("été").await, ["Café ÉTÉ"], "case ignored beyond ASCII");
    assert_eq!(search("CAFÉ").await, ["Café ÉTÉ"]);
    // LIKE's wildcards match only themselves.
    assert_eq!(search("%").await, ["100% fun"]);
    assert_eq!(search("_").await, ["a_b"]);
    assert_eq!(search("a%b").await, Vec::<String>::new());
    assert!(search("opera").await.is_empty());
    // An empty search is no search.
    assert_eq!(search("").await.len(), titles.len());

    // Pages of a search keep `q` and `limit`.
    let pages = walk(&app, "/api/tickets?q=JAZZ&limit=2").await;
    let next = pages[0].next.clone().expect("a second page");
    assert!(params(&next).contains(&("q".to_owned(), "JAZZ".to_owned())), "{next}");
    assert!(params(&next).contains(&("limit".to_owned(), "2".to_owned())), "{next}");
    assert_eq!(
        pages.iter().map(Page::titles).collect::<Vec<_>>(),
        vec![vec!["Late jazz".to_owned(), "JAZZ brunch".to_owned()], vec!["Jazz night".to_owned()],]
    );

    // An edit is searched by its new title.
    let (status, _) =
        seller_two.put(&format!("/api/tickets/{}", ids[1]), json!({"title": "Jazz & rock", "price": 10})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(search("jazz").await, ["Late jazz", "JAZZ brunch", "Jazz & rock", "Jazz night"]);
    assert!(search("concert").await.is_empty());

    // A ticket stored before title search existed (no search key) is found once the service
    // has started again.
    let db = crate::service_db::service_db(&app.args.settings, ::tickets::NAME, &::tickets::MIGRATOR).await;
    sqlx::query(
        "INSERT INTO tickets (id, title, price, user_id, version, order_id, status, created_at) \
         VALUES ($1, 'Jazz ÉVÉNEMENT', 1000, $2, 0, NULL, 'available', 0)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(uuid::Uuid::new_v4().to_string())
    .execute(&db.pool)
    .await
    .expect("legacy ticket");
    db.close().await;
    let mut app = app;
    app.restart().await;
    let found = page(&app, "/api/tickets?q=%C3%A9v%C3%A9nement").await;
    assert_eq!(found.titles(), ["Jazz ÉVÉNEMENT"]);
    // Oldest of all (created at 0): last.
    assert_eq!(page(&app, "/api/tickets?q=jazz").await.titles().last().map(String::as_str), Some("Jazz ÉVÉNEMENT"));
    app.stop().await;
}

async fn reserved_tickets_are_on_no_page(backend: Backend) {
    let app = spawn_app(backend).await;
    let seller = app.user().await;
    let buyer = app.user().await;
    let listed = list_tickets(std::slice::from_ref(&seller), 4).await;
    let reserved = listed[2].clone();
    wait_until_orderable(&seller, &reserved).await;
    order_ticket(&buyer, &reserved).await;
    ticket_at_version(&seller, &reserved, 1).await;

    let walked: Vec<String> = walk(&app, "/api/tickets?limit=1").await.iter().flat_map(Page::ids).collect();
    assert_eq!(walked, vec![listed[3].clone(), listed[1].clone(), listed[0].clone()]);
    let found = page(&app, "/api/tickets?q=ticket+2").await;
    assert_eq!((found.status, found.ids()), (StatusCode::OK, Vec::<String>::new()));
    app.stop().await;
}
