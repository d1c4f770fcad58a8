//! The request path, top to bottom: identify → canonicalise → classify → authorize (the pure
//! policy, `policy::decide`) → check body → rewrite request → send → rewrite response →
//! record (when the request's `Exchange` ends, whatever happened).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use crate::audit::AccessRecord;
use crate::audit::queue::Unplaced;
use crate::control::snapshot::Snapshot;
use crate::control::state::State;
use crate::policy::canonical::BodyShape;
use crate::policy::{self, Decision, Failure, RequestFacts, Route, Verdict};
use crate::serve::admission::Admission;
use crate::serve::body::{Count, Deadline, Idle, Metered, NoTokens, PartNames};
use crate::serve::exchange::{Caller, Exchange, REQUEST_ID, RequestIds, STRIPE_REQUEST_ID, new_record};
use crate::serve::meter::{self, MeterSessions};
use crate::serve::outcome::{BodyStop, Signal};
use crate::serve::refusal::{Fault, Refusal};
use crate::serve::respond;
use crate::serve::scrub::{self, Scrub};
use crate::serve::spend;
use crate::upstream::{self, Answer, Body, BoxError};

/// Shared by every connection: the state the control plane keeps, the connection counts,
/// the request ids.
pub struct Proxy {
    pub state: Arc<State>,
    /// Each port's connections (unproven callers of one cannot take the other's share).
    pub admission: [Arc<Admission>; 2],
    /// What form bodies read whole take together, in KiB (`limits.max_form_bytes_total`).
    forms: Arc<Semaphore>,
    pub ids: RequestIds,
    /// Forward mode's tunnels open.
    pub tunnels: Arc<std::sync::atomic::AtomicUsize>,
    /// The meter-event sessions keyward holds for the stream's calls.
    meters: MeterSessions,
}

impl Proxy {
    pub fn new(state: Arc<State>) -> Arc<Proxy> {
        let m = &state.metrics;
        let open: Arc<crate::serve::admission::Open> = Arc::default(); // both ports' count
        let admission = [(); 2].map(|_| Arc::new(Admission::new(m.connections.clone(), open.clone())));
        let kib = state.snapshot.load().limits.max_form_bytes_total.div_ceil(1024);
        let forms = Arc::new(Semaphore::new(kib.min(Semaphore::MAX_PERMITS)));
        Arc::new(Proxy {
            state,
            admission,
            forms,
            ids: RequestIds::default(),
            tunnels: Arc::default(),
            meters: MeterSessions::default(),
        })
    }

