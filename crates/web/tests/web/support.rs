//! A plain HTTP "browser" for page tests (keeps cookies, follows redirects, fills forms with
//! the page's CSRF token), a stand-in API for what the real one cannot easily be made to
//! do, and a web service running on its own against any API.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use reqwest::StatusCode;
use testkit::Backend;
use ticketing::ServiceName;

use apptest::{TestApp, spawn_app_with};

/// A fetched page.
#[derive(Debug)]
pub struct Page {
    pub status: StatusCode,
    /// Where the page ended up, after redirects.
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
}

impl Page {
    /// The form token of the page (every form carries the same).
    pub fn csrf(&self) -> String {
        self.attr_after(r#"name="_csrf" value=""#).expect("the page has a form with a CSRF token")
    }

    pub fn has(&self, text: &str) -> bool {
        self.text().contains(text)
    }

    /// The page's text with entities decoded, tags kept (good enough for `contains`).
    pub fn text(&self) -> String {
        unescape(&self.body)
    }

    /// The error shown under the field `name`, if any.
    pub fn field_error(&self, name: &str) -> Option<String> {
        let marker = format!(r#"id="{name}-error">"#);
        let start = self.body.find(&marker)? + marker.len();
        let end = self.body[start..].find('<')?;
        Some(unescape(&self.body[start..start + end]))
    }

    /// The value attribute of the input `name`.
    pub fn input_value(&self, name: &str) -> Option<String> {
        let marker = format!(r#"name="{name}""#);
        let at = self.body.find(&marker)?;
        let tag_end = self.body[at..].find('>')? + at;
        let tag = &self.body[at..tag_end];
        let start = tag.find(r#"value=""#)? + r#"value=""#.len();
        let end = tag[start..].find('"')?;
        Some(unescape(&tag[start..start + end]))
    }

    /// Whether a `<label for="id">label</label>` exists.
    pub fn has_label(&self, id: &str, label: &str) -> bool {
        self.body.contains(&format!(r#"<label for="{id}">{label}</label>"#))
            && self.body.contains(&format!(r#"id="{id}""#))
    }

    fn attr_after(&self, marker: &str) -> Option<String> {
        let start = self.body.find(marker)? + marker.len();
        let end = self.body[start..].find('"')?;
        Some(unescape(&self.body[start..start + end]))
    }

    /// The `data-ms-left` of the countdown, if the page has one.
    pub fn ms_left(&self) -> Option<i64> {
        self.attr_after(r#"data-ms-left=""#)?.parse().ok()
    }

    pub fn content_type(&self) -> String {
        self.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    }
}

/// Decodes the entities MiniJinja writes.
pub fn unescape(html: &str) -> String {
    html.replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// A visitor with a cookie jar.
pub struct Browser {
    pub client: reqwest::Client,
    base: String,
}

impl Browser {
    pub fn new(base: &str) -> Self {
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client builds");
        Self { client, base: base.to_owned() }
    }

    /// A visitor whose cookies the test can read in `jar` (to copy a session, say).
    pub fn with_jar(base: &str, jar: std::sync::Arc<reqwest::cookie::Jar>) -> Self {
        let client = reqwest::Client::builder()
            .cookie_provider(jar)
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client builds");
        Self { client, base: base.to_owned() }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn page(&self, response: reqwest::Response) -> Page {
        let status = response.status();
        let path =
            response.url().path().to_owned() + &response.url().query().map(|q| format!("?{q}")).unwrap_or_default();
        let headers = response.headers().clone();
        let body = response.text().await.expect("body read");
        Page { status, path, headers, body }
    }

    pub async fn get(&self, path: &str) -> Page {
        self.page(self.client.get(self.url(path)).send().await.expect("request sent")).await
    }

    /// Posts exactly these fields (no token added).
    pub async fn post(&self, path: &str, fields: &[(&str, &str)]) -> Page {
        self.page(self.client.post(self.url(path)).form(fields).send().await.expect("request sent")).await
    }

    /// Submits a form of `from` to `action`, with the page's token, as a browser would.
    pub async fn submit(&self, from: &Page, action: &str, fields: &[(&str, &str)]) -> Page {
        let token = from.csrf();
        let mut all = vec![("_csrf", token.as_str())];
        all.extend_from_slice(fields);
        self.post(action, &all).await
    }

    /// Signs up through the sign-up page; the page it lands on.
    pub async fn sign_up(&self, email: &str, password: &str) -> Page {
        let form = self.get("/auth/signup").await;
        self.submit(&form, "/auth/signup", &[("email", email), ("password", password)]).await
    }

    pub async fn sign_up_fresh(&self) -> String {
        let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
        let page = self.sign_up(&email, "correct horse battery").await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.body);
        assert!(page.has(&email), "signed in as {email}: {}", page.body);
        email
    }

    /// Lists a ticket through the sell page; its id.
    pub async fn sell(&self, title: &str, price: &str) -> String {
        let form = self.get("/tickets/new").await;
        let listed = self.submit(&form, "/tickets/new", &[("title", title), ("price", price)]).await;
        assert_eq!((listed.status, listed.path.as_str()), (StatusCode::OK, "/"), "{}", listed.body);
        ticket_id_of(&listed, title)
    }
}

/// The id in the link of the ticket titled `title` on a list page.
pub fn ticket_id_of(page: &Page, title: &str) -> String {
    let text = page.text();
    let at = text.find(&format!(">{title}</a>")).unwrap_or_else(|| panic!("{title} is not listed: {text}"));
    let before = &text[..at];
    let start = before.rfind("/tickets/").expect("a ticket link") + "/tickets/".len();
    before[start..].split('"').next().expect("an id").to_owned()
}

/// What the stand-in API saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
}

/// An API stand-in on port 0: `routes` answer, every request is recorded.
pub struct FakeApi {
    pub url: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeApi {
    pub async fn start(routes: Router) -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let app = routes.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                record.lock().unwrap().push(Seen {
                    method: request.method().to_string(),
                    path: request.uri().path().to_owned(),
                    headers: request.headers().clone(),
                });
                next.run(request)
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("fake API serves");
        });
        Self { url: format!("http://{addr}"), seen, server }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The web service alone in a marketplace process, calling the API at `api_url`.
pub async fn spawn_web(api_url: &str, configure: impl FnOnce(&mut ticketing::ServeArgs)) -> TestApp {
    let api_url = api_url.to_owned();
    spawn_app_with(Backend::Embedded, move |args| {
        args.services = vec![ServiceName::Web];
        args.web.api_url = Some(api_url);
        configure(args);
    })
    .await
}
