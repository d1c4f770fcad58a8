//! Forward mode's rules: which `CONNECT` targets keyward intercepts, and which requests a
//! tunnel carries. Targets are compared byte for byte with the configured `host:port`: a
//! host in other case, with a trailing dot, with user info or as an address is another
//! spelling some resolver could read another way, and is refused, never normalised.

use http::header::HOST;
use http::request::Parts;

use crate::policy::failure::Failure;
use crate::policy::identity::TokenHash;
use crate::policy::model::Policy;

/// A tunnel, as the requests inside it are decided: what it was opened to, and the token of
/// its `CONNECT`'s `Proxy-Authorization` (its hash only), if it had one.
#[derive(Debug, Clone)]
pub struct Tunnel {
    /// The `CONNECT` target as accepted: exactly a configured upstream's `host:port`.
    pub target: String,
    pub token: Option<TunnelToken>,
}

#[derive(Clone)]
pub struct TunnelToken {
    pub hash: TokenHash,
    /// The token as it may be shown (`kw_***abcd`).
    pub redacted: String,
}

impl std::fmt::Debug for TunnelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl Tunnel {
    /// The host part of the target, which SNI and `Host` name.
    pub fn host(&self) -> &str {
        self.target.rsplit_once(':').map_or(&self.target, |(h, _)| h)
    }
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
    let host = tunnel.host().as_bytes();
    let names = |n: &[u8]| n == host || n == tunnel.target.as_bytes();
    let headers = parts.headers.get_all(HOST);
    let authority = parts.uri.authority().map(|a| a.as_str().as_bytes());
    let mut named = headers.iter().map(|v| v.as_bytes()).chain(authority).peekable();
    if named.peek().is_none() || !named.all(names) {
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
