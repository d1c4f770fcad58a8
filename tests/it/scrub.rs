//! The secret never goes back out: an upstream that echoes the `Authorization` keyward sent
//! has the secret replaced in its headers and its body (also split across chunks), and the
//! record says `secret_scrubbed`.

use crate::common::*;

const TOKEN: &str = "kw_scrub_token_0123456789abcdefWXYZab";

#[tokio::test]
async fn an_echoed_secret_is_replaced_before_the_caller_sees_it() {
    let kw =
        Harness::new().service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read")).start().await;
    for stall in [None, Some("50")] {
        let mut r = req("GET", "/v1/charges", TOKEN, "");
        r.headers_mut().insert("x-test-echo-auth", "1".parse().unwrap());
        if let Some(ms) = stall {
            r.headers_mut().insert("x-test-body-stall-ms", ms.parse().unwrap());
        }
        let reply = kw.send(r).await;
        assert_eq!(reply.status, 200);
        let body = String::from_utf8_lossy(&reply.body).into_owned();
        assert!(!body.contains(SECRET), "the secret in the body: {body}");
        assert!(body.contains("Bearer keyward-scrubbed"), "{body}");
        assert_eq!(body.len(), 64 * 2 + "Bearer ".len() + SECRET.len(), "same length");
        let echoed = reply.headers["x-echo-auth"].to_str().unwrap();
        assert!(!echoed.contains(SECRET) && echoed.starts_with("Bearer keyward-scrubbed"), "{echoed}");
    }
    assert!(kw.upstream.requests()[0].headers["authorization"].to_str().unwrap().contains(SECRET));
    let recs = kw.records(2).await;
    assert!(recs.iter().all(|r| r["reason"] == "secret_scrubbed"), "{recs:?}");
    // An ordinary answer is untouched.
    let plain = kw.get("/v1/charges", TOKEN).await;
    assert_eq!(plain.json()["object"], "list");
}

/// An HTTP/1.1 upstream's reason phrase is not passed on: `HTTP/1.1 200 OK Bearer sk_…` reaches
/// the caller as `HTTP/1.1 200 OK`.
#[tokio::test]
async fn an_upstreams_reason_phrase_never_reaches_the_caller() {
    let kw = Harness::new()
        .http1_upstream()
        .service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read"))
        .start()
        .await;
    let answer = kw
        .raw(
            format!(
                "GET /v1/charges HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nx-test-echo-auth: 1\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
    let status_line = answer.lines().next().unwrap_or_default();
    assert_eq!(status_line, "HTTP/1.1 200 OK", "{answer}");
    assert!(!answer.contains(SECRET), "{answer}");
    let seen = kw.upstream.requests();
    assert_eq!(seen[0].version, http::Version::HTTP_11, "the upstream spoke HTTP/1.1");
}

/// The upstream compresses when asked, and the secret sits in its answer: keyward asks for
/// `identity` whatever the caller asked, so the answer comes plain and is scrubbed; an upstream
/// that compresses anyway has its answer refused (502 `upstream_encoding_refused`), never
/// passed on unread. Over HTTP/2 and HTTP/1.1 upstreams, for gzip, deflate and br.
#[tokio::test]
async fn a_compressed_answer_never_reaches_the_caller_unscanned() {
    for h1 in [false, true] {
        let mut h = Harness::new().service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read"));
        if h1 {
            h = h.http1_upstream();
        }
        let kw = h.start().await;
        for coding in ["gzip", "deflate", "br"] {
            let what = format!("{coding}, HTTP/1.1 upstream: {h1}");
            let mut r = req("GET", "/v1/charges", TOKEN, "");
            r.headers_mut().insert("x-test-echo-auth", "1".parse().unwrap());
            r.headers_mut().insert("accept-encoding", format!("{coding}, identity;q=0.5").parse().unwrap());
            let reply = kw.send(r).await;
            assert_eq!(reply.status, 200, "{what}");
            assert!(!reply.headers.contains_key("content-encoding"), "{what}");
            let body = String::from_utf8_lossy(&reply.body).into_owned();
            assert!(body.contains("Bearer keyward-scrubbed") && !body.contains(SECRET), "{what}: {body}");
            let seen = kw.upstream.requests();
            assert_eq!(seen.last().unwrap().headers["accept-encoding"], "identity", "{what}");

            let mut r = req("GET", "/v1/charges", TOKEN, "");
            r.headers_mut().insert("x-test-echo-auth", "1".parse().unwrap());
            r.headers_mut().insert("x-test-encode", coding.parse().unwrap());
            let reply = kw.send(r).await;
            assert_eq!(
                (reply.status, reply.error_code()),
                (502, "upstream_encoding_refused".into()),
                "{what}"
            );
            assert!(!String::from_utf8_lossy(&reply.body).contains(SECRET), "{what}");
            let rec = kw.last_record(seen.len() + 1).await;
            assert_eq!((&rec["status"], &rec["reason"]), (&502.into(), &"upstream_encoding_refused".into()));
        }
        kw.stop().await;
    }
}

/// An HTTP/2 upstream that answers every request with a GOAWAY whose debug data echoes the
/// `Authorization` it was sent (written frame by frame: no server library sends debug data).
async fn goaway_upstream(pki: &Pki) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config(&[b"h2"]));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(goaway_once(acceptor.clone(), tcp));
        }
    });
    addr
}

