//! Stripe's meter-event stream authenticates with the short-lived token of a meter event
//! session, not with the secret key. keyward holds those tokens, so that no service ever holds
//! a Stripe credential (a session token works from anywhere for its 15 minutes):
//!
//! - a service's `POST /v2/billing/meter_event_session` goes to Stripe as usual; keyward keeps
//!   the token Stripe returns and answers with the caller's own keyward token in its place, so
//!   the SDKs' usual pattern (a client made with `authentication_token`) calls keyward with it;
//! - a `POST /v2/billing/meter_event_stream` (with a keyward token, authorized as any call) is
//!   sent with the session token keyward holds for that secret and Connect context, made anew
//!   with the secret key when it is missing or about to expire.
//!
//! Sessions are per process: a replica that holds none makes its own. Never recorded or logged.

mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::request::Parts;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

pub use session::{session_answer, stream_session};

pub const SESSION: &str = "/v2/billing/meter_event_session";
pub const STREAM: &str = "/v2/billing/meter_event_stream";

/// Sessions held at most (secrets × Connect contexts); past it, a new one is used uncached.
const MAX_HELD: usize = 1024;
/// A session this close to its `expires_at` is not used for another call.
const MARGIN_SECS: i64 = 60;

/// Which secret (by a hash of its value, so a rotated key makes new sessions) and for which
/// Connect context: both `Stripe-Account` and `Stripe-Context` as sent, so that a session is
/// never used for a call whose context differs in either (no precedence to choose).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key([u8; 16], Option<String>, Option<String>);

impl Key {
    pub fn of(secret: &str, parts: &Parts) -> Key {
        let digest = Sha256::digest(secret.as_bytes());
        let header =
            |h: &str| parts.headers.get(h).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        Key(
            digest[..16].try_into().expect("16 of 32 bytes"),
            header("stripe-account"),
            header("stripe-context"),
        )
    }
}

struct Session {
    token: Zeroizing<String>,
    expires_at: i64,
}

/// One slot per key; its lock is held while a session is made, so that calls arriving
/// meanwhile wait for that one instead of each making their own.
type Slot = Arc<tokio::sync::Mutex<Option<Session>>>;

#[derive(Default)]
pub struct MeterSessions {
    held: Mutex<HashMap<Key, Slot>>,
}

impl MeterSessions {
    fn slot(&self, key: &Key) -> Slot {
        let mut held = self.held.lock().expect("not poisoned");
        if let Some(s) = held.get(key) {
            return s.clone();
        }
        if held.len() >= MAX_HELD {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            held.retain(|_, s| s.try_lock().map_or(true, |s| s.as_ref().is_some_and(|s| s.expires_at > now)));
        }
        let slot = Slot::default();
        if held.len() < MAX_HELD {
            held.insert(key.clone(), slot.clone());
        }
        slot
    }

    /// The session token for `key`: the one held while it has a minute left, else the one
    /// `make` gets from Stripe (awaited only then; its `Err` is the caller's answer).
    pub async fn token<E>(
        &self,
        key: &Key,
        make: impl Future<Output = Result<(Zeroizing<String>, i64), E>>,
    ) -> Result<Zeroizing<String>, E> {
        let slot = self.slot(key);
        let mut held = slot.lock().await;
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if let Some(s) = held.as_ref().filter(|s| s.expires_at - MARGIN_SECS > now) {
            return Ok(s.token.clone());
        }
        let (token, expires_at) = make.await?;
        *held = Some(Session { token: token.clone(), expires_at });
        Ok(token)
    }

    /// Keep a session a service had Stripe make.
    pub async fn keep(&self, key: &Key, token: Zeroizing<String>, expires_at: i64) {
        *self.slot(key).lock().await = Some(Session { token, expires_at });
    }
}

/// Stripe's answer to `POST /v2/billing/meter_event_session`: the token and when it expires.
pub fn parse_session(body: &[u8]) -> Option<(Zeroizing<String>, i64)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let token = v.get("authentication_token")?.as_str()?;
    let expires = v.get("expires_at")?.as_str()?;
    let expires_at = OffsetDateTime::parse(expires, &Rfc3339).ok()?.unix_timestamp();
    Some((Zeroizing::new(token.to_string()), expires_at))
}

/// That answer with the caller's keyward token in place of Stripe's session token.
pub fn answer_for_caller(body: &[u8], caller_token: &str) -> Option<Vec<u8>> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    *v.get_mut("authentication_token")? = caller_token.into();
    serde_json::to_vec(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = r#"{"id":"mes_1","object":"v2.billing.meter_event_session","authentication_token":"mes_tok_SECRET","created":"2026-12-02T10:00:00.000Z","expires_at":"2026-12-02T10:15:00.000Z","livemode":false}"#;

    #[test]
    fn the_callers_token_replaces_stripes() {
        let (token, expires_at) = parse_session(ANSWER.as_bytes()).unwrap();
        assert_eq!((token.as_str(), expires_at), ("mes_tok_SECRET", 1_796_206_500));
        let out = String::from_utf8(answer_for_caller(ANSWER.as_bytes(), "kw_caller").unwrap()).unwrap();
        assert!(out.contains(r#""authentication_token":"kw_caller""#) && !out.contains("SECRET"), "{out}");
        assert!(
            out.contains(r#""id":"mes_1""#) && out.contains(r#""expires_at":"2026-12-02T10:15:00.000Z""#)
        );
        for bad in ["", "{}", "[1]", r#"{"authentication_token":5,"expires_at":"x"}"#] {
            assert!(parse_session(bad.as_bytes()).is_none(), "{bad}");
        }
        assert!(answer_for_caller(b"{}", "kw").is_none());
    }

    #[tokio::test]
    async fn one_session_serves_until_a_minute_before_it_expires() {
        let sessions = MeterSessions::default();
        let parts = http::Request::new(()).into_parts().0;
        let key = Key::of("sk_test_1", &parts);
        let made = std::sync::atomic::AtomicU32::new(0);
        let in_an_hour = OffsetDateTime::now_utc().unix_timestamp() + 3600;
        for _ in 0..3 {
            let t = sessions
                .token(&key, async {
                    made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Ok::<_, ()>((Zeroizing::new("mes_a".to_string()), in_an_hour))
                })
                .await
                .unwrap();
            assert_eq!(t.as_str(), "mes_a");
        }
        assert_eq!(made.load(std::sync::atomic::Ordering::Relaxed), 1);
        let soon = OffsetDateTime::now_utc().unix_timestamp() + 30;
        sessions.keep(&key, Zeroizing::new("mes_b".into()), soon).await;
        let t =
            sessions.token(&key, async { Ok::<_, ()>((Zeroizing::new("mes_c".into()), in_an_hour)) }).await;
        assert_eq!(t.unwrap().as_str(), "mes_c", "expiring within the margin: made anew");
        let other = Key::of("sk_test_2", &parts);
        assert!(
            sessions
                .token(&other, async { Err::<(Zeroizing<String>, i64), _>("stripe said no") })
                .await
                .is_err()
        );
    }
}
