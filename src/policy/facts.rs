//! The facts of a request the policy decides on: everything it reads, handed in by the
//! request path, so that the policy itself reads no socket, clock or shared state.

use std::net::IpAddr;

use http::request::Parts;

use crate::policy::identity::TokenHash;
use crate::policy::model::Token;

/// The facts of a request that the policy reads.
pub struct RequestFacts<'a> {
    pub parts: &'a Parts,
    pub client_ip: IpAddr,
    /// Unix seconds.
    pub now: i64,
    /// Forward mode: the tunnel the request came through.
    pub tunnel: Option<&'a Tunnel>,
    /// The identities of the caller's verified client certificate (URI SANs, `dns:` DNS SANs);
    /// empty without one.
    pub client_ids: &'a [String],
    /// Whether the token is suspended (by an operator, or by its quarantine): state the
    /// control plane keeps, which the policy reads and never changes.
    pub suspended: &'a (dyn Fn(&Token) -> bool + Sync),
    /// Whether a body follows the head (HTTP/2: the HEADERS frame did not end the stream;
    /// HTTP/1.1: a length other than 0, or chunked).
    pub has_body: bool,
}

impl<'a> RequestFacts<'a> {
    /// A request straight to the listener, with no body, no client certificate and no token
    /// suspended: what benchmarks and examples decide; set the other fields as needed.
    pub fn direct(parts: &'a Parts, client_ip: IpAddr, now: i64) -> RequestFacts<'a> {
        RequestFacts {
            parts,
            client_ip,
            now,
            tunnel: None,
            client_ids: &[],
            suspended: &|_| false,
            has_body: false,
        }
    }
}

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
        host_of(&self.target)
    }
}

pub(crate) fn host_of(target: &str) -> &str {
    target.rsplit_once(':').map_or(target, |(h, _)| h)
}
