//! The services of a configuration, checked and compiled for the policy: names, secrets,
//! source networks, tokens (hashes, validity), Connect accounts and scopes.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use toml::Spanned;

use super::errors::Errors;
use super::file::{FileConfig, ServiceFile};
use crate::control::limits::{LimitSpec, Rate};
use crate::policy::catalog::{Catalog, MoneyKind};
use crate::policy::spend::Cap;
use crate::policy::{Accounts, Level, Quarantine, Service, Token, TokenRef};

/// How errors name a service: `service "billing"`, or by position while its name is unusable.
fn service_key(i: usize, s: &ServiceFile) -> String {
    let name = s.name.get_ref();
    if name_is_usable(name) { format!("service \"{name}\"") } else { format!("service[{i}]") }
}

/// Records, reports and metrics name a service by this; `(…)` is theirs for "none".
fn name_is_usable(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('(') && crate::text::is_printable(name)
}

/// The compiled services and the token index; and the limits of those that have any.
pub struct Compiled {
    pub services: Vec<Service>,
    pub tokens: foldhash::HashMap<[u8; 32], TokenRef>,
    pub limits: Vec<(Arc<str>, Option<LimitSpec>)>,
}

pub fn build(
    file: &FileConfig,
    catalog: &Catalog,
    secret_index: &HashMap<&str, usize>,
    errs: &mut Errors,
) -> Compiled {
    let mut services = Vec::new();
    let mut tokens = foldhash::HashMap::default();
    let mut limit_specs = Vec::new();
    let mut names = HashSet::new();
    for (i, s) in file.service.iter().enumerate() {
        let key = service_key(i, s);
        if !name_is_usable(s.name.get_ref()) {
            errs.at(
                Some(s.name.span()),
                format!("{key}.name"),
                "must be non-empty, not start with `(`, and be printable (no control or bidirectional characters)",
            );
        }
        if !names.insert(s.name.get_ref().as_str()) {
            errs.at(
                Some(s.name.span()),
                format!("{key}.name"),
                format!("service `{}` is defined twice", s.name.get_ref()),
            );
        }
        let secret = match secret_index.get(s.secret.get_ref().as_str()) {
            Some(idx) => *idx,
            None => {
                let defined: Vec<&str> = file.secret.keys().map(String::as_str).collect();
                errs.at(
                    Some(s.secret.span()),
                    format!("{key}.secret"),
                    format!(
                        "no [secret.{}] is defined{}",
                        s.secret.get_ref(),
                        did_you_mean(s.secret.get_ref(), &defined)
                    ),
                );
                usize::MAX
            }
        };
        if s.source_ips.is_empty() {
            errs.at(
                Some(s.name.span()),
                format!("{key}.source_ips"),
                "is empty: list the networks allowed to call, e.g. [\"10.0.0.0/8\"]",
            );
        }
        host_bits(&s.source_ips, &format!("{key}.source_ips"), errs);
        let svc_tokens = build_tokens(s, &key, services.len() as u32, &mut tokens, errs);
        limit_specs.push((Arc::from(s.name.get_ref().as_str()), limits(file, s, &key, errs)));
        services.push(Service {
            index: services.len(),
            name: s.name.get_ref().as_str().into(),
            mode: s.mode,
            source_ips: s.source_ips.clone(),
            accounts: accounts(s, &key, errs),
            scope: scope(s, &key, catalog, errs),
            secret,
            egress_ip: s.egress_ip,
            livemode: s.livemode,
            tokens: svc_tokens,
            client_ids: client_ids(s, &key, errs),
            quarantine: quarantine(s, &key, errs),
            spend: spend(s, &key, errs),
        });
    }
    Compiled { services, tokens, limits: limit_specs }
}

/// A service's `quarantine`: at least 2 refusals (one could be a mistake), within 1 s..24 h.
fn quarantine(s: &ServiceFile, key: &str, errs: &mut Errors) -> Option<Quarantine> {
    let q = s.quarantine.as_ref()?;
    let (span, f) = (q.span(), q.get_ref());
    if f.ip_refusals < 2 {
        errs.at(Some(span.clone()), format!("{key}.quarantine.ip_refusals"), "must be at least 2");
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&f.within) {
        errs.at(Some(span), format!("{key}.quarantine.within"), "must be between 1s and 24h");
    }
    Some(Quarantine { refusals: f.ip_refusals, within: f.within })
}

