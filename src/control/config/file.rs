//! The configuration file as users write it: plain serde types, unknown keys rejected.
//! Compiled into a runtime `Snapshot` by `compile`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::policy::{Level, Mode};
use crate::secrets::vault::VaultFile;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: ServerFile,
    /// Forward mode: the `HTTPS_PROXY` listener.
    pub forward: Option<ForwardFile>,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    #[serde(default)]
    pub catalog: CatalogFile,
    #[serde(default)]
    pub upstream: BTreeMap<String, UpstreamFile>,
    #[serde(default)]
    pub secret: BTreeMap<String, SecretFile>,
    #[serde(default)]
    pub audit: AuditFile,
    #[serde(default)]
    pub ratelimit: RatelimitFile,
    #[serde(default)]
    pub telemetry: TelemetryFile,
    #[serde(default)]
    pub service: Vec<ServiceFile>,
    #[serde(default)]
    pub admin: AdminFile,
}

/// `[admin]`: who may change keyward through its admin port, and where suspensions are kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    /// Tokens that may call the admin port's mutating endpoints (`Authorization: Bearer`).
    #[serde(default)]
    pub token: Vec<AdminTokenFile>,
    /// Where suspended tokens are kept across restarts.
    pub state_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTokenFile {
    pub id: Spanned<String>,
    pub sha256: Spanned<String>,
    pub expires: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub admin_listen: Option<SocketAddr>,
    /// Make a self-signed development CA and certificate at the paths above if missing.
    #[serde(default)]
    pub dev_certs: bool,
    /// Serve the admin port over TLS (`tls_cert`), for admins and scrapers on other hosts.
    #[serde(default)]
    pub admin_tls: bool,
    /// Host names the admin port answers besides IP addresses and `localhost`.
    #[serde(default)]
    pub admin_hosts: Vec<String>,
    /// CA bundle that callers' client certificates are verified against (mTLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: whether every caller must present a certificate.
    #[serde(default)]
    pub client_cert: ClientCert,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientCert {
    /// Asked for; callers without one still connect (services without `client_ids` work).
    #[default]
    Optional,
    /// Every caller must present one that verifies.
    Required,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardFile {
    /// The plain-TCP (or, with `tls`, TLS) HTTP proxy port.
    pub listen: SocketAddr,
    /// The interception CA that services trust.
    pub ca_cert: PathBuf,
    /// Its key as a file (refused if group or world can read it) ...
    pub ca_key: Option<PathBuf>,
    /// ... or as a `[secret.NAME]`, so that replicas share one CA.
    pub ca_key_secret: Option<Spanned<String>>,
    #[serde(default = "leaf_lifetime", with = "humantime_serde")]
    pub leaf_lifetime: Duration,
    /// Serve the proxy port over TLS (with `server.tls_cert`), for callers that send a token
    /// in `Proxy-Authorization`.
    #[serde(default)]
    pub tls: bool,
    /// Tunnels open at once; past it a `CONNECT` is answered 503.
    #[serde(default = "max_tunnels")]
    pub max_tunnels: usize,
    /// How long the `CONNECT` head may take to arrive.
    #[serde(default = "head_timeout", with = "humantime_serde")]
    pub head_timeout: Duration,
    /// A tunnel in which nothing moved this long is closed.
    #[serde(default = "idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
}

fn leaf_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn max_tunnels() -> usize {
    4096
}
fn head_timeout() -> Duration {
    Duration::from_secs(10)
}
fn idle_timeout() -> Duration {
    // Longer than `timeouts.upstream` (75 s): a call waiting for its answer moves no bytes.
    Duration::from_secs(300)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    pub max_body_bytes: u64,
    pub max_header_bytes: usize,
    pub max_form_bytes: usize,
    pub max_form_bytes_total: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_handshakes: usize,
    pub max_handshakes_per_ip: usize,
    pub max_streams_per_connection: u32,
    /// Connections (tunnels too) that have not yet carried a request passing the token checks.
    pub max_unproven_connections: usize,
    pub max_unproven_per_ip: usize,
    /// Refusals an unproven connection may get before it is closed.
    pub refusals_per_connection: u32,
}

impl Default for LimitsFile {
    fn default() -> Self {
        // Stripe's file uploads go up to 16 MB (plus multipart framing).
        LimitsFile {
            max_body_bytes: 20 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_form_bytes: 1024 * 1024,
            max_form_bytes_total: 64 * 1024 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            max_handshakes: 256,
            max_handshakes_per_ip: 16,
            max_streams_per_connection: 100,
            max_unproven_connections: 1024,
            max_unproven_per_ip: 64,
            refusals_per_connection: 4,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsFile {
    #[serde(with = "humantime_serde")]
    pub handshake: Duration,
    #[serde(with = "humantime_serde")]
    pub request_head: Duration,
    #[serde(with = "humantime_serde")]
    pub upstream_connect: Duration,
    #[serde(with = "humantime_serde")]
    pub upstream: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(with = "humantime_serde")]
    pub request_body_idle: Duration,
    #[serde(with = "humantime_serde")]
    pub form_body: Duration,
    #[serde(with = "humantime_serde")]
    pub client_send: Duration,
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub ping_timeout: Duration,
    /// How long a new connection may take to send its whole TLS ClientHello.
    #[serde(with = "humantime_serde")]
    pub client_hello: Duration,
    /// An unproven connection in which no request began for this long is closed.
    #[serde(with = "humantime_serde")]
    pub unproven_idle: Duration,
}

impl Default for TimeoutsFile {
    fn default() -> Self {
        TimeoutsFile {
            handshake: Duration::from_secs(10),
            request_head: Duration::from_secs(30),
            upstream_connect: Duration::from_secs(5),
            // Stripe's SDKs give up after 80 s; answer before they do.
            upstream: Duration::from_secs(75),
            shutdown_grace: Duration::from_secs(30),
            request_body_idle: Duration::from_secs(10),
            form_body: Duration::from_secs(30),
            client_send: Duration::from_secs(30),
            // Long enough for a load balancer's readiness probe (every few seconds) to notice.
            drain_delay: Duration::from_secs(5),
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(10),
            client_hello: Duration::from_secs(2),
            unproven_idle: Duration::from_secs(10),
        }
    }
}

/// `[telemetry]`: where spans go (OTLP/HTTP).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    /// Base URL of an OTLP/HTTP receiver, e.g. `http://otel-collector:4318`; spans go to
    /// `/v1/traces` under it. Default: the standard `OTEL_EXPORTER_OTLP_ENDPOINT` variables.
    pub otlp_endpoint: Option<Spanned<String>>,
}

/// `[ratelimit]`: the budget every service shares, and where replicas keep their limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatelimitFile {
    /// Calls per second or minute toward the payments API, all services together.
    pub upstream_rate: Option<Spanned<String>>,
    /// Calls that may go at once after an idle time (default: the rate's count).
    pub upstream_burst: Option<u32>,
    /// `redis://host:port/db`, or `rediss://` over TLS: keep the rates in Redis, shared by
    /// every replica.
    pub redis: Option<Spanned<String>>,
    /// A `[secret.NAME]` holding Redis's password (never in the URL).
    pub password_secret: Option<Spanned<String>>,
    /// The ACL user keyward logs in as (or `redis://user@host`, not both).
    pub username: Option<String>,
    /// `rediss://`: the CA that signed Redis's certificate (PEM); default: the system's roots.
    pub ca: Option<PathBuf>,
    /// `rediss://`: a client certificate and its key (PEM), for a Redis that asks for one.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Prefix of keyward's keys in Redis.
    pub key_prefix: Option<String>,
    /// Longest a request waits for Redis before `on_redis_error` applies.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub on_redis_error: Option<crate::control::limits::OnRedisError>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    /// A catalog file of your own; default: the Stripe catalog built into keyward.
    pub path: Option<PathBuf>,
    /// An expansion table of your own; default: the Stripe table built into keyward.
    pub expansions: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub url: Spanned<String>,
    pub ca: Option<PathBuf>,
    pub egress_ip: Option<IpAddr>,
    /// Dial this address instead of resolving the URL's host (TLS still verifies the host).
    pub connect_to: Option<SocketAddr>,
    /// Offer HTTP/2 (the default): a few connections shared by every service's calls, each
    /// service holding at most `streams_per_service` streams (see docs/configuration.md).
    #[serde(default = "yes")]
    pub http2: bool,
    pub streams_per_service: Option<u32>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretFile {
    File { path: PathBuf, key: String },
    Env { var: String },
    Vault(Box<VaultFile>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditFile {
    /// A file to append JSON lines to, or "-" for stdout.
    pub path: String,
    /// Rotate the file when it would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files to keep.
    pub keep: usize,
    /// Records queued for the writer before new requests wait.
    pub queue: usize,
    pub on_failure: OnFailure,
    /// Refusal records per second from one address, and from all together; past either,
    /// refusals are folded into one record per address every `fold_interval`.
    pub refusals_per_ip: u32,
    pub refusals_per_second: u32,
    #[serde(with = "humantime_serde")]
    pub fold_interval: Duration,
    /// A `[secret.NAME]` holding the Ed25519 key checkpoints are signed with.
    pub signing_key_secret: Option<Spanned<String>>,
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Where checkpoints are published too: a file out of the log writer's reach, or "stderr".
    pub checkpoints: Option<String>,
}

impl Default for AuditFile {
    fn default() -> Self {
        AuditFile {
            path: "-".into(),
            max_bytes: 100 * 1024 * 1024,
            keep: 10,
            queue: 8192,
            on_failure: OnFailure::FailClosed,
            refusals_per_ip: 50,
            refusals_per_second: 100,
            fold_interval: Duration::from_secs(1),
            signing_key_secret: None,
            checkpoint_interval: Duration::from_secs(10),
            checkpoints: None,
        }
    }
}

/// What to do while access records cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Refuse new requests with 503 until records can be written again.
    FailClosed,
    /// Keep serving; records wait in memory (bounded) until the log is writable.
    KeepServing,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub name: Spanned<String>,
    pub secret: Spanned<String>,
    pub source_ips: Vec<IpNet>,
    #[serde(default)]
    pub mode: Mode,
    pub egress_ip: Option<IpAddr>,
    /// `false`: the service's secret must be a test-mode key (`sk_test_`, `rk_test_`); `true`:
    /// a live-mode one. Checked when the configuration compiles and on every call.
    pub livemode: Option<bool>,
    #[serde(default)]
    pub accounts: Vec<String>,
    #[serde(default)]
    pub token: Vec<TokenFile>,
    #[serde(default)]
    pub scope: BTreeMap<Spanned<String>, Level>,
    /// Identities (a URI SAN such as a SPIFFE ID, or `dns:NAME` for a DNS SAN) a caller's
    /// verified client certificate must carry for this service's tokens to be accepted.
    #[serde(default)]
    pub client_ids: Vec<Spanned<String>>,
    /// Calls per second or minute (`"20/s"`, `"600/m"`), past which calls get 429.
    pub rate: Option<Spanned<String>>,
    /// Calls that may go at once after an idle time (default: the rate's count).
    pub burst: Option<u32>,
    /// Calls in flight at once, past which calls get 429.
    pub concurrency: Option<u32>,
    /// Its place in the shared budget (`[ratelimit] upstream_rate`).
    pub priority: Option<Spanned<crate::control::limits::Priority>>,
    /// Suspend a token presented from outside the allowlist this often.
    pub quarantine: Option<Spanned<QuarantineFile>>,
    /// Spend caps: how much money of each kind the service may move.
    #[serde(default)]
    pub spend: Vec<Spanned<SpendFile>>,
}

/// `[[service.spend]]`: a cap on the money of `kinds` moved in `currency`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendFile {
    pub kinds: Vec<Spanned<String>>,
    pub currency: Option<Spanned<String>>,
    /// Minor units.
    pub per_call: Option<u64>,
    /// Minor units, over any rolling 24 hours.
    pub per_day: Option<u64>,
    #[serde(default)]
    pub per_account: bool,
}

/// `quarantine = { ip_refusals = 20, within = "5m" }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineFile {
    pub ip_refusals: u32,
    #[serde(with = "humantime_serde")]
    pub within: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    pub id: Spanned<String>,
    pub sha256: Spanned<String>,
    pub expires: Option<Spanned<String>>,
    pub not_before: Option<Spanned<String>>,
    /// Refused from this time on (`api_key_revoked`).
    pub revoked: Option<Spanned<String>>,
    pub source_ips: Option<Vec<IpNet>>,
}
