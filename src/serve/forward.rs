//! Forward mode: the `HTTPS_PROXY` port. A connection carries one request. A `CONNECT` to an
//! intercepted host (`policy::forward`) opens a tunnel that ends in keyward: TLS with the
//! forward CA's leaf for that host, then HTTP served exactly as on the reverse-proxy port
//! (`listener::http`, `Proxy::handle`, the tunnel in each request's facts). Anything else is
//! refused, recorded and the connection closed. keyward never dials a host for a `CONNECT`.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONNECTION, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioIo, TokioTimer};
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::audit::ProxyMode;
use crate::control::snapshot::{ForwardSettings, Snapshot};
use crate::policy::RequestFacts;
use crate::policy::forward::{Tunnel, admit_connect};
use crate::serve::exchange::{Caller, Exchange};
use crate::serve::listener::{self, Accepted, Ends};
use crate::serve::proxy::Proxy;
use crate::serve::refusal::{Fault, Refusal};
use crate::serve::respond;
use crate::serve::stall::StallGuard;
use crate::upstream::Body;

/// A connection to the forward port: TLS first if `forward.tls`, then one HTTP/1.1 request.
pub async fn connection(tcp: StallGuard<TcpStream>, conn: Accepted, proxy: Arc<Proxy>, ends: Ends) {
    let snap = proxy.state.snapshot.load_full();
    let Some(settings) = snap.forward else { return };
    match snap.forward_tls.clone() {
        Some(tls) => {
            drop(snap);
            if let Some(tls) = listener::handshake(&conn, tcp, |_| Some(tls)).await {
                proxy_port(tls, conn, proxy, ends, settings).await;
            }
        }
        None => {
            drop(snap);
            proxy_port(tcp, conn, proxy, ends, settings).await
        }
    }
}

/// Read the one request (within `forward.head_timeout`), answer it, and hand the connection
/// to its tunnel if it opened one.
async fn proxy_port<IO>(io: IO, conn: Accepted, proxy: Arc<Proxy>, ends: Ends, settings: ForwardSettings)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let max_head = conn.limits.max_header_bytes;
    let (p, c, e) = (proxy.clone(), conn.clone(), ends.clone());
    let svc = service_fn(move |req| {
        let (p, c, e) = (p.clone(), c.clone(), e.clone());
        async move { Ok::<_, Infallible>(answer(&p, &c, &e, req)) }
    });
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(settings.head_timeout).max_buf_size(max_head);
    // One request per connection: after a refusal nothing more is read from it.
    builder.keep_alive(false);
    let served = builder.serve_connection(TokioIo::new(io), svc).with_upgrades();
    let served = tokio::select! {
        s = served => s,
        _ = ends.kill.cancelled() => return,
    };
    if let Err(e) = served {
        tracing::debug!(peer = %conn.peer, error = %e, "forward-port connection ended with an error");
    }
}

/// The answer to the forward port's one request: 200 and a tunnel, or a refusal (recorded).
fn answer(
    proxy: &Arc<Proxy>,
    conn: &Arc<Accepted>,
    ends: &Ends,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let snap = proxy.state.snapshot.load_full();
    let upgrade = hyper::upgrade::on(&mut req);
    let (parts, _) = req.into_parts();
    if !proxy.state.audit.admits() {
        proxy.state.metrics.connect(Fault::AuditUnavailable.code());
        return proxy.unrecorded(Fault::AuditUnavailable);
    }
    let asked = asked_for(&parts);
    conn.counted.active();
    let opened = open(&snap, proxy, conn, &parts).map(|(tunnel, tls, slot)| {
        // A good `Proxy-Authorization` proves the caller; otherwise the tunnel's first
        // request with a good token will.
        if tunnel.token.is_some() {
            conn.counted.prove();
        }
        let (proxy, conn, ends2) = (proxy.clone(), conn.clone(), ends.clone());
        let settings = snap.forward.expect("a forward port has settings");
        ends.tasks.spawn(async move {
            let _slot = slot;
            let (counted, idle, peer) = (conn.counted.clone(), conn.timeouts.unproven_idle, conn.peer);
            let serving = serve_tunnel(upgrade, tunnel, tls, &proxy, &conn, &ends2, settings.idle_timeout);
            listener::guarded(serving, &counted, idle, peer).await;
        });
    });
    match opened {
        Ok(()) => {
            proxy.state.metrics.connect("opened");
            let mut resp = Response::new(Empty::new().map_err(|e| match e {}).boxed());
            *resp.status_mut() = StatusCode::OK;
            resp
        }
        Err(f) => {
            proxy.state.metrics.connect(f.code());
            refuse(proxy, conn, &snap, &parts, asked, f)
        }
    }
}

