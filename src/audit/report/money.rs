//! "Money moved": per service, kind, currency and day (UTC), what the records' `amount`,
//! `currency` and `spend` say moved: `committed` (a capped call the API answered 2xx), `held`
//! (a capped call whose outcome is unknown, counted as moved), and `uncapped` (a call of a
//! money-moving endpoint no cap counted, answered 2xx); and every refused spend, listed.
//! The kind is the catalog's (`money=`) for the record's endpoint: the configuration's
//! catalog with `--config`, else the built-in one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use serde::Serialize;

use super::Seen;
use crate::policy::catalog::{Catalog, MoneyKind, STRIPE_CATALOG};

/// The most refused spends listed (all are counted).
pub const MAX_REFUSED: usize = 100;

#[derive(Debug, Default, Serialize)]
pub struct Money {
    pub moved: Vec<MovedRow>,
    /// Refused spends, at most [`MAX_REFUSED`], oldest first.
    pub refused: Vec<RefusedRow>,
    pub refused_total: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct MovedRow {
    pub service: String,
    pub kind: String,
    pub currency: String,
    /// `2026-12-08`.
    pub day: String,
    pub committed: u64,
    pub committed_calls: u64,
    pub held: u64,
    pub held_calls: u64,
    pub uncapped: u64,
    pub uncapped_calls: u64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RefusedRow {
    pub time: String,
    pub service: String,
    pub kind: String,
    pub endpoint: String,
    /// The amount and currency, when keyward priced the call before refusing it.
    pub amount: Option<u64>,
    pub currency: Option<String>,
    pub reason: String,
    /// `deny`, or `would_deny` (report mode).
    pub decision: String,
}

static BUILTIN: LazyLock<Option<Catalog>> = LazyLock::new(|| Catalog::parse(STRIPE_CATALOG).ok());

/// (method, template) → kind, for every money-moving entry.
fn kinds(catalog: Option<&Catalog>) -> HashMap<(String, Arc<str>), MoneyKind> {
    let catalog = catalog.or(BUILTIN.as_ref());
    catalog
        .into_iter()
        .flat_map(|c| c.entries.iter())
        .filter_map(|e| Some(((e.method.to_string(), e.template.clone()), e.money.as_ref()?.kind)))
        .collect()
}

pub(super) fn money(kept: &[Seen<'_>], catalog: Option<&Catalog>) -> Money {
    let kinds = kinds(catalog);
    let mut moved: BTreeMap<(String, String, String, String), [u64; 6]> = BTreeMap::new();
    let mut out = Money::default();
    for Seen { r, at } in kept {
        let spend = r.spend.as_deref();
        if spend == Some("priced") {
            continue;
        }
        let kind = r
            .template
            .as_deref()
            .and_then(|t| kinds.get(&(r.method.to_string(), Arc::from(t))))
            .map_or("(unknown)", |k| k.as_str());
        let service = super::service_of(r);
        if spend == Some("refused") {
            out.refused_total += 1;
            if out.refused.len() < MAX_REFUSED {
                out.refused.push(RefusedRow {
                    time: r.time.clone(),
                    service,
                    kind: kind.to_string(),
                    endpoint: format!("{} {}", r.method, r.template.as_deref().unwrap_or(&r.path)),
                    amount: r.amount,
                    currency: r.currency.clone(),
                    reason: r.reason.to_string(),
                    decision: r.decision.as_str().to_string(),
                });
            }
            continue;
        }
        let (Some(amount), Some(currency)) = (r.amount, r.currency.as_ref()) else { continue };
        let slot = match spend {
            Some("committed") => 0,
            Some("held") => 2,
            None if (200..300).contains(&r.status) => 4,
            _ => continue, // released, replayed (counted once, first), or not answered 2xx
        };
        let day = format!("{:04}-{:02}-{:02}", at.year(), at.month() as u8, at.day());
        let e = moved.entry((service, kind.to_string(), currency.clone(), day)).or_default();
        e[slot] = e[slot].saturating_add(amount);
        e[slot + 1] += 1;
    }
    out.moved = moved
        .into_iter()
        .map(|((service, kind, currency, day), n)| MovedRow {
            service,
            kind,
            currency,
            day,
            committed: n[0],
            committed_calls: n[1],
            held: n[2],
            held_calls: n[3],
            uncapped: n[4],
            uncapped_calls: n[5],
        })
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AccessRecord;
    use crate::policy::Decision;
    use time::format_description::well_known::Rfc3339;

    fn rec(
        time: &str,
        method: &str,
        template: &str,
        amount: Option<u64>,
        spend: Option<&str>,
    ) -> AccessRecord {
        let mut r = AccessRecord {
            time: time.into(),
            service: Some("support-tool".into()),
            method: method.into(),
            path: template.into(),
            template: Some(template.into()),
            decision: Decision::Allow,
            reason: "ok".into(),
            status: 200,
            ..AccessRecord::default()
        };
        r.amount = amount;
        r.currency = amount.map(|_| "usd".into());
        r.spend = spend.map(|s| s.to_string().into());
        r
    }

    #[test]
    fn money_moved_per_service_kind_currency_and_day_and_refused_spend_listed() {
        let mut records = [
            rec("2026-12-08T10:00:00Z", "POST", "/v1/refunds", Some(5000), Some("committed")),
            rec("2026-12-08T11:00:00Z", "POST", "/v1/refunds", Some(1000), Some("held")),
            rec("2026-12-08T11:30:00Z", "POST", "/v1/refunds", Some(1000), Some("replayed")),
            rec("2026-12-08T12:00:00Z", "POST", "/v1/refunds", Some(700), Some("released")),
            rec("2026-12-08T12:00:01Z", "GET", "/v1/charges/{charge}", None, Some("priced")),
            rec(
                "2026-12-09T09:00:00Z",
                "POST",
                "/v1/charges/{charge}/refunds",
                Some(2000),
                Some("committed"),
            ),
            rec("2026-12-09T09:30:00Z", "POST", "/v1/payouts", Some(999), None),
            rec("2026-12-09T10:00:00Z", "POST", "/v1/refunds", Some(9000), Some("refused")),
        ];
        let last = records.last_mut().unwrap();
        (last.decision, last.reason, last.status) = (Decision::Deny, "spend_limit_exceeded".into(), 403);
        let kept: Vec<Seen<'_>> = records
            .iter()
            .map(|r| Seen { r, at: time::OffsetDateTime::parse(&r.time, &Rfc3339).unwrap() })
            .collect();
        let m = money(&kept, None);
        let row = |kind: &str, day: &str| {
            m.moved.iter().find(|r| r.kind == kind && r.day == day).unwrap_or_else(|| panic!("{m:#?}"))
        };
        let first = row("refund", "2026-12-08");
        assert_eq!(
            (first.committed, first.committed_calls, first.held, first.held_calls),
            (5000, 1, 1000, 1)
        );
        assert_eq!((first.service.as_str(), first.currency.as_str()), ("support-tool", "usd"));
        assert_eq!(row("refund", "2026-12-09").committed, 2000);
        assert_eq!(
            (row("payout", "2026-12-09").uncapped, row("payout", "2026-12-09").uncapped_calls),
            (999, 1)
        );
        assert_eq!(m.moved.len(), 3, "{m:#?}");
        assert_eq!(m.refused_total, 1);
        assert_eq!(
            m.refused[0],
            RefusedRow {
                time: "2026-12-09T10:00:00Z".into(),
                service: "support-tool".into(),
                kind: "refund".into(),
                endpoint: "POST /v1/refunds".into(),
                amount: Some(9000),
                currency: Some("usd".into()),
                reason: "spend_limit_exceeded".into(),
                decision: "deny".into(),
            }
        );
        // The three renderings carry it.
        let mut rep = super::super::Report { money: m, ..Default::default() };
        rep.generated_at = "2026-12-10T00:00:00Z".into();
        let text = super::super::text::body(&rep);
        assert!(text.contains("MONEY MOVED"), "{text}");
        assert!(
            text.lines().any(|l| l.contains("2026-12-08")
                && l.contains("refund")
                && l.contains("5000")
                && l.contains("1000")),
            "{text}"
        );
        assert!(text.contains("REFUSED SPEND (1)") && text.contains("9000 usd"), "{text}");
        let html = super::super::html::page(&rep);
        assert!(html.contains("<section id=money>") && html.contains("spend_limit_exceeded"), "{html}");
        let json = serde_json::to_value(&rep).unwrap();
        // Sorted by service, kind, currency, then day: the payout first.
        assert_eq!(json["money"]["moved"][0]["kind"], "payout");
        assert_eq!(json["money"]["moved"][1]["committed"], 5000);
        assert_eq!(json["money"]["refused_total"], 1);
    }
}
