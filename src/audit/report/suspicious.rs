//! The report's "suspicious activity": what a person reading request logs for misuse looks
//! for, found in the records: bursts of refusals, calls from outside an allowlist, expired or
//! revoked tokens still presented, tokens sent where others could read them, endpoints keyward does not know, and hours of the day a
//! service never called at before.

use std::collections::BTreeMap;

use serde::Serialize;
use time::OffsetDateTime;

use super::{RECENT, Seen, service_of};
use crate::policy::Decision;

/// This many refusals of one caller, each within `BURST_GAP` of the one before, are a burst.
const BURST_MIN: usize = 10;
const BURST_GAP: time::Duration = time::Duration::MINUTE;
const TOP: usize = 20;

#[derive(Debug, Default, Serialize)]
pub struct Suspicious {
    pub denial_bursts: Vec<Burst>,
    pub outside_allowlist: Vec<Caller>,
    /// Expired, revoked, suspended or not-yet-valid tokens presented.
    pub bad_tokens: Vec<Caller>,
    /// Tokens sent outside `Authorization` (`token_exposed`): to be rotated.
    pub exposed_tokens: Vec<Caller>,
    pub unknown_endpoints: Vec<Unknown>,
    /// Hours (UTC) in the report's last day at which the service had never called before.
    pub unusual_hours: Vec<Hour>,
}

impl Suspicious {
    pub fn is_empty(&self) -> bool {
        self.denial_bursts.is_empty()
            && self.outside_allowlist.is_empty()
            && self.bad_tokens.is_empty()
            && self.exposed_tokens.is_empty()
            && self.unknown_endpoints.is_empty()
            && self.unusual_hours.is_empty()
    }
}

#[derive(Debug, Serialize)]
pub struct Burst {
    pub service: String,
    /// The token's id, or, for a caller without a known token, `address A.B.C.D`.
    pub caller: String,
    pub start: String,
    pub end: String,
    pub denials: u64,
}

#[derive(Debug, Serialize)]
pub struct Caller {
    pub service: String,
    pub token_id: String,
    pub address: String,
    pub reason: String,
    pub count: u64,
    pub last_seen: String,
}

#[derive(Debug, Serialize)]
pub struct Unknown {
    pub service: String,
    pub endpoint: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct Hour {
    pub service: String,
    /// 0..23, UTC.
    pub hour: u8,
    pub calls: u64,
    pub first_seen: String,
}

const BAD_TOKEN: [&str; 4] =
    ["api_key_expired", "api_key_revoked", "api_key_suspended", "api_key_not_yet_valid"];
const OUTSIDE: [&str; 2] = ["ip_not_allowed", "token_quarantined"];

pub(super) fn find(kept: &[Seen<'_>]) -> Suspicious {
    let mut denials: BTreeMap<(String, String), Vec<&Seen<'_>>> = BTreeMap::new();
    let mut outside = BTreeMap::new();
    let mut bad = BTreeMap::new();
    let mut exposed = BTreeMap::new();
    let mut unknown: BTreeMap<(String, String), u64> = BTreeMap::new();
    for s in kept {
        let r = s.r;
        let service = service_of(r);
        let address = r.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
        let token = r.token_id.as_deref().unwrap_or("-").to_string();
        if r.decision == Decision::Deny {
            let caller = match &r.token_id {
                Some(t) => t.to_string(),
                None => format!("address {address}"),
            };
            denials.entry((service.clone(), caller)).or_default().push(s);
        }
        let reason = &*r.reason;
        let into = if r.token_exposed {
            &mut exposed
        } else if OUTSIDE.contains(&reason) {
            &mut outside
        } else if BAD_TOKEN.contains(&reason) {
            &mut bad
        } else {
            if reason == "endpoint_not_in_catalog" {
                *unknown.entry((service, format!("{} {}", r.method, r.path))).or_default() += 1;
            }
            continue;
        };
        let e: &mut (u64, &str) =
            into.entry((service, token, address, reason.to_string())).or_insert((0, &r.time));
        e.0 += 1;
        e.1 = &r.time;
    }
    let callers = |m: BTreeMap<(String, String, String, String), (u64, &str)>| {
        m.into_iter()
            .map(|((service, token_id, address, reason), (count, last))| Caller {
                service,
                token_id,
                address,
                reason,
                count,
                last_seen: last.to_string(),
            })
            .collect()
    };
    let mut unknown: Vec<Unknown> = unknown
        .into_iter()
        .map(|((service, endpoint), count)| Unknown { service, endpoint, count })
        .collect();
    unknown.sort_by_key(|u| std::cmp::Reverse(u.count));
    unknown.truncate(TOP);
    Suspicious {
        denial_bursts: denials
            .into_iter()
            .flat_map(|((service, caller), d)| bursts(service, caller, d))
            .collect(),
        outside_allowlist: callers(outside),
        bad_tokens: callers(bad),
        exposed_tokens: callers(exposed),
        unknown_endpoints: unknown,
        unusual_hours: unusual_hours(kept),
    }
}

/// One caller's refusals (in time order) split where more than `BURST_GAP` passed; the runs
/// of at least `BURST_MIN`.
fn bursts(service: String, caller: String, mut d: Vec<&Seen<'_>>) -> Vec<Burst> {
    d.sort_by_key(|s| s.at);
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=d.len() {
        if i == d.len() || d[i].at - d[i - 1].at > BURST_GAP {
            if i - start >= BURST_MIN {
                out.push(Burst {
                    service: service.clone(),
                    caller: caller.clone(),
                    start: d[start].r.time.clone(),
                    end: d[i - 1].r.time.clone(),
                    denials: (i - start) as u64,
                });
            }
            start = i;
        }
    }
    out
}

/// For each service seen before the report's last day: the hours of that day it called at
/// and had never called at before.
fn unusual_hours(kept: &[Seen<'_>]) -> Vec<Hour> {
    let Some(last) = kept.iter().map(|s| s.at).max() else { return Vec::new() };
    let recent = last - RECENT;
    let mut before: BTreeMap<&str, [bool; 24]> = BTreeMap::new();
    for s in kept.iter().filter(|s| s.at < recent) {
        if let Some(service) = s.r.service.as_deref() {
            before.entry(service).or_default()[usize::from(s.at.hour())] = true;
        }
    }
    let mut found: BTreeMap<(&str, u8), (u64, OffsetDateTime, &str)> = BTreeMap::new();
    for s in kept.iter().filter(|s| s.at >= recent) {
        let Some(service) = s.r.service.as_deref() else { continue };
        let Some(hours) = before.get(service) else { continue };
        if !hours[usize::from(s.at.hour())] {
            let e = found.entry((service, s.at.hour())).or_insert((0, s.at, &s.r.time));
            e.0 += 1;
            if s.at < e.1 {
                (e.1, e.2) = (s.at, &s.r.time);
            }
        }
    }
    found
        .into_iter()
        .map(|((service, hour), (calls, _, first))| Hour {
            service: service.to_string(),
            hour,
            calls,
            first_seen: first.to_string(),
        })
        .collect()
}
