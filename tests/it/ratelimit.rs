//! `[ratelimit]`: one budget toward the payments API spent by priority, and the rates kept in
//! a real Redis so that replicas enforce one budget, not one each. Redis going away applies
//! `on_redis_error` and never holds a request.

use std::time::{Duration, Instant};

use crate::common::redis::Redis;
use crate::common::*;

const BATCH: &str = "kw_budget_batch_0123456789abcdefWXYZ";
const CHECKOUT: &str = "kw_budget_checkout_0123456789abcdefWX";

fn svc(name: &str, token: &str, extra: &str) -> Svc {
    Svc::new(name).token(name, token).scope("charge", "read").extra(extra)
}

/// How many of `n` calls with `token` were answered 200, and the last refusal.
async fn calls(kw: &Running, token: &str, n: usize) -> (usize, Option<Reply>) {
    let (mut ok, mut refused) = (0, None);
    for _ in 0..n {
        let r = kw.get("/v1/charges", token).await;
        match r.status {
            200 => ok += 1,
            _ => refused = Some(r),
        }
    }
    (ok, refused)
}

#[tokio::test]
async fn batch_calls_are_refused_first_as_the_shared_budget_runs_low() {
    // 10 a minute, bursts of 10: batch may spend half of it, critical all of it.
    let kw = Harness::new()
        .top("[ratelimit]\nupstream_rate = \"10/m\"")
        .service(svc("backfill", BATCH, "priority = \"batch\""))
        .service(svc("checkout", CHECKOUT, "priority = \"critical\""))
        .start()
        .await;
    let (ok, refused) = calls(&kw, BATCH, 8).await;
    assert_eq!(ok, 5, "batch stops at half the burst");
    let r = refused.unwrap();
    assert_eq!((r.status, r.error_code()), (429, "rate_limit".to_string()));
    assert!(
        r.json()["error"]["message"].as_str().unwrap().contains("(batch)"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    let (ok, refused) = calls(&kw, CHECKOUT, 8).await;
    assert_eq!(ok, 5, "checkout still has the other half");
    assert!(refused.unwrap().json()["error"]["message"].as_str().unwrap().contains("is spent"));
    assert_eq!(kw.upstream.requests().len(), 10, "the budget, exactly");
    let recs = kw.records(16).await;
    let limited: Vec<_> = recs.iter().filter(|r| r["reason"] == "budget_limited").collect();
    assert_eq!(limited.len(), 6);
    assert!(limited.iter().all(|r| r["status"] == 429));
}

/// One of several replicas (each its own listener and snapshot) on one Redis. A timeout long
/// enough that a loaded test machine never falls back to the local share by accident.
async fn replica(redis: &Redis, extra: &str, services: &[(&str, &str, &str)]) -> Running {
    let top = format!("[ratelimit]\nredis = {:?}\ntimeout = \"2s\"\n{extra}", redis.url());
    let mut h = Harness::new().top(&top);
    for (name, token, more) in services {
        h = h.service(svc(name, token, more));
    }
    h.start().await
}

#[tokio::test]
async fn two_replicas_on_one_redis_enforce_one_rate_and_one_budget() {
    let redis = Redis::start();
    let services = [("a", BATCH, "rate = \"4/m\""), ("b", CHECKOUT, "priority = \"critical\"")];
    let budget = "upstream_rate = \"10/m\"";
    let one = replica(&redis, budget, &services).await;
    let two = replica(&redis, budget, &services).await;
    // Alternating between the replicas: each alone would admit 4 of a's calls and 10 in all.
    let mut admitted = 0;
    for i in 0..8 {
        let kw = if i % 2 == 0 { &one } else { &two };
        admitted += usize::from(kw.get("/v1/charges", BATCH).await.status == 200);
    }
    assert_eq!(admitted, 4, "service a's rate, once for both");
    let mut admitted = 0;
    for i in 0..10 {
        let kw = if i % 2 == 0 { &one } else { &two };
        let r = kw.get("/v1/charges", CHECKOUT).await;
        admitted += usize::from(r.status == 200);
    }
    assert_eq!(admitted, 6, "what a left of the shared budget");
    let forwarded = one.upstream.requests().len() + two.upstream.requests().len();
    assert_eq!(forwarded, 10);
    let mut reasons = one.records(9).await;
    reasons.extend(two.records(9).await);
    let reasons: Vec<&str> = reasons.iter().filter_map(|r| r["reason"].as_str()).collect();
    assert_eq!(reasons.iter().filter(|r| **r == "rate_limited").count(), 4);
    assert_eq!(reasons.iter().filter(|r| **r == "budget_limited").count(), 4);
    assert!(eventually(|| async { one.metric("keyward_ratelimit_replicas").await == 2.0 }).await);
    assert_eq!(one.metric("keyward_ratelimit_store_up").await, 1.0);
}

#[tokio::test]
async fn with_redis_gone_each_replica_keeps_its_share_and_no_call_waits() {
    let mut redis = Redis::start();
    let services = [("a", BATCH, "rate = \"10/m\"")];
    let one = replica(&redis, "", &services).await;
    let _two = replica(&redis, "", &services).await;
    assert!(eventually(|| async { one.metric("keyward_ratelimit_replicas").await == 2.0 }).await);
    assert_eq!(one.get("/v1/charges", BATCH).await.status, 200);
    redis.stop();
    // Half of the rate and of its burst of 10 for each of the two replicas.
    let started = Instant::now();
    let (ok, refused) = calls(&one, BATCH, 8).await;
    assert!(started.elapsed() < Duration::from_secs(5), "calls waited for Redis: {:?}", started.elapsed());
    assert_eq!(ok, 5, "the local share");
    assert_eq!(refused.unwrap().error_code(), "rate_limit");
    assert_eq!(one.metric("keyward_ratelimit_store_up").await, 0.0);
    assert!(one.metric("keyward_ratelimit_store_errors_total").await >= 1.0);
    // Back again: the shared rate (whose earlier call Redis lost with its memory) applies.
    redis.resume();
    assert!(eventually(|| async { one.metric("keyward_ratelimit_store_up").await == 1.0 }).await);
    let (ok, _) = calls(&one, BATCH, 12).await;
    assert_eq!(ok, 10, "the whole burst, from Redis");
}

#[tokio::test]
async fn redis_that_accepts_but_never_answers_costs_a_call_the_timeout_only() {
    // A socket that takes connections and never reads: the worst kind of outage.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = hole.incoming().take(64).collect();
        std::thread::sleep(Duration::from_secs(60));
        drop(held);
    });
    let kw = Harness::new()
        .top(&format!(
            "[ratelimit]\nupstream_rate = \"100/s\"\nredis = \"redis://127.0.0.1:{port}/0\"\ntimeout = \"100ms\"\non_redis_error = \"allow\""
        ))
        .service(svc("a", BATCH, ""))
        .start()
        .await;
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(kw.get("/v1/charges", BATCH).await.status, 200, "on_redis_error = allow");
        assert!(started.elapsed() < Duration::from_secs(2), "waited {:?}", started.elapsed());
    }
}

