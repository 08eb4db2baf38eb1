//! Sessions: an HS256 JWT carried in the `session` cookie or an `Authorization: Bearer` header.
//!
//! A token that is missing, malformed, expired, signed with another key or with another
//! algorithm (including `alg=none`) makes the request anonymous; it is never an error by itself.
//! Handlers ask for [`MaybeUser`] or [`RequireUser`]; the keys travel in a request extension
//! put there by [`crate::http::service_router`], so services need no extra state for this.
//!
//! Every token carries a session id (`jti`, a UUIDv7). The extractors also refuse a token whose
//! session was revoked (signed out): they ask the router's [`RevocationCheck`], which
//! [`crate::http::service_router`] installs beside the keys. The list itself is stored data
//! (`platform::revocation`, kept in each service's own database), so this layer knows it only
//! through that trait and links no database. A token without a `jti` (issued before sessions
//! could be revoked) is anonymous, since it could never be signed out.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use cookie::{Cookie, SameSite};
use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::ApiError;

pub const COOKIE_NAME: &str = "session";

/// Whether a session was signed out: asked on every request that carries a valid token.
pub trait RevocationCheck: Send + Sync {
    /// Whether session `id` (a token's `jti`) was revoked. An error is the client's answer (a
    /// 503 while the list cannot be read), since the request cannot be trusted meanwhile.
    fn is_revoked(&self, id: Uuid) -> BoxFuture<'_, Result<bool, ApiError>>;
}

/// The revocation check a router's extractors consult, as its request extension.
pub type Revocations = Arc<dyn RevocationCheck>;

/// What a session token says about its holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub id: Uuid,
    pub email: String,
    pub iat: i64,
    pub exp: i64,
    /// The session id, named in `session:revoked` when the session is signed out **(ours)**.
    pub jti: Uuid,
}

/// The signed-in user of a request.
pub type CurrentUser = Claims;

/// Signs and verifies session tokens with one shared secret.
pub struct SessionKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    lifetime: time::Duration,
    /// Derived from the session secret for the other things the servers sign (the visitor's
    /// address the pages pass to the API, CSRF tokens): a MAC of one purpose is never a token.
    mac_key: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKeys").field("lifetime", &self.lifetime).finish_non_exhaustive()
    }
}

impl SessionKeys {
    pub fn new(secret: &[u8], lifetime: time::Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            lifetime,
            mac_key: hmac_sha256(secret, &[b"ticketing derived MAC key v1"]),
        }
    }

    /// HMAC-SHA256 of `parts` (each length-prefixed, so parts cannot be shifted into each
    /// other) under the derived key, with `purpose` first.
    pub fn mac(&self, purpose: &str, parts: &[&[u8]]) -> [u8; 32] {
        let mut all: Vec<&[u8]> = vec![purpose.as_bytes()];
        all.extend_from_slice(parts);
        hmac_sha256(&self.mac_key, &all)
    }

    /// Whether `mac` is [`Self::mac`] of these parts; constant time.
    pub fn verify_mac(&self, purpose: &str, parts: &[&[u8]], mac: &[u8]) -> bool {
        use hmac::Mac;
        let mut hmac = <hmac::Hmac<sha2::Sha256>>::new_from_slice(&self.mac_key).expect("any key length");
        for part in std::iter::once(purpose.as_bytes()).chain(parts.iter().copied()) {
            hmac.update(&(part.len() as u64).to_be_bytes());
            hmac.update(part);
        }
        hmac.verify_slice(mac).is_ok()
    }

    pub fn lifetime(&self) -> time::Duration {
        self.lifetime
    }

    /// A fresh token for this user, valid for the configured lifetime.
    pub fn issue(&self, id: Uuid, email: &str) -> anyhow::Result<String> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let claims = Claims {
            id,
            email: email.to_owned(),
            iat: now,
            exp: now + self.lifetime.whole_seconds(),
            jti: Uuid::now_v7(),
        };
        Ok(jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?)
    }

    /// The claims of a valid token; `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok().map(|data| data.claims)
    }

    /// The user a request's headers prove, if any. The bearer header wins over the cookie.
    pub fn user_from_headers(&self, headers: &HeaderMap) -> Option<Claims> {
        token_from_headers(headers).and_then(|token| self.verify(token))
    }
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::Mac;
    let mut hmac = <hmac::Hmac<sha2::Sha256>>::new_from_slice(key).expect("any key length");
    for part in parts {
        hmac.update(&(part.len() as u64).to_be_bytes());
        hmac.update(part);
    }
    hmac.finalize().into_bytes().into()
}

