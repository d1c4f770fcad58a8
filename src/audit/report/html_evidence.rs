//! The HTML sections an auditor signs besides the counts: policy versions, admin actions,
//! write operations, tokens without expiry.

use super::Report;
use super::cells::{esc, flag, num, rows_html, section};

pub(super) fn sections(b: &mut String, r: &Report) {
    section(b, "policy-versions", "Policy versions in force", |b| {
        let rows = r.policy_versions.iter().map(|p| {
            let text = match &p.config_sha256 {
                Some(h) => format!(
                    "sha256 <code>{}</code> (recorded {}): print it with <code>keyward audit config {} FILES…</code>",
                    esc(h),
                    esc(p.recorded_at.as_deref().unwrap_or("-")),
                    esc(&p.config_version)
                ),
                None => "<span class=none>its text is not in the log</span>".into(),
            };
            vec![esc(&p.config_version), esc(&p.first), esc(&p.last), num(p.records), text]
        });
        rows_html(
            b,
            &["config version", "first record", "last record", "records", "configuration text"],
            rows,
        );
    });
    section(b, "admin-actions", "Admin actions", |b| {
        let rows = r.admin_actions.iter().map(|a| {
            let o = |v: &Option<String>| esc(v.as_deref().unwrap_or(""));
            vec![
                esc(&a.time),
                esc(&a.kind),
                esc(&a.action),
                o(&a.actor),
                o(&a.outcome),
                o(&a.service),
                o(&a.token_id),
                o(&a.config_version),
                esc(&a.changed.join(" ")),
                o(&a.instance),
            ]
        });
        let head =
            ["time", "kind", "action", "by", "outcome", "service", "token", "config", "changed", "instance"];
        rows_html(b, &head, rows);
    });
    section(b, "writes", &format!("Write operations: {} allowed", r.writes.count), |b| {
        match &r.writes.rows {
            None => b.push_str("<p class=none>Run with <code>--writes</code> to list each of them.</p>"),
            Some(rows) => {
                let rows = rows.iter().map(|w| {
                    vec![
                        esc(&w.time),
                        esc(&w.service),
                        esc(&w.endpoint),
                        esc(w.account.as_deref().unwrap_or("")),
                        esc(w.amount.as_deref().unwrap_or("not recorded")),
                        esc(&w.request_id),
                        esc(w.upstream_request_id.as_deref().unwrap_or("")),
                        num(w.status.into()),
                    ]
                });
                let head = [
                    "time",
                    "service",
                    "endpoint",
                    "account",
                    "amount",
                    "request id",
                    "upstream request id",
                    "status",
                ];
                rows_html(b, &head, rows);
            }
        }
    });
    section(b, "no-expiry", "Tokens without expiry", |b| match &r.no_expiry {
        None => b.push_str("<p class=none>Run with <code>--config</code> to list them.</p>"),
        Some(rows) => {
            let rows = rows
                .iter()
                .map(|t| vec![esc(&t.service), esc(&t.token_id), num(t.requests), flag("no expiry")]);
            rows_html(b, &["service", "token id", "requests", ""], rows);
        }
    });
}
