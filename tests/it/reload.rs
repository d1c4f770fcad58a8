//! Hot reload: all or nothing, never a failed request, from every trigger.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use rustls::pki_types::pem::PemObject;

const TOKEN: &str = "kw_reload_token_0123456789abcdWXYZ";

fn billing() -> Svc {
    Svc::new("billing").token("b1", TOKEN).scope("charge", "read")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_never_fails_a_request_or_half_applies() {
    let kw = Arc::new(Harness::new().service(billing()).start().await);
    let a = kw.config_text();
    let b = kw.edited_config(|t| drop(scope_at(t, 0).insert("charge".into(), "none".into())));
    let broken = kw.edited_config(|t| {
        let scope = scope_at(t, 0);
        scope.insert("charge".into(), "none".into());
        scope.insert("bogus_key_typo".into(), 1.into());
    });
    // A half-written file: cut, and ending in an unterminated string so it can never parse.
    let truncated = format!("{}\n\"charge\" = \"re", &b[..b.len() * 2 / 3]);
    let (va, vb) = (version_of(&a).await, version_of(&b).await);
    assert_ne!(va, vb);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (kw, stop) = (kw.clone(), stop.clone());
        tokio::spawn(async move {
            let cycle = [&b, &broken, &a, &truncated, &b, &a];
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                std::fs::write(&kw.config_path, cycle[i % cycle.len()]).unwrap();
                i += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            std::fs::write(&kw.config_path, &a).unwrap();
        })
    };

    const TOTAL: usize = 5000;
    let sent = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (kw, sent) = (kw.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let mut conn = kw.connect().await;
            let mut got = Vec::new();
            while sent.fetch_add(1, Ordering::Relaxed) < TOTAL && Instant::now() < deadline {
                let reply = conn.send(req("GET", "/v1/charges/ch_1", TOKEN, "")).await;
                let reply = reply.unwrap_or_else(|e| panic!("request failed during reload: {e}"));
                let id = reply.headers["keyward-request-id"].to_str().unwrap().to_string();
                got.push((id, reply.status));
                // Pace the stream over several seconds so it spans many rewrites.
                tokio::time::sleep(Duration::from_millis(12)).await;
            }
            got
        }));
    }
    let mut replies = Vec::new();
    for c in clients {
        replies.extend(c.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(replies.len() >= 1000, "only {} requests", replies.len());

    let records = kw.records(replies.len()).await;
    let by_id: std::collections::HashMap<&str, &serde_json::Value> =
        records.iter().map(|r| (r["request_id"].as_str().unwrap(), r)).collect();
    let (mut on_a, mut on_b) = (0, 0);
    for (id, status) in &replies {
        let rec = by_id[id.as_str()];
        assert_eq!(rec["status"], *status);
        match rec["config_version"].as_str().unwrap() {
            v if v == va => {
                assert_eq!(*status, 200, "config A allows");
                on_a += 1;
            }
            v if v == vb => {
                assert_eq!(*status, 403, "config B denies");
                on_b += 1;
            }
            other => panic!("a request was decided by config {other}, neither A nor B"),
        }
    }
    let app = kw.app.as_ref().unwrap();
    let (ok, failed) = app.reloader.state().metrics.reload_counts();
    println!("{} requests: {on_a} on A, {on_b} on B; reloads ok {ok}, refused {failed}", replies.len());
    assert!(on_a > 0 && on_b > 0, "both configs served");
    assert!(ok >= 4 && failed >= 1, "reloads ok {ok}, refused {failed}");
    assert!(kw.wait_version(&va).await, "ends on the last valid file");
}

#[tokio::test]
async fn every_trigger_applies_a_valid_file_and_refuses_a_broken_one() {
    let kw = Harness::new().service(billing()).start().await;
    let a = kw.config_text();
    let path = kw.config_path.clone();
    let variant = |n: u32| {
        let level = ["read", "write", "none"][n as usize % 3];
        kw.edited_config(|t| drop(scope_at(t, 0).insert("customer".into(), level.into())))
    };

    // Reading the files (a reload does) is no change: nothing reloads by itself.
    tokio::time::sleep(Duration::from_millis(400)).await;
    kw.admin_reload().await;
    // A web page in a browser on this host cannot reload (nor read) through the admin port.
    let (status, _) = kw.admin_raw("POST", "/-/reload", &[("origin", "https://evil.example")]).await;
    assert_eq!(status, 403);
    // Nor a page whose DNS name was pointed at 127.0.0.1 (DNS rebinding): its name is the Host.
    let (status, _) = kw.admin_raw("POST", "/-/reload", &[("host", "rebound.evil.example:9090")]).await;
    assert_eq!(status, 403);
    let (status, _) = kw.admin_raw("GET", "/metrics", &[("host", "rebound.evil.example")]).await;
    assert_eq!(status, 403);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (reloads, _) = kw.app.as_ref().unwrap().reloader.state().metrics.reload_counts();
    assert_eq!(reloads, 1, "only the reload asked for");

    // In-place rewrite.
    std::fs::write(&path, variant(1)).unwrap();
    assert!(kw.wait_version(&version_of(&variant(1)).await).await, "in-place write");
    // Rename over the file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, variant(2)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(kw.wait_version(&version_of(&variant(2)).await).await, "rename over");
    // Admin endpoint.
    let (status, out) = kw.admin_reload().await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["ok"], true);

    // Broken files: each refused whole, the last good version keeps serving.
    let good = kw.version();
    let broken = [
        // A half-written file.
        ("truncated", a[..a.len() - 20].to_string(), "keyward.toml"),
        (
            "unknown key",
            kw.edited_config(|t| drop(service_at(t, 0).insert("tokn".into(), "x".into()))),
            "unknown field `tokn`",
        ),
        (
            "duplicate token",
            kw.edited_config(|t| {
                let mut copy = service_at(t, 0).clone();
                copy.insert("name".into(), "copy".into());
                t["service"].as_array_mut().unwrap().push(copy.into());
            }),
            "configured twice",
        ),
        (
            "bad scope",
            kw.edited_config(|t| {
                let scope = scope_at(t, 0);
                let level = scope.remove("charge").unwrap();
                scope.insert("chrage".into(), level);
            }),
            "names no permission",
        ),
    ];
    for (what, text, want) in broken {
        // Write under another name, then move into place, so the watcher sees it whole.
        std::fs::write(&tmp, &text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let (status, out) = kw.admin_reload().await;
        assert_eq!(status, 422, "{what}: {out}");
        assert_eq!(out["ok"], false);
        assert_eq!(out["version"], good.as_str());
        assert!(out["errors"].to_string().contains(want), "{what}: {out}");
        assert_eq!(kw.version(), good, "{what} applied");
        assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200, "{what}: still serving");
    }
    // `keyward reload` shows the operator the same report, and fails. (Async: keyward
    // serves the admin port from this very runtime.)
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["reload", "--admin", &kw.admin().to_string()])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("\"ok\": false") && shown.contains("names no permission"), "{shown}");
    kw.stop().await;
}

