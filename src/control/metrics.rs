//! Prometheus metrics, kept by hand: a few counters and two histograms, fed once per request
//! from the access record, rendered on the admin port.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::audit::AccessRecord;

const BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let i = BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut total = 0;
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {total}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

/// Shared names, so counting a request allocates nothing.
type RequestKey = (Option<Arc<str>>, Option<Arc<str>>, &'static str, &'static str);
/// (upstream, kind of failure)
type UpstreamErrorKey = (Option<Arc<str>>, &'static str);

#[derive(Default)]
pub struct Metrics {
    /// (service, permission, decision, status class) → count
    requests: Mutex<BTreeMap<RequestKey, u64>>,
    /// (upstream, kind) → count
    upstream_errors: Mutex<BTreeMap<UpstreamErrorKey, u64>>,
    pub duration: Histogram,
    pub upstream_duration: Histogram,
}

impl Metrics {
    pub fn observe(&self, r: &AccessRecord) {
        let class = match r.status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let decision = match &*r.decision {
            "allow" => "allow",
            "would_deny" => "would_deny",
            _ => "deny",
        };
        let key = (r.service.clone(), r.permission.clone(), decision, class);
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
        self.duration.observe(r.duration_ms / 1e3);
        if let Some(ms) = r.upstream_ms {
            self.upstream_duration.observe(ms / 1e3);
        }
        if let Some(kind) = upstream_failure(r) {
            let key = (r.upstream.clone(), kind);
            *self.upstream_errors.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
        }
    }

    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP keyward_requests_total Requests by service, permission, decision and status class.\n",
        );
        out.push_str("# TYPE keyward_requests_total counter\n");
        for ((service, permission, decision, class), n) in
            self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter()
        {
            let (service, permission) =
                (service.as_deref().unwrap_or(""), permission.as_deref().unwrap_or(""));
            let _ = writeln!(
                out,
                "keyward_requests_total{{service=\"{}\",permission=\"{}\",decision=\"{}\",status=\"{class}\"}} {n}",
                label(service),
                label(permission),
                label(decision)
            );
        }
        self.duration.render(
            out,
            "keyward_request_duration_seconds",
            "Time from request to the end of the response.",
        );
        self.upstream_duration.render(
            out,
            "keyward_upstream_duration_seconds",
            "Time the upstream took to answer.",
        );
        out.push_str("# HELP keyward_upstream_errors_total Upstream failures by upstream and kind.\n");
        out.push_str("# TYPE keyward_upstream_errors_total counter\n");
        for ((upstream, kind), n) in self.upstream_errors.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let upstream = upstream.as_deref().unwrap_or("");
            let _ = writeln!(
                out,
                "keyward_upstream_errors_total{{upstream=\"{}\",kind=\"{}\"}} {n}",
                label(upstream),
                label(kind)
            );
        }
    }
}

/// `upstream_timeout` → `timeout`: the kind of upstream failure a record's reason names.
/// Reasons on the request path are the static codes of `Failure::code`.
fn upstream_failure(r: &AccessRecord) -> Option<&'static str> {
    match r.reason {
        Cow::Borrowed(code) => code.strip_prefix("upstream_"),
        Cow::Owned(_) => None,
    }
}

/// A label value in the text format: backslash, quote and newline escaped.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
