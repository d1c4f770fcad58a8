//! Spend caps, the pure half: which calls move money (the catalog's `money=` column), how much
//! and in which currency (from the form, or from the object the call acts on, which the
//! request path reads first and hands in), and whether a service's caps let it go. The
//! rolling day's spend is kept by the control plane (`control::spend`) and handed in as a
//! number: nothing here reads a clock or keeps state.

use crate::policy::catalog::{Catalog, Entry, MoneyKind, Price};
use crate::policy::failure::Failure;
pub use crate::policy::model::Cap;
use crate::policy::model::Service;
use crate::policy::params;

/// An amount in minor units of a lowercase currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount {
    pub value: u64,
    pub currency: String,
}

/// What a call's spend is, as far as the request tells.
#[derive(Debug)]
pub enum Plan<'s> {
    /// Moves no money, or none of a kind the service caps; the amount, when the request
    /// carries it whole, for the record.
    Uncapped(Option<Amount>),
    /// Refused before it is forwarded.
    Refused(Refusal),
    /// Priced and within `per_call`: the rolling day is the control plane's to check.
    Priced(Spend<'s>),
    /// The object the call acts on must be read first (`GET lookup.path`), then [`priced`].
    Lookup(Lookup<'s>),
}

/// A capped call's spend: counted against `cap` in the book of `account` (when the cap is
/// `per_account`; else `None`).
#[derive(Debug, Clone)]
pub struct Spend<'s> {
    pub service: &'s Service,
    pub cap: &'s Cap,
    pub amount: Amount,
    pub account: Option<String>,
}

/// A read the call's price needs: what to `GET` (with the real key, under the call's account
/// context), and what to make of its answer.
#[derive(Debug, Clone)]
pub struct Lookup<'s> {
    pub service: &'s Service,
    pub kind: MoneyKind,
    /// Path and query: `/v1/charges/ch_1`.
    pub path: String,
    what: Object,
    /// The amount the request names, if it names one.
    given: Option<u64>,
    /// The account a `per_account` cap counts it for.
    account: Option<String>,
}

/// Which object is read and what its answer gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Object {
    /// A charge or application fee: `amount − amount_refunded`, `currency`.
    Refundable,
    /// A PaymentIntent refunded (its latest charge expanded): what remains of the charge,
    /// else (no charge expanded) `amount_received`, `currency`.
    IntentRefunded,
    /// A PaymentIntent confirmed: `amount`, `currency`.
    Intent,
    /// A PaymentIntent's authorization raised to the given total: the difference.
    Increment,
    /// An invoice paid: `amount_remaining`, `currency`.
    Invoice,
    /// A credit note's invoice: its `currency` (the amount is the request's).
    InvoiceCurrency,
}

/// A refusal, with the reason the metrics count it by (`per_call`, `per_day`, `currency`,
/// `unpriced`, `unread`, `ledger_full`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub failure: Failure,
    pub kind: MoneyKind,
    pub reason: &'static str,
}

