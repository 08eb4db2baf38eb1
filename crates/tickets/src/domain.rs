//! What a ticket is, what makes a listing valid, and what the rest of the marketplace is told
//! about a ticket. Free of SQL and HTTP, so the rules read in one place.

use contract::error::ErrorItem;
use contract::events::{TicketCreated, TicketUpdated};
use contract::money::{Currency, PriceText};
use serde_json::Value;
use uuid::Uuid;

/// Longest title accepted, in characters.
pub const MAX_TITLE_CHARS: usize = 200;

pub const FORBIDDEN_CHARACTERS: &str = "Title must not contain control or text-direction characters";

pub const RESERVED: &str = "Cannot edit a reserved ticket";

/// A ticket as stored. `order_id` is the order holding it (reserved or sold), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub id: Uuid,
    pub title: String,
    /// Minor units of the marketplace's currency.
    pub price: i64,
    pub user_id: Uuid,
    pub version: i64,
    pub order_id: Option<Uuid>,
}

impl Ticket {
    /// A new, unreserved ticket at version 0.
    pub fn new(user_id: Uuid, listing: Listing) -> Self {
        Self { id: Uuid::now_v7(), title: listing.title, price: listing.price, user_id, version: 0, order_id: None }
    }

    pub fn created_event(&self) -> TicketCreated {
        TicketCreated {
            id: self.id,
            version: self.version,
            title: self.title.clone(),
            price: self.price,
            user_id: self.user_id,
        }
    }

    pub fn updated_event(&self) -> TicketUpdated {
        TicketUpdated {
            id: self.id,
            version: self.version,
            title: self.title.clone(),
            price: self.price,
            user_id: self.user_id,
            order_id: self.order_id,
        }
    }
}

/// What a seller says about a ticket: a valid title and price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub title: String,
    pub price: i64,
}

impl Listing {
    /// Checks raw JSON values; one error per bad field. The title is stored trimmed.
    pub fn parse(title: &Value, price: &PriceText, currency: &Currency) -> Result<Self, Vec<ErrorItem>> {
        let title = match title.as_str().map(str::trim) {
            None => Err("Title is required".to_owned()),
            Some(title) if contract::text::has_forbidden(title) => Err(FORBIDDEN_CHARACTERS.to_owned()),
            Some(title) if contract::text::is_blank(title) => Err("Title is required".to_owned()),
            Some(title) if title.chars().count() > MAX_TITLE_CHARS => {
                Err(format!("Title must be at most {MAX_TITLE_CHARS} characters"))
            }
            Some(title) => Ok(title.to_owned()),
        };
        let price = currency.parse_price_text(price);
        match (title, price) {
            (Ok(title), Ok(price)) => Ok(Self { title, price }),
            (title, price) => Err([("title", title.err()), ("price", price.err())]
                .into_iter()
                .filter_map(|(field, message)| Some(ErrorItem::field(field, message?)))
                .collect()),
        }
    }
}

/// Tickets on a page of the list when the client does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// The most tickets a page of the list may have.
pub const MAX_PAGE_SIZE: u32 = 200;

pub const BAD_LIMIT: &str = "Limit must be a whole number from 1 to 200";

pub const BAD_CURSOR: &str = "Cursor is invalid; use the link of the page before";

/// A position in the list of tickets for sale, which is ordered newest first: by creation
/// time, then by id (two tickets can be listed in one millisecond). A page starts just after
/// it. Keyed on what never changes about a ticket, so walking the pages shows each ticket
/// once however many are listed or bought meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Milliseconds since the epoch.
    pub created_at: i64,
    pub id: Uuid,
}

impl Cursor {
    /// Opaque to clients: base64url of the creation time (8 bytes, big-endian) and the id.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&self.created_at.to_be_bytes());
        bytes[8..].copy_from_slice(self.id.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// `None` for anything [`Cursor::encode`] did not make.
    pub fn decode(text: &str) -> Option<Self> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
        let bytes: [u8; 24] = bytes.try_into().ok()?;
        let created_at = i64::from_be_bytes(bytes[..8].try_into().ok()?);
        let id = Uuid::from_slice(&bytes[8..]).ok()?;
        (created_at >= 0).then_some(Self { created_at, id })
    }
}

/// What a title search compares: the title in lower case, so that the search ignores case the
/// same way on every database (SQLite's own `lower` and `LIKE` fold ASCII letters only).
pub fn search_key(text: &str) -> String {
    text.to_lowercase()
}

