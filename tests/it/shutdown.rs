//! Shutting down: `/readyz` says 503 at once, new connections are still served for
//! `drain_delay`, then connections close politely and every in-flight request is recorded
//! before the access log closes.

use std::time::Duration;

use crate::common::*;

const TOKEN: &str = "kw_shutdown_token_0123456789abcdefgh";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_closes_politely_and_records_everything() {
    let mut kw = Harness::new()
        .top("[timeouts]\ndrain_delay = \"1s\"\nshutdown_grace = \"10s\"\n")
        .service(Svc::new("svc").token("t", TOKEN).scope("*", "read"))
        .start()
        .await;
    assert_eq!(kw.admin_call("GET", "/readyz").await.0, 200);
    // A call in flight across the whole shutdown: its upstream answers after 2 s.
    let mut slow = kw.connect().await;
    let in_flight = tokio::spawn(async move {
        let mut r = req("GET", "/v1/customers/cus_slow", TOKEN, "");
        r.headers_mut().insert("x-test-delay-ms", "2000".parse().unwrap());
        slow.send(r).await
    });
    assert!(eventually(|| async { kw.metric("keyward_requests_in_flight").await == 1.0 }).await);
    let (signal, signalled) = tokio::sync::oneshot::channel::<()>();
    let addr = kw.addr();
    let app = kw.app.take().unwrap();
    let stopped = tokio::spawn(app.until(async {
        let _ = signalled.await;
    }));
    signal.send(()).unwrap();
    let draining = || async {
        let (status, body) = kw.admin_call("GET", "/readyz").await;
        status == 503 && body["reason"] == "shutting down"
    };
    assert!(eventually(draining).await, "/readyz says 503 as soon as shutdown starts");
    // Still accepting during the drain delay: load balancers have not noticed yet.
    assert_eq!(kw.get("/v1/customers/cus_new", TOKEN).await.status, 200);
    let slow = tokio::time::timeout(Duration::from_secs(10), in_flight).await.unwrap().unwrap().unwrap();
    assert_eq!(slow.status, 200, "the call in flight is served");
    assert_eq!(
        slow.headers.get("connection").map(|v| v.to_str().unwrap()),
        Some("close"),
        "and its connection closed politely"
    );
    tokio::time::timeout(Duration::from_secs(15), stopped).await.unwrap().unwrap();
    // Every request is in the log, the one in flight included; nothing is served any more.
    let recs = kw.records(2).await;
    let paths: Vec<&str> = recs.iter().map(|r| r["path"].as_str().unwrap()).collect();
    assert!(
        paths.contains(&"/v1/customers/cus_slow") && paths.contains(&"/v1/customers/cus_new"),
        "{paths:?}"
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the listener is closed");
}
