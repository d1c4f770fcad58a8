//! What the control plane shares with the request path: the snapshot serving, the access log
//! and the metrics. Reloads swap the snapshot; requests read it once each.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::audit::AuditSink;
use crate::control::metrics::Metrics;
use crate::control::snapshot::Snapshot;
use crate::policy::{Service, Token};

pub struct State {
    /// Swapped whole by a reload; a request keeps the one it started with.
    pub snapshot: ArcSwap<Snapshot>,
    pub audit: AuditSink,
    pub metrics: Metrics,
    /// Shutting down: `/readyz` says 503 so that load balancers stop sending new callers.
    pub draining: AtomicBool,
    /// Tokens suspended by an operator (`POST /-/tokens/{id}/suspend`), until the next
    /// configuration change.
    pub suspended: arc_swap::ArcSwapOption<Suspended>,
    /// Refusals for the source address per token, for `quarantine`.
    strikes: std::sync::Mutex<crate::control::quarantine::Strikes>,
}

/// Suspended tokens, by service and token id, for one configuration version.
#[derive(Debug, Clone, Default)]
pub struct Suspended {
    pub version: Arc<str>,
    pub tokens: std::collections::HashSet<(Arc<str>, Arc<str>)>,
}

impl State {
    /// Whether `service`'s token `id` is suspended under configuration `version`.
    pub fn is_suspended(&self, version: &str, service: &str, id: &str) -> bool {
        let guard = self.suspended.load();
        guard.as_ref().is_some_and(|s| {
            &*s.version == version && s.tokens.iter().any(|(sv, t)| &**sv == service && &**t == id)
        })
    }

    /// Suspend every token with this id under the configuration serving; the (service, id)
    /// pairs suspended.
    pub fn suspend(&self, id: &str) -> Vec<(Arc<str>, Arc<str>)> {
        let snap = self.snapshot.load();
        let found: Vec<(Arc<str>, Arc<str>)> = snap
            .policy
            .services
            .iter()
            .flat_map(|s| {
                s.tokens.iter().filter(|t| &*t.id == id).map(move |t| (s.name.clone(), t.id.clone()))
            })
            .collect();
        self.suspend_under(&snap.version, &found);
        found
    }

    /// Add `tokens` to the suspended under configuration `version` (none if it no longer serves).
    fn suspend_under(&self, version: &Arc<str>, tokens: &[(Arc<str>, Arc<str>)]) {
        // Read-modify-write of the set, so that two suspensions at once both stay.
        self.suspended.rcu(|now| {
            let mut next = match now {
                Some(s) if s.version == *version => (**s).clone(),
                _ => Suspended { version: version.clone(), ..Default::default() },
            };
            next.tokens.extend(tokens.iter().cloned());
            Some(Arc::new(next))
        });
    }

    /// A refusal of `token` of `service` for its source address, under configuration
    /// `version`: true when it quarantines the token (suspended until the next configuration
    /// change, with a log line and a metric).
    pub fn strike(&self, version: &Arc<str>, service: &Service, token: &Token) -> bool {
        let Some(q) = service.quarantine else { return false };
        let key = (service.index, token.id.clone());
        let tipped = self.strikes.lock().is_ok_and(|mut s| s.strike(version, key, q, Instant::now()));
        if tipped {
            self.suspend_under(version, &[(service.name.clone(), token.id.clone())]);
            self.metrics.quarantined.inc();
            tracing::warn!(
                service = &*service.name,
                token_id = &*token.id,
                refusals = q.refusals,
                within = ?q.within,
                "token quarantined: presented from outside the allowlist too often; suspended until the next configuration change"
            );
        }
        tipped
    }

    /// Tokens suspended under the configuration serving.
    pub fn suspended_now(&self) -> usize {
        let version = self.snapshot.load().version.clone();
        self.suspended.load().as_ref().filter(|s| s.version == version).map_or(0, |s| s.tokens.len())
    }
}

impl State {
    pub fn new(snapshot: Arc<Snapshot>, audit: AuditSink) -> Arc<State> {
        Arc::new(State {
            snapshot: ArcSwap::new(snapshot),
            audit,
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            suspended: Default::default(),
            strikes: Default::default(),
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
