//! Forward mode's rules: which `CONNECT`s open a tunnel (target, head, token), and which
//! requests a tunnel carries. Targets are compared byte for byte with the configured `host:port`: a
//! host in other case, with a trailing dot, with user info or as an address is another
//! spelling some resolver could read another way, and is refused, never normalised.

use http::Method;
use http::header::{CONTENT_LENGTH, HOST, PROXY_AUTHORIZATION, TRANSFER_ENCODING};
use http::request::Parts;

use crate::policy::caller::{ProxyRefusal, proxy_identify};
use crate::policy::facts::RequestFacts;
use crate::policy::facts::host_of;
pub use crate::policy::facts::{Tunnel, TunnelToken};
use crate::policy::failure::Failure;
use crate::policy::identity::{hash_token, redact, token_from};
use crate::policy::model::Policy;

/// Whether a `Host` (or `:authority`) value names `target`: its host, or `host:port`, exactly.
fn names(value: &[u8], target: &str) -> bool {
    value == target.as_bytes() || value == host_of(target).as_bytes()
}

/// Whether a request to the forward port opens a tunnel: a `CONNECT` (authority form) to an
/// intercepted host, its head read one way, and a good `Proxy-Authorization` token if it
/// sends one. `over_tls`: the forward port speaks TLS (`forward.tls`). A refusal of a known
/// token from an address it does not allow says whose it was (it counts toward quarantine).
pub fn admit_connect<'s>(
    policy: &'s Policy,
    facts: &RequestFacts<'_>,
    over_tls: bool,
) -> Result<Tunnel, ProxyRefusal<'s>> {
    let refused = |failure| ProxyRefusal { failure, from_elsewhere: None };
    let parts = facts.parts;
    if parts.method != Method::CONNECT {
        let f = if parts.uri.authority().is_some() { Failure::PlainHttp } else { Failure::NotProxyRequest };
        return Err(refused(f));
    }
    // Authority form only, as sent: `CONNECT https://host/` has a scheme and a path too.
    let target = parts.uri.to_string();
    connect_target(policy, &target).map_err(refused)?;
    check_head(parts, &target).map_err(refused)?;
    let token = tunnel_token(policy, facts, over_tls)?;
    Ok(Tunnel { target, token })
}

/// A `CONNECT` head read one way: no body (whatever follows the head is the tunnel's), and a
/// `Host`, if any, naming the target.
fn check_head(parts: &Parts, target: &str) -> Result<(), Failure> {
    let h = &parts.headers;
    let body =
        h.contains_key(TRANSFER_ENCODING) || h.get_all(CONTENT_LENGTH).iter().any(|v| v.as_bytes() != b"0");
    let elsewhere = h.get_all(HOST).iter().any(|v| !names(v.as_bytes(), target));
    match (body, elsewhere) {
        (false, false) => Ok(()),
        (true, _) => Err(Failure::NonCanonical("is a CONNECT with a body")),
        (_, true) => Err(Failure::NonCanonical("is a CONNECT whose Host is not its target")),
    }
}

/// The token of `Proxy-Authorization` (Basic with the token as user name, or Bearer), if
/// one is sent: it must be good now, and from this address. Over plain TCP it is taken only
/// from loopback: from anywhere else it crossed the network in the clear (`forward.tls`).
fn tunnel_token<'s>(
    policy: &'s Policy,
    facts: &RequestFacts<'_>,
    over_tls: bool,
) -> Result<Option<TunnelToken>, ProxyRefusal<'s>> {
    let invalid = |why| ProxyRefusal { failure: Failure::ProxyTokenInvalid { why }, from_elsewhere: None };
    let headers = &facts.parts.headers;
    match headers.get_all(PROXY_AUTHORIZATION).iter().count() {
        0 => return Ok(None),
        1 => {}
        _ => return Err(invalid("is given more than once")),
    }
    if !over_tls && !facts.client_ip.is_loopback() {
        return Err(invalid(
            "came over plain TCP from another host: send it only to a TLS proxy port (forward.tls = true)",
        ));
    }
    let token = token_from(headers, PROXY_AUTHORIZATION).ok_or(invalid("cannot be read"))?;
    let hash = hash_token(&token);
    proxy_identify(policy, &hash, facts)?;
    Ok(Some(TunnelToken { hash, redacted: redact(&token) }))
}

