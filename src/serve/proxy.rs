//! The request path, as phases over one per-request `Exchange`: decide → forward → respond,
//! with the access record written exactly once, when the exchange ends.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use time::OffsetDateTime;

use crate::audit::{self, AccessRecord, AuditSink, Slot};
use crate::control::metrics::Metrics;
use crate::control::snapshot::Snapshot;
use crate::policy::Mode;
use crate::policy::failure::Failure;
use crate::policy::identity;
use crate::policy::{Decision, RequestFacts, Verdict, decide, expansion_failure};
use crate::serve::admission::Admission;
use crate::serve::body::PartNames;
use crate::serve::body::{Deadline, Idle, Metered};
use crate::serve::stall::{Progress, Pulled};
use crate::upstream::{self, Body, BoxError};

pub const REQUEST_ID: &str = "keyward-request-id";
/// The reason recorded for an answer cut off because its caller stopped taking it.
pub const CLIENT_STALLED: &str = "client_stalled";

/// Shared by every connection: the current snapshot and the access log.
pub struct Proxy {
    pub snapshot: ArcSwap<Snapshot>,
    pub audit: AuditSink,
    pub metrics: Metrics,
    /// Open connections, per address and in all.
    pub admission: Arc<Admission>,
    ids: RequestIds,
}

impl Proxy {
    pub fn new(snapshot: Arc<Snapshot>, audit: AuditSink) -> Arc<Proxy> {
        Arc::new(Proxy {
            snapshot: ArcSwap::new(snapshot),
            audit,
            metrics: Metrics::default(),
            admission: Arc::default(),
            ids: RequestIds::new(),
        })
    }

    pub async fn handle(
        self: Arc<Self>,
        caller: Caller,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        // One snapshot for the whole request, however long it streams.
        let snap = self.snapshot.load_full();
        let (parts, body) = req.into_parts();
        // No record, no request: fail closed while the access log cannot be written.
        if !self.audit.admits() {
            return Ok(self.unrecorded());
        }
        let facts = RequestFacts {
            parts: &parts,
            client_ip: caller.ip,
            now: OffsetDateTime::now_utc().unix_timestamp(),
        };
        let decision = decide(&snap, &facts);
        if let Verdict::Deny(f) = &decision.verdict {
            // Refused before anything is read or sent: answered and recorded at once, so the
            // caller (token or not) holds no place in the access-log queue while it reads.
            let mut ex = Exchange::start(self.clone(), &caller, &snap, &parts);
            ex.note(&snap, &decision);
            return Ok(ex.refuse(failure_response(f)));
        }
        let Some(slot) = self.audit.slot().await else {
            return Ok(self.unrecorded());
        };
        let mut ex = Exchange::start(self.clone(), &caller, &snap, &parts);
        ex.slot = Some(slot);
        ex.note(&snap, &decision);
        let response = forward(&snap, &decision, &parts, body, &mut ex).await.unwrap_or_else(|f| {
            ex.record.reason = f.code().into();
            failure_response(&f)
        });
        Ok(ex.respond(response))
    }

    /// 503 for a request that cannot be recorded: the log is failing (fail closed), or its
    /// writer is gone or stuck.
    fn unrecorded(&self) -> Response<Body> {
        self.audit.state.refused.fetch_add(1, Ordering::Relaxed);
        let mut resp = failure_response(&Failure::AuditUnavailable);
        resp.headers_mut().insert(REQUEST_ID, HeaderValue::from_static("kwreq_unrecorded"));
        resp
    }
}

/// The connection a request came on: who is calling, and whether keyward cut it off for
/// not reading (`timeouts.client_send`).
#[derive(Clone)]
pub struct Caller {
    pub ip: IpAddr,
    pub cut: Arc<AtomicBool>,
}

impl Proxy {
    /// A record's common start: when, which request, from where, under which configuration.
    fn new_record(&self, client_ip: IpAddr, config_version: &Arc<str>) -> AccessRecord {
        AccessRecord {
            time: audit::timestamp(OffsetDateTime::now_utc()),
            request_id: self.ids.next(),
            client_ip: Some(client_ip),
            config_version: config_version.clone(),
            ..AccessRecord::default()
        }
    }

