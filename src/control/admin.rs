//! The admin listener (plain HTTP, loopback by default): health, readiness, metrics, reload.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::event::{Admin, Event};
use crate::control::config::admin::AdminToken;
use crate::control::metrics::{self, AuditCounts};
use crate::control::reload::Reloader;
use crate::control::snapshot::Snapshot;
use crate::control::state::State;
use crate::control::suspensions::SuspensionsError;
use crate::policy::identity::{hash_token, token_from};

/// Serve the admin port until `stop`; each connection runs in `tasks` and ends with it.
pub async fn serve(
    listener: TcpListener,
    reloader: Arc<Reloader>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let no_tokens = reloader.state().snapshot.load().admin.tokens.is_empty();
    if no_tokens && listener.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
        tracing::warn!(
            addr = ?listener.local_addr().ok(),
            "the admin port is not on loopback and no [[admin.token]] is configured: only loopback peers may reload or suspend"
        );
    }
    let open = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Past the bound a connection is closed at once: scrapers and admins need few, and a
        // flood to the admin port must not hold descriptors or TLS handshakes without one.
        let Ok(place) = open.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "admin connection closed: {MAX_CONNECTIONS} open");
            continue;
        };
        let (reloader, stop) = (reloader.clone(), stop.clone());
        let tls = {
            let snap = reloader.state().snapshot.load();
            snap.admin.tls.then(|| snap.tls.clone()).flatten()
        };
        tasks.spawn(async move {
            let _place = place;
            let peer = Peer { ip: peer.ip().to_canonical(), tls: tls.is_some() };
            let served = async {
                match tls {
                    Some(config) => {
                        let mut config = (*config).clone();
                        config.alpn_protocols = vec![b"http/1.1".to_vec()];
                        let accept = tokio_rustls::TlsAcceptor::from(Arc::new(config)).accept(tcp);
                        match tokio::time::timeout(std::time::Duration::from_secs(10), accept).await {
                            Ok(Ok(stream)) => serve_http(stream, reloader, peer).await,
                            _ => tracing::debug!(ip = %peer.ip, "admin TLS handshake failed"),
                        }
                    }
                    None => serve_http(tcp, reloader, peer).await,
                }
            };
            tokio::select! {
                _ = served => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Who is calling the admin port: from where, and whether over TLS.
#[derive(Debug, Clone, Copy)]
struct Peer {
    ip: IpAddr,
    tls: bool,
}

async fn serve_http<IO>(io: IO, reloader: Arc<Reloader>, peer: Peer)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| route(reloader.clone(), req, peer));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(TokioIo::new(io), svc);
    let _ = conn.await;
}

/// May this call change keyward (reload, suspend, resume)? With `[[admin.token]]`s configured,
/// only with one of them, valid now, sent over TLS or from loopback (over plain TCP from
/// another host it crossed the network in the clear); without any, only from loopback. The
/// admin token's id, or `None` for a loopback peer where none is configured; `Err` is the
/// 401's message.
fn may_mutate(
    tokens: &[AdminToken],
    headers: &http::HeaderMap,
    peer: Peer,
    now: i64,
) -> Result<Option<Arc<str>>, &'static str> {
    if headers.get_all(http::header::AUTHORIZATION).iter().nth(1).is_some() {
        return Err("send one Authorization header");
    }
    if tokens.is_empty() {
        return match peer.ip.is_loopback() {
            true => Ok(None),
            false => Err("changes come only from loopback until an [[admin.token]] is configured"),
        };
    }
    let token = token_from(headers, http::header::AUTHORIZATION)
        .ok_or("an admin token is required: Authorization: Bearer <token> ([[admin.token]])")?;
    if !peer.tls && !peer.ip.is_loopback() {
        return Err(
            "an admin token came over plain TCP from another host: serve the admin port over TLS (server.admin_tls = true)",
        );
    }
    let hash = hash_token(&token);
    let found = tokens.iter().find(|t| t.hash == hash).ok_or("the admin token is not known")?;
    if found.expires.is_some_and(|e| now >= e) {
        return Err("the admin token has expired");
    }
    Ok(Some(found.id.clone()))
}

