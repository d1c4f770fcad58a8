//! Hot reload: compile the whole new snapshot, and swap it in only if every check passes.
//! Reloads are serialised; in-flight requests finish on the snapshot they started with.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use crate::audit::event::{Admin, Event, changed_sections, sha256_hex};
use crate::control::config::{self, Options, Source};
use crate::control::snapshot::Snapshot;
use crate::control::state::State;

pub struct Reloader {
    state: Arc<State>,
    /// `None`: the embedded default (a reload then refreshes secrets only).
    path: Option<PathBuf>,
    /// Reloads one at a time; it holds what the last accepted one loaded.
    lock: tokio::sync::Mutex<Loaded>,
    /// What the process bound at start: changing these needs a restart.
    bound: Bound,
}

/// The configuration in force: its version (the last one recorded in the access log) and the
/// text it was read from (what the next reload's `changed` is reckoned against).
struct Loaded {
    version: Arc<str>,
    text: String,
}

/// What a reload did, as the admin endpoint and `keyward reload` report it.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub ok: bool,
    /// The version serving after this reload (the old one if it failed).
    pub version: String,
    pub errors: Vec<String>,
    /// Settings that changed but only take effect after a restart.
    pub restart_required: Vec<String>,
}

impl Reloader {
    /// For `state`, serving what was compiled from `text` (read from `path`; `None`: the
    /// embedded default), whose version and text the access log already holds.
    pub fn new(state: Arc<State>, path: Option<PathBuf>, text: String) -> Arc<Reloader> {
        let snap = state.snapshot.load();
        let (bound, version) = (Bound::of(&snap), snap.version.clone());
        drop(snap);
        let lock = tokio::sync::Mutex::new(Loaded { version, text });
        Arc::new(Reloader { bound, state, path, lock })
    }

    /// The version in force and the SHA-256 of the text it was read from.
    pub async fn in_force(&self) -> (Arc<str>, String) {
        let loaded = self.lock.lock().await;
        (loaded.version.clone(), sha256_hex(&loaded.text))
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Reload, as asked by `actor` (`admin:ID`, `peer:IP`, `sighup`, `file_watch`): the
    /// access log records the attempt, accepted or refused, before the new snapshot serves,
    /// and the new configuration's text when its version is not the one last recorded.
    pub async fn reload(&self, actor: &str) -> Outcome {
        let mut loaded = self.lock.lock().await;
        let current = self.state.snapshot.load_full();
        let src = Source::locate(self.path.as_deref());
        let compiled = match &src {
            Ok(src) => config::compile_with(src, Options::FULL, Some(&current)).await,
            Err(e) => Err(e.clone()),
        };
        let mut record = Admin::new("reload", actor, compiled.is_ok());
        if let Ok(src) = &src {
            record.config_sha256 = Some(sha256_hex(&src.text));
            record.changed = Some(changed_sections(&loaded.text, &src.text));
        }
        let audit = &self.state.audit;
        match (compiled, src) {
            (Ok(mut next), Ok(src)) => {
                let restart_required = self.bound.differs(&next);
                self.bound.keep(&mut next);
                let version = next.version.clone();
                for setting in &restart_required {
                    tracing::warn!(setting, "changed setting needs a restart; keeping the running one");
                }
                // Recorded before it serves: every call decided under it comes after in the chain.
                record.config_version = Some(version.clone());
                record.restart_only = Some(restart_required.clone());
                audit.event(Event::Admin(record)).await;
                if version != loaded.version {
                    audit.event(Event::config(&version, src.path(), &src.text)).await;
                }
                *loaded = Loaded { version: version.clone(), text: src.text };
                let next = Arc::new(next);
                crate::secrets::spawn_refresh(&next.secrets);
                for gone in self.state.suspensions.retain(&next.policy) {
                    let mut resumed = Admin::new("resume", "keyward", true);
                    resumed.service = Some(gone.service.into());
                    resumed.token_id = Some(gone.token_id.into());
                    resumed.reason = Some("the token left the configuration".into());
                    audit.event(Event::Admin(resumed)).await;
                }
                self.state.snapshot.store(next);
                self.state.metrics.reloaded(true);
                tracing::info!(trigger = actor, from = %current.version, to = %version, "configuration reloaded");
                Outcome { ok: true, version: version.to_string(), errors: vec![], restart_required }
            }
            (Err(errors), _) | (_, Err(errors)) => {
                self.state.metrics.reloaded(false);
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                tracing::error!(trigger = actor, version = %current.version, errors = %errors.join("; "),
                    "reload refused; still serving the previous configuration");
                record.config_version = Some(current.version.clone());
                record.errors = Some(errors.clone());
                audit.event(Event::Admin(record)).await;
                Outcome { ok: false, version: current.version.to_string(), errors, restart_required: vec![] }
            }
        }
    }
}

/// Settings bound at start (sockets, the open access log): reported, never half-applied.
struct Bound {
    listen: std::net::SocketAddr,
    admin_listen: Option<std::net::SocketAddr>,
    forward_listen: Option<std::net::SocketAddr>,
    audit: crate::audit::Settings,
    max_form_bytes_total: usize,
    otlp_endpoint: Option<String>,
}

impl Bound {
    fn of(s: &Snapshot) -> Bound {
        Bound {
            listen: s.listen,
            admin_listen: s.admin_listen,
            forward_listen: s.forward.map(|f| f.listen),
            audit: s.audit.clone(),
            max_form_bytes_total: s.limits.max_form_bytes_total,
            otlp_endpoint: s.otlp_endpoint.clone(),
        }
    }

    /// `next` with the running values of what only a restart changes: the snapshot then says
    /// what the process does (the open log, the form budget sized at start), not what the
    /// file asks for.
    fn keep(&self, next: &mut Snapshot) {
        next.listen = self.listen;
        next.admin_listen = self.admin_listen;
        if let (Some(f), Some(listen)) = (next.forward.as_mut(), self.forward_listen) {
            f.listen = listen;
        }
        next.audit = self.audit.clone();
        next.limits.max_form_bytes_total = self.max_form_bytes_total;
        next.otlp_endpoint = self.otlp_endpoint.clone();
    }

    /// What `next` asks for that only a restart gives, compared with what is running.
    fn differs(&self, next: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        if self.listen != next.listen {
            out.push(format!("server.listen (running {}, configured {})", self.listen, next.listen));
        }
        if self.admin_listen != next.admin_listen {
            out.push("server.admin_listen".to_string());
        }
        if self.forward_listen != next.forward.map(|f| f.listen) {
            // Added, moved or removed: the port is bound (or left) as at start. A port left
            // open without a `[forward]` closes each new connection at once.
            out.push("forward.listen".to_string());
        }
        if self.otlp_endpoint != next.otlp_endpoint {
            out.push("telemetry.otlp_endpoint".to_string());
        }
        if self.audit != next.audit {
            out.push("audit".to_string());
        }
        if self.max_form_bytes_total != next.limits.max_form_bytes_total {
            out.push("limits.max_form_bytes_total".to_string());
        }
        out
    }
}
