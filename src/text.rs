//! Text helpers every layer uses to speak of inputs without repeating them: line numbers of
//! byte offsets, URLs and credentials as a message may show them, terminal-safe text. A leaf:
//! imports nothing from the crate.

/// The prefixes of credentials a message must never show whole: Stripe's secret and restricted
/// keys, live and test, webhook secrets, and keyward tokens.
pub const CREDENTIAL_PREFIXES: [&str; 6] = ["sk_live_", "rk_live_", "sk_test_", "rk_test_", "whsec_", "kw_"];

/// A credential as every output shows it: its known prefix, `…`, and its last 4 characters
/// (`sk_live_…cdef`); a value too short to keep 4 back is shown as its prefix and `…` alone.
pub fn credential_shown(prefix: &str, value: &str) -> String {
    let rest = value.strip_prefix(prefix).unwrap_or(value);
    match rest.char_indices().rev().nth(3) {
        Some((at, _)) if rest.chars().count() >= 8 => format!("{prefix}…{}", &rest[at..]),
        _ => format!("{prefix}…"),
    }
}

/// `s` with every credential-looking value in it shown as [`credential_shown`]: for messages
/// that quote what a person wrote or pasted (a key in `secret = "…"`, a path, a URL). A prefix
/// counts anywhere, glued to other letters or not, and takes the letters, digits and `_` that
/// follow it: a message loses a little text rather than keep a key.
pub fn redacted(s: &str) -> std::borrow::Cow<'_, str> {
    let bytes = s.as_bytes();
    let start_at = |i: usize| CREDENTIAL_PREFIXES.iter().find(|p| bytes[i..].starts_with(p.as_bytes()));
    let Some(first) = (0..bytes.len()).find(|&i| start_at(i).is_some()) else { return s.into() };
    let (mut out, mut i, mut copied) = (String::with_capacity(s.len()), first, 0);
    while i < bytes.len() {
        let Some(prefix) = start_at(i) else {
            i += 1;
            continue;
        };
        let run =
            bytes[i + prefix.len()..].iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
        // A bare prefix hides nothing (and a value shown already stays as it is).
        if run == 0 {
            i += prefix.len();
            continue;
        }
        let end = i + prefix.len() + run;
        out.push_str(&s[copied..i]);
        out.push_str(&credential_shown(prefix, &s[i..end]));
        (i, copied) = (end.max(i + 1), end);
    }
    out.push_str(&s[copied..]);
    out.into()
}

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

/// A value from an input (a name, a path, a key) as any output may quote it: credentials shown
/// as prefix and last 4, control characters escaped.
pub fn shown(s: &str) -> String {
    escaped(&redacted(s)).into_owned()
}

/// `s` safe to print to a terminal: control characters other than newlines (an `ESC[2J` that
/// clears the screen, `ESC[8m` that hides what follows, a carriage return that overwrites a
/// line) and the Unicode bidirectional controls, which reorder what a person reads, are shown
/// escaped (`\x1b`, `\r`, `\u{202e}`). For whole messages built from inputs: a tampered log
/// must not forge an "OK". A single field from an input goes through [`escaped`] instead.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    escape(s, |c| c == '\n')
}

/// One field from a log or a config (an instance, a token id) as a line may show it: as
/// [`printable`], and newlines escaped too, so a field cannot start a forged line.
pub fn escaped(s: &str) -> std::borrow::Cow<'_, str> {
    escape(s, |_| false)
}

/// Whether `s` prints as it is: [`escaped`] would leave it alone. What a configuration names
/// (services, token ids) must be, as records, reports and terminals show it.
pub fn is_printable(s: &str) -> bool {
    matches!(escaped(s), std::borrow::Cow::Borrowed(_))
}

fn escape(s: &str, keep: impl Fn(char) -> bool) -> std::borrow::Cow<'_, str> {
    let hostile = |c: char| {
        !keep(c)
            && (c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c))
    };
    if !s.chars().any(hostile) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if !hostile(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.extend(c.escape_unicode()),
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn credentials_are_shown_as_prefix_and_last_4_wherever_they_sit() {
        let r = |s| super::redacted(s).into_owned();
        assert_eq!(
            r("no [secret.sk_live_51HabcdEFGH9cdef] is defined"),
            "no [secret.sk_live_…cdef] is defined"
        );
        assert_eq!(r("/etc/xsk_test_abcdefgh1234/ca.pem"), "/etc/xsk_test_…1234/ca.pem", "glued letters");
        assert_eq!(r("rk_test_abc and whsec_0123456789 and kw_Q"), "rk_test_… and whsec_…6789 and kw_…");
        assert_eq!(r("kw_kw_aaaaaaaabbbb"), "kw_…bbbb", "a prefix inside a value is part of it");
        assert_eq!(r("sk_live_…cdef and sk_test_"), "sk_live_…cdef and sk_test_", "shown already");
        assert_eq!(r("plain ünïcode text"), "plain ünïcode text");
        assert_eq!(super::credential_shown("kw_", "kw_abcdefgh9x9Qa"), "kw_…x9Qa");
    }

    #[test]
    fn terminal_controls_are_shown_escaped() {
        assert_eq!(super::printable("plain\ntext"), "plain\ntext");
        let forged = "\u{1b}[2J\u{1b}[HOK: 1 instance\u{1b}[8m\rhidden\u{202e}";
        let shown = super::printable(forged);
        assert!(!shown.chars().any(|c| c.is_control() || c == '\u{202e}'), "{shown}");
        assert!(shown.contains("\\x1b[2J") && shown.contains("\\rhidden"), "{shown}");
        assert!(shown.ends_with("hidden\\u{202e}"), "{shown}");
        assert_eq!(super::escaped("a\nOK\t\u{7f}"), "a\\nOK\\t\\x7f");
    }
}
