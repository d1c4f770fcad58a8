//! One request's context, `Exchange`: the access record it fills in as the request moves
//! through its phases, and writes exactly once, when it is dropped, whatever happened.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use http::header::HeaderValue;
use http::request::Parts;
use http::{HeaderName, Response};
use http_body_util::BodyExt;
use time::OffsetDateTime;

use crate::audit::ProxyMode;
use crate::audit::{self, AccessRecord, Slot};
use crate::control::state::State;
use crate::policy::forward::Tunnel;
use crate::policy::{self, Decision, Failure, Ruling};
use crate::serve::body::{Count, Metered};
use crate::serve::outcome::{Signal, Signals};
use crate::serve::refusal::{Fault, Refusal};
use crate::serve::stall::{Progress, Pulled};
use crate::upstream::Body;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("keyward-request-id");
/// What the Stripe SDKs read as the request id (`e.request_id`): on keyward's own answers the
/// same id as `Keyward-Request-Id`; on forwarded answers the upstream's.
pub static STRIPE_REQUEST_ID: HeaderName = HeaderName::from_static("request-id");
/// The reason recorded for an answer in which keyward replaced the secret key.
pub const SECRET_SCRUBBED: &str = "secret_scrubbed";
/// The reason recorded for an answer cut off because its caller stopped taking it.
pub const CLIENT_STALLED: &str = "client_stalled";

/// The connection a request came on: who is calling, and whether keyward cut it off for
/// not reading (`timeouts.client_send`).
#[derive(Clone)]
pub struct Caller {
    pub ip: IpAddr,
    pub cut: Arc<AtomicBool>,
    /// Forward mode: the tunnel the connection is inside, and what closes it politely.
    pub tunnel: Option<Arc<Tunnel>>,
    pub close: Option<tokio_util::sync::CancellationToken>,
    /// The identities of the connection's verified client certificate, if it has one.
    pub client_ids: Arc<[String]>,
    /// The connection's place in the admission: proven by a request that passes the token
    /// checks.
    pub conn: Arc<crate::serve::admission::Connection>,
}

pub struct Exchange {
    state: Arc<State>,
    pub slot: Option<Slot>,
    /// Answered by `refuse`: recorded without a slot of its own.
    refused: bool,
    /// A place among the service's `concurrency`, held until the answer's last byte.
    pub in_flight: Option<tokio::sync::OwnedSemaphorePermit>,
    pub record: AccessRecord,
    started: Instant,
    /// What the request's and the answer's parts tell of the way (`outcome`).
    pub signals: Arc<Signals>,
    /// The kind of upstream failure, for the metrics (`Fault::upstream_kind`).
    upstream_error: Option<&'static str>,
    /// A refusal or failure was recorded: its reason stands (`settled`).
    failed: bool,
    /// Raised when the caller's connection was cut off for not reading.
    caller_cut: Arc<AtomicBool>,
    /// The HTTP/2 stream's watchdog, if the request came on one.
    stream: Option<Arc<Progress>>,
    /// The caller's trace (`traceparent`), with telemetry on.
    trace: Option<opentelemetry::Context>,
}

impl Exchange {
    /// An exchange with no place in the access-log queue yet.
    pub fn start(
        state: Arc<State>,
        ids: &RequestIds,
        caller: &Caller,
        version: &Arc<str>,
        parts: &Parts,
    ) -> Exchange {
        let record = AccessRecord {
            method: audit::capped(parts.method.as_str(), audit::MAX_METHOD),
            path: audit::capped(parts.uri.path(), audit::MAX_PATH),
            mode: if caller.tunnel.is_some() { ProxyMode::Forward } else { ProxyMode::Reverse },
            connect_host: caller.tunnel.as_ref().map(|t| t.target.clone()),
            client_id: caller.client_ids.first().cloned(),
            ..new_record(ids, caller.ip, version)
        };
        state.metrics.in_flight.inc();
        let trace = state.telemetry.as_ref().map(|t| t.parent(&parts.headers));
        Exchange {
            state,
            slot: None,
            refused: false,
            in_flight: None,
            record,
            started: Instant::now(),
            signals: Default::default(),
            upstream_error: None,
            failed: false,
            caller_cut: caller.cut.clone(),
            stream: Progress::current(),
            trace,
        }
    }

