//! The test harness: keyward on port 0 in front of a recording TLS upstream, with
//! certificates made at test time by rcgen, and clients that can pick their source address.
#![allow(dead_code)]

pub mod bao;
pub mod redis;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub const SECRET: &str = "sk_test_REALSECRET_4242424242";

/// A CA and a leaf for localhost / 127.0.0.1, written to a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        // The API's own names too: forward mode reaches the stand-in as api.stripe.com.
        let names = [
            "localhost",
            "127.0.0.1",
            "api.stripe.com",
            "files.stripe.com",
            "connect.stripe.com",
            "meter-events.stripe.com",
        ];
        let pki = keyward::control::tls::dev_pki(&names).unwrap();
        let (ca, cert, key) =
            (dir.path().join("ca.crt"), dir.path().join("leaf.crt"), dir.path().join("leaf.key"));
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        std::fs::write(&cert, &pki.cert_pem).unwrap();
        std::fs::write(&key, &pki.key_pem).unwrap();
        Pki { dir, ca, cert, key }
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(cfg)
    }

    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let chain: Vec<_> = CertificateDer::pem_file_iter(&self.cert).unwrap().map(Result::unwrap).collect();
        let key = PrivateKeyDer::from_pem_file(&self.key).unwrap();
        let mut cfg =
            rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(chain, key).unwrap();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// What the test upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1.1).
    pub authority: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
}

/// The stand-in for the payments API: TLS, records every request, answers Stripe-like JSON.
/// Like Stripe it offers HTTP/2 and HTTP/1.1 by ALPN. A request with `x-test-delay-ms` is
/// answered that much later; with `x-test-body-stall-ms`, the answer's body stalls that long
/// after its first bytes; with `x-test-body-bytes: N`, the answer is N bytes of `x`; with
/// `x-test-status: N`, the status is N (an error body from 400 on). An object id like
/// `ch_usd_5000_1000` is answered with an amount (5000), `amount_refunded` (1000) and currency.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests with `x-test-delay-ms` arrived and not yet answered (they are `seen` only
    /// once answered): the streams keyward holds open on them.
    pub delayed: Arc<std::sync::atomic::AtomicUsize>,
    close: tokio::sync::watch::Sender<u64>,
}

impl Upstream {
    pub async fn start(pki: &Pki) -> Upstream {
        Upstream::start_alpn(pki, &[b"h2", b"http/1.1"]).await
    }

