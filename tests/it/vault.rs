//! The vault secret source against a real OpenBao dev server: reads, AppRole, renewal,
//! rotation with no restart, outages, start-up errors, and a log canary.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::bao::{Bao, private_file};
use crate::common::*;
use keyward::secrets::SecretCell;
use serde_json::json;

const V1: &str = "sk_test_VAULTKEY_one_1111111111";
const V2: &str = "sk_test_VAULTKEY_two_2222222222";
const TOKEN: &str = "kw_vaulttest_0123456789abcdef0123";
const PATH: &str = "payments/stripe";

fn billing() -> Svc {
    Svc::new("billing").token("t1", TOKEN).scope("charge", "read")
}

/// `[secret.stripe]` for `bao`: `auth` and `extra` are more TOML lines.
fn vault_toml(bao: &Bao, auth: &str, extra: &str) -> String {
    let ca = if bao.tls { format!("ca = {:?}\n", bao.ca()) } else { String::new() };
    format!("addr = {:?}\n{ca}path = \"{PATH}\"\nfield = \"api_key\"\n{auth}\n{extra}\n", bao.addr())
}

/// The harness's configuration with its `[secret.stripe]` table read from the vault instead.
/// The configuration `text` with its secret `stripe` from the vault (`vault`: its keys).
fn with_vault(text: &str, vault: &str) -> String {
    let mut t: toml::Table = toml::from_str(text).unwrap();
    table_at(&mut t, &["secret"])
        .insert("stripe".into(), fragment(&format!("source = \"vault\"\n{vault}")).into());
    toml::to_string(&t).unwrap()
}

/// keyward in-process, in front of a recording upstream, with its secret from the vault.
async fn keyward(vault: &str) -> Running {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let text =
        with_vault(&Harness::new().service(billing()).config(&pki, &upstream.url(), dir.path()), vault);
    let config_path = dir.path().join("keyward.toml");
    std::fs::write(&config_path, &text).unwrap();
    let src = keyward::control::config::Source { name: config_path.clone(), text };
    let app = keyward::app::start(&src).await.unwrap_or_else(|e| panic!("keyward did not start:\n{e}"));
    Running::new(app, upstream, HashMap::new(), pki, dir, config_path)
}

fn cell(kw: &Running) -> Arc<SecretCell> {
    kw.app.as_ref().unwrap().proxy.state.snapshot.load().secrets[0].clone()
}

/// The key the upstream received last.
fn last_key(kw: &Running) -> String {
    let seen = kw.upstream.requests();
    let auth = seen.last().expect("the upstream got a request").headers["authorization"].to_str().unwrap();
    auth.strip_prefix("Bearer ").unwrap().to_string()
}

