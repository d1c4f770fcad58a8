//! The one place a failure becomes a response: Stripe's error shape, so the SDKs raise their
//! own exceptions, and `Stripe-Should-Retry`, so they retry only what a retry can change.

use bytes::Bytes;
use http::Response;
use http::header::{CONTENT_TYPE, HeaderValue};
use http_body_util::{BodyExt, Full};

use super::refusal::Refusal;
use crate::upstream::Body;

pub fn failure(f: &Refusal) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(f.body())).map_err(|e| match e {}).boxed());
    *resp.status_mut() = f.status();
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let retry = if f.should_retry() { "true" } else { "false" };
    h.insert("stripe-should-retry", HeaderValue::from_static(retry));
    if let Some(secs) = f.retry_after() {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if f.status() == http::StatusCode::PROXY_AUTHENTICATION_REQUIRED {
        h.insert(http::header::PROXY_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"keyward\""));
    }
    resp
}
