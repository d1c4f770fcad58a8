//! Who is calling: the token a request presents (or a tunnel's `CONNECT` did), whether it is
//! known, suspended, good now, and allowed from the caller's address and certificate.

use http::header::AUTHORIZATION;
use ipnet::IpNet;

use crate::policy::facts::RequestFacts;
use crate::policy::failure::Failure;
use crate::policy::identity::{TokenHash, hash_token, redact, token_from};
use crate::policy::model::{Policy, Service, Token, TokenRef};

/// A `Proxy-Authorization` refused: why, and whose token it was when it was refused for the
/// caller's address (which counts toward the service's `quarantine`, as on the reverse port).
#[derive(Debug)]
pub struct ProxyRefusal<'s> {
    pub failure: Failure,
    pub from_elsewhere: Option<(&'s Service, &'s Token)>,
}

/// The token of a `CONNECT`'s `Proxy-Authorization`, by its hash: its service and token, if
/// it is known, valid now and allowed from the caller's address.
pub fn proxy_identify<'s>(
    policy: &'s Policy,
    hash: &TokenHash,
    facts: &RequestFacts<'_>,
) -> Result<(&'s Service, &'s Token), ProxyRefusal<'s>> {
    let invalid = |why| ProxyRefusal { failure: Failure::ProxyTokenInvalid { why }, from_elsewhere: None };
    let found = policy.tokens.get(hash).ok_or(invalid("is not known to keyward"))?;
    let (service, token) = lookup(policy, found);
    if (facts.suspended)(token) {
        return Err(invalid("is suspended"));
    }
    match validity(service, token, facts) {
        Ok(()) => Ok((service, token)),
        Err(Failure::ExpiredToken { .. }) => Err(invalid("has expired")),
        Err(Failure::RevokedToken { .. }) => Err(invalid("was revoked")),
        Err(Failure::TokenNotYetValid { .. }) => Err(invalid("is not valid yet")),
        Err(Failure::IpNotAllowed) => Err(ProxyRefusal {
            from_elsewhere: Some((service, token)),
            ..invalid("does not allow calls from this address")
        }),
        Err(failure) => Err(ProxyRefusal { failure, from_elsewhere: None }),
    }
}

pub(crate) fn lookup<'s>(policy: &'s Policy, found: &TokenRef) -> (&'s Service, &'s Token) {
    let service = &policy.services[found.service as usize];
    (service, &service.tokens[found.token as usize])
}

/// Who presented which token: the service, the token, and the token as presented.
pub(crate) type Identified<'s> = (&'s Service, &'s Token, std::borrow::Cow<'s, str>);
/// Why identifying failed, and whose token it was once that is known.
pub(crate) type Unidentified<'s> = (Failure, Option<(&'s Service, &'s Token)>);

/// Phase 1: the token, its validity and the caller's address. A refusal says who it was,
/// once the token is known.
pub(crate) fn identify<'s>(
    policy: &'s Policy,
    facts: &RequestFacts<'s>,
) -> Result<Identified<'s>, Unidentified<'s>> {
    // Two could be read two ways (the first, the last, both joined): refused, never chosen.
    if facts.parts.headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
        return Err((Failure::NonCanonical("carries more than one Authorization header"), None));
    }
    let Some(presented) = token_from(&facts.parts.headers, AUTHORIZATION) else {
        return Err((Failure::MissingToken, None));
    };
    let Some(found) = policy.tokens.get(&hash_token(&presented)) else {
        return Err((Failure::InvalidToken { redacted: redact(&presented) }, None));
    };
    let (service, token) = lookup(policy, found);
    // Suspended is suspended, whatever else holds of the token now.
    if (facts.suspended)(token) {
        return Err((Failure::SuspendedToken, Some((service, token))));
    }
    let named = |f| match f {
        Failure::ExpiredToken { .. } => Failure::ExpiredToken { redacted: redact(&presented) },
        Failure::RevokedToken { .. } => Failure::RevokedToken { redacted: redact(&presented) },
        Failure::TokenNotYetValid { .. } => Failure::TokenNotYetValid { redacted: redact(&presented) },
        other => other,
    };
    match validity(service, token, facts) {
        Ok(()) => Ok((service, token, presented)),
        Err(f) => Err((named(f), Some((service, token)))),
    }
}

/// Whether a known token is good now, from this address. Its refusals name no token: the
/// caller, who knows how it was presented, names it.
fn validity(service: &Service, token: &Token, facts: &RequestFacts<'_>) -> Result<(), Failure> {
    if token.revoked.is_some_and(|t| facts.now >= t) {
        return Err(Failure::RevokedToken { redacted: String::new() });
    }
    if token.expires.is_some_and(|t| facts.now >= t) {
        return Err(Failure::ExpiredToken { redacted: String::new() });
    }
    if token.not_before.is_some_and(|t| facts.now < t) {
        return Err(Failure::TokenNotYetValid { redacted: String::new() });
    }
    let allowed = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&facts.client_ip));
    if !allowed(&service.source_ips) || token.source_ips.as_deref().is_some_and(|n| !allowed(n)) {
        return Err(Failure::IpNotAllowed);
    }
    // Sender-constrained: a service that names client identities takes its tokens only over a
    // connection whose verified certificate carries one of them.
    if !service.client_ids.is_empty() {
        if facts.client_ids.is_empty() {
            return Err(Failure::ClientCertRequired);
        }
        if !facts.client_ids.iter().any(|id| service.client_ids.contains(id)) {
            return Err(Failure::ClientCertNotAllowed);
        }
    }
    Ok(())
}
