//! Refusals past their recording budget (`audit.refusals_per_ip`, `audit.refusals_per_second`)
//! are folded, not dropped: counted per address and reason, and written every
//! `audit.fold_interval` as one chained record per address (`kind = "refusals"`), so that the
//! log accounts for every refusal answered while a flood cannot make it grow past a bound. At
//! most [`MAX_ADDRESSES`] addresses an interval get a record of their own; the rest share one,
//! `client_ip = "others"`. A folded refusal keeps its address, reason, service and token id,
//! but not its own time: the record gives the first and the last.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{AccessRecord, Kind, Links};
use crate::policy::identity::address_key;

/// Addresses with a folded record of their own per interval.
pub const MAX_ADDRESSES: usize = 32;
/// Services and token ids named in one folded record (they come from the configuration, so
/// this is a bound on the record's size, seldom reached).
pub const MAX_NAMES: usize = 16;

/// One address's refusals folded over an interval, as the log holds them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FoldedRefusals {
    #[serde(flatten)]
    pub links: Links,
    /// The address (an IPv6 caller by its /64), or `others` for the addresses past
    /// [`MAX_ADDRESSES`].
    pub client_ip: String,
    pub count: u64,
    /// Reason code → refusals.
    pub reasons: BTreeMap<String, u64>,
    /// The services and token ids the refused requests named (at most [`MAX_NAMES`] each).
    pub services: BTreeSet<String>,
    pub token_ids: BTreeSet<String>,
    /// The first and last folded refusal's time.
    pub first: String,
    pub last: String,
    pub config_version: Arc<str>,
}

/// The refusals folded since the last flush.
#[derive(Debug, Default)]
pub struct Folds {
    by_address: foldhash::HashMap<IpAddr, FoldedRefusals>,
    others: Option<FoldedRefusals>,
    /// Refusals folded since the start: with the records written, the log's whole count.
    pub total: u64,
}

impl Folds {
    /// Fold one refusal's record in.
    pub fn add(&mut self, r: &AccessRecord) {
        self.total += 1;
        let key = r.client_ip.map(address_key);
        let fold = match key {
            Some(ip) if self.by_address.len() < MAX_ADDRESSES || self.by_address.contains_key(&ip) => {
                self.by_address.entry(ip).or_insert_with(|| fresh(address_label(ip), r))
            }
            _ => self.others.get_or_insert_with(|| fresh("others".into(), r)),
        };
        fold.count += 1;
        *fold.reasons.entry(r.reason.to_string()).or_default() += 1;
        let name = |set: &mut BTreeSet<String>, v: Option<&str>| {
            if let Some(v) = v
                && set.len() < MAX_NAMES
                && !set.contains(v)
            {
                set.insert(v.to_string());
            }
        };
        name(&mut fold.services, r.service.as_deref());
        name(&mut fold.token_ids, r.token_id.as_deref());
        // Times are fixed-width RFC 3339: they order as text.
        if r.time < fold.first {
            fold.first.clone_from(&r.time);
        }
        if r.time > fold.last {
            fold.last.clone_from(&r.time);
        }
    }

    /// Take what was folded: one record per address, `others` last.
    pub fn take(&mut self) -> Vec<FoldedRefusals> {
        let mut out: Vec<_> = self.by_address.drain().map(|(_, f)| f).collect();
        out.sort_by(|a, b| a.first.cmp(&b.first));
        out.extend(self.others.take());
        out
    }

    pub fn is_empty(&self) -> bool {
        self.by_address.is_empty() && self.others.is_none()
    }
}

fn fresh(client_ip: String, r: &AccessRecord) -> FoldedRefusals {
    FoldedRefusals {
        links: Links { kind: Kind::Refusals, ..Default::default() },
        client_ip,
        first: r.time.clone(),
        last: r.time.clone(),
        config_version: r.config_version.clone(),
        ..Default::default()
    }
}

/// `127.0.0.2`, or `2001:db8::/64` for an IPv6 address's /64.
fn address_label(key: IpAddr) -> String {
    match key {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

impl FoldedRefusals {
    /// Append this record as compact JSON (no newline): written seldom, so by serde.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("a folded record serialises");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(ip: &str, reason: &'static str, time: &str) -> AccessRecord {
        AccessRecord {
            client_ip: Some(ip.parse().unwrap()),
            reason: reason.into(),
            time: time.into(),
            service: Some("billing".into()),
            ..Default::default()
        }
    }

    #[test]
    fn refusals_fold_per_address_and_reason_and_past_the_bound_into_others() {
        let mut f = Folds::default();
        f.add(&refusal("127.0.0.2", "api_key_invalid", "2026-12-07T10:00:00.000002Z"));
        f.add(&refusal("127.0.0.2", "api_key_missing", "2026-12-07T10:00:00.000001Z"));
        f.add(&refusal("2001:db8::1", "api_key_missing", "2026-12-07T10:00:00.000003Z"));
        f.add(&refusal("2001:db8::2", "api_key_missing", "2026-12-07T10:00:00.000004Z"));
        for i in 0..MAX_ADDRESSES as u32 + 10 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            f.add(&refusal(&ip, "api_key_missing", "2026-12-07T10:00:01.000000Z"));
        }
        let out = f.take();
        assert_eq!(out.len(), MAX_ADDRESSES + 1, "the bound, then one record for the others");
        let first = &out[0];
        assert_eq!((first.client_ip.as_str(), first.count), ("127.0.0.2", 2));
        assert_eq!(
            (first.first.as_str(), first.last.as_str()),
            ("2026-12-07T10:00:00.000001Z", "2026-12-07T10:00:00.000002Z")
        );
        assert_eq!(first.reasons.get("api_key_invalid"), Some(&1));
        assert_eq!(out[1].client_ip, "2001:db8::/64");
        assert_eq!(out[1].count, 2, "an IPv6 host's /64 together");
        let others = out.last().unwrap();
        assert_eq!(others.client_ip, "others");
        assert_eq!(out.iter().map(|r| r.count).sum::<u64>(), f.total, "every refusal counted");
        assert!(f.is_empty() && f.take().is_empty());
        let mut line = Vec::new();
        others.write_json(&mut line);
        let back: FoldedRefusals = serde_json::from_slice(&line).unwrap();
        assert_eq!(&back, others);
        assert!(std::str::from_utf8(&line).unwrap().contains(r#""kind":"refusals""#));
    }
}
