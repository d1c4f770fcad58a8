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

use std::fmt::Write;

use crate::control::metrics::label;
use crate::control::reload::Reloader;
use crate::control::snapshot::Snapshot;

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
    let snap = reloader.proxy().snapshot.load();
    let reply = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        // Ready once config and secrets loaded (a reload never unsets that), unless every
        // request would be refused because the access log cannot be written.
        (&Method::GET, "/readyz") if !reloader.proxy().audit.admits() => json(
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
        (&Method::GET, "/metrics") => text(StatusCode::OK, metrics(&reloader, &snap)),
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

fn metrics(reloader: &Reloader, snap: &Snapshot) -> String {
    let proxy = reloader.proxy();
    let mut out = String::with_capacity(4096);
    proxy.metrics.render(&mut out);
    let ok = reloader.succeeded.load(Ordering::Relaxed);
    let failed = reloader.failed.load(Ordering::Relaxed);
    let version = &snap.version;
    let _ = write!(
        out,
        "# HELP keyward_reloads_total Configuration reloads by result.\n\
         # TYPE keyward_reloads_total counter\n\
         keyward_reloads_total{{result=\"ok\"}} {ok}\n\
         keyward_reloads_total{{result=\"error\"}} {failed}\n\
         # HELP keyward_config_info The configuration version serving.\n\
         # TYPE keyward_config_info gauge\n\
         keyward_config_info{{version=\"{version}\"}} 1\n"
    );
    let audit = &proxy.audit.state;
    let gauge = |out: &mut String, name: &str, kind: &str, help: &str, v: u64| {
        let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n");
    };
    gauge(
        &mut out,
        "keyward_audit_queue_depth",
        "gauge",
        "Access records waiting for the writer.",
        proxy.audit.depth() as u64,
    );
    gauge(
        &mut out,
        "keyward_audit_records_written_total",
        "counter",
        "Access records written.",
        audit.written.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "keyward_audit_write_errors_total",
        "counter",
        "Failed writes of the access log.",
        audit.write_errors.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "keyward_audit_refused_total",
        "counter",
        "Requests refused because the access log could not be written.",
        audit.refused.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "keyward_audit_unrecorded_total",
        "counter",
        "Refusals whose record found the refusals' share of the access-log queue full.",
        audit.unrecorded.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "keyward_audit_healthy",
        "gauge",
        "1 while the access log is writable.",
        audit.healthy.load(Ordering::Relaxed) as u64,
    );
    gauge(
        &mut out,
        "keyward_connections_open",
        "gauge",
        "Open connections on the proxy listener.",
        proxy.admission.open() as u64,
    );
    gauge(
        &mut out,
        "keyward_connections_refused_total",
        "counter",
        "Connections closed at once because their address had max_connections_per_ip open.",
        proxy.admission.refused_per_ip.load(Ordering::Relaxed),
    );
    secret_metrics(&mut out, snap);
    out.push_str(
        "# HELP keyward_token_expiry_seconds Seconds until each token expires (negative: expired).\n",
    );
    out.push_str("# TYPE keyward_token_expiry_seconds gauge\n");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for s in &snap.services {
        for t in &s.tokens {
            if let Some(exp) = t.expires {
                let _ = writeln!(
                    out,
                    "keyward_token_expiry_seconds{{service=\"{}\",token_id=\"{}\"}} {}",
                    label(&s.name),
                    label(&t.id),
                    exp - now
                );
            }
        }
    }
    out
}

/// name, type, help, value of one cell.
type SecretFamily = (&'static str, &'static str, &'static str, fn(&crate::secrets::SecretCell) -> u64);

fn secret_metrics(out: &mut String, snap: &Snapshot) {
    let families: [SecretFamily; 3] = [
        ("keyward_secret_refresh_failures_total", "counter", "Failed refreshes of each secret.", |c| {
            c.refresh_failures.load(Ordering::Relaxed)
        }),
        ("keyward_secret_age_seconds", "gauge", "Seconds since each secret was last loaded.", |c| {
            c.age().as_secs()
        }),
        ("keyward_secret_stale", "gauge", "1 while a secret is past its max_staleness.", |c| {
            c.is_stale() as u64
        }),
    ];
    for (name, kind, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for c in &snap.secrets {
            let _ = writeln!(out, "{name}{{secret=\"{}\"}} {}", label(&c.name), value(c));
        }
    }
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