    /// Record a request that hyper refused while parsing it, before keyward saw it: hyper
    /// has already answered it with a bare `status`. Such a record has no method or path.
    /// Like every refusal's it never waits: with the refusals' share of the queue full the
    /// record is dropped and counted, so that a flood of garbage cannot queue ahead of real
    /// requests.
    pub fn record_unparsed(&self, client_ip: IpAddr, status: u16, reason: &'static str) {
        let Some(slot) = self.audit.refusal_slot() else {
            return;
        };
        let record = AccessRecord {
            decision: "deny".into(),
            reason: reason.into(),
            status,
            ..self.new_record(client_ip, &self.snapshot.load().version)
        };
        self.metrics.observe(&record);
        slot.send(record);
    }
}

/// Forward an allowed call and stream the answer back.
async fn forward(
    snap: &Snapshot,
    d: &Decision<'_>,
    parts: &Parts,
    body: Incoming,
    ex: &mut Exchange,
) -> Result<Response<Body>, Failure> {
    let (Some(service), Some(up_idx)) = (d.service, d.upstream) else {
        return Err(Failure::Internal);
    };
    let up = &snap.upstreams[up_idx];
    let limit = snap.limits.max_body_bytes;
    let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Failure::BodyTooLarge { limit });
    }
    let secret = snap.secrets[service.secret].serving().ok_or(Failure::SecretStale)?;
    ex.record.secret_version = secret.version;
    let headers =
        upstream::request_headers(&parts.headers, secret.value.expose()).ok_or(Failure::Internal)?;
    let egress = service.egress_ip.or(up.egress_ip);
    ex.record.egress_ip = egress;
    let client = up.client(egress).ok_or(Failure::Internal)?;

    // Stripe's GET and DELETE calls take their parameters in the query, where they are
    // checked; a body there could carry unchecked ones to a lenient server.
    if parts.method != http::Method::POST && !http_body::Body::is_end_stream(&body) {
        return Err(ex.deny(Failure::NonCanonical("comes with a body, which only POST calls may have")));
    }
    let body = Idle::new(body, snap.timeouts.request_body_idle, ex.body_late.clone());
    let streamed = |body: Body| {
        Limited::new(Metered::new(body, ex.bytes_in.clone(), ()), limit as usize)
            .map_err(BoxError::from)
            .boxed()
    };
    let body = match body_kind(parts) {
        BodyKind::Form => {
            // Small form bodies are read whole: an `expand[]` in them needs checking too.
            let form = read_form(body, snap.limits.max_form_bytes, snap.timeouts.form_body)
                .await
                .map_err(|f| ex.deny(f))?;
            ex.bytes_in.store(form.len() as u64, Ordering::Relaxed);
            let token = identity::token_from(&parts.headers, AUTHORIZATION).unwrap_or_default();
            let fields =
                crate::policy::params::read(&form).map_err(|why| ex.deny(Failure::NonCanonical(why)))?;
            if let Some(f) = expansion_failure(snap, service, &fields, &token) {
                match service.mode {
                    Mode::Enforce => return Err(ex.deny(f)),
                    Mode::Report => ex.would_deny(&f),
                }
            }
            Full::new(form).map_err(|e| match e {}).boxed()
        }
        BodyKind::Multipart(boundary) => {
            streamed(PartNames::new(body, boundary, ex.body_refused.clone()).boxed())
        }
        BodyKind::Other => streamed(body.boxed()),
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = up.uri(parts.uri.path_and_query());
    *req.headers_mut() = headers;

    let started = Instant::now();
    // One deadline for the whole answer: its head, then the rest of its body.
    let deadline = tokio::time::Instant::from_std(started) + snap.timeouts.upstream;
    let answer = tokio::time::timeout_at(deadline, client.request(req, deadline)).await;
    ex.record.upstream_ms = Some(started.elapsed().as_secs_f64() * 1e3);
    let mut resp = match answer {
        Err(_) => return Err(Failure::UpstreamTimeout),
        // The byte count, not the error chain, tells that the body passed the limit: over
        // HTTP/2 the body is sent by another task and the limit's error does not come back.
        Ok(Err(_)) if ex.bytes_in.load(Ordering::Relaxed) > limit => {
            return Err(Failure::BodyTooLarge { limit });
        }
        Ok(Err(_)) if ex.body_late.load(Ordering::Relaxed) => return Err(Failure::BodyTimeout),
        Ok(Err(_)) if ex.body_refused.load(Ordering::Relaxed) => {
            return Err(
                ex.deny(Failure::NonCanonical("has a multipart part whose headers name method or expand"))
            );
        }
        Ok(Err(e)) => {
            tracing::warn!(upstream = %up.name, error = %e, "upstream request failed");
            return Err(Failure::UpstreamUnavailable);
        }
        Ok(Ok(resp)) => resp,
    };
    upstream::strip_response_headers(resp.headers_mut());
    // The caller's protocol, not the upstream's, frames the answer.
    *resp.version_mut() = parts.version;
    ex.record.upstream_request_id =
        resp.headers().get("request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    Ok(resp.map(|b| Deadline::new(b, deadline, ex.answer_cut.clone()).boxed()))
}

/// How a request body is read on its way upstream.
enum BodyKind<'a> {
    /// Read whole: a POST body the upstream reads as a form, declared as one or not declared
    /// at all (frameworks read an untyped POST body as a form), so its fields are checked.
    Form,
    /// Streamed, its part headers checked on the way (`multipart`), with this boundary.
    Multipart(&'a str),
    /// Streamed as it is.
    Other,
}

/// (`canonical::check` has already refused Content-Types that read two ways.)
fn body_kind(parts: &Parts) -> BodyKind<'_> {
    let Some(ct) = parts.headers.get(CONTENT_TYPE) else {
        return if parts.method == http::Method::POST { BodyKind::Form } else { BodyKind::Other };
    };
    let ct = ct.to_str().unwrap_or("");
    match crate::policy::canonical::media_type(ct).as_str() {
        "application/x-www-form-urlencoded" if parts.method == http::Method::POST => BodyKind::Form,
        m if m.starts_with("multipart/") => {
            crate::policy::canonical::multipart_boundary(ct).map_or(BodyKind::Other, BodyKind::Multipart)
        }
        _ => BodyKind::Other,
    }
}

