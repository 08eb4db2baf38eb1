//! Money: prices arrive as JSON numbers in major units and live as integer minor units.
//!
//! Parsing goes through the number's decimal text, never through float arithmetic, so
//! `19.99` is exactly 1999 cents and `19.999` is refused rather than rounded.

use serde_json::Value;

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
    pub fn to_major(&self, minor: i64) -> Value {
        if self.decimals == 0 {
            return Value::from(minor);
        }
        // Exact for every amount we accept: the shortest float text of minor/100 is the decimal.
        serde_json::Number::from_f64(minor as f64 / self.scale() as f64).map_or(Value::Null, Value::Number)
    }

    /// Parses a price, checking it is a positive number with at most the currency's
    /// decimals and at most [`MAX_MAJOR`]. The error is the message a person reads.
    pub fn parse_price(&self, value: &Value) -> Result<i64, String> {
        let Value::Number(number) = value else {
            return Err("Price must be a number".into());
        };
        let minor = decimal_to_minor(&number.to_string(), self.decimals).ok_or_else(|| {
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
    let mut digits: String = format!("{int_part}{frac_part}");
    // Value = digits × 10^(exponent − len(frac)); we want it × 10^decimals.
    let mut shift = exponent - frac_part.len() as i32 + decimals as i32;
    while shift < 0 {
        // Dropping a digit is only allowed if it is a zero (no precision is lost).
        if !digits.ends_with('0') {
            return if digits.trim_start_matches('0').is_empty() { Some(0) } else { None };
        }
        digits.pop();
        shift += 1;
    }
    if digits.len() + shift as usize > 18 {
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
        assert_eq!(usd.parse_price(&json!("12")), Err("Price must be a number".into()));
        assert_eq!(usd.parse_price(&json!(null)), Err("Price must be a number".into()));
        let jpy = Currency::new("JPY");
        assert_eq!(jpy.parse_price(&json!(500)), Ok(500));
        assert_eq!(jpy.parse_price(&json!(500.5)), Err("Price must be a whole number".into()));
    }

    #[test]
    fn formats_and_converts_back() {
        let usd = Currency::new("usd");
        assert_eq!(usd.format(123_456_789), "$1,234,567.89");
        assert_eq!(usd.format(5), "$0.05");
        assert_eq!(usd.to_major(1999), json!(19.99));
        assert_eq!(usd.to_major(2000), json!(20.0));
        assert_eq!(Currency::new("jpy").format(1500), "¥1,500");
        for minor in [1, 10, 99, 1999, 12345, 100_000_000] {
            assert_eq!(usd.parse_price(&usd.to_major(minor)), Ok(minor));
        }
    }
}
