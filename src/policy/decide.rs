//! Deciding a request, in four phases: identify (token, its validity, the source address) →
//! canonicalise (a target read one way only) → classify (catalog entry, upstream) → authorize
//! (Connect accounts, direct permissions, scope, expansions). Then, for a call about to be
//! forwarded, the body rules (`check_form`).

use http::header::HeaderName;
use http::request::Parts;
use serde::{Deserialize, Serialize};

use crate::policy::caller::{identify, lookup, proxy_identify};
use crate::policy::canonical::{self, BodyShape, Target};
use crate::policy::catalog::{Access, Entry, permission_name};
use crate::policy::exposure;
use crate::policy::facts::RequestFacts;
use crate::policy::failure::Failure;
use crate::policy::forward::{self, Tunnel};
use crate::policy::identity::redact;
use crate::policy::model::{Level, Mode, Policy, Service, Token};

static STRIPE_ACCOUNT: HeaderName = HeaderName::from_static("stripe-account");
static STRIPE_CONTEXT: HeaderName = HeaderName::from_static("stripe-context");

/// What the access record, the metrics and the report say was decided.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    #[default]
    Deny,
    /// Report mode: forwarded, but enforcing would have refused it.
    WouldDeny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::WouldDeny => "would_deny",
        }
    }
}

/// Where a call that may go goes: the service it goes for (whose secret and egress address it
/// uses) and the index of its upstream in `Policy::upstreams`.
#[derive(Debug, Clone, Copy)]
pub struct Route<'s> {
    pub service: &'s Service,
    /// The catalog entry (`None`: a report-mode call to an endpoint the catalog lacks).
    pub entry: Option<&'s Entry>,
    pub upstream: usize,
    /// How the body is read on its way: a form whole (and checked, `check_form`), multipart
    /// with its part headers checked, anything else as it is.
    pub body: BodyShape<'s>,
}

#[derive(Debug)]
pub enum Verdict<'s> {
    Allow(Route<'s>),
    /// Report mode: forwarded, but enforcing would have refused it for this reason.
    WouldDeny(Route<'s>, Failure),
    Deny(Failure),
}

impl Verdict<'_> {
    pub fn decision(&self) -> Decision {
        match self {
            Verdict::Allow(_) => Decision::Allow,
            Verdict::WouldDeny(..) => Decision::WouldDeny,
            Verdict::Deny(_) => Decision::Deny,
        }
    }

    /// The reason code: `ok`, or the failure's.
    pub fn reason(&self) -> &'static str {
        match self {
            Verdict::Allow(_) => "ok",
            Verdict::WouldDeny(_, f) | Verdict::Deny(f) => f.reason(),
        }
    }
}

/// The verdict, with everything learnt on the way that the access record shows.
#[derive(Debug)]
pub struct Ruling<'s> {
    pub verdict: Verdict<'s>,
    pub service: Option<&'s Service>,
    pub token: Option<&'s Token>,
    pub entry: Option<&'s Entry>,
    /// Index into `Policy::upstreams` of where the call goes (or would).
    pub upstream: Option<usize>,
    /// The connected account the call acts for (`Stripe-Account`, else `Stripe-Context`).
    pub account: Option<&'s str>,
}

impl<'s> Ruling<'s> {
    /// Whether the caller proved who it is: a token of a service, good from this address (and
    /// certificate), whatever the call it asked for. Its connection is then *proven*.
    pub fn proves(&self) -> bool {
        self.token.is_some() && !matches!(&self.verdict, Verdict::Deny(f) if f.is_identity())
    }

    /// A refusal that counts toward its token's quarantine (a known token of a service with
    /// `quarantine`, from an address it does not allow): the service and token to count it for.
    pub fn strike(&self) -> Option<(&'s Service, &'s Token)> {
        match (&self.verdict, self.service, self.token) {
            (Verdict::Deny(Failure::IpNotAllowed), Some(s), Some(t)) if s.quarantine.is_some() => {
                Some((s, t))
            }
            _ => None,
        }
    }

