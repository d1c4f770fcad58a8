//! The report as one self-contained HTML page (no scripts, no external assets, an inline SVG
//! chart) that prints well: integrity first, each part a `<section>` with an id (`signoff`
//! closes it with the sign-off). On an unverified log a banner tops the page and, printed,
//! every page (a fixed element, which print repeats on each page).

use std::fmt::Write;

use super::cells::{esc, flag, num, rows_html, section};
use super::{Report, Timeline};

const STYLE: &str = "body{font:13px system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}\
h1{margin-bottom:.2em}h2{margin:1.4em 0 .4em;font-size:16px;border-bottom:2px solid #888}\
table{border-collapse:collapse;margin-bottom:.5em}td,th{padding:.2em .6em;border-bottom:1px solid #ddd;\
text-align:left;vertical-align:top}th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}\
td.bar{width:260px}.bar span{display:inline-block;height:11px}.allow{background:#3a7}.deny{background:#c33}\
.would{background:#e90}.key span{display:inline-block;width:11px;height:11px;margin:0 .3em 0 1em}\
.ok{border:2px solid #3a7;background:#eef8f1;padding:.6em 1em}.bad{border:3px solid #c33;background:#fdeaea;\
padding:.6em 1em;font-weight:600}.flag{color:#c33;font-weight:600}.none{color:#777}code{font-size:12px}\
.unverified{border:3px solid #c33;background:#fdeaea;color:#900;padding:.6em 1em;font-weight:700}\
.print-banner{display:none}.sign th{width:8em}.sign td.blank{border-bottom:1px solid #222;width:30em;height:2.2em}\
@media print{body{margin:0;max-width:none}@page{margin:22mm 12mm 14mm}\
.print-banner{display:block;position:fixed;top:-18mm;left:0;right:0;font-size:11px;padding:.3em .6em}section{break-inside:avoid-page}tr{break-inside:avoid}\
.bar span,.allow,.deny,.would,.ok,.bad,.unverified{-webkit-print-color-adjust:exact;print-color-adjust:exact}}";

