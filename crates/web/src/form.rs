//! Form posts read into a handler's fields, or the friendly error page.
//!
//! axum's `Form` answers a malformed post in its own words (a 422 "Failed to deserialize form
//! body", a 415 in plain text); a visitor gets the site's error page instead, with a status that
//! says what was wrong: 415 for a body that is not a form, 413 for one that is too large, 400
//! for one that cannot be read (a field given twice, bytes that are not UTF-8, a missing field).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::de::DeserializeOwned;

use crate::pages::error_page;

const RELOAD: &str = "Go back, reload the page and try again.";

/// A form post (`application/x-www-form-urlencoded`) read into `T`.
#[derive(Debug)]
pub struct PageForm<T>(pub T);

impl<T, S> FromRequest<S> for PageForm<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_form(request.headers()) {
            tracing::info!(content_type = ?request.headers().get(header::CONTENT_TYPE), "form refused: not a form post");
            return Err(error_page(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("That was not sent the way our forms send it. {RELOAD}"),
            ));
        }
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                error_page(StatusCode::PAYLOAD_TOO_LARGE, "That form is too large.")
            } else {
                unreadable(&rejection.body_text())
            }
        })?;
        if !is_utf8_form(&bytes) {
            return Err(unreadable("not UTF-8"));
        }
        serde_urlencoded::from_bytes(&bytes).map(Self).map_err(|err| unreadable(&err.to_string()))
    }
}

fn unreadable(cause: &str) -> Response {
    tracing::info!(cause, "form refused: cannot be read");
    error_page(StatusCode::BAD_REQUEST, &format!("That form could not be read. {RELOAD}"))
}

/// `application/x-www-form-urlencoded`, whatever its parameters (`; charset=UTF-8`).
fn is_form(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

/// Whether every name and value decodes to UTF-8. The URL-encoded parser would silently turn
/// bad bytes into U+FFFD, so a title would be stored with characters nobody typed.
fn is_utf8_form(body: &[u8]) -> bool {
    body.split(|&b| b == b'&')
        .flat_map(|pair| pair.splitn(2, |&b| b == b'='))
        .all(|part| percent_encoding::percent_decode(part).decode_utf8().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_utf8_names_and_values_are_read() {
        assert!(is_utf8_form(b"title=Caf%C3%A9+Tacvba&price=1"));
        assert!(is_utf8_form("title=Café".as_bytes()));
        assert!(is_utf8_form(b""));
        assert!(!is_utf8_form(b"title=%FF&price=1"));
        assert!(!is_utf8_form(b"title=ok&pr%C3ice=1"));
        assert!(!is_utf8_form(b"title=\xff"));
    }

    #[test]
    fn the_content_type_must_be_a_form() {
        let mut headers = axum::http::HeaderMap::new();
        assert!(!is_form(&headers));
        for (value, form) in [
            ("application/x-www-form-urlencoded", true),
            ("application/x-www-form-urlencoded; charset=UTF-8", true),
            ("Application/X-WWW-Form-Urlencoded", true),
            ("text/plain", false),
            ("application/json", false),
            ("multipart/form-data; boundary=x", false),
        ] {
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            assert_eq!(is_form(&headers), form, "{value}");
        }
    }
}
