//! A keyward token where it does not belong: anywhere in a request but `Authorization` (and
//! `Proxy-Authorization`). keyward removes those two before forwarding; a token in the query,
//! the path, another header or the body would reach the API as it is and sit in its request
//! logs. Such a request is refused, never forwarded, and its token counted as exposed.
//!
//! A token is `kw_` and 49 letters and digits whose checksum holds (`token_format`), or `kw_`
//! and 43 whose hash is configured (tokens minted before the checksum), whatever is glued
//! before or after it; its `_` may also be written `%5F` (a URL, a form) or `\u005f` (JSON).
//! The checksum keeps random data from looking like one (one chance in 2^32 per `kw_` followed
//! by 49 letters and digits).

use http::HeaderMap;
use http::header::{AUTHORIZATION, PROXY_AUTHORIZATION};

use crate::policy::identity::{TokenHash, hash_token};
use crate::policy::model::TokenRef;
use crate::policy::token_format::{BODY, CHECK, PREFIX, checksum_ok};

/// The ways a token's prefix is written: as it is, percent-encoded, JSON-escaped.
const PREFIXES: [&[u8]; 5] = [b"kw_", b"kw%5F", b"kw%5f", b"kw\\u005f", b"kw\\u005F"];
/// The most bytes a token can take, in any of its writings.
pub const SPAN: usize = 8 + BODY + CHECK;

pub type Tokens = foldhash::HashMap<TokenHash, TokenRef>;

/// A token found: whose it is, when keyward knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposed {
    pub owner: Option<TokenRef>,
}

/// The first keyward token in `hay`.
pub fn find(hay: &[u8], tokens: &Tokens) -> Option<Exposed> {
    memchr::memmem::find_iter(hay, b"kw").find_map(|i| at(&hay[i..], tokens))
}

/// The token that starts `from`, if one does.
fn at(from: &[u8], tokens: &Tokens) -> Option<Exposed> {
    let prefix = PREFIXES.iter().find(|p| from.starts_with(p))?;
    let rest = &from[prefix.len()..];
    let run = rest.iter().take(BODY + CHECK).take_while(|b| b.is_ascii_alphanumeric()).count();
    if run < BODY {
        return None;
    }
    let letters = std::str::from_utf8(&rest[..run]).expect("ASCII");
    let checked = format!("{PREFIX}{letters}");
    if run == BODY + CHECK && checksum_ok(&checked) {
        return Some(Exposed { owner: tokens.get(&hash_token(&checked)).copied() });
    }
    let old = tokens.get(&hash_token(&checked[..PREFIX.len() + BODY]))?;
    Some(Exposed { owner: Some(*old) })
}

/// How many of `hay`'s last bytes could begin a token that bytes still to come complete: a
/// stream holds them back until it knows.
pub fn pending(hay: &[u8]) -> usize {
    let from = hay.len().saturating_sub(SPAN - 1);
    memchr::memchr_iter(b'k', &hay[from..])
        .map(|i| from + i)
        .find(|&p| could_begin(&hay[p..]))
        .map_or(0, |p| hay.len() - p)
}

/// Whether `tail` (which runs to the end of what is in) is the start of a token's writing.
fn could_begin(tail: &[u8]) -> bool {
    PREFIXES.iter().any(|p| {
        if tail.len() <= p.len() {
            return p.starts_with(tail);
        }
        let rest = &tail[p.len()..];
        tail.starts_with(p) && rest.len() < BODY + CHECK && rest.iter().all(u8::is_ascii_alphanumeric)
    })
}

/// A token in the request's head outside `Authorization`: in the path, the query string or a
/// header. Says where, and whose it is.
pub fn in_head(parts: &http::request::Parts, tokens: &Tokens) -> Option<(String, Exposed)> {
    let uri = &parts.uri;
    if let Some(e) = find(uri.path().as_bytes(), tokens) {
        return Some(("the path".into(), e));
    }
    if let Some(e) = uri.query().and_then(|q| find(q.as_bytes(), tokens)) {
        return Some(("the query string".into(), e));
    }
    in_headers(&parts.headers, tokens).map(|(name, e)| (format!("the {name} header"), e))
}

fn in_headers<'h>(headers: &'h HeaderMap, tokens: &Tokens) -> Option<(&'h str, Exposed)> {
    headers
        .iter()
        .filter(|(name, v)| **name != AUTHORIZATION && **name != PROXY_AUTHORIZATION && v.len() > BODY)
        .find_map(|(name, v)| find(v.as_bytes(), tokens).map(|e| (name.as_str(), e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::token_format::with_checksum;

    fn token() -> String {
        with_checksum(&"Ab3".repeat(15)[..BODY])
    }

    #[test]
    fn a_token_is_found_however_its_prefix_is_written_and_whatever_is_glued_to_it() {
        let t = token();
        let none = Tokens::default();
        let body = &t[PREFIX.len()..];
        for hay in [
            t.clone(),
            format!("x{t}y"),
            format!("api_key=kw%5F{body}"),
            format!("api_key=kw%5f{body}&a=b"),
            format!(r#"{{"k":"kw\u005f{body}"}}"#),
            format!("Bearer {t}"),
        ] {
            assert_eq!(find(hay.as_bytes(), &none), Some(Exposed { owner: None }), "{hay}");
        }
        // Lookalikes: one letter short, one wrong, another prefix, an old token nobody holds.
        for hay in [
            t[..t.len() - 1].to_string(),
            t.replace('A', "B"),
            t.replacen("kw_", "kx_", 1),
            format!("kw_{}", "a".repeat(BODY)),
            "kw kw_ kw%5 kw\\u00 kwkwkw".into(),
        ] {
            assert_eq!(find(hay.as_bytes(), &none), None, "{hay}");
        }
    }

    #[test]
    fn an_old_token_is_found_by_its_configured_hash() {
        let old = format!("kw_{}", "Q".repeat(BODY));
        let owner = TokenRef { service: 1, token: 2 };
        let tokens: Tokens = [(hash_token(&old), owner)].into_iter().collect();
        assert_eq!(find(format!("?k={old}&x").as_bytes(), &tokens), Some(Exposed { owner: Some(owner) }));
        assert_eq!(find(format!("{old}QQ").as_bytes(), &tokens), Some(Exposed { owner: Some(owner) }));
        assert_eq!(find(old.as_bytes(), &Tokens::default()), None);
    }

    #[test]
    fn what_could_begin_a_token_is_held_back_and_nothing_else() {
        let t = token();
        for cut in 1..t.len() {
            let hay = format!("abc {}", &t[..cut]);
            assert_eq!(pending(hay.as_bytes()), cut, "{cut}");
        }
        assert_eq!(pending(b"abc kw\\u00"), 6);
        assert_eq!(pending(b"abc kw%5"), 4);
        assert_eq!(pending(b"abc k"), 1);
        assert_eq!(pending(b"abc kx"), 0);
        assert_eq!(pending(b"abc kw_ab-"), 0);
        assert_eq!(pending(t.as_bytes()), 0, "a whole token is decided, not held");
        assert_eq!(pending(b""), 0);
    }
}