/// The spend of a call to `entry` (at the canonical `path`) with this `form` body (empty
/// without one) for `account` (the `Stripe-Account` / `Stripe-Context` it acts for).
pub fn plan<'s>(
    service: &'s Service,
    entry: &Entry,
    path: &str,
    form: &[u8],
    account: Option<&str>,
) -> Plan<'s> {
    let Some(money) = &entry.money else { return Plan::Uncapped(None) };
    let kind = money.kind;
    let capped = service.spend.iter().any(|c| c.kind == kind);
    let refuse = |failure, reason| Plan::Refused(Refusal { failure, kind, reason });
    let read = |name: &str| params::field(form, name).map_err(Failure::NonCanonical);
    let fields = (|| {
        let given = match money.field.as_deref() {
            Some(f) if money.price != Price::Json => read(f)?.map(|v| minor_units(&v)).transpose()?,
            _ => None,
        };
        Ok::<_, Failure>((given, read("currency")?))
    })();
    let (given, currency) = match fields {
        Ok(f) => f,
        // A money field read two ways is refused whatever the caps: the API would pick one.
        Err(f) => return refuse(f, "unpriced"),
    };
    let whole = |currency: Option<String>| -> Result<Option<Amount>, Failure> {
        match (given, currency) {
            (Some(value), Some(c)) => Ok(Some(Amount { value, currency: currency_code(&c)? })),
            _ => Ok(None),
        }
    };
    // Calls that move no money as sent.
    let counted = match money.price {
        Price::Confirm => read("confirm").map(|v| v.as_deref() == Some("true")),
        Price::Invoice => read("paid_out_of_band").map(|v| v.as_deref() != Some("true")),
        Price::CreditNote => Ok(given.is_some()),
        _ => Ok(true),
    };
    match counted {
        Err(f) => return refuse(f, "unpriced"),
        Ok(false) => return Plan::Uncapped(None),
        Ok(true) => {}
    }
    if !capped {
        return match whole(currency) {
            Ok(a) if matches!(money.price, Price::Form | Price::Confirm) => Plan::Uncapped(a),
            _ => Plan::Uncapped(None),
        };
    }
    let account = match kind {
        // Money sent to a connected account counts for that account.
        MoneyKind::Transfer => match read("destination") {
            Ok(d) => d.or(account.map(str::to_string)),
            Err(f) => return refuse(f, "unpriced"),
        },
        _ => account.map(str::to_string),
    };
    let lookup = |what, path: String| {
        Plan::Lookup(Lookup { service, kind, path, what, given, account: account.clone() })
    };
    let unpriced = |why: &str| {
        refuse(Failure::SpendLimitUnavailable { message: format!("{why} (keyward spend cap).") }, "unpriced")
    };
    match money.price {
        Price::Form | Price::Confirm => match whole(currency) {
            Ok(Some(amount)) => capped_spend(service, kind, amount, account),
            Ok(None) => unpriced(&format!(
                "keyward counts this call's amount from its `{}` and `currency` fields, and one is missing",
                money.field.as_deref().unwrap_or("amount")
            )),
            Err(f) => refuse(f, "unpriced"),
        },
        Price::Refundable => {
            let in_path = |param: &str| path_param(entry, path, param);
            let object = if let Some(id) = in_path("{charge}") {
                Ok(Some(("/v1/charges/", id.to_string())))
            } else if let Some(id) = in_path("{fee}") {
                Ok(Some(("/v1/application_fees/", id.to_string())))
            } else {
                match (read("charge"), read("payment_intent")) {
                    (Ok(Some(ch)), _) => Ok(Some(("/v1/charges/", ch))),
                    (Ok(None), Ok(Some(pi))) => Ok(Some(("/v1/payment_intents/", pi))),
                    (Err(f), _) | (_, Err(f)) => Err(f),
                    _ => Ok(None),
                }
            };
            match object {
                Err(f) => refuse(f, "unpriced"),
                Ok(Some((_, id))) if !safe_id(&id) => {
                    unpriced("keyward cannot read the object this refund names")
                }
                Ok(Some((tree @ "/v1/payment_intents/", id))) => {
                    lookup(Object::IntentRefunded, format!("{tree}{id}?expand[]=latest_charge"))
                }
                Ok(Some((tree, id))) => lookup(Object::Refundable, format!("{tree}{id}")),
                Ok(None) => unpriced(
                    "keyward prices a refund from the charge or PaymentIntent it names, and this one names neither",
                ),
            }
        }
        Price::Intent | Price::Increment => match path_param(entry, path, "{id}") {
            Some(id) if safe_id(id) => {
                let what = if money.price == Price::Intent { Object::Intent } else { Object::Increment };
                if what == Object::Increment && given.is_none() {
                    return unpriced("an increment_authorization without `amount` cannot be priced");
                }
                lookup(what, format!("/v1/payment_intents/{id}"))
            }
            _ => unpriced("keyward cannot read the PaymentIntent this call names"),
        },
        Price::Invoice => match path_param(entry, path, "{invoice}") {
            Some(id) if safe_id(id) => lookup(Object::Invoice, format!("/v1/invoices/{id}")),
            _ => unpriced("keyward cannot read the invoice this call pays"),
        },
        Price::CreditNote => match read("invoice") {
            Ok(Some(id)) if safe_id(&id) => lookup(Object::InvoiceCurrency, format!("/v1/invoices/{id}")),
            Ok(_) => unpriced("a credit note with `refund_amount` names no invoice keyward can read"),
            Err(f) => refuse(f, "unpriced"),
        },
        // v2 bodies are JSON and stream through unread: a capped service cannot make the call
        // until keyward reads them (fail closed).
        Price::Json => refuse(
            Failure::SpendLimitExceeded {
                message: format!(
                    "{} has a keyward spend cap on {} and keyward does not yet count v2 calls (JSON \
                     bodies), so it refuses them for capped services.",
                    service.name,
                    kind.as_str()
                ),
            },
            "unread",
        ),
    }
}

