//! The secret never goes back out: an upstream answer that carries a credential keyward holds
//! for the call (an upstream, or a debugging proxy in front of it, echoing `Authorization`)
//! has it replaced, in headers and body, before the caller sees a byte of it. The credentials
//! are the secret sent, the secret's newer version when a rotation swapped it meanwhile, and a
//! meter-event session token (good from anywhere for 15 minutes). The body is searched as it
//! streams: a chunk's last bytes that could begin a credential wait for the next chunk. The
//! replacement has the credential's length, so `Content-Length` stays true.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::secrets::Loaded;
use crate::serve::outcome::{Signal, Signals};
use crate::upstream::BoxError;

/// What replaces the secret: this, then `*`, cut to the secret's length.
const MASK: &[u8] = b"keyward-scrubbed";

fn mask(len: usize) -> Vec<u8> {
    MASK.iter().copied().chain(std::iter::repeat(b'*')).take(len).collect()
}

/// The credentials an answer is searched for: never empty, the secret sent first.
#[derive(Clone)]
pub struct Credentials {
    sent: Arc<Loaded>,
    /// Rarely any: a vault version swapped in during the call, a meter-event session token.
    more: Vec<Credential>,
}

#[derive(Clone)]
enum Credential {
    Secret(Arc<Loaded>),
    Token(Arc<zeroize::Zeroizing<String>>),
}

impl Credentials {
    pub fn new(sent: Arc<Loaded>) -> Credentials {
        Credentials { sent, more: Vec::new() }
    }

    /// Another version of the secret (a rotation), if it differs from those held.
    pub fn also_secret(&mut self, other: Arc<Loaded>) {
        if !self.iter().any(|c| c == other.value.expose().as_bytes()) {
            self.more.push(Credential::Secret(other));
        }
    }

    /// A token keyward sent upstream for the call in place of the secret.
    pub fn also_token(&mut self, token: Arc<zeroize::Zeroizing<String>>) {
        self.more.push(Credential::Token(token));
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.sent.value.expose().as_bytes()).chain(self.more.iter().map(|c| match c {
            Credential::Secret(l) => l.value.expose().as_bytes(),
            Credential::Token(t) => t.as_bytes(),
        }))
    }

    /// Replace every credential in every header value; whether any had one.
    pub fn headers(&self, map: &mut HeaderMap) -> bool {
        self.iter().fold(false, |hit, c| headers(map, c) | hit)
    }

    /// Replace every credential in a whole body held in memory; whether any was there.
    pub fn replace_all(&self, buf: &mut [u8]) -> bool {
        self.iter().fold(false, |hit, c| replace_all(buf, c) | hit)
    }
}

/// Replace the secret in every header value; whether any had it.
fn headers(headers: &mut HeaderMap, secret: &[u8]) -> bool {
    let mut hit = false;
    // Most values are shorter than a key: no search for those.
    for value in headers.values_mut().filter(|v| v.len() >= secret.len()) {
        if contains(value.as_bytes(), secret) {
            let mut bytes = value.as_bytes().to_vec();
            replace_all(&mut bytes, secret);
            if let Ok(v) = http::HeaderValue::from_bytes(&bytes) {
                *value = v;
                hit = true;
            }
        }
    }
    hit
}

/// Whether `hay` holds `secret`. Building a substring finder costs more than searching a
/// short answer (most are a few KiB), so short ones are searched from the key's first byte.
fn contains(hay: &[u8], secret: &[u8]) -> bool {
    const SHORT: usize = 8 * 1024;
    let Some(&first) = secret.first() else { return false };
    if hay.len() > SHORT {
        return memchr::memmem::find(hay, secret).is_some();
    }
    memchr::memchr_iter(first, hay).any(|i| hay[i..].starts_with(secret))
}

/// Replace the secret in a whole body held in memory; whether it was there.
fn replace_all(buf: &mut [u8], secret: &[u8]) -> bool {
    let finder = memchr::memmem::Finder::new(secret);
    let starts: Vec<usize> = finder.find_iter(buf).collect();
    let m = mask(secret.len());
    for s in &starts {
        buf[*s..*s + secret.len()].copy_from_slice(&m);
    }
    !starts.is_empty()
}

/// The longest proper prefix of `secret` that `data` ends with: held back for the next chunk.
fn held_back(data: &[u8], secret: &[u8]) -> usize {
    let (Some(&first), Some(_)) = (secret.first(), data.last()) else { return 0 };
    // Candidates start where the secret's first byte is, within its length of the end.
    let from = data.len().saturating_sub(secret.len() - 1);
    memchr::memchr_iter(first, &data[from..])
        .map(|i| data.len() - (from + i))
        .find(|&k| data.ends_with(&secret[..k]))
        .unwrap_or(0)
}

/// The streaming half: chunks in, scrubbed chunks out.
pub struct Scrubber {
    credentials: Credentials,
    carry: BytesMut,
}

impl Scrubber {
    pub fn new(credentials: Credentials) -> Scrubber {
        Scrubber { credentials, carry: BytesMut::new() }
    }

    /// What can go to the caller now, and whether a credential was in it.
    pub fn push(&mut self, chunk: Bytes) -> (Bytes, bool) {
        let creds = &self.credentials;
        // The usual case: nothing to replace, nothing held, nothing that could begin one.
        if self.carry.is_empty() && creds.iter().all(|c| !contains(&chunk, c) && held_back(&chunk, c) == 0) {
            return (chunk, false);
        }
        self.carry.extend_from_slice(&chunk);
        let hit = creds.replace_all(&mut self.carry);
        let keep = creds.iter().map(|c| held_back(&self.carry, c)).max().unwrap_or(0);
        let out = self.carry.split_to(self.carry.len() - keep).freeze();
        (out, hit)
    }

