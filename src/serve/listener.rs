//! The listener: accept TCP (within the connection limits), handshake TLS, serve HTTP/1.1
//! and HTTP/2 with every caller-facing timeout, drain on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::serve::exchange::Caller;
use crate::serve::proxy::Proxy;
use crate::serve::stall::{StallGuard, StreamExec};

/// Serve `listener` until `shutdown` resolves, then stop accepting and give in-flight
/// requests the snapshot's grace period to finish.
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let max = proxy.state.snapshot.load().limits.max_connections;
        let accepted = tokio::select! {
            a = async {
                // Past `max_connections`, new connections wait in the kernel's backlog.
                proxy.admission.room(max).await;
                listener.accept().await
            } => a,
            _ = &mut shutdown => break,
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
        let Some(tls) = snap.tls.clone() else {
            tracing::error!("no TLS configuration loaded; refusing connection");
            continue;
        };
        let Some(counted) = proxy.admission.admit(ip, snap.limits.max_connections_per_ip) else {
            tracing::debug!(%peer, "connection closed: too many from this address (max_connections_per_ip)");
            continue;
        };
        let (timeouts, limits) = (snap.timeouts, snap.limits);
        drop(snap);
        let _ = tcp.set_nodelay(true);
        let watcher = graceful.watcher();
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let _counted = counted;
            let cut = Arc::new(AtomicBool::new(false));
            let tcp = StallGuard::new(tcp, timeouts.client_send, cut.clone());
            let handshake = async {
                let _turn = proxy.admission.handshake(limits.max_handshakes).await;
                TlsAcceptor::from(tls).accept(tcp).await
            };
            let stream = match tokio::time::timeout(timeouts.handshake, handshake).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            let handler = proxy.clone();
            let caller = Caller { ip, cut };
            let svc = service_fn(move |req| handler.clone().handle(caller.clone(), req));
            // ALPN has chosen the protocol: no need to sniff the first bytes for it.
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(stream);
            let served = if h2 {
                let mut builder = http2::Builder::new(StreamExec { limit: timeouts.client_send });
                builder
                    .timer(TokioTimer::new())
                    .max_header_list_size(limits.max_header_bytes as u32)
                    .max_concurrent_streams(limits.max_streams_per_connection)
                    .keep_alive_interval(timeouts.request_head)
                    .keep_alive_timeout(timeouts.handshake);
                watcher.watch(builder.serve_connection(io, svc)).await
            } else {
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(timeouts.request_head)
                    .max_buf_size(limits.max_header_bytes.max(8192));
                watcher.watch(builder.serve_connection(io, svc)).await
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
                if let Some((status, reason)) = parser_refusal(&e) {
                    proxy.record_unparsed(ip, status, reason);
                }
            }
        });
    }
    drop(listener);
    let grace = proxy.state.snapshot.load().timeouts.shutdown_grace;
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "grace period over; closing remaining connections"),
    }
}

/// What hyper answered, by itself, to a request it could not parse (its `on_error`): the
/// status and the reason recorded for it. `None` where it answered nothing.
fn parser_refusal(e: &hyper::Error) -> Option<(u16, &'static str)> {
    // hyper answers nothing to these (nor to its own internal errors).
    if !e.is_parse() || e.is_parse_version_h2() || e.is_parse_status() || e.to_string().contains("internal") {
        return None;
    }
    Some(match e.is_parse_too_large() {
        // hyper's public API tells these two apart only by their message.
        true if e.to_string().contains("URI") => (414, "request_uri_too_long"),
        true => (431, "request_head_too_large"),
        false => (400, "malformed_request"),
    })
}