/// The call priced from the answer to its [`Lookup`] (the JSON of the object read).
pub fn priced<'s>(lookup: &Lookup<'s>, answer: &[u8]) -> Plan<'s> {
    let unpriced = |what: &str| {
        Plan::Refused(Refusal {
            failure: Failure::SpendLimitUnavailable {
                message: format!(
                    "keyward could not price this call: the answer to GET {} {what} (keyward spend cap).",
                    lookup.path.split('?').next().unwrap_or("")
                ),
            },
            kind: lookup.kind,
            reason: "unpriced",
        })
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(answer) else {
        return unpriced("is not JSON");
    };
    let int = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64);
    let Some(currency) = json.get("currency").and_then(|c| c.as_str()).and_then(|c| currency_code(c).ok())
    else {
        return unpriced("has no currency");
    };
    let remaining =
        |v: &serde_json::Value| Some(int(v, "amount")?.saturating_sub(int(v, "amount_refunded")?));
    let value = match lookup.what {
        Object::Refundable => lookup.given.or_else(|| remaining(&json)),
        Object::IntentRefunded => {
            let left = json.get("latest_charge").filter(|c| c.is_object()).and_then(remaining);
            lookup.given.or(left).or_else(|| int(&json, "amount_received"))
        }
        Object::Intent => int(&json, "amount"),
        Object::Increment => int(&json, "amount").map(|now| lookup.given.unwrap_or(0).saturating_sub(now)),
        Object::Invoice => int(&json, "amount_remaining"),
        Object::InvoiceCurrency => lookup.given,
    };
    let Some(value) = value else {
        return unpriced("has no amount");
    };
    capped_spend(lookup.service, lookup.kind, Amount { value, currency }, lookup.account.clone())
}

/// A priced call of a capped kind: refused if its currency has no cap or it is over `per_call`.
fn capped_spend<'s>(
    service: &'s Service,
    kind: MoneyKind,
    amount: Amount,
    account: Option<String>,
) -> Plan<'s> {
    let refuse = |message, reason| {
        Plan::Refused(Refusal { failure: Failure::SpendLimitExceeded { message }, kind, reason })
    };
    let Some(cap) = service.spend.iter().find(|c| c.kind == kind && *c.currency == amount.currency) else {
        let mut named: Vec<&str> =
            service.spend.iter().filter(|c| c.kind == kind).map(|c| &*c.currency).collect();
        named.sort_unstable();
        return refuse(
            format!(
                "{} may {} only in the currencies its keyward spend caps name ({}); this call would {} {} {}, \
                 and amounts of different currencies are never counted as one.",
                service.name,
                verb(kind),
                named.join(", "),
                verb(kind),
                amount.value,
                amount.currency
            ),
            "currency",
        );
    };
    if let Some(max) = cap.per_call
        && amount.value > max
    {
        return refuse(
            format!(
                "{} may {} at most {max} {} in one call (keyward spend cap); this call would {} {} {}.",
                service.name,
                verb(kind),
                cap.currency,
                verb(kind),
                amount.value,
                amount.currency
            ),
            "per_call",
        );
    }
    let account = if cap.per_account { account } else { None };
    Plan::Priced(Spend { service, cap, amount, account })
}

