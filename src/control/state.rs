//! What the control plane shares with the request path: the snapshot serving, the access log
//! and the metrics. Reloads swap the snapshot; requests read it once each.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::audit::AuditSink;
use crate::control::metrics::Metrics;
use crate::control::snapshot::Snapshot;
use crate::control::suspensions::{Entry, Suspensions, SuspensionsError};
use crate::policy::{Service, Token};

pub struct State {
    /// Swapped whole by a reload; a request keeps the one it started with.
    pub snapshot: ArcSwap<Snapshot>,
    pub audit: AuditSink,
    pub metrics: Metrics,
    /// Shutting down: `/readyz` says 503 so that load balancers stop sending new callers.
    pub draining: AtomicBool,
    /// Tokens suspended by an operator (`POST /-/tokens/{id}/suspend`) or by quarantine, by
    /// hash, until resumed or removed from the configuration.
    pub suspensions: Suspensions,
    /// Refusals for the source address per token, for `quarantine`.
    strikes: std::sync::Mutex<crate::control::quarantine::Strikes>,
    /// The OTLP exporter, when telemetry is on (bound at start).
    pub telemetry: Option<crate::control::telemetry::Telemetry>,
}

/// The (service, token id) pairs a suspension or resumption changed, and whether the state file
/// holds the change (`Err`: why not; it is in force all the same).
pub type Changed = (Vec<(Arc<str>, Arc<str>)>, Result<(), SuspensionsError>);

impl State {
    pub fn is_suspended(&self, token: &Token) -> bool {
        self.suspensions.contains(&token.hash)
    }

    /// Every configured token with this id: (service, token).
    fn with_id<'s>(snap: &'s Snapshot, id: &str) -> Vec<(&'s Service, &'s Token)> {
        let services = snap.policy.services.iter();
        services.flat_map(|s| s.tokens.iter().filter(|t| &*t.id == id).map(move |t| (s, t))).collect()
    }

    /// Suspend every token with this id: the (service, id) pairs suspended, and whether the
    /// state file holds them.
    pub fn suspend(&self, id: &str, by: &str) -> Changed {
        let snap = self.snapshot.load();
        let found = Self::with_id(&snap, id);
        let saved = self.suspend_tokens(&found, by);
        (found.iter().map(|(s, t)| (s.name.clone(), t.id.clone())).collect(), saved)
    }

    fn suspend_tokens(&self, tokens: &[(&Service, &Token)], by: &str) -> Result<(), SuspensionsError> {
        let since = crate::audit::timestamp(time::OffsetDateTime::now_utc());
        let entries: Vec<_> = tokens
            .iter()
            .map(|(s, t)| {
                let e = Entry {
                    service: s.name.to_string(),
                    token_id: t.id.to_string(),
                    since: since.clone(),
                    by: by.into(),
                };
                (t.hash, e)
            })
            .collect();
        let saved = self.suspensions.add(&entries);
        if let Err(e) = &saved {
            tracing::error!(error = %e, "suspension in force, but not saved: it will not survive a restart");
        }
        saved
    }

    /// Lift the suspension of every token with this id: the (service, id) pairs that were
    /// suspended, and whether the state file says so.
    pub fn resume(&self, id: &str) -> Changed {
        let snap = self.snapshot.load();
        let found: Vec<_> =
            Self::with_id(&snap, id).into_iter().filter(|(_, t)| self.is_suspended(t)).collect();
        let hashes: Vec<_> = found.iter().map(|(_, t)| t.hash).collect();
        let (_, saved) = self.suspensions.remove(&hashes);
        (found.iter().map(|(s, t)| (s.name.clone(), t.id.clone())).collect(), saved)
    }

    /// A refusal of `token` of `service` for its source address `from`, under configuration
    /// `version`: true when it quarantines the token (suspended until resumed, with a log
    /// line, an admin record in the access log and a metric).
    pub fn strike(&self, version: &Arc<str>, service: &Service, token: &Token, from: IpAddr) -> bool {
        let Some(q) = service.quarantine else { return false };
        let key = (service.index, token.id.clone());
        let tipped = self.strikes.lock().is_ok_and(|mut s| s.strike(version, key, q, Instant::now()));
        if tipped {
            let _ = self.suspend_tokens(&[(service, token)], "quarantine");
            self.metrics.quarantined.inc();
            let mut e = crate::audit::event::Admin::new("quarantine", "keyward", true);
            (e.service, e.token_id, e.client_ip) =
                (Some(service.name.clone()), Some(token.id.clone()), Some(from));
            e.reason = Some(format!(
                "presented from outside the allowlist {} times within {}",
                q.refusals,
                humantime::format_duration(q.within)
            ));
            // The request path does not wait for the log: the record is sent by a task.
            self.audit.event_soon(crate::audit::event::Event::Admin(e));
            tracing::warn!(
                service = &*service.name,
                token_id = &*token.id,
                refusals = q.refusals,
                within = ?q.within,
                "token quarantined: presented from outside the allowlist too often; suspended until resumed (POST /-/tokens/ID/resume)"
            );
        }
        tipped
    }

    /// Tokens suspended now.
    pub fn suspended_now(&self) -> usize {
        self.suspensions.len()
    }
}

impl State {
    pub fn new(
        snapshot: Arc<Snapshot>,
        audit: AuditSink,
        suspensions: Suspensions,
        telemetry: Option<crate::control::telemetry::Telemetry>,
    ) -> Arc<State> {
        Arc::new(State {
            snapshot: ArcSwap::new(snapshot),
            audit,
            metrics: Metrics::default(),
            draining: AtomicBool::new(false),
            suspensions,
            strikes: Default::default(),
            telemetry,
        })
    }
}

/// Share suspensions through Redis every second while `[ratelimit] redis` is configured, until
/// the state is gone.
pub async fn share_suspensions_every_second(state: std::sync::Weak<State>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        let Some(store) = state.snapshot.load().ratelimits.store.clone() else { continue };
        match state.suspensions.share(&store).await {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("suspensions shared through Redis again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "suspensions cannot be shared through Redis; those known here stay in force");
            }
            Err(_) => {}
        }
    }
}
