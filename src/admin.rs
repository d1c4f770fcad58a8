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

use crate::reload::Reloader;

pub async fn serve(listener: TcpListener, reloader: Arc<Reloader>) {
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
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

async fn route(reloader: Arc<Reloader>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let snap = reloader.proxy().snapshot.load();
    let reply = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n".into()),
        // A snapshot only exists once config and secrets loaded; reloads never unset it.
        (&Method::GET, "/readyz") => {
            json(StatusCode::OK, serde_json::json!({ "ready": true, "version": snap.version }))
        }
        (&Method::GET, "/metrics") => text(StatusCode::OK, metrics(&reloader, &snap.version)),
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

fn metrics(reloader: &Reloader, version: &str) -> String {
    let ok = reloader.succeeded.load(Ordering::Relaxed);
    let failed = reloader.failed.load(Ordering::Relaxed);
    format!(
        "# HELP keyward_reloads_total Configuration reloads by result.\n\
         # TYPE keyward_reloads_total counter\n\
         keyward_reloads_total{{result=\"ok\"}} {ok}\n\
         keyward_reloads_total{{result=\"error\"}} {failed}\n\
         # HELP keyward_config_info The configuration version serving.\n\
         # TYPE keyward_config_info gauge\n\
         keyward_config_info{{version=\"{version}\"}} 1\n"
    )
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
