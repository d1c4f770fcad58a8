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

/// A suspension holds across a comment-only edit, a reload that renames the token's id, and a
/// restart, until `resume`; a token removed from the configuration takes its suspension with it.
#[tokio::test]
async fn a_suspension_holds_across_edits_and_restarts_until_resumed() {
    let kw = Harness::new()
        .service(Svc::new("billing").token("leaked", LEAKED).token("fresh", FRESH).scope("charge", "read"))
        .start()
        .await;
    let (status, body) = kw.admin_call("POST", "/-/tokens/leaked/suspend").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["suspended"][0]["service"], "billing");
    assert_eq!(body["saved"], true);
    let refused = |r: Reply| (r.status, r.error_code());
    assert_eq!(refused(kw.get("/v1/charges", LEAKED).await), (401, "api_key_revoked".to_string()));
    assert_eq!(kw.get("/v1/charges", FRESH).await.status, 200);
    assert_eq!(kw.metric("keyward_tokens_suspended").await, 1.0);
    assert_eq!(kw.records(2).await[0]["reason"], "api_key_suspended");
    assert_eq!(kw.admin_call("POST", "/-/tokens/nobody/suspend").await.0, 404);
    // A comment, then the token's id renamed: the same hash, still suspended.
    let commented = format!("{}\n# an unrelated edit\n", kw.config_text());
    std::fs::write(&kw.config_path, &commented).unwrap();
    assert!(kw.wait_version(&version_of(&commented).await).await);
    assert_eq!(refused(kw.get("/v1/charges", LEAKED).await).0, 401, "a comment lifted it");
    let renamed = kw.edited_config(|t| {
        let tokens = service_at(t, 0)["token"].as_array_mut().unwrap();
        tokens[0].as_table_mut().unwrap().insert("id".into(), "renamed".into());
    });
    std::fs::write(&kw.config_path, &renamed).unwrap();
    assert!(kw.wait_version(&version_of(&renamed).await).await);
    assert_eq!(refused(kw.get("/v1/charges", LEAKED).await).0, 401, "a new id lifted it");
    // A restart on the same configuration and state file.
    let (config_path, client) = (kw.config_path.clone(), kw.client.clone());
    let Running { app, upstream, pki, dir, .. } = kw;
    app.unwrap().stop().await;
    let src = keyward::control::config::Source::read(&config_path).unwrap();
    let app = keyward::app::start(&src).await.unwrap();
    let get = |token: &'static str| {
        let (addr, client) = (app.addr, client.clone());
        async move {
            let tls = tls_connect(addr, client, "127.0.0.1".parse().unwrap(), b"http/1.1").await.unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await.unwrap();
            tokio::spawn(conn);
            sender.send_request(req("GET", "/v1/charges", token, "")).await.unwrap().status().as_u16()
        }
    };
    assert_eq!(get(LEAKED).await, 401, "a restart lifted it");
    assert_eq!(get(FRESH).await, 200);
    // Resumed: admitted again, and the state file says so.
    let kw = Running::new(app, upstream, Default::default(), pki, dir, config_path);
    let (status, body) = kw.admin_call("POST", "/-/tokens/renamed/resume").await;
    assert_eq!((status, &body["resumed"][0]["token_id"]), (200, &serde_json::json!("renamed")), "{body}");
    assert_eq!(kw.get("/v1/charges", LEAKED).await.status, 200);
    assert_eq!(kw.admin_call("POST", "/-/tokens/renamed/resume").await.0, 404, "nothing left to resume");
    let state = std::fs::read_to_string(kw.dir.path().join("keyward-state.json")).unwrap();
    assert!(!state.contains(&sha256_hex(LEAKED)) && !state.contains(LEAKED), "{state}");
    // Suspended again, then removed from the configuration: the suspension goes with it.
    assert_eq!(kw.admin_call("POST", "/-/tokens/renamed/suspend").await.0, 200);
    let state = std::fs::read_to_string(kw.dir.path().join("keyward-state.json")).unwrap();
    assert!(state.contains(&sha256_hex(LEAKED)) && !state.contains(LEAKED), "by hash, never the token");
    let removed = kw.edited_config(|t| drop(service_at(t, 0)["token"].as_array_mut().unwrap().remove(0)));
    std::fs::write(&kw.config_path, &removed).unwrap();
    assert!(kw.wait_version(&version_of(&removed).await).await);
    assert_eq!(kw.metric("keyward_tokens_suspended").await, 0.0);
    kw.stop().await;
}

