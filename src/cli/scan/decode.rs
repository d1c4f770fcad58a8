//! What a file or blob holds, through the layers a token hides under: gzip, UTF-16 and base64.
//! Each decoded layer is read like the file itself (its tokens, then its own layers, to a
//! depth): base64 in a JSON file, gzip in base64 (a Helm release), base64 in UTF-16.

use std::io::Read;

use super::find::find;
use super::{Found, Owners};

/// Layers under layers read: gzip in base64 in base64 and no deeper.
const DEPTH: usize = 3;
/// Base64 shorter than this cannot hold a key: `whsec_` and 16 characters take 30.
const BASE64_MIN: usize = 30;
/// The prefixes as UTF-16 (either byte order: found one byte apart), where a UTF-16 text is.
const UTF16_PREFIXES: [&[u8]; 4] = [b"k\0w\0_\0", b"s\0k\0_\0", b"r\0k\0_\0", b"w\0h\0s\0e\0c\0_\0"];

/// The tokens and keys in `bytes`, and why what it holds was not read whole, if it was not
/// (a gzip layer past `max` bytes or broken).
pub fn content(bytes: &[u8], owners: &Owners, max: usize) -> (Vec<Found>, Vec<String>) {
    let mut partial = Vec::new();
    let mut found = Vec::new();
    for f in layer(bytes, owners, max, 0, &mut partial) {
        if !found.iter().any(|o: &Found| o.same(&f)) {
            found.push(f);
        }
    }
    (found, partial)
}

fn layer(bytes: &[u8], owners: &Owners, max: usize, depth: usize, partial: &mut Vec<String>) -> Vec<Found> {
    let mut out = find(bytes, owners);
    if depth == DEPTH {
        return out;
    }
    let inner = |bytes: &[u8], partial: &mut Vec<String>| layer(bytes, owners, max, depth + 1, partial);
    if let Some(inflated) = gunzip(bytes, max, depth == 0, partial) {
        // Lines inside are the decompressed text's.
        out.extend(inner(&inflated, partial).into_iter().map(|f| f.under("gzip")));
    }
    for text in utf16(bytes) {
        out.extend(inner(&text, partial).into_iter().map(|f| f.under("UTF-16")));
    }
    base64_runs(bytes, &mut |line, decoded| {
        // Lines inside mean nothing to a reader of the file: the run's own line is shown.
        out.extend(inner(decoded, partial).into_iter().map(|f| Found { line, ..f.under("base64") }));
    });
    out
}

/// What `bytes` decompresses to, if it is gzip (its first `max` bytes): a `.gz` log or backup.
/// A broken one is named if it is the file itself (`outer`): decoded base64 that only starts
/// like gzip is noise.
fn gunzip(bytes: &[u8], max: usize, outer: bool, partial: &mut Vec<String>) -> Option<Vec<u8>> {
    // The magic, deflate, and no reserved flag.
    if !matches!(bytes, [0x1f, 0x8b, 8, flags, ..] if flags & 0xe0 == 0) {
        return None;
    }
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    // On an error, what was decompressed before it is kept in `out`, and scanned.
    let read = flate2::read::MultiGzDecoder::new(bytes).take(limit).read_to_end(&mut out);
    if let (Err(e), true) = (read, outer) {
        partial.push(format!("gzip: {e}; what it decompressed before was scanned"));
    }
    if out.len() > max {
        out.truncate(max);
        partial
            .push(format!("gzip: decompresses to more than --max-bytes; its first {max} bytes were scanned"));
    }
    Some(out)
}

/// `bytes` read as UTF-16 at each byte alignment where a prefix is written in UTF-16: a file
/// saved as UTF-16 (little- or big-endian, with a BOM or not) or UTF-16 strings in a binary.
/// Only ASCII is kept, a token is ASCII; any other character becomes a NUL.
fn utf16(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut aligned = [false; 2];
    for p in UTF16_PREFIXES {
        for at in memchr::memmem::find_iter(bytes, p) {
            aligned[at % 2] = true;
        }
    }
    let squeeze = |from: usize| -> Vec<u8> {
        // From the second byte, big-endian's last character lacks its second byte: a 0.
        let high = |i: usize| bytes.get(i + 1).copied().unwrap_or(0);
        (from..bytes.len())
            .step_by(2)
            .map(|i| if high(i) == 0 && bytes[i] < 0x80 { bytes[i] } else { 0 })
            .collect()
    };
    (0..2).filter(|&from| aligned[from]).map(squeeze).collect()
}

