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
