//! Money: prices arrive as JSON numbers or decimal strings in major units and live as integer
//! minor units.
//!
//! Parsing goes through the decimal text the client sent, never through float arithmetic, so
//! `19.99` is exactly 1999 cents and `19.999` is refused rather than rounded. Request bodies keep
//! a price as [`PriceText`] (the JSON text verbatim): a `serde_json::Value` would already have
//! rounded `10.999999999999999999` to `11.0` before any rule could see it. Response bodies carry
//! a price as a [`Price`]: a JSON number in major units.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};

/// A price as a client sent it: the JSON text of the value, untouched, or nothing when the field
/// was missing or `null`. Only deserialises from JSON text (serde_json's `from_slice`/`from_str`),
/// not from a `Value`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PriceText(Option<Box<RawValue>>);

impl PriceText {
    /// The price as JSON text (`12.5`, `"12.50"`); for tests and for callers that build one.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// A price sent as a decimal string (`"12.50"`), as a person typed it: the service reads its
    /// digits exactly and reports what is wrong with it next to the field.
    pub fn string(text: &str) -> Self {
        Self(serde_json::value::to_raw_value(text).ok())
    }
}

/// A price as the API answers it: a JSON number in major units of the marketplace's currency
/// (`12.5` for 1250 cents). Made by [`Currency::to_major`], read back exactly, from the number's
/// digits, by [`Currency::minor_units`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Price(serde_json::Number);

impl std::fmt::Display for Price {
    /// The number as the API wrote it (`12.5`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The largest price accepted, in major units.
pub const MAX_MAJOR: i64 = 1_000_000;

/// A currency and how many decimals its minor unit has (as Stripe counts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency {
    pub code: String,
    pub decimals: u32,
}

/// Currencies without a minor unit, per Stripe's list of zero-decimal currencies.
const ZERO_DECIMAL: &[&str] =
    &["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"];

impl Currency {
    pub fn new(code: &str) -> Self {
        let code = code.trim().to_ascii_lowercase();
        let decimals = if ZERO_DECIMAL.contains(&code.as_str()) { 0 } else { 2 };
        Self { code, decimals }
    }

    fn scale(&self) -> i64 {
        10i64.pow(self.decimals)
    }

    /// Minor units as a JSON number in major units (1999 → 19.99).
    pub fn to_major(&self, minor: i64) -> Price {
        if self.decimals == 0 {
            return Price(minor.into());
        }
        // Exact for every amount we accept: the shortest float text of minor/100 is the decimal.
        // An i64 over a power of ten is always finite, so it is always a JSON number.
        Price(serde_json::Number::from_f64(minor as f64 / self.scale() as f64).expect("a finite number"))
    }

    /// A price the API answered, in minor units; the same checks as [`Self::parse_price`].
    pub fn minor_units(&self, price: &Price) -> Result<i64, String> {
        self.parse_decimal(&price.0.to_string())
    }

    /// Parses a price, checking it is a positive number with at most the currency's
    /// decimals and at most [`MAX_MAJOR`]. The error is the message a person reads.
    /// Decimal strings (`"12.50"`) are accepted like numbers. Only for values that were never
    /// rounded (a `Value` read from untrusted JSON may have been): see [`Self::parse_price_text`].
    pub fn parse_price(&self, value: &Value) -> Result<i64, String> {
        match value {
            Value::Number(number) => self.parse_decimal(&number.to_string()),
            Value::String(text) => self.parse_decimal_string(text),
            _ => Err(NOT_A_NUMBER.into()),
        }
    }

    /// Parses a price from the JSON text the client sent: a number (its digits as written) or a
    /// string holding a plain decimal (`"25.00"`, which the reference client sends).
    pub fn parse_price_text(&self, price: &PriceText) -> Result<i64, String> {
        let Some(raw) = &price.0 else {
            return Err(NOT_A_NUMBER.into());
        };
        let text = raw.get().trim();
        if text.starts_with('"') {
            let decoded: String = serde_json::from_str(text).map_err(|_| NOT_A_NUMBER.to_owned())?;
            return self.parse_decimal_string(&decoded);
        }
        if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            // serde_json already checked the number grammar.
            return self.parse_decimal(text);
        }
        Err(NOT_A_NUMBER.into())
    }

    /// A string price: optional sign, digits, optionally a point and more digits. No exponent,
    /// no thousands separators, nothing around it but spaces.
    fn parse_decimal_string(&self, text: &str) -> Result<i64, String> {
        let text = text.trim();
        let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
        let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (int_part.is_empty() && frac_part.is_empty())
            || !all_digits(int_part)
            || !all_digits(frac_part)
            || unsigned.ends_with('.')
        {
            return Err(NOT_A_NUMBER.into());
        }
        self.parse_decimal(text.strip_prefix('+').unwrap_or(text))
    }

    fn parse_decimal(&self, text: &str) -> Result<i64, String> {
        let minor = decimal_to_minor(text, self.decimals).ok_or_else(|| {
            if self.decimals == 0 {
                "Price must be a whole number".to_owned()
            } else {
                format!("Price must have at most {} decimals", self.decimals)
            }
        })?;
        if minor <= 0 {
            return Err("Price must be greater than 0".into());
        }
        if minor > MAX_MAJOR * self.scale() {
            return Err(format!("Price must be at most {MAX_MAJOR}"));
        }
        Ok(minor)
    }

    /// Human text for a price: `$19.99`, `¥500`, `19.99 CHF`.
    pub fn format(&self, minor: i64) -> String {
        let sign = if minor < 0 { "-" } else { "" };
        let abs = minor.unsigned_abs();
        let scale = self.scale().unsigned_abs();
        let whole = group_thousands(abs / scale);
        let amount = if self.decimals == 0 {
            whole
        } else {
            format!("{whole}.{:0width$}", abs % scale, width = self.decimals as usize)
        };
        match self.code.as_str() {
            "usd" => format!("{sign}${amount}"),
            "eur" => format!("{sign}€{amount}"),
            "gbp" => format!("{sign}£{amount}"),
            "jpy" => format!("{sign}¥{amount}"),
            other => format!("{sign}{amount} {}", other.to_ascii_uppercase()),
        }
    }
}

