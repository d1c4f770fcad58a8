//! Every client-facing failure, and the one place that turns it into a Stripe-shaped response.

use http::StatusCode;

/// Why a request was refused or failed. Each has a status, a stable snake_case `code()` (used
/// in the response, the access record and metrics) and a Stripe error `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    MissingToken,
    InvalidToken {
        redacted: String,
    },
    ExpiredToken {
        redacted: String,
    },
    TokenNotYetValid {
        redacted: String,
    },
    /// An operator suspended the token (`POST /-/tokens/{id}/suspend`).
    SuspendedToken,
    /// The token's `revoked` time has passed.
    RevokedToken {
        redacted: String,
    },
    IpNotAllowed,
    /// The refusal for the source address that quarantined the token (`quarantine`): answered
    /// as `IpNotAllowed`, recorded as `token_quarantined`.
    Quarantined,
    /// The token's service names `client_ids` and the caller sent no client certificate.
    ClientCertRequired,
    /// The caller's certificate carries none of the service's `client_ids`.
    ClientCertNotAllowed,
    NonCanonical(&'static str),
    /// A keyward token outside `Authorization`: in `place` (`the query string`, `the X header`,
    /// `the body`…). Never forwarded; the record counts the token as exposed, and names
    /// `whose` it is (service, token id) when keyward knows.
    TokenInWrongPlace {
        place: String,
        whose: Option<(std::sync::Arc<str>, std::sync::Arc<str>)>,
    },
    /// No catalog entry: `endpoint` is the method and canonical path, as asked.
    UnknownEndpoint {
        endpoint: String,
    },
    /// The first permission missing (the one the message names), and `also` every other the
    /// checks found missing (the endpoint's and each expansion's): the record lists them all.
    MissingPermission {
        redacted: String,
        permission: String,
        also: Vec<String>,
    },
    AccountNotAllowed {
        account: String,
    },
    DirectPermission {
        permission: String,
    },
    UpstreamNotConfigured(String),
    BodyTooLarge {
        limit: u64,
    },
    FormTooLarge {
        limit: usize,
    },
    BodyUnreadable,
    /// The caller paused its request body longer than allowed.
    BodyTimeout,
    /// The service's `livemode` and its secret's key mode differ (a vault version changed it).
    LivemodeMismatch,
    /// Forward mode: a `CONNECT` (or plain-HTTP request) for a host keyward does not intercept.
    /// `allowed` lists the hosts it does.
    HostNotProxied {
        allowed: String,
    },
    /// Forward mode: a plain-HTTP request (absolute form) on the forward port.
    PlainHttp,
    /// The forward port was sent a request that is neither `CONNECT` nor absolute-form.
    NotProxyRequest,
    /// A request in a tunnel for another host than the tunnel's (`Host` / `:authority`, or the
    /// catalog's upstream for the endpoint).
    Misdirected {
        tunnel: String,
    },
    /// The `Proxy-Authorization` token of a `CONNECT` (or of its tunnel, since) is not valid.
    ProxyTokenInvalid {
        why: &'static str,
    },
    /// The request's token is of another service than its tunnel's `Proxy-Authorization`.
    TunnelServiceMismatch,
    /// The service's `rate` is spent; a call may go again in this many seconds.
    RateLimited {
        retry_after: u64,
    },
    /// The service has `concurrency` calls in flight.
    ConcurrencyLimited,
    /// The shared budget (`upstream_rate`) is too low for a call of this `priority`.
    BudgetLimited {
        retry_after: u64,
        priority: &'static str,
    },
    /// Redis, where the shared limits are kept, is out and `on_redis_error = "deny"`.
    RateLimitUnavailable,
    /// The call would pass one of the service's spend caps (`[[service.spend]]`): the message
    /// names the cap, what is left and when the oldest spend frees (`policy::spend`).
    SpendLimitExceeded {
        message: String,
    },
    /// A capped call keyward could not price (the object it acts on could not be read): it is
    /// refused, never guessed (fail closed).
    SpendLimitUnavailable {
        message: String,
    },
    Internal,
}

