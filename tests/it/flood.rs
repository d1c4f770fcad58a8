//! Callers that hold keyward's resources: floods without a token, callers that stop reading
//! their answer, bodies that stall, too many connections from one address.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "kw_flood_caller_token_0123456789abcd";

/// Where the attackers connect, and the TLS configuration that trusts keyward.
type Target = (std::net::SocketAddr, std::sync::Arc<rustls::ClientConfig>);
const STALLER: &str = "kw_flood_staller_token_0123456789abc";

/// Short caller-facing timeouts, so that a test sees them fire.
const QUICK: &str = "[timeouts]\nclient_send = \"1s\"\nrequest_body_idle = \"1s\"\nform_body = \"2s\"\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn get(path: &str, token: &str) -> http::Request<Full<Bytes>> {
    req("GET", path, token, "")
}

/// Opens HTTP/2 connections from `from` that give every stream a zero window, without a token,
/// and keeps `streams` open on each until `until`: each answer can never be sent.
async fn zero_window_flood(to: Target, from: IpAddr, conns: usize, streams: usize, until: Instant) -> u64 {
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let Ok(tls) = tls_connect(to.0, to.1.clone(), from, b"h2").await else { continue };
        let Ok((client, conn)) =
            h2::client::Builder::new().initial_window_size(0).handshake::<_, Bytes>(tls).await
        else {
            continue;
        };
        tokio::spawn(async move {
            let _ = conn.await;
        });
        tasks.push(tokio::spawn(async move {
            let mut opened = 0u64;
            let mut held = Vec::new();
            while Instant::now() < until {
                let ready = client.clone();
                let Ok(Ok(mut ready)) = tokio::time::timeout(Duration::from_millis(200), ready.ready()).await
                else {
                    held.retain(|h: &tokio::task::JoinHandle<()>| !h.is_finished());
                    continue;
                };
                let r = http::Request::get("https://localhost/v1/customers/cus_1").body(()).unwrap();
                let Ok((answer, _)) = ready.send_request(r, true) else { break };
                opened += 1;
                // Hold the answer (dropping it would reset the stream); never give it a window.
                held.push(tokio::spawn(async move {
                    let answer = answer.await;
                    tokio::time::sleep_until(until.into()).await;
                    drop(answer);
                }));
                if held.len() >= streams {
                    held.retain(|h| !h.is_finished());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            opened
        }));
    }
    let mut opened = 0;
    for t in tasks {
        opened += t.await.unwrap_or(0);
    }
    opened
}

/// Connections from `from` that send a form POST announcing 100 bytes and then only 5,
/// reconnecting when keyward closes them, until `until`. Returns how many were sent.
async fn stalled_form_flood(to: Target, from: IpAddr, conns: usize, token: &str, until: Instant) -> u64 {
    let auth = if token.is_empty() { String::new() } else { format!("Authorization: Bearer {token}\r\n") };
    let head = format!(
        "POST /v1/customers HTTP/1.1\r\nHost: k\r\n{auth}Content-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: 100\r\n\r\nname="
    );
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (head, addr, client) = (head.clone(), to.0, to.1.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            while Instant::now() < until {
                let Ok(mut tls) = tls_connect(addr, client.clone(), from, b"http/1.1").await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if tls.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                sent += 1;
                // Read whatever keyward answers, until it closes or the flood ends.
                let mut sink = vec![0u8; 4096];
                let left = until.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, async {
                    while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
            }
            sent
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap_or(0);
    }
    sent
}

/// Each call's latency, over one keep-alive connection, for `during`.
async fn calls(kw: &Running, during: Duration) -> Vec<Duration> {
    let mut conn = kw.connect().await;
    let end = Instant::now() + during;
    let mut out = Vec::new();
    while Instant::now() < end || out.is_empty() {
        let t = Instant::now();
        let reply =
            conn.send(get("/v1/customers/cus_1", TOKEN)).await.expect("the caller's call is answered");
        assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
        out.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out
}

fn summary(lat: &[Duration]) -> (Duration, Duration) {
    let mut v = lat.to_vec();
    v.sort();
    (v[v.len() / 2], *v.last().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_without_a_token_do_not_slow_an_authenticated_caller() {
    // A stalled stream is cut off after 3 s: each flood stream is held, then reset once.
    let kw = Harness::new()
        .top("[timeouts]\nclient_send = \"3s\"\nrequest_body_idle = \"1s\"\nform_body = \"2s\"\n")
        .audit("queue = 64")
        .service(Svc::new("caller").token("t", TOKEN).scope("customer", "read"))
        .service(Svc::new("staller").token("s", STALLER).scope("customer", "write"))
        .start()
        .await;
    let (base_p50, base_max) = summary(&calls(&kw, Duration::from_millis(500)).await);

    let until = Instant::now() + Duration::from_secs(4);
    let started = Instant::now();
    // The floods run on a thread and runtime of their own, as another host's would: keyward's
    // workers are not busy running the attackers' tasks.
    let to: Target = (kw.addr(), kw.client.clone());
    let attackers = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            tokio::join!(
                zero_window_flood(to.clone(), ip("127.0.0.2"), 42, 200, until),
                stalled_form_flood(to.clone(), ip("127.0.0.3"), 60, "", until),
                stalled_form_flood(to, ip("127.0.0.4"), 8, STALLER, until),
            )
        })
    });
    // Let the floods fill up first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = calls(&kw, Duration::from_secs(3)).await;
    let (h2, forms, authed) = tokio::task::spawn_blocking(move || attackers.join().unwrap()).await.unwrap();
    let (p50, max) = summary(&during);
    println!(
        "flood over {:?}: {h2} zero-window HTTP/2 streams, {forms} stalled forms without a token, \
         {authed} with one; the caller's {} calls before: p50 {base_p50:?} max {base_max:?}; \
         during: p50 {p50:?} max {max:?}",
        started.elapsed(),
        during.len()
    );
    // Unproven, each flood connection is closed after `limits.refusals_per_connection`
    // refusals (plus the streams it had open): far fewer than 42 × 200.
    assert!(h2 > 0 && h2 < 42 * 110, "the HTTP/2 flood opened {h2} streams");
    assert!(max <= base_max + Duration::from_secs(1), "a call took {max:?} during the flood");

    // Recovery: every flood connection closes, the queue empties, calls go on.
    let recovered = eventually(|| async {
        kw.metric("keyward_connections_open").await == 0.0
            && kw.metric("keyward_audit_queue_depth").await == 0.0
    });
    assert!(recovered.await, "connections or queue places still held after the flood");
    assert_eq!(kw.get("/v1/customers/cus_1", TOKEN).await.status, 200);
    let recs = kw.records(1).await;
    let timed_out = recs.iter().filter(|r| r["reason"] == "request_body_timeout").count();
    assert!(timed_out > 0, "the authenticated stalled forms were refused once their body timed out");
    kw.stop().await;
}

/// An HTTP/2 connection from 127.0.0.1 that gives every stream a zero window.
async fn zero_window_client(kw: &Running) -> h2::client::SendRequest<Bytes> {
    let tls = kw.tls_from(ip("127.0.0.1"), b"h2").await.unwrap();
    let (client, conn) =
        h2::client::Builder::new().initial_window_size(0).handshake::<_, Bytes>(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client.ready().await.unwrap()
}

#[tokio::test]
async fn an_http2_stream_whose_answer_gets_no_window_is_reset_and_recorded() {
    let kw = Harness::new()
        .top(QUICK)
        .service(Svc::new("caller").token("t", TOKEN).scope("*", "read"))
        .start()
        .await;
    let mut client = zero_window_client(&kw).await;
    let r = http::Request::get("https://localhost/v1/customers/cus_1")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(())
        .unwrap();
    let (answer, _) = client.send_request(r, true).unwrap();
    let started = Instant::now();
    let resp = answer.await.unwrap();
    assert_eq!(resp.status(), 200, "the head is sent: it needs no window");
    let mut body = resp.into_body();
    let err = tokio::time::timeout(Duration::from_secs(10), body.data()).await.unwrap().unwrap().unwrap_err();
    assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "reset after client_send, not before: {waited:?}");
    let rec = kw.last_record(1).await;
    assert_eq!(
        (rec["decision"].as_str(), rec["reason"].as_str(), rec["status"].as_u64()),
        (Some("allow"), Some("client_stalled"), Some(200))
    );
    // The connection itself goes on.
    let mut client = client.ready().await.unwrap();
    let r = http::Request::get("https://localhost/v1/customers/cus_1").body(()).unwrap();
    let (answer, _) = client.send_request(r, true).unwrap();
    assert_eq!(answer.await.unwrap().status(), 401);
    kw.stop().await;
}

#[tokio::test]
async fn an_http1_caller_that_stops_reading_is_cut_off_and_recorded() {
    let kw = Harness::new()
        .top(QUICK)
        .service(Svc::new("caller").token("t", TOKEN).scope("*", "read"))
        .start()
        .await;
    let mut tls = kw.tls_from(ip("127.0.0.1"), b"http/1.1").await.unwrap();
    // 64 MiB: more than the sockets on the way can hold, so keyward's writes must wait.
    let head = format!(
        "GET /v1/customers/cus_1 HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {TOKEN}\r\nx-test-body-bytes: {}\r\n\r\n",
        64 << 20
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let rec = kw.last_record(1).await;
    assert_eq!(
        (rec["decision"].as_str(), rec["reason"].as_str(), rec["status"].as_u64()),
        (Some("allow"), Some("client_stalled"), Some(200))
    );
    assert!(rec["bytes_out"].as_u64().unwrap() < 64 << 20);
    drop(tls);
    kw.stop().await;
}

#[tokio::test]
async fn request_bodies_that_stall_are_refused_with_408() {
    let kw = Harness::new()
        .top(QUICK)
        .service(Svc::new("caller").token("t", TOKEN).scope("*", "write"))
        .start()
        .await;
    let cases = [
        // A form that stops after 5 of its 100 bytes: its idle timeout.
        ("application/x-www-form-urlencoded", 5, Duration::ZERO),
        // A streamed (JSON) body that stops half-way: the idle timeout while streaming it upstream.
        ("application/json", 5, Duration::ZERO),
        // A form sent a byte every 400 ms: no pause is too long, but the whole takes too long.
        ("application/x-www-form-urlencoded", 100, Duration::from_millis(400)),
    ];
    for (ctype, sent, pace) in cases {
        let tls = kw.tls_from(ip("127.0.0.1"), b"http/1.1").await.unwrap();
        let (mut rd, mut wr) = tokio::io::split(tls);
        let head = format!(
            "POST /v1/customers HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {ctype}\r\n\
             Content-Length: 100\r\n\r\n"
        );
        wr.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        // Send `sent` bytes of the body, `pace` apart, then nothing more (the socket stays open).
        let drip = async {
            for _ in 0..sent {
                if wr.write_all(b"a").await.is_err() {
                    break;
                }
                tokio::time::sleep(pace).await;
            }
            std::future::pending::<()>().await
        };
        let mut answer = Vec::new();
        let read = async {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = rd.read(&mut buf).await {
                answer.extend_from_slice(&buf[..n]);
            }
        };
        tokio::select! {
            _ = drip => {}
            _ = tokio::time::timeout(Duration::from_secs(10), read) => {}
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{ctype} / {pace:?}: {text:.200}");
        assert!(text.contains("request_body_timeout"), "{text}");
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(5), "{ctype} / {pace:?}: answered after {waited:?}");
    }
    assert!(
        kw.upstream.requests().iter().all(|s| s.body.len() < 100),
        "no stalled body reached the upstream whole"
    );
    kw.stop().await;
}

#[tokio::test]
async fn connections_past_the_limits_are_closed_or_wait() {
    let kw = Harness::new()
        .top("[limits]\nmax_connections_per_ip = 3\nmax_connections = 5\n")
        .service(Svc::new("caller").token("t", TOKEN).scope("*", "read"))
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(kw.tls_from(ip("127.0.0.2"), b"http/1.1").await.unwrap());
    }
    // A fourth from the same address is closed before its handshake.
    assert!(kw.tls_from(ip("127.0.0.2"), b"http/1.1").await.is_err());
    assert_eq!(kw.metric("keyward_connections_refused_total").await, 1.0);
    // Others are served.
    assert_eq!(kw.send_from(ip("127.0.0.1"), get("/v1/customers/cus_1", TOKEN)).await.status, 200);
    held.push(kw.tls_from(ip("127.0.0.3"), b"http/1.1").await.unwrap());
    held.push(kw.tls_from(ip("127.0.0.3"), b"http/1.1").await.unwrap());
    // Five open: the sixth waits (in the kernel's backlog) until one closes.
    let sixth = tokio::spawn({
        let (addr, client) = (kw.addr(), kw.client.clone());
        async move { send(addr, client, "127.0.0.4".parse().unwrap(), get("/v1/customers/cus_1", TOKEN)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!sixth.is_finished(), "served past max_connections");
    held.pop();
    let reply = tokio::time::timeout(Duration::from_secs(5), sixth).await.unwrap().unwrap();
    assert_eq!(reply.status, 200);
    drop(held);
    // Once keyward has seen them close, the address has its share again.
    assert!(eventually(|| async { kw.metric("keyward_connections_open").await == 0.0 }).await);
    assert_eq!(kw.send_from(ip("127.0.0.2"), get("/v1/customers/cus_1", TOKEN)).await.status, 200);
    kw.stop().await;
}

#[tokio::test]
async fn a_refused_http2_stream_that_gets_no_window_is_reset_too() {
    let kw = Harness::new()
        .top(QUICK)
        .service(Svc::new("caller").token("t", TOKEN).scope("*", "read"))
        .start()
        .await;
    let mut client = zero_window_client(&kw).await;
    // No token: a refusal, recorded at once, whose answer the caller never takes.
    let r = http::Request::get("https://localhost/v1/customers/cus_1").body(()).unwrap();
    let (answer, _) = client.send_request(r, true).unwrap();
    let resp = answer.await.unwrap();
    assert_eq!(resp.status(), 401);
    let err = tokio::time::timeout(Duration::from_secs(10), resp.into_body().data())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert_eq!(err.reason(), Some(h2::Reason::CANCEL), "{err}");
    kw.stop().await;
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_like_an_idle_http1_one() {
    let kw = Harness::new()
        .top("[timeouts]\nrequest_head = \"1s\"\n")
        .service(Svc::new("caller").token("t", TOKEN).scope("*", "read"))
        .start()
        .await;
    let tls = kw.tls_from(ip("127.0.0.1"), b"h2").await.unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    let conn = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let r = http::Request::get("https://localhost/v1/customers/cus_1")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(())
        .unwrap();
    let (answer, _) = client.send_request(r, true).unwrap();
    let mut body = answer.await.unwrap().into_body();
    while let Some(chunk) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.unwrap().len());
    }
    // Pings go on (the client answers them itself), but no stream: GOAWAY within two periods.
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was not closed");
    assert!(eventually(|| async { kw.metric("keyward_connections_open").await == 0.0 }).await);
    kw.stop().await;
}

/// Slow clients are cut off: one that never finishes its TLS handshake after
/// `timeouts.handshake`, one that never finishes its request head after `request_head`.
#[tokio::test]
async fn slow_handshakes_and_heads_are_cut_off() {
    let kw = Harness::new()
        .top("[timeouts]\nhandshake = \"1s\"\nrequest_head = \"1s\"\n")
        .service(Svc::new("caller").token("t", TOKEN).scope("*", "read"))
        .start()
        .await;
    // TCP only, never a ClientHello.
    let mut silent = tokio::net::TcpStream::connect(kw.addr()).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "closed, not answered: {read:?}");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "not before the handshake timeout: {waited:?}");
    // TLS, then half a request head.
    let mut tls = kw.tls_from(ip("127.0.0.1"), b"http/1.1").await.unwrap();
    tls.write_all(b"GET /v1/customers/cus_1 HTTP/1.1\r\nHost: k\r\n").await.unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut answer)).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900), "not before the head timeout: {waited:?}");
    assert!(eventually(|| async { kw.metric("keyward_connections_open").await == 0.0 }).await);
    kw.stop().await;
}
