//! The parts of the report an auditor signs besides the counts: the policy versions in force,
//! the administrators' actions, the write operations, the causes of permission refusals, the
//! tokens that never expire, and what the sign-off names.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::log::Input;
use super::{Filter, Seen, TokenStatus, service_of};
use crate::policy::Decision;

/// One configuration version, and when records say it was in force.
#[derive(Debug, Default, Serialize)]
pub struct PolicyVersion {
    pub config_version: String,
    /// The first and last record (of any kind) written under it, in the window.
    pub first: String,
    pub last: String,
    pub records: u64,
    /// From a `kind = "config"` record: the configuration text's SHA-256 (the text is in the
    /// log; `keyward audit config VERSION FILES…` prints it).
    pub config_sha256: Option<String>,
    /// When the `config` record was written.
    pub recorded_at: Option<String>,
}

/// An administrator's action or a lifecycle event (`kind = "admin"` / `"lifecycle"`).
#[derive(Debug, Default, Serialize)]
pub struct AdminAction {
    pub time: String,
    pub kind: String,
    pub instance: Option<String>,
    /// The record's `action` (admin) or `event` (lifecycle).
    pub action: String,
    pub actor: Option<String>,
    pub outcome: Option<String>,
    pub service: Option<String>,
    pub token_id: Option<String>,
    pub config_version: Option<String>,
    /// The configuration sections a reload changed.
    pub changed: Vec<String>,
}

/// An allowed call that is no read (its method neither GET nor HEAD).
#[derive(Debug, Serialize)]
pub struct WriteRow {
    pub time: String,
    pub service: String,
    pub endpoint: String,
    pub account: Option<String>,
    /// Records do not hold the form, so no amount: `None` ("not recorded").
    pub amount: Option<String>,
    pub request_id: String,
    pub upstream_request_id: Option<String>,
    pub status: u16,
}

#[derive(Debug, Default, Serialize)]
pub struct Writes {
    /// Allowed write calls in the window.
    pub count: u64,
    /// With `--writes`: each of them, in time order.
    pub rows: Option<Vec<WriteRow>>,
}

/// A permission refusals lacked (`missing`), per service.
#[derive(Debug, Serialize)]
pub struct MissingRow {
    pub service: String,
    pub permission: String,
    pub deny: u64,
    pub would_deny: u64,
}

/// What the sign-off names: the inputs and each instance's head. The report's own SHA-256 is
/// computed as the report is written (`signoff`).
#[derive(Debug, Default, Clone, Serialize)]
pub struct SignOff {
    pub inputs: Vec<Input>,
    pub heads: Vec<Head>,
    /// The fields the auditor fills in, blank.
    pub fields: Vec<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Head {
    pub instance: String,
    pub seq: u64,
    pub head: String,
}

pub const FIELDS: [&str; 4] = ["Name", "Role", "Date", "Signature"];

fn text(v: &Value, key: &str) -> Option<String> {
    match &v[key] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Whether an event (by its `time` and `service`) passes the filter.
fn keeps(filter: &Filter, v: &Value) -> bool {
    if let Some(s) = &filter.service
        && v["service"].as_str().is_some_and(|e| e != s)
    {
        return false;
    }
    if filter.since.is_none() && filter.until.is_none() {
        return true;
    }
    let Some(t) = v["time"].as_str().and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()) else {
        return false;
    };
    filter.since.is_none_or(|s| t >= s) && filter.until.is_none_or(|u| t < u)
}

/// The events in the window, in time order.
pub(super) fn admin_actions(events: &[Value], filter: &Filter) -> Vec<AdminAction> {
    let mut out: Vec<AdminAction> = events
        .iter()
        .filter(|v| matches!(v["kind"].as_str(), Some("admin" | "lifecycle")) && keeps(filter, v))
        .map(|v| AdminAction {
            time: text(v, "time").unwrap_or_default(),
            kind: text(v, "kind").unwrap_or_default(),
            instance: text(v, "instance"),
            action: text(v, "action").or_else(|| text(v, "event")).unwrap_or_else(|| "(unnamed)".into()),
            actor: text(v, "actor"),
            outcome: text(v, "outcome"),
            service: text(v, "service"),
            token_id: text(v, "token_id"),
            config_version: text(v, "config_version"),
            changed: match &v["changed"] {
                Value::Array(a) => {
                    a.iter().map(|c| c.as_str().map_or_else(|| c.to_string(), String::from)).collect()
                }
                Value::Null => Vec::new(),
                other => vec![text_of(other)],
            },
        })
        .collect();
    out.sort_by(|a, b| a.time.cmp(&b.time));
    out
}

fn text_of(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), String::from)
}

