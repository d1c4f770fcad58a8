//! Spend caps on the request path: a filter between the body check and the send. The pure
//! policy (`policy::spend`) says what the call moves; when the request does not say (a refund
//! carries no currency, and without `amount` refunds what remains), keyward reads the object
//! first with the real key, under the call's account context: that GET has an access record
//! of its own (`spend = "priced"`). Then the ledger (`control::spend`) reserves the amount, and
//! the answer settles it: 2xx committed, 4xx released, anything else held. With
//! `[ratelimit] redis` the ledger is Redis's (`control::spend::shared`), one budget for every
//! replica; while it cannot be reached, capped calls are refused (503
//! `spend_limit_unavailable`).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{AUTHORIZATION, HeaderValue};
use http::request::Parts;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};

use crate::audit::{self, AccessRecord};
use crate::control::limits::Store;
use crate::control::snapshot::Snapshot;
use crate::control::spend::{self, Ledger, Over, Reserved};
use crate::control::state::State;
use crate::policy::catalog::MoneyKind;
use crate::policy::spend::{Lookup, Plan, Refusal};
use crate::policy::{self, Decision, Failure, Mode, Route};
use crate::serve::exchange::{Exchange, RequestIds, new_record};
use crate::upstream;

/// The longest answer to a pricing GET keyward reads (an invoice with its lines is the largest).
const MAX_ANSWER: usize = 1 << 20;

/// A capped call's amount, reserved: settled by the answer's status. Dropped unsettled (the
/// call was abandoned on the way) it stays counted, as `held`.
pub struct Reservation {
    state: Arc<State>,
    ledger: Books,
    reserved: Reserved,
    service: Arc<str>,
    kind: MoneyKind,
    currency: String,
    amount: u64,
    settled: bool,
}

/// Where a reservation was made: this replica's ledger, or Redis's.
enum Books {
    Local(Arc<Ledger>),
    Shared(Arc<Store>),
}

impl Reservation {
    /// The API answered with `status`, or (`None`) keyward got no answer (502/504, timeout,
    /// reset): committed on 2xx, released on 4xx, held otherwise.
    pub async fn settle(mut self, status: Option<StatusCode>, ex: &mut Exchange) {
        self.settled = true;
        if self.reserved.replay {
            return;
        }
        let outcome = match status {
            Some(s) if s.is_success() => "committed",
            Some(s) if s.is_client_error() => match &self.ledger {
                Books::Local(ledger) => {
                    ledger.release(&self.reserved);
                    "released"
                }
                // Not given back while the store is out: it stays counted (fail safe).
                Books::Shared(store) => match spend::shared::release(store, &self.reserved).await {
                    Ok(()) => "released",
                    Err(_) => "held",
                },
            },
            _ => "held",
        };
        ex.record.spend = Some(outcome.into());
        self.count(outcome);
    }

    fn count(&self, outcome: &'static str) {
        self.state.metrics.spent(&self.service, self.kind.as_str(), &self.currency, outcome, self.amount);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled && !self.reserved.replay {
            self.count("held");
        }
    }
}

