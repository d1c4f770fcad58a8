//! The plain-text sections an auditor signs besides the counts: policy versions, admin
//! actions, write operations, tokens without expiry, and the permissions refusals lacked.

use std::fmt::Write;

use super::Report;

pub(super) fn sections(o: &mut String, r: &Report) {
    let _ = writeln!(o, "POLICY VERSIONS IN FORCE");
    for p in &r.policy_versions {
        let _ = writeln!(o, "  {}: {} .. {} ({} records)", p.config_version, p.first, p.last, p.records);
        match &p.config_sha256 {
            Some(h) => {
                let _ = writeln!(
                    o,
                    "    config sha256 {h} (recorded {}): print it with `keyward audit config {} FILES…`",
                    p.recorded_at.as_deref().unwrap_or("-"),
                    p.config_version
                );
            }
            None => {
                let _ = writeln!(o, "    its text is not in the log");
            }
        }
    }
    if r.policy_versions.is_empty() {
        let _ = writeln!(o, "  none");
    }
    let _ = writeln!(o, "\nADMIN ACTIONS{}", if r.admin_actions.is_empty() { ": none recorded" } else { "" });
    for a in &r.admin_actions {
        let mut line = format!("  {} {} {}", a.time, a.kind, a.action);
        for (k, v) in [
            ("by", &a.actor),
            ("outcome", &a.outcome),
            ("service", &a.service),
            ("token", &a.token_id),
            ("config", &a.config_version),
            ("instance", &a.instance),
        ] {
            if let Some(v) = v {
                let _ = write!(line, ", {k} {v}");
            }
        }
        if !a.changed.is_empty() {
            let _ = write!(line, ", changed {}", a.changed.join(" "));
        }
        let _ = writeln!(o, "{line}");
    }
    let w = &r.writes;
    let _ = writeln!(o, "\nWRITE OPERATIONS: {} allowed", w.count);
    match &w.rows {
        None if w.count > 0 => {
            let _ = writeln!(o, "  (list them with --writes)");
        }
        None => {}
        Some(rows) => {
            for x in rows {
                let _ = writeln!(
                    o,
                    "  {} {:<20} {:<40} account {}, amount: {}, request {} (upstream {}), status {}",
                    x.time,
                    x.service,
                    x.endpoint,
                    x.account.as_deref().unwrap_or("-"),
                    x.amount.as_deref().unwrap_or("not recorded"),
                    x.request_id,
                    x.upstream_request_id.as_deref().unwrap_or("-"),
                    x.status
                );
            }
        }
    }
    match &r.no_expiry {
        None => {
            let _ = writeln!(o, "\nTOKENS WITHOUT EXPIRY: run with --config to list them");
        }
        Some(rows) => {
            let _ = writeln!(o, "\nTOKENS WITHOUT EXPIRY{}", if rows.is_empty() { ": none" } else { "" });
            for t in rows {
                let _ = writeln!(
                    o,
                    "  NO EXPIRY  {:<20} {:<30} {} requests{}",
                    t.service,
                    t.token_id,
                    t.requests,
                    if t.flags.contains(&"revoked") { " (revoked)" } else { "" }
                );
            }
        }
    }
    o.push('\n');
}

pub(super) fn missing(o: &mut String, r: &Report) {
    let _ = writeln!(
        o,
        "\nMISSING PERMISSIONS (what refused calls lacked){}",
        if r.missing.is_empty() { ": none" } else { "" }
    );
    for m in &r.missing {
        let _ = writeln!(
            o,
            "  {:<20} {:<44} {:>8} deny {:>8} would_deny",
            m.service, m.permission, m.deny, m.would_deny
        );
    }
}
