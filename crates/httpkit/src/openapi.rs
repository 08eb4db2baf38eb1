//! What the OpenAPI description says the same way for every service: how a client signs in
//! (`securitySchemes`) and the answers the shared HTTP layer gives on any route (413 from the
//! body limit, 500 and 503 from the error envelope, `Retry-After`). How a price reads is the
//! contract's (`contract::money::price_input`, `price_output`).
//!
//! Each service documents its own operations next to their handlers (utoipa-axum's router, so
//! a route cannot exist undocumented); [`complete`] adds what those handlers do not decide.

use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi, PathItem, Ref, RefOr, Response, ResponseBuilder, path::Operation,
};

/// The security scheme of the `session` cookie that sign-up and sign-in set.
pub const SESSION_COOKIE: &str = "session";
/// The security scheme of `Authorization: Bearer <jwt>` (the same token as the cookie).
pub const BEARER: &str = "bearer";

/// The schemes, and the answers of the shared HTTP layer, added to every operation of `spec`.
pub fn complete(spec: &mut OpenApi) {
    let components = spec.components.get_or_insert_with(Default::default);
    components.security_schemes.insert(
        SESSION_COOKIE.to_owned(),
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            "session",
            "The JWT that sign-up and sign-in set as the `session` cookie",
        ))),
    );
    components.security_schemes.insert(
        BEARER.to_owned(),
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("JWT")
                .description(Some("The same JWT as the `session` cookie, for API clients"))
                .build(),
        ),
    );
    components
        .schemas
        .entry("ErrorBody".to_owned())
        .or_insert_with(<contract::error::ErrorBody as utoipa::PartialSchema>::schema);
    components
        .schemas
        .entry("ErrorItem".to_owned())
        .or_insert_with(<contract::error::ErrorItem as utoipa::PartialSchema>::schema);
    for item in spec.paths.paths.values_mut() {
        for operation in operations(item) {
            let takes_body = operation.request_body.is_some();
            let responses = &mut operation.responses.responses;
            if takes_body {
                responses
                    .entry("413".to_owned())
                    .or_insert_with(|| error("The body is larger than MAX_BODY_BYTES", false));
            }
            responses
                .entry("500".to_owned())
                .or_insert_with(|| error("Something unexpected; the details are only in the server's logs", false));
            responses
                .entry("503".to_owned())
                .or_insert_with(|| error("A dependency is unavailable or the service is starting; retry", true));
            if let Some(RefOr::T(limited)) = responses.get_mut("429") {
                limited.headers.insert("Retry-After".to_owned(), retry_after());
            }
        }
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn retry_after() -> utoipa::openapi::Header {
    HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)))
        .description(Some("Seconds to wait before retrying"))
        .build()
}

/// An answer in the error envelope.
fn error(description: &str, with_retry_after: bool) -> RefOr<Response> {
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build());
    if with_retry_after {
        response = response.header("Retry-After", retry_after());
    }
    RefOr::T(response.build())
}
