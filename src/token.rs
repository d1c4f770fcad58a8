//! Minting keyward tokens.

use crate::policy::identity::hash_token;

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A fresh token: `kw_` and 43 base62 characters (256 bits) from the OS's randomness.
pub fn new_token() -> String {
    let mut out = String::from("kw_");
    let mut buf = [0u8; 64];
    while out.len() < 3 + 43 {
        getrandom::fill(&mut buf).expect("the OS has randomness");
        // Rejection sampling keeps every character equally likely.
        for b in buf.iter().filter(|&&b| b < 248) {
            if out.len() == 3 + 43 {
                break;
            }
            out.push(ALPHABET[(b % 62) as usize] as char);
        }
    }
    out
}

/// The `[[service.token]]` block that admits `token`.
pub fn snippet(id: &str, token: &str) -> String {
    format!("[[service.token]]\nid = \"{id}\"\nsha256 = \"{}\"\n", hex::encode(hash_token(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_distinct_and_base62() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 46);
        assert!(a[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(snippet("x", &a).contains(&hex::encode(hash_token(&a))));
    }
}
