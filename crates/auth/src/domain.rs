//! The rules of accounts: what an email is, and when two spellings are one account.

/// A trimmed, NFC-normalised, lower-cased email, or `None` if it is not a plausible address.
/// NFC first, so the NFC and NFD spellings of `josé@example.com` are one account.
pub fn normalize_email(email: &str) -> Option<String> {
    use unicode_normalization::UnicodeNormalization;
    let email: String = email.trim().nfc().collect();
    let email = email.as_str();
    let (local, domain) = email.split_once('@')?;
    let valid_local = !local.is_empty() && local.len() <= 64;
    let valid_domain = domain.len() <= 253
        && domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
    let clean = !contract::text::has_forbidden(email)
        && !email.chars().any(|c| contract::text::is_invisible(c) || c == '"' || c == '<' || c == '>');
    (valid_local && valid_domain && clean && !domain.contains('@')).then(|| email.to_lowercase().nfc().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized_and_checked() {
        assert_eq!(normalize_email("  Ann@Example.COM "), Some("ann@example.com".into()));
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "a b@example.com",
            "ann@@example.com",
            "ann@exa mple.com",
            "ann@-x.com",
        ] {
            assert_eq!(normalize_email(bad), None, "{bad}");
        }
        // Issue 10: NFC and NFD spellings, and case, make one address.
        let nfc = normalize_email("Jos\u{e9}@Example.com").unwrap();
        assert_eq!(normalize_email("JOSE\u{301}@example.com"), Some(nfc.clone()));
        assert_eq!(nfc, "jos\u{e9}@example.com");
        for invisible in ["ann\u{202e}@example.com", "ann\u{0}@example.com", "ann\u{1b}@example.com"] {
            assert_eq!(normalize_email(invisible), None, "{invisible:?}");
        }
    }
}