fn token_from_headers(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(str::trim);
    bearer.or_else(|| session_cookie(headers))
}

/// The raw `session` cookie of a request, if it has exactly one. Two different `session`
/// cookies mean someone planted one (a sibling subdomain or a plain-http hop can set a cookie
/// for this host, and the browser sends both): neither is trusted, so the request is anonymous
/// rather than possibly acting in the planter's session.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    let mut values = cookie_values(headers, COOKIE_NAME);
    let first = values.next()?;
    values.all(|other| other == first).then_some(first)
}

/// The values of the cookies called `name` in a request's `Cookie` headers, as sent (not
/// percent-decoded), in order: a browser may send several of one name (for other paths or
/// domains, or planted), and the caller decides what that means.
pub fn cookie_values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .filter(move |cookie| cookie.name() == name)
        .filter_map(|cookie| cookie.value_raw())
}

/// Whether the client reached us over TLS, directly or through a proxy that says so.
/// Only requests that crossed TLS get `Secure` cookies, so the embedded default on
/// plain-http loopback keeps working for every client.
pub fn is_https(headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(',').next().unwrap_or("").trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.to_ascii_lowercase().contains("proto=https"));
    uri.scheme_str() == Some("https") || forwarded_proto == Some(true) || forwarded == Some(true)
}

/// `Set-Cookie` for a new session.
pub fn session_cookie_header(token: &str, max_age: time::Duration, secure: bool) -> HeaderValue {
    set_session_cookie(token, max_age, secure)
}

/// `Set-Cookie` that removes the session.
pub fn clear_session_cookie_header(secure: bool) -> HeaderValue {
    set_session_cookie("", time::Duration::ZERO, secure)
}

/// The session cookie: not readable by scripts, sent when another site links here (a top-level
/// GET) but not with its forms' POSTs or its fetches, `Secure` only when the client came over
/// TLS (so plain-http loopback keeps working).
fn set_session_cookie(token: &str, max_age: time::Duration, secure: bool) -> HeaderValue {
    let cookie = Cookie::build((COOKIE_NAME, token))
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(max_age)
        .secure(secure);
    HeaderValue::from_str(&cookie.to_string()).expect("a JWT is a valid header value")
}

fn keys(parts: &Parts) -> Result<&Arc<SessionKeys>, ApiError> {
    parts
        .extensions
        .get::<Arc<SessionKeys>>()
        .ok_or_else(|| ApiError::Unexpected(anyhow::anyhow!("session keys are not installed on this router")))
}

/// The user a request's token proves, unless their session was revoked.
async fn signed_in_user(parts: &Parts) -> Result<Option<CurrentUser>, ApiError> {
    let Some(claims) = keys(parts)?.user_from_headers(&parts.headers) else {
        return Ok(None);
    };
    let revocations = parts.extensions.get::<Revocations>().ok_or_else(|| {
        ApiError::Unexpected(anyhow::anyhow!("the revoked-session list is not installed on this router"))
    })?;
    if revocations.is_revoked(claims.jti).await? {
        tracing::debug!(session_id = %claims.jti, "revoked session token refused");
        return Ok(None);
    }
    Ok(Some(claims))
}

/// The signed-in user, if there is one.
#[derive(Debug, Clone)]
pub struct MaybeUser(pub Option<CurrentUser>);

impl<S: Send + Sync> FromRequestParts<S> for MaybeUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(signed_in_user(parts).await?))
    }
}

/// The signed-in user; anonymous requests get 401 `Not authorized`.
#[derive(Debug, Clone)]
pub struct RequireUser(pub CurrentUser);

