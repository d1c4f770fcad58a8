//! What the control plane shares with the request path: the snapshot serving, the access log
//! and the metrics. Reloads swap the snapshot; requests read it once each.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;

use crate::audit::AuditSink;
use crate::control::metrics::Metrics;
use crate::control::snapshot::Snapshot;

pub struct State {
    /// Swapped whole by a reload; a request keeps the one it started with.
    pub snapshot: ArcSwap<Snapshot>,
    pub audit: AuditSink,
    pub metrics: Metrics,
    /// Shutting down: `/readyz` says 503 so that load balancers stop sending new callers.
    pub draining: AtomicBool,
}

impl State {
    pub fn new(snapshot: Arc<Snapshot>, audit: AuditSink) -> Arc<State> {
        Arc::new(State {
            snapshot: ArcSwap::new(snapshot),
            audit,
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
        })
    }
}

/// This process's name among replicas: `KEYWARD_INSTANCE`, else `HOSTNAME` (a pod's name),
/// else `keyward`.
pub fn instance() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        ["KEYWARD_INSTANCE", "HOSTNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "keyward".into())
    })
}
