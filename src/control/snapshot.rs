//! The compiled, immutable runtime configuration. One `Snapshot` decides a request from start
//! to end; a reload builds a new one and swaps it in whole.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::control::intercept::Intercept;
use crate::policy::Policy;
use crate::secrets::SecretCell;
use crate::upstream::Upstream;

#[derive(Debug)]
pub struct Snapshot {
    /// Short hash of the compiled configuration, carried by every access record.
    pub version: Arc<str>,
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    /// Host names the admin port answers besides IP addresses and `localhost`.
    pub admin_hosts: Vec<String>,
    /// `[admin]` and `server.admin_tls`.
    pub admin: AdminSettings,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub audit: crate::audit::Settings,
    /// Forward mode's listener and limits, if configured.
    pub forward: Option<ForwardSettings>,
    /// The forward port's TLS (`forward.tls`): the listener's certificate, HTTP/1.1 only.
    pub forward_tls: Option<Arc<rustls::ServerConfig>>,
    /// Forward mode's CA and its leaf certificates (not built by `explain` or `check --offline`).
    pub intercept: Option<Arc<Intercept>>,
    /// `telemetry.otlp_endpoint` (bound at start: the exporter is started once).
    pub otlp_endpoint: Option<String>,
    /// Every file this snapshot was compiled from: a change to any of them triggers a reload.
    pub files: Vec<std::path::PathBuf>,
    /// What requests are decided on (pure: `policy::decide` reads nothing else).
    pub policy: Policy,
    /// The upstreams' clients, in the order of `policy.upstreams`.
    pub upstreams: Vec<Upstream>,
    /// Per-service rates and concurrency, the shared budget, and where they are kept.
    pub ratelimits: crate::control::limits::RateLimits,
    /// What `keyward check` warns of in this configuration (it still serves).
    pub warnings: Vec<String>,
    /// The spend caps' ledger: one per process, handed from snapshot to snapshot on reload.
    pub spend: Arc<crate::control::spend::Ledger>,
    /// Read once per request (`SecretCell::serving`); vault cells refresh in place.
    pub secrets: Vec<Arc<SecretCell>>,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    /// Form bodies are read whole (to check `expand[]`) up to this size.
    pub max_form_bytes: usize,
    /// All form bodies being read whole at once, together.
    pub max_form_bytes_total: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_ip: usize,
    pub max_streams_per_connection: u32,
    /// What callers that have proven nothing may hold (`serve::admission`).
    pub max_unproven_connections: usize,
    pub max_unproven_per_ip: usize,
    pub refusals_per_connection: u32,
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
    /// On SIGTERM, how long new connections are still accepted while `/readyz` says 503.
    pub drain_delay: Duration,
    /// HTTP/2 keep-alive pings to callers: how often, and how long an answer may take.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// A new connection's whole ClientHello must arrive within this, before it takes a turn.
    pub client_hello: Duration,
    /// An unproven connection with no request begun for this long is closed.
    pub unproven_idle: Duration,
}

#[derive(Debug, Clone, Copy)]
pub struct ForwardSettings {
    pub listen: SocketAddr,
    /// The proxy port speaks TLS (with the listener's certificate).
    pub tls: bool,
    pub max_tunnels: usize,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
}

/// A token that may call the admin port's mutating endpoints (`[[admin.token]]`).
#[derive(Debug, Clone)]
pub struct AdminToken {
    pub id: Arc<str>,
    pub hash: crate::policy::identity::TokenHash,
    /// Unix seconds.
    pub expires: Option<i64>,
}

/// `[admin]` as it runs.
#[derive(Debug, Clone, Default)]
pub struct AdminSettings {
    pub tokens: Vec<AdminToken>,
    /// Where suspensions are kept: `[admin] state_file`, else `keyward-state.json` beside a
    /// file access log; `None` (memory only) with the log on stdout.
    pub state_file: Option<std::path::PathBuf>,
    /// The admin port speaks TLS (`server.admin_tls`).
    pub tls: bool,
}
