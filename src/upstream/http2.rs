//! HTTP/2 to an upstream: a few multiplexed connections per upstream and egress address, each
//! driven by a task of its own, while each call is sent and awaited from the caller's task
//! (hyper-util's pooled client would add, per call, a pool check-out, a channel to hyper's
//! dispatch task and a spawned task awaiting the answer).
//!
//! Sharing a connection must not let one service slow another down, so:
//! - a call goes on the first connection with a free stream, counting keyward's own calls
//!   against the upstream's stream limit (and `STREAMS_PER_CONNECTION`); when every connection
//!   is full a new one is opened (up to `MAX_CONNECTIONS`), so nobody queues behind the
//!   upstream's limit while another connection could carry the call;
//! - a service has at most `streams_per_service` calls in flight per upstream and egress
//!   address: past that its own calls wait, never another service's;
//! - the connection's receive window covers every stream's window at once, so answers left
//!   unread take no credit another stream needs.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use h2::Ping;
use h2::client::{Connection, SendRequest};
use rustls::pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::BoxError;

type Conn = Connection<TlsStream<TcpStream>, Bytes>;

/// While calls are in flight, a ping this often finds out that the connection died (a NAT
/// or load balancer dropping it silently) instead of calls hanging.
const PING_EVERY: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that carried no call for this many ping periods is closed.
const IDLE_PERIODS: u32 = 5;
/// Unread answers count against the connection window: each call's share is small, and the
/// connection's is all of them together, so that slow readers cannot stall the other calls.
const STREAM_WINDOW: u32 = 256 * 1024;
/// Calls keyward puts on one connection at most (fewer if the upstream allows fewer).
const STREAMS_PER_CONNECTION: usize = 100;
const CONNECTION_WINDOW: u32 = STREAM_WINDOW * STREAMS_PER_CONNECTION as u32;
/// Connections per upstream and egress address; past it calls wait for a stream.
const MAX_CONNECTIONS: usize = 8;

pub struct H2 {
    tls: TlsConnector,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    egress: Option<IpAddr>,
    /// Dialled instead of resolving `host`.
    connect_to: Option<SocketAddr>,
    connect_timeout: Duration,
    live: Arc<Mutex<Vec<Live>>>,
    connecting: tokio::sync::Mutex<()>,
    /// Each service's calls in flight, at most `streams_per_service` (by service name: the
    /// pool outlives a reload that renumbers services).
    services: Mutex<foldhash::HashMap<Arc<str>, Arc<Semaphore>>>,
    streams_per_service: usize,
    /// Connection attempts that failed: a call that waited behind a failed attempt fails with
    /// it instead of queueing another (a blackholed upstream would cost each call a timeout).
    /// An attempt abandoned by its caller (gone, or out of time) counts for nothing.
    failures: AtomicU64,
    generation: AtomicU64,
    /// The upstream chose HTTP/1.1 by ALPN: calls go to the pooled HTTP/1.1 client instead.
    http1_only: AtomicBool,
}

#[derive(Clone)]
struct Live {
    generation: u64,
    tx: SendRequest<Bytes>,
    load: Arc<Load>,
}

/// A connection's calls: in flight now, and started so far (to tell idle from busy).
#[derive(Default)]
struct Load {
    in_flight: AtomicUsize,
    started: AtomicU64,
}

/// A sender ready for one call, counted in flight until the call's answer is dropped.
pub struct Ready {
    tx: SendRequest<Bytes>,
    _call: InFlight,
}

/// A call's place: on its connection, and in its service's share.
struct InFlight {
    load: Arc<Load>,
    permit: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    /// For a call whose stream `Live::claim` took.
    fn new(load: &Arc<Load>, permit: OwnedSemaphorePermit) -> InFlight {
        load.started.fetch_add(1, Ordering::Relaxed);
        InFlight { load: load.clone(), permit: Some(permit) }
    }
}

