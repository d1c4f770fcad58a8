//! The multipart rule (the scan; `serve::body::PartNames` applies it to a streaming body).
//!
//! Rack reads multipart parts as parameters: a `_method` part turns the POST into a DELETE, an
//! `expand[]` part expands; and its parser is lenient in ways no second reader can match (it
//! takes the last `boundary=` of a Content-Type, falls back to reading the body as a form when
//! it finds none, treats `--B` as a delimiter anywhere, unescapes backslashes in names). So
//! multipart bodies go only to catalog entries marked `multipart` (Stripe: `POST /v1/files`),
//! and there they must have the one shape every parser reads alike, checked as they stream:
//!
//! - the Content-Type names one `boundary=` (no spaces around `=`, no second one, not quoted
//!   around `"`, `;`, `,` or `\`), of 1 to 70 of the characters RFC 2046 allows (no space);
//! - the body starts with `--B` CRLF, and every `--B` in it is a delimiter: after CRLF, and
//!   followed by CRLF (a part follows) or by `--` CRLF at the very end of the body;
//! - each part's headers end at the first CRLF CRLF, use CRLF only, hold no `\`, `%` or
//!   `--B`, include `Content-Disposition: form-data; name=…`, and do not mention `method` or
//!   `expand` anywhere, in any case (file names included: the cost of this rule is that such
//!   a file name is refused too);
//! - nothing follows the closing delimiter, and the body does not end before it.

/// Longest block of part headers accepted.
const MAX_HEAD: usize = 8 * 1024;

/// The `boundary` of a multipart Content-Type, if it has exactly one, in a form every parser
/// reads alike.
pub fn boundary(content_type: &str) -> Option<&str> {
    let lower = content_type.to_ascii_lowercase();
    let at = lower.find("boundary=")?;
    if lower[at + 1..].contains("boundary=") || !lower[..at].trim_end().ends_with(';') {
        return None;
    }
    let value = content_type[at + "boundary=".len()..].split(';').next().unwrap_or("").trim_end();
    let value = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => value,
    };
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"'()+_-./:=?".contains(&b);
    (!value.is_empty() && value.len() <= 70 && value.bytes().all(allowed)).then_some(value)
}

/// Where the scan is.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Before the first delimiter, which must open the body.
    Start,
    /// Inside a part's headers.
    Head,
    /// Inside a part's content, looking for the next CRLF `--B`.
    Content,
    /// After `--B--`: only a final CRLF may follow.
    Closed,
}

pub struct Scan {
    /// `\r\n--B`: what ends a part's content.
    delimiter: Vec<u8>,
    /// Bytes kept from the last piece: a delimiter or a header block may span pieces.
    carry: Vec<u8>,
    state: State,
}

/// The body does not have the one shape keyward accepts (see the module's rules).
#[derive(Debug, PartialEq, Eq)]
pub struct Refused;

impl Scan {
    pub fn new(boundary: &str) -> Scan {
        Scan { delimiter: format!("\r\n--{boundary}").into_bytes(), carry: Vec::new(), state: State::Start }
    }