    /// The state the exchange records into.
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// What the policy learnt and decided.
    pub fn note(&mut self, ruling: &Ruling<'_>, upstream_names: &[Arc<str>]) {
        let r = &mut self.record;
        r.service = ruling.service.map(|s| s.name.clone());
        r.token_id = ruling.token.map(|t| t.id.clone());
        r.stripe_account = ruling.account.map(|a| audit::capped(a, audit::MAX_ACCOUNT));
        if let Some(e) = ruling.entry {
            r.template = Some(e.template.clone());
            r.permission = Some(e.name.clone());
            r.access = Some(e.access.as_str().into());
        }
        r.upstream = ruling.upstream.map(|i| upstream_names[i].clone());
        (r.decision, r.reason) = (ruling.verdict.decision(), ruling.verdict.reason().into());
        match &ruling.verdict {
            policy::Verdict::Deny(f) => self.failure_seen(f),
            policy::Verdict::WouldDeny(_, f) => self.lacked(f),
            policy::Verdict::Allow(_) => {}
        }
    }

    /// A refusal found after the policy allowed the call (the body rules).
    pub fn deny(&mut self, f: Failure) -> Failure {
        (self.record.decision, self.record.reason) = (Decision::Deny, f.reason().into());
        self.failure_seen(&f);
        f
    }

    pub fn would_deny(&mut self, f: &Failure) {
        (self.record.decision, self.record.reason) = (Decision::WouldDeny, f.reason().into());
        self.lacked(f);
    }

    /// The permissions a refusal says the call lacked, added to the record's `missing`.
    fn lacked(&mut self, f: &Failure) {
        for p in f.missing() {
            if !self.record.missing.iter().any(|m| m == p) {
                self.record.missing.push(p.to_string());
            }
        }
    }

    /// The call failed after it was allowed: an allowed call's record takes the failure's
    /// reason; a `would_deny` one keeps its policy reason (the status tells the failure).
    pub fn failed(&mut self, r: &Refusal) {
        if self.record.decision == Decision::Allow {
            self.record.reason = r.reason().into();
        }
        match r {
            Refusal::Denied(f) => self.failure_seen(f),
            Refusal::Fault(f) => {
                self.failed = true;
                self.upstream_error = self.upstream_error.or(f.upstream_kind());
            }
        }
    }

    /// Refused before the call began (the forward port: no tunnel opened): recorded as a denial
    /// with its reason, the policy's or the fault's.
    pub fn refused(&mut self, r: Refusal) -> Refusal {
        match r {
            Refusal::Denied(f) => self.deny(f).into(),
            Refusal::Fault(f) => {
                (self.record.decision, self.record.reason) = (Decision::Deny, f.code().into());
                self.failed = true;
                f.into()
            }
        }
    }

    /// What a failure tells besides its reason: an upstream's kind of failure (metrics), a
    /// token exposed (the record counts it, and names the token's owner when keyward knows).
    fn failure_seen(&mut self, f: &Failure) {
        self.failed = true;
        self.lacked(f);
        self.upstream_error = self.upstream_error.or(f.upstream_kind());
        if let Failure::TokenInWrongPlace { whose, .. } = f {
            self.record.token_exposed = true;
            if let Some((service, token)) = whose {
                (self.record.service, self.record.token_id) = (Some(service.clone()), Some(token.clone()));
            }
        }
    }