#[tokio::test]
async fn configmap_symlink_swap_is_seen() {
    let kw = Harness::new()
        .service(billing())
        .start_with(|dir, text| {
            let v1 = dir.join("..2026_11_26_01");
            std::fs::create_dir(&v1).unwrap();
            std::fs::write(v1.join("keyward.toml"), text).unwrap();
            std::os::unix::fs::symlink("..2026_11_26_01", dir.join("..data")).unwrap();
            std::os::unix::fs::symlink("..data/keyward.toml", dir.join("keyward.toml")).unwrap();
            dir.join("keyward.toml")
        })
        .await;
    let dir = kw.dir.path();
    let next = kw.edited_config(|t| drop(scope_at(t, 0).insert("charge".into(), "write".into())));
    // What the kubelet does: a new timestamped dir, a new symlink, renamed over ..data.
    let v2 = dir.join("..2026_11_26_02");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("keyward.toml"), &next).unwrap();
    std::os::unix::fs::symlink("..2026_11_26_02", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    assert!(kw.wait_version(&version_of(&next).await).await, "ConfigMap swap reloaded");
    assert_eq!(kw.post("/v1/charges", TOKEN, "amount=1").await.status, 200, "write now granted");
    kw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rotation_with_overlap_fails_no_request() {
    let new_token = "kw_reload_token_NEW_0123456789abcd";
    let kw = Arc::new(Harness::new().service(billing()).start().await);
    let hash = |t: &str| sha256_hex(t);
    let tokens = |t: &mut toml::Table| service_at(t, 0)["token"].as_array_mut().unwrap().clone();
    let both = kw.edited_config(|t| {
        let new = fragment(&format!("id = \"b2\"\nsha256 = \"{}\"", hash(new_token)));
        let mut list = tokens(t);
        list.push(new.into());
        service_at(t, 0).insert("token".into(), list.into());
    });
    let only_new = kw.edited_config(|t| {
        let new = fragment(&format!("id = \"b2\"\nsha256 = \"{}\"", hash(new_token)));
        service_at(t, 0).insert("token".into(), vec![toml::Value::from(new)].into());
    });
    assert!(!only_new.contains(&hash(TOKEN)));

    // A client on the new token runs throughout; none of its requests may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let steady = {
        let (kw, stop) = (kw.clone(), stop.clone());
        tokio::spawn(async move {
            let mut conn = kw.connect().await;
            let mut statuses = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                // Refused a few times while unproven, the connection is closed: open another,
                // as clients do.
                let reply = match conn.send(req("GET", "/v1/charges", new_token, "")).await {
                    Ok(reply) => reply,
                    Err(_) => {
                        conn = kw.connect().await;
                        continue;
                    }
                };
                statuses.push(reply.status);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            statuses
        })
    };
    assert_eq!(kw.get("/v1/charges", new_token).await.status, 401, "not configured yet");
    std::fs::write(&kw.config_path, &both).unwrap();
    assert!(kw.wait_version(&version_of(&both).await).await);
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200, "old token still works");
    assert_eq!(kw.get("/v1/charges", new_token).await.status, 200, "new token works");
    std::fs::write(&kw.config_path, &only_new).unwrap();
    assert!(kw.wait_version(&version_of(&only_new).await).await);
    let old = kw.get("/v1/charges", TOKEN).await;
    assert_eq!((old.status, old.error_code().as_str()), (401, "api_key_invalid"));
    assert_eq!(kw.get("/v1/charges", new_token).await.status, 200);
    stop.store(true, Ordering::Relaxed);
    let statuses = steady.await.unwrap();
    let first_ok = statuses.iter().position(|s| *s == 200).expect("new token admitted");
    assert!(
        statuses[first_ok..].iter().all(|s| *s == 200),
        "a request failed after the new token was admitted"
    );
}