/// The spend filter: `Ok(None)` lets the call go uncounted (no money, or none capped, or
/// report mode's would-deny), `Ok(Some)` with its amount reserved; `Err` refuses it.
#[allow(clippy::too_many_arguments)]
pub async fn reserve(
    state: &Arc<State>,
    ids: &RequestIds,
    snap: &Snapshot,
    route: Route<'_>,
    parts: &Parts,
    form: &[u8],
    secret: &crate::secrets::Loaded,
    ex: &mut Exchange,
) -> Result<Option<Reservation>, Failure> {
    let Some(entry) = route.entry.filter(|e| e.money.is_some()) else { return Ok(None) };
    let account = call_account(parts);
    let mut plan = policy::spend::plan(route.service, entry, parts.uri.path(), form, account);
    if let Plan::Lookup(lookup) = &plan {
        plan = match price(state, ids, snap, route, parts, secret, lookup, ex).await {
            Ok(answer) => policy::spend::priced(lookup, &answer),
            Err(message) => Plan::Refused(Refusal {
                failure: Failure::SpendLimitUnavailable {
                    message: format!(
                        "keyward could not price this call ({message}), and refuses a capped call it \
                         cannot price (keyward spend cap). Retry later."
                    ),
                },
                kind: lookup.kind,
                reason: "unpriced",
            }),
        };
    }
    let spend = match plan {
        Plan::Uncapped(amount) => {
            if let Some(a) = amount {
                (ex.record.amount, ex.record.currency) = (Some(a.value), Some(a.currency));
            }
            return Ok(None);
        }
        Plan::Lookup(_) => return Err(ex.deny(Failure::Internal)), // priced above
        Plan::Refused(r) => return refused(state, route, r, ex),
        Plan::Priced(spend) => spend,
    };
    (ex.record.amount, ex.record.currency) = (Some(spend.amount.value), Some(spend.amount.currency.clone()));
    let key = parts.headers.get("idempotency-key").map(|k| {
        spend::idempotency_hash(&route.service.name, account, &String::from_utf8_lossy(k.as_bytes()))
    });
    let (reserved, ledger) = match &snap.ratelimits.store {
        None => (snap.spend.reserve(&spend, key, spend::now_ms()), Books::Local(snap.spend.clone())),
        Some(store) => match spend::shared::reserve(store, &spend, key).await {
            Ok(r) => (r, Books::Shared(store.clone())),
            Err(spend::shared::Unavailable(why)) => {
                let failure = Failure::SpendLimitUnavailable {
                    message: format!(
                        "{} has a keyward spend cap on {} and {why}, so keyward refuses capped calls \
                         until it answers (money caps fail closed). Retry later.",
                        route.service.name,
                        spend.cap.kind.as_str()
                    ),
                };
                let r = Refusal { failure, kind: spend.cap.kind, reason: "unavailable" };
                return refused(state, route, r, ex);
            }
        },
    };
    match reserved {
        Ok(reserved) => {
            ex.record.spend = Some(if reserved.replay { "replayed" } else { "held" }.into());
            Ok(Some(Reservation {
                state: state.clone(),
                ledger,
                reserved,
                service: route.service.name.clone(),
                kind: spend.cap.kind,
                currency: spend.amount.currency.clone(),
                amount: spend.amount.value,
                settled: false,
            }))
        }
        Err(Over::Day { left, frees_at }) => {
            refused(state, route, policy::spend::over_day(&spend, left, frees_at), ex)
        }
        Err(Over::Full { max }) => refused(state, route, policy::spend::ledger_full(&spend, max), ex),
    }
}

/// A spend refusal: counted, recorded; report mode forwards the call (uncounted, as enforcing
/// would not have counted it).
fn refused(
    state: &State,
    route: Route<'_>,
    r: Refusal,
    ex: &mut Exchange,
) -> Result<Option<Reservation>, Failure> {
    state.metrics.spend_refused(&route.service.name, r.kind.as_str(), r.reason);
    ex.record.spend = Some("refused".into());
    if route.service.mode == Mode::Report {
        ex.would_deny(&r.failure);
        return Ok(None);
    }
    Err(ex.deny(r.failure))
}

/// The account the call acts for: `Stripe-Account`, else `Stripe-Context`.
fn call_account(parts: &Parts) -> Option<&str> {
    let h = &parts.headers;
    h.get("stripe-account").or_else(|| h.get("stripe-context")).and_then(|v| v.to_str().ok())
}

