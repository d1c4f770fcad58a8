//! Canary: a secret and a token of distinctive values go through a mix of requests, at the most
//! verbose log level; neither may appear in the access log, keyward's output, or any response.

use std::process::Command;
use std::time::Duration;

use crate::common::*;

const TOKEN: &str = "kw_CANARYTOKEN_5e1f0c9a7b3d2e4f6a8c";
const EXPIRED: &str = "kw_CANARYEXPIRED_00112233445566778899";

/// A token of the minted shape, so that keyward finds it where it does not belong.
fn minted() -> String {
    keyward::policy::token_format::with_checksum("CANARYMINTED0123456789abcdefghijklmnopqrstu")
}

#[tokio::test]
async fn no_secret_or_token_escapes() {
    canary("http2 = false", false).await;
}

/// The HTTP/2 client (the default) and its header compression log at trace level too; the
/// access log goes to stdout, with keyward's own output.
#[tokio::test]
async fn no_secret_or_token_escapes_over_http2_upstream_with_the_log_on_stdout() {
    canary("", true).await;
}

async fn canary(upstream_extra: &str, log_on_stdout: bool) {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new()
        .service(
            Svc::new("billing")
                .token("live", TOKEN)
                .token_with("old", EXPIRED, "expires = \"2021-01-01T00:00:00Z\"")
                .token("minted", &minted())
                .scope("charge", "read")
                .source_ips(&["127.0.0.1/32", "::1/128"])
                .extra("quarantine = { ip_refusals = 2, within = \"1m\" }"),
        )
        .top("[timeouts]\nupstream = \"200ms\"\ndrain_delay = \"0s\"")
        .audit(if log_on_stdout { "path = \"-\"" } else { "" })
        .upstream(upstream_extra);
    let text = h.config(&pki, &upstream.url(), dir.path());
    let path = dir.path().join("keyward.toml");
    std::fs::write(&path, text).unwrap();

    let KeywardProcess { mut child, addr, admin, logs, .. } = spawn_keyward(&path, &[]);
    let tls = pki.client_config();
    let local = "127.0.0.1".parse().unwrap();

    let mut bodies = String::new();
    let mut slow = req("GET", "/v1/charges", TOKEN, "");
    slow.headers_mut().insert("x-test-delay-ms", "1000".parse().unwrap());
    let mut basic = req("GET", "/v1/charges/ch_1", "", "");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN}:"));
    basic.headers_mut().insert("authorization", format!("Basic {b64}").parse().unwrap());
    // A token in the wrong place: refused, and in no output either.
    let mut in_header = req("GET", "/v1/charges", TOKEN, "");
    in_header.headers_mut().insert("x-api-key", minted().parse().unwrap());
    let mut in_json = req("POST", "/v1/charges", TOKEN, &format!(r#"{{"k":"{}"}}"#, minted()));
    in_json.headers_mut().insert("content-type", "application/json".parse().unwrap());
    let mix = vec![
        req("GET", &format!("/v1/charges?api_key={}", minted()), TOKEN, ""),
        in_header,
        in_json,
        req("GET", "/v1/charges/ch_1", TOKEN, ""),
        req("POST", "/v1/charges", TOKEN, "amount=100"),
        req("GET", "/v1/charges", &format!("{TOKEN}x"), ""),
        req("GET", "/v1/charges", EXPIRED, ""),
        req("GET", "/v1/../charges", TOKEN, ""),
        req("GET", "/v1/unknown", TOKEN, ""),
        slow,
        basic,
    ];
    // Last: the token tried twice from outside its allowlist (quarantined), then refused.
    let outside = "127.0.0.9".parse().unwrap();
    let mix: Vec<_> = mix
        .into_iter()
        .map(|r| (local, r))
        .chain([outside, outside, local].map(|from| (from, req("GET", "/v1/charges/ch_1", TOKEN, ""))))
        .collect();
    let n = mix.len();
    for (from, r) in mix {
        let reply = send(addr, tls.clone(), from, r).await;
        bodies.push_str(&String::from_utf8_lossy(&reply.body));
        for (_, v) in reply.headers.iter() {
            bodies.push_str(v.to_str().unwrap_or(""));
        }
    }
    // The upstream did get the secret, over the protocol meant: the canary is live.
    let want = if upstream_extra.is_empty() { http::Version::HTTP_2 } else { http::Version::HTTP_11 };
    assert!(
        upstream
            .requests()
            .iter()
            .any(|s| s.version == want && s.headers["authorization"] == format!("Bearer {SECRET}").as_str())
    );

    // What the admin port says: metrics (names and token ids) and a reload's answer.
    let admin = admin.expect("an admin port");
    for (method, path) in [("GET", "/metrics"), ("POST", "/-/reload"), ("GET", "/readyz")] {
        let (status, body) = admin_request(admin, method, path).await;
        assert!(status == 200, "{method} {path}: {status}");
        bodies.push_str(&String::from_utf8_lossy(&body));
    }
    assert!(bodies.contains("keyward_requests_total"), "the metrics were read");
    let audit_path = dir.path().join("audit.jsonl");
    for _ in 0..100 {
        if log_on_stdout || call_lines(&std::fs::read_to_string(&audit_path).unwrap_or_default()).len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "keyward exited with {status}");
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let stderr = logs.join().unwrap();
    let audit = match log_on_stdout {
        true => stdout.lines().filter(|l| l.starts_with("{\"seq\"")).collect::<Vec<_>>().join("\n"),
        false => std::fs::read_to_string(&audit_path).unwrap(),
    };
    assert_eq!(call_lines(&audit).len(), n, "one record per request");
    assert!(audit.contains(r#""action":"quarantine""#), "the quarantine is recorded");
    assert!(stderr.contains("TRACE") || stderr.contains("DEBUG"), "logs ran verbose");
    assert!(stderr.contains("token quarantined"), "the quarantine path ran");

    for (place, text) in
        [("access log", &audit), ("stderr", &stderr), ("stdout", &stdout), ("responses", &bodies)]
    {
        // The Basic credential is the token base64-encoded: that form must not escape either.
        for canary in ["CANARYTOKEN", "CANARYEXPIRED", "CANARYMINTED", "REALSECRET", SECRET, TOKEN, &b64] {
            assert!(!text.contains(canary), "{canary} appears in {place}");
        }
    }
    assert!(bodies.contains("kw_***6a8c"), "redacted token shown to the caller");
}

/// Forward mode: tokens in `Proxy-Authorization`, in a `CONNECT` target's user info and in
/// the tunnel, and the forward CA's private key, appear in no output.
#[tokio::test]
async fn forward_mode_leaks_no_token_secret_or_ca_key() {
    let pki = Pki::new();
    let upstream = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::new().service(Svc::new("billing").token("live", TOKEN).scope("charge", "read"));
    let mut table = h.table(&pki, &upstream.url(), dir.path());
    add_forward(&mut table, dir.path(), "", &[("api".into(), upstream.addr)]);
    table_at(&mut table, &["timeouts"]).insert("drain_delay".into(), "0s".into());
    let path = dir.path().join("keyward.toml");
    std::fs::write(&path, toml::to_string(&table).unwrap()).unwrap();
    let KeywardProcess { mut child, admin, forward, logs, .. } = spawn_keyward(&path, &[]);
    let proxy = format!("http://{}", forward.expect("a forward port"));
    let ca = dir.path().join("forward-ca.crt");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{TOKEN}:"));
    let mut out = String::new();
    let calls: Vec<Vec<String>> = vec![
        vec!["-u".into(), format!("{TOKEN}:"), "https://api.stripe.com/v1/charges".into()],
        vec![
            "--proxy-user".into(),
            format!("{TOKEN}:"),
            "-u".into(),
            format!("{TOKEN}:"),
            "https://api.stripe.com/v1/customers".into(),
        ],
        vec!["--proxy-user".into(), format!("{TOKEN}x:"), "https://api.stripe.com/v1/charges".into()],
        vec!["-u".into(), format!("{TOKEN}:"), "https://example.com/v1/charges".into()],
        vec!["-u".into(), format!("{TOKEN}:"), "http://api.stripe.com/v1/charges".into()],
    ];
    for args in calls {
        let o = tokio::process::Command::new("curl")
            .args(["-sS", "-i", "-x", &proxy, "--cacert"])
            .arg(&ca)
            .args(&args)
            .output()
            .await
            .unwrap();
        out.push_str(&String::from_utf8_lossy(&o.stdout));
        out.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    // The CONNECT target with the token as user info, raw (curl would strip it).
    let mut tcp = tokio::net::TcpStream::connect(forward.unwrap()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!("CONNECT {TOKEN}@api.stripe.com:443 HTTP/1.1\r\nHost: api.stripe.com:443\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    out.push_str(&String::from_utf8_lossy(&answer));
    assert!(
        upstream.requests().iter().any(|s| s.headers["authorization"] == format!("Bearer {SECRET}").as_str()),
        "the canary is live: {out}"
    );
    let (_, metrics) = admin_request(admin.unwrap(), "GET", "/metrics").await;
    out.push_str(&String::from_utf8_lossy(&metrics));
    assert!(out.contains("keyward_connects_total"), "the metrics were read");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(child.wait().unwrap().success());
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    let stderr = logs.join().unwrap();
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).unwrap();
    assert!(audit.contains("\"mode\":\"forward\"") && audit.contains("host_not_proxied"), "{audit}");
    // The key's base64 body, line by line: no part of it may show.
    let key = std::fs::read_to_string(dir.path().join("forward-ca.key")).unwrap();
    let key_lines: Vec<&str> = key.lines().filter(|l| !l.starts_with("-----") && l.len() > 16).collect();
    assert!(!key_lines.is_empty());
    for (place, text) in [("access log", &audit), ("stderr", &stderr), ("stdout", &stdout), ("answers", &out)]
    {
        for canary in ["CANARYTOKEN", "REALSECRET", SECRET, TOKEN, &b64] {
            assert!(!text.contains(canary), "{canary} appears in {place}");
        }
        for line in &key_lines {
            assert!(!text.contains(line), "the forward CA key appears in {place}");
        }
    }
}
