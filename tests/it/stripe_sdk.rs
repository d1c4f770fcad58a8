//! The official Stripe SDKs against keyward, as a base URL and as `HTTPS_PROXY`: allowed calls
//! return objects, denied calls raise the SDK's own exceptions.

use std::collections::HashMap;

use crate::common::*;

const TOKEN: &str = "kw_sdk_token_0123456789abcdefWXYZ";

fn billing(h: Harness) -> Harness {
    h.also_upstream("files").service(
        Svc::new("billing")
            .token("sdk", TOKEN)
            .scope("customer", "read")
            .scope("charge", "read")
            .scope("file", "write")
            .extra("accounts = [\"acct_1Allowed\"]"),
    )
}

/// Run an SDK script; its results by scenario.
async fn sdk(
    program: &str,
    script: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> HashMap<String, serde_json::Value> {
    let lines = run_sdk(program, script, TOKEN, env).await;
    lines.into_iter().map(|v| (v["scenario"].as_str().unwrap().to_string(), v)).collect()
}

#[tokio::test]
async fn stripe_python_sees_stripe_shaped_answers() {
    let kw = billing(Harness::new()).start().await;
    let base = format!("https://localhost:{}", kw.addr().port());
    let results =
        sdk("python3", "stripe_calls.py", &[("KW_BASE", base.as_ref()), ("KW_CA", kw.pki.ca.as_os_str())])
            .await;
    python_results(&kw, &results, "localhost");
    kw.stop().await;
}

/// stripe-python with `stripe.proxy` and its default `api_base` / `upload_api_base`.
#[tokio::test]
async fn stripe_python_through_the_forward_port() {
    let kw = billing(Harness::new().forward("")).start().await;
    let proxy = format!("http://{}", kw.forward_addr());
    let ca = kw.forward_ca();
    let results =
        sdk("python3", "stripe_calls.py", &[("KW_PROXY", proxy.as_ref()), ("KW_CA", ca.as_os_str())]).await;
    python_results(&kw, &results, "api.stripe.com");
    let recs = kw.records(11).await;
    assert!(recs.iter().all(|r| r["mode"] == "forward"));
    assert!(recs.iter().any(|r| r["connect_host"] == "files.stripe.com:443"));
    kw.stop().await;
}

/// stripe-node with `https-proxy-agent` (it ignores `HTTPS_PROXY`) and `NODE_EXTRA_CA_CERTS`.
#[tokio::test]
async fn stripe_node_through_the_forward_port() {
    let kw = billing(Harness::new().forward("")).start().await;
    let proxy = format!("http://{}", kw.forward_addr());
    let ca = kw.forward_ca();
    let r = sdk(
        "node",
        "node/calls.js",
        &[("KW_PROXY", proxy.as_ref()), ("NODE_EXTRA_CA_CERTS", ca.as_os_str())],
    )
    .await;
    assert_eq!(r["retrieve_customer"]["id"], "cus_123", "{:?}", r["retrieve_customer"]);
    assert_eq!(r["list_charges"]["object"], "list");
    assert_eq!(r["create_charge"]["exception"], "StripePermissionError", "{:?}", r["create_charge"]);
    assert_eq!(r["create_charge"]["status"], 403);
    assert_eq!(r["create_charge"]["code"], "more_permissions_required");
    assert_eq!(r["bad_token"]["exception"], "StripeAuthenticationError");
    let seen = kw.upstream.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.authority == "api.stripe.com"));
    assert!(seen.iter().all(|s| s.headers["authorization"] == format!("Bearer {SECRET}").as_str()));
    kw.stop().await;
}

fn python_results(kw: &Running, results: &HashMap<String, serde_json::Value>, authority: &str) {
    let r = |name: &str| results.get(name).unwrap_or_else(|| panic!("no result for {name}: {results:?}"));

    assert_eq!(r("retrieve_customer")["ok"], true);
    assert_eq!(r("retrieve_customer")["id"], "cus_123");
    assert_eq!(r("retrieve_customer")["object"], "customer");
    assert_eq!(r("list_charges")["object"], "list");
    assert_eq!(r("client_retrieve_customer")["id"], "cus_456");
    for denied in ["create_charge", "create_refund"] {
        assert_eq!(r(denied)["exception"], "PermissionError", "{denied}");
        assert_eq!(r(denied)["status"], 403);
        assert_eq!(r(denied)["code"], "more_permissions_required");
        assert!(r(denied)["message"].as_str().unwrap().contains("rak_charge_write"));
    }
    assert_eq!(r("connect_allowed")["id"], "cus_789", "{}", r("connect_allowed"));
    assert_eq!(r("connect_denied")["exception"], "PermissionError");
    assert_eq!(r("connect_denied")["code"], "account_not_allowed");
    assert_eq!(r("expand_allowed")["id"], "ch_123");
    assert_eq!(r("expand_denied")["exception"], "PermissionError");
    assert!(r("expand_denied")["message"].as_str().unwrap().contains("rak_balance_read"));
    // The SDK's own multipart upload has the one shape keyward accepts.
    assert_eq!(r("upload_file")["ok"], true, "{}", r("upload_file"));
    let uploads = kw.others["files"].requests();
    assert_eq!(uploads.len(), 1);
    assert!(String::from_utf8_lossy(&uploads[0].body).contains("%PDF-1.4 evidence"));
    assert_eq!(r("bad_token")["exception"], "AuthenticationError");
    assert_eq!(r("bad_token")["status"], 401);

    let seen = kw.upstream.requests();
    assert_eq!(seen.len(), 5, "only the allowed calls reach the upstream");
    assert_eq!(seen[2].headers["stripe-account"], "acct_1Allowed");
    assert!(seen[3].uri.contains("expand"), "{}", seen[3].uri);
    assert!(seen.iter().all(|s| s.headers["authorization"] == format!("Bearer {SECRET}").as_str()));
    assert!(seen.iter().all(|s| s.headers.contains_key("stripe-version")), "SDK headers pass");
    // python-requests asks for gzip by itself, and the test upstream compresses when asked: the
    // answers came plain (and scrubbed) because keyward asked for `identity`.
    assert!(seen.iter().all(|s| s.headers["accept-encoding"] == "identity"), "{:?}", seen[0].headers);
    assert!(seen.iter().all(|s| s.authority.starts_with(authority)), "{:?}", seen[0].authority);
}