impl<S: Send + Sync> FromRequestParts<S> for RequireUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        signed_in_user(parts).await?.map(Self).ok_or(ApiError::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_different_session_cookies_make_the_request_anonymous() {
        let with = |cookies: &[&str]| {
            let mut headers = HeaderMap::new();
            for cookie in cookies {
                headers.append(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
            }
            session_cookie(&headers).map(str::to_owned)
        };
        assert_eq!(with(&["a=1; session=tok"]), Some("tok".to_owned()));
        assert_eq!(with(&["session=tok; session=tok"]), Some("tok".to_owned()));
        assert_eq!(with(&["session=planted; session=mine"]), None);
        assert_eq!(with(&["session=planted", "session=mine"]), None);
        assert_eq!(with(&["other=1"]), None);
        assert_eq!(with(&["broken; session=tok; =empty-name"]), Some("tok".to_owned()));
    }

    #[test]
    fn session_cookies_are_http_only_lax_for_every_path_and_secure_only_over_tls() {
        let hour = time::Duration::hours(1);
        assert_eq!(
            session_cookie_header("tok", hour, false),
            "session=tok; HttpOnly; SameSite=Lax; Path=/; Max-Age=3600"
        );
        assert_eq!(
            session_cookie_header("tok", hour, true),
            "session=tok; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=3600"
        );
        assert_eq!(clear_session_cookie_header(false), "session=; HttpOnly; SameSite=Lax; Path=/; Max-Age=0");
        assert_eq!(clear_session_cookie_header(true), "session=; HttpOnly; SameSite=Lax; Secure; Path=/; Max-Age=0");
    }

    fn keys() -> SessionKeys {
        SessionKeys::new(b"test-secret-test-secret-test-secret", time::Duration::hours(1))
    }

    #[test]
    fn issued_tokens_verify() {
        let keys = keys();
        let id = Uuid::new_v4();
        let claims = keys.verify(&keys.issue(id, "a@b.co").unwrap()).unwrap();
        assert_eq!((claims.id, claims.email.as_str()), (id, "a@b.co"));
    }

    #[test]
    fn other_keys_expired_and_unsigned_tokens_are_rejected() {
        let keys = keys();
        let other = SessionKeys::new(b"another-secret-another-secret-xx", time::Duration::hours(1));
        assert!(keys.verify(&other.issue(Uuid::new_v4(), "a@b.co").unwrap()).is_none());

        let expired = SessionKeys::new(b"test-secret-test-secret-test-secret", time::Duration::seconds(-10));
        assert!(keys.verify(&expired.issue(Uuid::new_v4(), "a@b.co").unwrap()).is_none());

        // alg=none: header {"alg":"none","typ":"JWT"}, valid claims, empty signature.
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let payload = serde_json::json!({"id": Uuid::new_v4(), "email": "a@b.co", "iat": now, "exp": now + 60});
        use base64_url as b64;
        let unsigned = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(payload.to_string().as_bytes()));
        assert!(keys.verify(&unsigned).is_none());
        assert!(keys.verify("garbage").is_none());
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn tokens_without_a_session_id_are_refused_and_each_token_has_its_own() {
        let keys = keys();
        let id = Uuid::new_v4();
        let (first, second) = (keys.issue(id, "a@b.co").unwrap(), keys.issue(id, "a@b.co").unwrap());
        assert_ne!(keys.verify(&first).unwrap().jti, keys.verify(&second).unwrap().jti);
        // Signed with the right key, but from before sessions had ids: it can never be revoked.
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let legacy = serde_json::json!({"id": id, "email": "a@b.co", "iat": now, "exp": now + 60});
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &legacy, &keys.encoding).unwrap();
        assert!(keys.verify(&token).is_none());
    }

    #[test]
    fn bearer_wins_over_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; session=cookie-token"));
        assert_eq!(token_from_headers(&headers), Some("cookie-token"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer bearer-token"));
        assert_eq!(token_from_headers(&headers), Some("bearer-token"));
    }
}