    /// The count reached the quarantine's: this refusal is the one that suspended the token,
    /// and is recorded so (answered as any other from that address).
    pub fn tipped(&mut self) {
        if self.strike().is_some() {
            self.verdict = Verdict::Deny(Failure::Quarantined);
        }
    }

    fn deny(failure: Failure) -> Self {
        Ruling {
            verdict: Verdict::Deny(failure),
            service: None,
            token: None,
            entry: None,
            upstream: None,
            account: None,
        }
    }
}

/// Decide a request: identify the caller, then [`authorize`] the call for its service. In a
/// tunnel, first check that the request is for the tunnel's host and that the tunnel's
/// token is still good, against this (the current) policy; then that the call goes to the
/// tunnel's upstream, for the service the tunnel's token names.
pub fn decide<'s>(policy: &'s Policy, facts: &RequestFacts<'s>) -> Ruling<'s> {
    // First of all: whatever else is wrong with it, a request that carries a token where the
    // API would log it goes nowhere.
    if let Some((place, exposed)) = exposure::in_head(facts.parts, &policy.tokens) {
        return exposed_ruling(policy, facts, exposed, place);
    }
    let tunnel = match facts.tunnel.map(|t| tunnelled(policy, facts, t)).transpose() {
        Ok(t) => t,
        Err(failure) => return Ruling::deny(failure),
    };
    let (service, token, presented) = match identify(policy, facts) {
        Ok(found) => found,
        Err((failure, known)) => {
            return Ruling {
                service: known.map(|(s, _)| s),
                token: known.map(|(_, t)| t),
                ..Ruling::deny(failure)
            };
        }
    };
    let mut ruling = authorize(policy, service, facts.parts, facts.has_body, &presented);
    ruling.token = Some(token);
    if let (Some((upstream, by)), Some(t)) = (tunnel, facts.tunnel) {
        through_tunnel(&mut ruling, upstream, t);
        if by.is_some_and(|s| !std::ptr::eq(s, service)) {
            ruling.verdict = Verdict::Deny(Failure::TunnelServiceMismatch);
        }
    }
    ruling
}

/// A request refused for the token it exposed. The record names that token when keyward
/// knows it (it is the one to rotate), else whoever `Authorization` says is calling.
fn exposed_ruling<'s>(
    policy: &'s Policy,
    facts: &RequestFacts<'s>,
    exposed: exposure::Exposed,
    place: String,
) -> Ruling<'s> {
    let whose = match exposed.owner {
        Some(owner) => Some(lookup(policy, &owner)),
        None => identify(policy, facts).ok().map(|(s, t, _)| (s, t)),
    };
    Ruling {
        service: whose.map(|(s, _)| s),
        token: whose.map(|(_, t)| t),
        ..Ruling::deny(Failure::TokenInWrongPlace { place, whose: whose.map(named) })
    }
}

/// A service and token as a failure names them (`Failure::TokenInWrongPlace::whose`).
fn named((service, token): (&Service, &Token)) -> (std::sync::Arc<str>, std::sync::Arc<str>) {
    (service.name.clone(), token.id.clone())
}

/// A token in a body, found by `exposure::find` or a stream's search: the refusal, naming the
/// token's owner when keyward knows it.
pub fn exposed_in(policy: &Policy, exposed: exposure::Exposed, place: &str) -> Failure {
    let whose = exposed.owner.map(|o| named(lookup(policy, &o)));
    Failure::TokenInWrongPlace { place: place.into(), whose }
}

/// A tunnelled request's upstream (the tunnel's, if still configured) and the service its
/// `Proxy-Authorization` token names, if it had one.
fn tunnelled<'s>(
    policy: &'s Policy,
    facts: &RequestFacts<'s>,
    tunnel: &Tunnel,
) -> Result<(usize, Option<&'s Service>), Failure> {
    let upstream = forward::connect_target(policy, &tunnel.target)?;
    forward::check_authority(facts.parts, tunnel)?;
    let by = match &tunnel.token {
        Some(t) => Some(proxy_identify(policy, &t.hash, facts).map_err(|r| r.failure)?.0),
        None => None,
    };
    Ok((upstream, by))
}

