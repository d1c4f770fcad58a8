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