    /// An upstream that speaks only the protocols in `alpn`.
    pub async fn start_alpn(pki: &Pki, alpn: &[&[u8]]) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let acceptor = TlsAcceptor::from(pki.server_config(alpn));
        let log = seen.clone();
        let delayed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let waiting = delayed.clone();
        let (close, closing) = tokio::sync::watch::channel(0);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                // As API servers do: without it a small answer written right after another
                // small frame waits for keyward's delayed ACK (Nagle), which a slow upload
                // sharing the connection turned into 10 ms stalls for other calls.
                let _ = tcp.set_nodelay(true);
                let (acceptor, log, mut closing) = (acceptor.clone(), log.clone(), closing.clone());
                let waiting = waiting.clone();
                closing.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req| answer(req, peer, log.clone(), waiting.clone()));
                    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    // Stripe-like: 100 streams at once per connection.
                    builder.http2().max_concurrent_streams(100);
                    let conn = builder.serve_connection(TokioIo::new(tls), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        _ = closing.changed() => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                });
            }
        });
        Upstream { addr, seen, delayed, close }
    }

    /// Close every open connection gracefully (HTTP/2: GOAWAY), as a server being
    /// redeployed does; new connections are still accepted.
    pub fn close_connections(&self) {
        self.close.send_modify(|n| *n += 1);
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    log: Arc<Mutex<Vec<Seen>>>,
    delayed: Arc<std::sync::atomic::AtomicUsize>,
) -> Result<Response<UnsyncBoxBody<Bytes, Infallible>>, Infallible> {
    let (parts, body) = req.into_parts();
    let authority = match parts.uri.authority() {
        Some(a) => a.to_string(),
        None => parts.headers.get("host").map(|h| h.to_str().unwrap().to_string()).unwrap_or_default(),
    };
    // A request whose body did not arrive whole (the caller or keyward cut it) is not one a
    // server acts on: it is not recorded.
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return Ok(Response::builder().status(400).body(Full::new(Bytes::new()).boxed_unsync()).unwrap());
    };
    if let Some(ms) = parts.headers.get("x-test-delay-ms").and_then(|v| v.to_str().ok()?.parse().ok()) {
        /// Counts a delayed request until it is answered, or dropped (its stream reset).
        struct Waiting(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Waiting {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        delayed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _waiting = Waiting(delayed);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let stall_ms: Option<u64> =
        parts.headers.get("x-test-body-stall-ms").and_then(|v| v.to_str().ok()?.parse().ok());
    let size: Option<usize> =
        parts.headers.get("x-test-body-bytes").and_then(|v| v.to_str().ok()?.parse().ok());
    let path = parts.uri.path().to_string();
    let parts_query = parts.uri.query().unwrap_or("").to_string();
    // `x-test-status: 402`: answered with that status and a Stripe-shaped error.
    let forced_status: Option<u16> =
        parts.headers.get("x-test-status").and_then(|v| v.to_str().ok()?.parse().ok());
    let refuse = parts.headers.get("stripe-version").is_some_and(|v| v == "test-refuse").then(|| {
        parts.headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
    });
    // An upstream (or a debugging proxy before it) that echoes the Authorization it received.
    let echo = parts.headers.contains_key("x-test-echo-auth").then(|| {
        parts.headers.get("authorization").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
    });
    let refused = refuse.is_some();
    // Compressed when asked (`Accept-Encoding`), as the API does; `x-test-encode` compresses
    // whatever was asked, as an upstream that ignores `identity` would.
    let forced = parts.headers.get("x-test-encode").and_then(|v| v.to_str().ok()).map(str::to_string);
    let asked = parts.headers.get("accept-encoding").and_then(|v| v.to_str().ok()).unwrap_or("");
    let coding = forced.or_else(|| {
        ["br", "gzip", "deflate"]
            .into_iter()
            .find(|c| asked.split(',').any(|a| a.trim() == *c))
            .map(String::from)
    });
    let n = {
        let mut log = log.lock().unwrap();
        log.push(Seen {
            method: parts.method.to_string(),
            uri: parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
            authority,
            version: parts.version,
            headers: parts.headers,
            body,
            peer,
        });
        log.len()
    };
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let last = segs.last().copied().unwrap_or("");
    let json = if path == "/v2/billing/meter_event_session" {
        // Stripe's session: a token for the meter-event stream, good for 15 minutes.
        let fmt = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
        let now = time::OffsetDateTime::now_utc();
        serde_json::json!({
            "id": format!("mes_test_{n}"), "object": "v2.billing.meter_event_session",
            "authentication_token": format!("mes_tok_upstream_{n}"), "created": fmt(now),
            "expires_at": fmt(now + Duration::from_secs(900)), "livemode": false,
        })
    } else if last.contains('_') && segs.len() >= 3 {
        let kind = segs[segs.len() - 2].trim_end_matches('s');
        let mut obj = serde_json::json!({ "id": last, "object": kind, "livemode": false });
        // `ch_usd_5000_1000`: a charge (or PaymentIntent, fee, invoice) of 5000 usd, 1000 of
        // it refunded, for the spend caps' pricing reads.
        let id: Vec<&str> = last.split('_').collect();
        if let [_, cur, amount, rest @ ..] = &id[..]
            && cur.len() == 3
            && cur.bytes().all(|b| b.is_ascii_lowercase())
            && let Ok(amount) = amount.parse::<u64>()
        {
            let refunded: u64 = rest.first().and_then(|r| r.parse().ok()).unwrap_or(0);
            let money = serde_json::json!({ "amount": amount, "amount_refunded": refunded,
                "amount_received": amount, "amount_remaining": amount - refunded, "currency": cur });
            obj.as_object_mut().unwrap().extend(money.as_object().unwrap().clone());
            if parts_query.contains("latest_charge") {
                obj["latest_charge"] = serde_json::json!({ "object": "charge", "amount": amount,
                    "amount_refunded": refunded, "currency": cur });
            }
        }
        obj
    } else {
        serde_json::json!({ "object": "list", "data": [], "has_more": false, "url": path })
    };
    let text = match (&echo, size, refuse) {
        // Refused, echoing the Authorization it got in the message (as a careless upstream would).
        (_, _, Some(auth)) => serde_json::json!({"error": {"type": "invalid_request_error",
            "code": "test_refused", "message": format!("refused {auth}")}})
        .to_string(),
        // The secret in the middle, so that a stalled answer splits it across two chunks.
        (Some(auth), _, None) => format!("{pad}{auth}{pad}", pad = "x".repeat(64)),
        (None, Some(n), None) => "x".repeat(n),
        (None, None, None) if forced_status.is_some_and(|s| s >= 400) => serde_json::json!({"error": {
            "type": if forced_status >= Some(500) { "api_error" } else { "card_error" },
            "code": "test_status", "message": "answered as the test asked"}})
        .to_string(),
        (None, None, None) => json.to_string(),
    };
    let (text, coding) = match coding {
        Some(c) => (compressed(&c, text.as_bytes()), Some(c)),
        None => (Bytes::from(text), None),
    };
    let status = if refused { 400 } else { forced_status.unwrap_or(200) };
    let mut resp = Response::builder().status(status);
    if let Some(c) = coding {
        resp = resp.header("content-encoding", c);
    }
    let mut resp = resp
        .header("content-type", "application/json")
        .header("request-id", format!("req_upstream_{n}"))
        .header("x-upstream-says", "hello")
        .header("x-echo-auth", echo.as_deref().unwrap_or("-"))
        .body(stalling(text, stall_ms))
        .unwrap();
    // Over HTTP/1.1, the echo in the reason phrase too (`HTTP/1.1 200 OK Bearer sk_…`).
    if let Some(reason) = echo.and_then(|auth| hyper::ext::ReasonPhrase::try_from(format!("OK {auth}")).ok())
    {
        resp.extensions_mut().insert(reason);
    }
    Ok(resp)
}

/// `body` compressed with `coding` (`gzip`, `deflate`, `br`).
fn compressed(coding: &str, body: &[u8]) -> Bytes {
    use std::io::Write;
    let mut out = Vec::new();
    match coding {
        "gzip" => {
            let mut w = flate2::write::GzEncoder::new(&mut out, flate2::Compression::default());
            w.write_all(body).unwrap();
            w.finish().unwrap();
        }
        "deflate" => {
            let mut w = flate2::write::ZlibEncoder::new(&mut out, flate2::Compression::default());
            w.write_all(body).unwrap();
            w.finish().unwrap();
        }
        "br" => {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(body).unwrap();
            w.flush().unwrap();
            drop(w);
        }
        other => panic!("the test upstream does not compress with {other}"),
    }
    Bytes::from(out)
}

/// `text` as a body; with `stall_ms`, its first half now and the rest that much later.
fn stalling(text: Bytes, stall_ms: Option<u64>) -> UnsyncBoxBody<Bytes, Infallible> {
    let Some(ms) = stall_ms else {
        return Full::new(text).boxed_unsync();
    };
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(2);
    tokio::spawn(async move {
        let (head, tail) = (text.slice(..text.len() / 2), text.slice(text.len() / 2..));
        let _ = tx.send_data(head).await;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let _ = tx.send_data(tail).await;
    });
    body.boxed_unsync()
}

/// A `[[service]]` block for the test config.
#[derive(Clone)]
pub struct Svc {
    pub name: String,
    pub tokens: Vec<(String, String, String)>, // id, token, extra toml lines
    pub scope: Vec<(String, String)>,
    pub source_ips: Vec<String>,
    pub extra: String,
}

impl Svc {
    pub fn new(name: &str) -> Svc {
        Svc {
            name: name.into(),
            tokens: vec![],
            scope: vec![],
            source_ips: vec!["127.0.0.0/8".into(), "::1/128".into()],
            extra: String::new(),
        }
    }
    pub fn token(mut self, id: &str, token: &str) -> Svc {
        self.tokens.push((id.into(), token.into(), String::new()));
        self
    }
    pub fn token_with(mut self, id: &str, token: &str, extra: &str) -> Svc {
        self.tokens.push((id.into(), token.into(), extra.into()));
        self
    }
    pub fn scope(mut self, perm: &str, level: &str) -> Svc {
        self.scope.push((perm.into(), level.into()));
        self
    }
    pub fn source_ips(mut self, ips: &[&str]) -> Svc {
        self.source_ips = ips.iter().map(|s| s.to_string()).collect();
        self
    }
    pub fn extra(mut self, toml: &str) -> Svc {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// The `[[service]]` table.
    fn table(&self) -> toml::Table {
        let mut t = toml::Table::new();
        t.insert("name".into(), self.name.clone().into());
        t.insert("secret".into(), "stripe".into());
        t.insert("source_ips".into(), self.source_ips.clone().into());
        merge(&mut t, fragment(&self.extra));
        let tokens: Vec<toml::Value> = self
            .tokens
            .iter()
            .map(|(id, token, extra)| {
                let mut tok = toml::Table::new();
                tok.insert("id".into(), id.clone().into());
                tok.insert("sha256".into(), sha256_hex(token).into());
                merge(&mut tok, fragment(extra));
                tok.into()
            })
            .collect();
        t.insert("token".into(), tokens.into());
        let scope: toml::Table = self.scope.iter().map(|(p, l)| (p.clone(), l.clone().into())).collect();
        t.insert("scope".into(), scope.into());
        t
    }
}

/// A TOML fragment as a table (empty text: an empty table).
/// Forward mode in `table`: a `[forward]` port with a CA made in `dir` (`forward-ca.crt`), its
/// key as a file or (with `ca_key_secret = "NAME"` in `extra`) a file secret, and each
/// upstream of `dial` named `https://NAME.stripe.com`, reached through `connect_to`.
pub fn add_forward(table: &mut toml::Table, dir: &Path, extra: &str, dial: &[(String, SocketAddr)]) {
    let (cert, key) = (dir.join("forward-ca.crt"), dir.join("forward-ca.key"));
    keyward::control::tls::ensure_dev_forward_ca(&cert, &key).unwrap();
    let fwd = table_at(table, &["forward"]);
    fwd.insert("listen".into(), "127.0.0.1:0".into());
    fwd.insert("ca_cert".into(), cert.display().to_string().into());
    let extra = fragment(extra);
    if let Some(name) = extra.get("ca_key_secret").and_then(|v| v.as_str()).map(str::to_string) {
        // The key as a file secret holds it: base64 of its PEM, in a file of its own.
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(&key).unwrap());
        let file = dir.join("forward-ca-secret.toml");
        std::fs::write(&file, format!("{name} = {b64:?}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let secret = table_at(table, &["secret", &name]);
        secret.insert("source".into(), "file".into());
        secret.insert("path".into(), file.display().to_string().into());
        secret.insert("key".into(), name.clone().into());
    } else {
        fwd.insert("ca_key".into(), key.display().to_string().into());
    }
    let fwd = table_at(table, &["forward"]);
    merge(fwd, extra);
    for (name, addr) in dial {
        let up = table_at(table, &["upstream", name]);
        up.insert("url".into(), format!("https://{}.stripe.com", name.replace('_', "-")).into());
        up.insert("connect_to".into(), addr.to_string().into());
    }
}

pub fn fragment(text: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("a test's TOML fragment does not parse: {e}\n{text}"))
}

/// `from` laid over `into`: tables merge key by key, anything else replaces.
pub fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(old)), toml::Value::Table(new)) => merge(old, new),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// The `n`th `[[service]]` of a configuration table.
pub fn service_at(t: &mut toml::Table, n: usize) -> &mut toml::Table {
    t["service"].as_array_mut().expect("services")[n].as_table_mut().expect("a service")
}

/// The `n`th service's `[service.scope]`.
pub fn scope_at(t: &mut toml::Table, n: usize) -> &mut toml::Table {
    table_at(service_at(t, n), &["scope"])
}

/// The table at `path` in `t`, made if missing.
pub fn table_at<'a>(t: &'a mut toml::Table, path: &[&str]) -> &'a mut toml::Table {
    path.iter().fold(t, |t, k| {
        t.entry(k.to_string()).or_insert_with(|| toml::Table::new().into()).as_table_mut().expect("a table")
    })
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub struct Harness {
    /// Lines for `[audit]`; the harness adds `path` unless these set it.
    pub audit: String,
    pub extra_upstreams: Vec<String>,
    pub services: Vec<Svc>,
    pub extra_top: String,
    pub upstream_extra: String,
    /// ALPN protocols the upstreams offer.
    pub upstream_alpn: Vec<&'static [u8]>,
    /// keyward's `listen` address.
    pub listen: String,
    /// Forward mode: a `[forward]` port, and upstreams named `https://NAME.stripe.com`
    /// (`api.stripe.com` for `api`) reached through `connect_to`.
    pub forward: Option<String>,
    /// `KEYWARD_LOG` for a child (`start_child`).
    pub log: String,
}