    pub async fn handle(
        self: Arc<Self>,
        caller: Caller,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        // One snapshot for the whole request, however long it streams.
        let snap = self.state.snapshot.load_full();
        let (parts, body) = req.into_parts();
        // keyward's own answers may come before the body was read: then, over HTTP/1.1, the
        // connection closes after them (`closing`).
        let has_body = !http_body::Body::is_end_stream(&body);
        let unread = parts.version < http::Version::HTTP_2 && has_body;
        // No record, no request: fail closed while the access log cannot be written.
        if !self.state.audit.admits() {
            return Ok(closing(self.unrecorded(Fault::AuditUnavailable), unread));
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let suspended = |t: &policy::Token| self.state.is_suspended(t);
        let facts = RequestFacts {
            parts: &parts,
            client_ip: caller.ip,
            now,
            tunnel: caller.tunnel.as_deref(),
            client_ids: &caller.client_ids,
            suspended: &suspended,
            has_body,
        };
        let mut ruling = policy::decide(&snap.policy, &facts);
        // The policy says what counts toward quarantine; the control plane counts.
        if let Some((service, token)) = ruling.strike()
            && self.state.strike(&snap.version, service, token, caller.ip)
        {
            ruling.tipped();
        }
        caller.conn.active();
        let refused_unproven = !caller.conn.is_proven() && !ruling.proves();
        if ruling.proves() {
            caller.conn.prove();
        }
        let exchange = || {
            let mut ex = Exchange::start(self.state.clone(), &self.ids, &caller, &snap.version, &parts);
            ex.note(&ruling, &snap.policy.upstreams);
            ex
        };
        let route = match &ruling.verdict {
            Verdict::Deny(f) => {
                let close = refused_unproven && caller.conn.refused() >= snap.limits.refusals_per_connection;
                return Ok(refuse_now(&caller, f, close, unread, exchange()));
            }
            Verdict::Allow(route) | Verdict::WouldDeny(route, _) => *route,
        };
        // The service's rate and concurrency and the shared budget, in report mode too: they
        // protect the budget every service shares.
        let in_flight = match snap.ratelimits.admit(route.service.index).await {
            Err(f) => {
                let mut ex = exchange();
                let f = ex.deny(f);
                return Ok(ex.refuse(closing(respond::failure(&f.into()), unread)));
            }
            Ok(permit) => permit,
        };
        let slot = match self.state.audit.slot(&route.service.name).await {
            Ok(slot) => slot,
            Err(Unplaced::Closed) => return Ok(closing(self.unrecorded(Fault::AuditUnavailable), unread)),
            Err(Unplaced::Busy) => return Ok(closing(self.unrecorded(Fault::AuditBusy), unread)),
        };
        let mut ex = exchange();
        ex.slot = Some(slot);
        ex.in_flight = in_flight;
        Ok(match forward(&snap, route, &parts, body, &self.forms, &self.meters, &self.ids, &mut ex).await {
            Ok(resp) => ex.respond(resp, false),
            Err(f) => {
                ex.failed(&f);
                ex.respond(closing(respond::failure(&f), unread), true) // maybe before the body
            }
        })
    }

    /// 503 for a request that cannot be recorded: the log is failing (fail closed), its
    /// writer is gone, or no place in its queue came free in time.
    pub fn unrecorded(&self, why: Fault) -> Response<Body> {
        self.state.audit.state.refused.fetch_add(1, Ordering::Relaxed);
        let mut resp = respond::failure(&why.into());
        let id = HeaderValue::from_static("kwreq_unrecorded");
        resp.headers_mut().insert(&STRIPE_REQUEST_ID, id.clone());
        resp.headers_mut().insert(&REQUEST_ID, id);
        resp
    }

    /// Record a request that hyper refused while parsing it, before keyward saw it: hyper
    /// has already answered it with a bare `status`. Such a record has no method or path.
    /// Like every refusal's it never waits: past the refusals' budgets it is folded, so that
    /// a flood of garbage can neither queue ahead of real requests nor rotate the log away.
    pub fn record_unparsed(&self, client_ip: IpAddr, status: u16, reason: &'static str) {
        let record = AccessRecord {
            decision: Decision::Deny,
            reason: reason.into(),
            status,
            ..new_record(&self.ids, client_ip, &self.state.snapshot.load().version)
        };
        self.state.metrics.observe(&record, None);
        self.state.audit.refusal(record);
    }
}

/// Refused before anything is read or sent: answered and recorded at once, so that the caller
/// (token or not) holds no place in the access-log queue while it reads. `enough`: an
/// unproven connection refused `limits.refusals_per_connection` times, closed after this
/// answer (a caller without a token gets a few tries, not a connection to send refusals on).
fn refuse_now(caller: &Caller, f: &Failure, enough: bool, unread: bool, ex: Exchange) -> Response<Body> {
    // A tunnel whose host is no longer intercepted, or whose token is no longer good,
    // carries nothing more: it is closed after this answer.
    let tunnel_over = matches!(f, Failure::HostNotProxied { .. } | Failure::ProxyTokenInvalid { .. });
    if (tunnel_over || enough)
        && let Some(close) = &caller.close
    {
        close.cancel();
    }
    ex.refuse(closing(respond::failure(&Refusal::Denied(f.clone())), unread || enough))
}

/// keyward's own answer to an HTTP/1.1 request whose body it has not read (`unread`): hyper
/// closes such a connection after the answer, so the answer says so, or a client could send
/// its next request on a connection that is closing.
fn closing(mut resp: Response<Body>, unread: bool) -> Response<Body> {
    if unread {
        resp.headers_mut().insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The phases of a call the policy let go.
#[allow(clippy::too_many_arguments)]
async fn forward(
    snap: &Arc<Snapshot>,
    route: Route<'_>,
    parts: &Parts,
    body: Incoming,
    forms: &Arc<Semaphore>,
    meters: &MeterSessions,
    ids: &RequestIds,
    ex: &mut Exchange,
) -> Result<Response<Body>, Refusal> {
    let (body, form) = check_body(snap, route, parts, body, forms, ex).await?;
    let (mut req, up, secret) = rewrite_request(snap, route, parts, body, ex)?;
    // Spend caps: priced and reserved before anything leaves (boxed: the rare money paths
    // would otherwise size every call's future).
    let reservation = match route.entry.is_some_and(|e| e.money.is_some()) {
        true => {
            let state = ex.state().clone();
            let form = form.unwrap_or_default();
            Box::pin(spend::reserve(&state, ids, snap, route, parts, &form, &secret, ex)).await?
        }
        false => None,
    };
    let mut credentials = scrub::Credentials::new(secret);
    let meter = route.entry.filter(|e| e.method == http::Method::POST).map(|e| &*e.template);
    if meter == Some(meter::STREAM) {
        // Boxed, as is the session answer below: the rare meter paths would otherwise size
        // every call's future (the request path's future is one allocation per request).
        match Box::pin(meter::stream_session(snap, route, parts, meters)).await? {
            Ok(token) => {
                let mut auth = HeaderValue::try_from(format!("Bearer {}", token.as_str()))
                    .map_err(|_| Refusal::from(Fault::Internal))?;
                auth.set_sensitive(true);
                req.headers_mut().insert(AUTHORIZATION, auth);
                credentials.also_token(Arc::new(token));
            }
            // The caller's body was never sent: over HTTP/1.1 the connection closes after this.
            Err(stripes_refusal) => {
                return Ok(closing(stripes_refusal, parts.version < http::Version::HTTP_2));
            }
        }
    }
    let sent = send(snap, up, req, ex).await;
    if let Some(r) = reservation {
        Box::pin(r.settle(sent.as_ref().ok().map(|(a, _)| a.status()), ex)).await;
    }
    let (answer, deadline) = sent?;
    // A rotation may have swapped the secret while the call was out: its new version too.
    if let Some(now) = snap.secrets[route.service.secret].serving() {
        credentials.also_secret(now);
    }
    let resp = rewrite_response(answer, parts, deadline, credentials, ex);
    if meter == Some(meter::SESSION) && resp.status().is_success() {
        return Box::pin(meter::session_answer(resp, snap, route, parts, meters)).await;
    }
    Ok(resp)
}

/// Phase 5, the body rules as the policy shaped them (`Route::body`): its size, how long it
/// takes to arrive, and what a form or multipart body carries. Form bodies are read whole here,
/// and handed back too (for the spend caps).
async fn check_body(
    snap: &Arc<Snapshot>,
    route: Route<'_>,
    parts: &Parts,
    body: Incoming,
    forms: &Arc<Semaphore>,
    ex: &mut Exchange,
) -> Result<(Body, Option<Bytes>), Failure> {
    let limit = snap.limits.max_body_bytes;
    let declared = parts.headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ex.deny(Failure::BodyTooLarge { limit }));
    }
    let signals = ex.signals.clone();
    let body = Idle::new(body, snap.timeouts.request_body_idle, signals.clone());
    // A streamed body is searched for tokens as it goes (a form is, whole, by `check_form`).
    let streamed = |body: Body| {
        let body = NoTokens::new(body, snap.clone(), signals.clone());
        let counted = Metered::new(body, Count::In(signals.clone()), ());
        Limited::new(counted, limit as usize).map_err(BoxError::from).boxed()
    };
    Ok(match route.body {
        BodyShape::Form => {
            // Its share of the forms' budget, for as long as the form is held.
            let size =
                declared.map_or(snap.limits.max_form_bytes, |n| n as usize).min(snap.limits.max_form_bytes);
            let kib = (size.div_ceil(1024) as u32).max(1);
            let within = snap.timeouts.form_body;
            let (form, budget) = tokio::time::timeout(within, async {
                let budget = forms.clone().acquire_many_owned(kib).await.expect("never closed");
                Ok((read_form(body, snap.limits.max_form_bytes, within).await?, budget))
            })
            .await
            .unwrap_or(Err(Failure::BodyTimeout))
            .map_err(|f| ex.deny(f))?;
            ex.signals.bytes_in.store(form.len() as u64, Ordering::Relaxed);
            let token = policy::identity::token_from(&parts.headers, AUTHORIZATION).unwrap_or_default();
            if let Some(f) =
                policy::check_form(&snap.policy, route.service, &form, &token).map_err(|f| ex.deny(f))?
            {
                ex.would_deny(&f);
            }
            let kept = form.clone();
            (
                Metered::new(Full::new(form).map_err(|e| match e {}), Count::Nothing, budget).boxed(),
                Some(kept),
            )
        }
        BodyShape::Multipart(boundary) => {
            (streamed(PartNames::new(body, boundary, ex.signals.clone()).boxed()), None)
        }
        BodyShape::Other => (streamed(body.boxed()), None),
    })
}

/// Phase 6: the upstream request: the caller's headers less credentials and hop-by-hop ones,
/// the real secret, the upstream's URI; and which upstream and egress address it leaves by.
fn rewrite_request<'s>(
    snap: &'s Snapshot,
    route: Route<'s>,
    parts: &Parts,
    body: Body,
    ex: &mut Exchange,
) -> Result<(Request<Body>, Outbound<'s>, Arc<crate::secrets::Loaded>), Refusal> {
    let up = &snap.upstreams[route.upstream];
    let secret = snap.secrets[route.service.secret].serving().ok_or(Fault::SecretStale)?;
    ex.record.secret_version = secret.version;
    ex.record.livemode = policy::identity::key_livemode(secret.value.expose());
    if let Err(f) = policy::secret_mode(route.service, ex.record.livemode) {
        tracing::error!(
            service = &*route.service.name,
            request_id = ex.record.request_id,
            "the service's secret is not of its configured livemode; refusing (503)"
        );
        return Err(f.into());
    }
    let headers = upstream::request_headers(&parts.headers, secret.value.expose()).ok_or(Fault::Internal)?;
    let egress = route.service.egress_ip.or(up.egress_ip);
    ex.record.egress_ip = egress;
    let client = up.client(egress).ok_or(Fault::Internal)?;
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = up.uri(parts.uri.path_and_query());
    *req.headers_mut() = headers;
    Ok((req, Outbound { up, client, service: &route.service.name }, secret))
}

