//! Who is calling: the token from the request, its hash, and how it may be shown.

use std::borrow::Cow;

use base64::Engine;
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// Longest token accepted; anything longer is not one of ours.
const MAX_TOKEN: usize = 256;

/// The token a request presents: `Authorization: Bearer T`, or Basic with T as the user name
/// and an empty password (what Stripe SDKs and `curl -u T:` send). `Proxy-Authorization` is
/// read the same way when `proxy` is set (forward mode).
/// Whether a Stripe secret is a live-mode key (`sk_live_`, `rk_live_`), a test-mode one
/// (`sk_test_`, `rk_test_`), or neither (`None`).
pub fn key_livemode(secret: &str) -> Option<bool> {
    match secret.get(..8)? {
        "sk_live_" | "rk_live_" => Some(true),
        "sk_test_" | "rk_test_" => Some(false),
        _ => None,
    }
}

pub fn token_from(headers: &HeaderMap, header: http::header::HeaderName) -> Option<Cow<'_, str>> {
    let value = headers.get(header)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        Cow::Borrowed(rest)
    } else if scheme.eq_ignore_ascii_case("basic") {
        let raw = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (user, password) = text.split_once(':').unwrap_or((&text, ""));
        if !password.is_empty() {
            return None;
        }
        Cow::Owned(user.to_string())
    } else {
        return None;
    };
    let plausible =
        !token.is_empty() && token.len() <= MAX_TOKEN && token.bytes().all(|b| b.is_ascii_graphic());
    plausible.then_some(token)
}

pub type TokenHash = [u8; 32];

/// What a caller's address counts as for per-address limits: itself, or its /64 for IPv6,
/// which one host may hold whole.
pub fn address_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) if !v6.is_loopback() => {
            let network = u128::from(v6) & !((1u128 << 64) - 1);
            std::net::IpAddr::V6(network.into())
        }
        other => other,
    }
}

pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A token as it may appear in a message: its prefix and last four characters (`kw_***abcd`),
/// as Stripe shows keys. Short tokens show nothing at all.
pub fn redact(token: &str) -> String {
    let prefix = match token.split_once('_') {
        Some((p, _)) if p.len() <= 8 && p.bytes().all(|b| b.is_ascii_alphanumeric()) => p,
        _ => "",
    };
    if token.len() < 16 || !token.is_ascii() {
        return format!("{prefix}{}***", if prefix.is_empty() { "" } else { "_" });
    }
    let sep = if prefix.is_empty() { "" } else { "_" };
    format!("{prefix}{sep}***{}", &token[token.len() - 4..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_modes_read_from_the_prefix_only() {
        assert_eq!(key_livemode("sk_live_abc"), Some(true));
        assert_eq!(key_livemode("rk_test_abc"), Some(false));
        for other in ["", "sk_live", "pk_live_abc", "whsec_abc", "SK_LIVE_abc", "é"] {
            assert_eq!(key_livemode(other), None, "{other}");
        }
    }
    use http::header::AUTHORIZATION;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn reads_bearer_and_basic() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let cases = [
            ("Bearer kw_abc", Some("kw_abc")),
            ("bearer  kw_abc ", Some("kw_abc")),
            (&format!("Basic {}", b64.encode("kw_abc:")), Some("kw_abc")),
            (&format!("Basic {}", b64.encode("kw_abc")), Some("kw_abc")),
            (&format!("Basic {}", b64.encode("kw_abc:pw")), None),
            ("Basic !!!", None),
            ("Token kw_abc", None),
            ("Bearer", None),
            (&format!("Bearer {}", "a".repeat(300)), None),
        ];
        for (h, want) in cases {
            assert_eq!(token_from(&headers(h), AUTHORIZATION).as_deref(), want, "{h}");
        }
        assert_eq!(token_from(&HeaderMap::new(), AUTHORIZATION), None);
    }

    #[test]
    fn redaction_keeps_only_prefix_and_last_four() {
        assert_eq!(redact("kw_0123456789abcdefWXYZ"), "kw_***WXYZ");
        assert_eq!(redact("sk_live_0123456789abcdef"), "sk_***cdef");
        assert_eq!(redact("kw_short"), "kw_***");
        assert_eq!(redact("nounderscoretokenvalue"), "***alue");
        assert_eq!(redact("x"), "***");
    }
}
