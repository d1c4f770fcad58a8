//! keyward's own records in the access log's chain: its start and stop, every configuration
//! text it served under, every reload (accepted or refused) and suspension, resumption and
//! quarantine, with who did it; recoverable from the log alone (`keyward audit config`), and
//! never a credential, whatever the configuration file holds.

use std::path::Path;
use std::process::Command;

use crate::common::*;

const TOKEN: &str = "kw_adminrec_token_0123456789abcdefWXYZ";
const ADMIN: &str = "kw_adminrec_admin_0123456789abcdefWXYZ";

fn keyward(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyward")).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Every record in the log at `path`.
fn log_records(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Start with the configuration at `dir/conf/keyward.toml`, read through the symlink
/// `dir/keyward.toml`: the file watch looks at `dir`, so edits made to the real file are
/// applied only when asked (here, through the admin endpoint).
fn behind_a_symlink(dir: &Path, text: &str) -> std::path::PathBuf {
    std::fs::create_dir(dir.join("conf")).unwrap();
    std::fs::write(dir.join("conf/keyward.toml"), text).unwrap();
    let link = dir.join("keyward.toml");
    std::os::unix::fs::symlink("conf/keyward.toml", &link).unwrap();
    link
}

#[tokio::test]
async fn admin_actions_and_each_configuration_are_in_the_chain_and_recoverable_from_the_log_alone() {
    let kw = Harness::new()
        .service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read"))
        .top(&format!("[[admin.token]]\nid = \"ops\"\nsha256 = \"{}\"\n", sha256_hex(ADMIN)))
        .start_with(behind_a_symlink)
        .await;
    let real = kw.dir.path().join("conf/keyward.toml");
    let bearer = format!("Bearer {ADMIN}");
    let auth = [("authorization", bearer.as_str())];
    let first = kw.config_text();
    let v1 = kw.version();
    assert_eq!(kw.get("/v1/charges/ch_1", TOKEN).await.status, 200);

    // A reload that changes a service (and the timeouts): accepted.
    let second = kw.edited_config(|t| {
        scope_at(t, 0).insert("customer".into(), "read".into());
        table_at(t, &["timeouts"]).insert("drain_delay".into(), "0s".into());
    });
    std::fs::write(&real, &second).unwrap();
    let (status, body) = kw.admin_raw("POST", "/-/reload", &auth).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v2 = kw.version();
    assert_ne!(v1, v2);
    // A broken one: refused, the second still serving.
    let broken = kw.edited_config(|t| drop(scope_at(t, 0).insert("bogus_key_typo".into(), 1.into())));
    std::fs::write(&real, &broken).unwrap();
    assert_eq!(kw.admin_raw("POST", "/-/reload", &auth).await.0, 422);
    assert_eq!(kw.version(), v2);
    // A suspension and a resumption.
    assert_eq!(kw.admin_raw("POST", "/-/tokens/b1/suspend", &auth).await.0, 200);
    assert_eq!(kw.get("/v1/charges/ch_1", TOKEN).await.status, 401);
    assert_eq!(kw.admin_raw("POST", "/-/tokens/b1/resume", &auth).await.0, 200);
    assert_eq!(kw.admin_raw("POST", "/-/tokens/nobody/suspend", &auth).await.0, 404);
    let dir = kw.stop().await;
    let log = dir.path().join("audit.jsonl");
    let recs = log_records(&log);

    let own: Vec<&serde_json::Value> = recs.iter().filter(|r| is_own_record(r)).collect();
    let shape: Vec<String> = own
        .iter()
        .map(|r| {
            let what = r["event"].as_str().or(r["action"].as_str()).unwrap_or("");
            format!("{} {what} {}", r["kind"].as_str().unwrap(), r["outcome"].as_str().unwrap_or(""))
                .trim()
                .into()
        })
        .collect();
    assert_eq!(
        shape,
        [
            "lifecycle start",
            "config",
            "admin reload accepted",
            "config",
            "admin reload refused",
            "admin suspend accepted",
            "admin resume accepted",
            "admin suspend refused",
            "lifecycle stop",
            // The checkpoint written at close signs everything, the stop included.
            "checkpoint",
        ]
    );
    let keyward_version = env!("CARGO_PKG_VERSION");
    let (start, stop) = (own[0], own[8]);
    assert_eq!(
        (start["keyward_version"].as_str(), start["config_version"].as_str()),
        (Some(keyward_version), Some(&*v1))
    );
    assert_eq!(start["config_sha256"], sha256_hex(&first));
    assert_eq!(
        (stop["config_version"].as_str(), &stop["config_sha256"]),
        (Some(&*v2), &sha256_hex(&second).into())
    );
    assert_eq!(recs[0]["kind"], "lifecycle", "the first record of the process");
    let last = &recs[recs.len() - 2];
    assert_eq!(last["kind"], "lifecycle", "and the last, before the checkpoint that signs it");
    assert_eq!(recs.last().unwrap()["kind"], "checkpoint");
    let call = recs.iter().position(|r| r["kind"] == "request").unwrap();
    assert!(call > 1 && recs[call]["config_version"] == *v1, "the call under the first configuration");

    let (config1, accepted, config2, refused) = (own[1], own[2], own[3], own[4]);
    assert_eq!(config1["config_version"], *v1);
    assert_eq!(config1["source"], kw_path(&dir));
    assert_eq!(accepted["actor"], "admin:ops");
    assert_eq!(accepted["changed"], serde_json::json!(["service", "timeouts"]));
    assert_eq!(accepted["restart_only"], serde_json::json!([]));
    assert_eq!(
        (accepted["config_version"].as_str(), &accepted["config_sha256"]),
        (Some(&*v2), &sha256_hex(&second).into())
    );
    assert!(accepted.get("errors").is_none());
    assert_eq!(config2["config_version"], *v2);
    assert_eq!(config2["config_sha256"], sha256_hex(&second));
    assert_eq!(
        (refused["actor"].as_str(), refused["config_version"].as_str()),
        (Some("admin:ops"), Some(&*v2))
    );
    assert_eq!(refused["config_sha256"], sha256_hex(&broken));
    let errors = refused["errors"].as_array().unwrap();
    assert!(errors.iter().any(|e| e.as_str().unwrap().contains("keyward.toml:")), "{errors:?}");
    for (r, action) in [(own[5], "suspend"), (own[6], "resume")] {
        assert_eq!(
            (r["action"].as_str(), r["actor"].as_str(), r["service"].as_str(), r["token_id"].as_str()),
            (Some(action), Some("admin:ops"), Some("billing"), Some("b1"))
        );
        assert_eq!(r["client_ip"], "127.0.0.1");
    }
    assert_eq!(
        (own[7]["token_id"].as_str(), own[7]["reason"].as_str()),
        (Some("nobody"), Some("no token has this id"))
    );
    assert!(!std::fs::read_to_string(&log).unwrap().contains(ADMIN), "the admin token itself is nowhere");

    let path = log.to_str().unwrap();
    let (ok, out, err) = keyward(&["audit", "verify", path]);
    assert!(ok && out.starts_with(&format!("OK: 1 instance, {} records", recs.len())), "{out}{err}");
    // Each version's text, from the log alone: as loaded (nothing in it to redact).
    for (version, text) in [(&v1, &first), (&v2, &second)] {
        let (ok, out, err) = keyward(&["audit", "config", version, path]);
        assert!(ok, "{err}");
        assert_eq!(&out, text);
        let parsed: toml::Table = out.parse().unwrap();
        assert_eq!(parsed, text.parse::<toml::Table>().unwrap());
    }
    let (ok, _, err) = keyward(&["audit", "config", "000000000000", path]);
    assert!(!ok && err.contains("no configuration text for version 000000000000"), "{err}");
    // The report and the scope read the calls only.
    let (ok, out, err) = keyward(&["audit", "report", "--format", "json", path]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["records"], 2, "two calls: {err}");
    assert!(!err.contains("not access records"), "{err}");
    // A tampered log: its configuration is not printed as if it were the one in force.
    let tampered = dir.path().join("tampered.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&tampered, text.replacen("customer = \\\"read\\\"", "customer = \\\"write\\\"", 1))
        .unwrap();
    let (ok, _, err) = keyward(&["audit", "config", &v2, tampered.to_str().unwrap()]);
    assert!(!ok && err.contains("chain broken"), "{err}");
    let (ok, out, _) = keyward(&["audit", "config", "--unverified", &v2, tampered.to_str().unwrap()]);
    assert!(ok && out.contains("customer = \"write\""), "{out}");
}

fn kw_path(dir: &tempfile::TempDir) -> String {
    dir.path().join("keyward.toml").display().to_string()
}

/// A quarantine is an action of keyward's own; without admin tokens a loopback caller is
/// named by its address.
#[tokio::test]
async fn a_quarantine_is_recorded_as_keywards_and_an_admin_without_a_token_by_address() {
    let kw = Harness::new()
        .service(
            Svc::new("locked")
                .token("l1", TOKEN)
                .scope("charge", "read")
                .source_ips(&["127.0.0.1/32"])
                .extra("quarantine = { ip_refusals = 2, within = \"1m\" }"),
        )
        .start()
        .await;
    let outside: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    for _ in 0..2 {
        assert_eq!(kw.send_from(outside, req("GET", "/v1/charges", TOKEN, "")).await.status, 403);
    }
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 401, "quarantined");
    let (status, _) = kw.admin_call("POST", "/-/tokens/l1/resume").await;
    assert_eq!(status, 200);
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    let dir = kw.stop().await;
    let recs = log_records(&dir.path().join("audit.jsonl"));
    let admin: Vec<&serde_json::Value> = recs.iter().filter(|r| r["kind"] == "admin").collect();
    assert_eq!(admin.len(), 2, "{admin:?}");
    let q = admin[0];
    assert_eq!(
        (q["action"].as_str(), q["actor"].as_str(), q["outcome"].as_str()),
        (Some("quarantine"), Some("keyward"), Some("accepted"))
    );
    assert_eq!(
        (q["service"].as_str(), q["token_id"].as_str(), q["client_ip"].as_str()),
        (Some("locked"), Some("l1"), Some("127.0.0.3"))
    );
    assert!(q["reason"].as_str().unwrap().contains("2 times within 1m"), "{q}");
    assert_eq!(
        (admin[1]["action"].as_str(), admin[1]["actor"].as_str()),
        (Some("resume"), Some("peer:127.0.0.1"))
    );
    let (ok, out, err) = keyward(&["audit", "verify", dir.path().join("audit.jsonl").to_str().unwrap()]);
    assert!(ok, "{out}{err}");
}

