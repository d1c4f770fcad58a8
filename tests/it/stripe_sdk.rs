//! The official Stripe Python SDK against keyward: allowed calls return objects, denied calls
//! raise the SDK's own exceptions.

use std::collections::HashMap;

use crate::common::*;

const TOKEN: &str = "kw_sdk_token_0123456789abcdefWXYZ";

#[tokio::test]
async fn stripe_python_sees_stripe_shaped_answers() {
    let kw = Harness::new()
        .also_upstream("files")
        .service(
            Svc::new("billing")
                .token("sdk", TOKEN)
                .scope("customer", "read")
                .scope("charge", "read")
                .scope("file", "write")
                .extra("accounts = [\"acct_1Allowed\"]"),
        )
        .start()
        .await;
    let base = format!("https://localhost:{}", kw.addr().port());
    let out = tokio::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/stripe_calls.py"))
        .env("KW_BASE", &base)
        .env("KW_TOKEN", TOKEN)
        .env("KW_CA", &kw.pki.ca)
        .output()
        .await
        .expect("python3 runs (the test command installs the stripe package)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stripe_calls.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: HashMap<String, serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| (v["scenario"].as_str().unwrap().to_string(), v))
        .collect();
    let r = |name: &str| results.get(name).unwrap_or_else(|| panic!("no result for {name}:\n{stdout}"));

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
    assert_eq!(r("connect_allowed")["id"], "cus_789");
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
    kw.stop().await;
}