async fn route(
    reloader: Arc<Reloader>,
    req: Request<Incoming>,
    peer: Peer,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Browsers send `Origin` on cross-site requests: a web page must not reload keyward
    // or read its metrics through a browser on the same host. Tools send none.
    if req.headers().contains_key(http::header::ORIGIN) {
        return Ok(text(StatusCode::FORBIDDEN, "requests from web pages are refused\n".into()));
    }
    let state = reloader.state();
    let snap = state.snapshot.load();
    // A DNS name that a page's attacker points at 127.0.0.1 (DNS rebinding) comes with that
    // name as `Host`: answer only IP addresses, `localhost`, and the names configured.
    let host = req.headers().get(http::header::HOST).and_then(|h| h.to_str().ok());
    if !host.is_some_and(|h| host_allowed(h, &snap.admin_hosts)) {
        return Ok(text(StatusCode::FORBIDDEN, "unknown Host: add it to server.admin_hosts\n".into()));
    }
    // Who asks for a change, as the access log's admin records name them.
    let mut actor = String::new();
    if req.method() == Method::POST {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        match may_mutate(&snap.admin.tokens, req.headers(), peer, now) {
            Ok(admin) => {
                tracing::info!(admin = admin.as_deref(), ip = %peer.ip, path = req.uri().path(), "admin call");
                actor = match admin {
                    Some(id) => format!("admin:{id}"),
                    None => format!("peer:{}", peer.ip),
                };
            }
            Err(why) => {
                tracing::warn!(ip = %peer.ip, path = req.uri().path(), why, "admin call refused");
                let mut r = json(StatusCode::UNAUTHORIZED, serde_json::json!({ "error": why }));
                r.headers_mut()
                    .insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
                return Ok(r);
            }
        }
    }
    let reply = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        // Ready once config and secrets loaded (a reload never unsets that), unless every
        // request would be refused because the access log cannot be written.
        (&Method::GET, "/readyz") if state.draining.load(Ordering::Relaxed) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "ready": false, "version": snap.version, "reason": "shutting down" }),
        ),
        (&Method::GET, "/readyz") if !state.audit.admits() => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "ready": false, "version": snap.version, "reason": "access log unavailable" }),
        ),
        (&Method::GET, "/readyz") => match snap.secrets.iter().find(|s| s.serving().is_none()) {
            // Stale past `max_staleness` with `on_stale = "refuse"`: every call using it fails.
            Some(s) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "ready": false, "version": snap.version,
                    "reason": format!("secret {} is stale and refused", s.name) }),
            ),
            None => json(StatusCode::OK, serde_json::json!({ "ready": true, "version": snap.version })),
        },
        (&Method::GET, "/metrics") => metrics(state, &snap),
        (&Method::GET, "/-/status") => json(StatusCode::OK, status(state, &snap).await),
        (&Method::GET, "/-/audit/head") => json(StatusCode::OK, audit_head(state)),
        (&Method::POST, path) if token_path(path, "suspend").is_some() => {
            suspend(state, token_path(path, "suspend").unwrap_or_default(), &actor, peer.ip).await
        }
        (&Method::POST, path) if token_path(path, "resume").is_some() => {
            resume(state, token_path(path, "resume").unwrap_or_default(), &actor, peer.ip).await
        }
        (&Method::POST, "/-/reload") => {
            let outcome = reloader.reload(&actor).await;
            let status = if outcome.ok { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
            json(status, serde_json::to_value(&outcome).unwrap_or_default())
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/-/reload" | "/-/status" | "/-/audit/head") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into())
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    Ok(reply)
}

/// `127.0.0.1:9090`, `[::1]`, `localhost:9090`, or a configured name (any case), port or not.
fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => return v6.split(']').next().is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok()),
        None => host
            .rsplit_once(':')
            .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host }),
    };
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// `/-/tokens/{id}/{action}` → the id.
fn token_path<'p>(path: &'p str, action: &str) -> Option<&'p str> {
    let id = path.strip_prefix("/-/tokens/")?.strip_suffix(action)?.strip_suffix('/')?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// Admin connections open at once.
const MAX_CONNECTIONS: usize = 64;

const UNTIL: &str = "resumed (POST /-/tokens/ID/resume, keyward token resume ID), or the token is removed from the configuration";

/// The emergency stop for a leaked token: refused (401 `api_key_revoked`, recorded as
/// `api_key_suspended`) until resumed or removed from the configuration, across reloads and
/// restarts.
async fn suspend(state: &State, id: &str, actor: &str, from: IpAddr) -> Response<Full<Bytes>> {
    let (found, saved) = state.suspend(id, "admin");
    record(state, "suspend", actor, from, id, &found, "no token has this id").await;
    if found.is_empty() {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "suspended": [], "error": "no token has this id" }),
        );
    }
    for (service, token_id) in &found {
        tracing::warn!(service = &**service, token_id = &**token_id, "token suspended by the admin endpoint");
    }
    json(
        StatusCode::OK,
        serde_json::json!({ "suspended": pairs(&found), "until": UNTIL, "saved": saved_json(saved) }),
    )
}

