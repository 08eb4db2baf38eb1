//! Rendering: the templates (embedded in the binary), the pages every route shares (404,
//! the expired-form page, the error page), and the headers every response carries.
//!
//! Templates are MiniJinja with HTML auto-escaping; printing a value the handler did not
//! provide is an error (caught by the template tests), not an empty string.

use std::sync::{Arc, LazyLock};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Environment, UndefinedBehavior, Value, context};

use crate::assets;

/// The name in the header of every page.
pub const BRAND: &str = "Ticketing";

const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("../templates/layout.html")),
    ("macros.html", include_str!("../templates/macros.html")),
    ("alerts.html", include_str!("../templates/alerts.html")),
    ("home.html", include_str!("../templates/home.html")),
    ("form_page.html", include_str!("../templates/form_page.html")),
    ("auth.html", include_str!("../templates/auth.html")),
    ("signout.html", include_str!("../templates/signout.html")),
    ("ticket.html", include_str!("../templates/ticket.html")),
    ("ticket_form.html", include_str!("../templates/ticket_form.html")),
    ("orders.html", include_str!("../templates/orders.html")),
    ("order.html", include_str!("../templates/order.html")),
    ("error.html", include_str!("../templates/error.html")),
];

static ENV: LazyLock<Result<Environment<'static>, String>> = LazyLock::new(|| {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    for (name, source) in TEMPLATES {
        env.add_template(name, source).map_err(|err| format!("template {name}: {err:#}"))?;
    }
    env.add_global("brand", BRAND);
    // Our own constant URLs: no escaping needed, and the page source stays readable.
    let urls = &*assets::URLS;
    env.add_global(
        "assets",
        context! {
            style => Value::from_safe_string(urls.style.clone()),
            countdown => Value::from_safe_string(urls.countdown.clone()),
            stripe_pay => Value::from_safe_string(urls.stripe_pay.clone()),
            favicon => Value::from_safe_string(urls.favicon.clone()),
        },
    );
    Ok(env)
});

/// Fails if a template does not parse.
pub fn check_templates() -> anyhow::Result<()> {
    ENV.as_ref().map(drop).map_err(|err| anyhow::anyhow!("{err}"))
}

/// Renders a template to a string.
pub fn render(template: &str, ctx: Value) -> anyhow::Result<String> {
    let env = ENV.as_ref().map_err(|err| anyhow::anyhow!("{err}"))?;
    env.get_template(template)
        .and_then(|template| template.render(ctx))
        .map_err(|err| anyhow::anyhow!("cannot render {template}: {err:#}"))
}

/// A rendered page. Pages show the visitor's own data and form token: never stored by caches.
pub fn html(status: StatusCode, template: &str, ctx: Value) -> Response {
    match render(template, ctx) {
        Ok(body) => {
            (status, [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Html(body)).into_response()
        }
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "page failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong").into_response()
        }
    }
}

/// A page for something that went wrong: a heading and a sentence, without the header's
/// personal links (the error may have happened before we knew who is asking).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let heading = match status {
        StatusCode::NOT_FOUND => "Page not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::METHOD_NOT_ALLOWED => "Not allowed",
        StatusCode::TOO_MANY_REQUESTS => "Slow down",
        StatusCode::PAYLOAD_TOO_LARGE => "Too large",
        status if status.is_client_error() => "That did not work",
        _ => "Something went wrong",
    };
    html(status, "error.html", context! { heading, message, status => status.as_u16() })
}

pub fn not_found_page() -> Response {
    error_page(StatusCode::NOT_FOUND, "There is nothing here. The link may be wrong, or what it pointed to is gone.")
}

pub fn csrf_failure() -> Response {
    html(
        StatusCode::FORBIDDEN,
        "error.html",
        context! {
            heading => "This form has expired",
            message => "For your safety we did not accept it. Go back, reload the page and try again.",
            status => 403,
        },
    )
}

/// `/auth/signin?next=...`, back to `next` once signed in.
pub fn sign_in_url(next: &str) -> String {
    if next == "/" { "/auth/signin".to_owned() } else { format!("/auth/signin?next={}", encode_query_value(next)) }
}

/// Percent-encodes a query value (keeping `/`, which is harmless there and easier to read).
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Where to go after signing in: a path on this site, never another site (`//evil`,
/// `/\evil` and absolute URLs fall back to the home page).
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.starts_with("/\\")
                && !path.chars().any(|c| c.is_control() || c == '\\') =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

/// The headers every response of the web service carries.
pub struct SecurityHeaders {
    csp: HeaderValue,
}

impl SecurityHeaders {
    /// Our own scripts only, plus Stripe's when its card element is in use.
    pub fn new(stripe: bool) -> Self {
        let csp = if stripe {
            "default-src 'self'; script-src 'self' https://js.stripe.com; frame-src https://js.stripe.com https://hooks.stripe.com; \
             connect-src 'self' https://api.stripe.com; img-src 'self' data:; style-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
        } else {
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
        };
        Self { csp: HeaderValue::from_static(csp) }
    }
}

pub async fn security_headers(State(security): State<Arc<SecurityHeaders>>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.entry(header::CONTENT_SECURITY_POLICY).or_insert_with(|| security.csp.clone());
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/orders")), "/orders");
        assert_eq!(safe_next(Some("/tickets/1?x=2")), "/tickets/1?x=2");
        for evil in ["//evil.example", "/\\evil.example", "https://evil.example", "evil", "/a\\b", "/a\nb", ""] {
            assert_eq!(safe_next(Some(evil)), "/", "{evil:?}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn sign_in_links_encode_where_to_come_back() {
        assert_eq!(sign_in_url("/"), "/auth/signin");
        assert_eq!(sign_in_url("/orders?paid=a&b=c"), "/auth/signin?next=/orders%3Fpaid%3Da%26b%3Dc");
    }

    #[test]
    fn every_template_parses() {
        check_templates().unwrap();
    }

    #[test]
    fn error_pages_are_escaped_and_say_what_happened() {
        let page = render("error.html", context! { heading => "Oops", message => "<script>x</script>", status => 400 })
            .unwrap();
        assert!(page.contains("&lt;script&gt;x&lt;"), "{page}");
        assert!(!page.contains("<script>x"));
        assert!(page.contains("<h1>Oops</h1>"));
        // No personal links on error pages.
        assert!(!page.contains("Sign Out") && !page.contains("Sign In"));
    }
}