/// A call in a tunnel goes to the tunnel's upstream or nowhere: a catalog entry served by
/// another host is misdirected, whatever else is wrong with it. (Report mode's calls to
/// unknown endpoints go to the tunnel's upstream.)
fn through_tunnel(ruling: &mut Ruling<'_>, upstream: usize, tunnel: &Tunnel) {
    if ruling.entry.is_none() {
        ruling.upstream = Some(upstream);
        if let Verdict::Allow(route) | Verdict::WouldDeny(route, _) = &mut ruling.verdict {
            route.upstream = upstream;
        }
    } else if ruling.upstream != Some(upstream) {
        ruling.verdict = Verdict::Deny(Failure::Misdirected { tunnel: tunnel.target.clone() });
    }
}

/// Whether `service` may make this call, whoever presented it (also `keyward explain`):
/// phases 2 to 4. `has_body`: whether a body follows the head. `token` is only ever shown
/// redacted.
pub fn authorize<'s>(
    policy: &'s Policy,
    service: &'s Service,
    parts: &'s Parts,
    has_body: bool,
    token: &str,
) -> Ruling<'s> {
    let mut ruling = Ruling { service: Some(service), ..Ruling::deny(Failure::Internal) };
    // Phase 2: canonicalise.
    let target = match canonical::check(&parts.method, &parts.uri, parts.version, &parts.headers) {
        Ok(t) => t,
        Err(why) => {
            ruling.verdict = Verdict::Deny(Failure::NonCanonical(why));
            return ruling;
        }
    };
    // Stripe's GET and DELETE calls take their parameters in the query, where they are
    // checked; a body there could carry unchecked ones to a lenient server.
    if has_body && parts.method != http::Method::POST {
        ruling.verdict =
            Verdict::Deny(Failure::NonCanonical("comes with a body, which only POST calls may have"));
        return ruling;
    }
    // Phase 3: classify.
    ruling.account = stripe_account(parts);
    ruling.entry = policy.catalog.classify(&parts.method, target.path);
    ruling.upstream = match ruling.entry {
        Some(e) => policy.routes[e.index],
        // Report mode forwards unknown calls too, to the main API, so the record shows them.
        None => policy.main_upstream,
    };
    // Phase 4: authorize.
    let failure = match ruling.entry {
        None => Some(Failure::UnknownEndpoint { endpoint: format!("{} {}", parts.method, target.path) }),
        Some(e) if ruling.upstream.is_none() => {
            ruling.verdict = Verdict::Deny(Failure::UpstreamNotConfigured(e.upstream.clone()));
            return ruling;
        }
        Some(e) => check_entry(policy, service, e, parts, &target, ruling.account, token),
    };
    let route = |upstream| Route { service, entry: ruling.entry, upstream, body: target.body };
    // Only the endpoints that take files read multipart (Rack would read any other's parts as
    // form fields keyward never saw): refused, in report mode too, for a call that would go.
    let parts_unread =
        matches!(target.body, BodyShape::Multipart(_)) && !ruling.entry.is_some_and(|e| e.multipart);
    let goes = failure.is_none() || service.mode == Mode::Report;
    ruling.verdict = match (failure, ruling.upstream, service.mode) {
        (_, Some(_), _) if parts_unread && goes => {
            Verdict::Deny(Failure::NonCanonical("sends a multipart body to an endpoint that takes none"))
        }
        (None, Some(upstream), _) => Verdict::Allow(route(upstream)),
        (Some(f), Some(upstream), Mode::Report) => Verdict::WouldDeny(route(upstream), f),
        (Some(f), _, _) => Verdict::Deny(f),
        (None, None, _) => Verdict::Deny(Failure::Internal),
    };
    ruling
}