impl Harness {
    pub fn new() -> Harness {
        Harness {
            audit: String::new(),
            extra_upstreams: vec![],
            services: vec![],
            extra_top: String::new(),
            upstream_extra: String::new(),
            upstream_alpn: vec![b"h2", b"http/1.1"],
            listen: "127.0.0.1:0".into(),
            forward: None,
            log: "info".into(),
        }
    }

    /// `KEYWARD_LOG` for a keyward started with `start_child`.
    pub fn log(mut self, filter: &str) -> Harness {
        self.log = filter.into();
        self
    }
    /// Forward mode, with these extra lines in `[forward]`.
    pub fn forward(mut self, toml: &str) -> Harness {
        self.forward = Some(toml.into());
        self
    }
    pub fn service(mut self, s: Svc) -> Harness {
        self.services.push(s);
        self
    }
    /// TOML placed before the upstream section (e.g. `[limits]`).
    pub fn top(mut self, toml: &str) -> Harness {
        self.extra_top.push_str(toml);
        self.extra_top.push('\n');
        self
    }
    /// Upstreams that speak only HTTP/1.1.
    pub fn http1_upstream(mut self) -> Harness {
        self.upstream_alpn = vec![b"http/1.1"];
        self
    }
    /// Another recording upstream, configured as `[upstream.NAME]`.
    pub fn also_upstream(mut self, name: &str) -> Harness {
        self.extra_upstreams.push(name.into());
        self
    }

