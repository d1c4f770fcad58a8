//! Start and stop a keyward instance: used by `keyward run` and by the tests alike. The layers
//! meet here: the control plane (configuration, reloads, admin port) and the listener that
//! serves the request path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditSink;
use crate::audit::event::{Event, sha256_hex};
use crate::control::config::{self, ConfigError, Options, Source};
use crate::control::reload::Reloader;
use crate::control::state::State;
use crate::control::suspensions::{Suspensions, SuspensionsError};
use crate::control::telemetry::TelemetryError;
use crate::serve::proxy::Proxy;

/// Why keyward did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Config(Vec<ConfigError>),
    #[error("telemetry: {0}")]
    Telemetry(TelemetryError),
    #[error("audit log {path}: {source}")]
    AuditLog { path: String, source: std::io::Error },
    #[error("listen {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("forward.listen {addr}: {source}")]
    ForwardListen { addr: SocketAddr, source: std::io::Error },
    #[error("admin_listen {addr}: {source}")]
    AdminListen { addr: SocketAddr, source: std::io::Error },
    #[error("admin.state_file {0}")]
    State(SuspensionsError),
}

pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// Forward mode's proxy port, if configured.
    pub forward_addr: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    pub reloader: Arc<Reloader>,
    /// Cancelled to stop accepting: the listener then drains its connections.
    accept: CancellationToken,
    /// Cancelled to end the background tasks (admin port, file watch, SIGHUP).
    background: CancellationToken,
    tasks: TaskTracker,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

/// Compile the configuration, open the access log, bind the listeners, start serving and
/// watching the config's files. Reloads read the same file again (the embedded default:
/// refresh secrets only).
pub async fn start(src: &Source) -> Result<Running, StartError> {
    let path = src.path().map(ToOwned::to_owned);
    let snap = config::compile(src, Options::FULL).await.map_err(StartError::Config)?;
    let instance = crate::control::instance::instance();
    let telemetry = crate::control::telemetry::start(snap.otlp_endpoint.as_deref(), instance)
        .map_err(StartError::Telemetry)?;
    let audit = AuditSink::open(snap.audit.clone(), instance.into())
        .map_err(|source| StartError::AuditLog { path: snap.audit.path.clone(), source })?;
    let listener = TcpListener::bind(snap.listen)
        .await
        .map_err(|source| StartError::Listen { addr: snap.listen, source })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: snap.listen, source })?;
    let forward_listener = match snap.forward {
        Some(f) => Some(
            TcpListener::bind(f.listen)
                .await
                .map_err(|source| StartError::ForwardListen { addr: f.listen, source })?,
        ),
        None => None,
    };
    let forward_addr = forward_listener.as_ref().and_then(|l| l.local_addr().ok());
    let admin_listener = match snap.admin_listen {
        Some(a) => {
            Some(TcpListener::bind(a).await.map_err(|source| StartError::AdminListen { addr: a, source })?)
        }
        None => None,
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let suspensions = Suspensions::open(snap.admin.state_file.clone()).map_err(StartError::State)?;
    if snap.admin.state_file.is_none() && snap.ratelimits.store.is_none() {
        tracing::warn!(
            "suspended tokens are kept in memory only: set [admin] state_file (or [ratelimit] redis) to keep them across restarts"
        );
    }
    // The process's first records, once its ports are bound and before it serves: that it
    // started, and under what.
    audit.event(Event::lifecycle("start", &snap.version, sha256_hex(&src.text))).await;
    audit.event(Event::config(&snap.version, path.as_deref(), &src.text)).await;
    crate::secrets::spawn_refresh(&snap.secrets);
    let state = State::new(Arc::new(snap), audit, suspensions, telemetry);
    tokio::spawn(crate::control::state::share_suspensions_every_second(Arc::downgrade(&state)));
    let proxy = Proxy::new(state.clone());
    let reloader = Reloader::new(state, path.clone(), src.text.clone());
    let (tasks, background, accept) =
        (TaskTracker::new(), CancellationToken::new(), CancellationToken::new());
    if path.is_some() {
        match crate::control::watch::file_watch(reloader.clone()) {
            Ok(watch) => drop(tasks.spawn(until_cancelled(background.clone(), watch))),
            Err(e) => {
                tracing::warn!(error = %e, "config file watch unavailable; use SIGHUP or the admin endpoint")
            }
        }
    }
    // Before anyone can learn we are up, so an early SIGHUP cannot kill us.
    if let Some(hup) = crate::control::watch::sighup(reloader.clone()) {
        tasks.spawn(until_cancelled(background.clone(), hup));
    }
    if let Some(l) = admin_listener {
        tasks.spawn(crate::control::admin::serve(l, reloader.clone(), tasks.clone(), background.clone()));
    }
    use crate::serve::accept::{Port, serve};
    let mut listeners = vec![tokio::spawn(serve(listener, proxy.clone(), accept.clone(), Port::Reverse))];
    if let Some(l) = forward_listener {
        listeners.push(tokio::spawn(serve(l, proxy.clone(), accept.clone(), Port::Forward)));
    }
    let snap = proxy.state.snapshot.load();
    let (admin, forward) =
        (admin_addr.map(tracing::field::display), forward_addr.map(tracing::field::display));
    tracing::info!(%addr, forward, admin, config = %src.name.display(), version = %snap.version,
        services = snap.policy.services.len(), "keyward listening");
    drop(snap);
    Ok(Running { addr, admin_addr, forward_addr, proxy, reloader, accept, background, tasks, listeners })
}

async fn until_cancelled(token: CancellationToken, task: impl std::future::Future<Output = ()>) {
    tokio::select! {
        _ = token.cancelled() => {}
        _ = task => {}
    }
}

impl Running {
    /// Stop accepting, close connections politely (HTTP/1.1 `Connection: close`, HTTP/2
    /// `GOAWAY`), give in-flight requests the grace period, record every one of them, end the
    /// background tasks (admin port, reloads), record the stop, then close the access log.
    pub async fn stop(self) {
        self.accept.cancel();
        for l in self.listeners {
            let _ = l.await;
        }
        self.background.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let (version, sha256) = self.reloader.in_force().await;
        self.proxy.state.audit.event(Event::lifecycle("stop", &version, sha256)).await;
        self.proxy.state.audit.close().await;
        if let Some(t) = &self.proxy.state.telemetry {
            t.shutdown();
        }
    }

    /// Run until `shutdown` (SIGTERM or SIGINT, see [`shutdown_signal`]), then drain: `/readyz`
    /// says 503 at once, new connections are still accepted for `timeouts.drain_delay` (load
    /// balancers take that long to notice), then [`Running::stop`].
    pub async fn until(self, shutdown: impl std::future::Future<Output = ()>) {
        shutdown.await;
        let state = &self.proxy.state;
        state.draining.store(true, Ordering::Relaxed);
        let delay = state.snapshot.load().timeouts.drain_delay;
        tracing::info!(
            ?delay,
            "shutting down: /readyz says 503; still accepting while load balancers notice"
        );
        tokio::time::sleep(delay).await;
        tracing::info!("shutting down: no longer accepting; draining in-flight requests");
        self.stop().await;
    }
}

/// SIGTERM or SIGINT. Listens from the moment it is called, so call it before starting.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
