//! The error envelope: `{"errors":[{"message":"...","field":"..."}]}` is what every client sees
//! when a request fails. `httpkit::error` turns errors into it; the pages read it back.

use serde::{Deserialize, Serialize};

/// One problem in a request: a message for people and, for input errors, the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorItem {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorItem {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self { message: message.into(), field: Some(field.to_owned()) }
    }
}

/// The envelope itself.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub errors: Vec<ErrorItem>,
}

/// A UUID in its one canonical spelling (lowercase, hyphenated). `uuid` also reads braces,
/// `urn:uuid:`, 32 bare hex digits and upper case; each would be a second URL for one resource
/// (and a second cache key), so they are unknown paths instead.
pub fn parse_canonical_uuid(text: &str) -> Option<uuid::Uuid> {
    let id = uuid::Uuid::try_parse(text).ok()?;
    (text.len() == 36 && id.hyphenated().to_string() == text).then_some(id)
}