impl InFlight {
    /// Give back the stream, keep the service's place (to try another connection).
    fn release(mut self) -> OwnedSemaphorePermit {
        self.permit.take().expect("taken only here")
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl H2 {
    /// `tls` must offer `h2` (and `http/1.1`, so that an HTTP/1.1-only upstream is told apart).
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        host: &str,
        port: u16,
        egress: Option<IpAddr>,
        dial: super::Dialling,
        streams_per_service: usize,
    ) -> Result<H2, super::UpstreamError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(bare.to_string())
            .map_err(|source| super::UpstreamError::ServerName { host: host.to_string(), source })?;
        Ok(H2 {
            tls: TlsConnector::from(tls),
            host: bare.to_string(),
            port,
            server_name,
            egress,
            connect_to: dial.connect_to,
            connect_timeout: dial.connect_timeout,
            live: Arc::default(),
            connecting: tokio::sync::Mutex::new(()),
            services: Mutex::default(),
            streams_per_service,
            failures: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            http1_only: AtomicBool::new(false),
        })
    }

    /// A sender ready for one more call of `service`, on a connection with a free stream
    /// (opened if none has one); `None` when the upstream speaks only HTTP/1.1. A connection
    /// found dead before the call was handed to it is replaced once.
    pub async fn sender(&self, service: &Arc<str>) -> Result<Option<Ready>, BoxError> {
        if self.http1_only.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let share = self.share(service);
        // Past its share a service waits for its own calls to end (within the call's timeout).
        let permit = match share.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => share.acquire_owned().await.map_err(|_| "closed")?,
        };
        let mut permit = Some(permit);
        for _ in 0..2 {
            let Some(live) = self.pick().await? else { return Ok(None) };
            let call = InFlight::new(&live.load, permit.take().expect("one try per permit"));
            match live.tx.ready().await {
                Ok(tx) => return Ok(Some(Ready { tx, _call: call })),
                Err(e) => {
                    tracing::debug!(host = %self.host, error = super::causes(&e), "upstream HTTP/2 connection is gone");
                    self.forget(live.generation);
                    permit = Some(call.release());
                }
            }
        }
        Err("no usable HTTP/2 connection to the upstream".into())
    }

    fn share(&self, service: &Arc<str>) -> Arc<Semaphore> {
        let mut shares = self.services.lock().expect("not poisoned");
        if let Some(s) = shares.get(service) {
            return s.clone();
        }
        // Bounded by the services configured (a reload may add names; their shares are small).
        let s = Arc::new(Semaphore::new(self.streams_per_service));
        shares.insert(service.clone(), s.clone());
        s
    }

    /// The first connection with a free stream; else a new one; else, with `MAX_CONNECTIONS`
    /// open, the least loaded (h2 queues the call until a stream frees).
    async fn pick(&self) -> Result<Option<Live>, BoxError> {
        match self.with_room() {
            Ok(live) => Ok(Some(live)),
            // Boxed: connecting is rare, and its state (DNS, TCP, TLS, handshake: kilobytes)
            // would otherwise be carried, and moved, by every call's future.
            Err(_) => Box::pin(self.connect_once()).await,
        }
    }

    /// A connection with a free stream, claimed; or (`Err`) whether another may be opened.
    /// Under the pool's lock, so that two calls cannot both take a connection's last stream.
    fn with_room(&self) -> Result<Live, bool> {
        let live = self.live.lock().expect("not poisoned");
        match live.iter().find(|l| l.load.in_flight.load(Ordering::Relaxed) < l.limit()) {
            Some(l) => Ok(l.claim()),
            None => Err(live.len() < MAX_CONNECTIONS),
        }
    }

    /// With `MAX_CONNECTIONS` open and all full: the least loaded, claimed (h2 queues the
    /// call until one of its streams ends).
    fn least_loaded(&self) -> Option<Live> {
        let live = self.live.lock().expect("not poisoned");
        live.iter().min_by_key(|l| l.load.in_flight.load(Ordering::Relaxed)).map(Live::claim)
    }

    async fn connect_once(&self) -> Result<Option<Live>, BoxError> {
        // One connection attempt at a time; the calls waiting behind it use its result.
        let before = self.failures.load(Ordering::Relaxed);
        let _one = self.connecting.lock().await;
        match self.with_room() {
            Ok(live) => return Ok(Some(live)),
            Err(false) => return Ok(self.least_loaded()),
            Err(true) => {}
        }
        if self.http1_only.load(Ordering::Relaxed) {
            return Ok(None);
        }
        if self.failures.load(Ordering::Relaxed) != before {
            return Err("the connection attempt this call waited for failed".into());
        }
        let (tx, conn) = match self.handshake().await {
            Ok(Some(both)) => both,
            Ok(None) => {
                self.http1_only.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let live = Live { generation, tx, load: Arc::default() };
        self.live.lock().expect("not poisoned").push(live.clone());
        tokio::spawn(drive(conn, Arc::downgrade(&self.live), generation, live.load.clone()));
        Ok(Some(live.claim()))
    }

    /// A new HTTP/2 connection; `None` if the upstream did not choose `h2`.
    async fn handshake(&self) -> Result<Option<(SendRequest<Bytes>, Conn)>, BoxError> {
        let Some(tls) = self.connect().await? else { return Ok(None) };
        let both = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(tls)
            .await?;
        Ok(Some(both))
    }

    fn forget(&self, generation: u64) {
        forget(&self.live, generation);
    }

    /// TCP (from the egress address) and TLS, each address in turn, each try bounded by the
    /// connect timeout; `None` if the upstream did not choose `h2`.
    async fn connect(&self) -> Result<Option<TlsStream<TcpStream>>, BoxError> {
        let addrs: Vec<SocketAddr> = match self.connect_to {
            Some(addr) => vec![addr],
            None => tokio::time::timeout(
                self.connect_timeout,
                tokio::net::lookup_host((self.host.as_str(), self.port)),
            )
            .await
            .map_err(|_| format!("resolving {} timed out", self.host))??
            .collect(),
        };
        let mut last: BoxError = format!("{} resolves to no usable address", self.host).into();
        for addr in addrs.into_iter().filter(|a| self.egress.is_none_or(|ip| ip.is_ipv4() == a.is_ipv4())) {
            let attempt = async {
                let tcp = self.tcp(addr).await?;
                self.tls.connect(self.server_name.clone(), tcp).await
            };
            match tokio::time::timeout(self.connect_timeout, attempt).await {
                Ok(Ok(tls)) => return Ok((tls.get_ref().1.alpn_protocol() == Some(b"h2")).then_some(tls)),
                Ok(Err(e)) => last = e.into(),
                Err(_) => last = format!("connecting to {addr} timed out").into(),
            }
        }
        Err(last)
    }

    async fn tcp(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(ip) = self.egress {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        socket.set_keepalive(true)?;
        let tcp = socket.connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(tcp)
    }
}

fn forget(live: &Mutex<Vec<Live>>, generation: u64) {
    live.lock().expect("not poisoned").retain(|l| l.generation != generation);
}

impl Live {
    /// Streams keyward puts on this connection: the upstream's limit, at most ours.
    fn limit(&self) -> usize {
        self.tx.current_max_send_streams().min(STREAMS_PER_CONNECTION)
    }

    /// Count one more call in flight on it (`InFlight` gives it back).
    fn claim(&self) -> Live {
        self.load.in_flight.fetch_add(1, Ordering::Relaxed);
        self.clone()
    }
}

/// Drive one connection until it fails, goes away, misses a ping or stays idle; then make
/// sure no new call picks it. Holds only a weak reference: once the upstream is dropped (a
/// reload that changed it), h2 closes the connection when its last call is done.
async fn drive(mut conn: Conn, live: Weak<Mutex<Vec<Live>>>, generation: u64, load: Arc<Load>) {
    let mut ping = conn.ping_pong().expect("the first call takes it");
    let keepalive = async {
        let (mut idle, mut seen) = (0, load.started.load(Ordering::Relaxed));
        loop {
            tokio::time::sleep(PING_EVERY).await;
            let now = load.started.load(Ordering::Relaxed);
            if load.in_flight.load(Ordering::Relaxed) == 0 && std::mem::replace(&mut seen, now) == now {
                idle += 1;
                if idle >= IDLE_PERIODS {
                    return "idle";
                }
                continue;
            }
            idle = 0;
            match tokio::time::timeout(PING_TIMEOUT, ping.ping(Ping::opaque())).await {
                Ok(Ok(_)) => {}
                _ => return "missed a ping",
            }
        }
    };
    let why = tokio::select! {
        end = &mut conn => match end {
            Ok(()) => "closed",
            Err(e) if e.is_go_away() => "went away",
            Err(_) => "failed",
        },
        why = keepalive => why,
    };
    tracing::debug!(why, "upstream HTTP/2 connection ends");
    if let Some(slot) = live.upgrade() {
        forget(&slot, generation);
    }
    if why == "idle" {
        // No new call can pick it now: h2 closes it cleanly once a call that just started ends.
        let _ = conn.await;
    }
}

mod call;
#[cfg(test)]
mod tests;

pub use call::{RecvBody, send};
