//! Text helpers every layer uses to speak of inputs without repeating them: line numbers of
//! byte offsets, URLs as a message may show them. A leaf: imports nothing from the crate.

/// A URL as an error may show it: everything up to its last `@` replaced (a password may
/// hold `/` or `?` when written unencoded), parseable or not.
pub fn url_shown(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    match url[start..].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..start], &url[start + at + 1..]),
        None => url.to_string(),
    }
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

/// `s` safe to print to a terminal: control characters other than newlines (an `ESC[2J` that
/// clears the screen, `ESC[8m` that hides what follows, a carriage return that overwrites a
/// line) and the Unicode bidirectional controls, which reorder what a person reads, are shown
/// escaped (`\u{1b}`). For text that comes from inputs: a tampered log must not forge an "OK".
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let hostile = |c: char| {
        (c.is_control() && c != '\n')
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    if !s.chars().any(hostile) {
        return s.into();
    }
    s.chars()
        .map(|c| if hostile(c) { c.escape_unicode().to_string() } else { c.to_string() })
        .collect::<String>()
        .into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn terminal_controls_are_shown_escaped() {
        assert_eq!(super::printable("plain\ntext"), "plain\ntext");
        let forged = "\u{1b}[2J\u{1b}[HOK: 1 instance\u{1b}[8m\rhidden\u{202e}";
        let shown = super::printable(forged);
        assert!(!shown.chars().any(|c| c.is_control() || c == '\u{202e}'), "{shown}");
        assert!(shown.contains("\\u{1b}[2J") && shown.contains("\\u{d}hidden"), "{shown}");
    }
}
