//! End to end in a real headless Chromium: Debian's `chromium`, driven through its
//! `chromedriver` over WebDriver. `scripts/test-deps` installs both; without them these tests
//! fail (they never skip). Each step leaves a screenshot in `target/e2e-screenshots/`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;
use testkit::{Backend, TempDir, eventually};

use crate::fake_api::{ORDER_ID, api_with_order};
use crate::support::{FakeApi, spawn_web};
use apptest::spawn_app;

const WAIT: Duration = Duration::from_secs(20);

/// Debian's paths, unless the environment names others.
fn executable(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: run scripts/test-deps, which installs Debian's chromium and chromium-driver (or set {variable})",
        path.display()
    );
    path
}

/// A chromedriver of our own, and the browsers it opened, each with a fresh profile.
struct Chrome {
    url: String,
    chromium: PathBuf,
    _driver: tokio::process::Child,
    profiles: Vec<TempDir>,
}

impl Chrome {
    async fn start() -> Self {
        let driver = executable("CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = executable("CHROMIUM", "/usr/bin/chromium");
        // A free port can be taken between our probe and chromedriver's bind: try again then.
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut child = tokio::process::Command::new(&driver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("chromedriver starts");
            let url = format!("http://127.0.0.1:{port}");
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if let Ok(response) = reqwest::get(format!("{url}/status")).await {
                    let status: serde_json::Value = response.json().await.unwrap_or_default();
                    if status["value"]["ready"] == json!(true) {
                        return Self { url, chromium, _driver: child, profiles: Vec::new() };
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill().await;
        }
        panic!("chromedriver did not become ready");
    }

    /// A new headless browser with its own profile (its own cookies: its own person).
    async fn browser(&mut self) -> Client {
        let profile = TempDir::new();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": self.chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        self.profiles.push(profile);
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("chromedriver opens a Chromium session")
    }
}

/// Numbered screenshots of one test, in `target/e2e-screenshots/<test>/`.
struct Screenshots {
    dir: PathBuf,
    taken: usize,
}

impl Screenshots {
    fn new(test: &str) -> Self {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"), PathBuf::from);
        let dir = target.join("e2e-screenshots").join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        Self { dir, taken: 0 }
    }

    async fn take(&mut self, browser: &Client, step: &str) {
        self.taken += 1;
        let png = browser.screenshot().await.expect("screenshot");
        let path = self.dir.join(format!("{:02}-{step}.png", self.taken));
        std::fs::write(&path, png).expect("screenshot written");
        println!("screenshot: {}", path.display());
    }
}

async fn fill(browser: &Client, css: &str, text: &str) {
    let input = browser.find(Locator::Css(css)).await.unwrap_or_else(|err| panic!("{css}: {err}"));
    input.clear().await.expect("clear");
    input.send_keys(text).await.expect("type");
}

async fn click(browser: &Client, css: &str) {
    browser.find(Locator::Css(css)).await.unwrap_or_else(|err| panic!("{css}: {err}")).click().await.expect("click");
}

async fn text(browser: &Client, css: &str) -> String {
    browser.find(Locator::Css(css)).await.unwrap_or_else(|err| panic!("{css}: {err}")).text().await.expect("text")
}

/// The text of `css`, if the page has it right now (`None` while a new page loads).
async fn try_text(browser: &Client, css: &str) -> Option<String> {
    browser.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

async fn body_text(browser: &Client) -> String {
    text(browser, "body").await
}

async fn path(browser: &Client) -> String {
    let url = browser.current_url().await.expect("url");
    url.path().to_owned() + &url.query().map(|q| format!("?{q}")).unwrap_or_default()
}

/// Waits until the page's text contains `wanted`.
async fn wait_for_text(browser: &Client, wanted: &str) -> String {
    eventually(WAIT, wanted, || async { try_text(browser, "body").await.filter(|text| text.contains(wanted)) }).await
}

/// `14m 05s` → 845.
fn seconds(shown: &str) -> i64 {
    shown
        .split_whitespace()
        .map(|part| {
            let (number, unit) = part.split_at(part.len() - 1);
            let number: i64 = number.parse().unwrap_or_else(|_| panic!("not a duration: {shown}"));
            number
                * match unit {
                    "h" => 3600,
                    "m" => 60,
                    _ => 1,
                }
        })
        .sum()
}

async fn sign_up(browser: &Client, base: &str, email: &str) {
    browser.goto(&format!("{base}/")).await.unwrap();
    browser.find(Locator::LinkText("Sign Up")).await.expect("a Sign Up link").click().await.unwrap();
    fill(browser, "#email", email).await;
    fill(browser, "#password", "correct horse battery").await;
    click(browser, "main form button[type=submit]").await;
    eventually(WAIT, "the header to show the user", || async {
        try_text(browser, ".site-header").await.filter(|header| header.contains(email))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_trade_a_ticket_in_a_real_browser() {
    let app = spawn_app(Backend::Embedded).await;
    let base = app.base.clone();
    let mut chrome = Chrome::start().await;
    let mut shots = Screenshots::new("trade");
    let seller = chrome.browser().await;
    let buyer = chrome.browser().await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (seller_email, buyer_email) =
        (format!("seller-{}@example.com", &id[..8]), format!("buyer-{}@example.com", &id[..8]));

    // The seller arrives: nothing for sale yet.
    seller.goto(&format!("{base}/")).await.unwrap();
    assert!(wait_for_text(&seller, "No tickets for sale right now.").await.contains("Tickets for sale"));
    shots.take(&seller, "home-empty").await;

    sign_up(&seller, &base, &seller_email).await;
    let header = text(&seller, ".site-header").await;
    for link in ["Sell Tickets", "My Orders", "Sign Out"] {
        assert!(header.contains(link), "{link} in {header}");
    }
    let cookies = seller.get_all_cookies().await.unwrap();
    let session = cookies.iter().find(|c| c.name() == "session").expect("a session cookie");
    assert_eq!(session.http_only(), Some(true), "the session cookie stays HttpOnly");
    shots.take(&seller, "seller-signed-up").await;

    // Lists a ticket.
    seller.find(Locator::LinkText("Sell Tickets")).await.unwrap().click().await.unwrap();
    fill(&seller, "#title", "Jazz night, front row").await;
    fill(&seller, "#price", "25.50").await;
    shots.take(&seller, "sell-form").await;
    click(&seller, "main form button[type=submit]").await;
    let listed = wait_for_text(&seller, "Jazz night, front row").await;
    assert!(listed.contains("$25.50"), "{listed}");
    assert_eq!(path(&seller).await, "/");
    shots.take(&seller, "ticket-listed").await;

    // The buyer mistypes their email first: the API's message shows next to the field.
    buyer.goto(&format!("{base}/auth/signup")).await.unwrap();
    fill(&buyer, "#email", "buyer@example").await;
    fill(&buyer, "#password", "correct horse battery").await;
    click(&buyer, "main form button[type=submit]").await;
    let error =
        eventually(WAIT, "the email error", || async { buyer.find(Locator::Css("#email-error")).await.ok() }).await;
    assert_eq!(error.text().await.unwrap(), "Email must be valid");
    let typed = buyer.find(Locator::Css("#email")).await.unwrap().prop("value").await.unwrap();
    assert_eq!(typed.as_deref(), Some("buyer@example"), "the typed email is kept");
    shots.take(&buyer, "bad-email").await;

    fill(&buyer, "#email", &buyer_email).await;
    fill(&buyer, "#password", "correct horse battery").await;
    click(&buyer, "main form button[type=submit]").await;
    eventually(WAIT, "the buyer to be signed in", || async {
        try_text(&buyer, ".site-header").await.filter(|header| header.contains(&buyer_email))
    })
    .await;
    wait_for_text(&buyer, "Jazz night, front row").await;
    shots.take(&buyer, "buyer-sees-ticket").await;

    // Opens it and purchases it.
    buyer.find(Locator::LinkText("Jazz night, front row")).await.unwrap().click().await.unwrap();
    wait_for_text(&buyer, "Purchase").await;
    shots.take(&buyer, "ticket-page").await;
    // The orders service hears of new tickets through an event: the first click may come
    // before it has; the page then says so, and the buyer clicks again.
    eventually(WAIT, "the order page", || async {
        if buyer.find(Locator::Css("#time-left")).await.is_ok() {
            return Some(());
        }
        if let Ok(button) = buyer.find(Locator::XPath("//button[normalize-space()='Purchase']")).await {
            let _ = button.click().await;
        }
        None
    })
    .await;
    assert!(path(&buyer).await.starts_with("/orders/"));
    let order_text = body_text(&buyer).await;
    assert!(order_text.contains("Time left to pay") && order_text.contains("Awaiting payment"), "{order_text}");

    // The countdown ticks, without a reload.
    let first = text(&buyer, "#time-left").await;
    let later = eventually(Duration::from_secs(5), "the countdown to tick", || async {
        try_text(&buyer, "#time-left").await.filter(|now| *now != first)
    })
    .await;
    assert!(seconds(&later) < seconds(&first), "{first} → {later}");
    assert!(seconds(&first) <= 900 && seconds(&first) > 880, "{first}");
    let card = buyer.find(Locator::Css("#token")).await.unwrap().prop("value").await.unwrap();
    assert_eq!(card.as_deref(), Some("tok_visa"), "a succeeding test card is the default");
    shots.take(&buyer, "order-countdown").await;

    // Pays, and finds the order complete in My Orders.
    click(&buyer, "#pay-form button[type=submit]").await;
    eventually(WAIT, "My Orders", || async { path(&buyer).await.starts_with("/orders?paid=").then_some(()) }).await;
    eventually(WAIT, "the order to be complete", || async {
        if try_text(&buyer, "main").await.is_some_and(|page| page.contains("Complete")) {
            return Some(());
        }
        let _ = buyer.refresh().await;
        None
    })
    .await;
    let orders = body_text(&buyer).await;
    assert!(orders.contains("My Orders") && orders.contains("Jazz night, front row") && orders.contains("$25.50"));
    shots.take(&buyer, "my-orders-complete").await;

    // The ticket is gone from the list, for both.
    buyer.goto(&format!("{base}/")).await.unwrap();
    let home = wait_for_text(&buyer, "No tickets for sale right now.").await;
    assert!(!home.contains("Jazz night"));
    shots.take(&buyer, "ticket-gone").await;
    seller.refresh().await.unwrap();
    assert!(!body_text(&seller).await.contains("Jazz night"));

    // The same pages on a phone-sized screen.
    buyer.set_window_size(390, 844).await.unwrap();
    buyer.goto(&format!("{base}/orders")).await.unwrap();
    wait_for_text(&buyer, "Jazz night, front row").await;
    shots.take(&buyer, "my-orders-phone").await;

    seller.close().await.unwrap();
    buyer.close().await.unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_countdown_says_order_expired_without_a_reload() {
    let api = FakeApi::start(api_with_order("created", Duration::from_secs(4))).await;
    let app = spawn_web(&api.url, |_| {}).await;
    let mut chrome = Chrome::start().await;
    let mut shots = Screenshots::new("expiry");
    let browser = chrome.browser().await;

    browser.goto(&app.url("/auth/signin")).await.unwrap();
    fill(&browser, "#email", "buyer@example.com").await;
    fill(&browser, "#password", "whatever1").await;
    click(&browser, "main form button[type=submit]").await;
    eventually(WAIT, "signed in", || async { (path(&browser).await == "/").then_some(()) }).await;

    browser.goto(&app.url(&format!("/orders/{ORDER_ID}"))).await.unwrap();
    let shown = text(&browser, "#time-left").await;
    assert!(seconds(&shown) <= 4, "{shown}");
    // Marks this page: a reload would forget the mark.
    browser.execute("window.notReloaded = true; return true;", vec![]).await.unwrap();
    shots.take(&browser, "counting-down").await;

    let expired = browser.find(Locator::Css("#expired-line")).await.unwrap();
    eventually(Duration::from_secs(10), "Order expired", || async {
        expired.is_displayed().await.unwrap().then_some(())
    })
    .await;
    assert_eq!(expired.text().await.unwrap(), "Order expired");
    let pay = browser.find(Locator::Css("#pay-form button[type=submit]")).await.unwrap();
    assert!(!pay.is_displayed().await.unwrap() && !pay.is_enabled().await.unwrap(), "no paying after expiry");
    assert_eq!(text(&browser, "#order-status").await, "Expired");
    let same_page = browser.execute("return window.notReloaded === true;", vec![]).await.unwrap();
    assert_eq!(same_page, json!(true), "no reload");
    shots.take(&browser, "expired").await;
    browser.close().await.unwrap();
    app.stop().await;
}