    /// The reason an allowed call that went well until its answer ends with: what happened on
    /// the way, the most serious first. A secret scrubbed is never hidden behind a stall; a
    /// refusal, a failure or report mode's would-deny keeps its own reason.
    fn settled(&self) -> Option<&'static str> {
        if self.record.decision != Decision::Allow || self.failed {
            return None;
        }
        let cut = self.caller_cut.load(Ordering::Relaxed)
            || self.stream.as_ref().is_some_and(|s| s.cut.load(Ordering::Relaxed));
        if self.signals.raised(Signal::Scrubbed) {
            Some(SECRET_SCRUBBED)
        } else if self.signals.raised(Signal::AnswerCut) {
            Some(Fault::UpstreamTimeout.code())
        } else if cut {
            Some(CLIENT_STALLED)
        } else {
            None
        }
    }

    /// Tag the response and hand it back with this exchange riding on its body.
    pub fn respond(mut self, mut resp: Response<Body>, own: bool) -> Response<Body> {
        self.tag(&mut resp, own);
        let (parts, body) = resp.into_parts();
        let body = match &self.stream {
            Some(progress) => {
                progress.answering();
                Pulled::new(body, progress.clone()).boxed()
            }
            None => body,
        };
        let count = Count::Out(self.signals.clone());
        Response::from_parts(parts, Metered::new(body, count, self).boxed())
    }

    /// Tag a refusal, recorded as one when the answer is done (`AuditSink::refusal`: on its
    /// own line or folded, never waiting): its answer is all in `resp`.
    pub fn refuse(mut self, mut resp: Response<Body>) -> Response<Body> {
        self.tag(&mut resp, true);
        // A caller that gives the answer no window is cut off like any other.
        if let Some(progress) = &self.stream {
            progress.answering();
        }
        let size = http_body::Body::size_hint(resp.body()).exact().unwrap_or(0);
        self.signals.bytes_out.store(size, Ordering::Relaxed);
        self.refused = true;
        resp
    }

    /// `own`: keyward's answer, not the upstream's, so its `Request-Id` is keyward's too.
    fn tag(&mut self, resp: &mut Response<Body>, own: bool) {
        self.record.status = resp.status().as_u16();
        let id = HeaderValue::from_str(&self.record.request_id).expect("request ids are ASCII");
        if own {
            resp.headers_mut().insert(&STRIPE_REQUEST_ID, id.clone());
        }
        resp.headers_mut().insert(&REQUEST_ID, id);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let r = &mut self.record;
        r.duration_ms = self.started.elapsed().as_secs_f64() * 1e3;
        r.bytes_in = self.signals.bytes_in.load(Ordering::Relaxed);
        r.bytes_out = self.signals.bytes_out.load(Ordering::Relaxed);
        if self.signals.raised(Signal::Scrubbed) {
            tracing::warn!(
                request_id = r.request_id,
                upstream = r.upstream.as_deref(),
                "the upstream's answer carried the secret key; keyward replaced it"
            );
        }
        if self.signals.raised(Signal::AnswerCut) {
            self.upstream_error = self.upstream_error.or(Fault::UpstreamTimeout.upstream_kind());
        }
        if let Some(reason) = self.settled() {
            self.record.reason = reason.into();
        }
        let r = &mut self.record;
        self.state.metrics.in_flight.dec();
        self.state.metrics.observe(r, self.upstream_error);
        if let Some(t) = &self.state.telemetry {
            let end = std::time::SystemTime::now();
            let start = end - self.started.elapsed();
            t.export(r, start, end, self.trace.as_ref());
        }
        match self.slot.take() {
            Some(slot) => slot.send(std::mem::take(r)),
            None if self.refused => self.state.audit.refusal(std::mem::take(r)),
            None => {}
        }
    }
}

/// A record's common start: when, which request, from where, under which configuration.
pub fn new_record(ids: &RequestIds, client_ip: IpAddr, config_version: &Arc<str>) -> AccessRecord {
    AccessRecord {
        time: audit::timestamp(OffsetDateTime::now_utc()),
        request_id: ids.next(),
        client_ip: Some(client_ip),
        config_version: config_version.clone(),
        ..AccessRecord::default()
    }
}

/// Request ids: a random per-process prefix and a counter; unique, cheap, not secret.
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut b = [0u8; 4];
        getrandom::fill(&mut b).expect("the OS has randomness");
        RequestIds { prefix: u32::from_le_bytes(b), next: AtomicU64::new(1) }
    }
}

impl RequestIds {
    /// `kwreq_` then the prefix in 8 and the counter in 10 lowercase hex digits, written
    /// without the formatting machinery: this runs for every request.
    pub fn next(&self) -> String {
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
