//! The listeners: accept TCP within the connection limits, hand each connection to its
//! port's server (`listener::reverse`, `forward::connection`), and drain on shutdown.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::serve::listener::{Accepted, Ends, guarded, reverse};
use crate::serve::proxy::Proxy;
use crate::serve::stall::StallGuard;

/// Which port a listener serves.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Port {
    /// The API over TLS: callers use keyward as their base URL.
    Reverse,
    /// The HTTP proxy (`HTTPS_PROXY`): `CONNECT` to the API's hosts, intercepted.
    Forward,
}

/// Serve `listener` until `accept` is cancelled, then stop accepting, close connections
/// politely (HTTP/1.1 `Connection: close` after the request in flight, HTTP/2 `GOAWAY`) and
/// give in-flight requests the snapshot's grace period; end what is left after it, and return
/// once every connection and stream task is gone, so that every request's access record has
/// been handed to the log.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, accept: CancellationToken, port: Port) {
    let ends = Ends::default();
    let admission = proxy.admission[port as usize].clone();
    loop {
        let max = proxy.state.snapshot.load().limits.max_connections;
        let accepted = tokio::select! {
            a = async {
                // Past `max_connections`, new connections wait in the kernel's backlog.
                admission.room(max).await;
                listener.accept().await
            } => a,
            _ = accept.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends pass; never end the server over one accept.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // A dual-stack listener sees IPv4 callers as `::ffff:a.b.c.d`: allowlists and
        // records speak of them as IPv4.
        let ip = peer.ip().to_canonical();
        let snap = proxy.state.snapshot.load();
        let l = &snap.limits;
        // Unproven tunnels may hold at most half of `forward.max_tunnels`: the rest is for
        // callers who have shown a token.
        let unproven_cap = match (port, snap.forward) {
            (Port::Forward, Some(f)) => l.max_unproven_connections.min((f.max_tunnels / 2).max(1)),
            _ => l.max_unproven_connections,
        };
        let Some(counted) = admission.admit(ip, l, unproven_cap) else {
            tracing::debug!(%peer, "connection closed: too many from this address (max_connections_per_ip, max_unproven_per_ip)");
            continue;
        };
        let (timeouts, limits) = (snap.timeouts, snap.limits);
        drop(snap);
        let _ = tcp.set_nodelay(true);
        let (proxy, ends2) = (proxy.clone(), ends.clone());
        ends.tasks.spawn(async move {
            let counted = Arc::new(counted);
            let cut = Arc::new(AtomicBool::new(false));
            let tcp = StallGuard::new(tcp, timeouts.client_send, cut.clone());
            let conn = Accepted { ip, peer, cut, counted: counted.clone(), timeouts, limits };
            let serving = async move {
                match port {
                    Port::Reverse => reverse(tcp, conn, proxy, ends2).await,
                    Port::Forward => crate::serve::forward::connection(tcp, conn, proxy, ends2).await,
                }
            };
            guarded(serving, &counted, timeouts.unproven_idle, peer).await;
        });
    }
    drop(listener);
    let grace = proxy.state.snapshot.load().timeouts.shutdown_grace;
    ends.drain.cancel();
    ends.tasks.close();
    match tokio::time::timeout(grace, ends.tasks.wait()).await {
        Ok(()) => tracing::info!("all connections drained"),
        Err(_) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
    }
    // Whatever is left ends now; its exchanges are dropped, and so recorded.
    ends.kill.cancel();
    ends.tasks.wait().await;
}
