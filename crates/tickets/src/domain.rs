//! What a ticket is, what makes a listing valid, and what the rest of the marketplace is told
//! about a ticket. Free of SQL and HTTP, so the rules read in one place.

use platform::error::ErrorItem;
use platform::events::{TicketCreated, TicketUpdated};
use platform::money::{Currency, PriceText};
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
            Some(title) if platform::text::has_forbidden(title) => Err(FORBIDDEN_CHARACTERS.to_owned()),
            Some(title) if platform::text::is_blank(title) => Err("Title is required".to_owned()),
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
