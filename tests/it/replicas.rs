//! Replicas that act as one: three keyward processes on one ConfigMap-style directory converge
//! on the same version after a swap, their access logs (a chain per instance) verify together,
//! `audit head` and the admin port agree on each head, and a drained replica (SIGTERM) loses
//! no call of a client that retries on the others.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;

const TOKEN: &str = "kw_replicas_token_0123456789abcdefWXYZ";

fn keyward(args: &[&str], cwd: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keyward")).args(args).current_dir(cwd).output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

async fn ready_version(admin: std::net::SocketAddr) -> String {
    let (_, body) = admin_request(admin, "GET", "/readyz").await;
    serde_json::from_slice::<serde_json::Value>(&body)
        .map(|v| v["version"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_converge_verify_together_and_drain_without_loss() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let harness = Harness::new()
        .service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read"))
        // Relative: each replica writes in its own directory, as each pod does.
        .audit("path = \"audit.jsonl\"")
        .top("[timeouts]\ndrain_delay = \"1s\"\nshutdown_grace = \"5s\"");
    let text = harness.config(&pki, &upstream.url(), dir.path());
    // The kubelet's layout: keyward.toml -> ..data/keyward.toml, ..data -> a timestamped dir.
    let cm = dir.path().join("configmap");
    std::fs::create_dir_all(cm.join("..v1")).unwrap();
    std::fs::write(cm.join("..v1/keyward.toml"), &text).unwrap();
    std::os::unix::fs::symlink("..v1", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/keyward.toml", cm.join("keyward.toml")).unwrap();
    let homes: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas: Vec<KeywardProcess> = homes
        .iter()
        .enumerate()
        .map(|(i, home)| {
            spawn_keyward_in(
                &cm.join("keyward.toml"),
                home.path(),
                &[("KEYWARD_INSTANCE", &format!("kw-{i}"))],
            )
        })
        .collect();
    let first = version_of(&text).await;
    for r in &replicas {
        assert_eq!(ready_version(r.admin.unwrap()).await, first);
    }

    // A ConfigMap update: every replica serves the new version within seconds.
    let next = text.replace("charge = \"read\"", "charge = \"write\"");
    assert_ne!(next, text);
    std::fs::create_dir(cm.join("..v2")).unwrap();
    std::fs::write(cm.join("..v2/keyward.toml"), &next).unwrap();
    std::os::unix::fs::symlink("..v2", cm.join("..data_tmp")).unwrap();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    let want = version_of(&next).await;
    for r in &replicas {
        let admin = r.admin.unwrap();
        assert!(
            eventually(|| async { ready_version(admin).await == want }).await,
            "a replica did not converge"
        );
    }

    // A client that retries on the next replica while one drains: no call is lost.
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr).collect();
    let (stop, done, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (stop, done, failed, tls) = (stop.clone(), done.clone(), failed.clone(), pki.client_config());
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let served = async {
                    for attempt in 0..3 {
                        let addr = addrs[(i + attempt) % 3];
                        let req = req("GET", "/v1/charges", TOKEN, "");
                        if let Ok(r) = try_send(addr, tls.clone(), "127.0.0.1".parse().unwrap(), req).await
                            && r.status == 200
                        {
                            return true;
                        }
                    }
                    false
                };
                let counter = if served.await { &done } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = replicas[0].child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let exited = tokio::task::spawn_blocking(move || {
        let mut r = replicas.remove(0);
        let status = r.child.wait().unwrap();
        (status, r.logs.join().unwrap(), replicas)
    });
    let (status, _logs, mut replicas) =
        tokio::time::timeout(Duration::from_secs(20), exited).await.unwrap().unwrap();
    assert!(status.success(), "the drained replica exits 0: {status:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    let (done, failed) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(done > 20, "only {done} calls");
    assert_eq!(failed, 0, "{failed} of {} calls found no replica", done + failed);

    // The head each live replica reports is the one its file ends with, once its writer has
    // written what was queued.
    let last_seq = |home: &tempfile::TempDir| {
        let text = std::fs::read_to_string(home.path().join("audit.jsonl")).unwrap_or_default();
        let last = text.lines().last().and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        last.map(|v| v["seq"].clone())
    };
    let head_of = |admin| async move {
        let (_, body) = admin_request(admin, "GET", "/-/audit/head").await;
        serde_json::from_slice::<serde_json::Value>(&body).unwrap()
    };
    let mut heads = Vec::new();
    for r in &replicas {
        let admin = r.admin.unwrap();
        // `kw-N` writes in homes[N] (a restarted replica comes last in `replicas`).
        let name = head_of(admin).await["instance"].as_str().unwrap().to_string();
        let home = &homes[name.trim_start_matches("kw-").parse::<usize>().unwrap()];
        let settled =
            eventually(|| async move { Some(head_of(admin).await["seq"].clone()) == last_seq(home) });
        assert!(settled.await, "{name}'s head never matched its file's {:?}", last_seq(home));
        heads.push(head_of(admin).await);
    }
    for r in &mut replicas {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    let files: Vec<String> =
        homes.iter().map(|h| h.path().join("audit.jsonl").display().to_string()).collect();
    let mut args = vec!["audit", "verify"];
    args.extend(files.iter().map(String::as_str));
    let (ok, out) = keyward(&args, dir.path());
    assert!(ok, "{out}");
    assert!(out.starts_with("OK: 3 instances,"), "{out}");
    for i in 0..3 {
        assert!(out.contains(&format!("  kw-{i}: ")), "{out}");
    }
    args[1] = "head";
    let (ok, out) = keyward(&args, dir.path());
    assert!(ok, "{out}");
    for h in &heads {
        let line =
            format!("{} {} {}", h["instance"].as_str().unwrap(), h["seq"], h["head"].as_str().unwrap());
        assert!(out.lines().any(|l| l == line), "admin head {line} not in:\n{out}");
    }
    // One file tampered with: that instance's chain is named, the others still verify.
    let text = std::fs::read_to_string(&files[1]).unwrap();
    std::fs::write(&files[1], text.replacen("\"status\":200", "\"status\":201", 1)).unwrap();
    let (ok, out) = keyward(&["audit", "verify", &files[0], &files[1], &files[2]], dir.path());
    assert!(!ok);
    assert!(
        out.contains("chain broken: kw-1:") && out.contains("  kw-0: ") && out.contains("  kw-2: "),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_health_read_the_admin_port() {
    let kw = Harness::new()
        .service(
            Svc::new("billing")
                .token_with("b1", TOKEN, "expires = \"2099-01-01T00:00:00Z\"")
                .scope("charge", "read"),
        )
        .start()
        .await;
    let admin = kw.admin().to_string();
    let cwd = kw.dir.path();
    let (ok, out) = keyward(&["health", "--admin", &admin], cwd);
    assert!(ok, "{out}");
    let (ok, out) = keyward(&["health", "--ready", "--admin", &admin], cwd);
    assert!(ok, "{out}");
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    let (ok, out) = keyward(&["status", "--admin", &admin], cwd);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("version   {}", kw.version())), "{out}");
    assert!(out.contains("secret    stripe: loaded") && out.contains("none expiring within 7 days"), "{out}");
    assert!(!out.contains(SECRET) && !out.contains(TOKEN), "{out}");
    // Nothing listening: exit 1 with the reason, quickly.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let (ok, out) = keyward(&["health", "--admin", &gone], cwd);
    assert!(!ok && out.contains("error: admin endpoint"), "{out}");
}