#[tokio::test]
async fn listener_certificate_rotates_without_restart() {
    let kw = Harness::new().service(billing()).top("[timeouts]\nupstream = \"5s\"").start().await;
    let peer_cert = |kw: &Running| {
        let addr = kw.addr();
        let cfg = kw.client.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap();
            tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
        }
    };
    let before = peer_cert(&kw).await;
    let mut open = kw.connect().await;
    // A new leaf from a new CA, written over the old files; clients trusting both see it.
    let next = keyward::control::tls::dev_pki(&["localhost"]).unwrap();
    std::fs::write(&kw.pki.cert, &next.cert_pem).unwrap();
    std::fs::write(&kw.pki.key, &next.key_pem).unwrap();
    let (status, out) = kw.admin_reload().await;
    assert_eq!(status, 200, "{out}");
    let mut roots = rustls::RootCertStore::empty();
    for pem in [std::fs::read_to_string(&kw.pki.ca).unwrap(), next.ca_pem.clone()] {
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
    }
    let both = std::sync::Arc::new(
        rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth(),
    );
    let mut kw = kw;
    kw.client = both;
    let after = peer_cert(&kw).await;
    assert_ne!(before, after, "new connections get the new certificate");
    assert_eq!(
        open.send(req("GET", "/v1/charges", TOKEN, "")).await.unwrap().status,
        200,
        "open connections go on"
    );
    kw.stop().await;
}

