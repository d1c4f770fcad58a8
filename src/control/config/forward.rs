//! Forward mode's part of a configuration, checked without I/O: the `[forward]` table, and
//! the `host:port` each upstream is intercepted by.

use std::net::IpAddr;
use std::time::Duration;

use super::errors::Errors;
use super::file::FileConfig;
use crate::control::snapshot::ForwardSettings;

/// For each upstream (in the file's order), the `host:port` a `CONNECT` names it by: only DNS
/// names are intercepted, never an address or `localhost`.
pub fn hosts(file: &FileConfig) -> Vec<Option<String>> {
    file.upstream
        .values()
        .map(|u| {
            let authority = crate::upstream::check_url(u.url.get_ref()).ok()?;
            let host = authority.host();
            let literal = host.starts_with('[') || host.parse::<IpAddr>().is_ok();
            if literal || host.eq_ignore_ascii_case("localhost") {
                return None;
            }
            Some(format!("{host}:{}", authority.port_u16().unwrap_or(443)))
        })
        .collect()
}

/// The `[forward]` table's settings, with its mistakes added to `errs`.
pub fn check(file: &FileConfig, hosts: &[Option<String>], errs: &mut Errors) -> Option<ForwardSettings> {
    let f = file.forward.as_ref()?;
    match (&f.ca_key, &f.ca_key_secret) {
        (Some(_), Some(s)) => {
            errs.at(Some(s.span()), "forward.ca_key_secret", "give ca_key or ca_key_secret, not both")
        }
        (None, None) => {
            errs.at(None, "forward.ca_key", "is missing: the CA key as a file, or ca_key_secret = \"NAME\"")
        }
        (None, Some(s)) if !file.secret.contains_key(s.get_ref()) => errs.at(
            Some(s.span()),
            "forward.ca_key_secret",
            format!("no [secret.{}] is defined", s.get_ref()),
        ),
        _ => {}
    }
    if hosts.iter().all(Option::is_none) {
        errs.at(
            None,
            "forward",
            "no upstream can be intercepted: forward mode proxies upstreams by their DNS names \
             (https://api.stripe.com), never by an address or localhost",
        );
    }
    for (i, (name, u)) in file.upstream.iter().enumerate() {
        if hosts[i].is_some() && hosts[..i].contains(&hosts[i]) {
            errs.at(
                Some(u.url.span()),
                format!("upstream.{name}.url"),
                "names the same host and port as another upstream: a CONNECT to it could mean either",
            );
        }
        let url = u.url.get_ref();
        if url.chars().any(|c| c.is_ascii_uppercase()) {
            errs.at(
                Some(u.url.span()),
                format!("upstream.{name}.url"),
                "write the host in lowercase: forward mode compares CONNECT targets with it byte for byte",
            );
        }
    }
    if f.listen == file.server.listen && f.listen.port() != 0 {
        errs.at(None, "forward.listen", "must differ from server.listen");
    }
    if !(Duration::from_secs(600)..=Duration::from_secs(397 * 86400)).contains(&f.leaf_lifetime) {
        errs.at(None, "forward.leaf_lifetime", "must be between 10m and 397 days");
    }
    if f.max_tunnels == 0 {
        errs.at(None, "forward.max_tunnels", "must be at least 1");
    }
    if f.head_timeout.is_zero() {
        errs.at(None, "forward.head_timeout", "must be longer than zero, e.g. \"10s\"");
    }
    if f.idle_timeout <= file.timeouts.upstream {
        errs.at(
            None,
            "forward.idle_timeout",
            "must be longer than timeouts.upstream: a call waiting for its answer moves no bytes",
        );
    }
    Some(ForwardSettings {
        listen: f.listen,
        tls: f.tls,
        max_tunnels: f.max_tunnels,
        head_timeout: f.head_timeout,
        idle_timeout: f.idle_timeout,
    })
}