async fn resume(state: &State, id: &str, actor: &str, from: IpAddr) -> Response<Full<Bytes>> {
    let (found, saved) = state.resume(id);
    record(state, "resume", actor, from, id, &found, "no suspended token has this id").await;
    if found.is_empty() {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "resumed": [], "error": "no suspended token has this id" }),
        );
    }
    for (service, token_id) in &found {
        tracing::warn!(service = &**service, token_id = &**token_id, "token resumed by the admin endpoint");
    }
    json(StatusCode::OK, serde_json::json!({ "resumed": pairs(&found), "saved": saved_json(saved) }))
}

/// A suspension's or resumption's admin records: one per (service, token) it changed, or one
/// refused with `why` when it changed none.
async fn record(
    state: &State,
    action: &str,
    actor: &str,
    from: IpAddr,
    id: &str,
    found: &[(Arc<str>, Arc<str>)],
    why: &str,
) {
    let event = |service: Option<&Arc<str>>, token_id: Arc<str>| {
        let mut e = Admin::new(action, actor, service.is_some());
        (e.service, e.token_id, e.client_ip) = (service.cloned(), Some(token_id), Some(from));
        e.reason = service.is_none().then(|| why.to_string());
        Event::Admin(e)
    };
    if found.is_empty() {
        // The id is what the caller sent: kept short, as the log keeps what callers choose.
        let id = crate::audit::capped(id, crate::audit::MAX_ACCOUNT);
        state.audit.event(event(None, id.into())).await;
    }
    for (service, token_id) in found {
        state.audit.event(event(Some(service), token_id.clone())).await;
    }
}

fn pairs(found: &[(Arc<str>, Arc<str>)]) -> Vec<serde_json::Value> {
    found.iter().map(|(s, t)| serde_json::json!({ "service": s, "token_id": t })).collect()
}

/// `true`, or why the state file does not hold the change (it is in force all the same).
fn saved_json(saved: Result<(), SuspensionsError>) -> serde_json::Value {
    match saved {
        Ok(()) => serde_json::Value::Bool(true),
        Err(e) => serde_json::json!({ "error": e.to_string(), "in_force": "until this process ends" }),
    }
}

/// This instance's access-log chain head as written: a scheduled job records it elsewhere.
fn audit_head(state: &State) -> serde_json::Value {
    let head = state.audit.state.head.lock().expect("not poisoned").clone();
    serde_json::json!({
        "instance": crate::control::instance::instance(),
        "seq": head.as_ref().map(|h| h.0),
        "head": head.map(|h| h.1),
    })
}

/// What `keyward status` prints: version, secrets' ages, tokens near expiry, the log's head,
/// each spend cap's spend and what is left.
async fn status(state: &State, snap: &Snapshot) -> serde_json::Value {
    const SOON: i64 = 7 * 24 * 3600;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let secrets: Vec<_> = snap
        .secrets
        .iter()
        .map(|c| serde_json::json!({ "name": c.name, "age_seconds": c.age().as_secs(), "stale": c.is_stale() }))
        .collect();
    let expiring: Vec<_> = snap
        .policy
        .services
        .iter()
        .flat_map(|s| s.tokens.iter().map(move |t| (s, t)))
        .filter_map(|(s, t)| {
            let left = t.expires? - now;
            (left < SOON).then(
                || serde_json::json!({ "service": s.name, "token_id": t.id, "expires_in_seconds": left }),
            )
        })
        .collect();
    let store = snap
        .ratelimits
        .store
        .as_ref()
        .map(|s| serde_json::json!({ "up": s.is_up(), "replicas": s.replicas() }));
    serde_json::json!({
        "instance": crate::control::instance::instance(),
        "version": snap.version,
        "draining": state.draining.load(Ordering::Relaxed),
        "audit": { "healthy": state.audit.admits(), "head": audit_head(state) },
        "secrets": secrets,
        "tokens_expiring_within_7_days": expiring,
        "suspended": state.suspensions.list().into_iter().map(|(hash, e)| serde_json::json!({
            "sha256_prefix": hash, "service": e.service, "token_id": e.token_id, "since": e.since, "by": e.by,
        })).collect::<Vec<_>>(),
        "ratelimit_store": store,
        "spend": crate::control::spend::status(&snap.policy, &snap.spend, snap.ratelimits.store.as_deref()).await,
    })
}