#[tokio::test]
async fn deny_refuses_with_503_says_so_in_the_log_and_a_reload_to_allow_serves() {
    let mut redis = Redis::start_with(Some("redis-pass-CANARY-41c2"));
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let upstream = Upstream::start(&pki).await;
    let harness = Harness::new()
        .top(&format!(
            "[ratelimit]\nupstream_rate = \"100/s\"\nredis = {:?}\npassword_secret = \"redis\"\ntimeout = \"2s\"\non_redis_error = \"deny\"\n\
             [secret.redis]\nsource = \"env\"\nvar = \"KW_REDIS_PASSWORD\"",
            redis.url()
        ))
        .service(svc("a", BATCH, ""));
    let config = dir.path().join("keyward.toml");
    let text = harness.config(&pki, &upstream.url(), dir.path());
    std::fs::write(&config, &text).unwrap();
    let mut kw = spawn_keyward(&config, &[("KW_REDIS_PASSWORD", "redis-pass-CANARY-41c2")]);
    let get = |addr| {
        let client = pki.client_config();
        async move { send(addr, client, "127.0.0.1".parse().unwrap(), req("GET", "/v1/charges", BATCH, "")).await }
    };
    assert_eq!(get(kw.addr).await.status, 200, "with the password from its secret");
    redis.stop();
    let r = get(kw.addr).await;
    assert_eq!(
        (r.status, r.error_code()),
        (503, "rate_limit_unavailable".to_string()),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(get(kw.addr).await.status, 503, "while Redis is out");
    std::fs::write(&config, text.replace("on_redis_error = \"deny\"", "on_redis_error = \"allow\"")).unwrap();
    let served = eventually(|| async { get(kw.addr).await.status == 200 }).await;
    assert!(served, "after the reload to allow");
    let _ = kw.child.kill();
    let _ = kw.child.wait();
    let logs = kw.logs.join().unwrap();
    assert!(logs.contains("the rate-limit store (ratelimit.redis) is out"), "{logs}");
    assert!(!logs.contains("CANARY"), "the Redis password was logged");
}

#[tokio::test]
async fn a_server_that_is_not_redis_is_an_outage_not_a_crash() {
    // Answers every connection with HTTP, as a wrong address in `redis` would.
    let wrong = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = wrong.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in wrong.incoming().take(64).flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n");
        }
    });
    let kw = Harness::new()
        .top(&format!(
            "[ratelimit]\nupstream_rate = \"100/s\"\nredis = \"redis://127.0.0.1:{port}/0\"\ntimeout = \"200ms\"\non_redis_error = \"deny\""
        ))
        .service(svc("a", BATCH, ""))
        .start()
        .await;
    for _ in 0..2 {
        let started = Instant::now();
        let r = kw.get("/v1/charges", BATCH).await;
        assert_eq!((r.status, r.error_code()), (503, "rate_limit_unavailable".to_string()));
        assert!(started.elapsed() < Duration::from_secs(2), "waited {:?}", started.elapsed());
    }
    assert_eq!(kw.metric("keyward_ratelimit_store_up").await, 0.0);
    assert!(kw.upstream.requests().is_empty());
}

