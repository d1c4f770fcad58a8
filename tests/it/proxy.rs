//! The request path end to end: real sockets, real TLS, a recording upstream.

use crate::common::*;

const TOKEN: &str = "kw_billing_token_0123456789abcdWXYZ";

fn billing() -> Svc {
    Svc::new("billing").token("billing-1", TOKEN).scope("charge", "read").scope("customer", "write")
}

#[tokio::test]
async fn allowed_call_injects_the_secret_over_http2_by_default() {
    injects_the_secret_and_streams_both_ways(Harness::new(), http::Version::HTTP_2).await;
}

#[tokio::test]
async fn allowed_call_injects_the_secret_over_http1_with_http2_off() {
    let h1 = Harness::new().upstream("http2 = false");
    injects_the_secret_and_streams_both_ways(h1, http::Version::HTTP_11).await;
}

#[tokio::test]
async fn http2_falls_back_to_http1_when_the_upstream_offers_only_that() {
    let h2 = Harness::new().http1_upstream();
    injects_the_secret_and_streams_both_ways(h2, http::Version::HTTP_11).await;
}

#[tokio::test]
async fn a_connection_the_upstream_closed_is_replaced_for_the_next_call() {
    for extra in ["http2 = false", ""] {
        let kw = Harness::new().upstream(extra).service(billing()).start().await;
        assert_eq!(kw.get("/v1/charges/ch_1", TOKEN).await.status, 200, "{extra}");
        kw.upstream.close_connections();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        for _ in 0..3 {
            let r = kw.get("/v1/charges/ch_1", TOKEN).await;
            assert_eq!(r.status, 200, "{extra}: {:?} {:?}", r.body, kw.last_record(2).await);
        }
        let peers: Vec<_> = kw.upstream.requests().iter().map(|s| s.peer).collect();
        assert_ne!(peers[0], peers[1], "{extra}: a new connection after the close");
        if extra.is_empty() {
            assert!(peers[1..].iter().all(|p| *p == peers[1]), "{extra}: one multiplexed connection");
        }
    }
}

async fn injects_the_secret_and_streams_both_ways(harness: Harness, upstream_version: http::Version) {
    let kw = harness.service(billing()).start().await;
    let body = "name=Jenny+Rosen&email=jenny%40example.com&metadata[order]=6735";
    let mut r = req("POST", "/v1/customers?expand[]=tax", TOKEN, body);
    for (k, v) in [
        ("stripe-version", "2026-07-29"),
        ("idempotency-key", "idem-123"),
        ("keyward-debug", "1"),
        ("proxy-authorization", "Basic abc"),
        ("x-forwarded-for", "10.9.8.7"),
    ] {
        r.headers_mut().insert(k, v.parse().unwrap());
    }
    let reply = kw.send(r).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.headers["request-id"], "req_upstream_1");
    assert_eq!(reply.headers["x-upstream-says"], "hello");
    assert!(reply.headers["keyward-request-id"].to_str().unwrap().starts_with("kwreq_"));

    let seen = kw.upstream.requests();
    assert_eq!(seen.len(), 1);
    let up = &seen[0];
    assert_eq!(up.method, "POST");
    assert_eq!(up.version, upstream_version);
    assert_eq!(up.uri, "/v1/customers?expand[]=tax");
    assert_eq!(up.body, body.as_bytes());
    let auth: Vec<_> = up.headers.get_all("authorization").iter().collect();
    assert_eq!(auth, [format!("Bearer {SECRET}").as_str()]);
    assert_eq!(up.authority, format!("localhost:{}", kw.upstream.addr.port()));
    assert!(up.headers.get_all("host").iter().count() <= 1, "one Host at most");
    assert_eq!(up.headers["stripe-version"], "2026-07-29");
    assert_eq!(up.headers["idempotency-key"], "idem-123");
    for gone in ["keyward-debug", "proxy-authorization", "x-forwarded-for"] {
        assert!(!up.headers.contains_key(gone), "{gone} was forwarded");
    }

    let rec = kw.last_record(1).await;
    assert_eq!(rec["decision"], "allow");
    assert_eq!(rec["service"], "billing");
    assert_eq!(rec["token_id"], "billing-1");
    assert_eq!(rec["permission"], "customer_write");
    assert_eq!(rec["path"], "/v1/customers", "no query string in the record");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["upstream_request_id"], "req_upstream_1");
    assert_eq!(rec["bytes_in"], body.len());
    assert_eq!(rec["bytes_out"].as_u64().unwrap(), reply.body.len() as u64);
    assert_eq!(rec["request_id"], reply.headers["keyward-request-id"].to_str().unwrap());
    kw.stop().await;
}

