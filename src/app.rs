//! Start and stop a keyward instance: used by `keyward run` and by the tests alike.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::audit::AuditSink;
use crate::control::config::{self, Options, Source};
use crate::control::reload::Reloader;
use crate::control::state::State;
use crate::serve::proxy::Proxy;

pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    pub reloader: Arc<Reloader>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    admin: Option<JoinHandle<()>>,
    watch: Option<JoinHandle<()>>,
}

/// Compile the configuration, open the access log, bind the listeners, start serving and
/// watching the config's files. Every configuration error is returned at once, one per line.
/// Reloads read the same file again (the embedded default: refresh secrets only).
pub async fn start(src: &Source) -> Result<Running, String> {
    let path = src.path().map(ToOwned::to_owned);
    let snap = config::compile(src, Options::FULL)
        .await
        .map_err(|errs| errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
    let audit =
        AuditSink::open(snap.audit.clone()).map_err(|e| format!("audit log {}: {e}", snap.audit.path))?;
    let listener =
        TcpListener::bind(snap.listen).await.map_err(|e| format!("listen {}: {e}", snap.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_listener = match snap.admin_listen {
        Some(a) => Some(TcpListener::bind(a).await.map_err(|e| format!("admin_listen {a}: {e}"))?),
        None => None,
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    crate::secrets::spawn_refresh(&snap.secrets);
    let state = State::new(Arc::new(snap), audit);
    let proxy = Proxy::new(state.clone());
    let reloader = Reloader::new(state, path.clone());
    let watch = match path {
        Some(_) => crate::control::watch::spawn_file_watch(reloader.clone())
            .map_err(|e| tracing::warn!(error = %e, "config file watch unavailable; use SIGHUP or the admin endpoint"))
            .ok(),
        None => None,
    };
    // Before anyone can learn we are up, so an early SIGHUP cannot kill us.
    crate::control::watch::spawn_sighup(reloader.clone());
    let admin = admin_listener.map(|l| tokio::spawn(crate::control::admin::serve(l, reloader.clone())));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(crate::serve::listener::serve(listener, proxy.clone(), async {
        let _ = stopped.await;
    }));
    let snap = proxy.state.snapshot.load();
    tracing::info!(%addr, admin = ?admin_addr, config = %src.name.display(), version = %snap.version,
        services = snap.policy.services.len(), "keyward listening");
    drop(snap);
    Ok(Running { addr, admin_addr, proxy, reloader, stop, task, admin, watch })
}

impl Running {
    /// Stop accepting and wait for in-flight requests (up to the grace period).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        self.proxy.state.audit.close().await;
        for task in self.admin.into_iter().chain(self.watch) {
            task.abort();
        }
    }

    /// Run until `shutdown` (SIGTERM or SIGINT, see [`shutdown_signal`]), then drain.
    pub async fn until(self, shutdown: impl std::future::Future<Output = ()>) {
        shutdown.await;
        tracing::info!("shutting down: draining in-flight requests");
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