/// The refusal of a call that would pass its cap's `per_day`: `left` of it is unspent in the
/// rolling 24 hours, and the oldest spend counted frees at `frees_at` (Unix seconds).
pub fn over_day(spend: &Spend<'_>, left: u64, frees_at: Option<i64>) -> Refusal {
    let Spend { service, cap, amount, account } = spend;
    let kind = cap.kind;
    let whose = match account {
        Some(a) => format!(" for account {a}"),
        None => String::new(),
    };
    let frees = match frees_at.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()) {
        Some(t) => format!(", and the oldest spend counted frees at {}", rfc3339(t)),
        None => String::new(),
    };
    let message = format!(
        "{} may {} at most {} {} in any 24 hours{whose} (keyward spend cap); {left} {} is left{frees}. \
         This call would {} {} {}.",
        service.name,
        verb(kind),
        cap.per_day.unwrap_or(0),
        cap.currency,
        cap.currency,
        verb(kind),
        amount.value,
        amount.currency,
    );
    Refusal { failure: Failure::SpendLimitExceeded { message }, kind, reason: "per_day" }
}

/// The refusal of a call whose book is full: `max` calls counted in 24 hours (fail closed).
pub fn ledger_full(spend: &Spend<'_>, max: usize) -> Refusal {
    let message = format!(
        "{} has made {max} capped calls to {} in {} within 24 hours, as many as keyward counts; it \
         refuses more until the oldest frees (keyward spend cap).",
        spend.service.name,
        verb(spend.cap.kind),
        spend.cap.currency
    );
    Refusal { failure: Failure::SpendLimitExceeded { message }, kind: spend.cap.kind, reason: "ledger_full" }
}

/// `2026-12-08T14:03:00Z`.
fn rfc3339(t: time::OffsetDateTime) -> String {
    let (y, mo, d) = (t.year(), t.month() as u8, t.day());
    let (h, mi, s) = t.to_hms();
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

fn verb(kind: MoneyKind) -> &'static str {
    match kind {
        MoneyKind::Refund => "refund",
        MoneyKind::Payout => "pay out",
        MoneyKind::Transfer => "transfer",
        MoneyKind::Payment => "charge",
    }
}

/// An amount in minor units, as Stripe takes it: digits only, at most 18 of them.
fn minor_units(v: &str) -> Result<u64, Failure> {
    if v.is_empty() || v.len() > 18 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Failure::NonCanonical("has an amount that is not a whole number of minor units"));
    }
    v.parse().map_err(|_| Failure::NonCanonical("has an amount that is not a whole number of minor units"))
}

/// A currency as Stripe reads it (case-insensitive), lowercased: three ASCII letters.
fn currency_code(c: &str) -> Result<String, Failure> {
    if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(c.to_ascii_lowercase())
    } else {
        Err(Failure::NonCanonical("has a currency that is not a three-letter ISO code"))
    }
}

/// The value of the template's `param` segment in the canonical `path`.
fn path_param<'p>(entry: &Entry, path: &'p str, param: &str) -> Option<&'p str> {
    let at = entry.template.split('/').position(|s| s == param)?;
    path.split('/').nth(at)
}

