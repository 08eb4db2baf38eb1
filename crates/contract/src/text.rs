//! Rules for text people type and other people read: titles, emails.
//!
//! A control character (NUL, ESC, BEL) can break whatever displays or logs the text, a bidi
//! override (U+202E) makes `gpj.exe` read as `exe.jpg`, and a title made only of zero-width
//! characters looks empty while passing "is required".

/// C0/C1 controls (tabs and newlines included: a title or an email is one line).
pub fn is_control(c: char) -> bool {
    c.is_control()
}

/// Characters that change the direction of the text around them: embeddings, overrides,
/// isolates and the marks (LRM, RLM, ALM).
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Characters that show nothing: whitespace and the zero-width ones (ZWSP, ZWNJ, ZWJ, word
/// joiner, BOM, soft hyphen, the invisible operators, Hangul and Braille blanks).
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{200B}'..='\u{200D}'
                | '\u{2060}'..='\u{2064}'
                | '\u{FEFF}'
                | '\u{00AD}'
                | '\u{034F}'
                | '\u{180E}'
                | '\u{3164}'
                | '\u{FFA0}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{2800}'
        )
}

/// Whether the text holds a control or a bidi control anywhere.
pub fn has_forbidden(text: &str) -> bool {
    text.chars().any(|c| is_control(c) || is_bidi_control(c))
}

/// Whether nothing visible is left (empty, spaces, zero-width characters only).
pub fn is_blank(text: &str) -> bool {
    text.chars().all(is_invisible)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_bidi_and_invisibles() {
        for bad in ["a\u{0}b", "\u{1b}[31mred", "bell\u{7}", "gpj\u{202E}exe", "x\u{2067}y", "tab\there", "line\nbreak"]
        {
            assert!(has_forbidden(bad), "{bad:?}");
        }
        for fine in ["Concert", "Café Tacvba", "東京ドーム", "مرحبا", "Zoë & Öl", "emoji 🎫", "a\u{200D}b"]
        {
            assert!(!has_forbidden(fine), "{fine:?}");
        }
        for blank in ["", "   ", "\u{200B}", "\u{200B}\u{FEFF}\u{2060}", "\u{3000}\u{00A0}"] {
            assert!(is_blank(blank), "{blank:?}");
        }
        assert!(!is_blank("\u{200B}a"));
    }
}
