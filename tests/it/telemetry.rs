//! `[telemetry] otlp_endpoint`: one span per request, exported over OTLP/HTTP to a receiver in
//! the test (decoded with the OTLP protobuf types), continuing the caller's `traceparent`, and
//! carrying no token or secret.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::common::*;

const TOKEN: &str = "kw_otel_token_0123456789abcdefWXYZab";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver: every body POSTed to /v1/traces.
async fn receiver() -> (std::net::SocketAddr, Arc<Mutex<Vec<Bytes>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        if path == "/v1/traces" {
                            seen.lock().unwrap().push(body);
                        }
                        let mut resp = http::Response::new(Full::new(Bytes::new()));
                        resp.headers_mut().insert("content-type", "application/x-protobuf".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    (addr, got)
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text(s: &Span, key: &str) -> String {
    match attr(s, key) {
        Some(Value::StringValue(v)) => v.clone(),
        Some(Value::IntValue(v)) => v.to_string(),
        other => format!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_a_span_continuing_the_callers_trace() {
    let (otlp, bodies) = receiver().await;
    let pki = Pki::new();
    let upstream = Upstream::start(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let text_cfg = Harness::new()
        .service(Svc::new("billing").token("b1", TOKEN).scope("charge", "read"))
        .top(&format!("[telemetry]\notlp_endpoint = \"http://{otlp}\"\n[timeouts]\ndrain_delay = \"100ms\""))
        .config(&pki, &upstream.url(), dir.path());
    let config = dir.path().join("keyward.toml");
    std::fs::write(&config, text_cfg).unwrap();
    let mut kw = spawn_keyward(&config, &[("KEYWARD_INSTANCE", "kw-otel")]);
    let tls = pki.client_config();
    let mut traced = req("GET", "/v1/charges", TOKEN, "");
    traced.headers_mut().insert("traceparent", format!("00-{TRACE}-{PARENT}-01").parse().unwrap());
    assert_eq!(send(kw.addr, tls.clone(), "127.0.0.1".parse().unwrap(), traced).await.status, 200);
    let denied = req("POST", "/v1/charges", TOKEN, "amount=1");
    assert_eq!(send(kw.addr, tls, "127.0.0.1".parse().unwrap(), denied).await.status, 403);
    // SIGTERM: keyward drains and sends what is queued before it exits.
    let pid = kw.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::task::spawn_blocking(move || kw.child.wait().unwrap()).await.unwrap();
    assert!(status.success());
    // keyward exited after its exporter's last request was answered: every body is in.
    assert!(!bodies.lock().unwrap().is_empty(), "no OTLP export arrived");
    let bodies = bodies.lock().unwrap().clone();
    let mut spans = Vec::new();
    for b in &bodies {
        let raw = String::from_utf8_lossy(b);
        assert!(!raw.contains(TOKEN) && !raw.contains(SECRET), "a token or secret in a span");
        let req = ExportTraceServiceRequest::decode(b.as_ref()).expect("an OTLP protobuf body");
        for rs in req.resource_spans {
            let res = rs.resource.unwrap_or_default();
            assert!(res.attributes.iter().any(|kv| kv.key == "service.name"), "no service.name");
            spans.extend(rs.scope_spans.into_iter().flat_map(|ss| ss.spans));
        }
    }
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let allowed =
        spans.iter().find(|s| text(s, "keyward.decision") == "allow").expect("the allowed call's span");
    assert_eq!(allowed.name, "GET /v1/charges");
    assert_eq!(hex::encode(&allowed.trace_id), TRACE, "the caller's trace is continued");
    assert_eq!(hex::encode(&allowed.parent_span_id), PARENT);
    assert_eq!(text(allowed, "keyward.service"), "billing");
    assert_eq!(text(allowed, "keyward.permission"), "charge_read");
    assert_eq!(text(allowed, "http.response.status_code"), "200");
    assert_eq!(text(allowed, "keyward.upstream"), "api");
    assert!(text(allowed, "stripe.request_id").starts_with("req_upstream_"), "{allowed:?}");
    assert!(allowed.end_time_unix_nano > allowed.start_time_unix_nano);
    let refused = spans.iter().find(|s| text(s, "keyward.decision") == "deny").expect("the refusal's span");
    assert_eq!(text(refused, "keyward.reason"), "more_permissions_required");
    assert_ne!(hex::encode(&refused.trace_id), TRACE, "no traceparent: a trace of its own");
}
