//! The pages' only way to the rest of the marketplace: the public HTTP API.
//!
//! Each call is made on the visitor's behalf: it carries their `session` cookie (and none
//! of their other cookies), their address signed with the servers' key (see
//! `httpkit::client_addr`; never `X-Forwarded-For`, which anybody can write), `X-Forwarded-Proto: https`
//! when they came over TLS (so the session cookie the API sets is `Secure`), and the
//! request id, so the logs of both sides line up. One pooled client serves every visitor,
//! so it must never keep cookies itself.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use contract::api::{
    CreatePayment, CurrentUserBody, NewAccount, NewOrder, OrderBody, SessionUser, SignIn, TicketBody, TicketInput,
};
use contract::error::{ErrorBody, ErrorItem};
use contract::money::PriceText;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::visitor::Visitor;

/// A client of the public API.
pub struct Api {
    base: String,
    http: reqwest::Client,
    addresses: httpkit::client_addr::ClientAddresses,
}

/// Why an API call did not give what the page wanted.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    /// The API answered with its error envelope (or at least an error status).
    #[error("the API answered {status}: {errors:?}")]
    Refused { status: StatusCode, errors: Vec<ErrorItem> },
    /// The API could not be reached in time, or answered something unreadable.
    #[error("the API is unavailable: {0:#}")]
    Unavailable(anyhow::Error),
}

impl ApiFailure {
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Refused { status, .. } => Some(*status),
            Self::Unavailable(_) => None,
        }
    }
}

pub type ApiResult<T> = Result<T, ApiFailure>;

/// A page of the tickets for sale, and the cursor of the next one if there is one.
#[derive(Debug, Clone)]
pub struct TicketPage {
    pub tickets: Vec<TicketBody>,
    pub next_cursor: Option<String>,
}

/// What sign-up, sign-in and sign-out hand back: the cookies the browser must get.
pub struct SetCookies(pub Vec<HeaderValue>);

