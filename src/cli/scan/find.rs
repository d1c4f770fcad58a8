//! Tokens and keys in one text, line by line, with no word boundary asked for: a keyward token
//! is any 52 characters from a `kw_` whose checksum holds, whatever letters are glued before or
//! after it (its checksum, not its surroundings, tells it from a lookalike), or, with
//! `--config`, any 46 whose hash is configured; a Stripe key is its prefix and 16 or more
//! letters and digits. A value that runs to the end of its line is joined with the next
//! (wrapped at a width, or continued with `\`), and a line holding `%XX` or `\uXXXX` escapes
//! is read decoded too.

use keyward::policy::identity::hash_token;
use keyward::policy::token_format::{self, BODY, CHECK, PREFIX};
use keyward::text::{CREDENTIAL_PREFIXES, credential_shown};

use super::{Found, Owners};

/// Shorter than this after the prefix is a placeholder (`sk_test_...`), not a key.
const STRIPE_MIN: usize = 16;
/// Longer than any Stripe key: where a run of letters stops being read.
const STRIPE_MAX: usize = 512;
/// How many following lines a value broken over lines is looked for in.
const JOIN_LINES: usize = 3;

/// Every token and key in `text`; `line` is 1-based.
pub fn find(text: &[u8], owners: &Owners) -> Vec<Found> {
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    let mut out: Vec<Found> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let mut found = in_line(line, &lines[i + 1..], owners);
        if let Some(plain) = unescaped(line) {
            found.extend(in_line(&plain, &[], owners).into_iter().map(|f| f.how("escaped")));
        }
        for f in found {
            let f = Found { line: i + 1, ..f };
            if !out.iter().any(|o| o.same(&f)) {
                out.push(f);
            }
        }
    }
    out
}

/// The tokens and keys starting in `line`, read on into `next` lines when one is broken.
fn in_line(line: &[u8], next: &[&[u8]], owners: &Owners) -> Vec<Found> {
    let mut out = Vec::new();
    // Every prefix holds a `_`: look only where one is.
    for us in memchr::memchr_iter(b'_', line) {
        for prefix in CREDENTIAL_PREFIXES {
            let Some(start) = us.checked_sub(prefix.find('_').expect("a prefix holds _")) else { continue };
            if !line[start..].starts_with(prefix.as_bytes()) {
                continue;
            }
            let after = &line[start + prefix.len()..];
            let found = match prefix {
                PREFIX => token(after, next, owners),
                _ => stripe(prefix, after, next),
            };
            out.extend(found);
        }
    }
    out
}

/// The keyward token whose body starts `after` (a `kw_` was just before it), if any.
fn token(after: &[u8], next: &[&[u8]], owners: &Owners) -> Option<Found> {
    // A token is checked by its checksum, so a join across a bare line end is safe to try.
    let (body, joined) = alnum_run(after, next, BODY + CHECK, true);
    let candidate = |n: usize| format!("{PREFIX}{}", String::from_utf8_lossy(&body[..n]));
    let checked = (body.len() == BODY + CHECK).then(|| candidate(BODY + CHECK));
    let value = checked.filter(|t| token_format::checksum_ok(t)).or_else(|| {
        // A token minted before the checksum: 43 characters whose hash is configured.
        let old = (body.len() >= BODY && !owners.is_empty()).then(|| candidate(BODY))?;
        owners.contains_key(&hash_token(&old)).then_some(old)
    })?;
    let key = hash_token(&value);
    let found = Found::new("keyward token", credential_shown(PREFIX, &value), key);
    let found = Found { owner: owners.get(&key).cloned(), ..found };
    Some(if joined { found.how("split over lines") } else { found })
}

/// The Stripe key or webhook secret whose rest starts `after` (`prefix` was just before it).
fn stripe(prefix: &str, after: &[u8], next: &[&[u8]]) -> Option<Found> {
    // No checksum: joined only across a `\` line continuation, never a bare line end.
    let (rest, joined) = alnum_run(after, next, STRIPE_MAX, false);
    if rest.len() < STRIPE_MIN {
        return None;
    }
    let value = format!("{prefix}{}", String::from_utf8_lossy(&rest));
    let kind = if prefix.starts_with("whsec") { "Stripe webhook secret" } else { "Stripe key" };
    let found = Found::new(kind, credential_shown(prefix, &value), hash_token(&value));
    Some(if joined { found.how("split over lines") } else { found })
}

