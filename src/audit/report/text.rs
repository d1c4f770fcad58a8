//! The report as plain text: integrity first, then the policy versions, the administrators'
//! actions, the writes, the tokens without expiry, and what the calls did (`signoff` adds the
//! sign-off).

use std::fmt::Write;

use super::Report;

/// The refusals folded past the recording budgets, in one line.
pub(super) fn folded_line(r: &Report) -> String {
    let f = &r.folded;
    let reasons: Vec<String> = f.reasons.iter().map(|(k, n)| format!("{k} {n}")).collect();
    format!(
        "plus {} refusals folded into {} records (past audit.refusals_per_ip / refusals_per_second), from {} address(es): {}",
        f.refusals,
        f.records,
        f.addresses,
        reasons.join(", ")
    )
}

/// The plain-text report above its sign-off.
pub(super) fn body(r: &Report) -> String {
    let mut out = String::new();
    let o = &mut out;
    integrity(o, r);
    super::text_evidence::sections(o, r);
    let _ = writeln!(o, "ACTIVITY");
    let span = format!("{} .. {}", r.first.as_deref().unwrap_or("-"), r.last.as_deref().unwrap_or("-"));
    let _ = writeln!(o, "{} records, {span}", r.records);
    let per: Vec<String> = r.instances.iter().map(|(i, n)| format!("{i} ({n})")).collect();
    let _ = writeln!(o, "from {} instance(s): {}", r.instances.len(), per.join(", "));
    let _ = writeln!(o, "inputs: {}", r.inputs.join(" "));
    let _ = writeln!(o, "filters: {}", filters(r));
    let _ = writeln!(o, "generated {}\n", r.generated_at);
    let _ = writeln!(
        o,
        "{:<20} {:<44} {:>8} {:>8} {:>10}",
        "SERVICE", "PERMISSION", "ALLOW", "DENY", "WOULD_DENY"
    );
    for d in &r.decisions {
        let _ = writeln!(
            o,
            "{:<20} {:<44} {:>8} {:>8} {:>10}",
            d.service, d.permission, d.allow, d.deny, d.would_deny
        );
    }
    let _ = writeln!(o, "\nPER {}", r.timeline.bucket.to_uppercase());
    for b in &r.timeline.rows {
        let _ = writeln!(
            o,
            "{}  {:>8} allow {:>8} deny {:>8} would_deny",
            b.start, b.allow, b.deny, b.would_deny
        );
    }
    super::text_evidence::missing(o, r);
    for (title, rows) in [("TOP DENIED", &r.top_denied), ("WOULD DENY (report mode)", &r.would_deny)] {
        let _ = writeln!(o, "\n{title}");
        for e in rows {
            let _ = writeln!(o, "{:>8}  {:<20} {:<50} {}", e.count, e.service, e.endpoint, e.reason);
        }
    }
    money(o, r);
    let _ = writeln!(o, "\nTOKENS IN USE");
    for t in &r.tokens {
        let _ = writeln!(o, "{:>8}  {:<20} {:<30} last {}", t.requests, t.service, t.token_id, t.last_seen);
    }
    if let Some(status) = &r.token_status {
        let _ = writeln!(o, "\nCONFIGURED TOKENS");
        for t in status {
            let expires = t.expires.as_deref().unwrap_or("never");
            let _ = writeln!(
                o,
                "{:>8}  {:<20} {:<30} expires {expires:<27} {}",
                t.requests,
                t.service,
                t.token_id,
                t.flags.join(", ")
            );
        }
    }
    let _ = writeln!(o, "\nSOURCE ADDRESSES");
    for s in &r.sources {
        let new = if s.new { "  NEW" } else { "" };
        let _ =
            writeln!(o, "{:>8}  {:<20} {:<40} first {}{new}", s.requests, s.service, s.address, s.first_seen);
    }
    let _ = writeln!(o, "\nCONNECT ACCOUNTS");
    for a in &r.connect_accounts {
        let _ = writeln!(o, "{:>8}  {:<20} {:<30} {} denied", a.requests, a.service, a.account, a.denied);
    }
    let _ = writeln!(o, "\nSECRET VERSIONS");
    for s in &r.secret_versions {
        let v = s.version.map_or("(not versioned)".to_string(), |v| format!("v{v}"));
        let _ =
            writeln!(o, "{:>8}  {:<20} {v:<16} {} .. {}", s.requests, s.service, s.first_seen, s.last_seen);
    }
    let _ = writeln!(o, "\nLIVE KEYS USED{}", if r.live_keys.is_empty() { ": none" } else { "" });
    for l in &r.live_keys {
        let _ = writeln!(o, "{:>8}  {}", l.requests, l.service);
    }
    let _ = writeln!(o, "\nUPSTREAMS");
    for u in &r.upstreams {
        let _ = writeln!(
            o,
            "{:>8}  {:<20} {} errors ({:.2}%)",
            u.requests,
            u.upstream,
            u.errors,
            u.error_rate * 100.0
        );
    }
    suspicious(o, r);
    if let Some(scope) = &r.scope {
        let _ = writeln!(o, "\nSCOPE: GRANTS AGAINST USE");
        o.push_str(&crate::audit::scope::table(scope));
    }
    out
}

