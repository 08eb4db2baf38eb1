//! CSRF protection: a random secret lives in an `HttpOnly`, `SameSite=Strict` cookie; every
//! form carries, in a hidden `_csrf` field, an HMAC of that secret and of the visitor's
//! `session` cookie under the servers' key. A POST whose field is not that MAC (compared in
//! constant time) is refused with 403, and so is one whose `Origin` is another origin or whose
//! `Sec-Fetch-Site` says another site sent it.
//!
//! Another site can make a browser send our cookies, but it can read neither the cookie nor
//! our pages. Whoever can plant a cookie for our host (a sibling port or subdomain, a plain-http
//! hop) still cannot forge the field: it is bound to the victim's session and needs the server
//! key (a bare double submit accepted any value present in both places). Over TLS the cookie is
//! `__Host-csrf`, which a sibling subdomain cannot plant. The check is a layer over every
//! page route, so no handler can forget it.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use cookie::{Cookie, SameSite};
use rand::Rng;
use subtle::ConstantTimeEq;

/// The form field holding the token.
pub const FIELD: &str = "_csrf";

/// The visitor's token, for the forms of the page being rendered.
#[derive(Debug, Clone)]
pub struct CsrfToken(pub String);

fn cookie_name(https: bool) -> &'static str {
    if https { "__Host-csrf" } else { "csrf" }
}

/// 32 random bytes, hex.
fn new_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

fn well_formed(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    httpkit::session::cookie_values(headers, name).next().filter(|value| well_formed(value)).map(str::to_owned)
}

/// `Path=/` and `Secure` (over TLS) are what the `__Host-` prefix requires of the cookie.
fn set_cookie(name: &str, token: &str, https: bool) -> HeaderValue {
    let cookie = Cookie::build((name, token)).path("/").http_only(true).same_site(SameSite::Strict).secure(https);
    HeaderValue::from_str(&cookie.to_string()).expect("a hex token is a valid header value")
}

/// Whether `submitted` is the token (constant time, so timing tells nothing about it).
fn matches(submitted: &str, expected: &str) -> bool {
    submitted.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// The value of the form field [`FIELD`] in a urlencoded body.
fn submitted_token(body: &[u8]) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(name, _)| name == FIELD)
        .map(|(_, value)| value)
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// What the check needs: the body cap and the servers' key.
#[derive(Clone)]
pub struct CsrfConfig {
    pub max_body_bytes: usize,
    pub keys: std::sync::Arc<httpkit::session::SessionKeys>,
}

/// The form token for a cookie secret and session: hex HMAC, so it is a well-formed token too.
fn form_token(keys: &httpkit::session::SessionKeys, secret: &str, session: Option<&str>) -> String {
    let mac = keys.mac("csrf", &[secret.as_bytes(), session.unwrap_or_default().as_bytes()]);
    hex::encode(mac)
}

/// Whether a browser says this request was sent by another site: `Sec-Fetch-Site` other than
/// same-origin/none, or an `Origin` other than our own (including `null`). Requests without
/// either (older browsers, scripts) rely on the token alone.
fn cross_site(headers: &HeaderMap, https: bool) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let scheme = if https { "https" } else { "http" };
    match (origin.to_str(), host) {
        (Ok(origin), Some(host)) => !origin.eq_ignore_ascii_case(&format!("{scheme}://{host}")),
        _ => true,
    }
}

