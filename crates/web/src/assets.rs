//! Static assets, embedded in the binary and served by the app itself (the marketplace
//! works offline: no CDN).
//!
//! Each is served under a name holding a hash of its content (`style-<hash>.css`), so it
//! can be cached for a year: a changed file gets a new URL, and pages link the new one.

use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

struct Asset {
    /// The public name, hash included.
    file: String,
    body: &'static [u8],
    content_type: &'static str,
    etag: String,
}

/// The URL of each asset, for templates (`{{ assets.style }}`).
#[derive(Debug, Clone)]
pub struct AssetUrls {
    pub style: String,
    pub countdown: String,
    pub stripe_pay: String,
    pub favicon: String,
}

const SOURCES: &[(&str, &str, &[u8], &str)] = &[
    ("style", "css", include_bytes!("../assets/style.css"), "text/css; charset=utf-8"),
    ("countdown", "js", include_bytes!("../assets/countdown.js"), "text/javascript; charset=utf-8"),
    ("stripe-pay", "js", include_bytes!("../assets/stripe-pay.js"), "text/javascript; charset=utf-8"),
    ("favicon", "svg", include_bytes!("../assets/favicon.svg"), "image/svg+xml"),
];

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    SOURCES
        .iter()
        .map(|(stem, extension, body, content_type)| {
            let hash = format!("{:016x}", fnv1a(body));
            Asset {
                file: format!("{stem}-{}.{extension}", &hash[..12]),
                body,
                content_type,
                etag: format!("\"{hash}\""),
            }
        })
        .collect()
});

/// FNV-1a, 64 bits: stable across builds and platforms, which is all a cache key needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

fn url_of(stem: &str) -> String {
    let asset = ASSETS
        .iter()
        .find(|asset| asset.file.starts_with(stem) && asset.file.as_bytes().get(stem.len()) == Some(&b'-'))
        .expect("every named asset exists");
    format!("/assets/{}", asset.file)
}

pub static URLS: LazyLock<AssetUrls> = LazyLock::new(|| AssetUrls {
    style: url_of("style"),
    countdown: url_of("countdown"),
    stripe_pay: url_of("stripe-pay"),
    favicon: url_of("favicon"),
});

/// `GET /assets/{file}`: the asset, cacheable for a year; `None` for an unknown (or outdated)
/// name, which the router answers with the 404 page.
pub fn serve(file: &str, headers: &HeaderMap) -> Option<Response> {
    let asset = ASSETS.iter().find(|asset| asset.file == file)?;
    let cache = [
        (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=31536000, immutable")),
        (header::ETAG, HeaderValue::from_str(&asset.etag).expect("a quoted hex etag is a valid header value")),
    ];
    let revalidated = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == asset.etag));
    if revalidated {
        return Some((StatusCode::NOT_MODIFIED, cache).into_response());
    }
    Some((cache, [(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type))], asset.body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_a_content_hash() {
        assert!(URLS.style.starts_with("/assets/style-") && URLS.style.ends_with(".css"));
        assert!(URLS.countdown.starts_with("/assets/countdown-") && URLS.countdown.ends_with(".js"));
        assert!(URLS.stripe_pay.starts_with("/assets/stripe-pay-"));
        assert!(URLS.favicon.ends_with(".svg"));
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }
}
