//! `keyward audit report`: what the access log says, summarised for auditors: whether the
//! log is intact, decisions, time, who called from where with what, the configured tokens'
//! state, excess grants and suspicious activity. Pure: the CLI reads files, verifies the
//! chains and hands in the outcome, the clock and the configuration.

mod cells;
mod counts;
mod evidence;
mod html;
mod html_evidence;
mod log;
mod money;
mod signoff;
mod suspicious;
mod text;
mod text_evidence;

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use evidence::{AdminAction, MissingRow, PolicyVersion, SignOff, WriteRow, Writes};
pub use log::{ChainRow, Gap, Input, Integrity, Log, Signed, SignedInstance, sha256_hex};
pub use money::{Money, MovedRow, RefusedRow};
pub use signoff::{html, json, table};
pub use suspicious::Suspicious;

use super::AccessRecord;
use super::fold::FoldedRefusals;
use super::scope::{self, ScopeReport};
use crate::policy::{Decision, Policy};

#[derive(Debug, Default, Serialize)]
pub struct Filter {
    #[serde(serialize_with = "opt_time")]
    pub since: Option<OffsetDateTime>,
    #[serde(serialize_with = "opt_time")]
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

/// What the report is made from, besides the records.
pub struct Context<'a> {
    /// The files, as named on the command line, with their sizes and hashes.
    pub inputs: Vec<Input>,
    pub filter: Filter,
    /// The chains' verification (`Integrity::of`), on the whole files (the filter does not apply).
    pub integrity: Integrity,
    pub now: OffsetDateTime,
    /// With `--config`: the configured tokens' state and the excess grants.
    pub policy: Option<&'a Policy>,
    /// The records of refusals folded past the recording budgets (`kind = "refusals"`).
    pub folded: &'a [FoldedRefusals],
    /// The `admin`, `lifecycle` and `config` records (`Log::events`).
    pub events: &'a [serde_json::Value],
    /// `--writes`: list every allowed write call.
    pub list_writes: bool,
    /// `--unverified`: the log does not verify and the report says so on every page.
    pub unverified: bool,
}

/// Refusals folded past the recording budgets: the log still counts each.
#[derive(Debug, Default, Serialize)]
pub struct Folded {
    pub records: u64,
    pub refusals: u64,
    pub addresses: u64,
    pub reasons: BTreeMap<String, u64>,
}

impl Folded {
    fn of<'a>(folded: impl IntoIterator<Item = &'a FoldedRefusals>) -> Folded {
        let mut out = Folded::default();
        let mut addresses = std::collections::BTreeSet::new();
        for f in folded {
            out.records += 1;
            out.refusals += f.count;
            addresses.insert(f.client_ip.as_str());
            for (reason, n) in &f.reasons {
                *out.reasons.entry(reason.clone()).or_default() += n;
            }
        }
        out.addresses = addresses.len() as u64;
        out
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Printed with `--unverified` on a log that does not verify: the banner every page carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unverified: Option<String>,
    pub generated_at: String,
    pub inputs: Vec<String>,
    pub filters: Filter,
    pub integrity: Integrity,
    pub records: u64,
    pub first: Option<String>,
    pub last: Option<String>,
    /// Records per instance (replica), merged into the rest of the report.
    pub instances: BTreeMap<String, u64>,
    /// service → permission → decision → count
    pub decisions: Vec<DecisionRow>,
    pub timeline: Timeline,
    pub top_denied: Vec<EndpointRow>,
    pub would_deny: Vec<EndpointRow>,
    pub tokens: Vec<TokenRow>,
    pub upstreams: Vec<UpstreamRow>,
    pub sources: Vec<SourceRow>,
    pub connect_accounts: Vec<AccountRow>,
    pub secret_versions: Vec<SecretRow>,
    /// Services whose calls went out with a live key.
    pub live_keys: Vec<LiveRow>,
    /// With `--config`: every configured token, flagged unused / expired / expiring / revoked.
    pub token_status: Option<Vec<TokenStatus>>,
    /// With `--config`: `keyward audit scope`'s report for the same records.
    pub scope: Option<ScopeReport>,
    pub suspicious: Suspicious,
    pub folded: Folded,
    /// Each configuration version in force in the window, oldest first.
    pub policy_versions: Vec<PolicyVersion>,
    /// Administrators' actions and lifecycle events, in time order.
    pub admin_actions: Vec<AdminAction>,
    /// Allowed calls that are no reads (listed with `--writes`).
    pub writes: Writes,
    /// Per service, the permissions refused calls lacked (`missing`), counted.
    pub missing: Vec<MissingRow>,
    /// With `--config`: configured tokens with no `expires`.
    pub no_expiry: Option<Vec<TokenStatus>>,
    /// Money moved per service, kind, currency and day, and the refused spends.
    pub money: Money,
    /// What the sign-off names; written last, after the report's own hash.
    #[serde(skip)]
    pub sign_off: SignOff,
}