/// Each configuration version seen, oldest first, with its recorded text's hash if any.
pub(super) fn policy_versions(kept: &[Seen<'_>], events: &[Value], filter: &Filter) -> Vec<PolicyVersion> {
    let mut by: BTreeMap<String, PolicyVersion> = BTreeMap::new();
    let mut seen = |version: &str, time: &str| {
        let p = by.entry(version.to_string()).or_insert_with(|| PolicyVersion {
            config_version: version.to_string(),
            first: time.to_string(),
            last: time.to_string(),
            ..Default::default()
        });
        p.records += 1;
        if time < p.first.as_str() {
            p.first = time.to_string();
        }
        if time > p.last.as_str() {
            p.last = time.to_string();
        }
    };
    for s in kept {
        seen(&s.r.config_version, &s.r.time);
    }
    let events: Vec<&Value> = events.iter().filter(|v| keeps(filter, v)).collect();
    for v in &events {
        if let (Some(version), Some(time)) = (v["config_version"].as_str(), v["time"].as_str()) {
            seen(version, time);
        }
    }
    for v in events.iter().filter(|v| v["kind"] == "config") {
        let Some(p) = v["config_version"].as_str().and_then(|c| by.get_mut(c)) else { continue };
        p.config_sha256 = text(v, "config_sha256");
        p.recorded_at = text(v, "time");
    }
    let mut out: Vec<PolicyVersion> = by.into_values().collect();
    out.sort_by(|a, b| a.first.cmp(&b.first));
    out
}

/// The allowed calls that are no reads; listed with `list`.
pub(super) fn writes(kept: &[Seen<'_>], list: bool) -> Writes {
    let mut w = Writes { count: 0, rows: list.then(Vec::new) };
    for Seen { r, .. } in kept {
        if r.decision != Decision::Allow || matches!(r.method.as_str(), "GET" | "HEAD") {
            continue;
        }
        w.count += 1;
        if let Some(rows) = &mut w.rows {
            rows.push(WriteRow {
                time: r.time.clone(),
                service: service_of(r),
                endpoint: format!("{} {}", r.method, r.template.as_deref().unwrap_or(&r.path)),
                account: r.stripe_account.clone(),
                amount: None,
                request_id: r.request_id.clone(),
                upstream_request_id: r.upstream_request_id.clone(),
                status: r.status,
            });
        }
    }
    if let Some(rows) = &mut w.rows {
        rows.sort_by(|a, b| a.time.cmp(&b.time));
    }
    w
}

/// Per service, each permission refusals lacked, counted.
pub(super) fn missing(kept: &[Seen<'_>]) -> Vec<MissingRow> {
    let mut by: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for Seen { r, .. } in kept {
        for m in &r.missing {
            let e = by.entry((service_of(r), m.clone())).or_default();
            match r.decision {
                Decision::Deny => e.0 += 1,
                Decision::WouldDeny => e.1 += 1,
                Decision::Allow => {}
            }
        }
    }
    by.into_iter()
        .map(|((service, permission), (deny, would_deny))| MissingRow {
            service,
            permission,
            deny,
            would_deny,
        })
        .collect()
}

/// The configured tokens without an `expires`.
pub(super) fn no_expiry(status: &[TokenStatus]) -> Vec<TokenStatus> {
    status.iter().filter(|t| t.expires.is_none()).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AccessRecord;

    fn rec(time: &str, version: &str, method: &str, decision: Decision, missing: &[&str]) -> AccessRecord {
        AccessRecord {
            time: time.into(),
            config_version: version.into(),
            service: Some("billing".into()),
            method: method.into(),
            path: "/v1/refunds".into(),
            template: Some("/v1/refunds".into()),
            request_id: format!("kwreq_{time}"),
            stripe_account: Some("acct_1".into()),
            decision,
            missing: missing.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn versions_admin_actions_writes_and_causes_from_hand_made_records() {
        let records = [
            rec("2026-01-01T00:00:00.000000Z", "v1", "GET", Decision::Allow, &[]),
            rec("2026-01-01T01:00:00.000000Z", "v1", "POST", Decision::Allow, &[]),
            rec("2026-01-01T02:00:00.000000Z", "v2", "POST", Decision::Deny, &["invoice_read"]),
            rec(
                "2026-01-01T03:00:00.000000Z",
                "v2",
                "GET",
                Decision::WouldDeny,
                &["invoice_read", "customer_read"],
            ),
        ];
        let kept: Vec<Seen<'_>> = records
            .iter()
            .map(|r| Seen { r, at: OffsetDateTime::parse(&r.time, &Rfc3339).unwrap() })
            .collect();
        let events: Vec<Value> = [
            r#"{"kind":"lifecycle","time":"2026-01-01T00:00:00.000000Z","instance":"a","event":"start","config_version":"v1"}"#,
            r#"{"kind":"admin","time":"2026-01-01T01:30:00.000000Z","instance":"a","action":"reload","actor":"admin:ops","outcome":"accepted","config_version":"v2","changed":["service.billing"]}"#,
            r#"{"kind":"config","time":"2026-01-01T01:30:00.000000Z","config_version":"v2","config_sha256":"ab12"}"#,
            r#"{"kind":"admin","time":"2026-01-01T01:10:00.000000Z","action":"suspend","actor":"10.0.0.9","outcome":"ok","service":"billing","token_id":"b1"}"#,
        ]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        let filter = Filter::default();
        let v = policy_versions(&kept, &events, &filter);
        assert_eq!(v.iter().map(|p| p.config_version.as_str()).collect::<Vec<_>>(), ["v1", "v2"]);
        assert_eq!(
            (v[0].first.as_str(), v[0].last.as_str()),
            ("2026-01-01T00:00:00.000000Z", "2026-01-01T01:00:00.000000Z")
        );
        assert_eq!(
            (v[1].config_sha256.as_deref(), v[1].first.as_str()),
            (Some("ab12"), "2026-01-01T01:30:00.000000Z")
        );
        let a = admin_actions(&events, &filter);
        let seen: Vec<&str> = a.iter().map(|a| a.action.as_str()).collect();
        assert_eq!(seen, ["start", "suspend", "reload"], "time order; a lifecycle record's event");
        assert_eq!(
            (a[2].actor.as_deref(), a[2].changed.clone()),
            (Some("admin:ops"), vec!["service.billing".to_string()])
        );
        let w = writes(&kept, true);
        let rows = w.rows.unwrap();
        assert_eq!((w.count, rows.len(), rows[0].endpoint.as_str()), (1, 1, "POST /v1/refunds"));
        assert_eq!((rows[0].account.as_deref(), rows[0].amount.as_deref()), (Some("acct_1"), None));
        assert!(writes(&kept, false).rows.is_none());
        let m = missing(&kept);
        let m: Vec<(&str, u64, u64)> =
            m.iter().map(|m| (m.permission.as_str(), m.deny, m.would_deny)).collect();
        assert_eq!(m, [("customer_read", 0, 1), ("invoice_read", 1, 1)]);
    }
}
