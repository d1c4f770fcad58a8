//! Per-service limits: `rate` (with `burst`) and `concurrency`. Past them: 429 in Stripe's
//! shape (`rate_limit`, so the SDKs raise RateLimitError) with `Retry-After`.

use crate::common::*;

const TOKEN: &str = "kw_limits_token_0123456789abcdefWXYZ";

async fn limited(extra: &str) -> Running {
    Harness::new()
        .service(Svc::new("batch").token("b", TOKEN).scope("charge", "read").extra(extra))
        .start()
        .await
}

#[tokio::test]
async fn past_the_rate_a_call_gets_429_with_retry_after() {
    let kw = limited("rate = \"1/m\"\nburst = 2").await;
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    let r = kw.get("/v1/charges", TOKEN).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "rate_limit");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.headers["stripe-should-retry"], "true");
    assert_eq!(kw.upstream.requests().len(), 2);
    let recs = kw.records(3).await;
    assert_eq!(recs[2]["reason"], "rate_limited");
    assert_eq!(recs[2]["service"], "batch");
    // A reload that leaves the limits as they are does not refill the budget.
    let text = kw.edited_config(|t| {
        scope_at(t, 0).insert("customer".into(), "read".into());
    });
    std::fs::write(&kw.config_path, &text).unwrap();
    assert!(kw.wait_version(&version_of(&text).await).await);
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 429);
}

#[tokio::test]
async fn past_the_concurrency_a_call_gets_429_until_one_ends() {
    let kw = limited("concurrency = 1").await;
    let mut slow = req("GET", "/v1/charges", TOKEN, "");
    slow.headers_mut().insert("x-test-delay-ms", "800".parse().unwrap());
    let first = tokio::spawn({
        let (addr, tls) = (kw.addr(), kw.client.clone());
        async move { send(addr, tls, "127.0.0.1".parse().unwrap(), slow).await }
    });
    assert!(eventually(|| async { kw.metric("keyward_requests_in_flight").await == 1.0 }).await);
    let r = kw.get("/v1/charges", TOKEN).await;
    assert_eq!((r.status, r.error_code()), (429, "rate_limit".to_string()));
    assert_eq!(r.headers["retry-after"], "1");
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200, "the place came free");
    let recs = kw.records(3).await;
    assert!(recs.iter().any(|r| r["reason"] == "concurrency_limited"));
}

#[tokio::test]
async fn stripe_python_raises_its_rate_limit_error() {
    let kw = limited("rate = \"1/m\"\nburst = 1").await;
    let script = r#"
import os, stripe
stripe.api_base = os.environ["KW_BASE"]
stripe.ca_bundle_path = os.environ["KW_CA"]
stripe.api_key = os.environ["KW_TOKEN"]
stripe.max_network_retries = 0
stripe.Charge.list()
try:
    stripe.Charge.list()
    print("no error")
except stripe.RateLimitError as e:
    print("RateLimitError", e.http_status, e.code or e.error.code)
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script])
        .env("KW_BASE", format!("https://localhost:{}", kw.addr().port()))
        .env("KW_CA", &kw.pki.ca)
        .env("KW_TOKEN", TOKEN)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.trim(), "RateLimitError 429 rate_limit", "{}", String::from_utf8_lossy(&out.stderr));
}
