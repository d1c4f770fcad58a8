//! The report's tables, counted from the records that passed the filter: decisions,
//! endpoints, tokens, upstreams, accounts, secrets, live keys, the timeline, the sources, and
//! the configured tokens' state.

use std::collections::BTreeMap;

use super::*;

/// The per-key counts: decisions, endpoints, tokens, upstreams, accounts, secrets, live keys.
pub(super) fn counts(kept: &[Seen<'_>], rep: &mut Report) {
    let mut decisions: BTreeMap<(String, String), [u64; 3]> = BTreeMap::new();
    let mut denied: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut would: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut tokens: BTreeMap<(String, String), (u64, String)> = BTreeMap::new();
    let mut upstreams: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut accounts: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    let mut secrets: BTreeMap<(String, Option<u64>), (u64, String, String)> = BTreeMap::new();
    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    for Seen { r, .. } in kept {
        rep.records += 1;
        rep.first.get_or_insert_with(|| r.time.clone());
        rep.last = Some(r.time.clone());
        *rep.instances.entry(r.instance.as_deref().unwrap_or("(no instance)").to_string()).or_default() += 1;
        let service = service_of(r);
        let permission = r.permission.as_deref().unwrap_or("(none)").to_string();
        decisions.entry((service.clone(), permission)).or_default()[slot(r.decision)] += 1;
        let endpoint = format!("{} {}", r.method, r.template.as_deref().unwrap_or(&r.path));
        let key = (service.clone(), endpoint, r.reason.to_string());
        match r.decision {
            Decision::Deny => *denied.entry(key).or_default() += 1,
            Decision::WouldDeny => *would.entry(key).or_default() += 1,
            Decision::Allow => {}
        }
        if let Some(t) = &r.token_id {
            let e = tokens.entry((service.clone(), t.to_string())).or_default();
            e.0 += 1;
            e.1 = r.time.clone();
        }
        if let Some(a) = &r.stripe_account {
            let e = accounts.entry((service.clone(), a.clone())).or_default();
            e.0 += 1;
            e.1 += u64::from(r.decision == Decision::Deny);
        }
        // What went out: a call with an upstream that keyward did not refuse.
        let Some(u) = r.upstream.as_deref().filter(|_| r.decision != Decision::Deny) else { continue };
        let e = upstreams.entry(u.to_string()).or_default();
        e.0 += 1;
        e.1 += u64::from(r.status >= 500);
        if r.secret_version.is_some() || r.livemode.is_some() {
            let e = secrets
                .entry((service.clone(), r.secret_version))
                .or_insert_with(|| (0, r.time.clone(), String::new()));
            e.0 += 1;
            e.2 = r.time.clone();
        }
        if r.livemode == Some(true) {
            *live.entry(service).or_default() += 1;
        }
    }
    rep.decisions = decisions
        .into_iter()
        .map(|((service, permission), [allow, deny, would_deny])| DecisionRow {
            service,
            permission,
            allow,
            deny,
            would_deny,
        })
        .collect();
    rep.top_denied = top(denied);
    rep.would_deny = top(would);
    rep.tokens = tokens
        .into_iter()
        .map(|((service, token_id), (requests, last_seen))| TokenRow {
            service,
            token_id,
            requests,
            last_seen,
        })
        .collect();
    rep.upstreams = upstreams
        .into_iter()
        .map(|(upstream, (requests, errors))| UpstreamRow {
            upstream,
            requests,
            errors,
            error_rate: if requests == 0 { 0.0 } else { errors as f64 / requests as f64 },
        })
        .collect();
    rep.connect_accounts = accounts
        .into_iter()
        .map(|((service, account), (requests, denied))| AccountRow { service, account, requests, denied })
        .collect();
    rep.secret_versions = secrets
        .into_iter()
        .map(|((service, version), (requests, first_seen, last_seen))| SecretRow {
            service,
            version,
            requests,
            first_seen,
            last_seen,
        })
        .collect();
    rep.live_keys = live.into_iter().map(|(service, requests)| LiveRow { service, requests }).collect();
}

fn slot(d: Decision) -> usize {
    match d {
        Decision::Allow => 0,
        Decision::Deny => 1,
        Decision::WouldDeny => 2,
    }
}

fn top(counts: BTreeMap<(String, String, String), u64>) -> Vec<EndpointRow> {
    let mut rows: Vec<EndpointRow> = counts
        .into_iter()
        .map(|((service, endpoint, reason), count)| EndpointRow { service, endpoint, reason, count })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.count));
    rows.truncate(TOP);
    rows
}