/// Where a request leaves by: the upstream and its client for the chosen egress address.
struct Outbound<'s> {
    up: &'s upstream::Upstream,
    client: &'s upstream::Client,
    /// The service it goes for (its share of the upstream's HTTP/2 streams).
    service: &'s Arc<str>,
}

/// Phase 7: send, within `timeouts.upstream`; returns the answer and the deadline its body
/// must also keep. A failure here is logged with its cause, the upstream and the request id.
async fn send(
    snap: &Snapshot,
    out: Outbound<'_>,
    req: Request<Body>,
    ex: &mut Exchange,
) -> Result<(Response<Answer>, tokio::time::Instant), Refusal> {
    let started = Instant::now();
    let timeout = snap.timeouts.upstream;
    // One deadline for the whole answer: its head, then the rest of its body.
    let deadline = tokio::time::Instant::from_std(started) + timeout;
    let answer = tokio::time::timeout_at(deadline, out.client.request(req, out.service, deadline)).await;
    ex.record.upstream_ms = Some(started.elapsed().as_secs_f64() * 1e3);
    let (request_id, upstream, url) = (&ex.record.request_id, &*out.up.name, &out.up.url);
    match answer {
        Err(_) => {
            tracing::warn!(request_id, upstream, url, ?timeout, "upstream did not answer in time (504)");
            Err(Fault::UpstreamTimeout.into())
        }
        Ok(Err(_)) if let Some(stop) = ex.signals.body_stop(snap.limits.max_body_bytes) => {
            Err(body_stopped(snap, stop, ex).into())
        }
        Ok(Err(e)) => {
            let cause = upstream::causes(&*e);
            tracing::warn!(request_id, upstream, url, cause, "upstream request failed (502)");
            Err(Fault::UpstreamUnavailable.into())
        }
        // An upstream that answered before the body was in: the token never left, but the
        // call is refused all the same.
        Ok(Ok(_)) if let Some(e) = ex.signals.token() => {
            Err(body_stopped(snap, BodyStop::Token(e), ex).into())
        }
        Ok(Ok(resp)) if upstream::encoded(resp.headers()) => {
            tracing::warn!(request_id, upstream, url, "upstream answer was compressed; not passed on (502)");
            Err(Fault::UpstreamEncodingRefused.into())
        }
        Ok(Ok(resp)) => Ok((resp, deadline)),
    }
}