/// Which page of the list a client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub limit: u32,
    /// The page starts after this ticket; the first page when `None`.
    pub after: Option<Cursor>,
    /// Only titles containing this text, ignoring case (as the client wrote it, trimmed).
    pub search: Option<String>,
}

impl ListQuery {
    /// Reads `limit`, `cursor` and `q` as given in the URL; an empty value counts as absent.
    /// One error per bad field.
    pub fn parse(limit: Option<&str>, cursor: Option<&str>, q: Option<&str>) -> Result<Self, Vec<ErrorItem>> {
        let limit = match limit.filter(|text| !text.is_empty()) {
            None => Ok(DEFAULT_PAGE_SIZE),
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|limit| text.bytes().all(|b| b.is_ascii_digit()) && (1..=MAX_PAGE_SIZE).contains(limit))
                .ok_or(BAD_LIMIT),
        };
        let after = match cursor.filter(|text| !text.is_empty()) {
            None => Ok(None),
            Some(text) => Cursor::decode(text).map(Some).ok_or(BAD_CURSOR),
        };
        let search = q.map(str::trim).filter(|q| !q.is_empty()).map(str::to_owned);
        match (limit, after) {
            (Ok(limit), Ok(after)) => Ok(Self { limit, after, search }),
            (limit, after) => Err([("limit", limit.err()), ("cursor", after.err())]
                .into_iter()
                .filter_map(|(field, message)| Some(ErrorItem::field(field, message?)))
                .collect()),
        }
    }
}

/// One page of the list, and where the next one starts if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub tickets: Vec<Ticket>,
    pub next: Option<Cursor>,
}

/// How many tickets one seller may list per hour, counted over the last hour (a sliding
/// window, so there is no burst at the turn of the hour). 0: unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreationLimit {
    pub per_hour: u32,
}

impl CreationLimit {
    pub const WINDOW_MILLIS: i64 = 3_600_000;

    /// The limit, or `None` when there is none.
    pub fn per_window(self) -> Option<i64> {
        (self.per_hour > 0).then_some(i64::from(self.per_hour))
    }

    /// Tickets created after this instant (ms) count against the limit at `now_ms`.
    pub fn window_start(now_ms: i64) -> i64 {
        now_ms - Self::WINDOW_MILLIS
    }

