//! Spend caps, the ledger: per (service, account when the cap is `per_account`, kind,
//! currency), the amounts reserved over the rolling 24 hours. A call's amount is checked and
//! reserved under one lock before it is forwarded, so concurrent calls cannot pass a cap
//! together; a retry with the same `Idempotency-Key` adds nothing. The reservation is kept
//! when the API answers 2xx (committed), given back on a 4xx (released, the API did nothing),
//! and kept on anything else (held: a 5xx, keyward's 502/504, a timeout, a reset: the money
//! may have moved). The ledger lives as long as the process: a reload keeps it whole, so a
//! changed cap applies to the day's spend already counted (keyed by service, kind, currency,
//! never by the cap's numbers). One replica's: with `[ratelimit] redis`, the books are kept
//! in Redis instead (`shared`), so that every replica spends one budget.

pub mod shared;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::policy::catalog::MoneyKind;
use crate::policy::spend::Spend;

/// 24 hours, in milliseconds.
pub const DAY_MS: i64 = 86_400_000;
/// The most reservations one book keeps within 24 hours; past it the book's calls are refused
/// until the oldest frees (fail closed: memory stays bounded and no call goes uncounted).
pub const MAX_PER_BOOK: usize = 10_000;
/// The most reservations all books keep together.
pub const MAX_TOTAL: usize = 1_000_000;

/// Which book a spend goes in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BookKey {
    pub service: Arc<str>,
    pub account: Option<String>,
    pub kind: MoneyKind,
    pub currency: String,
}

impl BookKey {
    pub fn of(spend: &Spend<'_>) -> BookKey {
        BookKey {
            service: spend.service.name.clone(),
            account: spend.account.clone(),
            kind: spend.cap.kind,
            currency: spend.amount.currency.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Book {
    /// In the order reserved (so by time and by id).
    entries: VecDeque<Entry>,
    spent: u64,
    /// Idempotency-Key hashes of the entries that have one → their id.
    keys: HashMap<[u8; 32], u64>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    at_ms: i64,
    amount: u64,
    key: Option<[u8; 32]>,
}

impl Book {
    fn expire(&mut self, now_ms: i64) -> usize {
        let mut gone = 0;
        while self.entries.front().is_some_and(|e| e.at_ms <= now_ms - DAY_MS) {
            let e = self.entries.pop_front().expect("just seen");
            self.forget(&e);
            gone += 1;
        }
        gone
    }

    fn forget(&mut self, e: &Entry) {
        self.spent -= e.amount;
        if let Some(k) = e.key {
            self.keys.remove(&k);
        }
    }
}

#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    books: HashMap<BookKey, Book>,
    total: usize,
    next_id: u64,
}

/// A reservation made: `replay` when its `Idempotency-Key` was already counted (it holds
/// nothing of its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    pub key: BookKey,
    pub id: u64,
    pub replay: bool,
}

/// Why a spend was not reserved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Over {
    /// It would pass `per_day`: `left` is unspent, and the oldest spend frees at `frees_at`
    /// (Unix seconds).
    Day { left: u64, frees_at: Option<i64> },
    /// The book (or the ledger) holds as many reservations as it may.
    Full { max: usize },
}

/// What a book holds now: spent within 24 hours, and the oldest spend's time (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    pub spent: u64,
    pub oldest_ms: Option<i64>,
}