    /// Scan the next piece of the body.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), Refused> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        let mut at = 0;
        loop {
            let rest = &buf[at..];
            match self.state {
                State::Start => {
                    // The body opens with `--B` CRLF (the delimiter without its CRLF).
                    let open = &self.delimiter[2..];
                    if rest.len() < open.len() + 2 {
                        return self.keep(&buf, at, open.starts_with(rest) || rest.starts_with(open));
                    }
                    if !rest.starts_with(open) || &rest[open.len()..open.len() + 2] != b"\r\n" {
                        return Err(Refused);
                    }
                    at += open.len() + 2;
                    self.state = State::Head;
                }
                State::Head => {
                    let Some(end) = memchr::memmem::find(rest, b"\r\n\r\n").filter(|&e| e <= MAX_HEAD) else {
                        return self.keep(&buf, at, rest.len() <= MAX_HEAD);
                    };
                    check_head(&rest[..end + 2], &self.delimiter[2..])?;
                    at += end + 4;
                    self.state = State::Content;
                }
                State::Content => {
                    // `--B` without its CRLF must not appear either: only as a delimiter.
                    let bare = &self.delimiter[2..];
                    match memchr::memmem::find(rest, bare) {
                        Some(i) if i >= 2 && &rest[i - 2..i] == b"\r\n" => {
                            let after = &rest[i + bare.len()..];
                            if after.len() < 2 {
                                return self.keep(&buf, at + i - 2, true);
                            }
                            match &after[..2] {
                                b"\r\n" => self.state = State::Head,
                                b"--" => self.state = State::Closed,
                                _ => return Err(Refused),
                            }
                            at += i + bare.len() + 2;
                        }
                        Some(_) => return Err(Refused),
                        // Keep what could be the start of a delimiter (CRLF `--B`).
                        None => {
                            let keep = rest.len().min(self.delimiter.len() - 1);
                            self.carry = rest[rest.len() - keep..].to_vec();
                            return Ok(());
                        }
                    }
                }
                State::Closed => {
                    return match rest {
                        b"" | b"\r" | b"\r\n" => self.keep(&buf, at, true),
                        _ => Err(Refused),
                    };
                }
            }
        }
    }

    /// The body is over: it must have ended with its closing delimiter.
    pub fn finish(&self) -> Result<(), Refused> {
        match (&self.state, self.carry.as_slice()) {
            (State::Closed, b"" | b"\r\n") => Ok(()),
            _ => Err(Refused),
        }
    }

    /// Wait for more: keep `buf[at..]` for the next piece, if `plausible`.
    fn keep(&mut self, buf: &[u8], at: usize, plausible: bool) -> Result<(), Refused> {
        if !plausible {
            return Err(Refused);
        }
        self.carry = buf[at..].to_vec();
        Ok(())
    }
}

