//! The upstream calls of meter events (see `meter`): a session made with the secret key for a
//! stream call, and a service's own session answer, whose token keyward keeps.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use zeroize::Zeroizing;

use super::{Key, MeterSessions, SESSION, answer_for_caller, parse_session};
use crate::control::snapshot::Snapshot;
use crate::policy::{self, Failure, Route};
use crate::serve::refusal::{Fault, Refusal};
use crate::serve::scrub;
use crate::upstream::{self, Body};

/// The session token a stream call is sent with (see `meter`), or Stripe's answer when it
/// would not make one.
pub async fn stream_session(
    snap: &Snapshot,
    route: Route<'_>,
    parts: &Parts,
    meters: &MeterSessions,
) -> Result<Result<Zeroizing<String>, Response<Body>>, Refusal> {
    let secret = snap.secrets[route.service.secret].serving().ok_or(Fault::SecretStale)?;
    let key = Key::of(secret.value.expose(), parts);
    let made = meters.token(&key, make_session(snap, route, parts, secret.clone())).await;
    match made {
        Ok(token) => Ok(Ok(token)),
        Err(Made::Refused(answer)) => Ok(Err(answer)),
        Err(Made::Failed(f)) => Err(f),
    }
}

enum Made {
    /// Stripe answered, but not with a session: its answer goes to the caller.
    Refused(Response<Body>),
    Failed(Refusal),
}

/// `POST /v2/billing/meter_event_session` with the secret key, to the upstream the catalog
/// routes it to, with the caller's `Stripe-Version` and Connect context.
async fn make_session(
    snap: &Snapshot,
    route: Route<'_>,
    parts: &Parts,
    secret: Arc<crate::secrets::Loaded>,
) -> Result<(Zeroizing<String>, i64), Made> {
    let failed = |f: Refusal| Made::Failed(f);
    let entry =
        snap.policy.catalog.classify(&http::Method::POST, SESSION).ok_or(failed(Fault::Internal.into()))?;
    let i = snap.policy.routes[entry.index]
        .ok_or(failed(Failure::UpstreamNotConfigured(entry.upstream.clone()).into()))?;
    let up = &snap.upstreams[i];
    let client = up.client(route.service.egress_ip.or(up.egress_ip)).ok_or(failed(Fault::Internal.into()))?;
    let mut headers = http::HeaderMap::new();
    for name in ["stripe-version", "stripe-context", "stripe-account"] {
        if let Some(v) = parts.headers.get(name) {
            headers.insert(name, v.clone());
        }
    }
    let mut auth = HeaderValue::try_from(format!("Bearer {}", secret.value.expose()))
        .map_err(|_| failed(Fault::Internal.into()))?;
    auth.set_sensitive(true);
    headers.insert(AUTHORIZATION, auth);
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(http::header::ACCEPT_ENCODING, HeaderValue::from_static("identity"));
    let path = http::uri::PathAndQuery::from_static(SESSION);
    let mut req = Request::new(Full::new(Bytes::from_static(b"{}")).map_err(|e| match e {}).boxed());
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = up.uri(Some(&path));
    *req.headers_mut() = headers;
    let deadline = tokio::time::Instant::now() + snap.timeouts.upstream;
    let answer = tokio::time::timeout_at(deadline, client.request(req, &route.service.name, deadline)).await;
    let answer = match answer {
        Err(_) => return Err(failed(Fault::UpstreamTimeout.into())),
        Ok(Err(e)) => {
            tracing::warn!(
                upstream = &*up.name,
                cause = upstream::causes(&*e),
                "meter event session request failed (502)"
            );
            return Err(failed(Fault::UpstreamUnavailable.into()));
        }
        Ok(Ok(a)) if upstream::encoded(a.headers()) => {
            tracing::warn!(upstream = &*up.name, "meter event session answer was compressed (502)");
            return Err(failed(Fault::UpstreamEncodingRefused.into()));
        }
        Ok(Ok(a)) => a,
    };
    let (mut head, body) = answer.into_parts();
    let body = tokio::time::timeout_at(deadline, Limited::new(body, MAX_SESSION_ANSWER).collect())
        .await
        .map_err(|_| failed(Fault::UpstreamTimeout.into()))?
        .map_err(|_| failed(Fault::UpstreamUnavailable.into()))?
        .to_bytes();
    if head.status.is_success() {
        return parse_session(&body).ok_or_else(|| {
            tracing::warn!(upstream = &*up.name, "a meter event session answer without a token (502)");
            failed(Fault::UpstreamUnavailable.into())
        });
    }
    // Stripe's answer goes to the caller: like every answer, never with the secret in it.
    upstream::strip_response_headers(&mut head.headers);
    upstream::strip_reason_phrase(&mut head.extensions);
    let mut body = body.to_vec();
    let credentials = scrub::Credentials::new(secret);
    if credentials.headers(&mut head.headers) | credentials.replace_all(&mut body) {
        tracing::warn!(
            upstream = &*up.name,
            "the upstream's answer carried the secret key; keyward replaced it"
        );
    }
    head.headers.remove(CONTENT_LENGTH);
    head.version = parts.version;
    Err(Made::Refused(Response::from_parts(
        head,
        Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed(),
    )))
}

/// The longest answer to a session request keyward reads (Stripe's is a few hundred bytes).
const MAX_SESSION_ANSWER: usize = 64 * 1024;

/// A service's own session request, answered: keyward keeps Stripe's token and gives the
/// caller its keyward token in its place. An answer it cannot read that way is not passed on.
pub async fn session_answer(
    resp: Response<Body>,
    snap: &Snapshot,
    route: Route<'_>,
    parts: &Parts,
    meters: &MeterSessions,
) -> Result<Response<Body>, Refusal> {
    let (mut head, mut body) = resp.into_parts();
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Fault::UpstreamUnavailable)?;
        read.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..]));
        if read.len() > MAX_SESSION_ANSWER {
            return Err(Fault::UpstreamUnavailable.into());
        }
    }
    let body = read;
    let caller = policy::identity::token_from(&parts.headers, AUTHORIZATION).unwrap_or_default();
    let (Some((token, expires_at)), Some(answer)) = (parse_session(&body), answer_for_caller(&body, &caller))
    else {
        tracing::warn!("a meter event session answer without a token (502)");
        return Err(Fault::UpstreamUnavailable.into());
    };
    let secret = snap.secrets[route.service.secret].serving().ok_or(Fault::SecretStale)?;
    meters.keep(&Key::of(secret.value.expose(), parts), token, expires_at).await;
    head.headers.insert(CONTENT_LENGTH, HeaderValue::from(answer.len()));
    Ok(Response::from_parts(head, Full::new(Bytes::from(answer)).map_err(|e| match e {}).boxed()))
}