/// A service's `[[service.spend]]` caps, one per kind: each kind known, a lowercase ISO
/// currency, `per_call` and `per_day` at least 1 and in that order, one cap per kind and
/// currency.
fn spend(s: &ServiceFile, key: &str, errs: &mut Errors) -> Vec<Cap> {
    let mut caps: Vec<Cap> = Vec::new();
    for (i, t) in s.spend.iter().enumerate() {
        let (span, f) = (t.span(), t.get_ref());
        let at = format!("{key}.spend[{i}]");
        let currency = match &f.currency {
            None => {
                errs.at(Some(span.clone()), format!("{at}.currency"), "is required: the lowercase ISO code the cap counts in, e.g. \"usd\" (amounts of different currencies are never added)");
                continue;
            }
            Some(c) if c.get_ref().len() != 3 || !c.get_ref().bytes().all(|b| b.is_ascii_lowercase()) => {
                errs.at(
                    Some(c.span()),
                    format!("{at}.currency"),
                    "must be a lowercase three-letter ISO currency code, e.g. \"usd\"",
                );
                continue;
            }
            Some(c) => Arc::<str>::from(c.get_ref().as_str()),
        };
        if f.kinds.is_empty() {
            errs.at(
                Some(span.clone()),
                format!("{at}.kinds"),
                "is empty: name refund, payout, transfer or payment",
            );
        }
        if f.per_call.is_none() && f.per_day.is_none() {
            errs.at(Some(span.clone()), &at, "sets neither per_call nor per_day");
        }
        for (name, v) in [("per_call", f.per_call), ("per_day", f.per_day)] {
            if v == Some(0) {
                errs.at(
                    Some(span.clone()),
                    format!("{at}.{name}"),
                    "must be at least 1 (remove the service's write scope to forbid the calls)",
                );
            }
        }
        if let (Some(call), Some(day)) = (f.per_call, f.per_day)
            && call > day
        {
            errs.at(
                Some(span.clone()),
                format!("{at}.per_call"),
                format!("is larger than per_day ({call} > {day}): no call could spend it"),
            );
        }
        for (j, k) in f.kinds.iter().enumerate() {
            let Some(kind) = MoneyKind::parse(k.get_ref()) else {
                errs.at(
                    Some(k.span()),
                    format!("{at}.kinds[{j}]"),
                    format!(
                        "`{}` is not a kind keyward counts: refund, payout, transfer or payment",
                        k.get_ref()
                    ),
                );
                continue;
            };
            if caps.iter().any(|c| c.kind == kind && c.currency == currency) {
                errs.at(Some(k.span()), format!("{at}.kinds[{j}]"), format!("{} in {currency} is capped twice in this service: one [[service.spend]] per kind and currency", kind.as_str()));
                continue;
            }
            caps.push(Cap {
                kind,
                currency: currency.clone(),
                per_call: f.per_call,
                per_day: f.per_day,
                per_account: f.per_account,
            });
        }
    }
    caps
}

/// A service's `rate`, `burst` and `concurrency`, if it has any.
fn limits(file: &FileConfig, s: &ServiceFile, key: &str, errs: &mut Errors) -> Option<LimitSpec> {
    let rate = s.rate.as_ref().and_then(|r| {
        Rate::parse(r.get_ref()).map_err(|msg| errs.at(Some(r.span()), format!("{key}.rate"), msg)).ok()
    });
    let positive = |n: Option<u32>, what: &str, errs: &mut Errors| {
        n.map(|n| {
            NonZeroU32::new(n)
                .ok_or_else(|| errs.at(Some(s.name.span()), format!("{key}.{what}"), "must be at least 1"))
                .ok()
        })
        .unwrap_or(None)
    };
    let burst = positive(s.burst, "burst", errs);
    let concurrency = positive(s.concurrency, "concurrency", errs);
    if s.burst.is_some() && s.rate.is_none() {
        errs.at(Some(s.name.span()), format!("{key}.burst"), "needs a rate");
    }
    let priority = s.priority.as_ref().map(|p| *p.get_ref());
    if let Some(p) = &s.priority
        && file.ratelimit.upstream_rate.is_none()
    {
        errs.at(
            Some(p.span()),
            format!("{key}.priority"),
            "needs [ratelimit] upstream_rate: the budget it is a place in",
        );
    }
    (rate.is_some() || concurrency.is_some() || priority.is_some()).then_some(LimitSpec {
        rate,
        burst,
        concurrency,
        priority: priority.unwrap_or_default(),
    })
}

/// `client_ids`: each a URI (`spiffe://trust.domain/path`), matched against a certificate's
/// URI SANs, or `dns:NAME`, against its DNS SANs; compared exactly.
fn client_ids(s: &ServiceFile, key: &str, errs: &mut Errors) -> Vec<String> {
    let mut out = Vec::new();
    for (i, id) in s.client_ids.iter().enumerate() {
        let v = id.get_ref();
        let plain = !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic());
        let dns = v.strip_prefix("dns:").is_some_and(|n| !n.is_empty() && !n.contains('/'));
        let uri = v.split_once("://").is_some_and(|(scheme, rest)| {
            !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric()) && !rest.is_empty()
        });
        if !plain || !(dns || uri) {
            errs.at(
                Some(id.span()),
                format!("{key}.client_ids[{i}]"),
                "is neither a URI (spiffe://prod.example/ns/pay/sa/billing) nor dns:NAME",
            );
        }
        out.push(v.clone());
    }
    out
}