/// Hourly buckets for a window of up to two days, else daily; empty buckets in between kept,
/// so the chart's axis is time.
pub(super) fn timeline(kept: &[Seen<'_>]) -> Timeline {
    let (Some(first), Some(last)) = (kept.iter().map(|s| s.at).min(), kept.iter().map(|s| s.at).max()) else {
        return Timeline { bucket: "hour", rows: Vec::new() };
    };
    let (bucket, width) =
        if last - first <= time::Duration::days(2) { ("hour", 3_600) } else { ("day", 86_400) };
    let floor = |t: OffsetDateTime| t.unix_timestamp().div_euclid(width) * width;
    let start = floor(first);
    let n = ((floor(last) - start) / width + 1) as usize;
    let mut rows: Vec<Bucket> = (0..n)
        .map(|i| Bucket {
            start: OffsetDateTime::from_unix_timestamp(start + i as i64 * width)
                .map(crate::audit::timestamp)
                .unwrap_or_default(),
            allow: 0,
            deny: 0,
            would_deny: 0,
        })
        .collect();
    for s in kept {
        let b = &mut rows[((floor(s.at) - start) / width) as usize];
        match s.r.decision {
            Decision::Allow => b.allow += 1,
            Decision::Deny => b.deny += 1,
            Decision::WouldDeny => b.would_deny += 1,
        }
    }
    Timeline { bucket, rows }
}

/// Source addresses per service; an address first seen in the last day is `new` when the
/// service was seen, from other addresses, before that day.
pub(super) fn sources(kept: &[Seen<'_>]) -> Vec<SourceRow> {
    let Some(last) = kept.iter().map(|s| s.at).max() else { return Vec::new() };
    let recent = last - RECENT;
    let mut seen: BTreeMap<(String, IpAddr), (u64, &str, &str, OffsetDateTime)> = BTreeMap::new();
    let mut known_before: BTreeMap<String, bool> = BTreeMap::new();
    for s in kept {
        let (Some(ip), Some(service)) = (s.r.client_ip, s.r.service.as_deref()) else { continue };
        if s.at < recent {
            known_before.insert(service.to_string(), true);
        }
        let e = seen.entry((service.to_string(), ip)).or_insert((0, &s.r.time, &s.r.time, s.at));
        e.0 += 1;
        e.2 = &s.r.time;
        if s.at < e.3 {
            (e.1, e.3) = (&s.r.time, s.at);
        }
    }
    seen.into_iter()
        .map(|((service, address), (requests, first_seen, last_seen, first_at))| SourceRow {
            new: first_at >= recent && known_before.get(&service).copied().unwrap_or(false),
            service,
            address,
            requests,
            first_seen: first_seen.to_string(),
            last_seen: last_seen.to_string(),
        })
        .collect()
}

/// Every configured token with its use in the window and what an auditor should know of it.
pub(super) fn token_status(policy: &Policy, used: &[TokenRow], now: i64) -> Vec<TokenStatus> {
    let at = |t: i64| OffsetDateTime::from_unix_timestamp(t).map(crate::audit::timestamp).ok();
    let mut out = Vec::new();
    for s in &policy.services {
        for t in &s.tokens {
            let requests =
                used.iter().find(|u| u.service == *s.name && u.token_id == *t.id).map_or(0, |u| u.requests);
            let mut flags = Vec::new();
            if requests == 0 {
                flags.push("unused");
            }
            match t.expires {
                Some(e) if e <= now => flags.push("expired"),
                Some(e) if e - now <= EXPIRING => flags.push("expiring"),
                Some(_) => {}
                None => flags.push("no_expiry"),
            }
            if t.revoked.is_some_and(|r| r <= now) {
                flags.push("revoked");
            }
            out.push(TokenStatus {
                service: s.name.to_string(),
                token_id: t.id.to_string(),
                requests,
                expires: t.expires.and_then(at),
                flags,
            });
        }
    }
    out
}
