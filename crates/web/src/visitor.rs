//! Who is asking for a page: what the API calls made for them must carry, and the form
//! token their page must embed.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use httpkit::http::PeerAddr;

use crate::csrf::CsrfToken;

#[derive(Debug, Clone)]
pub struct Visitor {
    /// The raw `session` cookie, forwarded as is; the API decides what it is worth.
    pub session: Option<String>,
    /// The visitor's address, as the API should see it.
    pub client_ip: String,
    /// Whether the visitor reached us over TLS.
    pub https: bool,
    pub request_id: Option<HeaderValue>,
    /// The token every form of their page carries.
    pub csrf: String,
    /// Path and query of this request, for "back here after signing in".
    pub path: String,
}

impl Visitor {
    /// `session=<token>` for the API, if the visitor has a session.
    pub fn session_cookie(&self) -> Option<HeaderValue> {
        let session = self.session.as_deref()?;
        HeaderValue::from_str(&cookie::Cookie::new(httpkit::session::COOKIE_NAME, session).to_string()).ok()
    }
}

/// What a page router's state tells about addresses: which proxies to trust for the visitor's.
/// A trait rather than the pages' state type itself, so this module needs nothing of the
/// handlers that use it.
pub trait VisitorAddresses: Send + Sync + 'static {
    fn addresses(&self) -> &httpkit::client_addr::ClientAddresses;
}

impl<W: VisitorAddresses> FromRequestParts<Arc<W>> for Visitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Arc<W>) -> Result<Self, Self::Rejection> {
        let Some(CsrfToken(csrf)) = parts.extensions.get::<CsrfToken>().cloned() else {
            tracing::error!("page route without the CSRF layer");
            return Err(StatusCode::INTERNAL_SERVER_ERROR.into_response());
        };
        let PeerAddr(peer) = PeerAddr::from_request_parts(parts, web).await.unwrap_or(PeerAddr(None));
        Ok(Self {
            session: httpkit::session::session_cookie(&parts.headers).filter(|s| !s.is_empty()).map(str::to_owned),
            client_ip: web.addresses().client_ip(&parts.headers, peer),
            https: httpkit::session::is_https(&parts.headers, &parts.uri),
            request_id: parts.headers.get("x-request-id").cloned(),
            csrf,
            path: parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
        })
    }
}