/// The page up to its sign-off: the document is left open for it.
pub(super) fn page(r: &Report) -> String {
    let mut b = String::new();
    if let Some(banner) = &r.unverified {
        let _ = write!(
            b,
            "<div class=\"unverified print-banner\">{0}</div><div class=unverified id=unverified>{0}</div>",
            esc(banner)
        );
    }
    integrity(&mut b, r);
    super::html_evidence::sections(&mut b, r);
    section(&mut b, "decisions", "Decisions by service and permission", |b| decisions(b, r));
    section(&mut b, "missing", "Missing permissions (what refused calls lacked)", |b| {
        let rows = r
            .missing
            .iter()
            .map(|m| vec![esc(&m.service), esc(&m.permission), num(m.deny), num(m.would_deny)]);
        rows_html(b, &["service", "permission", "denied", "would deny"], rows);
    });
    section(&mut b, "timeline", &format!("Requests per {}", r.timeline.bucket), |b| chart(b, &r.timeline));
    section(&mut b, "suspicious", "Suspicious activity", |b| suspicious(b, r));
    if let Some(scope) = &r.scope {
        section(&mut b, "scope", "Scope: grants against use", |b| {
            let rows = scope.services.iter().flat_map(|(service, s)| {
                let mut bases: Vec<&String> = s.granted.keys().chain(s.suggested.keys()).collect();
                bases.sort();
                bases.dedup();
                bases.into_iter().map(move |base| {
                    let get = |m: &std::collections::BTreeMap<String, &'static str>| {
                        m.get(base).copied().unwrap_or("none").to_string()
                    };
                    let note = if s.unused.contains(base) {
                        flag("never used: remove")
                    } else if s.write_only_read.contains(base) {
                        flag("only read: grant read")
                    } else if s.would_deny_needed.contains_key(base) {
                        flag("needed by would_deny calls")
                    } else {
                        String::new()
                    };
                    vec![esc(service), esc(base), get(&s.granted), get(&s.used), get(&s.suggested), note]
                })
            });
            rows_html(b, &["service", "permission", "granted", "used", "suggested", ""], rows);
        });
    }
    for (id, title, rows) in [
        ("denied", "Top denied endpoints", &r.top_denied),
        ("would-deny", "Would be denied if enforced", &r.would_deny),
    ] {
        section(&mut b, id, title, |b| {
            let rows =
                rows.iter().map(|e| vec![num(e.count), esc(&e.service), esc(&e.endpoint), esc(&e.reason)]);
            rows_html(b, &["count", "service", "endpoint", "reason"], rows);
        });
    }
    section(&mut b, "money", "Money moved (minor units)", |b| {
        let rows = r.money.moved.iter().map(|m| {
            vec![
                esc(&m.day),
                esc(&m.service),
                esc(&m.kind),
                esc(&m.currency),
                num(m.committed),
                num(m.committed_calls),
                num(m.held),
                num(m.held_calls),
                num(m.uncapped),
                num(m.uncapped_calls),
            ]
        });
        let head = [
            "day",
            "service",
            "kind",
            "currency",
            "committed",
            "calls",
            "held (outcome unknown)",
            "calls",
            "uncapped",
            "calls",
        ];
        rows_html(b, &head, rows);
        let _ = write!(b, "<h3>Refused spend ({})</h3>", r.money.refused_total);
        let rows = r.money.refused.iter().map(|f| {
            let amount = match (f.amount, &f.currency) {
                (Some(a), Some(c)) => format!("{a} {}", esc(c)),
                _ => "(not priced)".into(),
            };
            vec![
                esc(&f.time),
                esc(&f.service),
                esc(&f.kind),
                esc(&f.endpoint),
                amount,
                esc(&f.reason),
                esc(&f.decision),
            ]
        });
        rows_html(b, &["time", "service", "kind", "endpoint", "amount", "reason", "decision"], rows);
    });
    section(&mut b, "tokens", "Tokens", |b| tokens(b, r));
    section(&mut b, "sources", "Source addresses", |b| {
        let rows = r.sources.iter().map(|s| {
            let new = if s.new { flag("new") } else { String::new() };
            vec![
                esc(&s.service),
                s.address.to_string(),
                num(s.requests),
                esc(&s.first_seen),
                esc(&s.last_seen),
                new,
            ]
        });
        rows_html(b, &["service", "address", "requests", "first seen", "last seen", ""], rows);
    });
    section(&mut b, "accounts", "Connect accounts", |b| {
        let rows = r
            .connect_accounts
            .iter()
            .map(|a| vec![esc(&a.service), esc(&a.account), num(a.requests), num(a.denied)]);
        rows_html(b, &["service", "account", "requests", "denied"], rows);
    });
    section(&mut b, "secrets", "Secret versions and live keys", |b| {
        let rows = r.secret_versions.iter().map(|s| {
            let v = s.version.map_or("(not versioned)".into(), |v| v.to_string());
            vec![esc(&s.service), v, num(s.requests), esc(&s.first_seen), esc(&s.last_seen)]
        });
        rows_html(b, &["service", "secret version", "requests", "first used", "last used"], rows);
        b.push_str("<p>Services whose calls went out with a live key: ");
        if r.live_keys.is_empty() {
            b.push_str("<span class=none>none</span>");
        }
        let live: Vec<String> =
            r.live_keys.iter().map(|l| format!("<b>{}</b> ({})", esc(&l.service), l.requests)).collect();
        b.push_str(&live.join(", "));
        b.push_str("</p>");
    });
    section(&mut b, "upstreams", "Upstreams", |b| {
        let rows = r.upstreams.iter().map(|u| {
            vec![esc(&u.upstream), num(u.requests), num(u.errors), format!("{:.2}%", u.error_rate * 100.0)]
        });
        rows_html(b, &["upstream", "requests", "errors", "error rate"], rows);
    });
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>keyward access report</title>\
         <style>{STYLE}</style></head><body><h1>keyward access report</h1>{b}"
    )
}