/// Checks the token of unsafe requests, and gives every page a token for its forms (setting
/// the cookie on first visit).
pub async fn protect(State(config): State<CsrfConfig>, request: Request, next: Next) -> Response {
    let max_body_bytes = config.max_body_bytes;
    let https = httpkit::session::is_https(request.headers(), request.uri());
    let name = cookie_name(https);
    let existing = cookie(request.headers(), name);
    let session = httpkit::session::session_cookie(request.headers()).map(str::to_owned);
    let mut request = request;
    if !is_safe(request.method()) {
        if cross_site(request.headers(), https) {
            tracing::info!("form refused: sent from another origin");
            return crate::pages::csrf_failure();
        }
        let Some(secret) = &existing else {
            tracing::info!("form refused: no CSRF cookie");
            return crate::pages::csrf_failure();
        };
        let expected = &form_token(&config.keys, secret, session.as_deref());
        let (parts, body) = request.into_parts();
        let bytes = match to_bytes(body, max_body_bytes).await {
            Ok(bytes) => bytes,
            Err(_) => return crate::pages::error_page(StatusCode::PAYLOAD_TOO_LARGE, "That form is too large."),
        };
        if !submitted_token(&bytes).is_some_and(|submitted| matches(&submitted, expected)) {
            tracing::info!("form refused: missing or wrong CSRF token");
            return crate::pages::csrf_failure();
        }
        request = Request::from_parts(parts, Body::from(bytes));
    }
    let (secret, fresh) = match existing {
        Some(secret) => (secret, false),
        None => (new_token(), true),
    };
    request.extensions_mut().insert(CsrfToken(form_token(&config.keys, &secret, session.as_deref())));
    let mut response = next.run(request).await;
    if fresh {
        response.headers_mut().append(header::SET_COOKIE, set_cookie(name, &secret, https));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_well_formed() {
        let (a, b) = (new_token(), new_token());
        assert!(well_formed(&a) && well_formed(&b));
        assert_ne!(a, b);
    }

    #[test]
    fn only_the_exact_token_matches() {
        let token = new_token();
        assert!(matches(&token, &token));
        assert!(!matches(&token[..63], &token));
        assert!(!matches("", &token));
        assert!(!matches(&new_token(), &token));
    }

    #[test]
    fn the_token_is_read_from_the_form_and_the_right_cookie() {
        assert_eq!(submitted_token(b"title=a&_csrf=abc&price=1").as_deref(), Some("abc"));
        assert_eq!(submitted_token(b"title=a"), None);
        let token = new_token();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(&format!("session=x; csrf={token}")).unwrap());
        assert_eq!(cookie(&headers, "csrf"), Some(token.clone()));
        assert_eq!(cookie(&headers, "__Host-csrf"), None);
        headers.insert(header::COOKIE, HeaderValue::from_static("csrf=not-a-token"));
        assert_eq!(cookie(&headers, "csrf"), None);
    }

    /// Finding: a planted `csrf` cookie with the same value in the field passed.
    #[test]
    fn the_form_token_is_bound_to_the_cookie_the_session_and_the_key() {
        let keys = httpkit::session::SessionKeys::new(b"web key", time::Duration::hours(1));
        let secret = new_token();
        let token = form_token(&keys, &secret, Some("jwt-a"));
        assert!(well_formed(&token) && token != secret);
        assert_eq!(token, form_token(&keys, &secret, Some("jwt-a")));
        assert_ne!(token, form_token(&keys, &secret, Some("jwt-b")), "another session");
        assert_ne!(token, form_token(&keys, &secret, None));
        assert_ne!(token, form_token(&keys, &new_token(), Some("jwt-a")), "another cookie");
        let other_key = httpkit::session::SessionKeys::new(b"other key", time::Duration::hours(1));
        assert_ne!(token, form_token(&other_key, &secret, Some("jwt-a")), "another server key");
    }

    #[test]
    fn other_origins_are_cross_site() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static("shop.example"));
            for (name, value) in pairs {
                headers.insert(*name, HeaderValue::from_static(value));
            }
            headers
        };
        assert!(!cross_site(&headers(&[]), false));
        assert!(!cross_site(&headers(&[("origin", "http://shop.example")]), false));
        assert!(!cross_site(&headers(&[("origin", "https://shop.example")]), true));
        assert!(cross_site(&headers(&[("origin", "http://shop.example")]), true), "a plain-http page posting to TLS");
        assert!(cross_site(&headers(&[("origin", "http://127.0.0.1:1")]), false));
        assert!(cross_site(&headers(&[("origin", "null")]), false));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin")]), false));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "none")]), false));
        assert!(cross_site(&headers(&[("sec-fetch-site", "same-site")]), false));
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")]), false));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_tls() {
        let plain = set_cookie(cookie_name(false), &new_token(), false);
        let plain = plain.to_str().unwrap();
        assert!(plain.starts_with("csrf=") && plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(!plain.contains("Secure"));
        let tls = set_cookie(cookie_name(true), &new_token(), true);
        let tls = tls.to_str().unwrap();
        assert!(tls.starts_with("__Host-csrf=") && tls.contains("; Secure") && tls.contains("Path=/"));
    }
}
