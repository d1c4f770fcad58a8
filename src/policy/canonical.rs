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

/// Headers keyward checks, sets or drops. CGI-style servers (Rack on Puma or WEBrick, many
/// Python servers) read `_` in a header name as `-`: `Stripe_Account` is `Stripe-Account` to
/// them, so a name that spells one of these with `_` is refused (names with `keyward-` and
/// `x-forwarded-` as prefix too). Other names with `_` pass: keyward decides nothing on them,
/// and dropping them (as nginx does) would change the request without saying so.
const ALIASED: [&str; 21] = [
    "authorization",
    "proxy-authorization",
    "host",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "forwarded",
    "stripe-account",
    "stripe-context",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "expect",
];

/// Why a target is refused; the text completes "the request target …".
pub type Reason = &'static str;

/// A request target keyward reads as the upstream will: its path, the `expand` fields of
/// its query string, and how the upstream reads its body.
#[derive(Debug)]
pub struct Target<'a> {
    pub path: &'a str,
    pub expand: Vec<String>,
    pub body: BodyShape<'a>,
}

/// How the upstream reads a request's body, by its Content-Type (read here, once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyShape<'a> {
    /// A form: declared as one, or a POST that declares nothing (frameworks read an untyped
    /// POST body as a form), so its fields are checked.
    Form,
    /// `multipart/*`, with its one boundary.
    Multipart(&'a str),
    /// Anything else (JSON, a file), as it is.
    Other,
}

/// Checks the target and the headers that could change how it is read.
pub fn check<'a>(
    method: &Method,
    uri: &'a Uri,
    version: Version,
    headers: &'a HeaderMap,
) -> Result<Target<'a>, Reason> {
    // HTTP/2 always carries :authority; in HTTP/1 an absolute-form target names a host
    // the client hopes to reach, which reverse mode never forwards to.
    if uri.authority().is_some() && version < Version::HTTP_2 {
        return Err("is in absolute form; send only the path");
    }
    if *method == Method::CONNECT {
        return Err("uses CONNECT, which this listener does not serve");
    }
    let body = check_headers(method, headers)?;
    let path = uri.path();
    check_path(path)?;
    let expand = match uri.query() {
        Some(q) => check_query(q)?,
        None => Vec::new(),
    };
    Ok(Target { path, expand, body })
}

fn check_headers<'a>(method: &Method, headers: &'a HeaderMap) -> Result<BodyShape<'a>, Reason> {
    if METHOD_OVERRIDES.iter().any(|h| headers.contains_key(h)) {
        return Err("carries a method-override header");
    }
    if headers.keys().any(|name| is_alias(name.as_str())) {
        return Err("has a header name with _ that servers read as a header keyward checks or sets");
    }
    for name in &DECISIVE {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err("carries more than one Content-Type, Stripe-Account or Stripe-Context");
        }
    }
    let body = match headers.get(http::header::CONTENT_TYPE) {
        Some(ct) => check_content_type(method, ct)?,
        None if *method == Method::POST => BodyShape::Form,
        None => BodyShape::Other,
    };
    // keyward reads bodies as sent; something in front of the API might decode them first.
    if headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err("has a Content-Encoding: send the body as it is");
    }
    if headers.get_all(http::header::CONNECTION).iter().any(|v| {
        // An unreadable list could name anything.
        v.to_str().map_or(true, |list| {
            list.split(',').any(|t| DECISIVE.iter().any(|h| t.trim().eq_ignore_ascii_case(h.as_str())))
        })
    }) {
        return Err("comes with a Connection header naming a header keyward checks");
    }
    Ok(body)
}

/// `Stripe_Account`, `X-HTTP_Method-Override`, `Keyward_Debug`: a name with `_` that, with
/// `_` read as `-`, is one keyward checks, sets or drops. (Names arrive lowercase.)
fn is_alias(name: &str) -> bool {
    if !name.contains('_') {
        return false;
    }
    let folded = name.replace('_', "-");
    ALIASED.contains(&folded.as_str()) || folded.starts_with("keyward-") || folded.starts_with("x-forwarded-")
}

/// Rack reads the media type up to a `;` or `,` and an empty one as none (a POST body is then
/// a form): refuse what is not one readable media type, and say how the body is read.
fn check_content_type<'a>(method: &Method, ct: &'a http::HeaderValue) -> Result<BodyShape<'a>, Reason> {
    let ct = ct.to_str().map_err(|_| "has a Content-Type that is not readable text")?;
    if ct.trim().is_empty() {
        return Err("has an empty Content-Type");
    }
    if ct.contains(',') {
        return Err("has a Content-Type that is a list");
    }
    Ok(match media_type(ct).as_str() {
        "application/x-www-form-urlencoded" if *method == Method::POST => BodyShape::Form,
        m if m.starts_with("multipart/") => match crate::policy::multipart::boundary(ct) {
            Some(boundary) => BodyShape::Multipart(boundary),
            None => return Err("has a multipart Content-Type without one plain boundary"),
        },
        _ => BodyShape::Other,
    })
}

/// The media type of a Content-Type value, lowercase: `Text/Plain; charset=x` → `text/plain`.
pub fn media_type(ct: &str) -> String {
    ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
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
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
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

fn check_query(q: &str) -> Result<Vec<String>, Reason> {
    if q.bytes().any(|c| !(0x20..0x7f).contains(&c)) {
        return Err("query has a control or non-ASCII byte");
    }
    crate::policy::params::read(q.as_bytes())
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
            ("/v1/charges/%+1", "malformed"),
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
    fn header_names_with_underscores_that_alias_checked_ones() {
        for name in [
            "stripe_account",
            "stripe_context",
            "x_http_method_override",
            "x-http_method-override",
            "content_type",
            "keyward_debug",
            "x_forwarded_for",
            "proxy_authorization",
            "transfer_encoding",
        ] {
            assert!(is_alias(name), "{name}");
        }
        for name in ["stripe-account", "x_custom", "stripe_version", "idempotency_key_x", "authorization"] {
            assert!(!is_alias(name), "{name}");
        }
    }

    #[test]
    fn content_types_read_one_way() {
        let ok = [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded; charset=utf-8",
            "multipart/form-data; boundary=abc",
            "multipart/form-data; boundary=\"a-b\"",
            "application/json",
        ];
        let shapes = [
            BodyShape::Form,
            BodyShape::Form,
            BodyShape::Multipart("abc"),
            BodyShape::Multipart("a-b"),
            BodyShape::Other,
        ];
        for (ct, shape) in ok.into_iter().zip(shapes) {
            let value: http::HeaderValue = ct.parse().unwrap();
            assert_eq!(check_content_type(&Method::POST, &value), Ok(shape), "{ct}");
        }
        let form: http::HeaderValue = ok[0].parse().unwrap();
        assert_eq!(check_content_type(&Method::GET, &form), Ok(BodyShape::Other), "a GET has no form");
        let bad = [
            ("", "empty"),
            ("  ", "empty"),
            ("application/x-www-form-urlencoded, text/plain", "list"),
            ("application/x-www-form-urlencoded,", "list"),
            ("multipart/form-data", "boundary"),
            ("multipart/mixed; boundary=", "boundary"),
            ("multipart/form-data; boundary = AAA", "boundary"),
        ];
        for (ct, want) in bad {
            let got = check_content_type(&Method::POST, &ct.parse().unwrap()).unwrap_err();
            assert!(got.contains(want), "{ct:?}: {got}");
        }
    }
}
