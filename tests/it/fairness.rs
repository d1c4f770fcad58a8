//! Services share keyward's HTTP/2 connections to the upstream (the default) without slowing
//! each other down: one service's slow uploads, unread answers and more slow calls than the
//! upstream's stream limit leave another service's small calls as fast as before.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::common::*;

const BULK: &str = "kw_fair_bulk_token_0123456789abcdefWX";
const SMALL: &str = "kw_fair_small_token_0123456789abcdefW";
/// How long the bulk service's slow calls take upstream: longer than any measurement (one
/// that takes longer, on a machine busy with other work, counts nothing and is taken again).
const SLOW_MS: u64 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_holding_many_slow_calls_does_not_slow_another_down() {
    let kw = Harness::new()
        .service(Svc::new("bulk").token("b", BULK).scope("charge", "write"))
        .service(Svc::new("small").token("s", SMALL).scope("charge", "read"))
        .start()
        .await;
    // The machine runs other tests at the same time: a measurement disturbed by them is
    // taken again (at most three times); the structural checks hold in every attempt.
    let mut attempts = Vec::new();
    for _ in 0..3 {
        let p99 = attempt(&kw).await;
        attempts.push(format!(
            "p99 alone {:.2} ms, sharing a connection {:.2} ms, past the stream limit {:.2} ms",
            p99[0], p99[1], p99[2]
        ));
        eprintln!("{}", attempts.last().unwrap());
        if p99[1..].iter().all(|p| *p < p99[0] + 2.0) {
            kw.stop().await;
            return;
        }
    }
    panic!("the small service's p99 rose by 2 ms or more in every attempt: {attempts:#?}");
}

/// The small service's p99 (ms): alone; then on one upstream connection with the bulk
/// service's slow uploads, unread answers and slow calls; then with the bulk service past the
/// upstream's stream limit (100 per connection).
async fn attempt(kw: &Running) -> [f64; 3] {
    let mut small = H1::open(kw, "127.0.0.1".parse().unwrap()).await;
    small.p99(30).await;
    let alone = small.p99(300).await;
    let alone_worst = small.worst;

    let bulk_from: IpAddr = "127.0.0.2".parse().unwrap();
    let started = Instant::now();
    let mut held = tokio::task::JoinSet::new();
    // Two uploads of 4 MiB, 32 KiB every 10 ms, and four 4 MiB answers nobody reads.
    for _ in 0..2 {
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(1);
        let req = Request::post("/v1/charges")
            .header("authorization", format!("Bearer {BULK}"))
            .header("content-type", "application/octet-stream")
            .body(body)
            .unwrap();
        let mut sender = h2::<http_body_util::channel::Channel<Bytes, std::io::Error>>(kw, bulk_from).await;
        held.spawn(async move {
            let answer = tokio::spawn(async move { sender.send_request(req).await.map(|r| r.status()) });
            for _ in 0..128 {
                if tx.send_data(Bytes::from(vec![b'x'; 32 * 1024])).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            drop(tx);
            let _ = answer.await;
        });
    }
    let mut unread = Vec::new();
    for _ in 0..4 {
        let mut sender = h2::<Full<Bytes>>(kw, bulk_from).await;
        let req = Request::get("/v1/charges")
            .header("authorization", format!("Bearer {BULK}"))
            .header("x-test-body-bytes", (4 << 20).to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        // The answer's head comes; its body is left unread, holding its stream's window.
        unread.push((sender.send_request(req).await.unwrap(), sender));
    }
    // Slow calls on two connections of the caller: 40 first (with the uploads and unread
    // answers they fit on one upstream connection, which the small calls share), then 110
    // more: past the upstream's limit and the bulk service's share of 100.
    let callers = [h2::<Full<Bytes>>(kw, bulk_from).await, h2::<Full<Bytes>>(kw, bulk_from).await];
    let slow = |held: &mut tokio::task::JoinSet<()>, n: usize| {
        for i in 0..n {
            let mut sender = callers[i % 2].clone();
            let req = Request::get("/v1/charges")
                .header("authorization", format!("Bearer {BULK}"))
                .header("x-test-delay-ms", SLOW_MS.to_string())
                .body(Full::new(Bytes::new()))
                .unwrap();
            held.spawn(async move {
                let _ = sender.send_request(req).await;
            });
        }
    };
    // The mechanism, counted where the streams arrive: the bulk service's slow calls the
    // upstream holds (they are answered only after the measurements).
    let bulk_streams = || kw.upstream.delayed.load(std::sync::atomic::Ordering::Relaxed);
    slow(&mut held, 40);
    assert!(
        eventually(|| async { bulk_streams() == 40 }).await,
        "all 40 within the share: {}",
        bulk_streams()
    );
    let sharing = small.p99(300).await;
    slow(&mut held, 110);
    // 150 slow calls, and the uploads and unread answers hold 6 (fewer once the uploads are
    // answered) of the service's 100 streams: 94 to 96 slow calls reach the upstream, the
    // rest wait in keyward for the bulk service's own share.
    assert!(eventually(|| async { bulk_streams() >= 94 }).await, "{} slow calls upstream", bulk_streams());
    let past_limit = small.p99(300).await;
    let held_upstream = bulk_streams();
    let measured = started.elapsed();
    assert!(measured < Duration::from_millis(SLOW_MS), "measured while the slow calls were held");
    assert!(
        (94..=96).contains(&held_upstream),
        "the bulk service held {held_upstream} streams, past its share"
    );
    // Every small call went straight through: none waited for a share, whatever bulk held.
    assert!(
        small.worst < Duration::from_millis(500).max(alone_worst * 10),
        "a small call waited: {:?} (alone at worst {alone_worst:?})",
        small.worst
    );
    drop(unread);
    held.abort_all();
    while held.join_next().await.is_some() {}
    // keyward awaits the abandoned slow calls' answers on the side (no rapid reset): the next
    // attempt starts once the upstream has answered them all, with the bulk share free again.
    let quiet = tokio::time::Instant::now() + Duration::from_millis(SLOW_MS + 2000);
    while bulk_streams() > 0 && tokio::time::Instant::now() < quiet {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    [alone, sharing, past_limit]
}

/// An HTTP/2 connection to keyward from `from`.
async fn h2<B>(kw: &Running, from: IpAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = kw.tls_from(from, b"h2").await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// The small service: one keep-alive HTTP/1.1 connection, calls one after another.
struct H1 {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    worst: Duration,
}

impl H1 {
    async fn open(kw: &Running, from: IpAddr) -> H1 {
        let tls = kw.tls_from(from, b"http/1.1").await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        H1 { sender, worst: Duration::ZERO }
    }

    /// `n` calls; the 99th percentile of their times, in ms.
    async fn p99(&mut self, n: usize) -> f64 {
        let mut times = Vec::with_capacity(n);
        self.worst = Duration::ZERO;
        for i in 0..n {
            let req = Request::get("/v1/charges/ch_1")
                .header("host", "localhost")
                .header("authorization", format!("Bearer {SMALL}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let t = Instant::now();
            self.sender.ready().await.unwrap_or_else(|e| panic!("call {i} of {n}: {e}"));
            let resp = self.sender.send_request(req).await.unwrap_or_else(|e| panic!("call {i} of {n}: {e}"));
            let status = resp.status();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(status, 200, "call {i} of {n}: {}", String::from_utf8_lossy(&body));
            let took = t.elapsed();
            self.worst = self.worst.max(took);
            times.push(took.as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        times[(n * 99).div_ceil(100) - 1]
    }
}
