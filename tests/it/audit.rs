//! The access log auditors rely on: complete under load, chained across rotation, tamper
//! found where it happened, fail-closed when the disk fills; metrics that match the traffic.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::common::*;

const TOKEN: &str = "kw_audit_token_0123456789abcdefWXYZ";

fn keyward(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyward")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `keyward ARGS`: whether it succeeded, its stdout and its stderr apart.
fn keyward_apart(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyward")).args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn verify(files: &[PathBuf]) -> (bool, String) {
    let mut args = vec!["audit", "verify"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    keyward(&args)
}

/// The log and its rotated files, oldest first.
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let base = dir.join("audit.jsonl");
    let mut rotated: Vec<(usize, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let n = p.file_name()?.to_str()?.strip_prefix("audit.jsonl.")?.parse().ok()?;
            Some((n, p))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    rotated.into_iter().map(|(_, p)| p).chain([base]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_give_exactly_one_chained_record_each() {
    let kw = Arc::new(
        Harness::new()
            .service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read"))
            .audit("max_bytes = 20000\nkeep = 100")
            .start()
            .await,
    );
    const N: usize = 400;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let kw = kw.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = kw.connect().await;
            for i in 0..N / 16 {
                let path = if (t + i) % 3 == 0 { "/v1/refunds" } else { "/v1/charges/ch_1" };
                let method = if path == "/v1/refunds" { "POST" } else { "GET" };
                conn.send(req(method, path, TOKEN, "")).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let dir = Arc::try_unwrap(kw).ok().unwrap().stop().await;
    let files = log_files(dir.path());
    assert!(files.len() >= 3, "rotated into {} files", files.len());
    let lines: usize = files.iter().map(|f| call_lines(&std::fs::read_to_string(f).unwrap()).len()).sum();
    assert_eq!(lines, N, "exactly one record per request");
    let (ok, out) = verify(&files);
    assert!(ok, "{out}");
    // And keyward's own: its start, the configuration, the checkpoint and its stop.
    let all = N + 4;
    assert!(out.starts_with(&format!("OK: 1 instance, {all} records\n")), "{out}");
    assert!(
        out.contains(&format!(": {all} records, seq 1..{all} (from the first record ever written)")),
        "{out}"
    );
    assert!(out.contains("accounted: at each of 1 checkpoint(s)"), "{out}");

    // A middle rotated file removed: found at the first line after the gap.
    let (ok, out) = verify(&[files[0].clone(), files[2].clone()]);
    assert!(!ok);
    assert!(out.contains(&format!("{} line 1", files[2].display())) && out.contains("missing"), "{out}");
}

#[tokio::test]
async fn tampering_with_a_real_log_is_found_where_it_happened() {
    let kw =
        Harness::new().service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read")).start().await;
    for i in 0..10 {
        let path = if i % 2 == 0 { "/v1/charges" } else { "/v1/customers" };
        kw.get(path, TOKEN).await;
    }
    kw.records(10).await;
    let dir = kw.stop().await;
    let dir = dir.path();
    let log = dir.join("audit.jsonl");
    let original = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert!(verify(std::slice::from_ref(&log)).0);

    let write = |name: &str, lines: &[String], tail: &str| {
        let p = dir.join(format!("{name}.jsonl"));
        std::fs::write(&p, lines.join("\n") + tail).unwrap();
        p
    };
    let owned: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    let mut edited = owned.clone();
    edited[4] = edited[4].replace("\"client_ip\":\"127.0.0.1\"", "\"client_ip\":\"10.9.9.9\"");
    assert_ne!(edited[4], owned[4]);
    // Its own link to the line before: still that line (5) is named.
    let mut relinked = owned.clone();
    let at = relinked[4].find("\"prev\":\"").unwrap() + 8;
    let flipped = if &relinked[4][at..at + 1] == "0" { "1" } else { "0" };
    relinked[4].replace_range(at..at + 1, flipped);
    let mut dropped = owned.clone();
    dropped.remove(6);
    let mut swapped = owned.clone();
    swapped.swap(2, 3);
    let mut forged = owned.clone();
    forged.insert(5, owned[4].replace("\"status\":200", "\"status\":201"));
    let cases = [
        ("edit one field", write("edited", &edited, "\n"), "line 5:", "edited"),
        ("edit the link to the line before", write("relinked", &relinked, "\n"), "line 5:", "edited"),
        ("delete a line", write("dropped", &dropped, "\n"), "line 7:", "missing"),
        ("swap two lines", write("swapped", &swapped, "\n"), "line 3:", "reordered"),
        ("insert a forged line", write("forged", &forged, "\n"), "line 6:", "inserted"),
        (
            "truncate the last line",
            write("truncated", &owned, ""),
            &*format!("line {}:", owned.len()),
            "truncated",
        ),
    ];
    for (what, file, at, why) in cases {
        let file = if what.starts_with("truncate") {
            let mut bytes = original.clone().into_bytes();
            bytes.truncate(bytes.len() - 15);
            std::fs::write(&file, bytes).unwrap();
            file
        } else {
            file
        };
        let (ok, out) = verify(&[file]);
        assert!(!ok, "{what}: not detected");
        assert!(out.contains(at) && out.contains(why), "{what}: {out}");
    }
}

/// A tiny tmpfs for the access log, unmounted when dropped.
struct TinyDisk(PathBuf);

impl TinyDisk {
    fn mount(dir: &Path, size: &str) -> TinyDisk {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "mounting a tmpfs needs root (the test command runs as root in CI)"
        );
        TinyDisk(dir.to_path_buf())
    }
    fn resize(&self, size: &str) {
        let s = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(s.success());
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        // Lazily: the writer task may still hold the file for a moment.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_closed_and_recovers_without_losing_a_record() {
    let disk_dir = tempfile::tempdir().unwrap();
    let disk = TinyDisk::mount(disk_dir.path(), "12k");
    let log = disk_dir.path().join("audit.jsonl");
    let kw = Harness::new()
        .service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read"))
        .audit(&format!("path = {:?}", log.display().to_string()))
        .start()
        .await;
    let mut served = 0;
    let mut refused = None;
    for _ in 0..200 {
        let r = kw.get("/v1/charges", TOKEN).await;
        match r.status {
            200 => served += 1,
            503 => {
                refused = Some(r);
                break;
            }
            s => panic!("unexpected status {s}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let refused = refused.expect("the full disk was noticed");
    assert_eq!(refused.error_code(), "audit_log_unavailable");
    assert_eq!(refused.json()["error"]["type"], "api_error");
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 503, "still closed");
    let upstream_before = kw.upstream.requests().len();

    disk.resize("1m");
    let mut back = false;
    for _ in 0..100 {
        if kw.get("/v1/charges", TOKEN).await.status == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(back, "serving resumed once the disk had room");
    assert!(kw.upstream.requests().len() > upstream_before);
    kw.stop().await;
    let (ok, out) = verify(std::slice::from_ref(&log));
    assert!(ok, "{out}");
    let written = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(
        written > served,
        "every served request has its record ({written} records, {served} served before the failure)"
    );
}

/// While the log cannot be written, fail-closed keyward says so on `/readyz` (a load balancer
/// takes it out); `keep_serving` goes on serving and writes every held record once it can.
#[tokio::test]
async fn a_full_disk_under_either_policy() {
    for keep_serving in [false, true] {
        let disk_dir = tempfile::tempdir().unwrap();
        let disk = TinyDisk::mount(disk_dir.path(), "12k");
        let log = disk_dir.path().join("audit.jsonl");
        let policy = if keep_serving { "on_failure = \"keep_serving\"" } else { "" };
        let kw = Harness::new()
            .service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read"))
            .audit(&format!("path = {:?}\n{policy}", log.display().to_string()))
            .start()
            .await;
        // Fill the disk, until the writer has noticed.
        let mut served = 0;
        for _ in 0..400 {
            if kw.metric("keyward_audit_healthy").await == 0.0 {
                break;
            }
            served += u32::from(kw.get("/v1/charges", TOKEN).await.status == 200);
        }
        assert_eq!(kw.metric("keyward_audit_healthy").await, 0.0, "the disk filled");
        let (ready, body) = kw.admin_call("GET", "/readyz").await;
        let during = kw.get("/v1/charges", TOKEN).await.status;
        if keep_serving {
            assert_eq!((ready, during), (200, 200), "keep_serving serves on: {body}");
            served += 1;
        } else {
            assert_eq!((ready, body["reason"].as_str(), during), (503, Some("access log unavailable"), 503));
        }
        disk.resize("1m");
        let recovered = || async {
            kw.metric("keyward_audit_healthy").await == 1.0 && kw.admin_call("GET", "/readyz").await.0 == 200
        };
        assert!(eventually(recovered).await, "the log is writable again");
        kw.stop().await;
        let (ok, out) = verify(std::slice::from_ref(&log));
        assert!(ok, "{out}");
        let written = std::fs::read_to_string(&log).unwrap().lines().count();
        assert!(
            written >= served as usize,
            "keep_serving {keep_serving}: {written} records for {served} served"
        );
    }
}

/// A record longer than `max_bytes` still gets a file of its own: rotation never splits a
/// record or loops, and the chain verifies across the files.
#[tokio::test]
async fn records_longer_than_max_bytes_rotate_one_per_file() {
    let kw = Harness::new()
        .service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read"))
        .audit("max_bytes = 100\nkeep = 10")
        .start()
        .await;
    for n in 1..=4 {
        assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
        // One write per record (the writer would gather records arriving together).
        let written = || async { kw.metric("keyward_audit_records_written_total").await >= n as f64 };
        assert!(eventually(written).await);
    }
    let dir = kw.stop().await;
    let files = log_files(dir.path());
    assert!(files.len() >= 4, "{} files", files.len());
    for f in &files {
        assert_eq!(std::fs::read_to_string(f).unwrap().lines().count(), 1, "{}", f.display());
    }
    let (ok, out) = verify(&files);
    assert!(ok, "{out}");
}

#[tokio::test]
async fn metrics_match_the_traffic_and_parse_as_prometheus_text() {
    let kw = Harness::new()
        .service(
            Svc::new("billing")
                .token_with("b1", TOKEN, "expires = \"2099-01-01T00:00:00Z\"")
                .scope("charge", "read"),
        )
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(kw.post("/v1/refunds", TOKEN, "charge=ch_1").await.status, 403);
    }
    assert_eq!(kw.get("/v1/charges", "kw_nobody_000000000000000000000").await.status, 401);
    kw.records(6).await;
    let (_, body) = kw.admin_raw("GET", "/metrics", &[]).await;
    let text = String::from_utf8(body.to_vec()).unwrap();
    kw.stop().await;

    let want = [
        r#"keyward_requests_total{service="billing",permission="charge_read",mode="reverse",decision="allow",status="2xx",reason="ok"} 3"#,
        r#"keyward_requests_total{service="billing",permission="charge_write",mode="reverse",decision="deny",status="4xx",reason="more_permissions_required"} 2"#,
        r#"keyward_requests_total{service="",permission="",mode="reverse",decision="deny",status="4xx",reason="api_key_invalid"} 1"#,
        "keyward_requests_in_flight 0",
        r#"keyward_build_info{version=""#,
        "keyward_last_reload_success_timestamp_seconds ",
        "keyward_request_duration_seconds_count 6",
        "keyward_upstream_duration_seconds_count 3",
        "keyward_audit_healthy 1",
        r#"keyward_secret_refresh_failures_total{secret="stripe"} 0"#,
        r#"keyward_secret_stale{secret="stripe"} 0"#,
        r#"keyward_token_expiry_seconds{service="billing",token_id="b1"}"#,
    ];
    for w in want {
        assert!(text.contains(w), "missing `{w}` in:\n{text}");
    }
    // A real parser must accept all of it.
    let parsed = Command::new("python3")
        .args([
            "-c",
            "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
             fams = list(p(sys.stdin.read()))\nprint(len(fams), sum(len(f.samples) for f in fams))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(text.as_bytes())?;
            c.wait_with_output()
        })
        .expect("python3 with prometheus_client (installed by the test command)");
    assert!(parsed.status.success(), "{}", String::from_utf8_lossy(&parsed.stderr));
    let families: usize =
        String::from_utf8_lossy(&parsed.stdout).split_whitespace().next().unwrap().parse().unwrap();
    assert!(families >= 10, "{families} metric families");
}

const SHADOW: &str = "kw_shadow_token_000000000000000000";
const LOCKED: &str = "kw_locked_token_0123456789abcdefWXYZ";

/// `keyward audit report` for an auditor, on a log the proxy wrote: integrity, time, sources,
/// accounts, secrets, configured tokens, scope, suspicious activity (bursts, an allowlist
/// quarantining a token, a suspended token, an unknown endpoint); "new" addresses and unusual
/// hours on the same log moved back in time; a tampered log named at the top; the HTML rendered
/// in headless Chromium (`KEYWARD_KEEP_REPORT=DIR` keeps the log, config, page and screenshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_tells_an_auditor_what_happened_and_whether_the_log_is_intact() {
    let kw = Harness::new()
        .service(
            Svc::new("billing")
                .token("b1", TOKEN)
                .scope("charge", "read")
                .scope("customer", "read")
                .extra("accounts = [\"acct_1\"]"),
        )
        .service(
            Svc::new("shadow")
                .token("s1", SHADOW)
                .token("s-spare", "kw_spare_token_0000000000000000000")
                .extra("mode = \"report\""),
        )
        .service(
            Svc::new("locked")
                .token("l1", LOCKED)
                .scope("charge", "read")
                .source_ips(&["127.0.0.1/32"])
                .extra("quarantine = { ip_refusals = 3, within = \"1m\" }"),
        )
        .start()
        .await;
    for _ in 0..4 {
        assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    }
    let mut connect = req("GET", "/v1/charges", TOKEN, "");
    connect.headers_mut().insert("stripe-account", "acct_1".parse().unwrap());
    assert_eq!(kw.send(connect).await.status, 200);
    for _ in 0..12 {
        assert_eq!(kw.post("/v1/refunds", TOKEN, "charge=ch_1").await.status, 403);
    }
    assert_eq!(kw.get("/v1/customers", SHADOW).await.status, 200);
    assert_eq!(kw.get("/v1/no_such_things", TOKEN).await.error_code(), "endpoint_not_in_catalog");
    // Quarantine: the third call from outside the allowlist suspends the token.
    let outside: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    for _ in 0..3 {
        assert_eq!(kw.send_from(outside, req("GET", "/v1/charges", LOCKED, "")).await.status, 403);
    }
    let r = kw.get("/v1/charges", LOCKED).await;
    assert_eq!((r.status, r.error_code()), (401, "api_key_revoked".to_string()), "suspended from everywhere");
    assert_eq!(kw.metric("keyward_tokens_quarantined_total").await, 1.0);
    assert_eq!(kw.metric("keyward_tokens_suspended").await, 1.0);
    let recs = kw.records(23).await;
    // With keyward's own records: its start, the configuration, the quarantine.
    kw.all_records(26).await;
    let reasons: Vec<&str> = recs[19..23].iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["ip_not_allowed", "ip_not_allowed", "token_quarantined", "api_key_suspended"]);
    assert_eq!(recs[0]["livemode"], false, "the test secret is a test key");

    let log = kw.dir.path().join("audit.jsonl");
    let (config, logs) = (kw.config_path.to_str().unwrap().to_string(), log.to_str().unwrap().to_string());
    let report = |extra: &[&str]| {
        let mut args = vec!["audit", "report", "--config", &config];
        args.extend(extra);
        keyward(&args)
    };
    let (ok, json) = report(&["--format", "json", &logs]);
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["records"], 23);
    assert_eq!(v["integrity"]["verified"], true);
    assert_eq!(v["integrity"]["chains"][0]["records"], 26);
    assert_eq!(v["inputs"], serde_json::json!([logs]));
    assert!(v["generated_at"].as_str().unwrap().ends_with('Z'));
    let row = v["decisions"].as_array().unwrap().iter().find(|r| r["permission"] == "charge_read").unwrap();
    assert_eq!((row["service"].as_str(), row["allow"].as_u64()), (Some("billing"), Some(5)));
    assert_eq!(v["top_denied"][0]["endpoint"], "POST /v1/refunds");
    assert_eq!(v["would_deny"][0]["service"], "shadow");
    let t = &v["timeline"];
    assert_eq!(t["bucket"], "hour");
    let total: u64 = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| ["allow", "deny", "would_deny"].iter().map(|k| b[k].as_u64().unwrap()).sum::<u64>())
        .sum();
    assert_eq!(total, 23);
    let sources = v["sources"].as_array().unwrap();
    assert!(sources.iter().any(|s| s["service"] == "locked" && s["address"] == "127.0.0.3"), "{sources:?}");
    assert!(sources.iter().all(|s| s["new"] == false), "no baseline yet: nothing is new");
    assert_eq!(
        v["connect_accounts"],
        serde_json::json!([{"service": "billing", "account": "acct_1", "requests": 1, "denied": 0}])
    );
    let secrets = v["secret_versions"].as_array().unwrap();
    assert!(secrets.iter().any(|s| s["service"] == "billing" && s["requests"] == 5), "{secrets:?}");
    assert_eq!(v["live_keys"], serde_json::json!([]));
    let status = v["token_status"].as_array().unwrap();
    let spare = status.iter().find(|t| t["token_id"] == "s-spare").unwrap();
    assert_eq!(spare["flags"], serde_json::json!(["unused", "no_expiry"]));
    let never: Vec<&str> =
        v["no_expiry"].as_array().unwrap().iter().map(|t| t["token_id"].as_str().unwrap()).collect();
    assert_eq!(never, ["b1", "s1", "s-spare", "l1"], "no token here has an expiry");
    // The sign-off states the hash of every byte above it, and names the input and the head.
    let signed = &v["sign_off"];
    let above = &json[..json.find("\n  \"sign_off\": {\n").unwrap() + 1];
    assert_eq!(signed["report_sha256"], keyward::audit::report::sha256_hex(above.as_bytes()));
    let log_bytes = std::fs::read(&log).unwrap();
    assert_eq!(signed["inputs"][0]["sha256"], keyward::audit::report::sha256_hex(&log_bytes));
    let last_seq = std::str::from_utf8(&log_bytes).unwrap().lines().count();
    assert_eq!(signed["heads"][0]["seq"], last_seq);
    assert_eq!(signed["heads"][0]["head"], v["integrity"]["chains"][0]["head"]);
    assert_eq!(
        signed["checkpoints"].as_str().unwrap().split(':').next(),
        Some("not signed (no --key given)")
    );
    assert_eq!(v["integrity"]["signed"], serde_json::Value::Null);
    assert_eq!(v["scope"]["services"]["billing"]["unused"], serde_json::json!(["customer"]));
    let s = &v["suspicious"];
    assert_eq!(s["denial_bursts"][0]["caller"], "b1");
    assert_eq!(s["denial_bursts"][0]["denials"], 13, "12 refunds and the unknown endpoint");
    let outside = s["outside_allowlist"].as_array().unwrap();
    let counts: Vec<(&str, u64)> =
        outside.iter().map(|c| (c["reason"].as_str().unwrap(), c["count"].as_u64().unwrap())).collect();
    assert_eq!(counts, [("ip_not_allowed", 2), ("token_quarantined", 1)]);
    assert_eq!(s["bad_tokens"][0]["reason"], "api_key_suspended");
    assert_eq!(s["unknown_endpoints"][0]["endpoint"], "GET /v1/no_such_things");
    let (_, only) = report(&["--format", "json", "--service", "shadow", &logs]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&only).unwrap()["records"], 1);
    let (_, none) = report(&["--format", "json", "--since", "2999-01-01T00:00:00Z", &logs]);
    let none: serde_json::Value = serde_json::from_str(&none).unwrap();
    assert_eq!(
        (none["records"].as_u64(), none["filters"]["since"].as_str()),
        (Some(0), Some("2999-01-01T00:00:00.000000Z"))
    );
    let (ok, table) = report(&[&logs]);
    assert!(ok && table.starts_with("LOG VERIFIED: 1 chain(s) intact"), "{table}");
    let order = [
        "INTEGRITY",
        "POLICY VERSIONS IN FORCE",
        "ADMIN ACTIONS",
        "WRITE OPERATIONS",
        "TOKENS WITHOUT EXPIRY",
        "ACTIVITY",
        "\nSIGN-OFF\n",
    ];
    let at: Vec<usize> =
        order.iter().map(|p| table.find(p).unwrap_or_else(|| panic!("{p} in\n{table}"))).collect();
    assert!(at.is_sorted(), "sections in order {order:?}: {at:?}\n{table}");
    let (above, signoff) = table.split_at(at[6] + 1);
    assert!(
        signoff.contains(&format!("report sha256: {}", keyward::audit::report::sha256_hex(above.as_bytes())))
    );
    for field in
        ["\nName:\n", "\nRole:\n", "\nDate:\n", "\nSignature:\n", "checkpoints: not signed (no --key given)"]
    {
        assert!(signoff.contains(field), "{field} in\n{signoff}");
    }
    assert!(table.contains("rotation gaps: none") && table.contains("NO EXPIRY  locked"), "{table}");
    for part in [
        "TOP DENIED",
        "PER HOUR",
        "SOURCE ADDRESSES",
        "CONFIGURED TOKENS",
        "SUSPICIOUS ACTIVITY",
        "burst: 13 denials of b1",
        "SCOPE: GRANTS AGAINST USE",
    ] {
        assert!(table.contains(part), "{part} in\n{table}");
    }

    // The same log, its first 12 records moved back two days and an hour: now there is a
    // baseline, so the later calls' addresses and hours are judged against it.
    let moved = kw.dir.path().join("moved.jsonl");
    std::fs::write(
        &moved,
        rechain(&std::fs::read_to_string(&log).unwrap(), |i, r| {
            if i < 12 {
                let t = time::OffsetDateTime::parse(
                    r["time"].as_str().unwrap(),
                    &time::format_description::well_known::Rfc3339,
                )
                .unwrap();
                r["time"] = keyward::audit::timestamp(t - time::Duration::hours(49)).into();
            }
        }),
    )
    .unwrap();
    let (ok, json) = report(&["--format", "json", moved.to_str().unwrap()]);
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["timeline"]["bucket"], "day", "more than two days");
    assert_eq!(v["integrity"]["verified"], true);
    let fresh: Vec<&serde_json::Value> =
        v["sources"].as_array().unwrap().iter().filter(|s| s["new"] == true).collect();
    assert!(fresh.is_empty(), "billing's address is the same, locked had no baseline: {fresh:?}");
    let hours = v["suspicious"]["unusual_hours"].as_array().unwrap();
    // billing's later calls came an hour after all its earlier ones; the others had none before.
    assert!(!hours.is_empty() && hours.iter().all(|h| h["service"] == "billing"), "{hours:?}");
    let moved_ip = kw.dir.path().join("moved-ip.jsonl");
    std::fs::write(
        &moved_ip,
        rechain(&std::fs::read_to_string(&moved).unwrap(), |i, r| {
            if i >= 12 && r["service"] == "billing" {
                r["client_ip"] = "10.9.9.9".into();
            }
        }),
    )
    .unwrap();
    let (_, json) = report(&["--format", "json", moved_ip.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let fresh: Vec<&serde_json::Value> =
        v["sources"].as_array().unwrap().iter().filter(|s| s["new"] == true).collect();
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert_eq!(
        (fresh[0]["service"].as_str(), fresh[0]["address"].as_str()),
        (Some("billing"), Some("10.9.9.9"))
    );

    // A tampered log is refused, naming the line; with --unverified every page says so.
    let tampered = kw.dir.path().join("tampered.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&tampered, text.replacen("\"status\":403", "\"status\":200", 1)).unwrap();
    let (ok, out) = report(&[tampered.to_str().unwrap()]);
    assert!(!ok && out.starts_with("error: the access log does not verify: "), "{out}");
    assert!(out.contains("tampered.jsonl:") && !out.contains("TOP DENIED"), "{out}");
    let t = tampered.to_str().unwrap();
    let (ok, table, warning) = keyward_apart(&["audit", "report", "--config", &config, "--unverified", t]);
    assert!(ok && warning.starts_with("warning: the access log does not verify"), "{warning}");
    let banner = table.lines().next().unwrap();
    assert!(
        banner.starts_with("UNVERIFIED: ")
            && banner.contains("this log's chain does not verify (")
            && banner.contains("tampered.jsonl:")
            && banner.ends_with("nothing below is evidence"),
        "{banner}"
    );
    assert_eq!(table.lines().last(), Some(banner), "first and last line");
    assert!(table.contains("WARNING: THE LOG DID NOT VERIFY"), "{table}");
    let (_, json, _) = keyward_apart(&["audit", "report", "--format", "json", "--unverified", t]);
    let u: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(u["unverified"], banner);
    assert_eq!(u["integrity"]["verified"], false);
    let (_, bad_html) = report(&["--format", "html", "--unverified", tampered.to_str().unwrap()]);
    assert!(bad_html.contains("<div class=\"unverified print-banner\">UNVERIFIED: "), "{bad_html}");
    assert!(bad_html.contains("<div class=unverified id=unverified>UNVERIFIED: "));
    assert!(bad_html.contains(".print-banner{display:block;position:fixed"), "repeated on each printed page");
    // Lines that are not records: the chain is broken; with --unverified the rest is summarised.
    let mangled = kw.dir.path().join("mangled.jsonl");
    std::fs::write(&mangled, text.clone() + "not a record\n").unwrap();
    let (ok, out) = report(&[mangled.to_str().unwrap()]);
    let lines = text.lines().count();
    assert!(!ok && out.contains(&format!("mangled.jsonl:{}: not a JSON record", lines + 1)), "{out}");
    let (ok, out) = report(&["--unverified", mangled.to_str().unwrap()]);
    assert!(ok && out.contains("1 lines are not access records") && out.contains("23 records"), "{out}");
    let unverified_page = kw.dir.path().join("unverified.html");
    std::fs::write(&unverified_page, &bad_html).unwrap();
    let unverified_pdf = kw.dir.path().join("unverified.pdf");
    chromium(
        &unverified_page,
        &[&format!("--print-to-pdf={}", unverified_pdf.display()), "--no-pdf-header-footer"],
    );
    assert!(std::fs::read(&unverified_pdf).expect("a PDF").starts_with(b"%PDF"));

    let (ok, html) = report(&["--format", "html", &logs]);
    assert!(ok && html.starts_with("<!doctype html>"));
    assert!(
        !html.contains("<script") && !html.contains(" src=") && !html.contains("<link"),
        "self-contained"
    );
    let page = kw.dir.path().join("report.html");
    std::fs::write(&page, &html).unwrap();
    let dom = chromium(&page, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    let ids = [
        "integrity",
        "policy-versions",
        "admin-actions",
        "writes",
        "no-expiry",
        "decisions",
        "missing",
        "timeline",
        "suspicious",
        "scope",
        "denied",
        "would-deny",
        "tokens",
        "sources",
        "accounts",
        "secrets",
        "upstreams",
        "sign-off",
    ];
    for id in ids {
        assert!(dom.contains(&format!("<section id=\"{id}\">")), "section {id} rendered");
    }
    let first = |id: &str| dom.find(&format!("<section id=\"{id}\">")).unwrap();
    assert!(ids.iter().all(|id| first("integrity") <= first(id)), "integrity first");
    assert!(ids.iter().all(|id| first(id) <= first("sign-off")), "sign-off last");
    let signoff = &dom[first("sign-off")..];
    for field in
        ["<th>Name:</th>", "<th>Role:</th>", "<th>Date:</th>", "<th>Signature:</th>", "report sha256"]
    {
        assert!(signoff.contains(field), "{field} in {signoff}");
    }
    assert!(dom.contains("not signed (no --key given)"));
    assert!(!dom.contains("UNVERIFIED"), "a verified log carries no banner");
    // The hash stated is of the page's bytes above the sign-off.
    let above = &html[..html.find("\n<section id=sign-off>").unwrap() + 1];
    assert!(html.contains(&keyward::audit::report::sha256_hex(above.as_bytes())));
    assert!(dom.contains("<svg") && dom.contains("<rect"), "the chart");
    assert!(dom.contains("Log verified: 1 chain(s) intact."));
    let shot = kw.dir.path().join("report.png");
    chromium(&page, &[&format!("--screenshot={}", shot.display()), "--window-size=1200,2400"]);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} bytes", png.len());
    let pdf = kw.dir.path().join("report.pdf");
    chromium(&page, &[&format!("--print-to-pdf={}", pdf.display()), "--no-pdf-header-footer"]);
    assert!(std::fs::read(&pdf).expect("a PDF").starts_with(b"%PDF"), "prints");
    if let Ok(keep) = std::env::var("KEYWARD_KEEP_REPORT") {
        for f in [&log, &kw.config_path, &page, &shot, &pdf, &moved_ip, &unverified_page, &unverified_pdf] {
            std::fs::copy(f, Path::new(&keep).join(f.file_name().unwrap())).unwrap();
        }
    }
    kw.stop().await;
}

/// A log's lines with `edit` applied to each record (by index), chained anew as keyward would.
fn rechain(text: &str, mut edit: impl FnMut(usize, &mut serde_json::Value)) -> String {
    let mut prev = keyward::audit::GENESIS.to_string();
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let mut r: serde_json::Value = serde_json::from_str(line).unwrap();
        edit(i, &mut r);
        r["prev"] = prev.clone().into();
        let line = serde_json::to_string(&r).unwrap();
        prev = keyward::audit::line_hash(line.as_bytes());
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Headless Chromium on `page` with `args`; fails the test if it fails.
fn chromium(page: &Path, args: &[&str]) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
        ])
        .args(args)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium (installed by the test command)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `keyward run` that is expected to refuse to start: its output, or a panic if it runs.
fn run_refused(config: &Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["run", "--config", config.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            assert!(!out.status.success());
            return String::from_utf8_lossy(&out.stderr).into_owned();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("keyward started");
}

/// A restart continues the chain; a partial last line (a write cut short) is cut off first;
/// a last line that is no record stops keyward from starting rather than being chained over;
/// and a second process cannot write the same log.
#[tokio::test]
async fn restarts_continue_the_chain_and_refuse_what_they_cannot_continue() {
    let logs = tempfile::tempdir().unwrap();
    let path = logs.path().join("audit.jsonl");
    let start =
        || Harness::new().service(Svc::new("svc").token("t", TOKEN)).audit(&format!("path = {path:?}"));
    let kw = start().start().await;
    for _ in 0..3 {
        kw.get("/v1/charges", TOKEN).await;
    }
    for _ in 0..100 {
        if call_lines(&std::fs::read_to_string(&path).unwrap_or_default()).len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let out = run_refused(&kw.config_path);
    assert!(out.contains("another process is writing this access log"), "{out}");
    kw.stop().await;

    let mut torn = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut torn, b"{\"seq\":4,\"time\":\"2026-11-").unwrap();
    drop(torn);
    let kw = start().start().await;
    kw.get("/v1/charges", TOKEN).await;
    let Running { app, config_path, pki, dir, .. } = kw;
    app.unwrap().stop().await;
    let (ok, out) = verify(std::slice::from_ref(&path));
    // Each run: start, configuration, calls, checkpoint, stop.
    assert!(ok && out.contains("12 records, seq 1..12"), "{out}");

    std::fs::write(&path, "not a record\n").unwrap();
    let out = run_refused(&config_path);
    assert!(out.contains("is not an access record"), "{out}");
    drop((pki, dir));
}

/// `keyward audit scope`: grants against the access used, on a log the proxy wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_scope_finds_excess_grants_and_suggests_the_smallest_scope() {
    const REPORTER: &str = "kw_audit_reporter_0123456789abcdefWX";
    let kw = Harness::new()
        .service(
            Svc::new("billing")
                .token("b1", TOKEN)
                .scope("charge", "write")
                .scope("customer", "read")
                .scope("balance", "read"),
        )
        .service(
            Svc::new("newcomer").token("n1", REPORTER).scope("customer", "read").extra("mode = \"report\""),
        )
        .start()
        .await;
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    assert_eq!(kw.get("/v1/charges/ch_1", TOKEN).await.status, 200);
    assert_eq!(kw.get("/v1/customers", REPORTER).await.status, 200);
    assert_eq!(kw.post("/v1/customers", REPORTER, "email=a%40b.c").await.status, 200, "report mode forwards");
    kw.records(4).await;
    let (config, log) =
        (kw.config_path.display().to_string(), kw.dir.path().join("audit.jsonl").display().to_string());
    let (ok, out) = keyward(&["audit", "scope", "--config", &config, &log, "--format", "json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let b = &v["services"]["billing"];
    assert_eq!(b["granted"], serde_json::json!({"balance": "read", "charge": "write", "customer": "read"}));
    assert_eq!(b["used"], serde_json::json!({"charge": "read"}));
    assert_eq!(b["unused"], serde_json::json!(["balance", "customer"]));
    assert_eq!(b["write_only_read"], serde_json::json!(["charge"]));
    assert_eq!(b["suggested"], serde_json::json!({"charge": "read"}));
    let n = &v["services"]["newcomer"];
    assert_eq!(n["would_deny_needed"], serde_json::json!({"customer": "write"}));
    assert_eq!(n["suggested"], serde_json::json!({"customer": "write"}));
    let (ok, out) = keyward(&["audit", "scope", "--config", &config, &log, "--format", "toml"]);
    assert!(ok, "{out}");
    assert!(out.contains("[service.scope]\ncharge = \"read\"\n"), "{out}");
    assert!(out.contains("# service \"billing\": 3 granted, 1 used\n"), "{out}");
    assert!(
        out.contains("# service \"newcomer\": 1 granted, 1 used, 1 needed by would_deny calls\n"),
        "{out}"
    );
    let (ok, out) = keyward(&["audit", "scope", "--config", &config, &log]);
    assert!(ok && out.contains("never used: remove") && out.contains("only read: grant read"), "{out}");
    let (ok, out) = keyward(&["audit", "scope", "--config", &config, &log, "--check"]);
    assert!(!ok && out.contains("service \"billing\": 2 unused, 1 write used only to read"), "{out}");
    let (ok, out) = keyward(&[
        "audit",
        "scope",
        "--config",
        &config,
        &log,
        "--since",
        "2999-01-01T00:00:00Z",
        "--format",
        "json",
    ]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["services"]["billing"]["used"], serde_json::json!({}), "nothing in the window");
}

/// A tampered log whose `instance` holds terminal escapes (clear the screen, print a forged
/// "OK", hide the rest) cannot make `audit verify` or `audit report` show only that: what came
/// from the log is printed escaped.
#[test]
fn terminal_escapes_in_a_tampered_log_are_printed_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    let hostile = "\u{1b}[2J\u{1b}[HOK: 1 instance, 2 records\u{1b}[8m";
    let first = keyward::audit::AccessRecord {
        seq: 1,
        prev: keyward::audit::GENESIS.into(),
        time: "2026-12-07T10:00:00.000000Z".into(),
        instance: Some(hostile.into()),
        request_id: "kwreq_1".into(),
        ..Default::default()
    };
    let mut line = Vec::new();
    first.write_json(&mut line);
    let second = keyward::audit::AccessRecord { seq: 2, prev: "0".repeat(64), ..first.clone() };
    line.push(b'\n');
    second.write_json(&mut line);
    line.push(b'\n');
    std::fs::write(&path, &line).unwrap();
    let (ok, out) = verify(std::slice::from_ref(&path));
    assert!(!ok, "the second record does not chain: {out}");
    assert!(!out.contains('\u{1b}') && out.contains("\\x1b[2J"), "{out}");
    let (_, report) = keyward(&["audit", "report", path.to_str().unwrap()]);
    assert!(!report.contains('\u{1b}'), "{report}");
}

/// A denial for missing permissions records each one it lacked (an expansion's too, while the
/// endpoint's own was granted); the report counts them per service, and `audit scope`
/// suggests a report-mode expansion's permission. A tampered log (a denied
/// `POST /v1/customers` edited to `allow`) makes `audit scope` refuse, naming the line,
/// instead of suggesting `customer = "write"`; `--unverified` prints it under a banner. The
/// report reads admin, lifecycle and config records (hand-made here) and lists the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_record_what_was_missing_and_scope_refuses_a_tampered_log() {
    const SHADOW_X: &str = "kw_shadow_expand_0123456789abcdefWX";
    let kw = Harness::new()
        .service(Svc::new("billing").token("b1", TOKEN).scope("charge", "write"))
        .service(Svc::new("shadow").token("s1", SHADOW_X).scope("charge", "read").extra("mode = \"report\""))
        .start()
        .await;
    let deny = kw.get("/v1/charges/ch_1?expand[]=invoice", TOKEN).await;
    assert_eq!((deny.status, deny.error_code().as_str()), (403, "more_permissions_required"));
    let message = deny.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.ends_with("Having the 'rak_invoice_read' permission would allow this request to continue.")
    );
    let both = kw.get("/v1/charges/ch_1?expand[]=customer&expand[]=latest_invoice", TOKEN).await;
    assert!(
        both.json()["error"]["message"].as_str().unwrap().contains("'rak_customer_read'"),
        "the first named"
    );
    assert_eq!(kw.post("/v1/customers", TOKEN, "email=a%40b.c").await.status, 403);
    assert_eq!(kw.post("/v1/charges", TOKEN, "amount=2000&currency=usd").await.status, 200);
    assert_eq!(
        kw.get("/v1/charges/ch_1?expand[]=invoice", SHADOW_X).await.status,
        200,
        "report mode forwards"
    );
    let recs = kw.records(5).await;
    assert_eq!(
        (recs[0]["permission"].as_str(), recs[0]["missing"].clone()),
        (Some("charge_read"), serde_json::json!(["invoice_read"])),
        "the endpoint's own permission, and what it lacked: {}",
        recs[0]
    );
    assert_eq!(recs[1]["missing"], serde_json::json!(["customer_read", "invoice_read"]));
    assert_eq!(recs[2]["missing"], serde_json::json!(["customer_write"]));
    assert!(recs[3].get("missing").is_none(), "written only when there is one: {}", recs[3]);
    assert_eq!(
        (recs[4]["decision"].as_str(), recs[4]["missing"].clone()),
        (Some("would_deny"), serde_json::json!(["invoice_read"]))
    );

    let dir = kw.dir.path().to_path_buf();
    let log = dir.join("audit.jsonl");
    let config = kw.config_path.display().to_string();
    let text = std::fs::read_to_string(&log).unwrap();
    // Admin, lifecycle and config records of the shape keyward writes, chained in.
    let events = [
        r#"{"kind":"lifecycle","event":"start","config_version":"cv1"}"#,
        r#"{"kind":"admin","action":"suspend","actor":"admin:ops","outcome":"ok","service":"billing","token_id":"b1","config_version":"cv1"}"#,
        r#"{"kind":"config","config_version":"cv2","config_sha256":"5f2b"}"#,
        r#"{"kind":"admin","action":"reload","actor":"127.0.0.1","outcome":"accepted","config_version":"cv2","changed":["service.billing"]}"#,
    ];
    let last_time = recs[4]["time"].as_str().unwrap().to_string();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    for e in events {
        let mut v: serde_json::Value = serde_json::from_str(e).unwrap();
        v["time"] = last_time.clone().into();
        lines.push(v.to_string());
    }
    let with_events = dir.join("events.jsonl");
    std::fs::write(
        &with_events,
        rechain(&(lines.join("\n") + "\n"), |i, r| {
            r["seq"] = (i as u64 + 1).into();
            if r["instance"].is_null() {
                r["instance"] = recs[0]["instance"].clone();
            }
        }),
    )
    .unwrap();
    let events_log = with_events.to_str().unwrap();
    let (ok, out) =
        keyward(&["audit", "report", "--config", &config, "--writes", "--format", "json", events_log]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let missing: Vec<(&str, &str, u64)> = v["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["service"].as_str().unwrap(),
                m["permission"].as_str().unwrap(),
                m["deny"].as_u64().unwrap() + m["would_deny"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        missing,
        [
            ("billing", "customer_read", 1),
            ("billing", "customer_write", 1),
            ("billing", "invoice_read", 2),
            ("shadow", "invoice_read", 1)
        ]
    );
    let actions: Vec<&str> =
        v["admin_actions"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    // The first start is keyward's own; the others were chained in by hand.
    assert_eq!(actions, ["start", "start", "suspend", "reload"]);
    assert_eq!(v["admin_actions"][3]["changed"], serde_json::json!(["service.billing"]));
    let versions = v["policy_versions"].as_array().unwrap();
    let cv2 = versions.iter().find(|p| p["config_version"] == "cv2").unwrap();
    assert_eq!(cv2["config_sha256"], "5f2b");
    let writes = v["writes"]["rows"].as_array().unwrap();
    assert_eq!((v["writes"]["count"].as_u64(), writes.len()), (Some(1), 1));
    assert_eq!(
        (writes[0]["endpoint"].as_str(), writes[0]["amount"].clone()),
        (Some("POST /v1/charges"), serde_json::Value::Null)
    );
    assert_eq!(writes[0]["request_id"], recs[3]["request_id"]);
    let (ok, table) = keyward(&["audit", "report", "--config", &config, "--writes", events_log]);
    assert!(ok, "{table}");
    for part in [
        "print it with `keyward audit config cv2 FILES…`",
        "admin suspend, by admin:ops, outcome ok, service billing, token b1",
        "amount: not recorded",
        "billing              invoice_read",
    ] {
        assert!(table.contains(part), "{part} in\n{table}");
    }

    // Scope on the intact log: the report-mode expansion's permission is suggested.
    let logs = log.to_str().unwrap();
    let (ok, out) = keyward(&["audit", "scope", "--config", &config, logs, "--format", "json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["services"]["shadow"]["suggested"],
        serde_json::json!({"charge": "read", "invoice": "read"})
    );
    assert_eq!(v["services"]["shadow"]["would_deny_needed"], serde_json::json!({"invoice": "read"}));

    // The denied POST /v1/customers edited to allow.
    let at = text.lines().position(|l| l.contains("\"path\":\"/v1/customers\"")).unwrap();
    let tampered: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == at { l.replace("\"decision\":\"deny\"", "\"decision\":\"allow\"") } else { l.to_string() }
        })
        .collect();
    let tampered_log = dir.join("tampered.jsonl");
    std::fs::write(&tampered_log, tampered.join("\n") + "\n").unwrap();
    let t = tampered_log.to_str().unwrap();
    let (ok, out) = keyward(&["audit", "scope", "--config", &config, t, "--format", "toml"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("tampered.jsonl:{}: ", at + 2))
            || out.contains(&format!("tampered.jsonl:{}: ", at + 1)),
        "{out}"
    );
    assert!(!out.contains("customer = \"write\""), "{out}");
    let (_, out, _) = keyward_apart(&["audit", "scope", "--config", &config, t, "--unverified"]);
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("UNVERIFIED: ") && first.contains("tampered.jsonl:"), "{out}");
    assert_eq!(out.lines().last(), Some(first), "{out}");
    let (_, out, _) =
        keyward_apart(&["audit", "scope", "--config", &config, t, "--unverified", "--format", "json"]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["unverified"], first);
    kw.stop().await;
}