async fn goaway_once(acceptor: tokio_rustls::TlsAcceptor, tcp: tokio::net::TcpStream) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let frame = |kind: u8, flags: u8, payload: &[u8]| {
        let len = (payload.len() as u32).to_be_bytes();
        [&len[1..], &[kind, flags, 0, 0, 0, 0], payload].concat()
    };
    let mut tls = acceptor.accept(tcp).await?;
    let mut preface = [0u8; 24];
    tls.read_exact(&mut preface).await?;
    tls.write_all(&frame(0x4, 0, &[])).await?;
    loop {
        let mut head = [0u8; 9];
        tls.read_exact(&mut head).await?;
        let mut payload = vec![0; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
        tls.read_exact(&mut payload).await?;
        match head[3] {
            0x4 if head[4] & 1 == 0 => tls.write_all(&frame(0x4, 1, &[])).await?,
            0x1 => break,
            _ => {}
        }
    }
    // Last stream 0 (the request was not processed), INTERNAL_ERROR, and the echo.
    let goaway = [&[0, 0, 0, 0, 0, 0, 0, 2][..], format!("echo Bearer {SECRET}").as_bytes()].concat();
    tls.write_all(&frame(0x7, 0, &goaway)).await?;
    tls.flush().await?;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    Ok(())
}

/// A GOAWAY's debug data is text the upstream chose: an echo of the secret there is not
/// logged, at the default level or at debug (where `h2` would log the frame).
#[tokio::test]
async fn an_upstreams_goaway_text_is_never_logged() {
    let pki = Pki::new();
    let up = goaway_upstream(&pki).await;
    for level in ["info", "debug"] {
        let kw = Harness::new()
            .upstream(&format!(
                "url = \"https://localhost:{}\"\nca = {:?}",
                up.port(),
                pki.ca.display().to_string()
            ))
            .service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read"))
            .log(level)
            .start_child()
            .await;
        let reply = kw.get("/v1/charges", TOKEN).await;
        assert_eq!((reply.status, reply.error_code()), (502, "upstream_unavailable".into()), "{level}");
        assert!(!String::from_utf8_lossy(&reply.body).contains(SECRET));
        let log = kw.child_log();
        assert!(log.contains("upstream request failed"), "{level}: {log}");
        assert!(log.contains("INTERNAL_ERROR") || log.contains("internal error"), "{level}: {log}");
        assert!(!log.contains(SECRET) && !log.contains("echo Bearer"), "{level}: the echo logged:\n{log}");
    }
}
