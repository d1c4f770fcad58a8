//! What happened to an exchange on its way, told by the parts that saw it (the request body's
//! wrappers, the scrubber, the answer's deadline) in the one place the exchange owns, and read
//! back as types: no part guesses from another's flags, and one allocation holds it all.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use crate::policy::exposure::Exposed;

#[derive(Debug, Default)]
pub struct Signals {
    /// Request body bytes read, and answer bytes sent.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    raised: AtomicU8,
    token: OnceLock<Exposed>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The caller paused its request body longer than `timeouts.request_body_idle`.
    BodyLate = 1,
    /// A multipart body turned out not to be in the one shape keyward reads.
    BodyRefused = 2,
    /// The upstream's answer was cut off at its deadline.
    AnswerCut = 4,
    /// The answer carried a credential of the call, which was replaced.
    Scrubbed = 8,
}

/// Why the caller's body stopped a call, the first that holds of: too large, too slow, a
/// token in it, a multipart shape keyward does not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStop {
    TooLarge,
    Late,
    Token(Exposed),
    Refused,
}

impl Signals {
    pub fn raise(&self, s: Signal) {
        self.raised.fetch_or(s as u8, Ordering::Relaxed);
    }

    pub fn raised(&self, s: Signal) -> bool {
        self.raised.load(Ordering::Relaxed) & s as u8 != 0
    }

    /// A streamed body carried a keyward token (the first one found counts).
    pub fn found_token(&self, e: Exposed) {
        let _ = self.token.set(e);
    }

    /// Why the request body stopped the call, if it did (`limit`: `limits.max_body_bytes`).
    /// Over HTTP/2 the body is sent by another task and its error does not come back: the
    /// signals, not the error, tell.
    pub fn body_stop(&self, limit: u64) -> Option<BodyStop> {
        if self.bytes_in.load(Ordering::Relaxed) > limit {
            Some(BodyStop::TooLarge)
        } else if self.raised(Signal::BodyLate) {
            Some(BodyStop::Late)
        } else if let Some(e) = self.token.get() {
            Some(BodyStop::Token(*e))
        } else if self.raised(Signal::BodyRefused) {
            Some(BodyStop::Refused)
        } else {
            None
        }
    }

    /// Whether a streamed body turned out to carry a token (after the upstream answered, too).
    pub fn token(&self) -> Option<Exposed> {
        self.token.get().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_stop_is_read_in_one_order_whatever_was_raised_first() {
        let s = Signals::default();
        assert_eq!(s.body_stop(10), None);
        s.raise(Signal::BodyRefused);
        assert_eq!(s.body_stop(10), Some(BodyStop::Refused));
        s.found_token(Exposed { owner: None });
        assert_eq!(s.body_stop(10), Some(BodyStop::Token(Exposed { owner: None })));
        s.raise(Signal::BodyLate);
        assert_eq!(s.body_stop(10), Some(BodyStop::Late));
        s.bytes_in.store(11, Ordering::Relaxed);
        assert_eq!(s.body_stop(10), Some(BodyStop::TooLarge));
        assert!(!s.raised(Signal::Scrubbed) && !s.raised(Signal::AnswerCut));
    }
}
