//! keyward's token format: `kw_`, 43 base62 characters of randomness (256 bits), then 6 base62
//! characters of the CRC32 of those 43, as GitHub's tokens do: a secret scanner can tell a real
//! token from a lookalike offline, without asking anyone. Tokens minted before the checksum
//! (`kw_` and 43 characters) keep working: the configuration holds their hashes, not a format.

pub const PREFIX: &str = "kw_";
/// Random characters after the prefix.
pub const BODY: usize = 43;
/// Checksum characters after the body.
pub const CHECK: usize = 6;
pub const LEN: usize = PREFIX.len() + BODY + CHECK;

pub const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// `kw_` + `body` + its checksum. `body` is 43 base62 characters.
pub fn with_checksum(body: &str) -> String {
    let mut out = String::with_capacity(LEN);
    out.push_str(PREFIX);
    out.push_str(body);
    out.push_str(&base62(crc32fast::hash(body.as_bytes())));
    out
}

/// Whether `token` is a whole keyward token whose checksum holds.
pub fn checksum_ok(token: &str) -> bool {
    let Some(rest) = token.strip_prefix(PREFIX) else { return false };
    if rest.len() != BODY + CHECK || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (body, check) = rest.split_at(BODY);
    base62(crc32fast::hash(body.as_bytes())) == check
}

/// A CRC32 as 6 base62 digits, most significant first (62^6 > 2^32).
fn base62(mut n: u32) -> String {
    let mut digits = [b'0'; CHECK];
    for d in digits.iter_mut().rev() {
        *d = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8(digits.to_vec()).expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checksum_tells_a_token_from_a_lookalike() {
        let body = "a".repeat(BODY);
        let token = with_checksum(&body);
        assert_eq!(token.len(), LEN);
        assert!(checksum_ok(&token));
        // One character changed anywhere, a character too many or too few, another prefix.
        let mut typo = token.clone().into_bytes();
        typo[10] = b'b';
        assert!(!checksum_ok(std::str::from_utf8(&typo).unwrap()));
        assert!(!checksum_ok(&format!("{token}0")));
        assert!(!checksum_ok(&token[..LEN - 1]));
        assert!(!checksum_ok(&token.replacen("kw_", "kx_", 1)));
        assert!(!checksum_ok(&format!("kw_{}", "a".repeat(BODY))), "an old token has no checksum");
        assert_eq!(base62(0), "000000");
        assert_eq!(base62(u32::MAX), "4gfFC3");
    }
}