/// `GET lookup.path` with the real key, under the call's `Stripe-Account` / `Stripe-Context`
/// and `Stripe-Version`, to the call's upstream; recorded on its own line. The answer's body,
/// or why there is none to price from.
#[allow(clippy::too_many_arguments)]
async fn price(
    state: &Arc<State>,
    ids: &RequestIds,
    snap: &Snapshot,
    route: Route<'_>,
    parts: &Parts,
    secret: &crate::secrets::Loaded,
    lookup: &Lookup<'_>,
    ex: &Exchange,
) -> Result<Bytes, String> {
    // Its record's place first: no call with the real key goes unrecorded.
    let slot =
        state.audit.slot(&route.service.name).await.map_err(|_| "the access log has no room".to_string())?;
    let up = &snap.upstreams[route.upstream];
    let egress = route.service.egress_ip.or(up.egress_ip);
    let client = up.client(egress).ok_or("no upstream client")?;
    let path_only = lookup.path.split('?').next().unwrap_or("").to_string();
    let entry = snap.policy.catalog.classify(&http::Method::GET, &path_only);
    let c = &ex.record;
    let mut rec = AccessRecord {
        service: c.service.clone(),
        token_id: c.token_id.clone(),
        mode: c.mode,
        connect_host: c.connect_host.clone(),
        client_id: c.client_id.clone(),
        method: "GET".into(),
        path: audit::capped(&path_only, audit::MAX_PATH),
        template: entry.map(|e| e.template.clone()),
        permission: entry.map(|e| e.name.clone()),
        access: entry.map(|e| e.access.as_str().into()),
        decision: Decision::Allow,
        reason: "ok".into(),
        upstream: Some(up.name.clone()),
        stripe_account: c.stripe_account.clone(),
        egress_ip: egress,
        secret_version: secret.version,
        livemode: c.livemode,
        spend: Some("priced".into()),
        ..new_record(ids, c.client_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()), &c.config_version)
    };
    let mut headers = http::HeaderMap::new();
    for name in ["stripe-version", "stripe-context", "stripe-account"] {
        if let Some(v) = parts.headers.get(name) {
            headers.insert(name, v.clone());
        }
    }
    let mut auth =
        HeaderValue::try_from(format!("Bearer {}", secret.value.expose())).map_err(|_| "an unusable key")?;
    auth.set_sensitive(true);
    headers.insert(AUTHORIZATION, auth);
    headers.insert(http::header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    let pq: http::uri::PathAndQuery = lookup.path.parse().map_err(|_| "an unusable path")?;
    let mut req = Request::new(Empty::<Bytes>::new().map_err(|e| match e {}).boxed());
    *req.method_mut() = http::Method::GET;
    *req.uri_mut() = up.uri(Some(&pq));
    *req.headers_mut() = headers;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + snap.timeouts.upstream;
    let answer = tokio::time::timeout_at(deadline, client.request(req, &route.service.name, deadline)).await;
    let result = match answer {
        Err(_) => Err(format!("GET {path_only} was not answered in time")),
        Ok(Err(e)) => {
            tracing::warn!(upstream = &*up.name, cause = upstream::causes(&*e), "spend pricing GET failed");
            Err(format!("GET {path_only} failed"))
        }
        Ok(Ok(a)) if upstream::encoded(a.headers()) => {
            Err(format!("GET {path_only} was answered compressed"))
        }
        Ok(Ok(a)) => {
            rec.status = a.status().as_u16();
            rec.upstream_request_id =
                a.headers().get("request-id").and_then(|v| v.to_str().ok()).map(str::to_string);
            let status = a.status();
            let body =
                tokio::time::timeout_at(deadline, Limited::new(a.into_body(), MAX_ANSWER).collect()).await;
            match body {
                Ok(Ok(b)) if status.is_success() => {
                    let b = b.to_bytes();
                    rec.bytes_out = b.len() as u64;
                    Ok(b)
                }
                Ok(Ok(_)) => Err(format!("GET {path_only} was answered {}", status.as_u16())),
                _ => Err(format!("the answer to GET {path_only} could not be read")),
            }
        }
    };
    if result.is_err() && rec.status == 0 {
        rec.status = 502;
        rec.reason = "upstream_unavailable".into();
    }
    rec.upstream_ms = Some(started.elapsed().as_secs_f64() * 1e3);
    rec.duration_ms = rec.upstream_ms.unwrap_or_default();
    state.metrics.observe(&rec, None);
    slot.send(rec);
    result
}