impl Failure {
    /// Every permission a `more_permissions_required` refusal lacked, first the one its
    /// message names; none for any other failure.
    pub fn missing(&self) -> impl Iterator<Item = &str> {
        let (first, also): (Option<&String>, &[String]) = match self {
            Failure::MissingPermission { permission, also, .. } => (Some(permission), also),
            _ => (None, &[]),
        };
        first.into_iter().chain(also).map(String::as_str)
    }

    pub fn status(&self) -> StatusCode {
        use Failure::*;
        match self {
            MissingToken
            | InvalidToken { .. }
            | ExpiredToken { .. }
            | TokenNotYetValid { .. }
            | RevokedToken { .. }
            | SuspendedToken => StatusCode::UNAUTHORIZED,
            ClientCertRequired => StatusCode::UNAUTHORIZED,
            ClientCertNotAllowed => StatusCode::FORBIDDEN,
            IpNotAllowed
            | Quarantined
            | UnknownEndpoint { .. }
            | MissingPermission { .. }
            | AccountNotAllowed { .. }
            | DirectPermission { .. }
            | SpendLimitExceeded { .. } => StatusCode::FORBIDDEN,
            NonCanonical(_) | TokenInWrongPlace { .. } => StatusCode::BAD_REQUEST,
            BodyTooLarge { .. } | FormTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyUnreadable => StatusCode::BAD_REQUEST,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            UpstreamNotConfigured(_) => StatusCode::BAD_GATEWAY,
            LivemodeMismatch | RateLimitUnavailable | SpendLimitUnavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RateLimited { .. } | ConcurrencyLimited | BudgetLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            HostNotProxied { .. } | PlainHttp | TunnelServiceMismatch => StatusCode::FORBIDDEN,
            NotProxyRequest => StatusCode::BAD_REQUEST,
            Misdirected { .. } => StatusCode::MISDIRECTED_REQUEST,
            ProxyTokenInvalid { .. } => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        use Failure::*;
        match self {
            MissingToken => "api_key_missing",
            InvalidToken { .. } => "api_key_invalid",
            ExpiredToken { .. } => "api_key_expired",
            TokenNotYetValid { .. } => "api_key_not_yet_valid",
            RevokedToken { .. } | SuspendedToken => "api_key_revoked",
            IpNotAllowed | Quarantined => "ip_not_allowed",
            ClientCertRequired => "client_certificate_required",
            ClientCertNotAllowed => "client_certificate_not_allowed",
            NonCanonical(_) => "non_canonical_request",
            TokenInWrongPlace { .. } => "token_in_wrong_place",
            UnknownEndpoint { .. } => "endpoint_not_in_catalog",
            MissingPermission { .. } => "more_permissions_required",
            AccountNotAllowed { .. } => "account_not_allowed",
            DirectPermission { .. } => "direct_permission_on_connected_account",
            UpstreamNotConfigured(_) => "upstream_not_configured",
            BodyTooLarge { .. } => "request_too_large",
            FormTooLarge { .. } => "form_body_too_large",
            BodyUnreadable => "request_body_unreadable",
            BodyTimeout => "request_body_timeout",
            LivemodeMismatch => "secret_livemode_mismatch",
            HostNotProxied { .. } => "host_not_proxied",
            PlainHttp => "plain_http_refused",
            NotProxyRequest => "not_a_proxy_request",
            Misdirected { .. } => "misdirected_request",
            ProxyTokenInvalid { .. } => "proxy_token_invalid",
            TunnelServiceMismatch => "tunnel_service_mismatch",
            // Stripe's own code: the SDKs raise their RateLimitError.
            RateLimited { .. } | ConcurrencyLimited | BudgetLimited { .. } => "rate_limit",
            RateLimitUnavailable => "rate_limit_unavailable",
            SpendLimitExceeded { .. } => "spend_limit_exceeded",
            SpendLimitUnavailable { .. } => "spend_limit_unavailable",
            Internal => "internal_error",
        }
    }

    /// What the access record and the metrics give as the reason: the `code()`, except for the
    /// limits, which answer with Stripe's one `rate_limit` and are told apart here.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::RateLimited { .. } => "rate_limited",
            Failure::ConcurrencyLimited => "concurrency_limited",
            Failure::BudgetLimited { .. } => "budget_limited",
            Failure::SuspendedToken => "api_key_suspended",
            Failure::Quarantined => "token_quarantined",
            other => other.code(),
        }
    }

    /// Whether it refuses who the caller is (its token, address, certificate, tunnel), rather
    /// than what a known caller asked for: such a refusal proves nothing about the caller.
    pub fn is_identity(&self) -> bool {
        matches!(
            self,
            Failure::MissingToken
                | Failure::InvalidToken { .. }
                | Failure::ExpiredToken { .. }
                | Failure::TokenNotYetValid { .. }
                | Failure::SuspendedToken
                | Failure::RevokedToken { .. }
                | Failure::IpNotAllowed
                | Failure::Quarantined
                | Failure::ClientCertRequired
                | Failure::ClientCertNotAllowed
                | Failure::ProxyTokenInvalid { .. }
                | Failure::TunnelServiceMismatch
                | Failure::TokenInWrongPlace { .. }
        )
    }

    /// The kind of upstream failure it is, as the metrics count them, if it is one.
    pub fn upstream_kind(&self) -> Option<&'static str> {
        matches!(self, Failure::UpstreamNotConfigured(_)).then_some("not_configured")
    }

    /// Whether the request it refuses carried a keyward token where others could read it.
    pub fn exposes_token(&self) -> bool {
        matches!(self, Failure::TokenInWrongPlace { .. })
    }

    /// Seconds after which a retry may succeed (`Retry-After`), for the limits.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Failure::RateLimited { retry_after } | Failure::BudgetLimited { retry_after, .. } => {
                Some(*retry_after)
            }
            Failure::ConcurrencyLimited | Failure::RateLimitUnavailable => Some(1),
            _ => None,
        }
    }

    pub fn message(&self) -> String {
        use Failure::*;
        match self {
            MissingToken => "You did not provide an API key. Provide your keyward token in the \
                             Authorization header, using Bearer auth."
                .into(),
            InvalidToken { redacted } => format!("Invalid API Key provided: {redacted}"),
            ExpiredToken { redacted } => format!("Expired API Key provided: {redacted}"),
            SuspendedToken => {
                "The API key provided has been suspended, by your platform team or by keyward after \
                               repeated calls from addresses the key does not allow, until keyward's \
                               configuration next changes. Ask your platform team for a new one."
                    .into()
            }
            RevokedToken { redacted } => format!(
                "The API key provided has been revoked: {redacted}. Ask your platform team for a new one."
            ),
            TokenNotYetValid { redacted } => {
                format!("API Key provided is not valid yet: {redacted}")
            }
            IpNotAllowed | Quarantined => {
                "The API key provided does not allow requests from your IP address.".into()
            }
            ClientCertRequired => "The API key provided is accepted only over a connection with a client \
                                   certificate, and this connection has none."
                .into(),
            ClientCertNotAllowed => "The API key provided is not accepted with this client certificate: \
                                     it names none of the identities the key is bound to."
                .into(),
            NonCanonical(what) => format!("Request refused: the request target {what}."),
            TokenInWrongPlace { place, .. } => format!(
                "Request refused: it carries a keyward token in {place}. keyward takes its token in \
                 the Authorization header only (and Proxy-Authorization for a CONNECT), and forwards \
                 no request that carries one anywhere else, where the API would log it. Treat the \
                 token as exposed: ask your platform team to rotate it."
            ),
            UnknownEndpoint { endpoint } => format!(
                "keyward's catalog has no entry for {endpoint}, so keyward does not forward it. If it is \
                 an operation of the API, ask your platform team to add it to keyward's catalog \
                 (scripts/sdk-operations.py lists what the SDKs call)."
            ),
            MissingPermission { redacted, permission, .. } => format!(
                "The provided key '{redacted}' does not have the required permissions for this \
                 endpoint. Having the 'rak_{permission}' permission would allow this request to continue."
            ),
            AccountNotAllowed { account } => {
                format!("The provided key is not allowed to make requests on behalf of account '{account}'.")
            }
            DirectPermission { permission } => format!(
                "The '{permission}' permission is a direct permission: it cannot be used on behalf \
                 of a connected account (Stripe-Account)."
            ),
            UpstreamNotConfigured(name) => {
                format!("This endpoint is served by upstream '{name}', which keyward has not configured.")
            }
            BodyTooLarge { limit } => {
                format!("The request body is larger than the {limit} bytes allowed.")
            }
            FormTooLarge { limit } => format!(
                "Form bodies are read whole to check `expand[]`, and this one is larger than the \
                 {limit} bytes allowed. Send fewer parameters per request."
            ),
            BodyUnreadable => "The request body could not be read.".into(),
            BodyTimeout => "The request body did not arrive in time: keyward stopped waiting for it.".into(),
            LivemodeMismatch => "keyward's copy of the upstream API key is not of the mode this service is \
                                 configured for (livemode): keyward does not use it. Tell your platform team."
                .into(),
            HostNotProxied { allowed } => format!(
                "keyward only proxies the payments API's hosts ({allowed}); it opens no tunnel to any \
                 other host, address or port. Reach other hosts directly: list them in NO_PROXY."
            ),
            PlainHttp => "keyward does not forward plain-HTTP requests: an API key never travels over \
                          plain HTTP. Call the API over https:// (CONNECT); list other hosts in NO_PROXY."
                .into(),
            NotProxyRequest => "This is keyward's forward-proxy port: set HTTPS_PROXY to it, so that \
                                clients send CONNECT host:443, or call keyward's reverse-proxy listener."
                .into(),
            Misdirected { tunnel } => {
                format!("This tunnel was opened to {tunnel}: it carries requests for that host only.")
            }
            ProxyTokenInvalid { why } => format!(
                "The keyward token in Proxy-Authorization {why}. Send your keyward token as the proxy \
                 user name (http://TOKEN@keyward:3128) or as Bearer, or send none."
            ),
            TunnelServiceMismatch => "The API key is of another service than the keyward token this \
                                      tunnel was opened with (Proxy-Authorization)."
                .into(),
            RateLimited { retry_after } => format!(
                "Too many requests for this service's rate limit (keyward `rate`): retry in {retry_after} s."
            ),
            ConcurrencyLimited => "Too many requests in flight at once for this service (keyward \
                                   `concurrency`). Retry when one has finished."
                .into(),
            BudgetLimited { retry_after, priority: "critical" } => format!(
                "The budget of calls every service shares toward the payments API (keyward \
                 `upstream_rate`) is spent: retry in {retry_after} s."
            ),
            BudgetLimited { retry_after, priority } => format!(
                "The budget of calls every service shares toward the payments API (keyward \
                 `upstream_rate`) is running low, and what is left is kept for calls of a higher \
                 priority than this service's ({priority}): retry in {retry_after} s."
            ),
            RateLimitUnavailable => "keyward cannot reach the store its rate limits are kept in \
                                     (ratelimit.redis), and refuses calls until it can \
                                     (on_redis_error = \"deny\"). Retry later."
                .into(),
            SpendLimitExceeded { message } | SpendLimitUnavailable { message } => message.clone(),
            Internal => "keyward hit an internal error.".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permission_failure_names_the_first_permission_and_lists_them_all() {
        let f = Failure::MissingPermission {
            redacted: "kw_***abcd".into(),
            permission: "charge_read".into(),
            also: vec!["invoice_read".into()],
        };
        assert_eq!((f.status(), f.code()), (StatusCode::FORBIDDEN, "more_permissions_required"));
        assert!(f.message().contains("Having the 'rak_charge_read' permission would allow"));
        assert_eq!(f.missing().collect::<Vec<_>>(), ["charge_read", "invoice_read"]);
        assert_eq!(Failure::IpNotAllowed.missing().count(), 0);
    }
}