    pub fn audit(mut self, toml: &str) -> Harness {
        self.audit.push_str(toml);
        self.audit.push('\n');
        self
    }

    /// Extra keys in `[upstream.api]`.
    pub fn upstream(mut self, toml: &str) -> Harness {
        self.upstream_extra.push_str(toml);
        self.upstream_extra.push('\n');
        self
    }

    /// The configuration for an upstream at `upstream_url`, as a table.
    pub fn table(&self, pki: &Pki, upstream_url: &str, dir: &Path) -> toml::Table {
        let secrets = dir.join("secrets.toml");
        std::fs::write(&secrets, format!("stripe = {SECRET:?}\n")).unwrap();
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
        let path = |p: &Path| p.display().to_string();
        let mut t: toml::Table = toml::toml! {
            [server]
            admin_listen = "127.0.0.1:0"
            [secret.stripe]
            source = "file"
            key = "stripe"
        };
        let server = table_at(&mut t, &["server"]);
        server.insert("listen".into(), self.listen.clone().into());
        server.insert("tls_cert".into(), path(&pki.cert).into());
        server.insert("tls_key".into(), path(&pki.key).into());
        table_at(&mut t, &["secret", "stripe"]).insert("path".into(), path(&secrets).into());
        let api = table_at(&mut t, &["upstream", "api"]);
        api.insert("url".into(), upstream_url.into());
        api.insert("ca".into(), path(&pki.ca).into());
        merge(api, fragment(&self.upstream_extra));
        let audit = table_at(&mut t, &["audit"]);
        audit.insert("path".into(), path(&dir.join("audit.jsonl")).into());
        // Tests count every refusal's record; the per-address cap has tests of its own.
        audit.insert("refusals_per_ip".into(), 1_000_000.into());
        audit.insert("refusals_per_second".into(), 1_000_000.into());
        merge(audit, fragment(&self.audit));
        merge(&mut t, fragment(&self.extra_top));
        let services: Vec<toml::Value> = self.services.iter().map(|s| s.table().into()).collect();
        t.insert("service".into(), services.into());
        t
    }

