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

use crate::control::metrics::{self, AuditCounts};
use crate::control::reload::Reloader;
use crate::control::snapshot::Snapshot;
use crate::control::state::State;

pub async fn serve(listener: TcpListener, reloader: Arc<Reloader>) {
    if listener.local_addr().is_ok_and(|a| !a.ip().is_loopback()) {
        tracing::warn!(addr = ?listener.local_addr().ok(), "the admin port has no authentication and is not on loopback");
    }
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let reloader = reloader.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| route(reloader.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
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
        (&Method::POST, "/-/reload") => {
            let outcome = reloader.reload("admin endpoint").await;
            let status = if outcome.ok { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
            json(status, serde_json::to_value(&outcome).unwrap_or_default())
        }
        (_, "/healthz" | "/readyz" | "/metrics" | "/-/reload") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n".into())
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    };
    Ok(reply)
}

fn metrics(state: &State, snap: &Snapshot) -> Response<Full<Bytes>> {
    let sink = &state.audit;
    let counts = AuditCounts {
        queue_depth: sink.depth() as u64,
        written: sink.state.written.load(Ordering::Relaxed),
        write_errors: sink.state.write_errors.load(Ordering::Relaxed),
        refused: sink.state.refused.load(Ordering::Relaxed),
        unrecorded: sink.state.unrecorded.load(Ordering::Relaxed),
        healthy: sink.state.healthy.load(Ordering::Relaxed),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let body = state.metrics.render(&metrics::scrape(snap, &counts, now));
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(metrics::CONTENT_TYPE));
    r
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    r
}