const NOT_A_NUMBER: &str = "Price must be a number";

/// The OpenAPI schema of a price as clients send it: a JSON number or a decimal string
/// (`"12.50"`, which the reference client sends), in major units, > 0, at most [`MAX_MAJOR`], at
/// most 2 decimals (the schema describes a currency with cents, the default).
pub fn price_input() -> Schema {
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .exclusive_minimum(Some(0))
                .maximum(Some(MAX_MAJOR))
                .multiple_of(Some(0.01))
                .examples([serde_json::json!(12.5)]),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                // 0.01 up to 1000000 with at most two decimals, no sign, no exponent.
                .pattern(Some(r"^(1000000(\.0{1,2})?|[1-9][0-9]{0,5}(\.[0-9]{1,2})?|0?\.(0[1-9]|[1-9][0-9]?))$"))
                .examples([serde_json::json!("12.50")]),
        )
        .description(Some(
            "In major units: a JSON number or a decimal string, greater than 0, at most 1000000, \
             with at most the currency's decimals (2 for usd, 0 for jpy). Read exactly from its digits.",
        ))
        .into()
}

/// The OpenAPI schema of a [`Price`]: a JSON number in major units.
pub fn price_output() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Number)
        .exclusive_minimum(Some(0))
        .maximum(Some(MAX_MAJOR))
        .description(Some("In major units"))
        .examples([serde_json::json!(12.5)])
        .into()
}

fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `"12.5"` with 2 decimals → 1250. `None` when the text has more decimals than allowed or
/// is too large. Accepts an exponent (`1.5e2`) since JSON allows one.
fn decimal_to_minor(text: &str, decimals: u32) -> Option<i64> {
    let (mantissa, exponent) = match text.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i32>().ok()?),
        None => (text, 0),
    };
    let negative = mantissa.starts_with('-');
    let mantissa = mantissa.trim_start_matches(['-', '+']);
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let mut digits: String = format!("{int_part}{frac_part}").trim_start_matches('0').to_owned();
    if digits.is_empty() {
        return Some(0);
    }
    // Value = digits × 10^(exponent − len(frac)); we want it × 10^decimals. In i64: an exponent
    // near i32::MIN must not overflow.
    let mut shift = i64::from(exponent) - frac_part.len() as i64 + i64::from(decimals);
    while shift < 0 {
        // Dropping a digit is only allowed if it is a zero (no precision is lost).
        if !digits.ends_with('0') {
            return None;
        }
        digits.pop();
        shift += 1;
    }
    if digits.len() as i64 + shift > 18 {
        return Some(i64::MAX);
    }
    digits.extend(std::iter::repeat_n('0', shift as usize));
    let value: i64 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_prices_exactly() {
        let usd = Currency::new("usd");
        assert_eq!(usd.parse_price(&json!(12.5)), Ok(1250));
        assert_eq!(usd.parse_price(&json!(19.99)), Ok(1999));
        assert_eq!(usd.parse_price(&json!(0.01)), Ok(1));
        assert_eq!(usd.parse_price(&json!(20)), Ok(2000));
        assert_eq!(usd.parse_price(&json!(1_000_000)), Ok(100_000_000));
        assert_eq!(usd.parse_price(&json!(1.5e2)), Ok(15000));
    }

    #[test]
    fn refuses_bad_prices() {
        let usd = Currency::new("usd");
        assert_eq!(usd.parse_price(&json!(0)), Err("Price must be greater than 0".into()));
        assert_eq!(usd.parse_price(&json!(-3)), Err("Price must be greater than 0".into()));
        assert_eq!(usd.parse_price(&json!(19.999)), Err("Price must have at most 2 decimals".into()));
        assert_eq!(usd.parse_price(&json!(1_000_000.01)), Err("Price must be at most 1000000".into()));
        assert_eq!(usd.parse_price(&json!(1e300)), Err("Price must be at most 1000000".into()));
        assert_eq!(usd.parse_price(&json!("12x")), Err("Price must be a number".into()));
        assert_eq!(usd.parse_price(&json!(null)), Err("Price must be a number".into()));
        let jpy = Currency::new("JPY");
        assert_eq!(jpy.parse_price(&json!(500)), Ok(500));
        assert_eq!(jpy.parse_price(&json!(500.5)), Err("Price must be a whole number".into()));
    }

    fn text(usd: &Currency, json: &str) -> Result<i64, String> {
        usd.parse_price_text(&PriceText::from_json(json).unwrap())
    }

    /// The issue's reproduction: through a float these became 11.00 and 100.00.
    #[test]
    fn prices_are_parsed_from_the_text_the_client_sent_never_through_a_float() {
        let usd = Currency::new("usd");
        let decimals = Err("Price must have at most 2 decimals".to_owned());
        assert_eq!(text(&usd, "10.999999999999999999"), decimals);
        assert_eq!(text(&usd, "100.0000000000000000001"), decimals);
        assert_eq!(text(&usd, r#""10.999999999999999999""#), decimals);
        assert_eq!(text(&usd, "10.990000000000000000"), Ok(1099));
        assert_eq!(text(&usd, "0.1e1"), Ok(100));
        assert_eq!(text(&usd, "1.5e-2147483648"), decimals);
        assert_eq!(text(&usd, "0e999999"), Err("Price must be greater than 0".into()));
        assert_eq!(text(&usd, "1e7"), Err("Price must be at most 1000000".into()));
        assert_eq!(text(&usd, "null"), Err("Price must be a number".into()));
        assert_eq!(text(&usd, "true"), Err("Price must be a number".into()));
        assert_eq!(text(&usd, "[1]"), Err("Price must be a number".into()));
        assert_eq!(usd.parse_price_text(&PriceText::default()), Err("Price must be a number".into()));
    }

    /// The reference Next.js client sends prices as strings.
    #[test]
    fn decimal_strings_are_prices_too() {
        let usd = Currency::new("usd");
        assert_eq!(text(&usd, r#""25.00""#), Ok(2500));
        assert_eq!(text(&usd, r#"" 25 ""#), Ok(2500));
        assert_eq!(text(&usd, r#"".5""#), Ok(50));
        assert_eq!(text(&usd, r#""000000000000000000000000012.50""#), Ok(1250));
        assert_eq!(text(&usd, r#""+7.1""#), Ok(710));
        assert_eq!(text(&usd, r#""-3""#), Err("Price must be greater than 0".into()));
        assert_eq!(text(&usd, r#""0.00""#), Err("Price must be greater than 0".into()));
        assert_eq!(text(&usd, r#""25.001""#), Err("Price must have at most 2 decimals".into()));
        for bad in [
            r#""""#,
            r#""1e3""#,
            r#""1,000""#,
            r#""12.""#,
            r#"".""#,
            r#""NaN""#,
            r#""Infinity""#,
            r#""0x10""#,
            r#""1 2""#,
            r#""١٢""#,
        ] {
            assert_eq!(text(&usd, bad), Err("Price must be a number".into()), "{bad}");
        }
        assert_eq!(usd.parse_price(&json!("25.00")), Ok(2500));
        let jpy = Currency::new("jpy");
        assert_eq!(text(&jpy, r#""500""#), Ok(500));
        assert_eq!(text(&jpy, r#""500.00""#), Ok(500));
        assert_eq!(text(&jpy, r#""500.5""#), Err("Price must be a whole number".into()));
    }

    #[test]
    fn formats_and_converts_back() {
        let usd = Currency::new("usd");
        assert_eq!(usd.format(123_456_789), "$1,234,567.89");
        assert_eq!(usd.format(5), "$0.05");
        assert_eq!(serde_json::to_value(usd.to_major(1999)).unwrap(), json!(19.99));
        assert_eq!(serde_json::to_value(usd.to_major(2000)).unwrap(), json!(20.0));
        assert_eq!(serde_json::to_string(&Currency::new("jpy").to_major(1500)).unwrap(), "1500");
        assert_eq!(Currency::new("jpy").format(1500), "¥1,500");
        for minor in [1, 10, 99, 1999, 12345, 100_000_000] {
            let price = usd.to_major(minor);
            assert_eq!(usd.minor_units(&price), Ok(minor));
            let read: Price = serde_json::from_str(&serde_json::to_string(&price).unwrap()).unwrap();
            assert_eq!(usd.minor_units(&read), Ok(minor), "as a client reads it");
        }
    }
}
