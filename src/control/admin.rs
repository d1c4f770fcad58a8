//! The admin listener (plain HTTP, loopback by default): health, readiness, metrics, reload.

use std::convert::Infallible;
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

use crate::control::metrics::{self, AuditCounts};
use crate::control::reload::Reloader;
use crate::control::snapshot::Snapshot;
use crate::control::state::State;

/// Serve the admin port until `stop`; each connection runs in `tasks` and ends with it.
pub async fn serve(
    listener: TcpListener,
    reloader: Arc<Reloader>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    if listener.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
        tracing::warn!(addr = ?listener.local_addr().ok(), "the admin port has no authentication and is not on loopback");
    }
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let (tcp, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (reloader, stop) = (reloader.clone(), stop.clone());
        tasks.spawn(async move {
            let svc = service_fn(move |req| route(reloader.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

async fn route(reloader: Arc<Reloader>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
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
        (&Method::GET, "/-/status") => json(StatusCode::OK, status(state, &snap)),
        (&Method::GET, "/-/audit/head") => json(StatusCode::OK, audit_head(state)),
        (&Method::POST, path) if suspend_path(path).is_some() => {
            suspend(state, suspend_path(path).unwrap_or_default())
        }
        (&Method::POST, "/-/reload") => {
            let outcome = reloader.reload("admin endpoint").await;
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

/// `/-/tokens/{id}/suspend` → the id.
fn suspend_path(path: &str) -> Option<&str> {
    let id = path.strip_prefix("/-/tokens/")?.strip_suffix("/suspend")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The emergency stop for a leaked token: refused (401 `api_key_revoked`, recorded as
/// `api_key_suspended`) until the next configuration change, which should revoke it for good.
fn suspend(state: &State, id: &str) -> Response<Full<Bytes>> {
    let found = state.suspend(id);
    if found.is_empty() {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "suspended": [], "error": "no token has this id" }),
        );
    }
    let list: Vec<_> =
        found.iter().map(|(s, t)| serde_json::json!({ "service": s, "token_id": t })).collect();
    for (service, token_id) in &found {
        tracing::warn!(service = &**service, token_id = &**token_id, "token suspended by the admin endpoint");
    }
    json(StatusCode::OK, serde_json::json!({ "suspended": list, "until": "the next configuration change" }))
}

/// This instance's access-log chain head as written: a scheduled job records it elsewhere.
fn audit_head(state: &State) -> serde_json::Value {
    let head = state.audit.state.head.lock().expect("not poisoned").clone();
    serde_json::json!({
        "instance": crate::control::state::instance(),
        "seq": head.as_ref().map(|h| h.0),
        "head": head.map(|h| h.1),
    })
}

/// What `keyward status` prints: version, secrets' ages, tokens near expiry, the log's head.
fn status(state: &State, snap: &Snapshot) -> serde_json::Value {
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
        "instance": crate::control::state::instance(),
        "version": snap.version,
        "draining": state.draining.load(Ordering::Relaxed),
        "audit": { "healthy": state.audit.admits(), "head": audit_head(state) },
        "secrets": secrets,
        "tokens_expiring_within_7_days": expiring,
        "ratelimit_store": store,
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
