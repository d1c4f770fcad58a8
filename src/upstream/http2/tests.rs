//! The pool against a real HTTP/2 upstream in the test's process: h2's server behind rustls on
//! a loopback port, with a certificate made by rcgen (the pool speaks only TLS). Each test
//! synchronises on what the upstream or the pool reports; `within` is only a safety net.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response};
use http_body_util::BodyExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::{H2, MAX_CONNECTIONS, RecvBody, STREAMS_PER_CONNECTION, send};
use crate::upstream::Body;
use crate::upstream::Dialling;

/// How the upstream treats a TCP connection, by its number (from 0).
#[derive(Clone, Copy)]
enum Treat {
    /// TLS, then HTTP/2 (if the client chose it).
    Serve,
    /// Closed at once: the client's TLS handshake fails.
    Close,
    /// Held open, never answered: the client's TLS handshake waits.
    Stall,
}

struct Options {
    alpn: &'static [&'static [u8]],
    /// SETTINGS_MAX_CONCURRENT_STREAMS; h2's default (none) when `None`.
    max_streams: Option<u32>,
    treat: fn(usize) -> Treat,
    /// Answer every call at once (200, no body) instead of handing it to the test.
    auto: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { alpn: &[b"h2", b"http/1.1"], max_streams: None, treat: |_| Treat::Serve, auto: false }
    }
}

/// A call as the upstream received it, for the test to answer (or not).
struct Call {
    /// The number of the connection it came on.
    conn: usize,
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
}

struct Upstream {
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    /// TCP connections accepted so far.
    accepted: watch::Receiver<usize>,
    calls: mpsc::UnboundedReceiver<Call>,
}

impl Upstream {
    async fn start(opts: Options) -> Upstream {
        // A certificate made here (rcgen), trusted as its own root: `upstream` sits below
        // `control`, whose development PKI it does not reach for.
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert_pem, key_pem) = (made.cert.pem(), made.signing_key.serialize_pem());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()).unwrap();
        let mut client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        // As `Upstream::build` sets it up: h2 first, http/1.1 to tell an HTTP/1.1 upstream apart.
        client.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let chain = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        server.alpn_protocols = opts.alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (count, accepted) = watch::channel(0);
        let (calls_tx, calls) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut stalled = Vec::new();
            for n in 0.. {
                let Ok((tcp, _)) = listener.accept().await else { return };
                count.send_replace(n + 1);
                match (opts.treat)(n) {
                    Treat::Close => drop(tcp),
                    Treat::Stall => stalled.push(tcp),
                    Treat::Serve => {
                        tokio::spawn(serve(
                            tcp,
                            acceptor.clone(),
                            n,
                            opts.max_streams,
                            opts.auto,
                            calls_tx.clone(),
                        ));
                    }
                }
            }
        });
        Upstream { addr, client: Arc::new(client), accepted, calls }
    }

    fn pool(&self, streams_per_service: usize) -> H2 {
        let dial = Dialling { connect_to: Some(self.addr), connect_timeout: Duration::from_secs(2) };
        H2::new(self.client.clone(), "localhost", self.addr.port(), None, dial, streams_per_service).unwrap()
    }

    async fn next(&mut self) -> Call {
        within(self.calls.recv()).await.expect("the upstream runs")
    }

    fn accepted(&self) -> usize {
        *self.accepted.borrow()
    }
}

async fn serve(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    conn: usize,
    max_streams: Option<u32>,
    auto: bool,
    calls: mpsc::UnboundedSender<Call>,
) {
    let _ = tcp.set_nodelay(true);
    let Ok(tls) = acceptor.accept(tcp).await else { return };
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return;
    }
    let mut builder = h2::server::Builder::new();
    // The strictest rapid-reset guard: a stream reset before the server took it up closes
    // the whole connection (ENHANCE_YOUR_CALM), as servers under attack do.
    builder.max_pending_accept_reset_streams(0);
    if let Some(max) = max_streams {
        builder.max_concurrent_streams(max);
    }
    let Ok(mut h2) = builder.handshake::<_, Bytes>(tls).await else { return };
    while let Some(Ok((req, mut respond))) = h2.accept().await {
        if req.uri().path() == "/go-away" {
            // GOAWAY, buffered by the next poll: before any answer to this call.
            h2.graceful_shutdown();
        }
        if auto {
            let _ = respond.send_response(Response::new(()), true);
        } else if calls.send(Call { conn, req, respond }).is_err() {
            return;
        }
    }
}