/// Calls `each(line, decoded)` for every run of base64 (standard or URL-safe alphabet, padded
/// or not, wrapped at a width or not) long enough to hold a key, decoded from each of its
/// first 4 characters: letters glued before a run would misalign it.
fn base64_runs(text: &[u8], each: &mut dyn FnMut(usize, &[u8])) {
    let (mut i, mut line) = (0, 1);
    while i < text.len() {
        if sextet(text[i]).is_none() {
            line += usize::from(text[i] == b'\n');
            i += 1;
            continue;
        }
        let (sextets, end) = run_at(text, i);
        if sextets.len() >= BASE64_MIN {
            for skip in 0..4 {
                each(line, &decode(&sextets[skip..]));
            }
        }
        line += text[i..end].iter().filter(|&&b| b == b'\n').count();
        i = end;
    }
}

/// The 6-bit values of the base64 run starting at `start`, and where it ends. A run goes on
/// past a line end when its line's part is a whole number of 4-character groups (wrapped).
fn run_at(text: &[u8], start: usize) -> (Vec<u8>, usize) {
    let (mut sextets, mut i, mut on_line) = (Vec::new(), start, 0);
    loop {
        while let Some(v) = text.get(i).and_then(|&b| sextet(b)) {
            sextets.push(v);
            (i, on_line) = (i + 1, on_line + 1);
        }
        let rest = &text[i..];
        let rest = rest.strip_prefix(b"\r").unwrap_or(rest);
        let Some(next) = rest.strip_prefix(b"\n") else { break };
        let next_start = text.len() - next.len() + (next.len() - next.trim_ascii_start().len());
        let wrapped = on_line >= 4 && on_line % 4 == 0;
        if !wrapped || text.get(next_start).and_then(|&b| sextet(b)).is_none() {
            break;
        }
        (i, on_line) = (next_start, 0);
    }
    (sextets, i)
}

/// A base64 character's value in either alphabet (`+/` standard, `-_` URL-safe).
fn sextet(b: u8) -> Option<u8> {
    match b {
        b'A'..=b'Z' => Some(b - b'A'),
        b'a'..=b'z' => Some(b - b'a' + 26),
        b'0'..=b'9' => Some(b - b'0' + 52),
        b'+' | b'-' => Some(62),
        b'/' | b'_' => Some(63),
        _ => None,
    }
}

/// The bytes 6-bit values make, leftover bits dropped (padding is not needed to decode).
fn decode(sextets: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sextets.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for &v in sextets {
        acc = (acc << 6 | u32::from(v)) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward::policy::token_format::{self, BODY};

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn how(bytes: &[u8]) -> Vec<(usize, Vec<&'static str>)> {
        let (found, partial) = content(bytes, &Owners::new(), 1 << 20);
        assert_eq!(partial, Vec::<String>::new());
        found.into_iter().map(|f| (f.line, f.how)).collect()
    }

    #[test]
    fn tokens_are_found_under_base64_gzip_and_utf16() {
        let token = token_format::with_checksum(&"Q".repeat(BODY));
        let json = format!("{{\"token\": \"{token}\"}}");
        let url_safe = b64(json.as_bytes()).replace('+', "-").replace('/', "_");
        assert_eq!(how(format!("a\nsecret: {}\n", b64(json.as_bytes())).as_bytes()), [(2, vec!["base64"])]);
        assert_eq!(how(format!("x{url_safe}").as_bytes()), [(1, vec!["base64"])], "glued, URL-safe");
        let long = b64(format!("{}{json}", "filler ".repeat(30)).as_bytes());
        let wrapped: Vec<_> = long.as_bytes().chunks(76).map(|c| std::str::from_utf8(c).unwrap()).collect();
        assert_eq!(how(format!("data:\n  {}\n", wrapped.join("\n  ")).as_bytes()), [(2, vec!["base64"])]);
        let gz = gzip(format!("one\ntwo {token}\n").as_bytes());
        assert_eq!(how(&gz), [(2, vec!["gzip"])]);
        assert_eq!(how(b64(&gz).as_bytes()), [(1, vec!["base64", "gzip"])], "a Helm release");
        let utf16: Vec<u8> =
            format!("\u{feff}é\n{token}").encode_utf16().flat_map(u16::to_le_bytes).collect();
        assert_eq!(how(&utf16), [(2, vec!["UTF-16"])]);
        let be: Vec<u8> = format!("a {token}").encode_utf16().flat_map(u16::to_be_bytes).collect();
        assert_eq!(how(&be), [(1, vec!["UTF-16"])]);
        let (_, partial) = content(&gz, &Owners::new(), 8);
        assert_eq!(partial.len(), 1, "{partial:?}");
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(bytes).unwrap();
        gz.finish().unwrap()
    }
}
