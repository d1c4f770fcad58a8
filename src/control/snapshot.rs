//! The compiled, immutable runtime configuration. One `Snapshot` decides a request from start
//! to end; a reload builds a new one and swaps it in whole.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use crate::policy::catalog::{Catalog, PermId};
use crate::policy::expand::Expansions;
use crate::policy::identity::TokenHash;
use crate::policy::{Level, Mode};
use crate::secrets::SecretCell;
use crate::upstream::Upstream;

#[derive(Debug)]
pub struct Snapshot {
    /// Short hash of the compiled configuration, carried by every access record.
    pub version: Arc<str>,
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub audit: crate::audit::writer::Settings,
    /// Every file this snapshot was compiled from: a change to any of them triggers a reload.
    pub files: Vec<std::path::PathBuf>,
    pub catalog: Catalog,
    pub expansions: Expansions,
    /// For each catalog entry, the index of its upstream (`None`: not configured here).
    pub routes: Vec<Option<usize>>,
    pub upstreams: Vec<Upstream>,
    /// Read once per request (`SecretCell::serving`); vault cells refresh in place.
    pub secrets: Vec<Arc<SecretCell>>,
    pub services: Vec<Service>,
    pub tokens: HashMap<TokenHash, TokenRef>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    /// Form bodies are read whole (to check `expand[]`) up to this size.
    pub max_form_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_handshakes: usize,
    pub max_streams_per_connection: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub handshake: Duration,
    pub request_head: Duration,
    pub upstream: Duration,
    pub shutdown_grace: Duration,
    /// Longest pause between two pieces of a request body.
    pub request_body_idle: Duration,
    /// Longest a form body (read whole) may take to arrive.
    pub form_body: Duration,
    /// Longest keyward waits for a caller to take more of its answer.
    pub client_send: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct TokenRef {
    pub service: u32,
    pub token: u32,
}

#[derive(Debug)]
pub struct Service {
    pub name: Arc<str>,
    pub mode: Mode,
    pub source_ips: Vec<IpNet>,
    pub accounts: Accounts,
    /// Granted level per catalog permission, indexed by `PermId`.
    pub scope: Vec<Level>,
    /// Index into `Snapshot::secrets`.
    pub secret: usize,
    pub egress_ip: Option<IpAddr>,
    pub tokens: Vec<Token>,
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
    /// Unix seconds.
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
    pub source_ips: Option<Vec<IpNet>>,
}