/// The index (in `Policy::upstreams`) of the upstream a `CONNECT` target names, or why none.
pub fn connect_target(policy: &Policy, target: &str) -> Result<usize, Failure> {
    policy.hosts.iter().position(|h| h.as_deref() == Some(target)).ok_or_else(|| not_proxied(policy))
}

pub fn not_proxied(policy: &Policy) -> Failure {
    let hosts: Vec<&str> = policy.hosts.iter().flatten().map(String::as_str).collect();
    let allowed = if hosts.is_empty() { "none configured".to_string() } else { hosts.join(", ") };
    Failure::HostNotProxied { allowed }
}

/// A request in a tunnel names the tunnel's host: `Host` (HTTP/1.1) and `:authority`
/// (HTTP/2) are each the host, or `host:port`, exactly; every `Host` a request carries counts.
pub fn check_authority(parts: &Parts, tunnel: &Tunnel) -> Result<(), Failure> {
    let headers = parts.headers.get_all(HOST);
    let authority = parts.uri.authority().map(|a| a.as_str().as_bytes());
    let mut named = headers.iter().map(|v| v.as_bytes()).chain(authority).peekable();
    if named.peek().is_none() || !named.all(|n| names(n, &tunnel.target)) {
        return Err(Failure::Misdirected { tunnel: tunnel.target.clone() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            upstreams: vec!["api".into(), "local".into(), "files".into()],
            hosts: vec![Some("api.stripe.com:443".into()), None, Some("files.stripe.com:443".into())],
            ..Policy::default()
        }
    }

    #[test]
    fn only_a_configured_host_and_port_byte_for_byte() {
        let p = policy();
        assert_eq!(connect_target(&p, "api.stripe.com:443"), Ok(0));
        assert_eq!(connect_target(&p, "files.stripe.com:443"), Ok(2));
        for t in [
            "api.stripe.com",
            "api.stripe.com:8443",
            "API.stripe.com:443",
            "api.stripe.com.:443",
            "user@api.stripe.com:443",
            "127.0.0.1:443",
            "[::1]:443",
            "localhost:443",
            "api.stripe.com:443 ",
            "api.stripe.com:0443",
            "",
        ] {
            let f = connect_target(&p, t).unwrap_err();
            assert_eq!(f.code(), "host_not_proxied", "{t}");
            assert!(f.message().contains("api.stripe.com:443, files.stripe.com:443"), "{t}");
        }
    }

    #[test]
    fn a_tunnel_carries_requests_for_its_host_only() {
        let t = Tunnel { target: "api.stripe.com:443".into(), token: None };
        let check = |uri: &str, hosts: &[&str]| {
            let mut b = http::Request::builder().uri(uri);
            for h in hosts {
                b = b.header(HOST, *h);
            }
            check_authority(&b.body(()).unwrap().into_parts().0, &t).is_ok()
        };
        assert!(check("/v1/charges", &["api.stripe.com"]));
        assert!(check("/v1/charges", &["api.stripe.com:443"]));
        assert!(check("https://api.stripe.com/v1/charges", &[]));
        assert!(check("https://api.stripe.com/v1/charges", &["api.stripe.com"]));
        assert!(!check("/v1/charges", &[]));
        assert!(!check("/v1/charges", &["files.stripe.com"]));
        assert!(!check("/v1/charges", &["API.STRIPE.COM"]));
        assert!(!check("/v1/charges", &["api.stripe.com", "evil.example"]));
        assert!(!check("https://evil.example/v1/charges", &["api.stripe.com"]));
        assert!(!check("https://api.stripe.com:8443/v1/charges", &[]));
    }
}