#[tokio::test]
async fn basic_auth_with_the_token_as_user_name_works() {
    let kw = Harness::new().service(billing()).start().await;
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN}:"));
    let mut r = req("GET", "/v1/charges/ch_3NxAbc", "", "");
    r.headers_mut().insert("authorization", format!("Basic {basic}").parse().unwrap());
    assert_eq!(kw.send(r).await.status, 200);
    kw.stop().await;
}

#[tokio::test]
async fn refusals_are_stripe_shaped_and_recorded() {
    let kw = Harness::new()
        .service(billing().token_with(
            "old",
            "kw_billing_old_token_000000000000",
            "expires = \"2020-01-01T00:00:00Z\"",
        ))
        .service(Svc::new("later").token_with(
            "future",
            "kw_later_future_token_0000000000000",
            "not_before = \"2999-01-01T00:00:00Z\"",
        ))
        .start()
        .await;
    let cases: Vec<(Reply, u16, &str, &str)> = vec![
        (kw.post("/v1/charges", TOKEN, "amount=100").await, 403, "more_permissions_required", "charge_write"),
        (kw.get("/v1/charges", "").await, 401, "api_key_missing", ""),
        (kw.get("/v1/charges", "kw_unknown_token_000000000000wxyz").await, 401, "api_key_invalid", ""),
        (kw.get("/v1/charges", "kw_billing_old_token_000000000000").await, 401, "api_key_expired", ""),
        (
            kw.get("/v1/charges", "kw_later_future_token_0000000000000").await,
            401,
            "api_key_not_yet_valid",
            "",
        ),
        (kw.get("/v1/not_an_endpoint", TOKEN).await, 403, "endpoint_not_in_catalog", ""),
        (kw.get("/v1/payouts", TOKEN).await, 403, "more_permissions_required", "payout_read"),
    ];
    for (i, (reply, status, code, perm)) in cases.iter().enumerate() {
        assert_eq!(reply.status, *status, "case {i}");
        let v = reply.json();
        assert_eq!(v["error"]["code"], *code, "case {i}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "case {i}");
        assert_eq!(reply.headers["stripe-should-retry"], "false");
        assert!(reply.headers.contains_key("keyward-request-id"));
        if !perm.is_empty() {
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(msg.contains(&format!("'rak_{perm}'")) && msg.contains("'kw_***WXYZ'"), "{msg}");
        }
    }
    assert!(
        kw.get("/v1/charges", "kw_unknown_token_000000000000wxyz").await.json()["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("kw_***wxyz")
    );
    assert!(kw.upstream.requests().is_empty(), "nothing refused reaches the upstream");
    let recs = kw.records(cases.len()).await;
    let codes: Vec<&str> = recs.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(codes[..cases.len()], cases.iter().map(|c| c.2).collect::<Vec<_>>()[..]);
    assert!(recs.iter().all(|r| r["decision"] == "deny"));
    assert_eq!(recs[3]["token_id"], "old");
    kw.stop().await;
}

#[tokio::test]
async fn report_mode_forwards_and_records_would_deny() {
    let kw = Harness::new().service(billing().extra("mode = \"report\"")).start().await;
    let reply = kw.post("/v1/refunds", TOKEN, "charge=ch_1").await;
    assert_eq!(reply.status, 200);
    assert_eq!(kw.get("/v1/unknown_thing", TOKEN).await.status, 200);
    assert_eq!(kw.get("/v1/charges", "kw_unknown_token_000000000000wxyz").await.status, 401);
    let recs = kw.records(3).await;
    assert_eq!(
        (recs[0]["decision"].as_str(), recs[0]["reason"].as_str()),
        (Some("would_deny"), Some("more_permissions_required"))
    );
    assert_eq!(recs[0]["permission"], "charge_write");
    assert_eq!(recs[1]["reason"], "endpoint_not_in_catalog");
    assert_eq!(recs[2]["decision"], "deny", "report mode still authenticates");
    assert_eq!(kw.upstream.requests().len(), 2);
    kw.stop().await;
}

#[tokio::test]
async fn source_ips_and_egress_pinning_over_http1() {
    source_ips_and_egress_pinning("http2 = false").await;
}

#[tokio::test]
async fn source_ips_and_egress_pinning_over_http2() {
    source_ips_and_egress_pinning("").await;
}

async fn source_ips_and_egress_pinning(upstream: &str) {
    let kw = Harness::new()
        .upstream(upstream)
        .service(billing().source_ips(&["127.0.0.1/32"]).extra("egress_ip = \"127.0.0.2\""))
        .service(
            Svc::new("narrow")
                .token_with("n1", "kw_narrow_token_00000000000000abcd", "source_ips = [\"127.0.0.4/32\"]")
                .scope("*", "read"),
        )
        .start()
        .await;
    let ok = kw.get("/v1/charges", TOKEN).await;
    assert_eq!(ok.status, 200);
    assert_eq!(kw.upstream.requests()[0].peer.ip().to_string(), "127.0.0.2", "egress bound to 127.0.0.2");

    let from3 = kw.send_from("127.0.0.3".parse().unwrap(), req("GET", "/v1/charges", TOKEN, "")).await;
    assert_eq!(from3.status, 403);
    assert_eq!(from3.error_code(), "ip_not_allowed");
    assert_eq!(
        from3.json()["error"]["message"],
        "The API key provided does not allow requests from your IP address."
    );
    // The token's own list narrows the service's (127.0.0.0/8 by default).
    let narrow = "kw_narrow_token_00000000000000abcd";
    assert_eq!(kw.get("/v1/balance", narrow).await.status, 403);
    let from4 = kw.send_from("127.0.0.4".parse().unwrap(), req("GET", "/v1/balance", narrow, "")).await;
    assert_eq!(from4.status, 200);
    assert_eq!(kw.upstream.requests()[1].peer.ip().to_string(), "127.0.0.1");
    let recs = kw.records(4).await;
    assert_eq!(recs[0]["egress_ip"], "127.0.0.2");
    assert_eq!(recs[1]["client_ip"], "127.0.0.3");
    kw.stop().await;
}

/// On a dual-stack listener IPv4 callers arrive as `::ffff:a.b.c.d`; their IPv4 allowlists
/// must still match, and records show the plain IPv4 address.
#[tokio::test]
async fn ipv4_callers_of_a_dual_stack_listener_match_ipv4_allowlists() {
    let mut h = Harness::new().service(billing().source_ips(&["127.0.0.1/32"]));
    h.listen = "[::]:0".into();
    let kw = h.start().await;
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], kw.addr().port()));
    let ok =
        send(v4, kw.client.clone(), "127.0.0.1".parse().unwrap(), req("GET", "/v1/charges", TOKEN, "")).await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    assert_eq!(kw.records(1).await[0]["client_ip"], "127.0.0.1");
    kw.stop().await;
}