    /// The configuration text for an upstream at `upstream_url`.
    pub fn config(&self, pki: &Pki, upstream_url: &str, dir: &Path) -> String {
        toml::to_string(&self.table(pki, upstream_url, dir)).unwrap()
    }

    pub async fn start(self) -> Running {
        self.start_with(|dir, text| {
            let path = dir.join("keyward.toml");
            std::fs::write(&path, text).unwrap();
            path
        })
        .await
    }

    /// Start with the config file laid out by `place(dir, text)`, which returns its path.
    pub async fn start_with(self, place: impl FnOnce(&Path, &str) -> PathBuf) -> Running {
        let pki = Pki::new();
        let upstream = Upstream::start_alpn(&pki, &self.upstream_alpn).await;
        let dir = tempfile::tempdir().unwrap();
        let mut table = self.table(&pki, &upstream.url(), dir.path());
        let mut others = HashMap::new();
        for name in &self.extra_upstreams {
            let up = Upstream::start_alpn(&pki, &self.upstream_alpn).await;
            let other = table_at(&mut table, &["upstream", name]);
            other.insert("url".into(), up.url().into());
            other.insert("ca".into(), pki.ca.display().to_string().into());
            others.insert(name.clone(), up);
        }
        if let Some(extra) = &self.forward {
            let mut dial = vec![("api".to_string(), upstream.addr)];
            dial.extend(others.iter().map(|(n, u)| (n.clone(), u.addr)));
            add_forward(&mut table, dir.path(), extra, &dial);
        }
        let text = toml::to_string(&table).unwrap();
        let config_path = place(dir.path(), &text);
        // As `keyward run` reads it: what `place` wrote, comments and all.
        let text = std::fs::read_to_string(&config_path).unwrap_or(text);
        let src = keyward::control::config::Source { name: config_path.clone(), text };
        let app = keyward::app::start(&src).await.unwrap_or_else(|e| panic!("keyward did not start:\n{e}"));
        Running::new(app, upstream, others, pki, dir, config_path)
    }

