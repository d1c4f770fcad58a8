//! What the policy decides on: the compiled services and their tokens, the catalog and the
//! expansion table, and which upstream each catalog entry goes to. Built by the control plane
//! from the configuration; held by the snapshot.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Deserialize;

use crate::policy::catalog::{Catalog, MoneyKind, PermId};
use crate::policy::expand::Expansions;
use crate::policy::identity::TokenHash;

/// The payments API's main host's upstream name (`[upstream.api]`), as the catalog names it.
pub const MAIN_UPSTREAM: &str = "api";

#[derive(Debug, Default)]
pub struct Policy {
    pub catalog: Catalog,
    pub expansions: Expansions,
    /// For each catalog entry, the index of its upstream in `upstreams` (`None`: not configured).
    pub routes: Vec<Option<usize>>,
    /// The configured upstreams' names, in the snapshot's order.
    pub upstreams: Vec<Arc<str>>,
    /// The index of [`MAIN_UPSTREAM`] among them, if configured: where report mode sends calls
    /// to endpoints the catalog lacks, so that their records show them.
    pub main_upstream: Option<usize>,
    /// For each upstream, the `host:port` a forward-mode `CONNECT` names it by: its URL's, when
    /// that is a DNS name (never an address or `localhost`).
    pub hosts: Vec<Option<String>>,
    pub services: Vec<Service>,
    pub tokens: foldhash::HashMap<TokenHash, TokenRef>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Report,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    None,
    Read,
    Write,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRef {
    pub service: u32,
    pub token: u32,
}

#[derive(Debug)]
pub struct Service {
    /// Position in `Policy::services` (per-service state elsewhere is indexed by it).
    pub index: usize,
    pub name: Arc<str>,
    pub mode: Mode,
    pub source_ips: Vec<IpNet>,
    pub accounts: Accounts,
    /// Granted level per catalog permission, indexed by `PermId`.
    pub scope: Vec<Level>,
    /// Index into `Snapshot::secrets`.
    pub secret: usize,
    pub egress_ip: Option<IpAddr>,
    /// The key mode its secret must have (`livemode`), if set.
    pub livemode: Option<bool>,
    pub tokens: Vec<Token>,
    /// Identities a caller's verified client certificate must carry (one of them) for this
    /// service's tokens to be accepted; empty: no certificate needed.
    pub client_ids: Vec<String>,
    /// Suspend a token presented from outside the allowlist this often (`quarantine`).
    pub quarantine: Option<Quarantine>,
    /// Its spend caps (`[[service.spend]]`), one per kind and currency.
    pub spend: Vec<Cap>,
}

/// One `[[service.spend]]` cap, for one kind (a table naming several kinds compiles to one
/// cap each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cap {
    pub kind: MoneyKind,
    /// Lowercase ISO 4217 (`usd`).
    pub currency: Arc<str>,
    /// The most one call may move, in minor units.
    pub per_call: Option<u64>,
    /// The most all calls may move over any rolling 24 hours, in minor units.
    pub per_day: Option<u64>,
    /// Each Connect account its own `per_day`.
    pub per_account: bool,
}

/// `refusals` refusals for the source address within `within` suspend the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quarantine {
    pub refusals: u32,
    pub within: std::time::Duration,
}

impl Service {
    pub fn level(&self, perm: PermId) -> Level {
        self.scope[perm.0 as usize]
    }
}

#[derive(Debug)]
pub enum Accounts {
    /// `[]`: calls on behalf of connected accounts are refused.
    PlatformOnly,
    /// `["*"]`
    Any,
    Only(Vec<String>),
}

impl Accounts {
    pub fn allows(&self, account: &str) -> bool {
        match self {
            Accounts::PlatformOnly => false,
            Accounts::Any => true,
            Accounts::Only(list) => list.iter().any(|a| a == account),
        }
    }
}

#[derive(Debug)]
pub struct Token {
    pub id: Arc<str>,
    /// The SHA-256 of the token: what a suspension is keyed by.
    pub hash: crate::policy::identity::TokenHash,
    /// Unix seconds.
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
    /// Revoked from this time on (Unix seconds): a leaked token, refused without a restart.
    pub revoked: Option<i64>,
    pub source_ips: Option<Vec<IpNet>>,
}
