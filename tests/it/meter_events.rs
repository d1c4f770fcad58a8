//! Stripe's meter-event stream through keyward: the stream authenticates with a session's
//! short-lived token, which keyward holds (made with the secret key) and injects; services
//! only ever hold their keyward token. Both official SDKs, the way Stripe documents it.

use crate::common::*;

const TOKEN: &str = "kw_meter_token_0123456789abcdefWXYZab";

fn metering(h: Harness) -> Harness {
    h.also_upstream("meter_events")
        .service(Svc::new("metering").token("m1", TOKEN).scope("billing_meter_event", "write"))
}

async fn run(program: &str, script: &str, env: &[(&str, &std::ffi::OsStr)]) -> Vec<serde_json::Value> {
    run_sdk(program, script, TOKEN, env).await
}

/// What reached the upstreams: no keyward token anywhere; the session request with the
/// secret key; every stream call with the session token the API stand-in issued.
fn check_upstreams(kw: &Running, sessions: usize, streams: usize) {
    let api = kw.upstream.requests();
    let made: Vec<_> = api.iter().filter(|s| s.uri == "/v2/billing/meter_event_session").collect();
    assert_eq!(made.len(), sessions);
    for s in &made {
        assert_eq!(s.headers["authorization"], format!("Bearer {SECRET}"));
    }
    let stream = kw.others["meter_events"].requests();
    assert_eq!(stream.len(), streams);
    for s in &stream {
        assert_eq!(s.uri, "/v2/billing/meter_event_stream");
        let auth = s.headers["authorization"].to_str().unwrap();
        assert!(auth.starts_with("Bearer mes_tok_upstream_"), "the stream got {auth}");
    }
    for s in api.iter().chain(stream.iter()) {
        assert!(!format!("{:?}{}", s.headers, String::from_utf8_lossy(&s.body)).contains(TOKEN));
    }
}

#[tokio::test]
async fn stripe_python_streams_meter_events_with_the_session_keyward_holds() {
    let kw = metering(Harness::new()).start().await;
    let base = format!("https://localhost:{}", kw.addr().port());
    let out =
        run("python3", "meter_events.py", &[("KW_BASE", base.as_ref()), ("KW_CA", kw.pki.ca.as_os_str())])
            .await;
    assert_eq!(
        out[0]["token_is_callers"], true,
        "the session answer carries the caller's own token: {out:?}"
    );
    assert!(out[1..].iter().all(|r| r["ok"] == true), "{out:?}");
    // One session, made by the service through keyward; both stream calls use its token.
    check_upstreams(&kw, 1, 2);
    let recs = kw.records(3).await;
    assert!(recs.iter().all(|r| r["service"] == "metering" && r["decision"] == "allow"), "{recs:?}");
    assert_eq!(recs[2]["permission"], "billing_meter_event_write");
    assert!(!serde_json::to_string(&recs).unwrap().contains("mes_tok"), "a session token in a record");
}

#[tokio::test]
async fn stripe_node_streams_meter_events_through_the_forward_port() {
    let kw = metering(Harness::new().forward("")).start().await;
    let proxy = format!("http://{}", kw.forward_addr());
    let ca = kw.forward_ca();
    let out = run(
        "node",
        "node/meter.js",
        &[("KW_PROXY", proxy.as_ref()), ("NODE_EXTRA_CA_CERTS", ca.as_os_str())],
    )
    .await;
    assert!(out.iter().all(|r| r["ok"] == true), "{out:?}");
    assert_eq!(out[1]["token_is_callers"], true);
    // The direct stream call had keyward make a session; the service's own session replaced it.
    check_upstreams(&kw, 2, 2);
    let stream = kw.others["meter_events"].requests();
    assert_ne!(stream[0].headers["authorization"], stream[1].headers["authorization"]);
}

#[tokio::test]
async fn a_session_token_is_never_accepted_as_a_key_and_stripes_refusal_passes_through() {
    let kw = metering(Harness::new()).start().await;
    // A session token (not a keyward token) is refused as any unknown key.
    let r = kw.post("/v2/billing/meter_event_stream", "mes_tok_upstream_1", "").await;
    assert_eq!((r.status, r.error_code()), (401, "api_key_invalid".to_string()));
    // Stripe refuses to make the session keyward asks for: its answer is the caller's.
    let mut refused = req("POST", "/v2/billing/meter_event_stream", TOKEN, "{}");
    refused.headers_mut().insert("content-type", "application/json".parse().unwrap());
    refused.headers_mut().insert("stripe-version", "test-refuse".parse().unwrap());
    let r = kw.send(refused).await;
    assert_eq!((r.status, r.error_code()), (400, "test_refused".to_string()));
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("keyward-scrubbed") && !message.contains(SECRET), "{message}");
    assert!(kw.others["meter_events"].requests().is_empty(), "nothing streamed without a session");
    // Without the permission: refused before any session is made.
    let other = "kw_meter_other_0123456789abcdefWXYZab";
    let kw2 = Harness::new()
        .also_upstream("meter_events")
        .service(Svc::new("reader").token("r1", other).scope("billing_meter_event", "read"))
        .start()
        .await;
    let mut req = req("POST", "/v2/billing/meter_event_stream", other, "");
    req.headers_mut().insert("content-type", "application/json".parse().unwrap());
    let r = kw2.send(req).await;
    assert_eq!((r.status, r.error_code()), (403, "more_permissions_required".to_string()));
    assert!(kw2.upstream.requests().is_empty() && kw2.others["meter_events"].requests().is_empty());
}

/// A stream answer that echoes the session token keyward sent has it replaced: the token works
/// from anywhere for 15 minutes, so it is a credential like the secret.
#[tokio::test]
async fn an_echoed_session_token_never_reaches_the_caller() {
    let kw = metering(Harness::new()).start().await;
    let mut r = req("POST", "/v2/billing/meter_event_stream", TOKEN, "{}");
    r.headers_mut().insert("content-type", "application/json".parse().unwrap());
    r.headers_mut().insert("x-test-echo-auth", "1".parse().unwrap());
    let reply = kw.send(r).await;
    assert_eq!(reply.status, 200);
    let body = String::from_utf8_lossy(&reply.body).into_owned();
    let header = reply.headers["x-echo-auth"].to_str().unwrap().to_string();
    for shown in [&body, &header] {
        assert!(!shown.contains("mes_tok_") && shown.contains("Bearer keyward-scrubbed"), "{shown}");
    }
    let sent = kw.others["meter_events"].requests();
    assert!(sent[0].headers["authorization"].to_str().unwrap().starts_with("Bearer mes_tok_upstream_"));
    assert_eq!(kw.last_record(1).await["reason"], "secret_scrubbed");
}
