//! A client of the marketplace's public HTTP API, routed by path prefix like the one origin
//! would be: in one-process-per-service mode each prefix has its own base URL.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Base URL per API prefix.
#[derive(Debug, Clone)]
pub struct Routes {
    pub auth: String,
    pub tickets: String,
    pub orders: String,
    pub payments: String,
    /// The HTML pages (every path outside `/api`).
    pub pages: String,
    /// More instances of the tickets and orders services (the scale-out run): requests to a
    /// service take its instances in turn, as a round-robin load balancer would.
    pub more_tickets: Vec<String>,
    pub more_orders: Vec<String>,
    /// Whose turn it is, per service (tickets, orders).
    turns: Arc<[AtomicUsize; 2]>,
}

impl Routes {
    /// Every prefix on one origin (the all-in-one process).
    pub fn single(base: &str) -> Self {
        Self::new(base, base, base, base, base)
    }

    /// One origin per service.
    pub fn new(auth: &str, tickets: &str, orders: &str, payments: &str, pages: &str) -> Self {
        Self {
            auth: auth.to_owned(),
            tickets: tickets.to_owned(),
            orders: orders.to_owned(),
            payments: payments.to_owned(),
            pages: pages.to_owned(),
            more_tickets: Vec::new(),
            more_orders: Vec::new(),
            turns: Arc::default(),
        }
    }

    fn base_for(&self, path: &str) -> &str {
        if path.starts_with("/api/users") {
            &self.auth
        } else if path.starts_with("/api/tickets") {
            self.in_turn(0, &self.tickets, &self.more_tickets)
        } else if path.starts_with("/api/orders") {
            self.in_turn(1, &self.orders, &self.more_orders)
        } else if path.starts_with("/api/payments") {
            &self.payments
        } else {
            &self.pages
        }
    }

    fn in_turn<'a>(&self, service: usize, first: &'a str, more: &'a [String]) -> &'a str {
        if more.is_empty() {
            return first;
        }
        match self.turns[service].fetch_add(1, Ordering::Relaxed) % (more.len() + 1) {
            0 => first,
            n => &more[n - 1],
        }
    }
}

/// A signed-in user: the session JWT, sent as a bearer token.
#[derive(Debug, Clone)]
pub struct Session {
    pub email: String,
    pub token: String,
}

/// A response: status and (possibly empty) JSON body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    /// `"400 Ticket is already reserved"`: what a failed operation is counted as.
    pub fn label(&self) -> String {
        let message = self.body["errors"][0]["message"].as_str().unwrap_or("");
        format!("{} {message}", self.status.as_u16()).trim_end().to_owned()
    }

    pub fn str(&self, field: &str) -> anyhow::Result<String> {
        self.body[field].as_str().map(str::to_owned).with_context(|| format!("no `{field}` in {}", self.body))
    }
}

pub const PASSWORD: &str = "benchmark-password";

#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    routes: Arc<Routes>,
}

impl Api {
    pub fn new(routes: Routes) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(1024)
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Self { http, routes: Arc::new(routes) })
    }

    fn request(&self, method: Method, path: &str, session: Option<&Session>) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.routes.base_for(path));
        let request = self.http.request(method, url);
        match session {
            Some(session) => request.bearer_auth(&session.token),
            None => request,
        }
    }

    /// Sends a request and reads the whole body without parsing it (what a browser pays).
    pub async fn raw(&self, method: Method, path: &str) -> Result<(StatusCode, usize), String> {
        let response = self.request(method, path, None).send().await.map_err(|err| transport(&err))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|err| transport(&err))?;
        Ok((status, body.len()))
    }

    /// Sends a GET and returns its status, the number of items of its JSON array body and the
    /// path of the `Link: <...>; rel="next"` header, if any.
    pub async fn page(&self, path: &str) -> Result<(StatusCode, usize, Option<String>), String> {
        let response = self.request(Method::GET, path, None).send().await.map_err(|err| transport(&err))?;
        let status = response.status();
        let next =
            response.headers().get(reqwest::header::LINK).and_then(|value| value.to_str().ok()).and_then(next_link);
        let bytes = response.bytes().await.map_err(|err| transport(&err))?;
        let items = serde_json::from_slice::<Vec<Value>>(&bytes).map_or(0, |items| items.len());
        Ok((status, items, next))
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        session: Option<&Session>,
        body: Option<Value>,
    ) -> Result<Reply, String> {
        let mut request = self.request(method, path, session);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|err| transport(&err))?;
        let status = response.status();
        let cookie = response.headers().get(reqwest::header::SET_COOKIE).cloned();
        let bytes = response.bytes().await.map_err(|err| transport(&err))?;
        let mut body =
            if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        // Sessions come back as a cookie; keep the token with the body for `sign_up`/`sign_in`.
        if let Some(token) = cookie.as_ref().and_then(|value| value.to_str().ok()).and_then(session_token) {
            body["__session"] = Value::String(token.to_owned());
        }
        Ok(Reply { status, body })
    }

    async fn session(&self, path: &str, email: &str) -> anyhow::Result<Session> {
        let reply = self
            .call(Method::POST, path, None, Some(json!({ "email": email, "password": PASSWORD })))
            .await
            .map_err(anyhow::Error::msg)?;
        if !reply.status.is_success() {
            bail!("{path} answered {}", reply.label());
        }
        Ok(Session { email: email.to_owned(), token: reply.str("__session")? })
    }

    pub async fn sign_up(&self, email: &str) -> anyhow::Result<Session> {
        self.session("/api/users/signup", email).await
    }

    pub async fn sign_in(&self, email: &str) -> anyhow::Result<Session> {
        self.session("/api/users/signin", email).await
    }

    pub async fn create_ticket(&self, seller: &Session, title: &str, price: f64) -> Result<Reply, String> {
        self.call(Method::POST, "/api/tickets", Some(seller), Some(json!({ "title": title, "price": price }))).await
    }

    pub async fn order(&self, buyer: &Session, ticket_id: &str) -> Result<Reply, String> {
        self.call(Method::POST, "/api/orders", Some(buyer), Some(json!({ "ticketId": ticket_id }))).await
    }

    pub async fn pay(&self, buyer: &Session, order_id: &str) -> Result<Reply, String> {
        self.call(Method::POST, "/api/payments", Some(buyer), Some(json!({ "orderId": order_id, "token": "tok_visa" })))
            .await
    }

    pub async fn show_order(&self, buyer: &Session, order_id: &str) -> Result<Reply, String> {
        self.call(Method::GET, &format!("/api/orders/{order_id}"), Some(buyer), None).await
    }

    pub async fn list_orders(&self, buyer: &Session) -> Result<Reply, String> {
        self.call(Method::GET, "/api/orders", Some(buyer), None).await
    }
}