/// A form body, whole: at most `limit` bytes, arriving within `within` (and with no pause
/// longer than the body's own idle timeout).
async fn read_form(body: Idle<Incoming>, limit: usize, within: Duration) -> Result<Bytes, Failure> {
    let late = body.late();
    match tokio::time::timeout(within, Limited::new(body, limit).collect()).await {
        Err(_) => Err(Failure::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(Failure::FormTooLarge { limit }),
        Ok(Err(_)) if late.load(Ordering::Relaxed) => Err(Failure::BodyTimeout),
        Ok(Err(_)) => Err(Failure::BodyUnreadable),
    }
}

/// The one place a failure becomes a response.
pub fn failure_response(f: &Failure) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(f.body())).map_err(|e| match e {}).boxed());
    *resp.status_mut() = f.status();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let retry = if f.should_retry() { "true" } else { "false" };
    h.insert("stripe-should-retry", HeaderValue::from_static(retry));
    resp
}

/// One request's context. Dropping it writes the access record: whatever happened, exactly once.
struct Exchange {
    proxy: Arc<Proxy>,
    slot: Option<Slot>,
    record: AccessRecord,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    bytes_out: Arc<AtomicU64>,
    /// Raised when the upstream's answer was cut off at its deadline.
    answer_cut: Arc<AtomicBool>,
    /// Raised when the caller paused its request body too long.
    body_late: Arc<AtomicBool>,
    /// Raised when a multipart body turned out to carry a part keyward refuses.
    body_refused: Arc<AtomicBool>,
    /// Raised when the caller's connection was cut off for not reading.
    caller_cut: Arc<AtomicBool>,
    /// The HTTP/2 stream's watchdog, if the request came on one.
    stream: Option<Arc<Progress>>,
}

impl Exchange {
    /// An exchange with no place in the access-log queue yet.
    fn start(proxy: Arc<Proxy>, caller: &Caller, snap: &Snapshot, parts: &Parts) -> Exchange {
        let path = parts.uri.path();
        let record = AccessRecord {
            method: parts.method.as_str().to_owned(),
            // Cut on a character boundary: hyper passes UTF-8 in paths (refused later).
            path: path[..path.floor_char_boundary(crate::policy::canonical::MAX_PATH)].to_string(),
            ..proxy.new_record(caller.ip, &snap.version)
        };
        Exchange {
            proxy,
            slot: None,
            record,
            started: Instant::now(),
            bytes_in: Default::default(),
            bytes_out: Default::default(),
            answer_cut: Default::default(),
            body_late: Default::default(),
            body_refused: Default::default(),
            caller_cut: caller.cut.clone(),
            stream: Progress::current(),
        }
    }