    /// The bytes held back, at the end of the body.
    pub fn finish(&mut self) -> Bytes {
        std::mem::take(&mut self.carry).freeze()
    }
}

/// A body with the credentials replaced; signals `Scrubbed` when one was there.
pub struct Scrub<B> {
    inner: B,
    scrubber: Scrubber,
    signals: Arc<Signals>,
    done: bool,
}

impl<B> Scrub<B> {
    pub fn new(inner: B, credentials: Credentials, signals: Arc<Signals>) -> Self {
        Scrub { inner, scrubber: Scrubber::new(credentials), signals, done: false }
    }
}

impl<B> Body for Scrub<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let (out, hit) = self.scrubber.push(data);
                        if hit {
                            self.signals.raise(Signal::Scrubbed);
                        }
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    // Trailers end the data: what was held back goes first.
                    Err(trailers) => {
                        let rest = self.scrubber.finish();
                        if rest.is_empty() {
                            return Poll::Ready(Some(Ok(trailers)));
                        }
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    self.done = true;
                    let rest = self.scrubber.finish();
                    if !rest.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.inner.is_end_stream() && self.scrubber.carry.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn loaded(value: &str) -> Arc<Loaded> {
        Arc::new(Loaded { value: crate::secrets::Secret::new(value.to_string()), version: None })
    }

    /// `text` cut at `cuts`, through a scrubber: what comes out, and whether it hit.
    fn through(text: &[u8], cuts: &[usize], secret: &str) -> (Vec<u8>, bool) {
        let mut s = Scrubber::new(Credentials::new(loaded(secret)));
        let (mut out, mut hit, mut at) = (Vec::new(), false, 0);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts.into_iter().chain([text.len()]) {
            let (o, h) = s.push(Bytes::copy_from_slice(&text[at..c.max(at)]));
            out.extend_from_slice(&o);
            hit |= h;
            at = c.max(at);
        }
        out.extend_from_slice(&s.finish());
        (out, hit)
    }

    #[test]
    fn the_secret_is_replaced_wherever_the_chunks_split_it() {
        let secret = "sk_test_51Mz9EchoedBackByAProxy";
        let text = format!(r#"{{"echo":"Bearer {secret}","again":"{secret}","near":"sk_test_5"}}"#);
        let want = text.replace(secret, std::str::from_utf8(&mask(secret.len())).unwrap());
        for cut in 0..text.len() {
            let (out, hit) = through(text.as_bytes(), &[cut, cut + 3], secret);
            assert_eq!(String::from_utf8(out).unwrap(), want, "cut at {cut}");
            assert!(hit);
        }
        let (out, hit) = through(b"nothing here but sk_test_ and s", &[7, 28], secret);
        assert_eq!((out.as_slice(), hit), (&b"nothing here but sk_test_ and s"[..], false));
    }

    proptest! {
        #[test]
        fn any_text_any_split(prefix in "[a-z_ ]{0,40}", suffix in "[a-z_ ]{0,40}", cuts in proptest::collection::vec(0usize..200, 0..6)) {
            let secret = "sk_live_Zq81";
            let text = format!("{prefix}{secret}{suffix}{secret}");
            let (out, hit) = through(text.as_bytes(), &cuts, secret);
            let out = String::from_utf8(out).unwrap();
            prop_assert!(hit);
            prop_assert!(!out.contains(secret));
            prop_assert_eq!(out.len(), text.len());
        }

        #[test]
        fn the_short_search_finds_what_memmem_finds(hay in "[sk_ie]{0,60}", long in any::<bool>()) {
            let hay = if long { hay.repeat(300) } else { hay };
            for secret in ["sk_", "sk_live", "s", "ee"] {
                let want = memchr::memmem::find(hay.as_bytes(), secret.as_bytes()).is_some();
                prop_assert_eq!(contains(hay.as_bytes(), secret.as_bytes()), want);
            }
        }
    }

    #[test]
    fn every_credential_of_the_call_is_replaced() {
        let (old, new, tok) =
            ("sk_test_51OldVersionOfTheKey", "sk_test_51NewVersionOfTheKey", "mes_tok_Zq81Session");
        let mut creds = Credentials::new(loaded(old));
        creds.also_secret(loaded(old));
        creds.also_secret(loaded(new));
        creds.also_token(Arc::new(zeroize::Zeroizing::new(tok.to_string())));
        assert_eq!(creds.more.len(), 2, "the same version is held once");
        let text = format!("{old}|Bearer {tok}|{new}");
        for cut in 0..text.len() {
            let mut s = Scrubber::new(creds.clone());
            let (a, hit) = s.push(Bytes::copy_from_slice(&text.as_bytes()[..cut]));
            let (b, hit2) = s.push(Bytes::copy_from_slice(&text.as_bytes()[cut..]));
            let out = [a, b, s.finish()].concat();
            let out = String::from_utf8(out).unwrap();
            assert!(hit | hit2 && out.len() == text.len(), "cut at {cut}");
            assert!(![old, new, tok].iter().any(|c| out.contains(c)), "cut at {cut}: {out}");
        }
    }

    #[test]
    fn header_values_are_scrubbed_too() {
        let mut h = HeaderMap::new();
        h.insert("x-echo", "Bearer sk_test_abcdefgh".parse().unwrap());
        h.insert("x-other", "fine".parse().unwrap());
        assert!(headers(&mut h, b"sk_test_abcdefgh"));
        assert_eq!(h["x-echo"], "Bearer keyward-scrubbed");
        assert!(!headers(&mut h, b"sk_test_abcdefgh"));
    }
}
