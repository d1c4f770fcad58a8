//! Forward mode: keyward as `HTTPS_PROXY`. Tunnels to the API's hosts end in keyward, which
//! decides each request inside as in reverse mode; anything else is refused, and nothing a
//! refused caller sends reaches the upstream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::common::*;

const TOKEN: &str = "kw_forward_token_0123456789abcdWXYZ";
const OTHER: &str = "kw_forward_other_0123456789abcdQRST";
const API: &str = "api.stripe.com:443";

async fn forward_harness(extra: &str) -> Running {
    Harness::new()
        .forward(extra)
        .also_upstream("files")
        .service(Svc::new("billing").token("fw", TOKEN).scope("charge", "read").scope("customer", "read"))
        .service(Svc::new("reports").token("other", OTHER).scope("charge", "read"))
        .start()
        .await
}

/// Send `head` to the forward port; read the answer's head (and, for a refusal, the rest of
/// it, up to the close). Returns the stream and what was read.
async fn connect_raw(kw: &Running, head: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(kw.forward_addr()).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    // Byte by byte up to the end of the head: what follows belongs to the tunnel.
    while !got.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut byte)).await {
            Ok(Ok(1)) => got.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&got).into_owned();
    if !head.starts_with("HTTP/1.1 200") {
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got)).await;
    }
    (tcp, String::from_utf8_lossy(&got).into_owned())
}

/// A tunnel to `target`, opened with `extra` header lines.
async fn tunnel(kw: &Running, target: &str, extra: &str) -> TcpStream {
    let (tcp, head) =
        connect_raw(kw, &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "CONNECT {target} answered:\n{head}");
    tcp
}