/// Canary: a configuration holding credential-looking values (pasted in comments and strings,
/// where keyward reads none of them) is recorded with each one `[redacted]`, at start and at a
/// reload; the hashes stay, and what `audit config` prints still parses as what was loaded.
#[tokio::test]
async fn a_credential_pasted_into_the_configuration_never_reaches_the_log() {
    const STRIPE: &str = "sk_live_51CANARYstripeKEY0123456789abcdef";
    const HOOK: &str = "whsec_CANARYhook0123456789abcdef";
    const SESSION: &str = "mes_tok_CANARYsession0123456789";
    const PASSWORD: &str = "CANARY-hunter2-password";
    // A real private key, made now (no key is kept in the source), pasted as comments.
    let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let pem_body: Vec<String> = pem.lines().filter(|l| !l.starts_with("-----")).map(String::from).collect();
    let pem_commented: String = pem.lines().map(|l| format!("# {l}\n")).collect();
    let pasted = format!(
        "# the billing token, for the on-call: {TOKEN}\n\
         # old key {STRIPE} (rotated), hook {HOOK}, session {SESSION}\n\
         # password = \"{PASSWORD}\"\n\
         {pem_commented}"
    );
    let h = Harness::new().service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read"));
    let kw = h
        .start_with(|dir, text| {
            let path = dir.join("keyward.toml");
            std::fs::write(&path, format!("{pasted}{text}")).unwrap();
            path
        })
        .await;
    let (v1, first) = (kw.version(), kw.config_text());
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    // A reload brings another one (in a string this time, where keyward reads no credential).
    let edited = kw.edited_config(|t| {
        scope_at(t, 0).insert("customer".into(), "read".into());
        table_at(t, &["server"]).insert("admin_hosts".into(), vec![format!("{STRIPE}.example")].into());
    });
    let second = format!("{pasted}{edited}");
    std::fs::write(&kw.config_path, &second).unwrap();
    assert_eq!(kw.admin_reload().await.0, 200);
    let v2 = kw.version();
    assert_ne!(v1, v2);
    let dir = kw.stop().await;
    let log = dir.path().join("audit.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let configs = log_records(&log).into_iter().filter(|r| r["kind"] == "config").count();
    assert_eq!(configs, 2);
    let canaries: Vec<&str> = [TOKEN, STRIPE, HOOK, SESSION, PASSWORD, "CANARY"]
        .into_iter()
        .chain(pem_body.iter().map(String::as_str))
        .collect();
    for canary in &canaries {
        assert!(!text.contains(canary), "{canary} in the access log");
    }
    let path = log.to_str().unwrap();
    for (v, loaded) in [(&v1, &first), (&v2, &second)] {
        let (ok, out, err) = keyward(&["audit", "config", v, path]);
        assert!(ok, "{err}");
        for canary in &canaries {
            assert!(!out.contains(canary), "{canary} printed by audit config:\n{out}");
        }
        assert!(out.contains(&sha256_hex(TOKEN)), "the token's hash is kept");
        assert!(out.contains("# the billing token, for the on-call: [redacted]\n"), "{out}");
        // What was loaded, but for the credential in a string.
        let mut want: toml::Table = loaded.parse().unwrap();
        if let Some(hosts) = table_at(&mut want, &["server"]).get_mut("admin_hosts") {
            *hosts = vec!["[redacted].example"].into();
        }
        assert_eq!(out.parse::<toml::Table>().unwrap_or_else(|e| panic!("{e}\n{out}")), want);
    }
}