    /// Given when the seller's latest tickets inside the window were created (the latest
    /// `per_hour` of them at most, any order), how long until they may list another: `None`
    /// if they may now.
    pub fn wait(self, recent_ms: &[i64], now_ms: i64) -> Option<std::time::Duration> {
        let limit = usize::try_from(self.per_window()?).unwrap_or(usize::MAX);
        if recent_ms.len() < limit {
            return None;
        }
        // A slot frees when the oldest of the latest `limit` leaves the window.
        let oldest = recent_ms.iter().copied().min()?;
        let millis = (oldest + Self::WINDOW_MILLIS - now_ms).max(1000);
        Some(std::time::Duration::from_millis(millis.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn price_text(price: Value) -> PriceText {
        PriceText::from_json(&price.to_string()).unwrap()
    }

    fn errors(title: Value, price: Value) -> Vec<(String, String)> {
        Listing::parse(&title, &price_text(price), &Currency::new("usd"))
            .expect_err("invalid")
            .into_iter()
            .map(|item| (item.field.unwrap_or_default(), item.message))
            .collect()
    }

    #[test]
    fn valid_listings_are_trimmed_and_priced_in_minor_units() {
        let listing = Listing::parse(&json!("  Concert  "), &price_text(json!(12.5)), &Currency::new("usd")).unwrap();
        assert_eq!(listing, Listing { title: "Concert".into(), price: 1250 });
        let longest = "é".repeat(MAX_TITLE_CHARS);
        assert_eq!(
            Listing::parse(&json!(longest), &price_text(json!(1)), &Currency::new("usd")).unwrap().title,
            longest
        );
    }

    #[test]
    fn each_bad_field_gets_one_error() {
        let title = |m: &str| ("title".to_owned(), m.to_owned());
        let price = |m: &str| ("price".to_owned(), m.to_owned());
        assert_eq!(errors(json!(""), json!(10)), vec![title("Title is required")]);
        assert_eq!(errors(json!("   "), json!(10)), vec![title("Title is required")]);
        assert_eq!(errors(json!(42), json!(10)), vec![title("Title is required")]);
        assert_eq!(errors(Value::Null, json!(10)), vec![title("Title is required")]);
        assert_eq!(
            errors(json!("x".repeat(MAX_TITLE_CHARS + 1)), json!(10)),
            vec![title("Title must be at most 200 characters")]
        );
        // Issue 10: NUL passed "Title is required"; controls and bidi overrides are refused,
        // and a title of zero-width characters is empty.
        let forbidden = title(FORBIDDEN_CHARACTERS);
        for bad in ["\u{0}", "a\u{1b}[2Jb", "ring\u{7}", "gpj\u{202e}exe.pdf", "x\u{2066}y", "two\nlines"] {
            assert_eq!(errors(json!(bad), json!(10)), vec![forbidden.clone()], "{bad:?}");
        }
        for blank in ["\u{200b}", " \u{200b}\u{feff} ", "\u{2060}"] {
            assert_eq!(errors(json!(blank), json!(10)), vec![title("Title is required")], "{blank:?}");
        }
        assert_eq!(errors(json!("ok"), json!(-1)), vec![price("Price must be greater than 0")]);
        assert_eq!(errors(json!([]), json!("ten")), vec![title("Title is required"), price("Price must be a number")]);
    }

    #[test]
    fn cursors_survive_the_round_trip_and_nothing_else_passes() {
        let cursor = Cursor { created_at: 1_764_547_200_123, id: Uuid::now_v7() };
        let text = cursor.encode();
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{text}");
        assert_eq!(Cursor::decode(&text), Some(cursor));
        let mut other = text.clone();
        other.push('A');
        for bad in [
            "",
            "x",
            "not a cursor",
            "%%%",
            &text[1..],
            &other,
            &format!("{text}="),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad:?}");
        }
        // A negative creation time is no cursor we made.
        let negative = Cursor { created_at: -1, id: Uuid::nil() }.encode();
        assert_eq!(Cursor::decode(&negative), None);
    }

    #[test]
    fn list_queries_default_bound_and_report_each_bad_field() {
        let query = ListQuery::parse(None, None, None).unwrap();
        assert_eq!(query, ListQuery { limit: DEFAULT_PAGE_SIZE, after: None, search: None });
        assert_eq!(ListQuery::parse(Some(""), Some(""), Some("  ")).unwrap(), query);
        assert_eq!(ListQuery::parse(Some("1"), None, None).unwrap().limit, 1);
        assert_eq!(ListQuery::parse(Some("200"), None, None).unwrap().limit, 200);
        assert_eq!(ListQuery::parse(None, None, Some(" Jazz ")).unwrap().search.as_deref(), Some("Jazz"));
        let cursor = Cursor { created_at: 5, id: Uuid::now_v7() };
        assert_eq!(ListQuery::parse(None, Some(&cursor.encode()), None).unwrap().after, Some(cursor));

        let fields = |limit: Option<&str>, cursor: Option<&str>| -> Vec<(String, String)> {
            ListQuery::parse(limit, cursor, None)
                .expect_err("invalid")
                .into_iter()
                .map(|item| (item.field.unwrap_or_default(), item.message))
                .collect()
        };
        let limit = ("limit".to_owned(), BAD_LIMIT.to_owned());
        for bad in ["0", "201", "-1", "+5", "1.5", "ten", "99999999999999999999", " 5"] {
            assert_eq!(fields(Some(bad), None), vec![limit.clone()], "{bad:?}");
        }
        let cursor = ("cursor".to_owned(), BAD_CURSOR.to_owned());
        assert_eq!(fields(None, Some("garbage")), vec![cursor.clone()]);
        assert_eq!(fields(Some("0"), Some("garbage")), vec![limit, cursor]);
    }

    #[test]
    fn search_keys_ignore_case_beyond_ascii() {
        assert_eq!(search_key("Café ÉTÉ Jazz"), "café été jazz");
        assert_eq!(search_key("ΣΟΦΙΑ"), "σοφια");
    }

    #[test]
    fn the_creation_limit_counts_the_last_hour_and_says_when_a_slot_frees() {
        let limit = CreationLimit { per_hour: 3 };
        let now = 10 * CreationLimit::WINDOW_MILLIS;
        assert_eq!(limit.wait(&[now - 10, now - 5], now), None);
        // Full: the oldest of the three leaves the window in 10 minutes.
        let oldest = now - 50 * 60_000;
        let wait = limit.wait(&[now - 5, oldest, now - 10], now).unwrap();
        assert_eq!(wait.as_millis(), 10 * 60_000);
        // Never "retry now": at least a second.
        assert_eq!(limit.wait(&[now, now, CreationLimit::window_start(now) + 1], now).unwrap().as_millis(), 1000);
        assert_eq!(CreationLimit { per_hour: 0 }.wait(&[now; 1000], now), None);
        assert_eq!(CreationLimit { per_hour: 0 }.per_window(), None);
    }
}
