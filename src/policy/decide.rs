//! The pure policy core: who is calling, may they make this call, and where does it go.
//! No sockets, clocks or files: everything it needs is in its arguments.

use std::net::IpAddr;

use http::header::{AUTHORIZATION, HeaderName};
use http::request::Parts;
use ipnet::IpNet;

use crate::control::snapshot::{Service, Snapshot, Token};
use crate::policy::canonical;
use crate::policy::catalog::Entry;
use crate::policy::catalog::permission_name;
use crate::policy::failure::Failure;
use crate::policy::identity::{hash_token, redact, token_from};
use crate::policy::{Level, Mode};

static STRIPE_ACCOUNT: HeaderName = HeaderName::from_static("stripe-account");
static STRIPE_CONTEXT: HeaderName = HeaderName::from_static("stripe-context");

/// The facts of a request that the policy reads.
pub struct RequestFacts<'a> {
    pub parts: &'a Parts,
    pub client_ip: IpAddr,
    /// Unix seconds.
    pub now: i64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Report mode: forwarded, but enforcing would have refused it for this reason.
    WouldDeny(Failure),
    Deny(Failure),
}

/// What was decided, with everything the proxy and the access record need.
#[derive(Debug)]
pub struct Decision<'s> {
    pub verdict: Verdict,
    pub service: Option<&'s Service>,
    pub token: Option<&'s Token>,
    pub entry: Option<&'s Entry>,
    /// Index into `Snapshot::upstreams` of where an allowed call goes.
    pub upstream: Option<usize>,
    /// The connected account the call acts for (`Stripe-Account`), if any.
    pub account: Option<&'s str>,
}

impl<'s> Decision<'s> {
    fn deny(failure: Failure) -> Self {
        Decision {
            verdict: Verdict::Deny(failure),
            service: None,
            token: None,
            entry: None,
            upstream: None,
            account: None,
        }
    }

    pub fn forwards(&self) -> bool {
        !matches!(self.verdict, Verdict::Deny(_))
    }
}

/// Decide a request: identify, check the source address, then authorize.
pub fn decide<'s>(snap: &'s Snapshot, facts: &RequestFacts<'s>) -> Decision<'s> {
    let Some(token) = token_from(&facts.parts.headers, AUTHORIZATION) else {
        return Decision::deny(Failure::MissingToken);
    };
    let Some(found) = snap.tokens.get(&hash_token(&token)) else {
        return Decision::deny(Failure::InvalidToken { redacted: redact(&token) });
    };
    let service = &snap.services[found.service as usize];
    let tok = &service.tokens[found.token as usize];
    let fail = |f| Decision { service: Some(service), token: Some(tok), ..Decision::deny(f) };
    if tok.expires.is_some_and(|t| facts.now >= t) {
        return fail(Failure::ExpiredToken { redacted: redact(&token) });
    }
    if tok.not_before.is_some_and(|t| facts.now < t) {
        return fail(Failure::TokenNotYetValid { redacted: redact(&token) });
    }
    let allowed = |nets: &[IpNet]| nets.iter().any(|n| n.contains(&facts.client_ip));
    if !allowed(&service.source_ips) || tok.source_ips.as_deref().is_some_and(|n| !allowed(n)) {
        return fail(Failure::IpNotAllowed);
    }
    let mut d = authorize(snap, service, facts.parts, &token);
    d.token = Some(tok);
    d
}