/// A safety net only: every wait below ends on an event long before this.
async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3), f).await.expect("timed out (safety net)")
}

/// Polls `f` once: whether it is still waiting.
async fn waits<F: Future>(f: &mut Pin<Box<F>>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx).is_pending())).await
}

/// Waits for the upstream's side of a stream to be reset by the client.
async fn reset_of(respond: &mut SendResponse<Bytes>) -> Reason {
    within(std::future::poll_fn(|cx| respond.poll_reset(cx))).await.unwrap()
}

/// Waits for the client to reset a stream the upstream answered, its body still open.
async fn body_reset_of(stream: &mut SendStream<Bytes>) -> Reason {
    within(std::future::poll_fn(|cx| stream.poll_reset(cx))).await.unwrap()
}

/// Whether the client has reset the upstream's side of a stream (by the time of this poll).
async fn is_reset(respond: &mut SendResponse<Bytes>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(respond.poll_reset(cx).is_ready())).await
}

fn svc(name: &str) -> Arc<str> {
    Arc::from(name)
}

fn empty() -> Body {
    http_body_util::Empty::new().map_err(|e| match e {}).boxed()
}

fn get() -> Request<Body> {
    Request::get("https://localhost/v1/charges").body(empty()).unwrap()
}

fn in_5s() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// Each connection's calls in flight, in the pool's order.
fn in_flight(h2: &H2) -> Vec<usize> {
    h2.live.lock().unwrap().iter().map(|l| l.load.in_flight.load(Ordering::Relaxed)).collect()
}

fn free(h2: &H2, service: &Arc<str>) -> usize {
    h2.share(service).available_permits()
}

/// A call answered with a head whose body stays open: both ends of it.
struct Open {
    resp: Response<RecvBody>,
    stream: SendStream<Bytes>,
    conn: usize,
}

async fn open_call(h2: &H2, service: &Arc<str>, up: &mut Upstream) -> Open {
    let client = async {
        let ready = h2.sender(service).await.unwrap().expect("HTTP/2");
        send(ready, get(), in_5s()).await.unwrap()
    };
    let server = async {
        let mut c = up.next().await;
        (c.conn, c.respond.send_response(Response::new(()), false).unwrap())
    };
    let (resp, (conn, stream)) = within(async { tokio::join!(client, server) }).await;
    Open { resp, stream, conn }
}

/// A call to an `auto` upstream.
async fn auto_call(h2: &H2, service: &Arc<str>) -> Response<RecvBody> {
    let ready = within(h2.sender(service)).await.unwrap().expect("HTTP/2");
    within(send(ready, get(), in_5s())).await.unwrap()
}

// Stream shares.