#[tokio::test]
async fn body_limits_and_upstream_failures() {
    let kw = Harness::new()
        .service(billing())
        .top("[limits]\nmax_body_bytes = 1000\n\n[timeouts]\nupstream = \"300ms\"")
        .start()
        .await;
    let big = "x".repeat(2000);
    let reply = kw.post("/v1/customers", TOKEN, &big).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.error_code(), "request_too_large");

    let mut slow = req("GET", "/v1/charges", TOKEN, "");
    slow.headers_mut().insert("x-test-delay-ms", "2000".parse().unwrap());
    let reply = kw.send(slow).await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"]["type"], "api_error");
    assert_eq!(reply.error_code(), "upstream_timeout");

    // The deadline covers the whole answer: a body that stalls after its head is cut off.
    let stalled = "GET /v1/charges HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer kw_billing_token_0123456789abcdWXYZ\r\n\
                   x-test-body-stall-ms: 5000\r\nConnection: close\r\n\r\n";
    let started = std::time::Instant::now();
    let answer = kw.raw(stalled.as_bytes()).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "cut off at the deadline");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.80}");
    assert!(!answer.ends_with("\r\n0\r\n\r\n"), "the cut answer must not look complete:\n{answer}");
    let rec = kw.last_record(3).await;
    assert_eq!((rec["status"].as_u64(), rec["reason"].as_str()), (Some(200), Some("upstream_timeout")));
    kw.stop().await;

    // An upstream nobody listens on: 502, for calls that arrive together too.
    for extra in ["http2 = false", ""] {
        let pki = Pki::new();
        let dead = Harness::new().upstream(extra).service(billing());
        let dir = tempfile::tempdir().unwrap();
        let text = dead.config(&pki, "https://localhost:1", dir.path());
        let src = keyward::control::config::Source { name: dir.path().join("k.toml"), text };
        let app = keyward::app::start(&src).await.unwrap();
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (addr, client) = (app.addr, pki.client_config());
            calls.spawn(async move {
                send(addr, client, "127.0.0.1".parse().unwrap(), req("GET", "/v1/charges", TOKEN, "")).await
            });
        }
        while let Some(reply) = calls.join_next().await {
            let reply = reply.unwrap();
            assert_eq!((reply.status, reply.error_code()), (502, "upstream_unavailable".into()), "{extra}");
        }
        app.stop().await;
    }
}

