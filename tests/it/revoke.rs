//! `[[service.token]] revoked = TIME`: a leaked token is refused from that time on, by a
//! reload, with no restart and no effect on the service's other tokens.

use crate::common::*;

const LEAKED: &str = "kw_revoke_leaked_0123456789abcdefWXYZ";
const FRESH: &str = "kw_revoke_fresh_0123456789abcdefWXYZa";

#[tokio::test]
async fn a_revoked_token_gets_401_api_key_revoked_after_a_reload() {
    let kw = Harness::new()
        .service(Svc::new("billing").token("leaked", LEAKED).token("fresh", FRESH).scope("charge", "read"))
        .start()
        .await;
    assert_eq!(kw.get("/v1/charges", LEAKED).await.status, 200);
    let revoke = |when: &'static str| {
        kw.edited_config(move |t| {
            let tokens = service_at(t, 0)["token"].as_array_mut().unwrap();
            tokens[0].as_table_mut().unwrap().insert("revoked".into(), when.into());
        })
    };
    // In the future: nothing changes yet.
    let later = revoke("2099-01-01T00:00:00Z");
    std::fs::write(&kw.config_path, &later).unwrap();
    assert!(kw.wait_version(&version_of(&later).await).await);
    assert_eq!(kw.get("/v1/charges", LEAKED).await.status, 200);
    let now = revoke("2026-01-01T00:00:00Z");
    std::fs::write(&kw.config_path, &now).unwrap();
    assert!(kw.wait_version(&version_of(&now).await).await);
    let r = kw.get("/v1/charges", LEAKED).await;
    assert_eq!((r.status, r.error_code()), (401, "api_key_revoked".to_string()));
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("revoked") && !message.contains(LEAKED), "{message}");
    assert_eq!(kw.get("/v1/charges", FRESH).await.status, 200, "the other token still works");
    let recs = kw.records(4).await;
    assert_eq!(
        (recs[2]["reason"].as_str(), recs[2]["token_id"].as_str()),
        (Some("api_key_revoked"), Some("leaked"))
    );
}

/// `livemode = false`: a reload that would give the service a live key is refused whole, and
/// the test key keeps serving.
#[tokio::test]
async fn a_sandbox_service_never_gets_a_live_key() {
    let kw = Harness::new()
        .service(Svc::new("billing").token("fresh", FRESH).scope("charge", "read").extra("livemode = false"))
        .start()
        .await;
    assert_eq!(kw.get("/v1/charges", FRESH).await.status, 200);
    let version = kw.version();
    let secrets = kw.dir.path().join("secrets.toml");
    std::fs::write(&secrets, "stripe = \"sk_live_LIVEKEY_000000000000\"\n").unwrap();
    let (status, outcome) = kw.admin_reload().await;
    assert_eq!(status, 422, "{outcome}");
    let errors = outcome["errors"].to_string();
    assert!(
        errors.contains("livemode") && errors.contains("live-mode key") && !errors.contains("LIVEKEY"),
        "{errors}"
    );
    assert_eq!(kw.version(), version);
    assert_eq!(kw.get("/v1/charges", FRESH).await.status, 200);
    assert!(kw.upstream.requests().iter().all(|r| r.headers["authorization"] == format!("Bearer {SECRET}")));
}

#[tokio::test]
async fn the_admin_endpoint_suspends_a_token_until_the_next_configuration_change() {
    let kw = Harness::new()
        .service(Svc::new("billing").token("leaked", LEAKED).token("fresh", FRESH).scope("charge", "read"))
        .start()
        .await;
    let (status, body) = kw.admin_call("POST", "/-/tokens/leaked/suspend").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["suspended"][0]["service"], "billing");
    let r = kw.get("/v1/charges", LEAKED).await;
    assert_eq!((r.status, r.error_code()), (401, "api_key_revoked".to_string()));
    assert_eq!(kw.get("/v1/charges", FRESH).await.status, 200);
    assert_eq!(kw.metric("keyward_tokens_suspended").await, 1.0);
    let recs = kw.records(2).await;
    assert_eq!(recs[0]["reason"], "api_key_suspended");
    let (status, _) = kw.admin_call("POST", "/-/tokens/nobody/suspend").await;
    assert_eq!(status, 404);
    // The next configuration (which should revoke it for good) lifts the suspension.
    let next = kw.edited_config(|t| drop(scope_at(t, 0).insert("customer".into(), "read".into())));
    std::fs::write(&kw.config_path, &next).unwrap();
    assert!(kw.wait_version(&version_of(&next).await).await);
    assert_eq!(kw.get("/v1/charges", LEAKED).await.status, 200);
    assert_eq!(kw.metric("keyward_tokens_suspended").await, 0.0);
}