    /// Start `keyward run` as a child process (its own file descriptors and threads, as in
    /// production), on ports chosen now; returns once its admin port says it is ready.
    pub async fn start_child(self) -> Running {
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (addr, admin, forward) = (free(), free(), self.forward.as_ref().map(|_| free()));
        let Harness { listen, log: level, .. } = &self;
        let level = level.clone();
        assert!(listen.ends_with(":0"), "start_child chooses the port");
        let mut placed = None;
        let kw = self
            .start_with(|dir, text| {
                let mut t: toml::Table = text.parse().unwrap();
                table_at(&mut t, &["server"]).insert("listen".into(), addr.to_string().into());
                table_at(&mut t, &["server"]).insert("admin_listen".into(), admin.to_string().into());
                if let Some(f) = forward {
                    table_at(&mut t, &["forward"]).insert("listen".into(), f.to_string().into());
                }
                let path = dir.join("keyward.toml");
                std::fs::write(&path, toml::to_string(&t).unwrap()).unwrap();
                placed = Some(path.clone());
                // The in-process keyward reads a copy on other ports, and is stopped at once.
                let copy = dir.join("in-process.toml");
                std::fs::write(&copy, text).unwrap();
                copy
            })
            .await;
        let Running { app, upstream, others, pki, client, dir, .. } = kw;
        app.unwrap().stop().await;
        let config_path = placed.unwrap();
        let log = std::fs::File::create(dir.path().join("keyward.stderr")).unwrap();
        // KEYWARD_BIN: measure another build (the release binary, for the figures in a note).
        let bin = std::env::var("KEYWARD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_keyward").into());
        let child = std::process::Command::new(bin)
            .args(["run", "--config", config_path.to_str().unwrap()])
            .env("KEYWARD_LOG", level)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let running = Running {
            app: None,
            addr,
            admin_addr: Some(admin),
            forward_addr: forward,
            upstream,
            others,
            pki,
            client,
            dir,
            config_path,
            child: Some(Child(child)),
        };
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(admin).await.is_ok()
                && running.admin_raw("GET", "/readyz", &[]).await.0 == 200
            {
                return running;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("keyward (child) did not become ready: {}", running.child_log());
    }
}

/// A child process, killed when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Running {
    pub app: Option<keyward::app::Running>,
    /// The proxy's and the admin port's addresses (known after `app` is taken to stop it).
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    forward_addr: Option<SocketAddr>,
    pub upstream: Upstream,
    /// The upstreams added with `also_upstream`, by name.
    pub others: HashMap<String, Upstream>,
    pub pki: Pki,
    pub client: Arc<rustls::ClientConfig>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    /// keyward as a child process (`Harness::start_child`).
    pub child: Option<Child>,
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or("").to_string()
    }
}

impl Running {
    pub fn new(
        app: keyward::app::Running,
        upstream: Upstream,
        others: HashMap<String, Upstream>,
        pki: Pki,
        dir: tempfile::TempDir,
        config_path: PathBuf,
    ) -> Running {
        let (addr, admin_addr, forward_addr) = (app.addr, app.admin_addr, app.forward_addr);
        let client = pki.client_config();
        Running {
            app: Some(app),
            addr,
            admin_addr,
            forward_addr,
            upstream,
            others,
            pki,
            client,
            dir,
            config_path,
            child: None,
        }
    }