    fn note(&mut self, snap: &Snapshot, d: &Decision<'_>) {
        let r = &mut self.record;
        r.service = d.service.map(|s| s.name.clone());
        r.token_id = d.token.map(|t| t.id.clone());
        r.stripe_account = d.account.map(str::to_string);
        if let Some(e) = d.entry {
            r.template = Some(e.template.clone());
            r.permission = Some(e.name.clone());
            r.access = Some(e.access.as_str().into());
        }
        r.upstream = d.upstream.map(|i| snap.upstreams[i].name.clone());
        let (decision, reason) = match &d.verdict {
            Verdict::Allow => ("allow", "ok"),
            Verdict::WouldDeny(f) => ("would_deny", f.code()),
            Verdict::Deny(f) => ("deny", f.code()),
        };
        (r.decision, r.reason) = (decision.into(), reason.into());
    }

    /// A refusal found after the policy allowed the call (form-body expansions).
    fn deny(&mut self, f: Failure) -> Failure {
        (self.record.decision, self.record.reason) = ("deny".into(), f.code().into());
        f
    }

    fn would_deny(&mut self, f: &Failure) {
        (self.record.decision, self.record.reason) = ("would_deny".into(), f.code().into());
    }

    /// Tag the response and hand it back with this exchange riding on its body.
    fn respond(mut self, mut resp: Response<Body>) -> Response<Body> {
        self.tag(&mut resp);
        let (parts, body) = resp.into_parts();
        let body = match &self.stream {
            Some(progress) => {
                progress.answering();
                Pulled::new(body, progress.clone()).boxed()
            }
            None => body,
        };
        let count = self.bytes_out.clone();
        Response::from_parts(parts, Metered::new(body, count, self).boxed())
    }

    /// Tag a refusal and record it now, from the refusals' share of the access-log queue
    /// (dropped and counted if that is full): its answer is all in `resp`.
    fn refuse(mut self, mut resp: Response<Body>) -> Response<Body> {
        self.tag(&mut resp);
        let size = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
        self.bytes_out.store(size, Ordering::Relaxed);
        self.slot = self.proxy.audit.refusal_slot();
        resp
    }

    fn tag(&mut self, resp: &mut Response<Body>) {
        self.record.status = resp.status().as_u16();
        let id = HeaderValue::from_str(&self.record.request_id).expect("request ids are ASCII");
        resp.headers_mut().insert(REQUEST_ID, id);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let r = &mut self.record;
        r.duration_ms = self.started.elapsed().as_secs_f64() * 1e3;
        r.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        r.bytes_out = self.bytes_out.load(Ordering::Relaxed);
        if self.answer_cut.load(Ordering::Relaxed) {
            r.reason = Failure::UpstreamTimeout.code().into();
        } else if self.caller_cut.load(Ordering::Relaxed)
            || self.stream.as_ref().is_some_and(|s| s.cut.load(Ordering::Relaxed))
        {
            r.reason = CLIENT_STALLED.into();
        }
        self.proxy.metrics.observe(r);
        if let Some(slot) = self.slot.take() {
            slot.send(std::mem::take(r));
        }
    }
}

/// Request ids: a random per-process prefix and a counter; unique, cheap, not secret.
struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).expect("the OS has randomness");
        RequestIds { prefix: u32::from_le_bytes(b), next: AtomicU64::new(1) }
    }

    /// `kwreq_` then the prefix in 8 and the counter in 10 lowercase hex digits, written
    /// without the formatting machinery: this runs for every request.
    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if n > 0xff_ffff_ffff {
            return format!("kwreq_{:08x}{n:010x}", self.prefix); // after 2^40 requests: longer
        }
        let mut b = *b"kwreq_000000000000000000";
        let hex = |digits: &mut [u8], mut v: u64| {
            for d in digits.iter_mut().rev() {
                *d = b"0123456789abcdef"[(v & 0xf) as usize];
                v >>= 4;
            }
        };
        hex(&mut b[6..14], self.prefix.into());
        hex(&mut b[14..], n);
        String::from_utf8(b.to_vec()).expect("hex digits are ASCII")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_prefix_and_counter_in_fixed_width_hex() {
        for (prefix, n) in [(0, 1), (0xdead_beef, 0x12_3456_789a), (u32::MAX, 0xff_ffff_ffff), (7, 1 << 40)] {
            let ids = RequestIds { prefix, next: AtomicU64::new(n) };
            assert_eq!(ids.next(), format!("kwreq_{prefix:08x}{n:010x}"));
        }
    }
}
