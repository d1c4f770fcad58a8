//! Canonical request targets. keyward must read a path exactly as the upstream will, so any
//! target that some server could read two ways is refused outright: never "normalise and go on".

use http::header::HeaderName;
use http::{HeaderMap, Method, Uri, Version};

/// Longest path accepted (Stripe's longest template is well under 100 bytes).
pub const MAX_PATH: usize = 1024;

/// Headers some frameworks use to swap the method: the upstream might honour them.
const METHOD_OVERRIDES: [HeaderName; 4] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-original-method"),
];

/// Headers keyward decides on. A `Connection` header naming one would have it dropped on the
/// way: keyward would check (and record) one request and forward another.
const DECISIVE: [HeaderName; 3] = [
    http::header::CONTENT_TYPE,
    HeaderName::from_static("stripe-account"),
    HeaderName::from_static("stripe-context"),
];

/// Why a target is refused; the text completes "the request target …".
pub type Reason = &'static str;

/// Checks the target and the headers that could change how it is read. Returns the path.
pub fn check<'a>(
    method: &Method,
    uri: &'a Uri,
    version: Version,
    headers: &HeaderMap,
) -> Result<&'a str, Reason> {
    // HTTP/2 always carries :authority; in HTTP/1 an absolute-form target names a host
    // the client hopes to reach, which reverse mode never forwards to.
    if uri.authority().is_some() && version < Version::HTTP_2 {
        return Err("is in absolute form; send only the path");
    }
    if *method == Method::CONNECT {
        return Err("uses CONNECT, which this listener does not serve");
    }
    if METHOD_OVERRIDES.iter().any(|h| headers.contains_key(h)) {
        return Err("carries a method-override header");
    }
    if headers.get_all(http::header::CONTENT_TYPE).iter().nth(1).is_some() {
        return Err("carries more than one Content-Type");
    }
    if headers.get_all(http::header::CONNECTION).iter().any(|v| {
        // An unreadable list could name anything.
        v.to_str().map_or(true, |list| {
            list.split(',').any(|t| DECISIVE.iter().any(|h| t.trim().eq_ignore_ascii_case(h.as_str())))
        })
    }) {
        return Err("comes with a Connection header naming a header keyward checks");
    }
    let path = uri.path();
    check_path(path)?;
    if let Some(q) = uri.query() {
        check_query(q)?;
    }
    Ok(path)
}

/// The path rules, on their own so they can be table-tested and fuzzed.
pub fn check_path(path: &str) -> Result<(), Reason> {
    if path.len() > MAX_PATH {
        return Err("path is too long");
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err("path does not start with /");
    };
    if rest.is_empty() {
        return Err("path is empty");
    }
    for seg in rest.split('/') {
        check_segment(seg)?;
    }
    Ok(())
}

fn check_segment(seg: &str) -> Result<(), Reason> {
    if seg.is_empty() {
        return Err("has an empty path segment (// or a trailing /)");
    }
    if seg == "." || seg == ".." {
        return Err("has a dot segment");
    }
    if seg.ends_with('.') {
        return Err("has a path segment ending in a dot");
    }
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let decoded = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or("has a malformed percent-encoding")?;
                if matches!(decoded, b'/' | b'\\' | b'.' | b'%' | b';') {
                    return Err("percent-encodes a path delimiter (/ \\ . % ;)");
                }
                if !(0x20..0x7f).contains(&decoded) {
                    return Err("percent-encodes a control or non-ASCII byte");
                }
                // `%63harges` is `charges` to the upstream but a parameter to the catalog.
                if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'_' | b'~') {
                    return Err("percent-encodes a letter, digit, -, _ or ~, which need no encoding");
                }
                i += 3;
            }
            b'\\' => return Err("has a backslash"),
            b';' => return Err("has a ; path parameter"),
            0 => return Err("has a NUL byte"),
            c if c < 0x20 || c == 0x7f => return Err("has a control byte"),
            c if c >= 0x80 => return Err("has a non-ASCII byte"),
            c if c.is_ascii_alphanumeric() || b"-_~!$&'()*+,=:@".contains(&c) || c == b'.' => i += 1,
            _ => return Err("has a character that must be percent-encoded"),
        }
    }
    Ok(())
}

fn check_query(q: &str) -> Result<(), Reason> {
    if q.bytes().any(|c| !(0x20..0x7f).contains(&c)) {
        return Err("query has a control or non-ASCII byte");
    }
    if overrides_method(q) {
        return Err("query carries a _method override");
    }
    Ok(())
}

/// Whether form-encoded fields (a query string or a form body) carry `_method`, which some
/// frameworks honour as the method, in any spelling of its percent-encoding.
pub fn overrides_method(encoded: &str) -> bool {
    encoded
        .split('&')
        .any(|kv| crate::expand::decode(kv.split('=').next().unwrap_or("")).as_deref() == Some("_method"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_table() {
        let ok = ["/v1/charges", "/v1/charges/ch_3NxAbc", "/v1/coupons/25%20OFF", "/v1/customers/search"];
        for p in ok {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
        let bad = [
            ("/v1/charges/../customers", "dot segment"),
            ("/v1/./charges", "dot segment"),
            ("/v1/charges/%2e%2e/customers", "delimiter"),
            ("/v1/charges%2fch_1", "delimiter"),
            ("/v1/charges%2Fch_1", "delimiter"),
            ("/v1/charges%5cch_1", "delimiter"),
            ("/v1/charges\\ch_1", "backslash"),
            ("/v1//charges", "empty"),
            ("/v1/charges/", "empty"),
            ("/v1/charges;x=1", "; path"),
            ("/v1/charges/ch_1%00", "control"),
            ("/v1/charges/ch_1%0a", "control"),
            ("/v1/charges/ch_1%ff", "non-ASCII"),
            ("/v1/charges/%zz", "malformed"),
            ("/v1/charges/%2", "malformed"),
            ("/v1/charges.", "ending in a dot"),
            ("/v1/charges/ch_1.", "ending in a dot"),
            ("/v1/charges/\u{e9}", "non-ASCII"),
            ("/v1/charges/a b", "percent-encoded"),
            ("/v1/charges/%25", "delimiter"),
            ("/v1/%63harges", "need no encoding"),
            ("/v1/customers/%73earch", "need no encoding"),
            ("/v1/charges/ch%5F1", "need no encoding"),
            ("v1/charges", "start with"),
            ("/", "empty"),
        ];
        for (p, want) in bad {
            let got = check_path(p).unwrap_err();
            assert!(got.contains(want), "{p}: {got}");
        }
        assert!(check_path(&format!("/v1/{}", "a".repeat(MAX_PATH))).unwrap_err().contains("too long"));
    }

    #[test]
    fn method_overrides_in_any_encoding() {
        for q in [
            "_method=DELETE",
            "a=1&_method=DELETE",
            "%5Fmethod=DELETE",
            "%5fmethod=delete",
            "%5F%6Dethod=x",
            "_method",
        ] {
            assert!(overrides_method(q), "{q}");
        }
        for q in ["method=DELETE", "a=_method", "x_method=1", "metadata[_method]=1"] {
            assert!(!overrides_method(q), "{q}");
        }
    }
}