/// Send `GET /v1/charges` every 50 ms (each must succeed) until `done` or `limit` passes.
async fn until(kw: &Running, limit: Duration, done: impl Fn(&Running) -> bool) -> (bool, usize) {
    let deadline = Instant::now() + limit;
    let mut sent = 0;
    while Instant::now() < deadline {
        let r = kw.get("/v1/charges", TOKEN).await;
        sent += 1;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        if done(kw) {
            return (true, sent);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (false, sent)
}

async fn wait_for(limit: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

#[tokio::test]
async fn happy_path_over_tls_with_a_token_file() {
    let bao = Bao::start_tls().await;
    assert_eq!(bao.kv_put(PATH, json!({ "api_key": V1, "publishable": "pk_test_1" })).await, 1);
    bao.reader_policy("stripe-reader", PATH).await;
    let token = bao.token(&["stripe-reader"], "1h").await;
    let token_file = private_file(bao.dir.path(), "token", &format!("{token}\n"));
    let kw = keyward(&vault_toml(&bao, &format!("token_file = {token_file:?}"), "")).await;

    let r = kw.get("/v1/charges/ch_1", TOKEN).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(last_key(&kw), V1);
    let rec = kw.last_record(1).await;
    assert_eq!((rec["decision"].as_str(), rec["secret_version"].as_u64()), (Some("allow"), Some(1)));
    assert!(!rec.to_string().contains(V1));
    kw.stop().await;
}

#[tokio::test]
async fn approle_logs_in_renews_and_logs_in_again() {
    let bao = Bao::start().await;
    bao.kv_put(PATH, json!({ "api_key": V1 })).await;
    bao.reader_policy("stripe-reader", PATH).await;
    // Tokens live 2 s, renewable up to 4 s: within 5 s keyward must renew, then log in again.
    let (role_id, secret_id) = bao.approle("keyward", &["stripe-reader"], "2s", "4s").await;
    let secret_id_file = private_file(bao.dir.path(), "secret_id", &secret_id);
    let auth = format!("role_id = {role_id:?}\nsecret_id_file = {secret_id_file:?}");
    let kw = keyward(&vault_toml(&bao, &auth, "refresh = \"200ms\"")).await;

    let (_, sent) = until(&kw, Duration::from_secs(5), |_| false).await;
    assert!(sent > 10);
    assert_eq!(last_key(&kw), V1);
    let cell = cell(&kw);
    assert_eq!(cell.refresh_failures.load(Ordering::Relaxed), 0, "every refresh succeeded");
    assert!(cell.age() < Duration::from_secs(1), "refreshed lately: {:?}", cell.age());
    kw.stop().await;
}

#[tokio::test]
async fn a_renewable_token_is_renewed() {
    let bao = Bao::start().await;
    bao.kv_put(PATH, json!({ "api_key": V1 })).await;
    bao.reader_policy("stripe-reader", PATH).await;
    let token = bao.token(&["stripe-reader"], "2s").await;
    let token_file = private_file(bao.dir.path(), "token", &token);
    let kw = keyward(&vault_toml(&bao, &format!("token_file = {token_file:?}"), "refresh = \"200ms\"")).await;

    // Without renewals the token would be dead after 2 s.
    until(&kw, Duration::from_secs(4), |_| false).await;
    let cell = cell(&kw);
    assert_eq!(cell.refresh_failures.load(Ordering::Relaxed), 0);
    assert!(cell.age() < Duration::from_secs(1), "refreshed lately: {:?}", cell.age());
    kw.stop().await;
}

#[tokio::test]
async fn a_rotated_key_is_injected_on_the_next_refresh_with_no_restart() {
    let bao = Bao::start_tls().await;
    bao.kv_put(PATH, json!({ "api_key": V1 })).await;
    bao.reader_policy("stripe-reader", PATH).await;
    let token = bao.token(&["stripe-reader"], "1h").await;
    let token_file = private_file(bao.dir.path(), "token", &token);
    let kw = keyward(&vault_toml(&bao, &format!("token_file = {token_file:?}"), "refresh = \"200ms\"")).await;
    let config_version = kw.version();

    let mut conn = kw.connect().await;
    let mut sent = 0;
    for _ in 0..3 {
        assert_eq!(conn.send(req("GET", "/v1/charges", TOKEN, "")).await.unwrap().status, 200);
        sent += 1;
    }
    bao.cli_kv_put(PATH, &[("api_key", V2)]);
    let rotated = Instant::now();
    // Requests keep flowing on the same keep-alive connection; none may fail.
    while last_key(&kw) != V2 && rotated.elapsed() < Duration::from_secs(5) {
        let r = conn.send(req("GET", "/v1/charges", TOKEN, "")).await.unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        sent += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(last_key(&kw), V2, "the new key reached the upstream");
    // One interval is 200 ms; allow for a slow test machine.
    assert!(rotated.elapsed() < Duration::from_secs(2), "took {:?}", rotated.elapsed());

    let app = kw.app.as_ref().unwrap();
    assert_eq!(kw.version(), config_version);
    assert_eq!(app.reloader.state().metrics.reload_counts().0, 0, "no reload was needed");
    let records = kw.records(sent).await;
    assert!(records.iter().all(|r| r["status"] == 200));
    let versions: Vec<u64> = records.iter().map(|r| r["secret_version"].as_u64().unwrap()).collect();
    assert_eq!((versions[0], *versions.last().unwrap()), (1, 2), "{versions:?}");
    assert!(versions.windows(2).all(|w| w[0] <= w[1]), "{versions:?}");
    kw.stop().await;
}

#[tokio::test]
async fn a_vault_outage_serves_the_last_key_and_refresh_resumes() {
    let mut bao = Bao::start().await;
    bao.kv_put(PATH, json!({ "api_key": V1 })).await;
    // The dev server's root token survives its restart (a policy token would not).
    let token_file = private_file(bao.dir.path(), "token", &bao.root_token);
    let extra = "refresh = \"200ms\"\ntimeout = \"500ms\"";
    let kw = keyward(&vault_toml(&bao, &format!("token_file = {token_file:?}"), extra)).await;
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);

    bao.stop();
    let cell = cell(&kw);
    assert!(wait_for(Duration::from_secs(5), || cell.is_failing()).await, "the refresh noticed");
    let (_, sent) = until(&kw, Duration::from_secs(1), |_| false).await;
    assert!(sent > 5);
    assert_eq!(last_key(&kw), V1, "still the last good key");
    assert!(cell.refresh_failures.load(Ordering::Relaxed) >= 2);
    let records = kw.records(1 + sent).await;
    assert!(records.iter().all(|r| r["status"] == 200 && r["secret_version"] == 1));

    bao.restart().await;
    bao.kv_put(PATH, json!({ "api_key": V2 })).await;
    let (rotated, _) = until(&kw, Duration::from_secs(5), |kw| last_key(kw) == V2).await;
    assert!(rotated, "refresh resumed after the vault came back");
    assert!(!cell.is_failing());
    kw.stop().await;
}

#[tokio::test]
async fn past_max_staleness_the_refuse_policy_answers_503() {
    let mut bao = Bao::start().await;
    bao.kv_put(PATH, json!({ "api_key": V1 })).await;
    let token_file = private_file(bao.dir.path(), "token", &bao.root_token);
    let extra = "refresh = \"200ms\"\ntimeout = \"300ms\"\nmax_staleness = \"1s\"\non_stale = \"refuse\"";
    let kw = keyward(&vault_toml(&bao, &format!("token_file = {token_file:?}"), extra)).await;
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);

    bao.stop();
    let stopped = Instant::now();
    let deadline = stopped + Duration::from_secs(5);
    let mut sent = 1;
    let refused = loop {
        let r = kw.get("/v1/charges", TOKEN).await;
        sent += 1;
        if r.status != 200 || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(refused.status, 503);
    assert_eq!(refused.error_code(), "secret_stale");
    assert_eq!(refused.json()["error"]["type"], "api_error");
    // The last success was at most one interval before the stop.
    assert!(stopped.elapsed() >= Duration::from_millis(750), "refused after {:?}", stopped.elapsed());
    let rec = kw.last_record(sent).await;
    assert_eq!((rec["status"].as_u64(), rec["reason"].as_str()), (Some(503), Some("secret_stale")));
    // Not ready while every call would fail: a load balancer can take the instance out.
    let (status, ready) = kw.admin_call("GET", "/readyz").await;
    assert_eq!((status, ready["reason"].as_str()), (503, Some("secret stripe is stale and refused")));

    bao.restart().await;
    bao.kv_put(PATH, json!({ "api_key": V2 })).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while kw.get("/v1/charges", TOKEN).await.status != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    assert_eq!(last_key(&kw), V2);
    assert_eq!(kw.admin_call("GET", "/readyz").await.0, 200);
    kw.stop().await;
}

#[tokio::test]
async fn a_reload_refreshes_the_key_and_survives_a_vault_outage() {
    let mut bao = Bao::start().await;
    bao.kv_put(PATH, json!({ "api_key": V1 })).await;
    let token_file = private_file(bao.dir.path(), "token", &bao.root_token);
    // A long interval: only the reload refreshes here.
    let extra = "refresh = \"10m\"\ntimeout = \"500ms\"";
    let kw = keyward(&vault_toml(&bao, &format!("token_file = {token_file:?}"), extra)).await;
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    assert_eq!(last_key(&kw), V1);

    assert_eq!(bao.kv_put(PATH, json!({ "api_key": V2 })).await, 2);
    let (status, outcome) = kw.admin_reload().await;
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    assert_eq!(last_key(&kw), V2);
    assert_eq!(kw.last_record(2).await["secret_version"], 2);

    // With the vault down, a reload that leaves the vault table alone still applies.
    bao.stop();
    let text = kw.config_text() + "\n# a comment changes the version\n";
    std::fs::write(&kw.config_path, &text).unwrap();
    let (status, outcome) = kw.admin_reload().await;
    assert_eq!(status, 200, "{outcome}");
    assert!(kw.wait_version(&version_of(&text).await).await);
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    assert_eq!(last_key(&kw), V2);
    assert!(cell(&kw).refresh_failures.load(Ordering::Relaxed) >= 1);

    // A changed vault table needs a fresh read: refused while the vault is down.
    let text = text.replace("field = \"api_key\"", "field = \"secret_key\"");
    std::fs::write(&kw.config_path, &text).unwrap();
    let (status, outcome) = kw.admin_reload().await;
    assert_eq!(status, 422, "{outcome}");
    let errors = outcome["errors"].to_string();
    assert!(errors.contains("secret.stripe") && errors.contains("cannot reach the vault"), "{errors}");
    assert!(!errors.contains(&bao.root_token));
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    kw.stop().await;
}

/// A keyward configuration (not started) whose secret is `vault`.
fn config_text(pki: &Pki, dir: &std::path::Path, vault: &str) -> String {
    with_vault(&Harness::new().service(billing()).config(pki, "https://localhost:1", dir), vault)
}

async fn startup_error(pki: &Pki, dir: &std::path::Path, vault: &str) -> String {
    let src = keyward::control::config::Source {
        name: dir.join("keyward.toml"),
        text: config_text(pki, dir, vault),
    };
    let errs = keyward::control::config::compile(&src, keyward::control::config::Options::FULL)
        .await
        .expect_err("must fail");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "secret.stripe");
    errs[0].to_string()
}

#[tokio::test]
async fn start_up_errors_name_the_secret_and_the_vault_path() {
    let bao = Bao::start().await;
    bao.kv_put(PATH, json!({ "api_key": V1 })).await;
    bao.kv_put("payments/deleted", json!({ "api_key": V1 })).await;
    bao.api(http::Method::DELETE, "secret/data/payments/deleted", None).await;
    bao.kv1("kv1", PATH, json!({ "api_key": V1 })).await;
    bao.reader_policy("stripe-reader", PATH).await;
    let (_, _) = bao.approle("keyward", &["stripe-reader"], "1h", "2h").await;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let root = private_file(dir.path(), "root", &bao.root_token);
    let wrong = private_file(dir.path(), "wrong", "s.WRONGTOKENCANARY0000000");
    let bad_secret_id = private_file(dir.path(), "secret_id", "00000000-CANARY-SECRETID-0000");
    let loose = dir.path().join("loose");
    std::fs::write(&loose, &bao.root_token).unwrap();
    let root_auth = format!("token_file = {root:?}");
    // A listener that never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();

    let addr = bao.addr();
    let cases: Vec<(&str, String, &str)> = vec![
        ("wrong token", vault_toml(&bao, &format!("token_file = {wrong:?}"), ""), "permission denied (403"),
        (
            "missing path",
            vault_toml(&bao, &root_auth, "").replace(PATH, "payments/nothing"),
            "no secret at this path (404)",
        ),
        (
            "missing field",
            vault_toml(&bao, &root_auth, "").replace("api_key", "secret_key"),
            "no field `secret_key` (its fields: api_key)",
        ),
        (
            "deleted",
            vault_toml(&bao, &root_auth, "").replace(PATH, "payments/deleted"),
            "latest version (1) is deleted",
        ),
        (
            "KV v1 mount",
            vault_toml(&bao, &root_auth, "mount = \"kv1\""),
            "mount `kv1` is a KV version 1 mount",
        ),
        (
            "other engine",
            vault_toml(&bao, &root_auth, "mount = \"cubbyhole\""),
            "`cubbyhole` secrets engine, not KV version 2",
        ),
        (
            "AppRole refused",
            vault_toml(&bao, &format!("role_id = \"nope\"\nsecret_id_file = {bad_secret_id:?}"), ""),
            "logging in at auth/approle/login: AppRole login refused (400",
        ),
        (
            "token file readable by others",
            vault_toml(&bao, &format!("token_file = {loose:?}"), ""),
            "readable by others",
        ),
        (
            "no token file",
            vault_toml(&bao, "token_file = \"/nonexistent/token\"", ""),
            "/nonexistent/token: No such file",
        ),
        (
            "unset env",
            vault_toml(&bao, "token_env = \"KEYWARD_TEST_UNSET_TOKEN\"", ""),
            "KEYWARD_TEST_UNSET_TOKEN is not set",
        ),
        (
            "unreachable",
            vault_toml(&bao, &root_auth, "").replace(&addr, &format!("http://{closed}")),
            "cannot reach the vault",
        ),
        (
            "timeout",
            vault_toml(&bao, &root_auth, "timeout = \"300ms\"")
                .replace(&addr, &format!("http://{silent_addr}")),
            "no answer within 300ms",
        ),
        (
            "TLS to plain HTTP",
            vault_toml(&bao, &root_auth, "").replace("http://", "https://"),
            "cannot reach the vault",
        ),
    ];
    for (name, vault, want) in cases {
        let started = Instant::now();
        let err = startup_error(&pki, dir.path(), &vault).await;
        assert!(err.contains(want), "{name}: {err}");
        if !name.contains("token") && !name.contains("env") && !name.contains("AppRole") {
            assert!(err.contains("/data/payments/"), "{name} names the path: {err}");
        }
        for canary in [V1, &bao.root_token, "WRONGTOKENCANARY", "CANARY-SECRETID"] {
            assert!(!err.contains(canary), "{name} leaks: {err}");
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{name} took {:?}", started.elapsed());
    }

    bao.seal().await;
    let err = startup_error(&pki, dir.path(), &vault_toml(&bao, &root_auth, "")).await;
    assert!(err.contains("sealed or unavailable (503"), "{err}");
    drop(silent);
}

#[tokio::test]
async fn keyward_check_names_every_secret_that_failed() {
    let bao = Bao::start().await;
    bao.kv_put(PATH, json!({ "api_key": V1 })).await;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let root = private_file(dir.path(), "root", &bao.root_token);
    let wrong = private_file(dir.path(), "wrong", "s.WRONGTOKENCANARY0000000");
    let good = config_text(&pki, dir.path(), &vault_toml(&bao, &format!("token_file = {root:?}"), ""));
    let path = dir.path().join("keyward.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_keyward"))
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, out) = check(&good);
    assert!(ok && out.contains("ok:"), "{out}");

    // Two services, two secrets, both failing: both are named, and keyward exits non-zero.
    let other = Svc::new("reports").token("t2", "kw_vaulttest_reports_0123456789ab");
    let mut broken = with_vault(
        &Harness::new().service(billing()).service(other).config(&pki, "https://localhost:1", dir.path()),
        &vault_toml(&bao, &format!("token_file = {wrong:?}"), ""),
    );
    let other_secret =
        vault_toml(&bao, &format!("token_file = {root:?}"), "").replace("api_key", "missing_field");
    let mut t: toml::Table = toml::from_str(&broken).unwrap();
    t["service"].as_array_mut().unwrap()[1].as_table_mut().unwrap().insert("secret".into(), "other".into());
    let other = fragment(&format!("source = \"vault\"\n{other_secret}"));
    table_at(&mut t, &["secret"]).insert("other".into(), other.into());
    broken = toml::to_string(&t).unwrap();
    let (ok, out) = check(&broken);
    assert!(!ok, "{out}");
    assert!(out.contains("secret.stripe: vault") && out.contains("permission denied"), "{out}");
    assert!(out.contains("secret.other: vault") && out.contains("no field `missing_field`"), "{out}");
    for canary in [V1, &bao.root_token, "WRONGTOKENCANARY"] {
        assert!(!out.contains(canary), "{out}");
    }
}

/// The binary at trace level, through a rotation, an outage and a recovery: neither the vault
/// token nor any key version appears in a log line, the access log or a response; each state
/// change is logged once.
#[tokio::test]
async fn canary_no_vault_token_or_key_escapes() {
    const K1: &str = "sk_test_CANARYVAULTKEY_first_9f8e7d";
    const K2: &str = "sk_test_CANARYVAULTKEY_second_6c5b4a";
    const K3: &str = "sk_test_CANARYVAULTKEY_third_392817";
    let mut bao = Bao::start().await;
    bao.kv_put(PATH, json!({ "api_key": K1 })).await;
    let pki = Pki::new();
    let upstream = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = vault_toml(
        &bao,
        "token_env = \"KEYWARD_TEST_VAULT_TOKEN\"",
        "refresh = \"200ms\"\ntimeout = \"300ms\"",
    );
    let text =
        with_vault(&Harness::new().service(billing()).config(&pki, &upstream.url(), dir.path()), &vault);
    let path = dir.path().join("keyward.toml");
    std::fs::write(&path, text).unwrap();

    let KeywardProcess { mut child, addr, logs, .. } =
        spawn_keyward(&path, &[("KEYWARD_TEST_VAULT_TOKEN", &bao.root_token)]);
    let tls = pki.client_config();
    let local = "127.0.0.1".parse().unwrap();
    let mut responses = String::new();
    let mut sent = 0;
    // Requests until the upstream got `key` (bounded), keeping every response.
    let mut until_key = async |key: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = send(addr, tls.clone(), local, req("GET", "/v1/charges", TOKEN, "")).await;
            sent += 1;
            assert_eq!(r.status, 200);
            responses.push_str(&String::from_utf8_lossy(&r.body));
            for (_, v) in r.headers.iter() {
                responses.push_str(v.to_str().unwrap_or(""));
            }
            let seen = upstream.requests();
            if seen.last().unwrap().headers["authorization"] == format!("Bearer {key}").as_str() {
                return;
            }
            assert!(Instant::now() < deadline, "the upstream never got the expected key");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    until_key(K1).await;
    bao.kv_put(PATH, json!({ "api_key": K2 })).await;
    until_key(K2).await;
    bao.stop();
    tokio::time::sleep(Duration::from_millis(800)).await;
    until_key(K2).await;
    bao.restart().await;
    bao.kv_put(PATH, json!({ "api_key": K3 })).await;
    until_key(K3).await;

    let audit_path = dir.path().join("audit.jsonl");
    let deadline = Instant::now() + Duration::from_secs(5);
    while call_lines(&std::fs::read_to_string(&audit_path).unwrap_or_default()).len() < sent
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let stderr = logs.join().unwrap();
    let audit = std::fs::read_to_string(&audit_path).unwrap();
    assert_eq!(call_lines(&audit).len(), sent);
    assert!(stderr.contains("TRACE"), "logs ran at trace level");

    for (place, text) in
        [("access log", &audit), ("stderr", &stderr), ("stdout", &stdout), ("responses", &responses)]
    {
        for canary in ["CANARYVAULTKEY", bao.root_token.as_str()] {
            assert!(!text.contains(canary), "{canary} appears in {place}");
        }
    }
    let count = |what: &str| stderr.lines().filter(|l| l.contains(what)).count();
    assert_eq!(count("secret refresh failing"), 1, "logged once, not per attempt");
    assert_eq!(count("secret refresh recovered"), 1);
    assert!(count("secret has a new version") >= 1);
    assert!(stderr.contains("cannot reach the vault"), "the failure says why");
}

#[tokio::test]
async fn vault_table_mistakes_are_config_errors() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let compile = async |vault: &str| {
        let src = keyward::control::config::Source {
            name: "k.toml".into(),
            text: config_text(&pki, dir.path(), vault),
        };
        keyward::control::config::compile(&src, keyward::control::config::Options::POLICY_ONLY).await
    };
    let base = "addr = \"http://127.0.0.1:1\"\npath = \"p\"\nfield = \"api_key\"\ntoken_env = \"T\"\n";
    // `explain` compiles the policy only: no vault is contacted (nothing listens on port 1).
    assert!(compile(base).await.is_ok());
    let cases = [
        (format!("{base}tokne_file = \"t\""), "", "unknown field"),
        (base.replace("127.0.0.1", "vault.internal"), "secret.stripe.addr", "loopback addresses only"),
        (format!("{base}role_id = \"r\"\nsecret_id_file = \"s\""), "secret.stripe.auth", "only one"),
        (format!("{base}on_stale = \"maybe\""), "", "unknown variant"),
        (base.replace("path = \"p\"", "path = \"../sys\""), "secret.stripe.path", "not a vault path"),
    ];
    for (vault, key, want) in cases {
        let errs = compile(&vault).await.expect_err(want);
        assert!(errs.iter().any(|e| e.key == key && e.message.contains(want)), "{vault}: {errs:?}");
    }
}

/// A vault (or a proxy in front of it) that quotes the login request in its error: the
/// secret_id must not reach keyward's error.
#[tokio::test]
async fn an_approle_error_quoting_the_secret_id_is_redacted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SECRET_ID: &str = "CANARY-QUOTED-SECRETID-5d1f";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut buf = vec![0; 8192];
            let _ = tcp.read(&mut buf).await;
            let body = format!(r#"{{"errors":["invalid secret_id {SECRET_ID} for role r"]}}"#);
            let head = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = tcp.write_all((head + &body).as_bytes()).await;
        }
    });
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let secret_id_file = private_file(dir.path(), "secret_id", SECRET_ID);
    let vault = format!(
        "addr = \"http://{addr}\"\npath = \"{PATH}\"\nfield = \"api_key\"\nrole_id = \"r\"\nsecret_id_file = {secret_id_file:?}\n"
    );
    let err = startup_error(&pki, dir.path(), &vault).await;
    assert!(err.contains("AppRole login refused") && err.contains("***"), "{err}");
    assert!(!err.contains(SECRET_ID), "the secret_id leaks: {err}");
}
