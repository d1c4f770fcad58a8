//! What keyward answers with instead of the upstream's answer: the policy's refusal of the
//! call (`policy::Failure`), or a failure of keyward's own machinery on the way (`Fault`: the
//! access log, the tunnels, the secret, the upstream). Both are answered in Stripe's error
//! shape by `respond::failure`; only the policy's say anything about the caller.

use http::StatusCode;

use crate::policy::Failure;

/// A failure of what keyward runs on, not a decision about the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    UpstreamUnavailable,
    UpstreamTimeout,
    /// The upstream's answer was compressed (or otherwise encoded) though keyward asked for
    /// `identity`: it is not passed on, as the scrubber cannot read it.
    UpstreamEncodingRefused,
    /// The secret could not be refreshed from the vault for longer than `max_staleness`.
    SecretStale,
    /// The access log cannot be written (fail closed), or its writer is gone.
    AuditUnavailable,
    /// No place in the access-log queue came free in time.
    AuditBusy,
    /// `forward.max_tunnels` are open.
    TunnelsFull,
    Internal,
}

impl Fault {
    pub fn status(self) -> StatusCode {
        match self {
            Fault::UpstreamUnavailable | Fault::UpstreamEncodingRefused => StatusCode::BAD_GATEWAY,
            Fault::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Fault::SecretStale | Fault::AuditUnavailable | Fault::AuditBusy | Fault::TunnelsFull => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Fault::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The error code, which is also the record's reason and the metrics' label.
    pub fn code(self) -> &'static str {
        match self {
            Fault::UpstreamUnavailable => "upstream_unavailable",
            Fault::UpstreamTimeout => "upstream_timeout",
            Fault::UpstreamEncodingRefused => "upstream_encoding_refused",
            Fault::SecretStale => "secret_stale",
            Fault::AuditUnavailable => "audit_log_unavailable",
            Fault::AuditBusy => "audit_queue_full",
            Fault::TunnelsFull => "tunnels_full",
            Fault::Internal => "internal_error",
        }
    }

    /// The kind of upstream failure it is, as the metrics count them (`timeout`, …), if it is one.
    pub fn upstream_kind(self) -> Option<&'static str> {
        match self {
            Fault::UpstreamUnavailable => Some("unavailable"),
            Fault::UpstreamTimeout => Some("timeout"),
            Fault::UpstreamEncodingRefused => Some("encoding_refused"),
            _ => None,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Fault::UpstreamUnavailable => "keyward could not reach the upstream API.",
            Fault::UpstreamTimeout => "The upstream API did not answer in time.",
            Fault::UpstreamEncodingRefused => {
                "The upstream API answered with a compressed body, which keyward does not pass on: it \
                 checks every answer for its secret key."
            }
            Fault::SecretStale => {
                "keyward's copy of the upstream API key could not be refreshed from the vault for longer \
                 than allowed (max_staleness)."
            }
            Fault::AuditBusy => {
                "keyward's access-log queue had no place for this call in time: calls in progress hold \
                 them all. Retry later."
            }
            Fault::AuditUnavailable => {
                "keyward cannot write its access log, so it serves no request until it can. Retry later."
            }
            Fault::TunnelsFull => {
                "keyward has as many tunnels open as it allows (forward.max_tunnels). Retry later."
            }
            Fault::Internal => "keyward hit an internal error.",
        }
    }
}

/// Why keyward answers a call itself.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// The policy refused it (or its body, or a limit).
    Denied(Failure),
    Fault(Fault),
}

impl From<Failure> for Refusal {
    fn from(f: Failure) -> Refusal {
        Refusal::Denied(f)
    }
}

impl From<Fault> for Refusal {
    fn from(f: Fault) -> Refusal {
        Refusal::Fault(f)
    }
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Denied(f) => f.status(),
            Refusal::Fault(f) => f.status(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Denied(f) => f.code(),
            Refusal::Fault(f) => f.code(),
        }
    }

    /// The record's reason and the metrics' label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Denied(f) => f.reason(),
            Refusal::Fault(f) => f.code(),
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::Denied(f) => f.message(),
            Refusal::Fault(f) => f.message().into(),
        }
    }

    /// Seconds after which a retry may succeed (`Retry-After`).
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Refusal::Denied(f) => f.retry_after(),
            Refusal::Fault(_) => None,
        }
    }

    /// Stripe's error `type`: SDKs pick their exception class from status and type.
    fn kind(&self) -> &'static str {
        match self.status().as_u16() {
            500.. => "api_error",
            _ => "invalid_request_error",
        }
    }

    /// SDKs retry 5xx and connection errors; tell them not to retry a decision.
    pub fn should_retry(&self) -> bool {
        self.status().is_server_error() || self.retry_after().is_some()
    }

    /// The JSON body, shaped like Stripe's own errors.
    pub fn body(&self) -> String {
        serde_json::json!({
            "error": { "type": self.kind(), "code": self.code(), "message": self.message() }
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permission_refusal_is_stripe_shaped() {
        let f = Failure::MissingPermission {
            redacted: "kw_***abcd".into(),
            permission: "charge_read".into(),
            also: Vec::new(),
        };
        let r = Refusal::from(f);
        let v: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(r.status(), 403);
        assert!(!r.should_retry());
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "more_permissions_required");
        assert_eq!(
            v["error"]["message"],
            "The provided key 'kw_***abcd' does not have the required permissions for this endpoint. \
             Having the 'rak_charge_read' permission would allow this request to continue."
        );
    }

    #[test]
    fn faults_are_api_errors_worth_a_retry() {
        assert_eq!(Fault::UpstreamUnavailable.status(), 502);
        assert_eq!(Fault::UpstreamTimeout.status(), 504);
        let r = Refusal::from(Fault::UpstreamTimeout);
        let v: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
        assert_eq!(
            (v["error"]["type"].as_str(), v["error"]["code"].as_str()),
            (Some("api_error"), Some("upstream_timeout"))
        );
        assert!(r.should_retry() && !Refusal::from(Failure::IpNotAllowed).should_retry());
        assert_eq!(Refusal::from(Fault::AuditBusy).reason(), "audit_queue_full");
    }
}