/// The letters and digits that start `first`, at most `want`, read on into the `next` lines
/// while they run to the end of a line that ends in `\` (or, with `wrapped`, any line end), and
/// whether another line gave any of them.
fn alnum_run(first: &[u8], next: &[&[u8]], want: usize, wrapped: bool) -> (Vec<u8>, bool) {
    let (mut out, mut joined) = (Vec::new(), false);
    let parts = std::iter::once(first).chain(next.iter().take(JOIN_LINES).map(|l| l.trim_ascii_start()));
    for (i, part) in parts.enumerate() {
        let n = part.iter().take_while(|b| b.is_ascii_alphanumeric()).count().min(want - out.len());
        out.extend_from_slice(&part[..n]);
        joined |= i > 0 && n > 0;
        let tail = &part[n..];
        let tail = tail.strip_suffix(b"\r").unwrap_or(tail);
        if out.len() == want || !(tail == b"\\" || (wrapped && tail.is_empty())) {
            break;
        }
    }
    (out, joined)
}

/// `line` with its `%XX` and ASCII `\uXXXX` escapes decoded (`kw%5F…` in a URL, `kw\u005f…`
/// in JSON), if it has any.
fn unescaped(line: &[u8]) -> Option<Vec<u8>> {
    let hex = |s: &[u8]| {
        let digits = s.iter().all(u8::is_ascii_hexdigit).then(|| std::str::from_utf8(s).ok()).flatten();
        digits.and_then(|d| u32::from_str_radix(d, 16).ok())
    };
    let (mut out, mut i, mut changed) = (Vec::with_capacity(line.len()), 0, false);
    while i < line.len() {
        let escape = match &line[i..] {
            [b'%', a, b, ..] => hex(&[*a, *b]).map(|c| (c, 3)),
            [b'\\', b'u', rest @ ..] if rest.len() >= 4 => {
                hex(&rest[..4]).filter(|c| *c < 0x80).map(|c| (c, 6))
            }
            _ => None,
        };
        match escape {
            Some((c, len)) => {
                out.push(c as u8);
                (i, changed) = (i + len, true);
            }
            None => {
                out.push(line[i]);
                i += 1;
            }
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> Vec<(usize, String, Vec<&'static str>)> {
        find(text.as_bytes(), &Owners::new()).into_iter().map(|f| (f.line, f.shown, f.how)).collect()
    }

    #[test]
    fn a_token_is_found_glued_escaped_and_broken_over_lines() {
        let token = token_format::with_checksum(&"Q".repeat(BODY));
        let last4 = format!("kw_…{}", &token[token.len() - 4..]);
        let (head, tail) = token.split_at(40);
        let escaped = token.replacen('_', "%5F", 1);
        let json = token.replacen('_', "\\u005f", 1);
        for (text, line, how) in [
            (format!("\"a\\n{token}\\t\""), 1, vec![]),
            (format!("xkw_{token}abc"), 1, vec![]),
            (format!("token%3D{token}%26"), 1, vec![]),
            (format!("url={escaped}"), 1, vec!["escaped"]),
            (format!("{{\"t\": \"{json}\"}}"), 1, vec!["escaped"]),
            (format!("x\nT={head}\r\n{tail}\n"), 2, vec!["split over lines"]),
            (format!("T={head}\\\n    {tail}"), 1, vec!["split over lines"]),
        ] {
            assert_eq!(shown(&text), [(line, last4.clone(), how)], "{text}");
        }
        let live = format!("sk_live_{}", "9".repeat(24));
        assert_eq!(shown(&format!("x{live}")), [(1, "sk_live_…9999".into(), vec![])], "glued before");
        // A bare line end after a Stripe key ends it: no checksum to tell a wrong join.
        assert_eq!(shown(&format!("{live}\nMORE")), [(1, "sk_live_…9999".into(), vec![])]);
    }

    #[test]
    fn lookalikes_and_any_text_are_not_reported() {
        let wrong = format!("kw_{}", "Q".repeat(BODY + CHECK));
        let short = token_format::with_checksum(&"Q".repeat(BODY));
        for text in [
            format!("{wrong} {wrong}abc x{wrong}"),
            format!("{}\n{}", &short[..30], &short[31..]),
            "sk_test_... sk_test_short task_test_results_1 whsec_".into(),
            "… é—kw_ …sk_live_ ☃whsec_ %zz \\u12 \\u00ff %".into(),
        ] {
            assert_eq!(shown(&text), [], "{text}");
        }
    }
}
