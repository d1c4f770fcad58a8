//! `keyward audit report`: what the access log says, summarised for auditors.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::AccessRecord;
use crate::policy::Decision;

#[derive(Debug, Default)]
pub struct Filter {
    pub since: Option<OffsetDateTime>,
    pub until: Option<OffsetDateTime>,
    pub service: Option<String>,
}

impl Filter {
    pub fn keeps(&self, r: &AccessRecord) -> bool {
        if self.service.as_deref().is_some_and(|s| r.service.as_deref() != Some(s)) {
            return false;
        }
        if self.since.is_none() && self.until.is_none() {
            return true;
        }
        let Ok(t) = OffsetDateTime::parse(&r.time, &Rfc3339) else { return false };
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub records: u64,
    pub first: Option<String>,
    pub last: Option<String>,
    /// Records per instance (replica), merged into the rest of the report.
    pub instances: BTreeMap<String, u64>,
    /// service → permission → decision → count
    pub decisions: Vec<DecisionRow>,
    pub top_denied: Vec<EndpointRow>,
    pub would_deny: Vec<EndpointRow>,
    pub tokens: Vec<TokenRow>,
    pub upstreams: Vec<UpstreamRow>,
}

#[derive(Debug, Serialize)]
pub struct DecisionRow {
    pub service: String,
    pub permission: String,
    pub allow: u64,
    pub deny: u64,
    pub would_deny: u64,
}

#[derive(Debug, Serialize)]
pub struct EndpointRow {
    pub service: String,
    pub endpoint: String,
    pub reason: String,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct TokenRow {
    pub service: String,
    pub token_id: String,
    pub requests: u64,
    pub last_seen: String,
}

#[derive(Debug, Serialize)]
pub struct UpstreamRow {
    pub upstream: String,
    pub requests: u64,
    pub errors: u64,
    pub error_rate: f64,
}

const TOP: usize = 10;

/// Summarise the records that pass `filter`. Lines that are not records are skipped
/// (verify is the tool that judges them).
pub fn build<'a>(records: impl IntoIterator<Item = &'a AccessRecord>, filter: &Filter) -> Report {
    let mut rep = Report::default();
    let mut decisions: BTreeMap<(String, String), [u64; 3]> = BTreeMap::new();
    let mut denied: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut would: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    let mut tokens: BTreeMap<(String, String), (u64, String)> = BTreeMap::new();
    let mut upstreams: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in records.into_iter().filter(|r| filter.keeps(r)) {
        rep.records += 1;
        if rep.first.is_none() {
            rep.first = Some(r.time.clone());
        }
        rep.last = Some(r.time.clone());
        *rep.instances.entry(r.instance.as_deref().unwrap_or("(no instance)").to_string()).or_default() += 1;
        let service = r.service.as_deref().unwrap_or("(unidentified)").to_string();
        let permission = r.permission.as_deref().unwrap_or("(none)").to_string();
        let slot = match r.decision {
            Decision::Allow => 0,
            Decision::Deny => 1,
            Decision::WouldDeny => 2,
        };
        decisions.entry((service.clone(), permission)).or_default()[slot] += 1;
        let endpoint = format!("{} {}", r.method, r.template.as_deref().unwrap_or(&r.path));
        let key = (service.clone(), endpoint, r.reason.to_string());
        match slot {
            1 => *denied.entry(key).or_default() += 1,
            2 => *would.entry(key).or_default() += 1,
            _ => {}
        }
        if let Some(t) = &r.token_id {
            let e = tokens.entry((service.clone(), t.to_string())).or_default();
            e.0 += 1;
            e.1 = r.time.clone();
        }
        if let Some(u) = &r.upstream
            && r.decision != Decision::Deny
        {
            let e = upstreams.entry(u.to_string()).or_default();
            e.0 += 1;
            if r.status >= 500 {
                e.1 += 1;
            }
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
    rep
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

/// A plain-text table report.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    let span = format!("{} .. {}", r.first.as_deref().unwrap_or("-"), r.last.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "{} records, {span}", r.records);
    let per: Vec<String> = r.instances.iter().map(|(i, n)| format!("{i} ({n})")).collect();
    let _ = writeln!(out, "from {} instance(s): {}\n", r.instances.len(), per.join(", "));
    let _ = writeln!(
        out,
        "{:<20} {:<44} {:>8} {:>8} {:>10}",
        "SERVICE", "PERMISSION", "ALLOW", "DENY", "WOULD_DENY"
    );
    for d in &r.decisions {
        let _ = writeln!(
            out,
            "{:<20} {:<44} {:>8} {:>8} {:>10}",
            d.service, d.permission, d.allow, d.deny, d.would_deny
        );
    }
    for (title, rows) in [("TOP DENIED", &r.top_denied), ("WOULD DENY (report mode)", &r.would_deny)] {
        let _ = writeln!(out, "\n{title}");
        for e in rows {
            let _ = writeln!(out, "{:>8}  {:<20} {:<50} {}", e.count, e.service, e.endpoint, e.reason);
        }
    }
    let _ = writeln!(out, "\nTOKENS IN USE");
    for t in &r.tokens {
        let _ = writeln!(out, "{:>8}  {:<20} {:<30} last {}", t.requests, t.service, t.token_id, t.last_seen);
    }
    let _ = writeln!(out, "\nUPSTREAMS");
    for u in &r.upstreams {
        let _ = writeln!(
            out,
            "{:>8}  {:<20} {} errors ({:.2}%)",
            u.requests,
            u.upstream,
            u.errors,
            u.error_rate * 100.0
        );
    }
    out
}

/// A self-contained HTML page (no scripts, no external assets) with bar charts.
pub fn html(r: &Report) -> String {
    let mut body = String::new();
    let max = r.decisions.iter().map(|d| d.allow + d.deny + d.would_deny).max().unwrap_or(1).max(1);
    let _ = write!(
        body,
        "<h2>Decisions by service and permission</h2><table><tr><th>service</th><th>permission</th><th>allow</th><th>deny</th><th>would deny</th><th></th></tr>"
    );
    for d in &r.decisions {
        let w = |n: u64| n as f64 * 100.0 / max as f64;
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=bar>\
             <span class=allow style=\"width:{:.1}%\"></span><span class=deny style=\"width:{:.1}%\"></span>\
             <span class=would style=\"width:{:.1}%\"></span></td></tr>",
            esc(&d.service),
            esc(&d.permission),
            d.allow,
            d.deny,
            d.would_deny,
            w(d.allow),
            w(d.deny),
            w(d.would_deny)
        );
    }
    body.push_str("</table>");
    for (title, rows) in
        [("Top denied endpoints", &r.top_denied), ("Would be denied if enforced", &r.would_deny)]
    {
        let cells =
            rows.iter().map(|e| vec![e.count.to_string(), esc(&e.service), esc(&e.endpoint), esc(&e.reason)]);
        table_html(&mut body, title, &["count", "service", "endpoint", "reason"], cells);
    }
    let cells = r
        .tokens
        .iter()
        .map(|t| vec![esc(&t.service), esc(&t.token_id), t.requests.to_string(), esc(&t.last_seen)]);
    table_html(&mut body, "Tokens in use", &["service", "token id", "requests", "last seen"], cells);
    let cells = r.upstreams.iter().map(|u| {
        vec![
            esc(&u.upstream),
            u.requests.to_string(),
            u.errors.to_string(),
            format!("{:.2}%", u.error_rate * 100.0),
        ]
    });
    table_html(&mut body, "Upstreams", &["upstream", "requests", "errors", "error rate"], cells);
    format!(
        "<!doctype html><html><head><meta charset=utf-8><title>keyward access report</title><style>\
         body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin-bottom:1.5em}}\
         td,th{{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left}}td.bar{{width:320px}}\
         .bar span{{display:inline-block;height:12px}}.allow{{background:#3a7}}.deny{{background:#c33}}.would{{background:#e90}}\
         </style></head><body><h1>keyward access report</h1><p>{} records, {} to {}, from {}</p>\
         <p><span class=allow style=\"display:inline-block;width:12px;height:12px\"></span> allow \
         <span class=deny style=\"display:inline-block;width:12px;height:12px\"></span> deny \
         <span class=would style=\"display:inline-block;width:12px;height:12px\"></span> would deny</p>{body}</body></html>\n",
        r.records,
        esc(r.first.as_deref().unwrap_or("-")),
        esc(r.last.as_deref().unwrap_or("-")),
        esc(&r.instances.iter().map(|(i, n)| format!("{i} ({n})")).collect::<Vec<_>>().join(", ")),
    )
}

/// A titled table; cells are already escaped.
fn table_html(out: &mut String, title: &str, head: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let _ = write!(out, "<h2>{title}</h2><table><tr>");
    for h in head {
        let _ = write!(out, "<th>{h}</th>");
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</table>");
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
