//! Start and stop a keyward instance: used by `keyward run` and by the tests alike.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::audit::AuditLog;
use crate::config::{self, Options, Source};
use crate::proxy::Proxy;

pub struct Running {
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Compile the configuration, open the access log, bind the listener and start serving.
/// Every configuration error is returned at once, one per line.
pub async fn start(src: &Source) -> Result<Running, String> {
    let snap = config::compile(src, Options::FULL)
        .await
        .map_err(|errs| errs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?;
    let audit =
        AuditLog::open(&snap.audit_path).map_err(|e| format!("audit log {}: {e}", snap.audit_path))?;
    let listener =
        TcpListener::bind(snap.listen).await.map_err(|e| format!("listen {}: {e}", snap.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(%addr, config = %src.name.display(), version = %snap.version,
        services = snap.services.len(), "keyward listening");
    let proxy = Proxy::new(Arc::new(snap), audit);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(crate::server::serve(listener, proxy.clone(), async {
        let _ = stopped.await;
    }));
    Ok(Running { addr, proxy, stop, task })
}

impl Running {
    /// Stop accepting and wait for in-flight requests (up to the grace period).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }

    /// Run until SIGTERM or SIGINT, then drain.
    pub async fn until_signal(self) {
        shutdown_signal().await;
        tracing::info!("shutting down: draining in-flight requests");
        self.stop().await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("can listen for SIGTERM");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