    /// What the child process wrote to stderr so far.
    pub fn child_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("keyward.stderr")).unwrap_or_default()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin_addr.expect("an admin port")
    }

    pub fn forward_addr_opt(&self) -> Option<SocketAddr> {
        self.forward_addr
    }

    /// Forward mode's proxy port.
    pub fn forward_addr(&self) -> SocketAddr {
        self.forward_addr.expect("a forward port")
    }

    /// Forward mode's CA certificate, which clients trust.
    pub fn forward_ca(&self) -> PathBuf {
        self.dir.path().join("forward-ca.crt")
    }

    /// The version of the snapshot serving now.
    pub fn version(&self) -> String {
        self.app.as_ref().unwrap().proxy.state.snapshot.load().version.to_string()
    }

    /// Wait (bounded) until the serving version is `want`.
    pub async fn wait_version(&self, want: &str) -> bool {
        for _ in 0..150 {
            if self.version() == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// A keep-alive HTTP/1.1 connection from 127.0.0.1.
    pub async fn connect(&self) -> Conn {
        let tls = self.tls_from("127.0.0.1".parse().unwrap(), b"http/1.1").await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
        tokio::spawn(conn);
        Conn { sender }
    }

    /// A TLS connection from `from`, offering one ALPN protocol (`h2` or `http/1.1`).
    pub async fn tls_from(&self, from: IpAddr, alpn: &[u8]) -> std::io::Result<TlsClientStream> {
        tls_connect(self.addr(), self.client.clone(), from, alpn).await
    }

    /// One metric's value from the admin port (the first sample of that name).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.admin_raw("GET", "/metrics", &[]).await;
        let text = String::from_utf8_lossy(&body).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// `POST /-/reload` on the admin port: (status, body).
    pub async fn admin_reload(&self) -> (u16, serde_json::Value) {
        self.admin_call("POST", "/-/reload").await
    }

    /// A call to the admin port answered in JSON: (status, body).
    pub async fn admin_call(&self, method: &str, path: &str) -> (u16, serde_json::Value) {
        let (status, body) = self.admin_raw(method, path, &[]).await;
        (status, serde_json::from_slice(&body).unwrap())
    }

    /// A call to the admin port with extra headers: (status, body).
    pub async fn admin_raw(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Bytes) {
        let tcp = tokio::net::TcpStream::connect(self.admin()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let mut r = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            r = r.header("host", self.admin().to_string());
        }
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let r = r.body(Full::new(Bytes::new())).unwrap();
        let resp = sender.send_request(r).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).unwrap()
    }

    /// The configuration file as a table.
    pub fn config_table(&self) -> toml::Table {
        toml::from_str(&self.config_text()).unwrap()
    }

    /// The configuration with `edit` applied, as text (not written).
    pub fn edited_config(&self, edit: impl FnOnce(&mut toml::Table)) -> String {
        let mut t = self.config_table();
        edit(&mut t);
        toml::to_string(&t).unwrap()
    }

    /// Send one request over a fresh TLS connection from `from`.
    pub async fn send_from(&self, from: IpAddr, req: Request<Full<Bytes>>) -> Reply {
        send(self.addr(), self.client.clone(), from, req).await
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Reply {
        self.send_from("127.0.0.1".parse().unwrap(), req).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(req("GET", path, token, "")).await
    }

    pub async fn post(&self, path: &str, token: &str, body: &str) -> Reply {
        self.send(req("POST", path, token, body)).await
    }

    /// Raw bytes over TLS (for targets no client library would send); returns the whole answer.
    pub async fn raw(&self, bytes: &[u8]) -> String {
        let tcp = tokio::net::TcpStream::connect(self.addr()).await.unwrap();
        let mut tls = TlsConnector::from(self.client.clone())
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        tls.write_all(bytes).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The access records (calls', folded refusals', rotations'; not keyward's own, see
    /// [`Running::all_records`]), waiting (bounded) until at least `n` are written.
    pub async fn records(&self, n: usize) -> Vec<serde_json::Value> {
        self.records_where(n, |r| !is_own_record(r)).await
    }

    /// Every record in the log, keyward's own (lifecycle, admin, config) too, waiting (bounded)
    /// until at least `n` are written.
    pub async fn all_records(&self, n: usize) -> Vec<serde_json::Value> {
        self.records_where(n, |_| true).await
    }

    async fn records_where(
        &self,
        n: usize,
        keep: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let path = self.dir.path().join("audit.jsonl");
        for _ in 0..200 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            // Only whole lines: the writer may be half-way through the last one.
            let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            let recs: Vec<serde_json::Value> =
                whole.lines().map(|l| serde_json::from_str(l).unwrap()).filter(|r| keep(r)).collect();
            if recs.len() >= n {
                return recs;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fewer than {n} access records in {}", path.display());
    }

    pub async fn last_record(&self, n: usize) -> serde_json::Value {
        self.records(n).await.pop().unwrap()
    }

    /// Stop keyward; the returned dir (config, access log) lives on until dropped.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
        self.dir
    }
}

pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        self.sender.ready().await.map_err(|e| e.to_string())?;
        let resp = self.sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply { status: parts.status.as_u16(), headers: parts.headers, body })
    }
}

/// A record of keyward's own (`lifecycle`, `admin`, `config`, `checkpoint`), not of a call.
pub fn is_own_record(r: &serde_json::Value) -> bool {
    matches!(r["kind"].as_str(), Some("lifecycle" | "admin" | "config" | "checkpoint"))
}

/// The lines of an access log that are not keyward's own records (see [`is_own_record`]).
pub fn call_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !serde_json::from_str(l).is_ok_and(|r| is_own_record(&r))).collect()
}

/// The version a configuration text compiles to.
pub async fn version_of(text: &str) -> String {
    let src = keyward::control::config::Source { name: "v.toml".into(), text: text.to_string() };
    keyward::control::config::compile(&src, keyward::control::config::Options::POLICY_ONLY)
        .await
        .unwrap()
        .version
        .to_string()
}