/// What the caller gets when its body stopped the call on the way (`Signals::body_stop`).
fn body_stopped(snap: &Snapshot, stop: BodyStop, ex: &mut Exchange) -> Failure {
    match stop {
        BodyStop::TooLarge => Failure::BodyTooLarge { limit: snap.limits.max_body_bytes },
        BodyStop::Late => Failure::BodyTimeout,
        BodyStop::Token(e) => ex.deny(policy::exposed_in(&snap.policy, e, "the body")),
        BodyStop::Refused => {
            ex.deny(Failure::NonCanonical("has a multipart body that is not in the one shape keyward reads"))
        }
    }
}

/// Phase 8: the upstream's answer as the caller gets it: hop-by-hop headers dropped, framed
/// by the caller's protocol, its body cut off at the deadline.
fn rewrite_response(
    mut resp: Response<Answer>,
    parts: &Parts,
    deadline: tokio::time::Instant,
    credentials: scrub::Credentials,
    ex: &mut Exchange,
) -> Response<Body> {
    upstream::strip_response_headers(resp.headers_mut());
    upstream::strip_reason_phrase(resp.extensions_mut());
    if credentials.headers(resp.headers_mut()) {
        ex.signals.raise(Signal::Scrubbed);
    }
    *resp.version_mut() = parts.version;
    ex.record.upstream_request_id =
        resp.headers().get("request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
    let signals = ex.signals.clone();
    resp.map(|b| Scrub::new(Deadline::new(b, deadline, signals.clone()), credentials, signals).boxed())
}

/// A form body, whole: at most `limit` bytes, arriving within `within` (and with no pause
/// longer than the body's own idle timeout).
async fn read_form(body: Idle<Incoming>, limit: usize, within: Duration) -> Result<Bytes, Failure> {
    let signals = body.signals();
    match tokio::time::timeout(within, Limited::new(body, limit).collect()).await {
        Err(_) => Err(Failure::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(Failure::FormTooLarge { limit }),
        Ok(Err(_)) if signals.raised(Signal::BodyLate) => Err(Failure::BodyTimeout),
        Ok(Err(_)) => Err(Failure::BodyUnreadable),
    }
}