#[tokio::test]
async fn a_service_past_its_share_waits_for_its_own_calls_not_another_s() {
    let mut up = Upstream::start(Options::default()).await;
    let h2 = up.pool(2);
    let (a, b) = (svc("a"), svc("b"));
    let a1 = open_call(&h2, &a, &mut up).await;
    let a2 = open_call(&h2, &a, &mut up).await;
    let mut a3 = Box::pin(h2.sender(&a));
    assert!(waits(&mut a3).await, "a third call of `a` waits for one of its own");
    // `b` gets its whole share meanwhile, on the same connection.
    let b1 = open_call(&h2, &b, &mut up).await;
    let b2 = open_call(&h2, &b, &mut up).await;
    assert_eq!([a1.conn, a2.conn, b1.conn, b2.conn], [0; 4]);
    assert_eq!((free(&h2, &a), free(&h2, &b)), (0, 0));
    assert!(waits(&mut a3).await, "`b`'s calls ending or not, `a` waits for its own");
    drop(b1);
    assert!(waits(&mut a3).await, "`b`'s calls ending or not, `a` waits for its own");
    drop(a1);
    let a3 = within(a3).await.unwrap().expect("HTTP/2");
    assert_eq!(in_flight(&h2), [3]);
    drop((a2, a3, b2));
    assert_eq!(in_flight(&h2), [0]);
    assert_eq!((free(&h2, &a), free(&h2, &b)), (2, 2));
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn a_share_is_held_until_the_answer_is_dropped_even_once_read() {
    let mut up = Upstream::start(Options::default()).await;
    let h2 = up.pool(1);
    let a = svc("a");
    let ready = within(h2.sender(&a)).await.unwrap().unwrap();
    assert_eq!(free(&h2, &a), 0, "a sender holds its service's place");
    drop(ready);
    assert_eq!((free(&h2, &a), in_flight(&h2)), (1, vec![0]), "an unused sender gives it back");

    let mut open = open_call(&h2, &a, &mut up).await;
    open.stream.send_data(Bytes::from_static(b"ok"), true).unwrap();
    let body = open.resp.body_mut();
    let chunk = within(body.frame()).await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(chunk, "ok");
    assert!(within(body.frame()).await.is_none(), "the answer ends");
    assert_eq!(free(&h2, &a), 0, "read to its end, the answer is still the service's");
    drop(open);
    assert_eq!((free(&h2, &a), in_flight(&h2)), (1, vec![0]));
}

#[tokio::test]
async fn an_answer_dropped_early_gives_its_share_back_and_cancels_its_stream() {
    let mut up = Upstream::start(Options::default()).await;
    let h2 = up.pool(1);
    let a = svc("a");
    let client = async {
        let ready = h2.sender(&a).await.unwrap().unwrap();
        send(ready, get(), in_5s()).await.unwrap()
    };
    let server = async {
        let mut c = up.next().await;
        let mut stream = c.respond.send_response(Response::new(()), false).unwrap();
        stream.send_data(Bytes::from_static(b"first of many"), false).unwrap();
        stream
    };
    let (mut resp, mut stream) = within(async { tokio::join!(client, server) }).await;
    let chunk = within(resp.body_mut().frame()).await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(chunk, "first of many");
    drop(resp);
    assert_eq!((free(&h2, &a), in_flight(&h2)), (1, vec![0]), "given back as the answer is dropped");
    assert_eq!(body_reset_of(&mut stream).await, Reason::CANCEL, "the upstream is told to stop sending");
    // The connection is still good for the next call.
    let next = open_call(&h2, &a, &mut up).await;
    assert_eq!((next.conn, up.accepted()), (0, 1));
}

#[tokio::test]
async fn a_share_comes_back_when_the_call_fails() {
    let mut up = Upstream::start(Options::default()).await;
    let h2 = up.pool(1);
    let a = svc("a");
    // The upstream refuses the call before answering.
    let client = async {
        let ready = h2.sender(&a).await.unwrap().unwrap();
        send(ready, get(), in_5s()).await
    };
    let server = async { up.next().await.respond.send_reset(Reason::INTERNAL_ERROR) };
    let (answer, ()) = within(async { tokio::join!(client, server) }).await;
    assert!(answer.is_err());
    assert_eq!((free(&h2, &a), in_flight(&h2)), (1, vec![0]), "a failed call gives its place back");
    // The upstream fails the answer's body half-way.
    let mut open = open_call(&h2, &a, &mut up).await;
    open.stream.send_reset(Reason::INTERNAL_ERROR);
    assert!(within(open.resp.body_mut().frame()).await.unwrap().is_err());
    assert_eq!(free(&h2, &a), 0, "until the failed answer is dropped");
    drop(open);
    assert_eq!((free(&h2, &a), in_flight(&h2)), (1, vec![0]));
}

#[tokio::test]
async fn a_request_body_goes_out_while_the_answer_is_awaited() {
    let mut up = Upstream::start(Options::default()).await;
    let h2 = up.pool(1);
    let a = svc("a");
    let client = async {
        let ready = h2.sender(&a).await.unwrap().unwrap();
        let body = http_body_util::Full::new(Bytes::from_static(b"amount=100")).map_err(|e| match e {});
        send(ready, Request::post("https://localhost/v1/charges").body(body.boxed()).unwrap(), in_5s()).await
    };
    let server = async {
        let c = up.next().await;
        let (_, mut body) = c.req.into_parts();
        let mut got = Vec::new();
        while let Some(chunk) = body.data().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        let mut respond = c.respond;
        respond.send_response(Response::new(()), true).unwrap();
        got
    };
    let (answer, got) = within(async { tokio::join!(client, server) }).await;
    assert!(answer.is_ok());
    assert_eq!(got, b"amount=100", "the upstream answers only once it has the whole body");
}

// Opening connections.

#[tokio::test]
async fn the_first_call_opens_a_connection_and_the_next_share_it() {
    let up = Upstream::start(Options { auto: true, ..Options::default() }).await;
    let h2 = up.pool(4);
    assert_eq!((up.accepted(), in_flight(&h2).len()), (0, 0), "nothing is opened before a call");
    drop(auto_call(&h2, &svc("a")).await);
    assert_eq!((up.accepted(), in_flight(&h2)), (1, vec![0]));
    for service in ["a", "b", "a", "c", "b"] {
        drop(auto_call(&h2, &svc(service)).await);
    }
    assert_eq!((up.accepted(), in_flight(&h2)), (1, vec![0]));
}

#[tokio::test]
async fn concurrent_first_calls_open_one_connection() {
    let up = Upstream::start(Options { auto: true, ..Options::default() }).await;
    let h2 = up.pool(5);
    let services: Vec<Arc<str>> = (0..4).map(|i| svc(&format!("s{i}"))).collect();
    // 20 calls at once, none opened yet: one of them connects, the others wait and use it.
    let answers = within(join_all((0..20).map(|i| auto_call(&h2, &services[i % 4])))).await;
    assert_eq!(up.accepted(), 1);
    assert_eq!(in_flight(&h2), [20], "all on the one connection (its limit is {STREAMS_PER_CONNECTION})");
    drop(answers);
    assert_eq!(in_flight(&h2), [0]);
}

#[tokio::test]
async fn a_full_connection_gets_another_and_calls_go_back_to_the_first_with_room() {
    let mut up = Upstream::start(Options { max_streams: Some(2), ..Options::default() }).await;
    let h2 = up.pool(10);
    let a = svc("a");
    let first = open_call(&h2, &a, &mut up).await;
    // Answered: the upstream's SETTINGS came before, the pool counts with its limit.
    assert_eq!(h2.live.lock().unwrap()[0].limit(), 2);
    let second = open_call(&h2, &a, &mut up).await;
    assert_eq!((first.conn, second.conn, up.accepted()), (0, 0, 1));
    let third = open_call(&h2, &a, &mut up).await;
    assert_eq!((third.conn, up.accepted()), (1, 2), "the first is full: a second is opened");
    assert_eq!(in_flight(&h2), [2, 1]);
    drop(first);
    let fourth = open_call(&h2, &a, &mut up).await;
    assert_eq!((fourth.conn, up.accepted()), (0, 2), "the first connection with room");
    assert_eq!(in_flight(&h2), [2, 1]);
    drop((second, third, fourth));
}

#[tokio::test]
async fn our_own_limit_per_connection_applies_under_the_upstream_s() {
    let up = Upstream::start(Options::default()).await;
    let h2 = up.pool(STREAMS_PER_CONNECTION + 1);
    let a = svc("a");
    // Senders count in flight as calls do (no request needed to fill a connection).
    let mut held = Vec::new();
    for _ in 0..STREAMS_PER_CONNECTION {
        held.push(within(h2.sender(&a)).await.unwrap().unwrap());
    }
    assert_eq!((up.accepted(), in_flight(&h2)), (1, vec![STREAMS_PER_CONNECTION]));
    held.push(within(h2.sender(&a)).await.unwrap().unwrap());
    assert_eq!((up.accepted(), in_flight(&h2)), (2, vec![STREAMS_PER_CONNECTION, 1]));
}

#[tokio::test]
async fn connections_stop_at_max_connections_and_calls_then_queue() {
    let mut up = Upstream::start(Options { max_streams: Some(1), ..Options::default() }).await;
    let h2 = up.pool(100);
    let a = svc("a");
    let mut open = Vec::new();
    for n in 0..MAX_CONNECTIONS {
        let call = open_call(&h2, &a, &mut up).await;
        assert_eq!(call.conn, n, "each full after one call: a new one each time");
        open.push(call);
    }
    // All full and no more may be opened: the least loaded (the first) takes the call, and
    // h2 holds it back until one of that connection's streams ends.
    let ready = within(h2.sender(&a)).await.unwrap().unwrap();
    assert_eq!(up.accepted(), MAX_CONNECTIONS);
    assert_eq!(in_flight(&h2)[0], 2);
    let client = send(ready, get(), in_5s());
    let server = async {
        drop(open.remove(0));
        let mut c = up.next().await;
        c.respond.send_response(Response::new(()), true).unwrap();
        c.conn
    };
    let (answer, conn) = within(async { tokio::join!(client, server) }).await;
    assert!(answer.is_ok());
    assert_eq!((conn, up.accepted()), (0, MAX_CONNECTIONS));
}

#[tokio::test]
async fn a_herd_of_callers_opens_only_the_connections_it_needs_and_no_more_than_the_bound() {
    let up = Upstream::start(Options::default()).await;
    let per = STREAMS_PER_CONNECTION;
    let herd = per * MAX_CONNECTIONS + 50;
    let h2 = up.pool(herd);
    let a = svc("a");
    // Two and a half connections' worth at once, none open yet: one attempt at a time, each
    // caller behind it using its connection while it has room.
    let mut held = within(join_all((0..per * 5 / 2).map(|_| h2.sender(&a)))).await;
    assert_eq!(up.accepted(), 3);
    assert_eq!(in_flight(&h2), [per, per, per / 2]);
    // The rest at once: connections up to the bound, then the least loaded (h2 queues).
    held.extend(within(join_all((held.len()..herd).map(|_| h2.sender(&a)))).await);
    assert!(held.iter().all(|r| matches!(r, Ok(Some(_)))));
    assert_eq!(up.accepted(), MAX_CONNECTIONS);
    let loads = in_flight(&h2);
    assert_eq!((loads.len(), loads.iter().sum::<usize>()), (MAX_CONNECTIONS, herd));
    let (min, max) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
    assert!(*min >= per && max - min <= 1, "{loads:?}");
    drop(held);
    assert!(in_flight(&h2).iter().all(|&n| n == 0));
}

#[tokio::test]
async fn a_connection_going_away_is_replaced_and_its_calls_finish() {
    let mut up = Upstream::start(Options::default()).await;
    let h2 = up.pool(4);
    let a = svc("a");
    let client = async {
        let ready = h2.sender(&a).await.unwrap().unwrap();
        let req = Request::get("https://localhost/go-away").body(empty()).unwrap();
        send(ready, req, in_5s()).await.unwrap()
    };
    let server = async {
        let mut c = up.next().await;
        c.respond.send_response(Response::new(()), false).unwrap()
    };
    let (mut resp, mut stream) = within(async { tokio::join!(client, server) }).await;
    // The client read the GOAWAY before this answer: the connection stays for its call in
    // flight, still listed (its task runs), but takes no new call.
    assert_eq!(in_flight(&h2), [1]);
    let next = open_call(&h2, &a, &mut up).await;
    assert_eq!((next.conn, up.accepted()), (1, 2), "found gone, replaced");
    assert_eq!(in_flight(&h2), [1], "only the new one listed");
    stream.send_data(Bytes::from_static(b"done"), true).unwrap();
    let chunk = within(resp.body_mut().frame()).await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(chunk, "done", "the call in flight on the old connection finishes");
}

#[tokio::test]
async fn a_failed_open_is_reported_and_gives_the_share_back() {
    let up = Upstream::start(Options { treat: |_| Treat::Close, ..Options::default() }).await;
    let h2 = up.pool(1);
    let a = svc("a");
    assert!(within(h2.sender(&a)).await.is_err());
    assert_eq!((free(&h2, &a), in_flight(&h2).len()), (1, 0));
    // Not remembered for later calls: the next one tries again.
    assert!(within(h2.sender(&a)).await.is_err());
    assert_eq!((free(&h2, &a), up.accepted()), (1, 2));
}

#[tokio::test]
async fn callers_behind_a_failed_open_fail_with_it_and_open_nothing() {
    let up = Upstream::start(Options { treat: |_| Treat::Close, ..Options::default() }).await;
    let h2 = up.pool(10);
    let a = svc("a");
    let mut callers: Vec<_> = (0..10).map(|_| Box::pin(h2.sender(&a))).collect();
    // The first is connecting, the others wait behind it.
    for c in &mut callers {
        assert!(waits(c).await);
    }
    let results = within(join_all(callers)).await;
    assert!(results.iter().all(Result::is_err));
    for r in &results[1..] {
        let e = r.as_ref().err().unwrap().to_string();
        assert_eq!(e, "the connection attempt this call waited for failed");
    }
    assert_eq!((up.accepted(), h2.failures.load(Ordering::Relaxed)), (1, 1), "one attempt");
    assert_eq!(free(&h2, &a), 10);
}

#[tokio::test]
async fn an_open_abandoned_by_its_caller_counts_for_nothing() {
    let mut up = Upstream::start(Options {
        treat: |n| if n == 0 { Treat::Stall } else { Treat::Serve },
        ..Options::default()
    })
    .await;
    let h2 = up.pool(2);
    let a = svc("a");
    let mut first = Box::pin(h2.sender(&a));
    assert!(waits(&mut first).await);
    within(up.accepted.wait_for(|&n| n == 1)).await.unwrap();
    let mut second = Box::pin(h2.sender(&a));
    assert!(waits(&mut second).await, "behind the first's attempt");
    drop(first);
    let ready = within(second).await.unwrap();
    assert!(ready.is_some(), "a new attempt of its own");
    assert_eq!((up.accepted(), h2.failures.load(Ordering::Relaxed)), (2, 0));
}

#[tokio::test]
async fn an_http1_only_upstream_is_told_apart_once() {
    let up = Upstream::start(Options { alpn: &[b"http/1.1"], ..Options::default() }).await;
    let h2 = up.pool(1);
    let a = svc("a");
    assert!(within(h2.sender(&a)).await.unwrap().is_none());
    assert_eq!((free(&h2, &a), in_flight(&h2).len()), (1, 0));
    assert!(within(h2.sender(&a)).await.unwrap().is_none());
    assert_eq!(up.accepted(), 1, "remembered: not asked again");
}

// `Awaited`: a call whose caller leaves before its answer.

#[tokio::test]
async fn a_call_left_unanswered_is_reset_only_after_its_answer_and_keeps_its_share() {
    let mut up = Upstream::start(Options::default()).await;
    let h2 = up.pool(1);
    let (a, b) = (svc("a"), svc("b"));
    let ready = within(h2.sender(&a)).await.unwrap().unwrap();
    // The caller leaves once the upstream has the call.
    let mut left = tokio::select! {
        _ = send(ready, get(), in_5s()) => panic!("answered"),
        c = up.next() => c,
    };
    let mut next_a = Box::pin(h2.sender(&a));
    assert!(waits(&mut next_a).await, "the call left still holds `a`'s share");
    // Another service's call on the same connection goes through; by the time the upstream
    // has it, it has every frame sent before, a reset of the call left included.
    let client = async {
        let ready = h2.sender(&b).await.unwrap().unwrap();
        send(ready, get(), in_5s()).await
    };
    let server = async {
        let mut c = up.next().await;
        assert!(!is_reset(&mut left.respond).await, "not reset before the upstream answered");
        c.respond.send_response(Response::new(()), true).unwrap();
        c.conn
    };
    let (answer, conn) = within(async { tokio::join!(client, server) }).await;
    assert!(answer.is_ok());
    assert_eq!(conn, left.conn);
    assert!(waits(&mut next_a).await);
    // Answered (a body to follow): reset now, and `a`'s share is back.
    let mut stream = left.respond.send_response(Response::new(()), false).unwrap();
    assert_eq!(body_reset_of(&mut stream).await, Reason::CANCEL);
    assert!(within(next_a).await.unwrap().is_some());
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn calls_left_at_once_do_not_trip_the_upstream_s_rapid_reset_guard() {
    let mut up = Upstream::start(Options::default()).await;
    let h2 = up.pool(10);
    let (a, b) = (svc("a"), svc("b"));
    // Each call's caller leaves right after sending it: before the upstream can have taken it
    // up. Resetting them now would close the connection (the upstream allows no such reset).
    for _ in 0..10 {
        let ready = within(h2.sender(&a)).await.unwrap().unwrap();
        let mut call = Box::pin(send(ready, get(), in_5s()));
        assert!(waits(&mut call).await);
    }
    assert_eq!(free(&h2, &a), 0, "all ten still awaited");
    let mut b_call = Box::pin(async {
        let ready = h2.sender(&b).await.unwrap().unwrap();
        send(ready, get(), in_5s()).await
    });
    let upstream = async {
        let mut left = Vec::new();
        for _ in 0..10 {
            left.push(up.next().await);
        }
        (up.next().await, left)
    };
    let (mut c, mut left) = tokio::select! {
        r = &mut b_call => panic!("`b`'s call ended unanswered (the connection was closed?): {:?}", r.err()),
        got = upstream => got,
    };
    // `b`'s call came after every frame of theirs, any reset of them included.
    for l in &mut left {
        assert!(!is_reset(&mut l.respond).await, "not reset before the upstream answered");
    }
    c.respond.send_response(Response::new(()), true).unwrap();
    let answer = within(b_call).await;
    assert!(answer.is_ok(), "{:?}", answer.err());
    for mut c in left {
        c.respond.send_response(Response::new(()), true).unwrap();
    }
    // Answered, each gives its share back.
    let all = within(join_all((0..10).map(|_| h2.sender(&a)))).await;
    assert!(all.iter().all(|r| matches!(r, Ok(Some(_)))));
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn a_call_left_unanswered_gives_its_share_back_at_the_deadline() {
    let mut up = Upstream::start(Options::default()).await;
    let h2 = up.pool(1);
    let a = svc("a");
    let ready = within(h2.sender(&a)).await.unwrap().unwrap();
    let deadline = Instant::now() + Duration::from_millis(200);
    let mut left = tokio::select! {
        _ = send(ready, get(), deadline) => panic!("answered"),
        c = up.next() => c,
    };
    let mut next_a = Box::pin(h2.sender(&a));
    assert!(waits(&mut next_a).await);
    // The upstream never answers: at the deadline the stream is reset and the share is back.
    assert_eq!(reset_of(&mut left.respond).await, Reason::CANCEL);
    assert!(Instant::now() >= deadline, "not before the deadline");
    assert!(within(next_a).await.unwrap().is_some());
}

#[tokio::test]
async fn a_call_left_with_its_body_unsent_is_reset_at_once() {
    let mut up = Upstream::start(Options::default()).await;
    let h2 = up.pool(1);
    let a = svc("a");
    let ready = within(h2.sender(&a)).await.unwrap().unwrap();
    let (_more, body) = http_body_util::channel::Channel::<Bytes, super::BoxError>::new(1);
    let req = Request::post("https://localhost/v1/charges").body(body.boxed()).unwrap();
    let mut left = tokio::select! {
        _ = send(ready, req, in_5s()) => panic!("answered"),
        c = up.next() => c,
    };
    assert_eq!(free(&h2, &a), 1, "given back as the caller leaves");
    assert_eq!(in_flight(&h2), [0]);
    // The upstream must not wait for the rest of a body that will not come.
    assert_eq!(reset_of(&mut left.respond).await, Reason::CANCEL);
}
