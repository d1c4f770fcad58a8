//! The access log: one JSON line per request, chained so that any edit, drop, reorder or
//! insert is found. Records have no field that could hold a token or a secret.

pub mod checkpoint;
pub mod event;
mod file;
pub mod fold;
mod line;
mod publish;
pub mod queue;
pub mod report;
pub mod rotation;
pub mod scope;
mod settings;
pub mod signed;
pub mod verify;
mod writer;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::Decision;
use sha2::{Digest, Sha256};

pub use line::timestamp;
pub use queue::{AuditSink, Slot};
pub use settings::Settings;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct AccessRecord {
    /// Position in the chain: one more than the record before it, across rotated files.
    pub seq: u64,
    /// SHA-256 (hex) of the previous record's line as written.
    pub prev: String,
    pub time: String,
    /// The keyward process (replica) that wrote it: each keeps its own chain.
    #[serde(default)]
    pub instance: Option<Arc<str>>,
    /// `request` (logs written before records had a kind are all requests).
    #[serde(default)]
    pub kind: Kind,
    pub request_id: String,
    pub service: Option<Arc<str>>,
    pub token_id: Option<Arc<str>>,
    pub client_ip: Option<IpAddr>,
    /// How the request came: to the listener (`reverse`) or through a tunnel (`forward`).
    #[serde(default)]
    pub mode: ProxyMode,
    /// Forward mode: the `CONNECT` target (user info, if any, cut off).
    #[serde(default)]
    pub connect_host: Option<String>,
    /// The caller's verified client certificate's first identity (URI SAN, else `dns:` SAN).
    #[serde(default)]
    pub client_id: Option<String>,
    pub method: String,
    /// Path only: a query string can carry personal data.
    pub path: String,
    pub template: Option<Arc<str>>,
    pub permission: Option<Arc<str>>,
    pub access: Option<Cow<'static, str>>,
    pub decision: Decision,
    pub reason: Cow<'static, str>,
    /// A `more_permissions_required` refusal: every permission the call lacked, the
    /// endpoint's and each `expand[]` expansion's (`permission` stays the endpoint's own, which
    /// may have been granted). Written only when there is one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
    /// The request carried a keyward token outside `Authorization` (`token_in_wrong_place`):
    /// the token named is to be rotated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub token_exposed: bool,
    pub status: u16,
    pub upstream: Option<Arc<str>>,
    pub upstream_request_id: Option<String>,
    pub stripe_account: Option<String>,
    pub egress_ip: Option<IpAddr>,
    pub duration_ms: f64,
    pub upstream_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub config_version: Arc<str>,
    pub secret_version: Option<u64>,
    /// Whether the secret sent was a live key (`sk_live_`, `rk_live_`), a test key, or neither.
    #[serde(default)]
    pub livemode: Option<bool>,
    /// A call that moves money (the catalog's `money=` column): its amount in minor units and
    /// its currency, when keyward knows them (from the form, or read first for a capped call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// A call a spend cap counted: what became of its reservation. `committed` (2xx),
    /// `released` (4xx), `held` (counted, the outcome unknown: 5xx, 502/504, timeout, reset),
    /// `replayed` (its `Idempotency-Key` was counted already), `refused` (over the cap, or
    /// not priced), `priced` (keyward's own GET that priced a call).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<Cow<'static, str>>,
}

/// How every record that is not a call's own begins: its place in the chain, when it was
/// written, by which instance, and what it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Links {
    pub seq: u64,
    pub prev: String,
    pub time: String,
    #[serde(default)]
    pub instance: Option<Arc<str>>,
    pub kind: Kind,
}

impl Links {
    /// Links for a record of `kind`, written now.
    pub fn now(kind: Kind) -> Links {
        Links { time: timestamp(time::OffsetDateTime::now_utc()), kind, ..Default::default() }
    }
}

/// What a record in the log is: one call's (`request`), refusals folded together
/// (`refusals`, see `fold`), a file rotated away (`rotation`), a signed head (`checkpoint`),
/// or keyward's own: its start and stop (`lifecycle`), an administrative action (`admin`), the
/// configuration text (`config`), see `event`. Every record says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    #[default]
    Request,
    Refusals,
    Rotation,
    Checkpoint,
    Lifecycle,
    Admin,
    Config,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Refusals => "refusals",
            Kind::Rotation => "rotation",
            Kind::Checkpoint => "checkpoint",
            Kind::Lifecycle => "lifecycle",
            Kind::Admin => "admin",
            Kind::Config => "config",
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyMode {
    #[default]
    Reverse,
    Forward,
}

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyMode::Reverse => "reverse",
            ProxyMode::Forward => "forward",
        }
    }
}

/// The most a record keeps of a field the caller chose: a flood of long paths must not make
/// each record long. Longer values are cut (on a character boundary) and end in `…`, which no
/// canonical path or header value holds, so a cut value cannot pass for a real one.
pub const MAX_PATH: usize = 512;
pub const MAX_METHOD: usize = 32;
pub const MAX_ACCOUNT: usize = 128;

/// `s`, cut to `max` bytes (see [`MAX_PATH`]).
pub fn capped(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let cut = s.floor_char_boundary(max - '…'.len_utf8());
    format!("{}…", &s[..cut])
}

/// The `prev` of the very first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The chain hash of a line as written (without its newline).
pub fn line_hash(line: &[u8]) -> String {
    let mut hash = String::with_capacity(64);
    write_line_hash(line, &mut hash);
    hash
}

/// [`line_hash`] into `out`, replacing what it held: the writer reuses one buffer.
pub fn write_line_hash(line: &[u8], out: &mut String) {
    let mut hex = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(line), &mut hex).expect("64 hex digits for 32 bytes");
    out.clear();
    out.push_str(std::str::from_utf8(&hex).expect("hex is ASCII"));
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_caller_chosen_fields_are_cut_and_marked() {
        assert_eq!(super::capped("/v1/charges", 512), "/v1/charges");
        let long = format!("/v1/{}", "é".repeat(400));
        let cut = super::capped(&long, super::MAX_PATH);
        assert!(cut.len() <= super::MAX_PATH && cut.ends_with('…'), "{}", cut.len());
        assert!(long.starts_with(cut.trim_end_matches('…')));
    }
}