/// A part's headers (each line with its CRLF): CRLF only, no `\`, `%` or delimiter, a
/// `Content-Disposition: form-data` with a `name` (Rack takes a part's name from elsewhere when
/// it has none: the following lines, a percent-decoded file name, `Content-ID`), and no mention
/// of the names Rack would act on.
fn check_head(head: &[u8], bare_delimiter: &[u8]) -> Result<(), Refused> {
    let bare_line_end = head.iter().enumerate().any(|(i, &b)| {
        (b == b'\n' && (i == 0 || head[i - 1] != b'\r')) || (b == b'\r' && head.get(i + 1) != Some(&b'\n'))
    });
    let lower = head.to_ascii_lowercase();
    let has = |w: &[u8]| memchr::memmem::find(&lower, w).is_some();
    let named = lower.split(|&b| b == b'\n').any(|line| {
        let line = line.strip_prefix(b"content-disposition:").map(<[u8]>::trim_ascii);
        line.and_then(|l| l.strip_prefix(b"form-data;"))
            .is_some_and(|params| params.split(|&b| b == b';').any(|p| p.trim_ascii().starts_with(b"name=")))
    });
    let odd = bare_line_end
        || head.contains(&b'\\')
        || head.contains(&b'%')
        || memchr::memmem::find(head, bare_delimiter).is_some();
    if odd || !named || has(b"method") || has(b"expand") { Err(Refused) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &str, value: &str) -> String {
        format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
    }

    fn scan_in_pieces(body: &str, piece: usize) -> Result<(), Refused> {
        let mut s = Scan::new("XyZ");
        body.as_bytes().chunks(piece).try_for_each(|c| s.feed(c))?;
        s.finish()
    }

    #[test]
    fn one_shape_is_read_and_every_other_refused_however_the_body_is_cut() {
        let upload = format!(
            "{}{}--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.pdf\"\r\n\
             Content-Type: application/pdf\r\n\r\n%PDF expand method -XyZ \r\n--X\r\n--XyZ--\r\n",
            part("purpose", "dispute_evidence"),
            part("file_link_data[create]", "true")
        );
        let refused = [
            format!("{}{}--XyZ--\r\n", part("purpose", "x"), part("_method", "DELETE")),
            format!("{}--XyZ--\r\n", part("expand[]", "links")),
            "--XyZ\r\nContent-Disposition: form-data; NAME=\"_METHOD\"\r\n\r\nDELETE\r\n--XyZ--\r\n".into(),
            "--XyZ\r\nContent-Disposition: form-data; filename=\"a;name=_method\"\r\n\r\nx\r\n--XyZ--\r\n"
                .into(),
            "--XyZ\r\nContent-ID: _method\r\n\r\nDELETE\r\n--XyZ--\r\n".into(),
            // Seen from a hostile review: each of these was read by Rack as `_method` or `expand`.
            "--XyZ--\r\n".to_string() + &part("_m", "x") + "--XyZ--\r\n",
            part("a", "x\r\n--XyZ--X") + "--XyZ--\r\n",
            "--XyZ\r\nX-A: y\n\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--XyZ--\r\n".into(),
            "--XyZ\r\nContent-Disposition: form-data; name=\"_m\\ethod\"\r\n\r\nDELETE\r\n--XyZ--\r\n".into(),
            "--XyZ\r\nContent-Disposition: form-data; name=\"exp\\and[]\"\r\n\r\nx\r\n--XyZ--\r\n".into(),
            // From a code review: a part with no headers (Rack reads on to the next empty line),
            // a file name Rack percent-decodes into a name, a part with no name.
            "--XyZ\r\n\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n"
                .into(),
            "--XyZ\r\nContent-Disposition: form-data; filename=\"%65xpand[]\"\r\n\r\nx\r\n--XyZ--\r\n".into(),
            "--XyZ\r\nContent-Disposition: form-data; filename=\"a.pdf\"\r\n\r\nx\r\n--XyZ--\r\n".into(),
            "--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--\r\n".into(),
            "--XyZ\r\nContent-Disposition: form-data; name=\"a --XyZ\"\r\n\r\nx\r\n--XyZ--\r\n".into(),
            // Not the one shape: preamble, bare `--B` in content, epilogue, no end, LF only.
            "preamble\r\n".to_string() + &part("a", "x") + "--XyZ--\r\n",
            part("a", "x --XyZ y") + "--XyZ--\r\n",
            part("a", "x") + "--XyZ--\r\nepilogue",
            part("a", "x"),
            "--XyZ\nContent-Disposition: form-data; name=a\n\nx\n--XyZ--\n".into(),
            format!("--XyZ\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD)),
        ];
        for piece in [1, 2, 3, 7, 64, 1 << 20] {
            assert_eq!(scan_in_pieces(&upload, piece), Ok(()), "an upload, in pieces of {piece}");
            for body in &refused {
                assert_eq!(scan_in_pieces(body, piece), Err(Refused), "{body:?} in pieces of {piece}");
            }
        }
    }

    #[test]
    fn a_boundary_is_one_strict_parameter() {
        let ok = [
            ("multipart/form-data; boundary=AAA", "AAA"),
            ("multipart/form-data;boundary=\"AAA\"", "AAA"),
            ("Multipart/Form-Data; charset=utf-8; BOUNDARY=a'()+_-./:=?1", "a'()+_-./:=?1"),
        ];
        for (ct, want) in ok {
            assert_eq!(boundary(ct), Some(want), "{ct}");
        }
        for ct in [
            "multipart/form-data; boundary = AAA",
            "multipart/form-data; boundary =AAA",
            "multipart/form-data; boundary=",
            "multipart/form-data; boundary=\"",
            "multipart/form-data; boundary=AAA; boundary=BBB",
            "multipart/form-data; boundary=AAA; x=\"boundary=BBB\"",
            "multipart/form-data; boundary=\"AAA;x\"",
            "multipart/form-data; boundary=AAA\"",
            "multipart/form-data; boundary=\"A A\"",
            "multipart/form-data; xboundary=AAA",
            "multipart/form-data",
        ] {
            assert_eq!(boundary(ct), None, "{ct}");
        }
    }
}