#[derive(Debug, Serialize)]
pub struct DecisionRow {
    pub service: String,
    pub permission: String,
    pub allow: u64,
    pub deny: u64,
    pub would_deny: u64,
}

/// Counts per hour (a window of up to two days) or per day.
#[derive(Debug, Default, Serialize)]
pub struct Timeline {
    pub bucket: &'static str,
    pub rows: Vec<Bucket>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    pub start: String,
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

#[derive(Debug, Serialize)]
pub struct SourceRow {
    pub service: String,
    pub address: IpAddr,
    pub requests: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// First seen in the report's last day, by a service seen from elsewhere before it.
    pub new: bool,
}

#[derive(Debug, Serialize)]
pub struct AccountRow {
    pub service: String,
    pub account: String,
    pub requests: u64,
    pub denied: u64,
}

#[derive(Debug, Serialize)]
pub struct SecretRow {
    pub service: String,
    /// The vault's version (`null`: a secret from the environment or a file).
    pub version: Option<u64>,
    pub requests: u64,
    pub first_seen: String,
    pub last_seen: String,
}

#[derive(Debug, Serialize)]
pub struct LiveRow {
    pub service: String,
    pub requests: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenStatus {
    pub service: String,
    pub token_id: String,
    pub requests: u64,
    pub expires: Option<String>,
    /// `unused` (no call in the window), `expired`, `expiring` (within 7 days), `revoked`,
    /// `no_expiry` (no `expires`: good until revoked).
    pub flags: Vec<&'static str>,
}

const TOP: usize = 10;
/// A token expiring this soon is flagged (as `keyward status` does).
const EXPIRING: i64 = 7 * 86_400;
/// "New" and "unusual" are judged for the last day against everything before it.
pub const RECENT: time::Duration = time::Duration::DAY;

/// A record that passed the filter, with its time read.
pub(super) struct Seen<'a> {
    pub r: &'a AccessRecord,
    pub at: OffsetDateTime,
}

/// Summarise the records that pass the context's filter.
pub fn build<'a>(records: impl IntoIterator<Item = &'a AccessRecord>, cx: Context<'_>) -> Report {
    let kept: Vec<Seen<'a>> = records
        .into_iter()
        .filter(|r| cx.filter.keeps(r))
        .filter_map(|r| Some(Seen { r, at: OffsetDateTime::parse(&r.time, &Rfc3339).ok()? }))
        .collect();
    let mut rep = Report {
        unverified: if cx.unverified { cx.integrity.banner() } else { None },
        generated_at: super::timestamp(cx.now),
        inputs: cx.inputs.iter().map(|i| i.file.clone()).collect(),
        ..Report::default()
    };
    rep.sign_off = SignOff {
        heads: cx
            .integrity
            .chains
            .iter()
            .map(|c| evidence::Head { instance: c.instance.clone(), seq: c.last_seq, head: c.head.clone() })
            .collect(),
        inputs: cx.inputs,
        fields: evidence::FIELDS.to_vec(),
    };
    rep.integrity = cx.integrity;
    counts::counts(&kept, &mut rep);
    rep.timeline = counts::timeline(&kept);
    rep.sources = counts::sources(&kept);
    rep.suspicious = suspicious::find(&kept);
    if let Some(policy) = cx.policy {
        let status = counts::token_status(policy, &rep.tokens, cx.now.unix_timestamp());
        rep.no_expiry = Some(evidence::no_expiry(&status));
        rep.token_status = Some(status);
        rep.scope = Some(scope::scope(policy, kept.iter().map(|s| s.r)));
    }
    let in_window = |f: &&FoldedRefusals| {
        let at = OffsetDateTime::parse(&f.first, &Rfc3339).ok();
        at.is_some_and(|t| cx.filter.since.is_none_or(|s| t >= s) && cx.filter.until.is_none_or(|u| t < u))
    };
    // A folded record names services, not one: with a service filter, those naming it.
    let named = |f: &&FoldedRefusals| cx.filter.service.as_ref().is_none_or(|s| f.services.contains(s));
    rep.folded = Folded::of(cx.folded.iter().filter(in_window).filter(named));
    rep.policy_versions = evidence::policy_versions(&kept, cx.events, &cx.filter);
    rep.admin_actions = evidence::admin_actions(cx.events, &cx.filter);
    rep.writes = evidence::writes(&kept, cx.list_writes);
    rep.missing = evidence::missing(&kept);
    rep.money = money::money(&kept, cx.policy.map(|p| &p.catalog));
    rep.filters = cx.filter;
    rep
}

/// How a record names its service in the report.
pub(super) fn service_of(r: &AccessRecord) -> String {
    r.service.as_deref().unwrap_or("(unidentified)").to_string()
}

fn opt_time<S: serde::Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&super::timestamp(*t)),
        None => s.serialize_none(),
    }
}
