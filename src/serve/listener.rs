//! A connection's life once accepted (`accept`): on the reverse-proxy port handshake TLS and
//! serve HTTP/1.1 and HTTP/2 with every caller-facing timeout (tunnels do the same inside,
//! `forward`), close politely when shutdown drains, record what hyper refused to parse.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::snapshot::{Limits, Timeouts};
use crate::serve::admission::{Connection, Unproven};
use crate::serve::exchange::Caller;
use crate::serve::proxy::Proxy;
use crate::serve::stall::{StallGuard, StreamCount, StreamExec};

/// An accepted connection: who, its admission, and the limits it started under.
pub struct Accepted {
    pub ip: IpAddr,
    pub peer: SocketAddr,
    /// Raised when `timeouts.client_send` cut the connection off.
    pub cut: Arc<AtomicBool>,
    /// Counted as open until every task serving it (its tunnel too) is done.
    pub counted: Arc<Connection>,
    pub timeouts: Timeouts,
    pub limits: Limits,
}

/// Serve a connection until it ends, or until it is closed for proving nothing: evicted to make
/// room (`admission`), or unproven with no request begun for `idle` (`timeouts.unproven_idle`).
/// Dropping what serves it ends its exchanges, which are recorded.
pub async fn guarded(serving: impl Future<Output = ()>, conn: &Connection, idle: Duration, peer: SocketAddr) {
    tokio::pin!(serving);
    tokio::select! {
        _ = &mut serving => return,
        watched = conn.watch_unproven(idle) => if let Unproven::Closed(why) = watched {
            return tracing::debug!(%peer, why, "connection closed");
        },
    }
    // Proven: nothing more to watch, so that its requests wake nothing else.
    serving.await
}

/// A connection to the reverse-proxy listener: TLS, then HTTP, with a `close` of its own that
/// the request path uses to end it politely (an unproven caller refused too often).
pub async fn reverse(tcp: StallGuard<TcpStream>, conn: Accepted, proxy: Arc<Proxy>, ends: Ends) {
    let Some(tls) = proxy.state.snapshot.load().tls.clone() else {
        return tracing::error!("no TLS configuration loaded; refusing connection");
    };
    let Some(stream) = handshake(&conn, tcp, |_| Some(tls)).await else { return };
    let ends = Ends { drain: ends.drain.child_token(), ..ends };
    let caller = Caller {
        ip: conn.ip,
        cut: conn.cut.clone(),
        tunnel: None,
        close: Some(ends.drain.clone()),
        client_ids: Arc::default(),
        conn: conn.counted.clone(),
    };
    http(stream, caller, &conn, &proxy, &ends, conn.timeouts.request_head).await;
}

/// A TLS handshake. First the whole ClientHello, within `timeouts.client_hello`, holding no
/// turn: a connection that is silent, or sends its hello a byte at a time, holds nothing but
/// itself. `config` answers the hello with a configuration, or refuses it (`None`). Then, in
/// one of the admission's turns, the rest within `timeouts.handshake`.
pub async fn handshake<IO>(
    conn: &Accepted,
    io: IO,
    config: impl FnOnce(&rustls::server::ClientHello<'_>) -> Option<Arc<rustls::ServerConfig>>,
) -> Option<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let peer = conn.peer;
    let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(conn.timeouts.client_hello, hello).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS ClientHello unreadable");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "no TLS ClientHello in time (timeouts.client_hello)");
            return None;
        }
    };
    let tls = config(&start.client_hello())?;
    let rest = async {
        let _turn = conn.counted.turn(&conn.limits).await;
        start.into_stream(tls).await
    };
    match tokio::time::timeout(conn.timeouts.handshake, rest).await {
        Ok(Ok(s)) => {
            conn.counted.active();
            Some(s)
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Serve HTTP/1.1 or HTTP/2, as ALPN chose, on a TLS stream until it ends, with every
/// caller-facing timeout; an HTTP/2 connection with no stream for `idle` is closed.
pub async fn http<IO>(
    stream: TlsStream<IO>,
    caller: Caller,
    conn: &Accepted,
    proxy: &Arc<Proxy>,
    ends: &Ends,
    idle: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (timeouts, limits, ip, peer) = (conn.timeouts, conn.limits, conn.ip, conn.peer);
    // The handshake verified the client certificate, if one was sent: who it names.
    let client_ids =
        stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(crate::control::tls::client_ids);
    let caller = Caller { client_ids: client_ids.unwrap_or_default().into(), ..caller };
    let handler = proxy.clone();
    // Boxed: hyper's HTTP/1.1 dispatcher keeps room for the service's future for the
    // connection's whole life, so an idle connection holds a pointer, not the request path's
    // state (kilobytes, times every idle keep-alive connection).
    let svc = service_fn(move |req| Box::pin(handler.clone().handle(caller.clone(), req)));
    // ALPN has chosen the protocol: no need to sniff the first bytes for it.
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let served = if h2 {
        let streams = StreamExec::new(timeouts.client_send, ends.tasks.clone(), ends.kill.clone());
        let idle = Idle { streams: streams.count(), every: idle };
        let mut builder = http2::Builder::new(streams);
        builder
            .timer(TokioTimer::new())
            .max_header_list_size(limits.max_header_bytes as u32)
            .max_concurrent_streams(limits.max_streams_per_connection)
            .keep_alive_interval(timeouts.ping_interval)
            .keep_alive_timeout(timeouts.ping_timeout);
        drive(builder.serve_connection(io, svc), ends, Some(idle)).await
    } else {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.request_head)
            .max_buf_size(limits.max_header_bytes);
        drive(builder.serve_connection(io, svc), ends, None).await
    };
    if let Some(Err(e)) = served {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
        if let Some((status, reason)) = parser_refusal(&e) {
            proxy.record_unparsed(ip, status, reason);
        }
    }
}

/// How connections end: `drain` asks each to close politely, `kill` ends what is left, and
/// `tasks` (connections and HTTP/2 streams) says when all are gone.
#[derive(Clone, Default)]
pub struct Ends {
    pub tasks: TaskTracker,
    pub drain: CancellationToken,
    pub kill: CancellationToken,
}

/// An HTTP/2 connection's open streams, checked every `every`: one that has had none open
/// and none started for a whole period is idle, and closed (`GOAWAY`). Pings do not count:
/// a client answers them by itself.
pub struct Idle {
    streams: Arc<StreamCount>,
    every: Duration,
}

impl Idle {
    async fn expired(&self) {
        let mut seen = self.streams.started();
        loop {
            tokio::time::sleep(self.every).await;
            let now = self.streams.started();
            if self.streams.open() == 0 && now == seen {
                return;
            }
            seen = now;
        }
    }
}

/// Serve one connection until it ends, closing it politely when shutdown drains or it is
/// idle; `None` if shutdown ended it.
pub async fn drive<C>(conn: C, ends: &Ends, idle: Option<Idle>) -> Option<Result<(), C::Error>>
where
    C: GracefulConnection,
{
    tokio::pin!(conn);
    let idle_expired = async {
        match &idle {
            Some(i) => i.expired().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(idle_expired);
    let mut closing = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => return Some(served),
            _ = ends.drain.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = &mut idle_expired, if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = ends.kill.cancelled() => return None,
        }
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
