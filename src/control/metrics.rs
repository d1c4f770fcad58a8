//! Prometheus metrics (prometheus-client, OpenMetrics text). Live metrics are handles the
//! request path updates without a global lock (a family takes a shared read lock once its
//! label set exists); values that live elsewhere (the access log's counters, secrets, tokens,
//! the configuration version) are read at scrape time into a registry made for that scrape.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, text};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::audit::AccessRecord;
use crate::control::snapshot::Snapshot;
use crate::policy::Decision;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// keyward's own time is in tenths of a millisecond when all is well.
const ADDED_BUCKETS: [f64; 12] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];
const BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A service, permission or upstream name as a label: shared, so counting allocates nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Name(pub Option<Arc<str>>);

impl EncodeLabelValue for Name {
    fn encode(&self, w: &mut LabelValueEncoder) -> std::fmt::Result {
        w.write_str(self.0.as_deref().unwrap_or(""))
    }
}

impl EncodeLabelValue for Decision {
    fn encode(&self, w: &mut LabelValueEncoder) -> std::fmt::Result {
        w.write_str(self.as_str())
    }
}

/// A reason code (the static codes of the request path), as a label.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Code(pub Cow<'static, str>);

impl EncodeLabelValue for Code {
    fn encode(&self, w: &mut LabelValueEncoder) -> std::fmt::Result {
        w.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    service: Name,
    permission: Name,
    /// `reverse` or `forward`: how the call came.
    mode: &'static str,
    decision: Decision,
    status: &'static str,
    reason: Code,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: Name,
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SpendLabels {
    service: Name,
    kind: &'static str,
    currency: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SpendRefusedLabels {
    service: Name,
    kind: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Metrics the request path and the control plane update as things happen.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Histogram,
    upstream_duration: Histogram,
    /// keyward's own share of a forwarded call's time: its duration less the upstream's.
    added: Histogram,
    upstream_errors: Family<UpstreamLabels, Counter>,
    reloads: Family<ResultLabel, Counter>,
    /// Unix seconds of the last reload that was applied (start counts as one).
    last_reload: Gauge,
    /// Requests between their arrival and the end of their answer.
    pub in_flight: Gauge,
    /// Connections on the proxy listeners: open, unproven, refused, evicted.
    pub connections: AdmissionMetrics,
    /// Forward mode: tunnels open.
    pub tunnels_open: Gauge,
    /// Tokens suspended by quarantine (`quarantine` on a service).
    pub quarantined: Counter,
    /// Forward mode: `CONNECT`s by outcome (`opened`, or the refusal's reason).
    connects: Family<OutcomeLabel, Counter>,
    /// Money counted by spend caps (minor units), by what became of it.
    spend_amount: Family<SpendLabels, Counter>,
    /// Calls a spend cap refused, by why.
    spend_refused: Family<SpendRefusedLabels, Counter>,
}

/// What the proxy listeners' admission counts (`serve::admission`).
#[derive(Debug, Clone, Default)]
pub struct AdmissionMetrics {
    /// Open connections: the metric is the count.
    pub open: Gauge,
    /// Of them, unproven.
    pub unproven: Gauge,
    /// Connections closed at once because their address had too many (all, or unproven).
    pub refused_per_ip: Counter,
    /// Unproven connections closed to make room for a newcomer, or for a handshake turn.
    pub evicted: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Histogram::new(BUCKETS);
        let upstream_duration = Histogram::new(BUCKETS);
        let added = Histogram::new(ADDED_BUCKETS);
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let (last_reload, in_flight) = (Gauge::default(), Gauge::default());
        let connections = AdmissionMetrics::default();
        let quarantined = Counter::default();
        let (tunnels_open, connects) = (Gauge::default(), Family::<OutcomeLabel, Counter>::default());
        let build = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build.get_or_create(&vec![("version", env!("CARGO_PKG_VERSION"))]).set(1);
        let r = &mut registry;
        r.register(
            "keyward_requests",
            "Requests answered, by service, permission, decision, status class and reason",
            requests.clone(),
        );
        r.register(
            "keyward_request_duration_seconds",
            "Time from request to the end of the response",
            duration.clone(),
        );
        r.register(
            "keyward_upstream_duration_seconds",
            "Time the upstream took to answer",
            upstream_duration.clone(),
        );
        r.register(
            "keyward_added_latency_seconds",
            "keyward's own time in a forwarded call: its duration less the upstream's",
            added.clone(),
        );
        r.register(
            "keyward_upstream_errors",
            "Upstream failures by upstream and kind",
            upstream_errors.clone(),
        );
        r.register("keyward_reloads", "Configuration reloads by result", reloads.clone());
        r.register(
            "keyward_tokens_quarantined",
            "Tokens suspended after too many calls from outside their allowlist (quarantine)",
            quarantined.clone(),
        );
        r.register(
            "keyward_last_reload_success_timestamp_seconds",
            "When the configuration serving was applied (Unix seconds)",
            last_reload.clone(),
        );
        r.register("keyward_requests_in_flight", "Requests not answered in full yet", in_flight.clone());
        r.register(
            "keyward_connections_open",
            "Open connections on the proxy listeners",
            connections.open.clone(),
        );
        r.register(
            "keyward_connections_unproven",
            "Open connections none of whose requests has passed the token checks yet",
            connections.unproven.clone(),
        );
        r.register(
            "keyward_connections_refused",
            "Connections closed at once: their address had max_connections_per_ip or max_unproven_per_ip open",
            connections.refused_per_ip.clone(),
        );
        r.register(
            "keyward_connections_evicted",
            "Unproven connections closed to make room (max_unproven_connections, max_handshakes)",
            connections.evicted.clone(),
        );
        r.register("keyward_tunnels_open", "Forward mode: tunnels open", tunnels_open.clone());
        r.register(
            "keyward_connects",
            "Forward mode: CONNECT requests by outcome (opened, or why refused)",
            connects.clone(),
        );
        r.register("keyward_build_info", "The keyward build serving", build);
        let (spend_amount, spend_refused) = (Family::default(), Family::default());
        r.register(
            "keyward_spend_amount",
            "Money counted by spend caps, in minor units, by service, kind, currency and outcome \
             (committed, released, held)",
            spend_amount.clone(),
        );
        r.register(
            "keyward_spend_refused",
            "Calls refused by spend caps, by service, kind and reason",
            spend_refused.clone(),
        );
        let m = Metrics {
            registry,
            requests,
            duration,
            upstream_duration,
            added,
            upstream_errors,
            reloads,
            last_reload,
            in_flight,
            connections,
            tunnels_open,
            quarantined,
            connects,
            spend_amount,
            spend_refused,
        };
        m.applied();
        m
    }
}

impl Metrics {
    /// Count a finished request from its access record.
    /// A request's record, and the kind of upstream failure it met (`Failure::upstream_kind`).
    pub fn observe(&self, r: &AccessRecord, upstream_error: Option<&'static str>) {
        let status = match r.status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let labels = RequestLabels {
            service: Name(r.service.clone()),
            permission: Name(r.permission.clone()),
            mode: r.mode.as_str(),
            decision: r.decision,
            status,
            reason: Code(r.reason.clone()),
        };
        self.requests.get_or_create(&labels).inc();
        self.duration.observe(r.duration_ms / 1e3);
        if let Some(ms) = r.upstream_ms {
            self.upstream_duration.observe(ms / 1e3);
            self.added.observe((r.duration_ms - ms).max(0.0) / 1e3);
        }
        if let Some(kind) = upstream_error {
            self.upstream_errors
                .get_or_create(&UpstreamLabels { upstream: Name(r.upstream.clone()), kind })
                .inc();
        }
    }

    /// `amount` minor units of `kind` in `currency` ended `outcome` (committed, released, held).
    pub fn spent(
        &self,
        service: &Arc<str>,
        kind: &'static str,
        currency: &str,
        outcome: &'static str,
        amount: u64,
    ) {
        let labels = SpendLabels {
            service: Name(Some(service.clone())),
            kind,
            currency: currency.to_string(),
            outcome,
        };
        self.spend_amount.get_or_create(&labels).inc_by(amount);
    }

    /// A call of `kind` refused by a spend cap, for `reason` (per_call, per_day, …).
    pub fn spend_refused(&self, service: &Arc<str>, kind: &'static str, reason: &'static str) {
        let labels = SpendRefusedLabels { service: Name(Some(service.clone())), kind, reason };
        self.spend_refused.get_or_create(&labels).inc();
    }

    /// A `CONNECT` was answered: `opened`, or the code it was refused with.
    pub fn connect(&self, outcome: &'static str) {
        self.connects.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// A reload was applied (`true`) or refused.
    pub fn reloaded(&self, ok: bool) {
        self.reloads.get_or_create(&ResultLabel { result: if ok { "ok" } else { "error" } }).inc();
        if ok {
            self.applied();
        }
    }

    fn applied(&self) {
        self.last_reload.set(time::OffsetDateTime::now_utc().unix_timestamp());
    }

    /// Reloads so far: (applied, refused).
    pub fn reload_counts(&self) -> (u64, u64) {
        let n = |result| self.reloads.get_or_create(&ResultLabel { result }).get();
        (n("ok"), n("error"))
    }

    /// The whole exposition: the live metrics, then those read now from `scrape`.
    pub fn render(&self, scrape: &Registry) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail.
        let _ = text::encode_registry(&mut out, &self.registry);
        let _ = text::encode_registry(&mut out, scrape);
        let _ = text::encode_eof(&mut out);
        out
    }
}

/// What the access log's writer counts, read at scrape time.
pub struct AuditCounts {
    pub queue_depth: u64,
    pub written: u64,
    pub write_errors: u64,
    pub refused: u64,
    pub unrecorded: u64,
    pub folded: u64,
    pub checkpoint_publish_errors: u64,
    pub healthy: bool,
}

/// The metrics read at scrape time from the snapshot serving and the access log.
pub fn scrape(snap: &Snapshot, audit: &AuditCounts, suspended: usize, now: i64) -> Registry {
    let mut r = Registry::default();
    let version = Family::<Vec<(&'static str, String)>, Gauge>::default();
    version.get_or_create(&vec![("version", snap.version.to_string())]).set(1);
    r.register("keyward_config_info", "The configuration version serving", version);
    let gauge = |v: u64| ConstGauge::new(v as i64);
    r.register("keyward_audit_queue_depth", "Places taken in the access-log queue", gauge(audit.queue_depth));
    r.register("keyward_audit_records_written", "Access records written", ConstCounter::new(audit.written));
    r.register(
        "keyward_audit_write_errors",
        "Failed writes of the access log",
        ConstCounter::new(audit.write_errors),
    );
    r.register(
        "keyward_audit_refused",
        "Requests refused because the access log could not be written or had no place for them",
        ConstCounter::new(audit.refused),
    );
    r.register(
        "keyward_audit_unrecorded",
        "Records lost: folded refusals that found the access log's writer gone",
        ConstCounter::new(audit.unrecorded),
    );
    r.register(
        "keyward_audit_refusals_folded",
        "Refusals past audit.refusals_per_ip or refusals_per_second, counted in kind=refusals records",
        ConstCounter::new(audit.folded),
    );
    r.register(
        "keyward_audit_checkpoint_publish_errors",
        "Failed writes of checkpoints to audit.checkpoints (the chain holds them; retried with the next)",
        ConstCounter::new(audit.checkpoint_publish_errors),
    );
    r.register(
        "keyward_tokens_suspended",
        "Tokens suspended (by the admin endpoint or by quarantine), until resumed or removed from the configuration",
        gauge(suspended as u64),
    );
    r.register("keyward_audit_healthy", "1 while the access log is writable", gauge(audit.healthy.into()));
    if let Some(i) = &snap.intercept {
        r.register(
            "keyward_forward_ca_expiry_timestamp_seconds",
            "Forward mode: when the CA that signs the tunnels' leaves expires (Unix seconds)",
            ConstGauge::new(i.ca_expires),
        );
    }
    if let Some(store) = &snap.ratelimits.store {
        r.register(
            "keyward_ratelimit_store_up",
            "1 while Redis (ratelimit.redis) answers",
            gauge(store.is_up().into()),
        );
        r.register(
            "keyward_ratelimit_store_errors",
            "Calls to Redis that failed or found no answer in time",
            ConstCounter::new(store.errors()),
        );
        r.register(
            "keyward_ratelimit_replicas",
            "Replicas sharing the limits, as last counted in Redis",
            gauge(store.replicas().into()),
        );
    }
    let per_secret = || Family::<Vec<(&'static str, String)>, Gauge>::default();
    let (age, stale) = (per_secret(), per_secret());
    // A family of counters (not gauges), so that the type says counter.
    let failed: Family<Vec<(&'static str, String)>, Counter<u64, AtomicU64>> = Family::default();
    for c in &snap.secrets {
        let labels = vec![("secret", c.name.to_string())];
        failed.get_or_create(&labels).inc_by(c.refresh_failures.load(Ordering::Relaxed));
        age.get_or_create(&labels).set(c.age().as_secs() as i64);
        stale.get_or_create(&labels).set(c.is_stale().into());
    }
    r.register("keyward_secret_refresh_failures", "Failed refreshes of each secret", failed);
    r.register("keyward_secret_age_seconds", "Seconds since each secret was last loaded", age);
    r.register("keyward_secret_stale", "1 while a secret is past its max_staleness", stale);
    let expiry = Family::<Vec<(&'static str, String)>, Gauge>::default();
    for s in &snap.policy.services {
        for t in &s.tokens {
            if let Some(exp) = t.expires {
                let labels = vec![("service", s.name.to_string()), ("token_id", t.id.to_string())];
                expiry.get_or_create(&labels).set(exp - now);
            }
        }
    }
    r.register(
        "keyward_token_expiry_seconds",
        "Seconds until each token expires (negative: expired)",
        expiry,
    );
    r
}
