//! CSRF protection by double submit: a random token lives in an `HttpOnly`,
//! `SameSite=Strict` cookie and in a hidden `_csrf` field of every form; a POST whose field
//! does not match its cookie (compared in constant time) is refused with 403.
//!
//! Another site can make a browser send our cookies, but it can read neither the cookie nor
//! our pages, so it cannot know the token to put in its forged form. Over TLS the cookie is
//! `__Host-csrf`, which a sibling subdomain cannot plant. The check is a layer over every
//! page route, so no handler can forget it.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
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
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn well_formed(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| well_formed(value))
}

fn set_cookie(name: &str, token: &str, https: bool) -> HeaderValue {
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{name}={token}; Path=/; HttpOnly; SameSite=Strict{secure}"))
        .expect("a hex token is a valid header value")
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

/// Checks the token of unsafe requests, and gives every page a token for its forms (setting
/// the cookie on first visit).
pub async fn protect(State(max_body_bytes): State<usize>, request: Request, next: Next) -> Response {
    let https = platform::session::is_https(request.headers(), request.uri());
    let name = cookie_name(https);
    let existing = cookie(request.headers(), name);
    let mut request = request;
    if !is_safe(request.method()) {
        let Some(expected) = &existing else {
            tracing::info!("form refused: no CSRF cookie");
            return crate::pages::csrf_failure();
        };
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
    let (token, fresh) = match existing {
        Some(token) => (token, false),
        None => (new_token(), true),
    };
    request.extensions_mut().insert(CsrfToken(token.clone()));
    let mut response = next.run(request).await;
    if fresh {
        response.headers_mut().append(header::SET_COOKIE, set_cookie(name, &token, https));
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
