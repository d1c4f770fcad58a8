//! OpenTelemetry: one span per request, exported over OTLP/HTTP (protobuf) when
//! `[telemetry] otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set. The span is built from
//! the request's finished access record, with its start and end times, so it carries exactly
//! what the record does (no token, no secret) and costs nothing while telemetry is off. A
//! caller's W3C `traceparent` is continued.

use std::time::SystemTime;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::audit::AccessRecord;

/// The exporter of one keyward instance (held by its `State`: in-process instances, as the
/// tests run them, each export their own).
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

/// Why telemetry cannot start: the exporter refused its settings.
#[derive(Debug, thiserror::Error)]
#[error("the OTLP exporter: {0}")]
pub struct TelemetryError(#[from] opentelemetry_otlp::ExporterBuildError);

/// Start exporting, if an endpoint is configured (`otlp_endpoint`, a base URL such as
/// `http://collector:4318`, else the standard `OTEL_EXPORTER_OTLP_*ENDPOINT` variables).
/// Called once, at start; the exporter sends from a thread of its own.
pub fn start(endpoint: Option<&str>, instance: &str) -> Result<Option<Telemetry>, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig;
    let from_env = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty()));
    if endpoint.is_none() && !from_env {
        return Ok(None);
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_http();
    if let Some(base) = endpoint {
        exporter = exporter.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
    }
    let exporter = exporter.with_timeout(std::time::Duration::from_secs(5)).build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("keyward")
        .with_attribute(KeyValue::new("service.instance.id", instance.to_string()))
        .build();
    let provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build();
    let tracer = provider.tracer("keyward");
    Ok(Some(Telemetry { provider, tracer }))
}

impl Telemetry {
    /// The caller's trace (`traceparent`, `tracestate`), if it sent one.
    pub fn parent(&self, headers: &http::HeaderMap) -> Context {
        TraceContextPropagator::new().extract(&Headers(headers))
    }

    /// Export one request's span, from its record.
    pub fn export(&self, r: &AccessRecord, start: SystemTime, end: SystemTime, parent: Option<&Context>) {
        export(&self.tracer, r, start, end, parent)
    }

    /// Send what is queued before the process exits.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "the OTLP exporter did not shut down cleanly");
        }
    }
}

fn export(
    tracer: &SdkTracer,
    r: &AccessRecord,
    start: SystemTime,
    end: SystemTime,
    parent: Option<&Context>,
) {
    let name = match &r.template {
        Some(template) => format!("{} {template}", r.method),
        None => r.method.clone(),
    };
    let text = |v: &Option<std::sync::Arc<str>>| v.as_deref().unwrap_or("").to_string();
    let mut attributes = vec![
        KeyValue::new("http.request.method", r.method.clone()),
        KeyValue::new("http.response.status_code", i64::from(r.status)),
        KeyValue::new("keyward.request_id", r.request_id.clone()),
        KeyValue::new("keyward.service", text(&r.service)),
        KeyValue::new("keyward.permission", text(&r.permission)),
        KeyValue::new("keyward.decision", r.decision.as_str()),
        KeyValue::new("keyward.reason", r.reason.to_string()),
        KeyValue::new("keyward.upstream", text(&r.upstream)),
        KeyValue::new("keyward.mode", r.mode.as_str()),
    ];
    if let Some(template) = &r.template {
        attributes.push(KeyValue::new("http.route", template.to_string()));
    }
    if let Some(id) = &r.upstream_request_id {
        attributes.push(KeyValue::new("stripe.request_id", id.clone()));
    }
    let builder = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_start_time(start)
        .with_attributes(attributes);
    let mut span = match parent {
        Some(cx) if cx.span().span_context().is_valid() => builder.start_with_context(tracer, cx),
        _ => builder.start(tracer),
    };
    if r.status >= 500 {
        span.set_status(Status::error(r.reason.to_string()));
    }
    span.end_with_timestamp(end);
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}