fn integrity(b: &mut String, r: &Report) {
    let i = &r.integrity;
    b.push_str("<section id=integrity><h2>Integrity</h2>");
    if i.verified {
        let _ = write!(b, "<div class=ok>Log verified: {} chain(s) intact.</div>", i.chains.len());
    } else {
        b.push_str("<div class=bad>THE LOG DID NOT VERIFY: records were edited, dropped, reordered or truncated. What follows summarises what could be read.<ul>");
        for p in &i.problems {
            let _ = write!(b, "<li><code>{}</code></li>", esc(p));
        }
        b.push_str("</ul></div>");
    }
    let _ = write!(
        b,
        "<table><tr><th>records</th><td>{} ({} to {})</td></tr><tr><th>inputs</th><td><code>{}</code></td></tr>\
         <tr><th>filters</th><td>{}</td></tr><tr><th>generated</th><td>{}</td></tr>",
        r.records,
        esc(r.first.as_deref().unwrap_or("-")),
        esc(r.last.as_deref().unwrap_or("-")),
        esc(&r.inputs.join(" ")),
        esc(&super::text::filters(r)),
        esc(&r.generated_at),
    );
    if r.folded.records > 0 {
        let _ = write!(b, "<tr><th>folded refusals</th><td>{}</td></tr>", esc(&super::text::folded_line(r)));
    }
    for c in &i.chains {
        let gap = match &c.gap {
            None => "no rotation gap".to_string(),
            Some(g) if g.rotated => {
                format!("records 1..{} rotated away (a rotation record says so)", g.through)
            }
            Some(g) => {
                flag(&format!("records 1..{} not in the files given, no rotation record says why", g.through))
            }
        };
        let _ = write!(
            b,
            "<tr><th>instance {}</th><td>{} records, seq {}..{} ({}), head <code>{}</code><br>{gap}; {} restart(s); \
             {} folded refusals in {} records</td></tr>",
            esc(&c.instance),
            c.records,
            c.first_seq,
            c.last_seq,
            esc(&c.history),
            esc(&c.head),
            c.restarts,
            c.folded_refusals,
            c.folded_records,
        );
        if let Some(a) = &c.accounted {
            let _ = write!(
                b,
                "<tr><th>accounted</th><td>{} requests answered, each in the log (own or folded), checked at {} \
                 checkpoint(s); {} answered 503 unrecordable</td></tr>",
                a.answered, a.checkpoints, a.unrecordable
            );
        }
    }
    let signed = match &i.signed {
        None => "not signed (no --key given): a rewrite of a whole chain cannot be detected".to_string(),
        Some(s) => format!(
            "{} verified under key(s) {}; unsigned tail: {}",
            s.checkpoints,
            s.keys.join(", "),
            s.instances
                .iter()
                .map(|x| format!("{} {} records", x.instance, x.unsigned_tail))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let _ = write!(b, "<tr><th>checkpoints</th><td id=checkpoints>{}</td></tr>", esc(&signed));
    b.push_str("</table></section>");
}

fn decisions(b: &mut String, r: &Report) {
    b.push_str("<p class=key><span class=allow></span>allow<span class=deny></span>deny<span class=would></span>would deny</p>");
    let max = r.decisions.iter().map(|d| d.allow + d.deny + d.would_deny).max().unwrap_or(1).max(1);
    let rows = r.decisions.iter().map(|d| {
        let w = |n: u64| n as f64 * 100.0 / max as f64;
        let bar = format!(
            "<span class=allow style=\"width:{:.1}%\"></span><span class=deny style=\"width:{:.1}%\"></span>\
             <span class=would style=\"width:{:.1}%\"></span>",
            w(d.allow),
            w(d.deny),
            w(d.would_deny)
        );
        vec![esc(&d.service), esc(&d.permission), num(d.allow), num(d.deny), num(d.would_deny), bar]
    });
    rows_html(b, &["service", "permission", "allow", "deny", "would deny", ""], rows);
}

/// Stacked bars per bucket, allow at the bottom; the first and last bucket and the tallest
/// count labelled.
fn chart(b: &mut String, t: &Timeline) {
    if t.rows.is_empty() {
        b.push_str("<p class=none>no records</p>");
        return;
    }
    let (w, h, left, bottom) = (900.0, 160.0, 40.0, 20.0);
    let max = t.rows.iter().map(|r| r.allow + r.deny + r.would_deny).max().unwrap_or(1).max(1) as f64;
    let step = (w - left) / t.rows.len() as f64;
    let bar = (step * 0.8).clamp(1.0, 40.0);
    let _ = write!(
        b,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" role=img aria-label=\"requests per {}\">\
         <line x1=\"{left}\" y1=\"{h}\" x2=\"{w}\" y2=\"{h}\" stroke=\"#888\"/>\
         <text x=\"{}\" y=\"12\" font-size=\"11\" text-anchor=\"end\">{max}</text>\
         <text x=\"{}\" y=\"{h}\" font-size=\"11\" text-anchor=\"end\">0</text>",
        h + bottom,
        t.bucket,
        left - 4.0,
        left - 4.0
    );
    for (i, r) in t.rows.iter().enumerate() {
        let x = left + i as f64 * step;
        let mut y = h;
        for (n, color) in [(r.allow, "#3a7"), (r.deny, "#c33"), (r.would_deny, "#e90")] {
            if n == 0 {
                continue;
            }
            let bh = n as f64 / max * (h - 14.0);
            y -= bh;
            let _ = write!(
                b,
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{} {n}</title></rect>",
                esc(&r.start)
            );
        }
    }
    let label = |s: &str| esc(if t.bucket == "hour" { &s[..16] } else { &s[..10] });
    let _ = write!(
        b,
        "<text x=\"{left}\" y=\"{}\" font-size=\"11\">{}</text>",
        h + 15.0,
        label(&t.rows[0].start)
    );
    if let [_, .., last] = &t.rows[..] {
        let x = left + (t.rows.len() - 1) as f64 * step + bar;
        let _ = write!(
            b,
            "<text x=\"{x:.1}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            h + 15.0,
            label(&last.start)
        );
    }
    b.push_str("</svg>");
}

fn tokens(b: &mut String, r: &Report) {
    match &r.token_status {
        Some(status) => {
            let rows = status.iter().map(|t| {
                let last = r
                    .tokens
                    .iter()
                    .find(|u| u.service == t.service && u.token_id == t.token_id)
                    .map_or(String::new(), |u| esc(&u.last_seen));
                let flags = t.flags.iter().map(|f| flag(f)).collect::<Vec<_>>().join(" ");
                vec![
                    esc(&t.service),
                    esc(&t.token_id),
                    num(t.requests),
                    last,
                    esc(t.expires.as_deref().unwrap_or("never")),
                    flags,
                ]
            });
            rows_html(b, &["service", "token id", "requests", "last seen", "expires", ""], rows);
        }
        None => {
            b.push_str("<p class=none>Run with <code>--config</code> to list configured tokens that are unused, expired or expiring.</p>");
            let rows = r
                .tokens
                .iter()
                .map(|t| vec![esc(&t.service), esc(&t.token_id), num(t.requests), esc(&t.last_seen)]);
            rows_html(b, &["service", "token id", "requests", "last seen"], rows);
        }
    }
}

fn suspicious(b: &mut String, r: &Report) {
    let s = &r.suspicious;
    if s.is_empty() {
        b.push_str("<p class=none>none found</p>");
        return;
    }
    let callers = |b: &mut String, title: &str, rows: &[super::suspicious::Caller]| {
        if rows.is_empty() {
            return;
        }
        let _ = write!(b, "<h3>{title}</h3>");
        let rows = rows.iter().map(|c| {
            vec![
                esc(&c.service),
                esc(&c.token_id),
                esc(&c.address),
                esc(&c.reason),
                num(c.count),
                esc(&c.last_seen),
            ]
        });
        rows_html(b, &["service", "token id", "address", "reason", "calls", "last seen"], rows);
    };
    if !s.denial_bursts.is_empty() {
        b.push_str("<h3>Bursts of refusals</h3>");
        let rows = s
            .denial_bursts
            .iter()
            .map(|d| vec![esc(&d.service), esc(&d.caller), num(d.denials), esc(&d.start), esc(&d.end)]);
        rows_html(b, &["service", "caller", "denials", "from", "to"], rows);
    }
    callers(b, "Calls from outside the allowlist", &s.outside_allowlist);
    callers(b, "Expired, revoked or suspended tokens presented", &s.bad_tokens);
    callers(b, "Tokens exposed outside Authorization: rotate them", &s.exposed_tokens);
    if !s.unknown_endpoints.is_empty() {
        b.push_str("<h3>Endpoints not in the catalog</h3>");
        let rows = s.unknown_endpoints.iter().map(|u| vec![esc(&u.service), esc(&u.endpoint), num(u.count)]);
        rows_html(b, &["service", "endpoint", "calls"], rows);
    }
    if !s.unusual_hours.is_empty() {
        b.push_str("<h3>Calls at hours the service never called at before (UTC)</h3>");
        let rows = s
            .unusual_hours
            .iter()
            .map(|h| vec![esc(&h.service), format!("{:02}:00", h.hour), num(h.calls), esc(&h.first_seen)]);
        rows_html(b, &["service", "hour", "calls", "first"], rows);
    }
}