/// Whether `service` may make this call, whoever presented it (also `keyward explain`).
/// `token` is only ever shown redacted.
pub fn authorize<'s>(
    snap: &'s Snapshot,
    service: &'s Service,
    parts: &'s Parts,
    token: &str,
) -> Decision<'s> {
    let mut d = Decision { service: Some(service), ..Decision::deny(Failure::Internal) };
    let target = match canonical::check(&parts.method, &parts.uri, parts.version, &parts.headers) {
        Ok(t) => t,
        Err(why) => {
            d.verdict = Verdict::Deny(Failure::NonCanonical(why));
            return d;
        }
    };
    let path = target.path;
    let account = stripe_account(parts);
    d.account = account;
    d.entry = snap.catalog.classify(&parts.method, path);
    d.upstream = match d.entry {
        Some(e) => snap.routes[e.index],
        // Report mode forwards unknown calls too, to the main API, so the record shows them.
        None => snap.upstreams.iter().position(|u| &*u.name == "api"),
    };
    let failure = match d.entry {
        None => Some(Failure::UnknownEndpoint),
        Some(e) => check_entry(snap, service, e, parts, &target, account, token),
    };
    d.verdict = match (failure, service.mode) {
        (None, _) => Verdict::Allow,
        (Some(f), Mode::Report) if d.upstream.is_some() => Verdict::WouldDeny(f),
        (Some(f), _) => Verdict::Deny(f),
    };
    if d.entry.is_some() && d.upstream.is_none() {
        let name = d.entry.map(|e| e.upstream.clone()).unwrap_or_default();
        d.verdict = Verdict::Deny(Failure::UpstreamNotConfigured(name));
    }
    d
}

fn check_entry(
    snap: &Snapshot,
    service: &Service,
    entry: &Entry,
    parts: &Parts,
    target: &canonical::Target,
    account: Option<&str>,
    token: &str,
) -> Option<Failure> {
    for acct in connect_accounts(parts, entry, target.path) {
        if !service.accounts.allows(acct) {
            return Some(Failure::AccountNotAllowed { account: acct.to_string() });
        }
    }
    let permission = || entry.name.to_string();
    if entry.direct && account.is_some() {
        return Some(Failure::DirectPermission { permission: permission() });
    }
    let needed = match entry.access {
        crate::policy::catalog::Access::Read => Level::Read,
        crate::policy::catalog::Access::Write => Level::Write,
    };
    if service.level(entry.permission) < needed {
        return Some(Failure::MissingPermission { redacted: redact(token), permission: permission() });
    }
    expansion_failure(snap, service, &target.expand, token)
}

/// The first of the `expand` fields (of a query string or form body) that the service may
/// not read.
pub fn expansion_failure(
    snap: &Snapshot,
    service: &Service,
    fields: &[String],
    token: &str,
) -> Option<Failure> {
    let (_, perm) = snap.expansions.required(fields).find(|(_, p)| service.level(*p) < Level::Read)?;
    let permission = permission_name(snap.catalog.permission(perm), crate::policy::catalog::Access::Read);
    Some(Failure::MissingPermission { redacted: redact(token), permission })
}

/// The connected account a call acts for: `Stripe-Account`, else `Stripe-Context`.
fn stripe_account(parts: &Parts) -> Option<&str> {
    let h = &parts.headers;
    h.get(&STRIPE_ACCOUNT).or_else(|| h.get(&STRIPE_CONTEXT)).map(|v| v.to_str().unwrap_or("<unreadable>"))
}

/// Every connected account a call acts for: `Stripe-Account`, each account in a
/// `Stripe-Context` path, and the `{account}` of `/v1/accounts/{account}/…` and
/// `/v2/core/accounts/{account}/…` (the catalog's convention, docs/catalog.md).
fn connect_accounts<'a>(parts: &'a Parts, entry: &Entry, path: &'a str) -> impl Iterator<Item = &'a str> {
    let headers = [&STRIPE_ACCOUNT, &STRIPE_CONTEXT]
        .into_iter()
        .flat_map(|name| parts.headers.get_all(name))
        // An unreadable header names an account we cannot check: refuse it as that.
        .flat_map(|v| v.to_str().unwrap_or("<unreadable>").split('/').map(str::trim));
    let segment = if entry.template.starts_with("/v1/accounts/{") {
        Some(3)
    } else if entry.template.starts_with("/v2/core/accounts/{") {
        Some(4)
    } else {
        None
    };
    let in_path = segment.and_then(|n| path.split('/').nth(n));
    headers.chain(in_path)
}