/// An object id keyward may put in a path as it is (`ch_1Nv0…`).
fn safe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The catalog's money-moving entries as the Markdown table docs/configuration.md holds
/// (a test keeps the two equal).
pub fn table(catalog: &Catalog) -> String {
    let mut out = String::from(
        "| endpoint | kind | amount field | how keyward prices it |\n| --- | --- | --- | --- |\n",
    );
    let mut rows: Vec<_> = catalog.entries.iter().filter_map(|e| Some((e, e.money.as_ref()?))).collect();
    rows.sort_by_key(|(e, m)| (m.kind, e.template.clone()));
    for (e, m) in rows {
        let field = m.field.as_deref().map_or("—".to_string(), |f| format!("`{f}`"));
        let how = match m.price {
            Price::Form => "amount and `currency` from the form",
            Price::Confirm => "amount and `currency` from the form; counted only with `confirm=true`",
            Price::Refundable if e.template.contains("{charge}") => {
                "the amount given, else what remains of the charge (`amount` − `amount_refunded`); \
                 the charge's `currency` (the charge read first)"
            }
            Price::Refundable if e.template.contains("{fee}") => {
                "the amount given, else what remains of the application fee (`amount` − \
                 `amount_refunded`); its `currency` (the fee read first)"
            }
            Price::Refundable => {
                "the amount given, else what remains of the form's `charge` (`amount` − \
                 `amount_refunded`) or `payment_intent` (its latest charge's); their `currency` (read first)"
            }
            Price::Intent => "the PaymentIntent's `amount` and `currency`, read first",
            Price::Increment => "the new total less the PaymentIntent's `amount`, read first",
            Price::Invoice => {
                "the invoice's `amount_remaining` and `currency`, read first; not counted with \
                 `paid_out_of_band=true`"
            }
            Price::CreditNote => {
                "`refund_amount`, in the invoice's `currency`, read first; not counted without it"
            }
            Price::Json => "not read yet (v2 JSON body): refused for a service that caps this kind",
        };
        out.push_str(&format!("| `{} {}` | {} | {field} | {how} |\n", e.method, e.template, m.kind.as_str()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::catalog::STRIPE_CATALOG;
    use crate::policy::{Accounts, Mode};

    fn service(caps: Vec<Cap>) -> Service {
        Service {
            index: 0,
            name: "support-tool".into(),
            mode: Mode::Enforce,
            source_ips: vec![],
            accounts: Accounts::Any,
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

    fn cap(kind: MoneyKind, per_call: u64, per_account: bool) -> Cap {
        Cap { kind, currency: "usd".into(), per_call: Some(per_call), per_day: None, per_account }
    }

    /// What `plan` makes of a call: `uncapped`, `lookup PATH`, `priced AMOUNT CURRENCY [ACCOUNT]`,
    /// or `refused REASON`.
    fn said(p: &Plan<'_>) -> String {
        match p {
            Plan::Uncapped(None) => "uncapped".into(),
            Plan::Uncapped(Some(a)) => format!("uncapped {} {}", a.value, a.currency),
            Plan::Lookup(l) => format!("lookup {}", l.path),
            Plan::Priced(s) => {
                format!(
                    "priced {} {} {}",
                    s.amount.value,
                    s.amount.currency,
                    s.account.as_deref().unwrap_or("-")
                )
            }
            Plan::Refused(r) => format!("refused {}", r.reason),
        }
    }

    #[test]
    fn each_money_call_is_priced_from_the_form_or_read_first_or_refused() {
        let catalog = Catalog::parse(STRIPE_CATALOG).unwrap();
        let s = service(vec![
            cap(MoneyKind::Refund, 5000, false),
            cap(MoneyKind::Payout, 5000, false),
            cap(MoneyKind::Transfer, 5000, true),
        ]);
        let table: &[(&str, &str, Option<&str>, &str)] = &[
            ("/v1/refunds", "charge=ch_1&amount=100", None, "lookup /v1/charges/ch_1"),
            (
                "/v1/refunds",
                "payment_intent=pi_1",
                None,
                "lookup /v1/payment_intents/pi_1?expand[]=latest_charge",
            ),
            ("/v1/refunds", "amount=100", None, "refused unpriced"),
            ("/v1/refunds", "charge=ch_1/refunds", None, "refused unpriced"),
            ("/v1/refunds", "charge=ch_1&amount=1&amount=2", None, "refused unpriced"),
            ("/v1/charges/ch_9/refunds", "", None, "lookup /v1/charges/ch_9"),
            ("/v1/application_fees/fee_1/refunds", "amount=5", None, "lookup /v1/application_fees/fee_1"),
            ("/v1/payouts", "amount=5000&currency=USD", None, "priced 5000 usd -"),
            ("/v1/payouts", "amount=5001&currency=usd", None, "refused per_call"),
            ("/v1/payouts", "amount=5&currency=eur", None, "refused currency"),
            ("/v1/payouts", "amount=5.5&currency=usd", None, "refused unpriced"),
            ("/v1/payouts", "amount=5", None, "refused unpriced"),
            (
                "/v1/transfers",
                "amount=5&currency=usd&destination=acct_9",
                Some("acct_1"),
                "priced 5 usd acct_9",
            ),
            ("/v1/transfers", "amount=5&currency=usd", Some("acct_1"), "priced 5 usd acct_1"),
            // Payments are not capped here: priced from the form for the record, nothing read.
            ("/v1/charges", "amount=900&currency=usd", None, "uncapped 900 usd"),
            ("/v1/payment_intents/pi_1/confirm", "", None, "uncapped"),
            ("/v2/money_management/outbound_payments", "", None, "refused unread"),
            ("/v1/customers", "name=x", None, "uncapped"),
        ];
        let mut wrong = Vec::new();
        for (path, form, account, want) in table {
            let entry = catalog.classify(&http::Method::POST, path).unwrap();
            let got = said(&plan(&s, entry, path, form.as_bytes(), *account));
            if got != *want {
                wrong.push(format!("{path} {form}: got {got}, want {want}"));
            }
        }
        assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    }

    #[test]
    fn payments_count_when_authorized_and_reads_are_priced_from_their_answers() {
        let catalog = Catalog::parse(STRIPE_CATALOG).unwrap();
        let s = service(vec![cap(MoneyKind::Payment, 5000, false), cap(MoneyKind::Refund, 5000, false)]);
        let p = |path: &str, form: &str| {
            plan(&s, catalog.classify(&http::Method::POST, path).unwrap(), path, form.as_bytes(), None)
        };
        assert_eq!(said(&p("/v1/payment_intents", "amount=900&currency=usd")), "uncapped");
        assert_eq!(
            said(&p("/v1/payment_intents", "amount=900&currency=usd&confirm=true")),
            "priced 900 usd -"
        );
        assert_eq!(said(&p("/v1/invoices/in_1/pay", "paid_out_of_band=true")), "uncapped");
        assert_eq!(said(&p("/v1/credit_notes", "invoice=in_1")), "uncapped");
        let answered = |path: &str, form: &str, json: &str| match p(path, form) {
            Plan::Lookup(l) => said(&priced(&l, json.as_bytes())),
            other => panic!("{path}: {}", said(&other)),
        };
        let charge = r#"{"amount": 9000, "amount_refunded": 6000, "currency": "usd"}"#;
        assert_eq!(answered("/v1/refunds", "charge=ch_1", charge), "priced 3000 usd -");
        assert_eq!(answered("/v1/refunds", "charge=ch_1&amount=6000", charge), "refused per_call");
        assert_eq!(
            answered(
                "/v1/refunds",
                "charge=ch_1",
                r#"{"amount": 1, "amount_refunded": 0, "currency": "eur"}"#
            ),
            "refused currency"
        );
        assert_eq!(answered("/v1/refunds", "charge=ch_1", r#"{"amount": 1}"#), "refused unpriced");
        assert_eq!(answered("/v1/refunds", "charge=ch_1", "not json"), "refused unpriced");
        let pi = r#"{"amount": 4000, "currency": "usd", "latest_charge": {"amount": 4000, "amount_refunded": 1500}}"#;
        assert_eq!(answered("/v1/refunds", "payment_intent=pi_1", pi), "priced 2500 usd -");
        assert_eq!(answered("/v1/payment_intents/pi_1/confirm", "", pi), "priced 4000 usd -");
        assert_eq!(
            answered("/v1/payment_intents/pi_1/increment_authorization", "amount=7000", pi),
            "priced 3000 usd -"
        );
        let invoice = r#"{"amount_remaining": 1200, "currency": "usd"}"#;
        assert_eq!(answered("/v1/invoices/in_1/pay", "", invoice), "priced 1200 usd -");
        assert_eq!(
            answered("/v1/credit_notes", "invoice=in_1&refund_amount=700", invoice),
            "priced 700 usd -"
        );
    }

    #[test]
    fn a_day_refusal_names_the_cap_what_is_left_and_when_the_oldest_frees() {
        let s = service(vec![Cap { per_day: Some(50_000), ..cap(MoneyKind::Refund, 50_000, false) }]);
        let spend = Spend {
            service: &s,
            cap: &s.spend[0],
            amount: Amount { value: 5000, currency: "usd".into() },
            account: None,
        };
        let r = over_day(&spend, 3000, Some(1_796_738_580));
        assert_eq!(r.reason, "per_day");
        assert_eq!(
            r.failure.message(),
            "support-tool may refund at most 50000 usd in any 24 hours (keyward spend cap); 3000 usd is left, \
             and the oldest spend counted frees at 2026-12-08T14:03:00Z. This call would refund 5000 usd."
        );
        assert_eq!(
            (r.failure.status(), r.failure.code(), r.failure.retry_after()),
            (http::StatusCode::FORBIDDEN, "spend_limit_exceeded", None)
        );
    }
}