/// The hash an `Idempotency-Key` is known by: per service and account, as the API scopes it.
pub fn idempotency_hash(service: &str, account: Option<&str>, key: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(service)
        .chain_update([0])
        .chain_update(account.unwrap_or(""))
        .chain_update([0])
        .chain_update(key)
        .finalize()
        .into()
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Ledger {
    /// Check `spend` against its cap's `per_day` and reserve it, under one lock.
    pub fn reserve(&self, spend: &Spend<'_>, key: Option<[u8; 32]>, now_ms: i64) -> Result<Reserved, Over> {
        let book_key = BookKey::of(spend);
        let mut inner = self.inner.lock().expect("never poisoned");
        let inner = &mut *inner;
        if inner.total >= MAX_TOTAL {
            sweep(inner, now_ms);
        }
        let book = inner.books.entry(book_key.clone()).or_default();
        inner.total -= book.expire(now_ms);
        if let Some(id) = key.and_then(|k| book.keys.get(&k)) {
            return Ok(Reserved { key: book_key, id: *id, replay: true });
        }
        let amount = spend.amount.value;
        if let Some(day) = spend.cap.per_day
            && book.spent.saturating_add(amount) > day
        {
            let frees_at = book.entries.front().map(|e| (e.at_ms + DAY_MS).div_euclid(1000));
            return Err(Over::Day { left: day.saturating_sub(book.spent), frees_at });
        }
        if book.entries.len() >= MAX_PER_BOOK {
            return Err(Over::Full { max: MAX_PER_BOOK });
        }
        if inner.total >= MAX_TOTAL {
            return Err(Over::Full { max: MAX_TOTAL });
        }
        inner.next_id += 1;
        let id = inner.next_id;
        book.entries.push_back(Entry { id, at_ms: now_ms, amount, key });
        book.spent += amount;
        if let Some(k) = key {
            book.keys.insert(k, id);
        }
        inner.total += 1;
        Ok(Reserved { key: book_key, id, replay: false })
    }

    /// Give a reservation back: the API answered 4xx, so no money moved and a retry with the
    /// same `Idempotency-Key` runs again.
    pub fn release(&self, r: &Reserved) {
        if r.replay {
            return;
        }
        let mut inner = self.inner.lock().expect("never poisoned");
        let Some(book) = inner.books.get_mut(&r.key) else { return };
        if let Ok(i) = book.entries.binary_search_by_key(&r.id, |e| e.id) {
            let e = book.entries.remove(i).expect("found");
            book.forget(&e);
            inner.total -= 1;
        }
    }

    /// The `per_account` books of (service, kind, currency) with spend within 24 hours of
    /// `now_ms`, by account.
    pub fn accounts(
        &self,
        service: &str,
        kind: MoneyKind,
        currency: &str,
        now_ms: i64,
    ) -> Vec<(String, Standing)> {
        let inner = self.inner.lock().expect("never poisoned");
        let mut out: Vec<(String, Standing)> = inner
            .books
            .iter()
            .filter(|(k, _)| &*k.service == service && k.kind == kind && k.currency == currency)
            .filter_map(|(k, b)| {
                let live = b.entries.iter().filter(|e| e.at_ms > now_ms - DAY_MS);
                let (spent, oldest_ms) =
                    live.fold((0u64, None), |(s, o), e| (s + e.amount, o.or(Some(e.at_ms))));
                Some((k.account.clone()?, Standing { spent, oldest_ms }))
                    .filter(|(_, st)| st.oldest_ms.is_some())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// A book's spend within 24 hours of `now_ms`.
    pub fn standing(&self, key: &BookKey, now_ms: i64) -> Standing {
        let inner = self.inner.lock().expect("never poisoned");
        let Some(book) = inner.books.get(key) else { return Standing { spent: 0, oldest_ms: None } };
        let live = book.entries.iter().filter(|e| e.at_ms > now_ms - DAY_MS);
        let (spent, oldest_ms) = live.fold((0u64, None), |(s, o), e| (s + e.amount, o.or(Some(e.at_ms))));
        Standing { spent, oldest_ms }
    }
}

/// What `keyward status` shows of the caps: each one's spend within 24 hours and what is
/// left of its `per_day`, from Redis when the books are there. A `per_account` cap lists the
/// accounts this replica's ledger has books for (with Redis, they are not listed).
pub async fn status(
    policy: &crate::policy::Policy,
    ledger: &Ledger,
    store: Option<&crate::control::limits::Store>,
) -> serde_json::Value {
    let now = now_ms();
    let mut out = Vec::new();
    for s in &policy.services {
        for cap in &s.spend {
            let book = |account: Option<String>| BookKey {
                service: s.name.clone(),
                account,
                kind: cap.kind,
                currency: cap.currency.to_string(),
            };
            let shown = |st: &Standing| {
                serde_json::json!({
                    "spent": st.spent,
                    "left": cap.per_day.map(|d| d.saturating_sub(st.spent)),
                    "oldest_frees_at": st.oldest_ms.map(|t| (t + DAY_MS).div_euclid(1000)),
                })
            };
            let mut v = serde_json::json!({
                "service": s.name,
                "kind": cap.kind.as_str(),
                "currency": cap.currency,
                "per_call": cap.per_call,
                "per_day": cap.per_day,
                "per_account": cap.per_account,
                "shared": store.is_some(),
            });
            let more = match (cap.per_account, store) {
                (false, None) => shown(&ledger.standing(&book(None), now)),
                (false, Some(store)) => match shared::standing(store, &book(None)).await {
                    Ok(st) => shown(&st),
                    Err(shared::Unavailable(why)) => serde_json::json!({ "error": why }),
                },
                (true, None) => {
                    let accounts: Vec<_> = ledger
                        .accounts(&s.name, cap.kind, &cap.currency, now)
                        .into_iter()
                        .map(|(a, st)| {
                            let mut v = shown(&st);
                            v["account"] = a.into();
                            v
                        })
                        .collect();
                    serde_json::json!({ "accounts": accounts })
                }
                (true, Some(_)) => serde_json::json!({}),
            };
            if let (Some(v), serde_json::Value::Object(more)) = (v.as_object_mut(), more) {
                v.extend(more);
            }
            out.push(v);
        }
    }
    serde_json::Value::Array(out)
}

/// Drop every reservation older than 24 hours, and the books left empty.
fn sweep(inner: &mut Inner, now_ms: i64) {
    let mut gone = 0;
    inner.books.retain(|_, b| {
        gone += b.expire(now_ms);
        !b.entries.is_empty()
    });
    inner.total -= gone;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::spend::{Amount, Cap};

    fn service(caps: Vec<Cap>) -> crate::policy::Service {
        crate::policy::Service {
            index: 0,
            name: "support-tool".into(),
            mode: crate::policy::Mode::Enforce,
            source_ips: vec![],
            accounts: crate::policy::Accounts::Any,
            scope: vec![],
            secret: 0,
            egress_ip: None,
            livemode: None,
            tokens: vec![],
            client_ids: vec![],
            quarantine: None,
            spend: caps,
        }
    }

    fn cap(per_day: u64) -> Cap {
        Cap {
            kind: MoneyKind::Refund,
            currency: "usd".into(),
            per_call: None,
            per_day: Some(per_day),
            per_account: false,
        }
    }

    fn spend<'s>(s: &'s crate::policy::Service, amount: u64) -> Spend<'s> {
        Spend {
            service: s,
            cap: &s.spend[0],
            amount: Amount { value: amount, currency: "usd".into() },
            account: None,
        }
    }

    #[test]
    fn a_day_holds_its_cap_a_release_gives_back_and_the_oldest_frees_after_24_hours() {
        let s = service(vec![cap(10_000)]);
        let l = Ledger::default();
        let t0 = 1_800_000_000_000;
        let a = l.reserve(&spend(&s, 6_000), None, t0).unwrap();
        let b = l.reserve(&spend(&s, 4_000), None, t0 + 1_000).unwrap();
        let over = l.reserve(&spend(&s, 1), None, t0 + 2_000).unwrap_err();
        assert_eq!(over, Over::Day { left: 0, frees_at: Some((t0 + DAY_MS) / 1000) });
        l.release(&b);
        assert!(l.reserve(&spend(&s, 3_000), None, t0 + 3_000).is_ok());
        assert_eq!(
            l.reserve(&spend(&s, 2_000), None, t0 + 4_000),
            Err(Over::Day { left: 1_000, frees_at: Some((t0 + DAY_MS) / 1000) })
        );
        // 24 hours after `a`, its 6000 frees.
        assert!(l.reserve(&spend(&s, 6_000), None, t0 + DAY_MS).is_ok());
        assert_eq!(l.standing(&a.key, t0 + DAY_MS).spent, 9_000);
    }

    #[test]
    fn the_same_idempotency_key_adds_nothing_until_released() {
        let s = service(vec![cap(1_000)]);
        let l = Ledger::default();
        let k = Some(idempotency_hash("support-tool", None, "retry-1"));
        let first = l.reserve(&spend(&s, 1_000), k, 0).unwrap();
        let again = l.reserve(&spend(&s, 1_000), k, 1).unwrap();
        assert!(!first.replay && again.replay && again.id == first.id);
        l.release(&again); // a replay gives back nothing
        assert_eq!(l.standing(&first.key, 2).spent, 1_000);
        l.release(&first);
        assert!(!l.reserve(&spend(&s, 1_000), k, 3).unwrap().replay, "released: a retry runs again");
        assert_ne!(k, Some(idempotency_hash("support-tool", Some("acct_1"), "retry-1")));
    }

    #[test]
    fn a_full_book_refuses() {
        let s = service(vec![cap(u64::MAX)]);
        let l = Ledger::default();
        for i in 0..MAX_PER_BOOK {
            l.reserve(&spend(&s, 1), None, i as i64).unwrap();
        }
        assert_eq!(l.reserve(&spend(&s, 1), None, 20_000), Err(Over::Full { max: MAX_PER_BOOK }));
        assert!(l.reserve(&spend(&s, 1), None, DAY_MS + 5).is_ok(), "the oldest freed");
    }
}