fn transport(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timeout".to_owned()
    } else if err.is_connect() {
        "connection refused".to_owned()
    } else {
        "transport error".to_owned()
    }
}

/// The target of the `rel="next"` link of a `Link` header, as a path (`/api/tickets?...`).
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|link| {
        let (target, params) = link.trim().split_once(';')?;
        params.split(';').any(|param| param.trim() == "rel=\"next\"").then_some(())?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        // An absolute URL keeps only its path: the bench routes by path itself.
        let path = match target.find("://") {
            Some(scheme) => &target[target[scheme + 3..].find('/').map(|at| scheme + 3 + at)?..],
            None => target,
        };
        Some(path.to_owned())
    })
}

/// The value of the `session` cookie in a `Set-Cookie` header.
fn session_token(header: &str) -> Option<&str> {
    let pair = header.split(';').next()?.trim();
    pair.strip_prefix("session=").filter(|token| !token.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_session_cookie() {
        assert_eq!(session_token("session=abc.def; HttpOnly; Path=/"), Some("abc.def"));
        assert_eq!(session_token("session=; Max-Age=0"), None);
        assert_eq!(session_token("other=1"), None);
    }

    #[test]
    fn routes_by_prefix() {
        let routes = Routes::new("a", "t", "o", "p", "w");
        assert_eq!(routes.base_for("/api/users/signin"), "a");
        assert_eq!(routes.base_for("/api/tickets/1"), "t");
        assert_eq!(routes.base_for("/api/orders"), "o");
        assert_eq!(routes.base_for("/api/payments"), "p");
        assert_eq!(routes.base_for("/"), "w");
        assert_eq!(routes.base_for("/?cursor=abc"), "w");
    }

    #[test]
    fn more_instances_of_a_service_take_its_requests_in_turn() {
        let mut routes = Routes::new("a", "t", "o", "p", "w");
        routes.more_orders = vec!["o2".into()];
        routes.more_tickets = vec!["t2".into()];
        // Interleaved, each service still alternates between its own instances.
        let both: Vec<&str> =
            (0..4).flat_map(|_| [routes.base_for("/api/orders"), routes.base_for("/api/tickets")]).collect();
        assert_eq!(both, ["o", "t", "o2", "t2", "o", "t", "o2", "t2"]);
        assert_eq!(routes.base_for("/api/payments"), "p", "other services keep their one instance");
    }

    #[test]
    fn follows_the_next_link() {
        assert_eq!(
            next_link(r#"</api/tickets?limit=200&cursor=AbC_9>; rel="next""#).as_deref(),
            Some("/api/tickets?limit=200&cursor=AbC_9")
        );
        assert_eq!(
            next_link(r#"<http://127.0.0.1:3000/api/tickets?cursor=x>; rel="next""#).as_deref(),
            Some("/api/tickets?cursor=x")
        );
        assert_eq!(
            next_link(r#"</api/tickets?cursor=a>; rel="prev", </api/tickets?cursor=b>; rel="next""#).as_deref(),
            Some("/api/tickets?cursor=b")
        );
        assert_eq!(next_link(r#"</api/tickets?cursor=a>; rel="prev""#), None);
    }
}