fn build_tokens(
    s: &ServiceFile,
    key: &str,
    service: u32,
    index: &mut foldhash::HashMap<[u8; 32], TokenRef>,
    errs: &mut Errors,
) -> Vec<Token> {
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    for (j, t) in s.token.iter().enumerate() {
        let tkey = format!("{key}.token[{j}]");
        if t.id.get_ref().is_empty() || !crate::text::is_printable(t.id.get_ref()) {
            errs.at(
                Some(t.id.span()),
                format!("{tkey}.id"),
                "must be non-empty and printable (no control or bidirectional characters)",
            );
        } else if !ids.insert(t.id.get_ref().as_str()) {
            errs.at(Some(t.id.span()), format!("{tkey}.id"), "token id is used twice in this service");
        }
        let hash = t.sha256.get_ref();
        let mut digest = [0u8; 32];
        if hash.len() != 64 || hex::decode_to_slice(hash.to_ascii_lowercase(), &mut digest).is_err() {
            errs.at(
                Some(t.sha256.span()),
                format!("{tkey}.sha256"),
                "must be 64 hex digits (the SHA-256 of the token; see `keyward token new`)",
            );
        } else if index.insert(digest, TokenRef { service, token: j as u32 }).is_some() {
            errs.at(
                Some(t.sha256.span()),
                format!("{tkey}.sha256"),
                "the same token hash is configured twice",
            );
        }
        if let Some(nets) = &t.source_ips {
            host_bits(nets, &format!("{tkey}.source_ips"), errs);
        }
        out.push(Token {
            id: t.id.get_ref().as_str().into(),
            hash: digest,
            expires: timestamp(t.expires.as_ref(), &format!("{tkey}.expires"), errs),
            not_before: timestamp(t.not_before.as_ref(), &format!("{tkey}.not_before"), errs),
            revoked: timestamp(t.revoked.as_ref(), &format!("{tkey}.revoked"), errs),
            source_ips: t.source_ips.clone(),
        });
    }
    out
}

pub(super) fn timestamp(v: Option<&Spanned<String>>, key: &str, errs: &mut Errors) -> Option<i64> {
    let v = v?;
    match OffsetDateTime::parse(v.get_ref(), &Rfc3339) {
        Ok(t) => Some(t.unix_timestamp()),
        Err(_) => {
            errs.at(Some(v.span()), key, "must be an RFC 3339 time such as \"2027-01-31T00:00:00Z\"");
            None
        }
    }
}

fn accounts(s: &ServiceFile, key: &str, errs: &mut Errors) -> Accounts {
    match s.accounts.as_slice() {
        [] => Accounts::PlatformOnly,
        [one] if one == "*" => Accounts::Any,
        list => {
            if list.iter().any(|a| a == "*") {
                errs.at(Some(s.name.span()), format!("{key}.accounts"), "\"*\" must stand alone");
            }
            // Not repeated: a value pasted into the wrong place could be a secret.
            for (n, _) in list.iter().enumerate().filter(|(_, a)| !is_account_id(a)) {
                errs.at(
                    Some(s.name.span()),
                    format!("{key}.accounts[{n}]"),
                    "is not an account id like \"acct_1Nv0FGQ9RKHgCVdK\"",
                );
            }
            Accounts::Only(list.to_vec())
        }
    }
}

fn is_account_id(a: &str) -> bool {
    a.strip_prefix("acct_").is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn scope(s: &ServiceFile, key: &str, catalog: &Catalog, errs: &mut Errors) -> Vec<Level> {
    let default = s.scope.iter().find(|(k, _)| k.get_ref() == "*").map(|(_, l)| *l).unwrap_or(Level::None);
    let mut levels = vec![default; catalog.permission_count()];
    for (name, level) in &s.scope {
        if name.get_ref() == "*" {
            continue;
        }
        match catalog.permission_id(name.get_ref()) {
            Some(id) => levels[id.0 as usize] = *level,
            None => errs.at(
                Some(name.span()),
                format!("{key}.scope.{}", name.get_ref()),
                format!(
                    "names no permission in the catalog (see `keyward catalog`){}",
                    did_you_mean(name.get_ref(), &catalog.permission_names())
                ),
            ),
        }
    }
    levels
}

/// `; did you mean `charge`?` when one of `known` is close to `given`.
pub fn did_you_mean(given: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(given, k), *k))
        .filter(|(d, k)| *d <= 2.max(given.len().min(k.len()) / 4))
        .min()
        .map(|(_, k)| format!("; did you mean `{k}`?"))
        .unwrap_or_default()
}
/// A network written with host bits set (`10.20.1.5/16`) could mean the network or a typo
/// for the address: refused, naming the network it would be.
pub fn host_bits(nets: &[ipnet::IpNet], key: &str, errs: &mut Errors) {
    for (i, net) in nets.iter().enumerate() {
        if net.trunc() != *net {
            errs.at(
                None,
                format!("{key}[{i}]"),
                format!(
                    "`{net}` has host bits set: write the network `{}`, or the address alone `{}/{}`",
                    net.trunc(),
                    net.addr(),
                    net.max_prefix_len()
                ),
            );
        }
    }
}