/// A request to the forward port, as the policy admits it (`policy::forward::admit_connect`),
/// and what opening its tunnel takes: the leaf certificate for its host and a tunnel slot.
fn open(
    snap: &Snapshot,
    proxy: &Proxy,
    conn: &Accepted,
    parts: &http::request::Parts,
) -> Result<(Arc<Tunnel>, Arc<rustls::ServerConfig>, TunnelSlot), Refusal> {
    let settings = snap.forward.ok_or(Fault::Internal)?;
    let suspended = |t: &crate::policy::Token| proxy.state.is_suspended(t);
    let facts = RequestFacts {
        parts,
        client_ip: conn.ip,
        now: OffsetDateTime::now_utc().unix_timestamp(),
        tunnel: None,
        // The proxy port asks for no client certificate: a service bound to `client_ids`
        // cannot open tunnels by its token (its requests inside still can, with theirs).
        client_ids: &[],
        suspended: &suspended,
        has_body: false,
    };
    let tunnel = match admit_connect(&snap.policy, &facts, settings.tls) {
        Ok(tunnel) => tunnel,
        Err(refused) => {
            // The policy says what counts toward quarantine; the control plane counts.
            if let Some((service, token)) = refused.from_elsewhere {
                proxy.state.strike(&snap.version, service, token, conn.ip);
            }
            return Err(refused.failure.into());
        }
    };
    // No leaf: its renewals failed until it expired (logged); fail closed.
    let tls = snap.intercept.as_ref().and_then(|i| i.tls(tunnel.host())).ok_or(Fault::Internal)?;
    let slot = TunnelSlot::take(proxy, settings.max_tunnels).ok_or(Fault::TunnelsFull)?;
    Ok((Arc::new(tunnel), tls, slot))
}

/// What a request to the forward port asked for, as the record shows it: the `CONNECT`
/// target or the absolute URL's authority, without user info, at most 255 bytes.
fn asked_for(parts: &http::request::Parts) -> Option<String> {
    let asked = match parts.method {
        Method::CONNECT => parts.uri.to_string(),
        _ => parts.uri.authority()?.to_string(),
    };
    let host = asked.rsplit_once('@').map_or(asked.as_str(), |(_, h)| h);
    Some(host[..host.floor_char_boundary(255)].to_string())
}

/// A refused request: answered at once and recorded (an `Exchange`, like the listener's
/// refusals), the connection closed after it.
fn refuse(
    proxy: &Proxy,
    conn: &Accepted,
    snap: &Snapshot,
    parts: &http::request::Parts,
    asked: Option<String>,
    f: Refusal,
) -> Response<Body> {
    let caller = Caller {
        ip: conn.ip,
        cut: conn.cut.clone(),
        tunnel: None,
        close: None,
        client_ids: Arc::default(),
        conn: conn.counted.clone(),
    };
    let mut ex = Exchange::start(proxy.state.clone(), &proxy.ids, &caller, &snap.version, parts);
    (ex.record.mode, ex.record.connect_host) = (ProxyMode::Forward, asked);
    let f = ex.refused(f);
    let mut resp = respond::failure(&f);
    resp.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    ex.refuse(resp)
}

/// Once the `200` is sent: TLS with the leaf for the tunnel's host (the client's SNI, if it
/// sends one, must name that host), then HTTP until the tunnel ends, is idle for
/// `idle`, or shutdown ends it.
async fn serve_tunnel(
    upgrade: OnUpgrade,
    tunnel: Arc<Tunnel>,
    tls: Arc<rustls::ServerConfig>,
    proxy: &Arc<Proxy>,
    conn: &Arc<Accepted>,
    ends: &Ends,
    idle: Duration,
) {
    let upgraded = tokio::select! {
        u = upgrade => u,
        _ = ends.kill.cancelled() => return,
    };
    let Ok(upgraded) = upgraded else { return };
    let moved = Arc::new(AtomicU64::new(0));
    let io = Active { io: TokioIo::new(upgraded), moved: moved.clone() };
    let host = tunnel.host();
    let sni = |hello: &rustls::server::ClientHello<'_>| {
        if hello.server_name().is_some_and(|sni| sni != host) {
            proxy.state.metrics.connect("sni_mismatch");
            tracing::debug!(peer = %conn.peer, "the TLS server name is not the CONNECT host");
            return None;
        }
        Some(tls)
    };
    let stream = tokio::select! {
        s = listener::handshake(conn, io, sni) => s,
        _ = ends.kill.cancelled() => None,
    };
    let Some(stream) = stream else { return };
    // This tunnel's own `drain`: cancelled by shutdown, or by a request that finds the tunnel's
    // basis gone (its host no longer intercepted, its token no longer good).
    let ends = Ends { drain: ends.drain.child_token(), ..ends.clone() };
    let caller = Caller {
        ip: conn.ip,
        cut: conn.cut.clone(),
        tunnel: Some(tunnel),
        close: Some(ends.drain.clone()),
        client_ids: Arc::default(),
        conn: conn.counted.clone(),
    };
    tokio::select! {
        _ = listener::http(stream, caller, conn, proxy, &ends, idle) => {}
        _ = idle_for(&moved, idle) => tracing::debug!(peer = %conn.peer, "tunnel idle; closed"),
    }
}

/// Returns once no byte has moved for a whole period.
async fn idle_for(moved: &AtomicU64, every: Duration) {
    let mut seen = moved.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(every).await;
        let now = moved.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// A tunnel's place among `forward.max_tunnels`, held while it is open.
struct TunnelSlot {
    count: Arc<AtomicUsize>,
    open: prometheus_client::metrics::gauge::Gauge,
}

impl TunnelSlot {
    /// One of `max` places, if one is free.
    fn take(proxy: &Proxy, max: usize) -> Option<TunnelSlot> {
        let count = &proxy.tunnels;
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).ok()?;
        proxy.state.metrics.tunnels_open.inc();
        Some(TunnelSlot { count: count.clone(), open: proxy.state.metrics.tunnels_open.clone() })
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.open.dec();
    }
}

/// An I/O stream that counts its reads and writes, so that an idle tunnel can be told.
struct Active<IO> {
    io: IO,
    moved: Arc<AtomicU64>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Active<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if polled.is_ready() {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Active<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if polled.is_ready() {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