/// TLS inside a tunnel, trusting the forward CA; `sni: None` sends no server name.
async fn tls_in<IO: AsyncRead + AsyncWrite + Unpin>(
    kw: &Running,
    io: IO,
    sni: Option<&str>,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<IO>> {
    tls_for(kw, io, sni, sni.unwrap_or("api.stripe.com"), alpn).await
}

/// TLS inside a tunnel, verifying the leaf for `host`.
async fn tls_for<IO: AsyncRead + AsyncWrite + Unpin>(
    kw: &Running,
    io: IO,
    sni: Option<&str>,
    host: &str,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<IO>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(kw.forward_ca()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg.enable_sni = sni.is_some();
    let name = ServerName::try_from(host.to_string()).unwrap();
    TlsConnector::from(Arc::new(cfg)).connect(name, io).await
}

/// Raw HTTP/1.1 bytes through a tunnel to api.stripe.com; the whole answer.
#[allow(dead_code)]
async fn raw_in_tunnel(kw: &Running, bytes: &str) -> String {
    let tcp = tunnel(kw, API, "").await;
    let mut tls = tls_in(kw, tcp, Some("api.stripe.com"), b"http/1.1").await.unwrap();
    tls.write_all(bytes.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One HTTP/2 request through a tunnel to api.stripe.com: (status, body).
async fn h2_in_tunnel(kw: &Running, req: Request<Full<Bytes>>) -> (u16, String) {
    let tcp = tunnel(kw, API, "").await;
    let tls = tls_in(kw, tcp, Some("api.stripe.com"), b"h2").await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn basic(token: &str) -> String {
    use base64::Engine;
    format!(
        "Proxy-Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(format!("{token}:"))
    )
}

fn get(path: &str, token: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: api.stripe.com\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
}

/// One printed row of the hostile table (`--nocapture` shows it).
fn row(what: &str, status: impl std::fmt::Display, code: &str) {
    println!("{what:<48} {status:>6}  {code}");
}

fn status_and_code(answer: &str) -> (u16, String) {
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let code = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(body).ok())
        .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
        .unwrap_or_else(|| "-".into());
    (status, code)
}

#[tokio::test]
async fn curl_through_the_proxy_gets_the_real_secret_injected_over_http1_and_http2() {
    let kw = forward_harness("").await;
    let proxy = format!("http://{}", kw.forward_addr());
    for version in ["--http1.1", "--http2"] {
        let out = tokio::process::Command::new("curl")
            .args(["-sS", version, "-x", &proxy, "--cacert"])
            .arg(kw.forward_ca())
            .args(["-u", &format!("{TOKEN}:"), "-w", "\n%{http_code} %{http_version}"])
            .arg("https://api.stripe.com/v1/charges?limit=3")
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let want = if version == "--http2" { "200 2" } else { "200 1.1" };
        assert!(text.ends_with(want), "curl {version}: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let seen = kw.upstream.requests();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.authority, "api.stripe.com");
        assert_eq!(s.uri, "/v1/charges?limit=3");
        let auth: Vec<_> = s.headers.get_all("authorization").iter().collect();
        assert_eq!(auth, [&format!("Bearer {SECRET}")]);
        assert!(s.headers.get("proxy-authorization").is_none());
    }
    // Denied: curl prints the Stripe-shaped refusal; nothing more reaches the upstream.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-x", &proxy, "--cacert"])
        .arg(kw.forward_ca())
        .args(["-u", &format!("{TOKEN}:"), "-d", "name=x", "-w", "\n%{http_code}"])
        .arg("https://api.stripe.com/v1/customers")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("more_permissions_required") && text.ends_with("403"), "{text}");
    assert_eq!(kw.upstream.requests().len(), 2);
    let recs = kw.records(3).await;
    for r in &recs {
        assert_eq!(r["mode"], "forward");
        assert_eq!(r["connect_host"], API);
    }
    assert_eq!(recs[2]["reason"], "more_permissions_required");
    assert_eq!(kw.metric("keyward_connects_total{outcome=\"opened\"}").await, 3.0);
    // The listener reaches the same upstream through `connect_to`, naming it by its URL's host.
    assert_eq!(kw.get("/v1/charges", TOKEN).await.status, 200);
    assert_eq!(kw.upstream.requests()[2].authority, "api.stripe.com");
}

/// `(what, CONNECT target or `-`, extra CONNECT headers, then sent in the tunnel or `-`,
/// status, code)`. `status` 0: the TLS handshake in the tunnel fails.
#[tokio::test]
async fn hostile_forward_requests_never_reach_the_upstream() {
    let kw = forward_harness("").await;
    let up = kw.upstream.addr.to_string();
    let huge = format!("X-Pad: {}\r\n", "a".repeat(20_000));
    let connect =
        |target: &str, extra: &str| format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n");
    let rows: Vec<(&str, String, u16, &str)> = vec![
        ("another host", connect("example.com:443", ""), 403, "host_not_proxied"),
        ("an IP literal", connect("127.0.0.1:443", ""), 403, "host_not_proxied"),
        ("the upstream's real address", connect(&up, ""), 403, "host_not_proxied"),
        ("an IPv6 literal", connect("[::1]:443", ""), 403, "host_not_proxied"),
        ("localhost", connect("localhost:443", ""), 403, "host_not_proxied"),
        ("another port", connect("api.stripe.com:8443", ""), 403, "host_not_proxied"),
        ("no port", connect("api.stripe.com", ""), 403, "host_not_proxied"),
        ("the host in other case", connect("API.Stripe.com:443", ""), 403, "host_not_proxied"),
        ("a trailing dot", connect("api.stripe.com.:443", ""), 403, "host_not_proxied"),
        ("user info", connect(&format!("{TOKEN}@api.stripe.com:443"), ""), 403, "host_not_proxied"),
        ("a percent-encoded host", connect("api%2estripe.com:443", ""), 400, "-"),
        ("an absolute URL as target", connect("https://api.stripe.com:443/", ""), 403, "host_not_proxied"),
        (
            "plain HTTP, absolute form",
            get("http://api.stripe.com/v1/charges", TOKEN),
            403,
            "plain_http_refused",
        ),
        ("an origin-form request", get("/v1/charges", TOKEN), 400, "not_a_proxy_request"),
        (
            "an unknown proxy token",
            connect(API, &basic("kw_not_a_token_0000000000000000")),
            407,
            "proxy_token_invalid",
        ),
        (
            "two proxy tokens",
            connect(API, &format!("{}{}", basic(TOKEN), basic(OTHER))),
            407,
            "proxy_token_invalid",
        ),
        (
            "an unreadable proxy token",
            connect(API, "Proxy-Authorization: Basic !!!\r\n"),
            407,
            "proxy_token_invalid",
        ),
        ("a CONNECT head too large", connect(API, &huge), 431, "-"),
        (
            "a CONNECT with a body",
            format!("{}{}", connect(API, "Content-Length: 5\r\n"), "GET /"),
            400,
            "non_canonical_request",
        ),
        ("a chunked CONNECT", connect(API, "Transfer-Encoding: chunked\r\n"), 400, "non_canonical_request"),
        (
            "a CONNECT whose Host is another host",
            format!("CONNECT {API} HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
            400,
            "non_canonical_request",
        ),
    ];
    let mut failures = Vec::new();
    row("forward port: sent", "status", "code");
    for (what, head, want_status, want_code) in &rows {
        let (_, answer) = connect_raw(&kw, head).await;
        let (status, code) = status_and_code(&answer);
        row(what, status, &code);
        if (status, code.as_str()) != (*want_status, *want_code) {
            failures.push(format!("{what}: got {status} {code}, want {want_status} {want_code}\n{answer}"));
        }
    }
    // In the tunnel.
    let tunnel_rows: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "inner Host is another host",
            "",
            get("/v1/charges", TOKEN).replace("Host: api.stripe.com", "Host: files.stripe.com"),
            421,
            "misdirected_request",
        ),
        (
            "two inner Host headers",
            "",
            get("/v1/charges", TOKEN)
                .replace("Host: api.stripe.com\r\n", "Host: api.stripe.com\r\nHost: evil.example\r\n"),
            421,
            "misdirected_request",
        ),
        (
            "an absolute-form request inside",
            "",
            get("https://api.stripe.com/v1/charges", TOKEN),
            400,
            "non_canonical_request",
        ),
        (
            "a second CONNECT inside",
            "",
            format!(
                "CONNECT {API} HTTP/1.1\r\nHost: {API}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
            ),
            400,
            "non_canonical_request",
        ),
        (
            "an endpoint of another host (upload)",
            "",
            get("/v1/files", TOKEN)
                .replace("GET", "POST")
                .replace("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n"),
            421,
            "misdirected_request",
        ),
        (
            "tunnel token of one service, inner of another",
            "b",
            get("/v1/charges", OTHER),
            403,
            "tunnel_service_mismatch",
        ),
    ];
    row("in a tunnel: sent", "status", "code");
    for (what, proxy_auth, bytes, want_status, want_code) in &tunnel_rows {
        let extra = if proxy_auth.is_empty() { String::new() } else { basic(TOKEN) };
        let tcp = tunnel(&kw, API, &extra).await;
        let mut tls = tls_in(&kw, tcp, Some("api.stripe.com"), b"http/1.1").await.unwrap();
        tls.write_all(bytes.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
        let answer = String::from_utf8_lossy(&out).into_owned();
        let (status, code) = status_and_code(&answer);
        row(what, status, &code);
        if (status, code.as_str()) != (*want_status, *want_code) {
            failures.push(format!("{what}: got {status} {code}, want {want_status} {want_code}\n{answer}"));
        }
    }
    // h2 `:authority` of another host.
    let req = Request::builder()
        .uri("https://files.stripe.com/v1/charges")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, body) = h2_in_tunnel(&kw, req).await;
    row("h2 :authority is another host", status, &status_and_code(&format!("x {status} x\r\n\r\n{body}")).1);
    if status != 421 || !body.contains("misdirected_request") {
        failures.push(format!("h2 :authority: {status} {body}"));
    }
    // SNI of another host than the CONNECT's: the handshake ends.
    let tcp = tunnel(&kw, API, "").await;
    let sni = tls_in(&kw, tcp, Some("files.stripe.com"), b"http/1.1").await;
    row("SNI is another host", "-", if sni.is_err() { "handshake refused" } else { "ACCEPTED" });
    if sni.is_ok() {
        failures.push("a TLS handshake naming another host was accepted".into());
    }
    // A request smuggled after the CONNECT head is read as the tunnel's TLS, and fails.
    let (mut tcp, head) =
        connect_raw(&kw, &format!("{}{}", connect(API, ""), get("/v1/charges", TOKEN))).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
    row("a request smuggled after the CONNECT", head.split(' ').nth(1).unwrap_or("-"), "closed, not served");
    if String::from_utf8_lossy(&rest).contains("HTTP/1.1") {
        failures.push(format!("the smuggled request was answered: {}", String::from_utf8_lossy(&rest)));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert!(kw.upstream.requests().is_empty(), "reached the upstream: {:?}", kw.upstream.requests());
    assert!(kw.others["files"].requests().is_empty());
    // Refused CONNECTs are recorded, with the host they asked for (user info cut off).
    let recs = kw.records(rows.len() - 1).await;
    let asked: Vec<&str> = recs.iter().filter_map(|r| r["connect_host"].as_str()).collect();
    assert!(asked.contains(&"example.com:443") && asked.contains(&"api.stripe.com:443"), "{asked:?}");
    let other = recs.iter().find(|r| r["connect_host"] == "example.com:443").unwrap();
    assert_eq!(
        (&other["method"], &other["path"], &other["mode"]),
        (&"CONNECT".into(), &"".into(), &"forward".into())
    );
    let log = std::fs::read_to_string(kw.dir.path().join("audit.jsonl")).unwrap();
    assert!(!log.contains(TOKEN) && !log.contains(SECRET), "a token or the secret in the access log");
}

#[tokio::test]
async fn a_tunnel_token_names_the_service_for_the_whole_tunnel() {
    let kw = forward_harness("").await;
    let answer = |tcp: TcpStream, token: &'static str| {
        let kw = &kw;
        async move {
            let mut tls = tls_in(kw, tcp, Some("api.stripe.com"), b"http/1.1").await.unwrap();
            tls.write_all(get("/v1/charges", token).as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
            status_and_code(&String::from_utf8_lossy(&out))
        }
    };
    let bearer = format!("Proxy-Authorization: Bearer {TOKEN}\r\n");
    assert_eq!(answer(tunnel(&kw, API, &basic(TOKEN)).await, TOKEN).await.0, 200);
    assert_eq!(answer(tunnel(&kw, API, &bearer).await, TOKEN).await.0, 200);
    assert_eq!(
        answer(tunnel(&kw, API, &basic(TOKEN)).await, OTHER).await,
        (403, "tunnel_service_mismatch".into())
    );
    assert_eq!(answer(tunnel(&kw, API, "").await, OTHER).await.0, 200);
    let recs = kw.records(4).await;
    assert_eq!(recs[2]["service"], "reports");
    assert_eq!(recs[2]["reason"], "tunnel_service_mismatch");
    assert_eq!(kw.upstream.requests().len(), 3);
}

#[tokio::test]
async fn a_reload_applies_to_tunnels_already_open() {
    let kw = forward_harness("").await;
    let tcp = tunnel(&kw, API, "").await;
    let tls = tls_in(&kw, tcp, Some("api.stripe.com"), b"http/1.1").await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let call = |path: &str| {
        Request::builder()
            .uri(path)
            .header("host", "api.stripe.com")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let resp = sender.send_request(call("/v1/customers/cus_1")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    // Narrow billing's scope: customers are no longer readable.
    let text = kw.edited_config(|t| {
        scope_at(t, 0).remove("customer");
    });
    std::fs::write(&kw.config_path, &text).unwrap();
    let want = version_of(&text).await;
    assert!(kw.wait_version(&want).await, "the reload was not applied");
    sender.ready().await.unwrap();
    let resp = sender.send_request(call("/v1/customers/cus_1")).await.unwrap();
    assert_eq!(resp.status(), 403, "the same tunnel still gets the old scope");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("more_permissions_required"));
    // Revoke the token: the next request in the same tunnel is refused.
    let text = kw.edited_config(|t| {
        service_at(t, 0).remove("token");
    });
    std::fs::write(&kw.config_path, &text).unwrap();
    let want = version_of(&text).await;
    assert!(kw.wait_version(&want).await, "the reload was not applied");
    sender.ready().await.unwrap();
    let resp = sender.send_request(call("/v1/charges")).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(kw.upstream.requests().len(), 1);
}

/// A reload that takes away a tunnel's basis (forward mode, or the tunnel's token) refuses
/// the tunnel's next request and closes the tunnel.
#[tokio::test]
async fn a_tunnel_whose_basis_a_reload_removes_is_refused_and_closed() {
    let kw = forward_harness("").await;
    for (what, proxy_auth) in [("the tunnel's token", basic(TOKEN)), ("forward mode", String::new())] {
        let tcp = tunnel(&kw, API, &proxy_auth).await;
        let tls = tls_in(&kw, tcp, Some("api.stripe.com"), b"http/1.1").await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        let conn = tokio::spawn(conn);
        let call = || {
            Request::builder()
                .uri("/v1/charges")
                .header("host", "api.stripe.com")
                .header("authorization", format!("Bearer {OTHER}"))
                .body(Full::new(Bytes::new()))
                .unwrap()
        };
        let text = kw.edited_config(|t| {
            if proxy_auth.is_empty() {
                t.remove("forward");
            } else {
                service_at(t, 0).remove("token");
            }
        });
        std::fs::write(&kw.config_path, &text).unwrap();
        let want = version_of(&text).await;
        assert!(kw.wait_version(&want).await, "{what}: the reload was not applied");
        let resp = sender.send_request(call()).await.unwrap();
        let code = if proxy_auth.is_empty() { 403 } else { 407 };
        assert_eq!(resp.status(), code, "{what}");
        let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
        assert!(ended.is_ok(), "{what}: the tunnel was not closed");
    }
    assert!(kw.upstream.requests().is_empty());
}

#[tokio::test]
async fn past_max_tunnels_a_connect_gets_503() {
    let kw = forward_harness("max_tunnels = 1\nidle_timeout = \"76s\"").await;
    // Proven by its token: an unproven tunnel would give its place to the next caller.
    let first = tunnel(&kw, API, &format!("Proxy-Authorization: Bearer {TOKEN}\r\n")).await;
    assert!(eventually(|| async { kw.metric("keyward_tunnels_open").await == 1.0 }).await);
    let (_, answer) = connect_raw(&kw, &format!("CONNECT {API} HTTP/1.1\r\nHost: {API}\r\n\r\n")).await;
    assert_eq!(status_and_code(&answer), (503, "tunnels_full".into()), "{answer}");
    drop(first);
    assert!(eventually(|| async { kw.metric("keyward_tunnels_open").await == 0.0 }).await);
    let _again = tunnel(&kw, API, "").await;
}

#[tokio::test]
async fn a_silent_caller_and_an_idle_tunnel_are_closed() {
    let kw = Harness::new()
        .forward("head_timeout = \"300ms\"\nidle_timeout = \"600ms\"")
        .top("[timeouts]\nupstream = \"500ms\"")
        .service(Svc::new("billing").token("fw", TOKEN).scope("charge", "read"))
        .start()
        .await;
    let closed = |mut tcp: TcpStream| async move {
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    };
    // No CONNECT head within head_timeout.
    let silent = TcpStream::connect(kw.forward_addr()).await.unwrap();
    assert!(closed(silent).await, "a caller that sends nothing is closed");
    // A tunnel with a served call, then nothing: closed after idle_timeout.
    let tcp = tunnel(&kw, API, "").await;
    let tls = tls_in(&kw, tcp, Some("api.stripe.com"), b"h2").await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    let conn = tokio::spawn(conn);
    let call = Request::builder()
        .uri("https://api.stripe.com/v1/charges")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(sender.send_request(call).await.unwrap().status(), 200);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the idle tunnel was not closed");
    assert!(eventually(|| async { kw.metric("keyward_tunnels_open").await == 0.0 }).await);
}

#[tokio::test]
async fn the_proxy_port_can_speak_tls_for_callers_that_send_a_proxy_token() {
    let kw = forward_harness("tls = true").await;
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-x", &format!("https://localhost:{}", kw.forward_addr().port()), "--proxy-cacert"])
        .arg(&kw.pki.ca)
        .args(["--proxy-user", &format!("{TOKEN}:"), "--cacert"])
        .arg(kw.forward_ca())
        .args(["-u", &format!("{TOKEN}:"), "-w", "\n%{http_code}"])
        .arg("https://api.stripe.com/v1/charges")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("200"), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(kw.upstream.requests().len(), 1);
}

/// The CA key from a `[secret.NAME]` (here a file secret; a vault one is read the same way),
/// base64 of its PEM: what replicas sharing one CA use.
#[tokio::test]
async fn the_ca_key_can_come_from_a_secret() {
    let kw = forward_harness("ca_key_secret = \"forward_ca\"").await;
    let tcp = tunnel(&kw, API, "").await;
    let mut tls = tls_in(&kw, tcp, Some("api.stripe.com"), b"http/1.1").await.expect("the leaf verifies");
    tls.write_all(get("/v1/charges", TOKEN).as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    assert_eq!(status_and_code(&String::from_utf8_lossy(&out)).0, 200);
}

#[tokio::test]
async fn leaves_are_for_the_connect_host_signed_by_the_forward_ca() {
    let kw = forward_harness("leaf_lifetime = \"2h\"").await;
    // No SNI: the CONNECT host's leaf.
    let tcp = tunnel(&kw, "files.stripe.com:443", "").await;
    let tls = tls_for(&kw, tcp, None, "files.stripe.com", b"http/1.1")
        .await
        .expect("verifies for the CONNECT host");
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names, ["DNSName(files.stripe.com)"]);
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!((7200..=7200 + 600).contains(&life), "lifetime {life} s");
    assert!(cert.public_key().algorithm.algorithm.to_id_string().starts_with("1.2.840.10045"), "ECDSA");
}

/// `Proxy-Authorization` is no oracle for stolen tokens: tried from outside its allowlist it
/// counts toward `quarantine` (the 20th quarantines it); a suspended token opens no tunnel.
#[tokio::test]
async fn proxy_authorization_from_elsewhere_counts_toward_quarantine_and_a_suspended_token_opens_nothing() {
    let kw = Harness::new()
        .forward("")
        .service(
            Svc::new("billing")
                .token("fw", TOKEN)
                .scope("charge", "read")
                .source_ips(&["10.9.0.0/16"])
                .extra("quarantine = { ip_refusals = 20, within = \"1m\" }"),
        )
        .service(Svc::new("reports").token("other", OTHER).scope("charge", "read"))
        .start()
        .await;
    let connect = |token: &str| {
        format!("CONNECT {API} HTTP/1.1\r\nHost: {API}\r\nProxy-Authorization: Bearer {token}\r\n\r\n")
    };
    // The red team's 20 CONNECTs with a stolen token from a refused address.
    for _ in 0..20 {
        let (_, answer) = connect_raw(&kw, &connect(TOKEN)).await;
        assert_eq!(status_and_code(&answer), (407, "proxy_token_invalid".into()), "{answer}");
    }
    assert_eq!(kw.metric("keyward_tokens_quarantined_total").await, 1.0, "the 20th refusal quarantined it");
    let (status, _) = kw.admin_call("POST", "/-/tokens/other/suspend").await;
    assert_eq!(status, 200);
    let (_, answer) = connect_raw(&kw, &connect(OTHER)).await;
    assert_eq!(status_and_code(&answer), (407, "proxy_token_invalid".into()), "{answer}");
    assert!(answer.contains("suspended"), "{answer}");
    assert!(kw.upstream.requests().is_empty());
}

/// Two `Authorization` headers could be read two ways: 400, in a tunnel as on the listener.
#[tokio::test]
async fn two_authorization_headers_are_refused_in_a_tunnel_too() {
    let kw = forward_harness("").await;
    let tcp = tunnel(&kw, API, "").await;
    let mut tls = tls_in(&kw, tcp, Some("api.stripe.com"), b"http/1.1").await.unwrap();
    let head = format!(
        "GET /v1/charges HTTP/1.1\r\nHost: api.stripe.com\r\nAuthorization: Bearer {TOKEN}\r\nAuthorization: Bearer {OTHER}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    assert_eq!(status_and_code(&String::from_utf8_lossy(&out)), (400, "non_canonical_request".into()));
    let reverse = kw
        .raw(format!("GET /v1/charges HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {OTHER}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    assert_eq!(status_and_code(&reverse), (400, "non_canonical_request".into()), "{reverse}");
    assert!(kw.upstream.requests().is_empty());
}

/// Through a tunnel as through the reverse port: keyward asks the upstream for `identity`, so
/// an HTTP/1.1 caller asking for gzip gets the answer plain and scrubbed; an HTTP/2 caller's
/// answer compressed anyway is refused with 502 `upstream_encoding_refused`.
#[tokio::test]
async fn a_compressed_answer_in_a_tunnel_never_reaches_the_caller_unscanned() {
    let kw = forward_harness("").await;
    let answer = raw_in_tunnel(
        &kw,
        &format!(
            "GET /v1/charges HTTP/1.1\r\nHost: api.stripe.com\r\nAuthorization: Bearer {TOKEN}\r\n\
             Accept-Encoding: gzip, deflate, br\r\nx-test-echo-auth: 1\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.to_ascii_lowercase().contains("content-encoding"), "{answer}");
    assert!(answer.contains("Bearer keyward-scrubbed") && !answer.contains(SECRET), "{answer}");
    assert_eq!(kw.upstream.requests()[0].headers["accept-encoding"], "identity");

    let r = Request::builder()
        .uri("https://api.stripe.com/v1/charges")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("x-test-echo-auth", "1")
        .header("x-test-encode", "br")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, body) = h2_in_tunnel(&kw, r).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream_encoding_refused") && !body.contains(SECRET), "{body}");
    kw.stop().await;
}

/// Through a tunnel as through the reverse port: a keyward token outside `Authorization`
/// (here one keyward does not know, in the query) is refused and never forwarded.
#[tokio::test]
async fn a_token_in_the_wrong_place_in_a_tunnel_is_refused() {
    let kw = forward_harness("").await;
    let stray = keyward::policy::token_format::with_checksum(&"Fw0".repeat(15)[..43]);
    let r = Request::builder()
        .uri(format!("https://api.stripe.com/v1/charges?api_key={stray}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, body) = h2_in_tunnel(&kw, r).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("token_in_wrong_place") && body.contains("the query string"), "{body}");
    let record = kw.last_record(1).await;
    assert_eq!(
        (record["token_exposed"].as_bool(), record["service"].as_str()),
        (Some(true), Some("billing"))
    );
    assert!(kw.upstream.requests().is_empty());
    kw.stop().await;
}

/// What a platform team alerts on in forward mode: the CA's expiry, calls by mode, and
/// keyward's own share of a call's time.
#[tokio::test]
async fn metrics_tell_the_ca_expiry_the_mode_and_the_added_latency() {
    let kw = forward_harness("").await;
    let answer = raw_in_tunnel(&kw, &get("/v1/customers/cus_1", TOKEN)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    kw.records(1).await;
    let expires = kw.metric("keyward_forward_ca_expiry_timestamp_seconds").await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(expires > now + 86_400.0, "the development CA is good for more than a day: {expires}");
    let (_, body) = kw.admin_raw("GET", "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.lines().any(|l| l.starts_with("keyward_requests_total{") && l.contains("mode=\"forward\"")),
        "{text}"
    );
    assert_eq!(kw.metric("keyward_added_latency_seconds_count").await, 1.0);
}
