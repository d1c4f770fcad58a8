//! The multipart rule (the scan; `serve::body::PartNames` applies it to a streaming body).
//! Multipart bodies stream through unbuffered (file uploads go up to 16 MB), but Rack reads
//! their parts as parameters: a `_method` part turns the POST into a DELETE, an `expand[]`
//! part expands. keyward does not parse multipart itself (Rack's own parser takes a part's
//! name from `Content-Disposition`, from a later `name=` inside another parameter, or from
//! `Content-ID`); it refuses any part whose headers mention `method` or `expand` anywhere, in
//! any case. Stripe's file uploads have parts named `file`, `purpose` and `file_link_data[…]`.
//! The cost of the rule: a file whose name holds one of those words is refused too.

/// Longest block of part headers accepted.
const MAX_HEAD: usize = 8 * 1024;

/// Where the scan is: looking for the next delimiter, or gathering the headers after one.
enum State {
    Seeking,
    Head(Vec<u8>),
    /// After the closing delimiter: the epilogue, which no parser reads.
    Done,
}

pub struct Scan {
    delimiter: Vec<u8>,
    /// The end of the last chunk, which may hold the start of a delimiter.
    carry: Vec<u8>,
    state: State,
}

/// A part's headers mention one of the names Rack would act on.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused;

impl Scan {
    pub fn new(boundary: &str) -> Scan {
        Scan { delimiter: format!("--{boundary}").into_bytes(), carry: Vec::new(), state: State::Seeking }
    }

    /// Scan the next piece of the body. Delimiters are looked for anywhere, not only at the
    /// start of a line: more header blocks checked, never fewer.
    pub fn feed(&mut self, data: &[u8]) -> Result<(), Refused> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        let mut at = 0;
        loop {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Seeking => match memchr::memmem::find(&buf[at..], &self.delimiter) {
                    Some(i) => {
                        at += i + self.delimiter.len();
                        self.state = State::Head(Vec::new());
                    }
                    None => {
                        let keep = (buf.len() - at).min(self.delimiter.len() - 1);
                        self.carry = buf[buf.len() - keep..].to_vec();
                        return Ok(());
                    }
                },
                State::Head(head) => {
                    head.extend_from_slice(&buf[at..]);
                    if head.starts_with(b"--") {
                        self.state = State::Done;
                        return Ok(());
                    }
                    let end = blank_line(head);
                    if end.unwrap_or(head.len()) > MAX_HEAD {
                        return Err(Refused);
                    }
                    let Some(end) = end else {
                        return Ok(()); // the rest of the headers comes in the next piece
                    };
                    let lower = head[..end].to_ascii_lowercase();
                    if [&b"method"[..], b"expand"].iter().any(|w| memchr::memmem::find(&lower, w).is_some()) {
                        return Err(Refused);
                    }
                    buf = head[end..].to_vec();
                    at = 0;
                    self.state = State::Seeking;
                }
            }
        }
    }
}

/// Where the headers end: the first empty line (`\n\n` or `\n\r\n`), past which is content.
fn blank_line(head: &[u8]) -> Option<usize> {
    (0..head.len()).find(|&i| {
        head[i] == b'\n' && (head.get(i + 1) == Some(&b'\n') || head.get(i + 1..i + 3) == Some(b"\r\n"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &str, value: &str) -> String {
        format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
    }

    fn scan_in_pieces(body: &str, piece: usize) -> Result<(), Refused> {
        let mut s = Scan::new("XyZ");
        body.as_bytes().chunks(piece).try_for_each(|c| s.feed(c))
    }

    #[test]
    fn parts_naming_method_or_expand_are_refused_however_the_body_is_cut() {
        let upload = format!(
            "{}{}--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.pdf\"\r\n\
             Content-Type: application/pdf\r\n\r\n%PDF expand method --Xy\r\n--XyZ--\r\nepilogue expand\r\n",
            part("purpose", "dispute_evidence"),
            part("file_link_data[create]", "true")
        );
        let refused = [
            format!("{}{}--XyZ--\r\n", part("purpose", "x"), part("_method", "DELETE")),
            format!("{}--XyZ--\r\n", part("expand[]", "links")),
            "--XyZ\r\nContent-Disposition: form-data; NAME=\"_METHOD\"\r\n\r\nDELETE\r\n".to_string(),
            "--XyZ\r\nContent-Disposition: form-data; filename=\"a;name=_method\"\r\n\r\nx\r\n".to_string(),
            "--XyZ\r\nContent-ID: _method\r\n\r\nDELETE\r\n".to_string(),
            "--XyZ\nContent-Disposition: form-data; name=expand\n\nx\n".to_string(),
            format!("--XyZ\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD)),
        ];
        for piece in [1, 2, 3, 7, 64, 1 << 20] {
            assert_eq!(scan_in_pieces(&upload, piece), Ok(()), "an upload, in pieces of {piece}");
            for body in &refused {
                assert_eq!(scan_in_pieces(body, piece), Err(Refused), "{body:?} in pieces of {piece}");
            }
        }
    }
}