/// Money moved per service, kind, currency and day (minor units), and the refused spends.
fn money(o: &mut String, r: &Report) {
    let m = &r.money;
    let _ = writeln!(o, "\nMONEY MOVED (minor units; held: outcome unknown, counted as moved)");
    let _ = writeln!(
        o,
        "{:<10}  {:<20} {:<8} {:<4} {:>14} {:>14} {:>14}",
        "DAY", "SERVICE", "KIND", "CUR", "COMMITTED", "HELD", "UNCAPPED"
    );
    for row in &m.moved {
        let _ = writeln!(
            o,
            "{:<10}  {:<20} {:<8} {:<4} {:>14} {:>14} {:>14}",
            row.day,
            row.service,
            row.kind,
            row.currency,
            format!("{} ({})", row.committed, row.committed_calls),
            format!("{} ({})", row.held, row.held_calls),
            format!("{} ({})", row.uncapped, row.uncapped_calls),
        );
    }
    let _ = writeln!(o, "\nREFUSED SPEND ({})", m.refused_total);
    for f in &m.refused {
        let amount = match (f.amount, &f.currency) {
            (Some(a), Some(c)) => format!("{a} {c}"),
            _ => "(not priced)".into(),
        };
        let _ = writeln!(
            o,
            "{}  {:<20} {:<8} {:<36} {:>16}  {} ({})",
            f.time, f.service, f.kind, f.endpoint, amount, f.reason, f.decision
        );
    }
    if (m.refused.len() as u64) < m.refused_total {
        let _ = writeln!(o, "  … and {} more", m.refused_total - m.refused.len() as u64);
    }
}