#[tokio::test]
async fn http2_clients_are_served() {
    let kw = Harness::new().service(billing()).start().await;
    let mut cfg = (*kw.client).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(kw.addr()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let r = http::Request::builder()
            .uri(format!("https://localhost:{}/v1/customers/cus_123", kw.addr().port()))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = sender.send_request(r).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(kw.upstream.requests().len(), 3);
    kw.stop().await;
}

/// A streamed (chunked) body over the limit gets 413 whichever protocol goes upstream.
#[tokio::test]
async fn oversized_chunked_bodies_get_413_over_either_protocol() {
    for extra in ["http2 = false", ""] {
        let kw = Harness::new()
            .service(billing())
            .top("[limits]\nmax_body_bytes = 1000")
            .upstream(extra)
            .start()
            .await;
        let chunk = "x".repeat(1500);
        let raw = format!(
            "POST /v1/customers HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             {:x}\r\n{chunk}\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len(),
            chunk.len()
        );
        let answer = kw.raw(raw.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "[{extra}] {answer:.200}");
        assert!(answer.contains("request_too_large"), "[{extra}] {answer}");
        kw.stop().await;
    }
}

/// A refusal answered before the body was read closes an HTTP/1.1 connection, and says so
/// (`Connection: close`): a client must not send its next request on it.
#[tokio::test]
async fn a_refusal_before_the_body_says_the_connection_closes() {
    const T: &str = "kw_unread_body_token_0123456789abcdWXYZ";
    let kw = Harness::new().service(Svc::new("reader").token("r", T).scope("charge", "read")).start().await;
    let denied_post = kw.post("/v1/charges", T, "amount=100&currency=usd").await;
    assert_eq!(denied_post.status, 403);
    assert_eq!(denied_post.headers.get("connection").map(|v| v.to_str().unwrap()), Some("close"));
    let denied_get = kw.get("/v1/customers", T).await;
    assert_eq!(denied_get.status, 403);
    assert!(denied_get.headers.get("connection").is_none(), "a refusal with no body keeps the connection");
}