/// `keyward run` as a child process, logging JSON at trace level.
pub struct KeywardProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// The admin port, if configured.
    pub admin: Option<SocketAddr>,
    /// The forward port, if configured.
    pub forward: Option<SocketAddr>,
    /// Everything the child wrote to stderr, once it has exited.
    pub logs: std::thread::JoinHandle<String>,
}

pub fn spawn_keyward(config: &Path, env: &[(&str, &str)]) -> KeywardProcess {
    spawn_keyward_in(config, Path::new("."), env)
}

/// `spawn_keyward` in the directory `cwd` (relative paths in the config are read there).
pub fn spawn_keyward_in(config: &Path, cwd: &Path, env: &[(&str, &str)]) -> KeywardProcess {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .args(["run", "--log-format", "json", "--config", config.to_str().unwrap()])
        .current_dir(cwd)
        .env("KEYWARD_LOG", "trace")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    type Addrs = (SocketAddr, Option<SocketAddr>, Option<SocketAddr>);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Addrs>();
    let logs = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("keyward listening") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let addr = v["fields"]["addr"].as_str().unwrap().parse().unwrap();
                let admin = v["fields"]["admin"].as_str().map(|a| a.parse().unwrap());
                let forward = v["fields"]["forward"].as_str().map(|a| a.parse().unwrap());
                let _ = addr_tx.send((addr, admin, forward));
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let (addr, admin, forward) = addr_rx.recv_timeout(Duration::from_secs(20)).expect("keyward started");
    KeywardProcess { child, addr, admin, forward, logs }
}

pub fn req(method: &str, path: &str, token: &str, body: &str) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path).header("host", "keyward.internal");
    if !token.is_empty() {
        b = b.header("authorization", format!("Bearer {token}"));
    }
    if !body.is_empty() {
        b = b.header("content-type", "application/x-www-form-urlencoded");
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// Whether `check` comes true within 10 s (polled every 20 ms).
pub async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A plain HTTP call to an admin port: (status, body).
pub async fn admin_request(admin: SocketAddr, method: &str, path: &str) -> (u16, Bytes) {
    let tcp = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let r = Request::builder().method(method).uri(path).header("host", admin.to_string());
    let resp = sender.send_request(r.body(Full::new(Bytes::new())).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

pub type TlsClientStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to `addr` from `from`, offering one ALPN protocol.
/// A TCP socket bound to source address `from`, its port left to `connect`
/// (`IP_BIND_ADDRESS_NO_PORT`): binding with port 0 would take a port from the half of the range
/// listeners bind to, and thousands of such clients (the flood tests) leave none for the next
/// test's listener.
pub fn socket_from(from: IpAddr) -> std::io::Result<TcpSocket> {
    use std::os::fd::AsRawFd;
    let sock = if from.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }?;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket, and a pointer to an int of the size given.
    let set = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    // IPv6 sockets may not take it; they are few in the tests.
    if set != 0 && from.is_ipv4() {
        return Err(std::io::Error::last_os_error());
    }
    sock.bind(SocketAddr::new(from, 0))?;
    Ok(sock)
}

pub async fn tls_connect(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    from: IpAddr,
    alpn: &[u8],
) -> std::io::Result<TlsClientStream> {
    let tcp = socket_from(from)?.connect(addr).await?;
    let mut cfg = (*tls).clone();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(cfg)).connect(ServerName::try_from("localhost").unwrap(), tcp).await
}

pub async fn send(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    from: IpAddr,
    req: Request<Full<Bytes>>,
) -> Reply {
    try_send(addr, tls, from, req).await.unwrap()
}

/// `send`, with a connection or protocol error as `Err` (a client that retries elsewhere).
pub async fn try_send(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    from: IpAddr,
    req: Request<Full<Bytes>>,
) -> Result<Reply, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let tcp = socket_from(from).map_err(|x| e(&x))?.connect(addr).await.map_err(|x| e(&x))?;
    let name = ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(tls).connect(name, tcp).await.map_err(|x| e(&x))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|x| e(&x))?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|x| e(&x))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|x| e(&x))?.to_bytes();
    Ok(Reply { status: parts.status.as_u16(), headers: parts.headers, body })
}

/// Run an SDK script from tests/sdk/ with `KW_TOKEN` and `env`: its output, a JSON value a line.
pub async fn run_sdk(
    program: &str,
    script: &str,
    token: &str,
    env: &[(&str, &std::ffi::OsStr)],
) -> Vec<serde_json::Value> {
    let out = tokio::process::Command::new(program)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk/").to_string() + script)
        .envs(env.iter().copied())
        .env("KW_TOKEN", token)
        .output()
        .await
        .expect("the SDK's runtime runs (the test command installs the SDKs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}