impl Api {
    pub fn new(
        base: &str,
        timeout: Duration,
        addresses: httpkit::client_addr::ClientAddresses,
    ) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base)?;
        anyhow::ensure!(matches!(url.scheme(), "http" | "https"), "API_URL must be an http(s) URL, not {base}");
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ticketing-web/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { base, http, addresses })
    }

    fn request(&self, method: Method, path: &str, visitor: &Visitor) -> reqwest::RequestBuilder {
        let mut request =
            self.http.request(method, format!("{}{path}", self.base)).header(header::ACCEPT, "application/json");
        if let Some(signed) = self.addresses.sign(&visitor.client_ip) {
            request = request.header(httpkit::client_addr::SIGNED_HEADER, signed);
        }
        if let Some(session) = visitor.session_cookie() {
            request = request.header(header::COOKIE, session);
        }
        if visitor.https {
            request = request.header("x-forwarded-proto", "https");
        }
        if let Some(id) = &visitor.request_id {
            request = request.header("x-request-id", id.clone());
        }
        request
    }

    /// Sends the request; a non-2xx answer becomes [`ApiFailure::Refused`].
    async fn send(&self, request: reqwest::RequestBuilder) -> ApiResult<reqwest::Response> {
        let response = request.send().await.map_err(|err| ApiFailure::Unavailable(err.into()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.map_err(|err| ApiFailure::Unavailable(err.into()))?;
        let errors = serde_json::from_slice::<ErrorBody>(&bytes).map(|body| body.errors).unwrap_or_default();
        if status.is_server_error() {
            tracing::warn!(%status, ?errors, "the API failed");
        }
        Err(ApiFailure::Refused { status, errors })
    }

    async fn json<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> ApiResult<T> {
        let response = self.send(request).await?;
        response.json::<T>().await.map_err(|err| ApiFailure::Unavailable(err.into()))
    }

    /// The signed-in user; no call at all for a visitor without a session cookie.
    pub async fn current_user(&self, visitor: &Visitor) -> ApiResult<Option<SessionUser>> {
        if visitor.session.is_none() {
            return Ok(None);
        }
        let body: CurrentUserBody = self.json(self.request(Method::GET, "/api/users/currentuser", visitor)).await?;
        Ok(body.current_user)
    }

    pub async fn sign_up(&self, visitor: &Visitor, email: &str, password: &str) -> ApiResult<SetCookies> {
        let body = NewAccount { email: email.to_owned(), password: password.to_owned() };
        self.credentials("/api/users/signup", visitor, &body).await
    }

    pub async fn sign_in(&self, visitor: &Visitor, email: &str, password: &str) -> ApiResult<SetCookies> {
        let body = SignIn { email: email.to_owned(), password: password.to_owned() };
        self.credentials("/api/users/signin", visitor, &body).await
    }

    async fn credentials(&self, path: &str, visitor: &Visitor, body: &impl Serialize) -> ApiResult<SetCookies> {
        let request = self.request(Method::POST, path, visitor).json(body);
        Ok(set_cookies(self.send(request).await?.headers()))
    }

    pub async fn sign_out(&self, visitor: &Visitor) -> ApiResult<SetCookies> {
        let request = self.request(Method::POST, "/api/users/signout", visitor).json(&json!({}));
        Ok(set_cookies(self.send(request).await?.headers()))
    }

    /// One page of the tickets for sale: from `cursor` on (the first page without one), only
    /// titles containing `q` when given; the API's page size.
    pub async fn list_tickets(
        &self,
        visitor: &Visitor,
        cursor: Option<&str>,
        q: Option<&str>,
    ) -> ApiResult<TicketPage> {
        let params: Vec<(&str, &str)> =
            [("q", q), ("cursor", cursor)].into_iter().filter_map(|(name, value)| Some((name, value?))).collect();
        let mut path = "/api/tickets".to_owned();
        if !params.is_empty() {
            let query = serde_urlencoded::to_string(&params).map_err(|err| ApiFailure::Unavailable(err.into()))?;
            path = format!("{path}?{query}");
        }
        let response = self.send(self.request(Method::GET, &path, visitor)).await?;
        let next_cursor = next_cursor(response.headers());
        let tickets = response.json().await.map_err(|err| ApiFailure::Unavailable(err.into()))?;
        Ok(TicketPage { tickets, next_cursor })
    }

    /// `id` must be a parsed UUID: it goes into the path.
    pub async fn ticket(&self, visitor: &Visitor, id: uuid::Uuid) -> ApiResult<TicketBody> {
        self.json(self.request(Method::GET, &format!("/api/tickets/{id}"), visitor)).await
    }

    /// Lists a ticket; `price` as the seller typed it (see `routes::price_for_api`).
    pub async fn create_ticket(&self, visitor: &Visitor, title: &str, price: PriceText) -> ApiResult<TicketBody> {
        let body = TicketInput { title: Value::from(title), price };
        self.json(self.request(Method::POST, "/api/tickets", visitor).json(&body)).await
    }

    pub async fn update_ticket(
        &self,
        visitor: &Visitor,
        id: uuid::Uuid,
        title: &str,
        price: PriceText,
    ) -> ApiResult<()> {
        let body = TicketInput { title: Value::from(title), price };
        self.send(self.request(Method::PUT, &format!("/api/tickets/{id}"), visitor).json(&body)).await.map(drop)
    }

    /// Orders a ticket.
    pub async fn create_order(&self, visitor: &Visitor, ticket_id: uuid::Uuid) -> ApiResult<OrderBody> {
        let body = NewOrder { ticket_id: Value::from(ticket_id.to_string()) };
        self.json(self.request(Method::POST, "/api/orders", visitor).json(&body)).await
    }

    pub async fn list_orders(&self, visitor: &Visitor) -> ApiResult<Vec<OrderBody>> {
        self.json(self.request(Method::GET, "/api/orders", visitor)).await
    }

    pub async fn order(&self, visitor: &Visitor, id: uuid::Uuid) -> ApiResult<OrderBody> {
        self.json(self.request(Method::GET, &format!("/api/orders/{id}"), visitor)).await
    }

    pub async fn cancel_order(&self, visitor: &Visitor, id: uuid::Uuid) -> ApiResult<()> {
        self.send(self.request(Method::DELETE, &format!("/api/orders/{id}"), visitor)).await.map(drop)
    }

    pub async fn pay(&self, visitor: &Visitor, order_id: uuid::Uuid, token: &str) -> ApiResult<()> {
        let body = CreatePayment { order_id: Value::from(order_id.to_string()), token: Value::from(token) };
        self.send(self.request(Method::POST, "/api/payments", visitor).json(&body)).await.map(drop)
    }
}

/// The `cursor` of the URL in `Link: <...>; rel="next"`, if the API gave one.
fn next_cursor(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|link| {
            let (target, params) = link.trim().split_once(';')?;
            let is_next = params.split(';').any(|param| param.trim() == "rel=\"next\"");
            let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
            let query = target.split_once('?')?.1;
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
            is_next.then(|| pairs.into_iter().find(|(name, _)| name == "cursor").map(|(_, cursor)| cursor))?
        })
}

fn set_cookies(headers: &HeaderMap) -> SetCookies {
    SetCookies(headers.get_all(header::SET_COOKIE).iter().cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(header::LINK, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn the_next_cursor_is_read_from_the_link_header() {
        let next = |values: &[&str]| next_cursor(&links(values));
        assert_eq!(next(&[r#"</api/tickets?limit=50&cursor=AbC-_9>; rel="next""#]).as_deref(), Some("AbC-_9"));
        assert_eq!(
            next(&[r#"</api/tickets?q=a%26b&cursor=x%2By>; rel="next""#]).as_deref(),
            Some("x+y"),
            "percent-decoded"
        );
        assert_eq!(next(&[r#"</x?cursor=p>; rel="prev", </x?cursor=n>; rel="next""#]).as_deref(), Some("n"));
        assert_eq!(next(&[r#"</x?cursor=p>; rel="prev""#]), None);
        assert_eq!(next(&[r#"</api/tickets?limit=50>; rel="next""#]), None);
        assert_eq!(next(&["garbage"]), None);
        assert_eq!(next(&[]), None);
    }
}