/// With Redis, a suspension made on one replica holds on every replica, and so does its end;
/// one made while Redis is out holds here at once and reaches the others when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_on_one_replica_holds_on_every_replica() {
    let mut redis = Redis::start();
    let services = [("a", BATCH, ""), ("b", CHECKOUT, "")];
    let one = replica(&redis, "", &services).await;
    let two = replica(&redis, "", &services).await;
    async fn refused_on(kw: &Running, token: &str) -> bool {
        eventually(|| async { kw.get("/v1/charges", token).await.status == 401 }).await
    }
    assert_eq!(one.admin_call("POST", "/-/tokens/a/suspend").await.0, 200);
    assert!(refused_on(&two, BATCH).await, "the other replica did not see the suspension");
    assert_eq!(two.admin_call("POST", "/-/tokens/a/resume").await.0, 200);
    let admitted = eventually(|| async { one.get("/v1/charges", BATCH).await.status == 200 });
    assert!(admitted.await, "the other replica did not see the resumption");
    // Redis out: suspended here at once, everywhere once it is back; nothing lifted meanwhile.
    redis.stop();
    assert_eq!(one.admin_call("POST", "/-/tokens/b/suspend").await.0, 200);
    assert_eq!(one.get("/v1/charges", CHECKOUT).await.status, 401);
    assert_eq!(two.get("/v1/charges", CHECKOUT).await.status, 200, "not shared while Redis is out");
    redis.resume();
    assert!(refused_on(&two, CHECKOUT).await, "shared once Redis answered again");
    assert_eq!(one.get("/v1/charges", CHECKOUT).await.status, 401);
}