fn metrics(state: &State, snap: &Snapshot) -> Response<Full<Bytes>> {
    let sink = &state.audit;
    let counts = AuditCounts {
        queue_depth: sink.depth() as u64,
        written: sink.state.written.load(Ordering::Relaxed),
        write_errors: sink.state.write_errors.load(Ordering::Relaxed),
        refused: sink.state.refused.load(Ordering::Relaxed),
        unrecorded: sink.state.unrecorded.load(Ordering::Relaxed),
        folded: sink.state.folded.load(Ordering::Relaxed),
        checkpoint_publish_errors: sink.state.publish_errors.load(Ordering::Relaxed),
        healthy: sink.state.healthy.load(Ordering::Relaxed),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = state.metrics.render(&metrics::scrape(snap, &counts, state.suspended_now(), now));
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(metrics::CONTENT_TYPE));
    r
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_need_an_admin_token_once_one_is_configured_and_tls_from_other_hosts() {
        let token = "kw_admin_canary_token_0123456789abcdef";
        let tokens = vec![
            AdminToken { id: "ops".into(), hash: hash_token(token), expires: None },
            AdminToken {
                id: "old".into(),
                hash: hash_token("kw_admin_expired_token_0123456789ab"),
                expires: Some(100),
            },
        ];
        let bearer = |t: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
            h
        };
        let (lo, remote) = (
            Peer { ip: "127.0.0.1".parse().unwrap(), tls: false },
            Peer { ip: "10.1.2.3".parse().unwrap(), tls: false },
        );
        let remote_tls = Peer { tls: true, ..remote };
        let none = http::HeaderMap::new();
        // No admin token configured: loopback only.
        assert_eq!(may_mutate(&[], &none, lo, 0), Ok(None));
        assert!(may_mutate(&[], &none, remote, 0).is_err());
        // Configured: a valid token, over TLS or from loopback.
        assert!(may_mutate(&tokens, &none, lo, 0).unwrap_err().contains("required"));
        assert_eq!(may_mutate(&tokens, &bearer(token), lo, 0), Ok(Some("ops".into())));
        assert_eq!(may_mutate(&tokens, &bearer(token), remote_tls, 0), Ok(Some("ops".into())));
        assert!(may_mutate(&tokens, &bearer(token), remote, 0).unwrap_err().contains("admin_tls"));
        assert!(
            may_mutate(&tokens, &bearer("kw_wrong_token_0123456789abcdefghij"), lo, 0)
                .unwrap_err()
                .contains("not known")
        );
        assert!(
            may_mutate(&tokens, &bearer("kw_admin_expired_token_0123456789ab"), lo, 200)
                .unwrap_err()
                .contains("expired")
        );
        let mut two = bearer(token);
        two.append(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        assert!(may_mutate(&tokens, &two, lo, 0).is_err());
        // No message repeats the token.
        for h in [bearer(token), bearer("kw_wrong_token_0123456789abcdefghij")] {
            if let Err(e) = may_mutate(&tokens, &h, remote, 0) {
                assert!(!e.contains("kw_"), "{e}");
            }
        }
    }

    #[test]
    fn token_paths_name_one_id() {
        assert_eq!(token_path("/-/tokens/leaked/suspend", "suspend"), Some("leaked"));
        assert_eq!(token_path("/-/tokens/leaked/resume", "resume"), Some("leaked"));
        for bad in
            ["/-/tokens//resume", "/-/tokens/a/b/resume", "/-/tokens/leakedresume", "/-/tokens/x/suspend"]
        {
            assert_eq!(token_path(bad, "resume"), None, "{bad}");
        }
    }

    #[test]
    fn only_addresses_localhost_and_configured_names_are_answered() {
        let names = vec!["keyward-admin.ops.svc".to_string()];
        for ok in [
            "127.0.0.1:9090",
            "10.1.2.3",
            "[::1]:9090",
            "[fe80::1]",
            "localhost:9090",
            "LOCALHOST",
            "keyward-admin.ops.svc:9090",
        ] {
            assert!(super::host_allowed(ok, &names), "{ok}");
        }
        for bad in ["evil.example:9090", "127.0.0.1.evil.example", "[not-an-ip]", "localhost.evil", ""] {
            assert!(!super::host_allowed(bad, &names), "{bad}");
        }
    }
}