#[test]
fn sighup_reloads_the_running_binary() {
    use std::io::{BufRead, BufReader};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let pki = Pki::new();
    let upstream = rt.block_on(Upstream::start(&pki));
    let dir = tempfile::tempdir().unwrap();
    let text = Harness::new().service(billing()).config(&pki, &upstream.url(), dir.path());
    let path = dir.path().join("keyward.toml");
    std::fs::write(&path, text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["run", "--log-format", "json", "--config", path.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines().map_while(Result::ok);
    let started = lines.by_ref().any(|l| l.contains("keyward listening"));
    assert!(started);
    let kill =
        |sig: &str| std::process::Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
    kill("-HUP");
    let reloaded = lines.by_ref().find(|l| l.contains("configuration reloaded")).expect("a reload log line");
    assert!(reloaded.contains("\"trigger\":\"sighup\""), "{reloaded}");
    kill("-TERM");
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn a_reload_keeps_warm_upstream_connections() {
    let kw = Harness::new().service(billing()).start().await;
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    let next = kw.edited_config(|t| drop(scope_at(t, 0).insert("charge".into(), "write".into())));
    std::fs::write(&kw.config_path, &next).unwrap();
    assert!(kw.wait_version(&version_of(&next).await).await);
    assert_eq!(kw.post("/v1/charges", TOKEN, "amount=1").await.status, 200);
    let seen = kw.upstream.requests();
    assert_eq!(seen[0].peer, seen[1].peer, "the same pooled connection before and after the reload");
    kw.stop().await;
}

/// Settings bound at start are reported by every reload until keyward restarts, including
/// one that comes after the file watch has already applied the rest, and none of them is
/// applied.
#[tokio::test]
async fn settings_bound_at_start_are_reported_until_restart() {
    let kw = Harness::new().service(billing()).start().await;
    let moved = kw.edited_config(|t| {
        table_at(t, &["server"]).insert("listen".into(), "127.0.0.2:0".into());
        table_at(t, &["limits"]).insert("max_form_bytes_total".into(), 12_345_678.into());
    });
    std::fs::write(&kw.config_path, &moved).unwrap();
    let reloader = &kw.app.as_ref().unwrap().reloader;
    let running = reloader.state().snapshot.load().limits.max_form_bytes_total;
    for _ in 0..2 {
        let outcome = reloader.reload("test").await;
        assert!(outcome.ok, "{:?}", outcome.errors);
        let said = &outcome.restart_required;
        assert_eq!(said.len(), 2, "{said:?}");
        assert!(said[0].starts_with("server.listen") && said[1] == "limits.max_form_bytes_total", "{said:?}");
        // Nothing of them applied: the live snapshot says what the process does.
        let snap = reloader.state().snapshot.load();
        assert_eq!(
            (snap.limits.max_form_bytes_total, snap.listen.ip().to_string()),
            (running, "127.0.0.1".into())
        );
    }
    // Still served on the address bound at start.
    assert_eq!(kw.get("/v1/charges/ch_1", TOKEN).await.status, 200);
    kw.stop().await;
}

/// Each file a configuration reads is watched: a file secret, a catalog of your own and an
/// upstream's CA file, each changed on disk, are applied without a reload being asked for.
#[tokio::test]
async fn a_change_to_any_file_the_configuration_reads_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.txt");
    let stripe = keyward::policy::catalog::STRIPE_CATALOG;
    std::fs::write(&catalog, stripe).unwrap();
    let kw = Harness::new()
        .top(&format!("[catalog]\npath = {:?}\nexpansions = {:?}\n", catalog, dir.path().join("none.txt")))
        .service(billing())
        .start_with(|cfg_dir, text| {
            std::fs::write(dir.path().join("none.txt"), "").unwrap();
            let path = cfg_dir.join("keyward.toml");
            std::fs::write(&path, text).unwrap();
            path
        })
        .await;
    let reloads = || kw.app.as_ref().unwrap().reloader.state().metrics.reload_counts().0;

    // A file secret: the next call carries the new key.
    let secrets = kw.dir.path().join("secrets.toml");
    std::fs::write(&secrets, "stripe = \"sk_test_ROTATED_IN_PLACE\"\n").unwrap();
    let rotated = || async {
        kw.get("/v1/charges", TOKEN).await;
        kw.upstream
            .requests()
            .last()
            .is_some_and(|s| s.headers["authorization"] == "Bearer sk_test_ROTATED_IN_PLACE")
    };
    assert!(eventually(rotated).await, "the new file secret is injected");

    // A catalog of your own: a new endpoint becomes known.
    assert_eq!(kw.get("/v1/widgets", TOKEN).await.error_code(), "endpoint_not_in_catalog");
    std::fs::write(&catalog, format!("{stripe}\nGET /v1/widgets charge read api\n")).unwrap();
    let known = || async { kw.get("/v1/widgets", TOKEN).await.status == 200 };
    assert!(eventually(known).await, "the changed catalog is applied");

    // The upstream's CA file, rewritten (the same CA): a reload, and calls go on.
    let before = reloads();
    let ca = std::fs::read(&kw.pki.ca).unwrap();
    std::fs::write(&kw.pki.ca, &ca).unwrap();
    assert!(eventually(|| async { reloads() > before }).await, "a change to the CA file reloads");
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    kw.stop().await;
}

/// A key pasted into a configuration that a running keyward reloads is shown as its prefix
/// and last 4, in the `POST /-/reload` answer, `keyward reload`'s output and the log.
#[tokio::test]
async fn a_pasted_key_in_a_reloaded_config_is_shown_as_prefix_and_last_4() {
    const PASTED: &str = "sk_live_51PastedKeyCANARYabcd9876";
    let kw = Harness::new().service(billing()).start_child().await;
    let text = kw.edited_config(|t| drop(service_at(t, 0).insert("secret".into(), PASTED.into())));
    let tmp = kw.config_path.with_extension("tmp");
    std::fs::write(&tmp, &text).unwrap();
    std::fs::rename(&tmp, &kw.config_path).unwrap();
    let (status, out) = kw.admin_reload().await;
    assert_eq!(status, 422, "{out}");
    let errors = out["errors"].to_string();
    assert!(errors.contains("sk_live_…9876") && !errors.contains("PastedKeyCANARY"), "{errors}");
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["reload", "--admin", &kw.admin().to_string()])
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&cli.stdout) + String::from_utf8_lossy(&cli.stderr);
    assert!(shown.contains("sk_live_…9876") && !shown.contains("PastedKeyCANARY"), "{shown}");
    assert!(
        eventually(|| async { kw.child_log().contains("sk_live_…9876") }).await,
        "the reload error is logged: {}",
        kw.child_log()
    );
    assert!(!kw.child_log().contains("PastedKeyCANARY"), "{}", kw.child_log());
}