/// Managed Redis is TLS-only with ACL users: `rediss://` with keyward's CA for it, a client
/// certificate and `username` beside `password_secret`. Two replicas keep one rate through it;
/// a replica without the client certificate, or with another password, reaches no store.
#[tokio::test]
async fn rediss_with_an_acl_user_and_a_client_certificate_keeps_one_rate() {
    const PASS: &str = "redis-acl-pass-CANARY-7d1e";
    let pki = Pki::new();
    // keyward refuses a client key others may read.
    std::fs::set_permissions(&pki.key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let redis = Redis::start_tls(&pki, "keyward", PASS);
    let secrets = tempfile::tempdir().unwrap();
    let secret = |name: &str, value: &str| {
        let f = secrets.path().join(format!("{name}.toml"));
        std::fs::write(&f, format!("redis = {value:?}\n")).unwrap();
        std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        f
    };
    let (good, bad) = (secret("good", PASS), secret("bad", "not-the-password"));
    let top = |secret: &std::path::Path, client_cert: bool| {
        let cert = match client_cert {
            true => format!("tls_cert = {:?}\ntls_key = {:?}\n", pki.cert, pki.key),
            false => String::new(),
        };
        format!(
            "[ratelimit]\nredis = \"rediss://localhost:{}/0\"\nusername = \"keyward\"\npassword_secret = \"redis\"\n\
             ca = {:?}\n{cert}timeout = \"2s\"\non_redis_error = \"deny\"\n\
             [secret.redis]\nsource = \"file\"\npath = {secret:?}\nkey = \"redis\"",
            redis.port, pki.ca
        )
    };
    let start = |top: String| Harness::new().top(&top).service(svc("a", BATCH, "rate = \"4/m\"")).start();
    let (one, two) = (start(top(&good, true)).await, start(top(&good, true)).await);
    let mut admitted = 0;
    for i in 0..8 {
        let kw = if i % 2 == 0 { &one } else { &two };
        admitted += usize::from(kw.get("/v1/charges", BATCH).await.status == 200);
    }
    assert_eq!(admitted, 4, "one rate for both replicas, kept in Redis over TLS");
    assert_eq!(one.metric("keyward_ratelimit_store_up").await, 1.0);
    for (what, top) in [("no client certificate", top(&good, false)), ("another password", top(&bad, true))] {
        let kw = start(top).await;
        let r = kw.get("/v1/charges", BATCH).await;
        assert_eq!((r.status, r.error_code()), (503, "rate_limit_unavailable".to_string()), "{what}");
        assert_eq!(kw.metric("keyward_ratelimit_store_up").await, 0.0, "{what}");
        let log = std::fs::read_to_string(kw.dir.path().join("audit.jsonl")).unwrap_or_default();
        assert!(!log.contains(PASS), "{what}: the password in the log");
    }
}

/// Redis added by a reload: the replica counts itself once, however many snapshots built a
/// store for it (`keyward status` once said 2 replicas with one running).
#[tokio::test]
async fn redis_added_by_reload_counts_one_replica() {
    let redis = Redis::start();
    let kw = Harness::new().service(svc("a", BATCH, "")).start().await;
    let text = kw.edited_config(|t| {
        merge(t, fragment(&format!("[ratelimit]\nredis = {:?}\ntimeout = \"2s\"", redis.url())));
    });
    std::fs::write(&kw.config_path, text).unwrap();
    let (status, out) = kw.admin_reload().await;
    assert_eq!(status, 200, "{out}");
    assert!(eventually(|| async { kw.metric("keyward_ratelimit_store_up").await == 1.0 }).await);
    // Past two heartbeats, the count is what Redis holds.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    while tokio::time::Instant::now() < deadline {
        assert_eq!(kw.metric("keyward_ratelimit_replicas").await, 1.0, "one process, one replica");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
