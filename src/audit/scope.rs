//! `keyward audit scope`: each service's grants against the access it used in the log (and,
//! in report mode, the access its `would_deny` calls needed), and the smallest scope that
//! would have allowed all of it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::AccessRecord;
use crate::policy::{Decision, Level, Mode, Policy};

#[derive(Debug, Default, Serialize)]
pub struct ScopeReport {
    /// Printed with `--unverified` on a log that does not verify: the banner it carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unverified: Option<String>,
    pub services: BTreeMap<String, ServiceScope>,
}

#[derive(Debug, Default, Serialize)]
pub struct ServiceScope {
    pub mode: &'static str,
    /// Permission base → "read" | "write", as configured.
    pub granted: BTreeMap<String, &'static str>,
    /// Permission base → the most access used (allowed calls, and `would_deny` calls).
    pub used: BTreeMap<String, &'static str>,
    /// Granted, never used.
    pub unused: Vec<String>,
    /// Granted write, only read used.
    pub write_only_read: Vec<String>,
    /// Report mode: what the `would_deny` calls needed beyond the grants.
    pub would_deny_needed: BTreeMap<String, &'static str>,
    /// The smallest `[service.scope]` that allows everything used.
    pub suggested: BTreeMap<String, &'static str>,
}

fn name(level: Level) -> &'static str {
    match level {
        Level::None => "none",
        Level::Read => "read",
        Level::Write => "write",
    }
}

/// Every configured service, with the records (already filtered by time) that name it.
pub fn scope<'a>(policy: &Policy, records: impl IntoIterator<Item = &'a AccessRecord>) -> ScopeReport {
    let mut used: BTreeMap<&str, BTreeMap<String, Level>> = BTreeMap::new();
    let mut needed: BTreeMap<&str, BTreeMap<String, Level>> = BTreeMap::new();
    for r in records {
        let (Some(service), Some(permission), Some(access)) = (&r.service, &r.permission, &r.access) else {
            continue;
        };
        let into = match r.decision {
            Decision::Allow => &mut used,
            Decision::WouldDeny => &mut needed,
            Decision::Deny => continue,
        };
        let Some(svc) = policy.services.iter().find(|s| *s.name == **service) else { continue };
        let at = into.entry(&svc.name).or_default();
        // The endpoint's own permission, and what the call lacked besides (an expansion's).
        let own = (permission.strip_suffix(&format!("_{access}")).unwrap_or(permission), access.as_ref());
        for (base, access) in std::iter::once(own).chain(r.missing.iter().filter_map(|m| m.rsplit_once('_')))
        {
            let level = if access == "write" { Level::Write } else { Level::Read };
            let l = at.entry(base.to_string()).or_insert(Level::None);
            *l = (*l).max(level);
        }
    }
    let mut report = ScopeReport::default();
    for s in &policy.services {
        let granted: BTreeMap<String, Level> = s
            .scope
            .iter()
            .enumerate()
            .filter(|(_, l)| **l != Level::None)
            .map(|(i, l)| {
                (policy.catalog.permission(crate::policy::catalog::PermId(i as u16)).to_string(), *l)
            })
            .collect();
        let mine = used.remove(&*s.name).unwrap_or_default();
        let wanted = needed.remove(&*s.name).unwrap_or_default();
        let mut suggested = mine.clone();
        for (base, l) in &wanted {
            let at = suggested.entry(base.clone()).or_insert(Level::None);
            *at = (*at).max(*l);
        }
        let out = ServiceScope {
            mode: match s.mode {
                Mode::Enforce => "enforce",
                Mode::Report => "report",
            },
            unused: granted.keys().filter(|b| !suggested.contains_key(*b)).cloned().collect(),
            write_only_read: granted
                .iter()
                .filter(|(b, l)| **l == Level::Write && suggested.get(*b) == Some(&Level::Read))
                .map(|(b, _)| b.clone())
                .collect(),
            would_deny_needed: wanted
                .iter()
                .filter(|(b, l)| granted.get(*b).is_none_or(|g| g < l))
                .map(|(b, l)| (b.clone(), name(*l)))
                .collect(),
            granted: granted.iter().map(|(b, l)| (b.clone(), name(*l))).collect(),
            used: mine.iter().map(|(b, l)| (b.clone(), name(*l))).collect(),
            suggested: suggested.iter().map(|(b, l)| (b.clone(), name(*l))).collect(),
        };
        report.services.insert(s.name.to_string(), out);
    }
    report
}

/// The suggested `[service.scope]` blocks, as TOML to paste.
pub fn toml(r: &ScopeReport) -> String {
    let mut out = String::new();
    for (service, s) in &r.services {
        out.push_str(&format!("# service \"{service}\": {} granted, {} used", s.granted.len(), s.used.len()));
        if !s.would_deny_needed.is_empty() {
            out.push_str(&format!(", {} needed by would_deny calls", s.would_deny_needed.len()));
        }
        out.push_str("\n[service.scope]\n");
        for (base, level) in &s.suggested {
            out.push_str(&format!("{base} = \"{level}\"\n"));
        }
        out.push('\n');
    }
    out
}

/// A table a person reads: one line per service and permission.
pub fn table(r: &ScopeReport) -> String {
    let mut out = format!(
        "{:<20} {:<40} {:>8} {:>8} {:>10}  NOTE\n",
        "SERVICE", "PERMISSION", "GRANTED", "USED", "SUGGESTED"
    );
    for (service, s) in &r.services {
        let mut bases: Vec<&String> = s.granted.keys().chain(s.suggested.keys()).collect();
        bases.sort();
        bases.dedup();
        for b in bases {
            let (g, u, sug) = (
                s.granted.get(b).copied().unwrap_or("none"),
                s.used.get(b).copied().unwrap_or("none"),
                s.suggested.get(b).copied().unwrap_or("none"),
            );
            let note = if s.unused.contains(b) {
                "never used: remove"
            } else if s.write_only_read.contains(b) {
                "only read: grant read"
            } else if s.would_deny_needed.contains_key(b) {
                "needed by would_deny calls"
            } else {
                ""
            };
            out.push_str(&format!("{service:<20} {b:<40} {g:>8} {u:>8} {sug:>10}  {note}\n"));
        }
    }
    out
}