fn check_entry(
    policy: &Policy,
    service: &Service,
    entry: &Entry,
    parts: &Parts,
    target: &Target,
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
        Access::Read => Level::Read,
        Access::Write => Level::Write,
    };
    // Every permission missing, the endpoint's first: the record names each.
    let own = (service.level(entry.permission) < needed).then(permission);
    missing_failure(
        own.into_iter().chain(expansions_missing(policy, service, &target.expand)).collect(),
        token,
    )
}

/// A refusal for the permissions in `missing` (the first is the one its message names), or
/// none when nothing is missing.
fn missing_failure(mut missing: Vec<String>, token: &str) -> Option<Failure> {
    let mut seen = std::collections::HashSet::new();
    missing.retain(|p| seen.insert(p.clone()));
    let mut all = missing.into_iter();
    let permission = all.next()?;
    Some(Failure::MissingPermission { redacted: redact(token), permission, also: all.collect() })
}

/// Whether the secret a call is about to be sent with may be used for its service: of the
/// service's `livemode` (`Some(true)`: a live key), if it names one. Read when the secret is
/// loaded, as a vault's new version may be of the other mode: fail closed.
pub fn secret_mode(service: &Service, key_livemode: Option<bool>) -> Result<(), Failure> {
    match service.livemode {
        Some(want) if key_livemode != Some(want) => Err(Failure::LivemodeMismatch),
        _ => Ok(()),
    }
}

/// The body rule, for a form body (read whole) of a call about to be forwarded: `Err` refuses
/// it whatever the service's mode (it could be read two ways), `Ok(Some(f))` is a refusal the
/// service's report mode turns into `would_deny`, `Ok(None)` lets it go.
pub fn check_form(
    policy: &Policy,
    service: &Service,
    form: &[u8],
    token: &str,
) -> Result<Option<Failure>, Failure> {
    if let Some(exposed) = exposure::find(form, &policy.tokens) {
        return Err(exposed_in(policy, exposed, "the form body"));
    }
    let fields = crate::policy::params::read(form).map_err(Failure::NonCanonical)?;
    match expansion_failure(policy, service, &fields, token) {
        Some(f) if service.mode == Mode::Enforce => Err(f),
        other => Ok(other),
    }
}

/// The permissions that the `expand` fields (of a query string or form body) need and the
/// service lacks, in the order the fields ask for them.
fn expansions_missing(policy: &Policy, service: &Service, fields: &[String]) -> Vec<String> {
    policy
        .expansions
        .required(fields)
        .filter(|(_, p)| service.level(*p) < Level::Read)
        .map(|(_, p)| permission_name(policy.catalog.permission(p), Access::Read))
        .collect()
}

/// The refusal for the `expand` fields (of a query string or form body) that the service may
/// not read: every permission they need and it lacks.
pub fn expansion_failure(
    policy: &Policy,
    service: &Service,
    fields: &[String],
    token: &str,
) -> Option<Failure> {
    missing_failure(expansions_missing(policy, service, fields), token)
}

/// The connected account a call acts for: `Stripe-Account`, else `Stripe-Context`.
fn stripe_account(parts: &Parts) -> Option<&str> {
    let h = &parts.headers;
    h.get(&STRIPE_ACCOUNT).or_else(|| h.get(&STRIPE_CONTEXT)).map(|v| v.to_str().unwrap_or("<unreadable>"))
}

/// Every connected account a call acts for: `Stripe-Account`, each account in a
/// `Stripe-Context` path, and the entry's `{account}` path parameter (`/v1/accounts/{account}/…`).
fn connect_accounts<'a>(parts: &'a Parts, entry: &Entry, path: &'a str) -> impl Iterator<Item = &'a str> {
    let headers = [&STRIPE_ACCOUNT, &STRIPE_CONTEXT]
        .into_iter()
        .flat_map(|name| parts.headers.get_all(name))
        // An unreadable header names an account we cannot check: refuse it as that.
        .flat_map(|v| v.to_str().unwrap_or("<unreadable>").split('/').map(str::trim));
    let in_path = entry.account_segment.and_then(|n| path.split('/').nth(n));
    headers.chain(in_path)
}