/// With an `[[admin.token]]`, every change needs it, from loopback too; reads stay open.
#[tokio::test]
async fn admin_changes_need_the_admin_token_once_one_is_configured() {
    const ADMIN: &str = "kw_admin_token_canary_0123456789abcdef";
    let kw = Harness::new()
        .service(Svc::new("billing").token("leaked", LEAKED).scope("charge", "read"))
        .top(&format!("[[admin.token]]\nid = \"ops\"\nsha256 = \"{}\"\n", sha256_hex(ADMIN)))
        .start()
        .await;
    for path in ["/-/reload", "/-/tokens/leaked/suspend", "/-/tokens/leaked/resume"] {
        let (status, body) = kw.admin_raw("POST", path, &[]).await;
        assert_eq!(status, 401, "{path}: {}", String::from_utf8_lossy(&body));
        let wrong = kw
            .admin_raw("POST", path, &[("authorization", "Bearer kw_not_the_admin_token_0123456789ab")])
            .await;
        assert_eq!(wrong.0, 401, "{path}");
        // A service token is no admin token.
        let service = kw.admin_raw("POST", path, &[("authorization", &format!("Bearer {LEAKED}"))]).await;
        assert_eq!(service.0, 401, "{path}");
    }
    assert_eq!(kw.get("/v1/charges", LEAKED).await.status, 200, "nothing was suspended");
    let bearer = format!("Bearer {ADMIN}");
    let (status, _) = kw.admin_raw("POST", "/-/tokens/leaked/suspend", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200);
    assert_eq!(kw.get("/v1/charges", LEAKED).await.status, 401);
    assert_eq!(kw.admin_raw("POST", "/-/reload", &[("authorization", &bearer)]).await.0, 200);
    for open in ["/metrics", "/healthz", "/readyz", "/-/status"] {
        let (status, body) = kw.admin_raw("GET", open, &[]).await;
        assert_eq!(status, 200, "{open}");
        assert!(!String::from_utf8_lossy(&body).contains(ADMIN), "{open}");
    }
    kw.stop().await;
}

/// Canary: an admin token, right, wrong or expired, never appears in keyward's log or in an
/// answer, through the admin port or the CLI (`KEYWARD_ADMIN_TOKEN`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_admin_token_escapes() {
    const ADMIN: &str = "kw_CANARYADMIN_token_0123456789abcdefgh";
    const OLD: &str = "kw_CANARYOLDADMIN_token_0123456789abcd";
    const WRONG: &str = "kw_CANARYWRONG_token_0123456789abcdefg";
    let admins = format!(
        "[[admin.token]]\nid = \"ops\"\nsha256 = \"{}\"\n[[admin.token]]\nid = \"old\"\nsha256 = \"{}\"\nexpires = \"2020-01-01T00:00:00Z\"\n",
        sha256_hex(ADMIN),
        sha256_hex(OLD)
    );
    let kw = Harness::new()
        .service(Svc::new("billing").token("leaked", LEAKED).scope("charge", "read"))
        .top(&admins)
        .start_child()
        .await;
    let mut said = String::new();
    for token in [Some(ADMIN), Some(OLD), Some(WRONG), None] {
        for path in ["/-/reload", "/-/tokens/leaked/suspend", "/-/tokens/leaked/resume"] {
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let (status, body) = kw.admin_raw("POST", path, &headers).await;
            assert_eq!(status == 401, token != Some(ADMIN), "{path} with {:?}", token.map(|t| &t[..8]));
            said.push_str(&String::from_utf8_lossy(&body));
        }
    }
    let cli = |token: Option<&str>, action: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"));
        cmd.args(["token", action, "leaked", "--admin", &kw.admin().to_string()])
            .env_remove("KEYWARD_ADMIN_TOKEN");
        if let Some(t) = token {
            cmd.env("KEYWARD_ADMIN_TOKEN", t);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    for (token, ok) in [(None, false), (Some(WRONG), false), (Some(ADMIN), true)] {
        let (succeeded, out) = cli(token, "suspend");
        assert_eq!(succeeded, ok, "{out}");
        said.push_str(&out);
    }
    assert_eq!(kw.get("/v1/charges", LEAKED).await.status, 401, "the CLI suspended it");
    assert!(cli(Some(ADMIN), "resume").0);
    let log = kw.child_log();
    assert!(
        log.contains("admin call refused") && log.contains("token suspended by the admin endpoint"),
        "{log}"
    );
    for (place, text) in [("the log", &log), ("the answers", &said)] {
        for canary in ["CANARYADMIN", "CANARYOLDADMIN", "CANARYWRONG"] {
            assert!(!text.contains(canary), "{canary} in {place}");
        }
    }
}

/// A state file that exists and cannot be read stops keyward from starting: it would start
/// with every suspension lifted.
#[tokio::test]
async fn an_unreadable_state_file_stops_the_start() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let text = Harness::new().service(Svc::new("billing").token("leaked", LEAKED)).config(
        &pki,
        &upstream.url(),
        dir.path(),
    );
    std::fs::write(dir.path().join("keyward-state.json"), "{\"suspended\": [").unwrap();
    let path = dir.path().join("keyward.toml");
    std::fs::write(&path, &text).unwrap();
    let src = keyward::control::config::Source { name: path, text };
    let Err(e) = keyward::app::start(&src).await else { panic!("keyward started") };
    let said = e.to_string();
    assert!(said.contains("admin.state_file") && said.contains("not a keyward state file"), "{said}");
}

/// The admin port holds at most 64 connections: a flood of idle ones from many addresses is
/// closed at once past it, and the port answers again once they go.
#[tokio::test]
async fn the_admin_port_holds_a_bounded_number_of_connections() {
    use tokio::io::AsyncReadExt;
    let kw = Harness::new().service(Svc::new("billing").token("leaked", LEAKED)).start().await;
    let mut held = Vec::new();
    for i in 0..64u32 {
        let from = std::net::IpAddr::from([127, 0, 0, 2 + (i % 40) as u8]);
        held.push(socket_from(from).unwrap().connect(kw.admin()).await.unwrap());
    }
    let mut past = socket_from("127.0.0.45".parse().unwrap()).unwrap().connect(kw.admin()).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), past.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the 65th was closed: {read:?}");
    drop(held);
    let ready = eventually(|| async { kw.admin_raw("GET", "/healthz", &[]).await.0 == 200 });
    assert!(ready.await);
    kw.stop().await;
}