fn integrity(o: &mut String, r: &Report) {
    let i = &r.integrity;
    if i.verified {
        let _ = writeln!(o, "LOG VERIFIED: {} chain(s) intact", i.chains.len());
    } else {
        let _ = writeln!(o, "WARNING: THE LOG DID NOT VERIFY: records were edited, dropped or truncated");
        for p in &i.problems {
            let _ = writeln!(o, "  {p}");
        }
    }
    let _ = writeln!(o, "INTEGRITY");
    for c in &i.chains {
        let _ = writeln!(
            o,
            "  instance {}: {} records, seq {}..{}, head {}",
            c.instance, c.records, c.first_seq, c.last_seq, c.head
        );
        let _ = writeln!(o, "    history: {}", c.history);
        let gap = match &c.gap {
            None => "none".to_string(),
            Some(g) if g.rotated => {
                format!("records 1..{} rotated away (a rotation record says so)", g.through)
            }
            Some(g) => {
                format!("records 1..{} NOT in the files given, and no rotation record says why", g.through)
            }
        };
        let _ = writeln!(o, "    rotation gaps: {gap}");
        let _ = writeln!(o, "    restarts (new chains from genesis): {}", c.restarts);
        let _ = writeln!(o, "    folded refusals: {} in {} records", c.folded_refusals, c.folded_records);
        let _ = match &c.accounted {
            Some(a) => writeln!(
                o,
                "    accounted: {} requests answered, each in the log (own or folded), checked at {} checkpoint(s); \
                 {} answered 503 unrecordable",
                a.answered, a.checkpoints, a.unrecordable
            ),
            None => writeln!(o, "    accounted: no checkpoint whose process began in these files"),
        };
    }
    match &i.signed {
        None => {
            let _ = writeln!(
                o,
                "  checkpoints: not signed (no --key given): a rewrite of a whole chain cannot be detected"
            );
        }
        Some(s) => {
            let _ =
                writeln!(o, "  checkpoints: {} verified under key(s) {}", s.checkpoints, s.keys.join(", "));
            for x in &s.instances {
                let _ = writeln!(
                    o,
                    "    {}: last checkpoint seq {} ({}), unsigned tail: {} records",
                    x.instance,
                    x.last_checkpoint_seq.map_or("-".into(), |n| n.to_string()),
                    x.last_checkpoint_time.as_deref().unwrap_or("-"),
                    x.unsigned_tail
                );
            }
        }
    }
    if r.folded.records > 0 {
        let _ = writeln!(o, "  {}", folded_line(r));
    }
    o.push('\n');
}

pub(super) fn filters(r: &Report) -> String {
    let f = &r.filters;
    let mut parts = Vec::new();
    if let Some(t) = f.since {
        parts.push(format!("since {}", crate::audit::timestamp(t)));
    }
    if let Some(t) = f.until {
        parts.push(format!("until {}", crate::audit::timestamp(t)));
    }
    if let Some(s) = &f.service {
        parts.push(format!("service {s}"));
    }
    if parts.is_empty() { "none".into() } else { parts.join(", ") }
}

fn suspicious(o: &mut String, r: &Report) {
    let s = &r.suspicious;
    let _ = writeln!(o, "\nSUSPICIOUS ACTIVITY{}", if s.is_empty() { ": none found" } else { "" });
    for b in &s.denial_bursts {
        let _ = writeln!(
            o,
            "  burst: {} denials of {} ({}) {} .. {}",
            b.denials, b.caller, b.service, b.start, b.end
        );
    }
    for c in &s.outside_allowlist {
        caller(o, &format!("outside allowlist ({})", c.reason), c);
    }
    for c in &s.bad_tokens {
        caller(o, &c.reason, c);
    }
    for c in &s.exposed_tokens {
        caller(o, "token exposed, rotate it (token_in_wrong_place)", c);
    }
    for u in &s.unknown_endpoints {
        let _ = writeln!(o, "  not in catalog: {}, {} {}", calls(u.count), u.service, u.endpoint);
    }
    for h in &s.unusual_hours {
        let _ = writeln!(
            o,
            "  unusual hour: {} called {} at {:02}:00 UTC, first {}",
            h.service,
            calls(h.calls),
            h.hour,
            h.first_seen
        );
    }
}

/// One suspicious caller: what it did, how often, whose token, from where.
fn caller(o: &mut String, what: &str, c: &super::suspicious::Caller) {
    let _ = writeln!(
        o,
        "  {what}: {}, {} token {} from {} (last {})",
        calls(c.count),
        c.service,
        c.token_id,
        c.address,
        c.last_seen
    );
}

/// "1 call", "3 calls".
fn calls(n: impl Into<u64>) -> String {
    let n = n.into();
    format!("{n} call{}", if n == 1 { "" } else { "s" })
}
