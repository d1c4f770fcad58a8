//! Spend caps (`[[service.spend]]`) on one replica: real TLS, the recording stand-in upstream.
//! Object ids like `ch_usd_5000_1000` are answered by the stand-in with that amount (5000),
//! `amount_refunded` (1000) and currency (see `common::Upstream`).

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::common::*;

const TOKEN: &str = "kw_spend_token_0123456789abcdefWXYZ";

fn support(caps: &str) -> Harness {
    Harness::new().service(
        Svc::new("support-tool")
            .token("t1", TOKEN)
            .scope("charge", "write")
            .scope("payout", "write")
            .scope("payment_intent", "write")
            .extra(&format!("accounts = [\"*\"]\nspend = [{caps}]")),
    )
}

fn refund(body: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut r = req("POST", "/v1/refunds", TOKEN, body);
    for (k, v) in headers {
        r.headers_mut().insert(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    r
}

fn money_calls(kw: &Running) -> usize {
    kw.upstream.requests().iter().filter(|s| s.method == "POST").count()
}

fn refund_calls_of(recs: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    recs.iter().filter(|r| r["method"] == "POST").collect()
}

#[tokio::test]
async fn per_call_and_per_day_caps_refuse_with_a_message_naming_the_cap() {
    let kw =
        support(r#"{ kinds = ["refund"], currency = "usd", per_call = 5000, per_day = 8000 }"#).start().await;
    let ok = kw.send(refund("charge=ch_usd_9000&amount=5000", &[])).await;
    assert_eq!(ok.status, 200, "{:?}", ok.json());
    let over_call = kw.send(refund("charge=ch_usd_9000&amount=5001", &[])).await;
    assert_eq!(over_call.status, 403);
    assert_eq!(over_call.headers["stripe-should-retry"], "false");
    assert_eq!(over_call.error_code(), "spend_limit_exceeded");
    assert_eq!(over_call.json()["error"]["type"], "invalid_request_error");
    let msg = over_call.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("support-tool may refund at most 5000 usd in one call (keyward spend cap)"),
        "{msg}"
    );
    let over_day = kw.send(refund("charge=ch_usd_9000&amount=3001", &[])).await;
    assert_eq!(over_day.status, 403);
    let msg = over_day.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with("support-tool may refund at most 8000 usd in any 24 hours (keyward spend cap); 3000 usd is left, and the oldest spend counted frees at 20"),
        "{msg}"
    );
    assert!(kw.send(refund("charge=ch_usd_9000&amount=3000", &[])).await.status == 200);
    assert_eq!(money_calls(&kw), 2, "refused calls never left");
    let recs = kw.records(8).await;
    let posts = refund_calls_of(&recs);
    assert_eq!(posts.len(), 4);
    assert_eq!((posts[0]["amount"].as_u64(), posts[0]["currency"].as_str()), (Some(5000), Some("usd")));
    assert_eq!(posts[0]["spend"], "committed");
    assert_eq!(
        (posts[1]["reason"].as_str(), posts[1]["spend"].as_str()),
        (Some("spend_limit_exceeded"), Some("refused"))
    );
    assert_eq!(posts[2]["decision"], "deny");
    let refused = kw
        .metric("keyward_spend_refused_total{service=\"support-tool\",kind=\"refund\",reason=\"per_day\"}")
        .await;
    assert_eq!(refused, 1.0);
    let spent = kw
        .metric("keyward_spend_amount_total{service=\"support-tool\",kind=\"refund\",currency=\"usd\",outcome=\"committed\"}")
        .await;
    assert_eq!(spent, 8000.0);
}

#[tokio::test]
async fn a_refund_without_amount_is_priced_by_reading_the_charge_first_and_that_read_is_recorded() {
    let kw = support(r#"{ kinds = ["refund"], currency = "usd", per_day = 10000 }"#).start().await;
    // 9000 charged, 2000 already refunded: refunding the rest moves 7000.
    let r = kw.send(refund("charge=ch_usd_9000_2000", &[("stripe-account", "acct_1Conn")])).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    let seen = kw.upstream.requests();
    let get = seen.iter().find(|s| s.method == "GET").expect("the charge was read first");
    assert_eq!(get.uri, "/v1/charges/ch_usd_9000_2000");
    assert_eq!(get.headers["stripe-account"], "acct_1Conn", "under the call's account context");
    assert!(get.headers["authorization"].to_str().unwrap().starts_with("Bearer sk_"), "with the real key");
    // 3000 left: a refund of what remains of a 4000 charge is over.
    let over = kw.send(refund("charge=ch_usd_4000", &[])).await;
    assert_eq!(over.status, 403);
    assert!(over.json()["error"]["message"].as_str().unwrap().contains("3000 usd is left"));
    // Through a PaymentIntent: its latest charge, expanded.
    let pi = kw.send(refund("payment_intent=pi_usd_5000_3000", &[])).await;
    assert_eq!(pi.status, 200);
    let recs = kw.records(6).await;
    let priced: Vec<_> = recs.iter().filter(|r| r["spend"] == "priced").collect();
    assert_eq!(priced.len(), 3, "{recs:#?}");
    assert_eq!(priced[0]["method"], "GET");
    assert_eq!(priced[0]["path"], "/v1/charges/ch_usd_9000_2000");
    assert_eq!(priced[0]["permission"], "charge_read");
    assert_eq!(priced[0]["stripe_account"], "acct_1Conn");
    assert_eq!(priced[0]["status"], 200);
    assert_eq!(priced[0]["upstream_request_id"].as_str().map(|s| s.starts_with("req_upstream_")), Some(true));
    let posts = refund_calls_of(&recs);
    assert_eq!((posts[0]["amount"].as_u64(), posts[0]["spend"].as_str()), (Some(7000), Some("committed")));
    assert_eq!(posts[2]["amount"].as_u64(), Some(2000));
    // A charge that cannot be read is not guessed: refused, 503.
    let unreadable = kw.send(refund("charge=ch_1&amount=10", &[])).await;
    assert_eq!(unreadable.status, 503);
    assert_eq!(unreadable.error_code(), "spend_limit_unavailable");
}

#[tokio::test]
async fn currencies_are_kept_apart() {
    let kw = support(r#"{ kinds = ["refund"], currency = "usd", per_day = 10000 }"#).start().await;
    let eur = kw.send(refund("charge=ch_eur_5000&amount=100", &[])).await;
    assert_eq!(eur.status, 403);
    assert_eq!(eur.error_code(), "spend_limit_exceeded");
    let msg = eur.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains(
            "only in the currencies its keyward spend caps name (usd); this call would refund 100 eur"
        ),
        "{msg}"
    );
    // Payouts carry their currency; they are not capped here at all.
    let payout = kw.post("/v1/payouts", TOKEN, "amount=999999&currency=eur").await;
    assert_eq!(payout.status, 200);
    let recs = kw.records(3).await;
    let p = recs.iter().find(|r| r["path"] == "/v1/payouts").unwrap();
    assert_eq!(
        (p["amount"].as_u64(), p["currency"].as_str(), p.get("spend")),
        (Some(999999), Some("eur"), None)
    );
}

#[tokio::test]
async fn twenty_concurrent_refunds_of_1000_against_a_10000_day_exactly_10_pass() {
    let kw = Arc::new(support(r#"{ kinds = ["refund"], currency = "usd", per_day = 10000 }"#).start().await);
    let statuses = twenty_refunds_of_1000(std::slice::from_ref(&kw)).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 10, "{statuses:?}");
    assert_eq!(money_calls(&kw), 10);
}

#[tokio::test]
async fn the_same_idempotency_key_retried_adds_nothing() {
    let kw = support(r#"{ kinds = ["refund"], currency = "usd", per_day = 1500 }"#).start().await;
    for _ in 0..3 {
        let r = kw.send(refund("charge=ch_usd_5000&amount=1000", &[("idempotency-key", "retry-me")])).await;
        assert_eq!(r.status, 200);
    }
    // Another key is a new refund: 1000 + 1000 > 1500.
    assert_eq!(
        kw.send(refund("charge=ch_usd_5000&amount=1000", &[("idempotency-key", "other")])).await.status,
        403
    );
    let recs = kw.records(7).await;
    let spend: Vec<_> =
        refund_calls_of(&recs).iter().map(|r| r["spend"].as_str().unwrap().to_string()).collect();
    assert_eq!(spend, ["committed", "replayed", "replayed", "refused"]);
}

#[tokio::test]
async fn a_4xx_answer_releases_its_reservation_and_a_5xx_or_timeout_stays_counted() {
    let kw = support(r#"{ kinds = ["refund"], currency = "usd", per_day = 2000 }"#)
        .top("[timeouts]\nupstream = \"300ms\"")
        .start()
        .await;
    let declined = kw.send(refund("charge=ch_usd_5000&amount=2000", &[("x-test-status", "402")])).await;
    assert_eq!(declined.status, 402);
    // Released: the whole day is still there.
    let failed = kw.send(refund("charge=ch_usd_5000&amount=1000", &[("x-test-status", "500")])).await;
    assert_eq!(failed.status, 500);
    let timed_out = kw.send(refund("charge=ch_usd_5000&amount=1000", &[("x-test-delay-ms", "1000")])).await;
    assert_eq!(timed_out.status, 504);
    // Both held: nothing is left.
    let over = kw.send(refund("charge=ch_usd_5000&amount=1", &[])).await;
    assert_eq!(over.status, 403);
    assert!(over.json()["error"]["message"].as_str().unwrap().contains("0 usd is left"));
    let recs = kw.records(8).await;
    let spend: Vec<_> =
        refund_calls_of(&recs).iter().map(|r| r["spend"].as_str().unwrap().to_string()).collect();
    assert_eq!(spend, ["released", "held", "held", "refused"]);
    let held = kw
        .metric("keyward_spend_amount_total{service=\"support-tool\",kind=\"refund\",currency=\"usd\",outcome=\"held\"}")
        .await;
    assert_eq!(held, 2000.0);
}

#[tokio::test]
async fn a_reload_changing_a_cap_keeps_the_days_spend() {
    let kw = support(r#"{ kinds = ["refund"], currency = "usd", per_day = 10000 }"#).start().await;
    assert_eq!(kw.send(refund("charge=ch_usd_9000&amount=6000", &[])).await.status, 200);
    let before = kw.version();
    let lower = kw.edited_config(|t| {
        let spend = service_at(t, 0)["spend"].as_array_mut().unwrap();
        spend[0].as_table_mut().unwrap().insert("per_day".into(), 7000.into());
    });
    std::fs::write(&kw.config_path, lower).unwrap();
    let (status, body) = kw.admin_reload().await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(kw.version(), before);
    let over = kw.send(refund("charge=ch_usd_9000&amount=2000", &[])).await;
    assert_eq!(over.status, 403);
    assert!(
        over.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 7000 usd in any 24 hours (keyward spend cap); 1000 usd is left")
    );
    assert_eq!(kw.send(refund("charge=ch_usd_9000&amount=1000", &[])).await.status, 200);
}

#[tokio::test]
async fn payments_count_once_when_authorized() {
    let kw = support(r#"{ kinds = ["payment"], currency = "usd", per_call = 5000 }"#).start().await;
    // Created without confirm: no money moves, nothing counted.
    assert_eq!(kw.post("/v1/payment_intents", TOKEN, "amount=9000&currency=usd").await.status, 200);
    let confirmed = kw.post("/v1/payment_intents", TOKEN, "amount=9000&currency=usd&confirm=true").await;
    assert_eq!(confirmed.status, 403);
    // Confirm: priced from the PaymentIntent.
    assert_eq!(kw.post("/v1/payment_intents/pi_usd_9000/confirm", TOKEN, "").await.status, 403);
    assert_eq!(kw.post("/v1/payment_intents/pi_usd_4000/confirm", TOKEN, "").await.status, 200);
    // increment_authorization: the new total less what is authorized.
    let inc = kw.post("/v1/payment_intents/pi_usd_4000/increment_authorization", TOKEN, "amount=8000").await;
    assert_eq!(inc.status, 200);
    let recs = kw.records(8).await;
    let inc = recs.iter().find(|r| r["path"].as_str().unwrap().ends_with("increment_authorization")).unwrap();
    assert_eq!(inc["amount"].as_u64(), Some(4000));
}

/// The SDKs raise their own permission error with keyward's message.
#[tokio::test]
async fn stripe_python_and_stripe_node_see_the_permission_error_with_the_message() {
    let kw = support(r#"{ kinds = ["refund"], currency = "usd", per_call = 500 }"#).start().await;
    let port = kw.addr().port().to_string();
    let base = format!("https://localhost:{port}");
    let ca = kw.pki.ca.clone();
    let py =
        run_sdk("python3", "spend.py", TOKEN, &[("KW_BASE", base.as_ref()), ("KW_CA", ca.as_os_str())]).await;
    let node = run_sdk(
        "node",
        "node/spend.js",
        TOKEN,
        &[("KW_PORT", port.as_ref()), ("NODE_EXTRA_CA_CERTS", ca.as_os_str())],
    )
    .await;
    let want = "support-tool may refund at most 500 usd in one call (keyward spend cap); this call would refund 1000 usd.";
    for (sdk, lines, exception) in
        [("python", &py, "PermissionError"), ("node", &node, "StripePermissionError")]
    {
        let over = lines.iter().find(|l| l["scenario"] == "over_cap").unwrap();
        assert_eq!(over["exception"], exception, "{sdk}: {over}");
        assert_eq!(over["status"], 403, "{sdk}");
        assert_eq!(over["code"], "spend_limit_exceeded", "{sdk}");
        // stripe-node puts the request id before the message: `[kwreq_…] support-tool may …`.
        let message = over["message"].as_str().unwrap();
        assert!(message == want || message.ends_with(&format!("] {want}")), "{sdk}: {message}");
        let within = lines.iter().find(|l| l["scenario"] == "within_cap").unwrap();
        assert_eq!(within["ok"], true, "{sdk}: {within}");
    }
}

/// A replica of `support` on one Redis: its own listener, snapshot and stand-in upstream.
async fn replica(redis: &crate::common::redis::Redis, caps: &str, extra: &str) -> Running {
    support(caps)
        .top(&format!("[ratelimit]\nredis = {:?}\ntimeout = \"2s\"\n{extra}", redis.url()))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_spend_one_budget_exactly_the_cap_in_all() {
    let redis = crate::common::redis::Redis::start();
    let caps = r#"{ kinds = ["refund"], currency = "usd", per_day = 10000 }"#;
    let one = Arc::new(replica(&redis, caps, "").await);
    let two = Arc::new(replica(&redis, caps, "").await);
    let statuses = twenty_refunds_of_1000(&[one.clone(), two.clone()]).await;
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 10, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 10, "{statuses:?}");
    assert_eq!(money_calls(&one) + money_calls(&two), 10, "exactly the cap left, through both");
    // Each replica's status shows the one budget, spent.
    for kw in [&one, &two] {
        let (code, body) = admin_request(kw.admin(), "GET", "/-/status").await;
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let cap = &v["spend"][0];
        assert_eq!((cap["service"].as_str(), cap["kind"].as_str()), (Some("support-tool"), Some("refund")));
        assert_eq!((cap["spent"].as_u64(), cap["left"].as_u64()), (Some(10000), Some(0)), "{v}");
        assert_eq!(cap["shared"], true);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_retried_through_the_other_replica_adds_nothing() {
    let redis = crate::common::redis::Redis::start();
    let caps = r#"{ kinds = ["refund"], currency = "usd", per_day = 1500 }"#;
    let one = replica(&redis, caps, "").await;
    let two = replica(&redis, caps, "").await;
    let body = "charge=ch_usd_5000&amount=1000";
    assert_eq!(one.send(refund(body, &[("idempotency-key", "retry-me")])).await.status, 200);
    assert_eq!(two.send(refund(body, &[("idempotency-key", "retry-me")])).await.status, 200);
    // Another key is a new refund: 1000 + 1000 > 1500, whichever replica takes it.
    let over = two.send(refund(body, &[("idempotency-key", "other")])).await;
    assert_eq!(over.status, 403);
    assert!(
        over.json()["error"]["message"].as_str().unwrap().contains("500 usd is left"),
        "{:?}",
        over.json()
    );
    // A declined refund (4xx) gives its reservation back to every replica.
    let declined = one.send(refund("charge=ch_usd_5000&amount=500", &[("x-test-status", "402")])).await;
    assert_eq!(declined.status, 402);
    assert_eq!(two.send(refund("charge=ch_usd_5000&amount=500", &[])).await.status, 200);
    // Each refund is priced first (its own GET record): two records a refund.
    let recs = two.records(6).await;
    let spend: Vec<_> =
        refund_calls_of(&recs).iter().map(|r| r["spend"].as_str().unwrap().to_string()).collect();
    assert_eq!(spend, ["replayed", "refused", "committed"]);
    let recs = one.records(4).await;
    let spend: Vec<_> =
        refund_calls_of(&recs).iter().map(|r| r["spend"].as_str().unwrap().to_string()).collect();
    assert_eq!(spend, ["committed", "released"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_stopped_capped_calls_are_refused_503_and_uncapped_calls_served() {
    let mut redis = crate::common::redis::Redis::start();
    // Rates fail open while Redis is out; money caps never do.
    let kw = replica(
        &redis,
        r#"{ kinds = ["refund"], currency = "usd", per_day = 10000 }"#,
        "on_redis_error = \"allow\"",
    )
    .await;
    assert_eq!(kw.send(refund("charge=ch_usd_9000&amount=1000", &[])).await.status, 200);
    redis.stop();
    for _ in 0..2 {
        let r = kw.send(refund("charge=ch_usd_9000&amount=1000", &[])).await;
        assert_eq!(r.status, 503, "{:?}", r.json());
        assert_eq!(r.error_code(), "spend_limit_unavailable");
        let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains("support-tool has a keyward spend cap on refund and the spend store"), "{msg}");
    }
    // Payouts are not capped here: served, as every uncapped call.
    assert_eq!(kw.post("/v1/payouts", TOKEN, "amount=999&currency=usd").await.status, 200);
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    assert_eq!(money_calls(&kw), 2, "no capped call left while Redis was out");
    let refused = kw
        .metric(
            "keyward_spend_refused_total{service=\"support-tool\",kind=\"refund\",reason=\"unavailable\"}",
        )
        .await;
    assert_eq!(refused, 2.0);
    // Back (this Redis keeps nothing across a restart): capped calls are served again.
    redis.resume();
    assert!(eventually(|| async { kw.metric("keyward_ratelimit_store_up").await == 1.0 }).await);
    let r = kw.send(refund("charge=ch_usd_9000&amount=1000", &[])).await;
    assert_eq!(r.status, 200, "{:?}", r.json());
}

/// Twenty refunds of 1,000 at once, each with its own `Idempotency-Key`, spread over `replicas`
/// in turn: their statuses.
async fn twenty_refunds_of_1000(replicas: &[Arc<Running>]) -> Vec<u16> {
    let calls = (0..20).map(|i| {
        let kw = replicas[i % replicas.len()].clone();
        tokio::spawn(async move {
            let key = format!("idem-{i}");
            kw.send(refund(
                "charge=ch_usd_100000&amount=1000",
                &[("idempotency-key", &key), ("x-test-delay-ms", "50")],
            ))
            .await
            .status
        })
    });
    futures_util::future::join_all(calls).await.into_iter().map(|s| s.unwrap()).collect()
}
