//! A `[secret.NAME] source = "vault"` table, checked: every problem found at once, as
//! `(key, message)` pairs. Pure: no file or network is touched.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::HeaderValue;
use http::uri::{Authority, Scheme, Uri};

use serde::Deserialize;

use super::VaultError;
use crate::secrets::OnStale;

/// A field of a KV v2 secret in HashiCorp Vault or OpenBao. Checked by `vault::Spec::parse`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultFile {
    pub addr: String,
    pub ca: Option<PathBuf>,
    #[serde(default = "default_mount")]
    pub mount: String,
    pub path: String,
    pub field: String,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub role_id: Option<String>,
    pub secret_id_file: Option<PathBuf>,
    /// Where AppRole is enabled; default `approle`.
    pub approle_mount: Option<String>,
    pub namespace: Option<String>,
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    #[serde(default = "default_max_staleness", with = "humantime_serde")]
    pub max_staleness: Duration,
    #[serde(default)]
    pub on_stale: OnStale,
    #[serde(default = "default_vault_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_mount() -> String {
    "secret".into()
}

fn default_refresh() -> Duration {
    Duration::from_secs(60)
}

fn default_max_staleness() -> Duration {
    Duration::from_secs(3600)
}

fn default_vault_timeout() -> Duration {
    Duration::from_secs(5)
}

#[derive(Debug, Clone)]
pub struct Spec {
    pub scheme: Scheme,
    pub authority: Authority,
    pub ca: Option<PathBuf>,
    pub mount: String,
    pub path: String,
    pub field: String,
    pub auth: Auth,
    pub namespace: Option<HeaderValue>,
    pub refresh: Duration,
    pub max_staleness: Duration,
    pub on_stale: OnStale,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    TokenFile(PathBuf),
    TokenEnv(String),
    AppRole { mount: String, role_id: String, secret_id_file: PathBuf },
}

/// Shortest refresh interval and request timeout accepted: enough to never hammer a vault.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

impl Spec {
    pub fn parse(f: &VaultFile) -> Result<Spec, Vec<(&'static str, String)>> {
        let mut errs = Vec::new();
        let addr = parse_addr(&f.addr).map_err(|e| errs.push(("addr", e.to_string()))).ok();
        let mount = vault_path(&f.mount).map_err(|e| errs.push(("mount", e.to_string()))).ok();
        let path = vault_path(&f.path).map_err(|e| errs.push(("path", e.to_string()))).ok();
        let approle_mount = vault_path(f.approle_mount.as_deref().unwrap_or("approle"))
            .map_err(|e| errs.push(("approle_mount", e.to_string())))
            .ok();
        if f.approle_mount.is_some() && f.role_id.is_none() {
            errs.push(("approle_mount", "is only used with `role_id` and `secret_id_file`".into()));
        }
        if f.field.is_empty() {
            errs.push(("field", "must name the secret's field, e.g. \"api_key\"".into()));
        }
        let namespace = match &f.namespace {
            None => None,
            Some(ns) => match vault_path(ns).ok().and_then(|p| HeaderValue::from_str(&p).ok()) {
                Some(v) => Some(v),
                None => {
                    errs.push(("namespace", "must be a namespace path like \"admin/payments\"".into()));
                    None
                }
            },
        };
        let auth =
            auth(f, approle_mount.unwrap_or_default()).map_err(|e| errs.push(("auth", e.to_string()))).ok();
        if f.refresh < MIN_INTERVAL {
            errs.push(("refresh", "must be at least 100ms".into()));
        }
        if f.max_staleness < f.refresh {
            errs.push(("max_staleness", "must be at least `refresh`".into()));
        }
        if f.timeout < MIN_INTERVAL {
            errs.push(("timeout", "must be at least 100ms".into()));
        }
        match (addr, mount, path, auth) {
            (Some((scheme, authority)), Some(mount), Some(path), Some(auth)) if errs.is_empty() => Ok(Spec {
                scheme,
                authority,
                ca: f.ca.clone(),
                mount,
                path,
                field: f.field.clone(),
                auth,
                namespace,
                refresh: f.refresh,
                max_staleness: f.max_staleness,
                on_stale: f.on_stale,
                timeout: f.timeout,
            }),
            _ => Err(errs),
        }
    }

    /// `https://vault:8200`, as errors and logs show it.
    pub fn addr(&self) -> String {
        format!("{}://{}", self.scheme, self.authority)
    }

    /// The API path of the secret, e.g. `secret/data/payments/stripe`.
    pub fn data_path(&self) -> String {
        format!("{}/data/{}", self.mount, self.path)
    }
}

/// `https://host[:port]`; plain `http://` only to a loopback address (a local dev server or a
/// vault agent on the same host), since the token would cross the network in the clear.
fn parse_addr(addr: &str) -> Result<(Scheme, Authority), VaultError> {
    let shown = || crate::text::url_shown(addr);
    let uri: Uri = addr.parse().map_err(|_| VaultError::NotUrl { addr: shown() })?;
    let authority = uri.authority().cloned().ok_or_else(|| VaultError::NoHost { addr: shown() })?;
    if authority.as_str().contains('@') {
        return Err(VaultError::Credentials { addr: shown() });
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(VaultError::PathOrQuery { addr: shown() });
    }
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match uri.scheme() {
        Some(s) if *s == Scheme::HTTPS => Ok((Scheme::HTTPS, authority)),
        Some(s) if *s == Scheme::HTTP && loopback => Ok((Scheme::HTTP, authority)),
        Some(s) if *s == Scheme::HTTP => Err(VaultError::PlainHttp { addr: shown() }),
        _ => Err(VaultError::NotHttps { addr: shown() }),
    }
}

/// A mount, secret path or namespace: `/`-separated segments of URL-safe characters, with no
/// empty, `.` or `..` segment, so the request path is exactly the one configured.
fn vault_path(p: &str) -> Result<String, VaultError> {
    let trimmed = p.trim_matches('/');
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.@+=:,~".contains(c);
    let bad = trimmed.is_empty()
        || trimmed
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == ".." || !seg.chars().all(ok_char));
    if bad { Err(VaultError::NotAPath { path: p.to_string() }) } else { Ok(trimmed.to_string()) }
}

fn auth(f: &VaultFile, approle_mount: String) -> Result<Auth, VaultError> {
    match (&f.token_file, &f.token_env, &f.role_id, &f.secret_id_file) {
        (Some(file), None, None, None) => Ok(Auth::TokenFile(file.clone())),
        (None, Some(var), None, None) if !var.is_empty() => Ok(Auth::TokenEnv(var.clone())),
        (None, None, Some(role_id), Some(file)) if !role_id.is_empty() => {
            Ok(Auth::AppRole { mount: approle_mount, role_id: role_id.clone(), secret_id_file: file.clone() })
        }
        (None, None, Some(_), None) | (None, None, None, Some(_)) => Err(VaultError::HalfAppRole),
        (None, None, None, None) => Err(VaultError::NoAuth),
        _ => Err(VaultError::TwoAuths),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(extra: &str) -> VaultFile {
        let text = format!(
            "addr = \"https://vault.internal:8200\"\npath = \"payments/stripe\"\nfield = \"api_key\"\n{extra}"
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn defaults_and_a_good_table() {
        let spec = Spec::parse(&file("token_file = \"/run/vault/token\"")).unwrap();
        assert_eq!(spec.data_path(), "secret/data/payments/stripe");
        assert_eq!(spec.addr(), "https://vault.internal:8200");
        assert_eq!((spec.refresh, spec.max_staleness), (Duration::from_secs(60), Duration::from_secs(3600)));
        assert_eq!(spec.on_stale, OnStale::Serve);
        let spec =
            Spec::parse(&file("role_id = \"r\"\nsecret_id_file = \"s\"\napprole_mount = \"/team/approle/\""))
                .unwrap();
        assert!(matches!(spec.auth, Auth::AppRole { ref mount, .. } if mount == "team/approle"));
    }

    #[test]
    fn refuses_bad_tables() {
        let cases = [
            ("token_file = \"t\"\ntoken_env = \"T\"", "auth", "only one"),
            ("", "auth", "set one of"),
            ("role_id = \"r\"", "auth", "both"),
            ("secret_id_file = \"s\"", "auth", "both"),
            ("token_env = \"T\"\nmount = \"secret/../sys\"", "mount", "not a vault path"),
            ("token_env = \"T\"\nmount = \"a//b\"", "mount", "not a vault path"),
            ("token_env = \"T\"\nmount = \"a?b\"", "mount", "not a vault path"),
            ("token_env = \"T\"\nmount = \"a%2fb\"", "mount", "not a vault path"),
            ("token_env = \"T\"\nnamespace = \"a b\"", "namespace", "namespace path"),
            ("token_env = \"T\"\nrefresh = \"10ms\"", "refresh", "at least 100ms"),
            ("token_env = \"T\"\nrefresh = \"2h\"", "max_staleness", "at least `refresh`"),
            ("token_env = \"T\"\ntimeout = \"0s\"", "timeout", "at least 100ms"),
            ("token_env = \"T\"\napprole_mount = \"ar\"", "approle_mount", "only used with"),
        ];
        for (extra, key, want) in cases {
            let errs = Spec::parse(&file(extra)).unwrap_err();
            assert!(errs.iter().any(|(k, m)| *k == key && m.contains(want)), "{extra}: {errs:?}");
        }
    }

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in
            ["http://127.0.0.1:8200", "http://localhost:8200", "http://[::1]:8200", "https://vault:8200/"]
        {
            assert!(parse_addr(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8200",
            "http://vault.internal",
            "https://vault/v1",
            "https://u:p@vault",
            "https://vault?x=1",
            "ftp://vault",
            "vault:8200",
        ] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
        // Credentials in an address are refused without being repeated, parseable or not.
        for (addr, why) in [
            ("https://root:hvs.CANARY1@vault:8200", "must not carry credentials"),
            ("https://root:hvs.CANARY1@vault:8200/v1", "must not carry credentials"),
            ("https://root:hvs CANARY1@vault:8200", "is not a URL"),
            ("https://root:hvs/CANARY1@vault:8200", "must have no path"),
        ] {
            let e = parse_addr(addr).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("https://***@vault") && !e.contains("CANARY"), "{e}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let text = "addr = \"https://v\"\npath = \"p\"\nfield = \"f\"\ntoken_env = \"T\"\ntokne_file = \"x\"";
        assert!(toml::from_str::<VaultFile>(text).is_err());
    }
}
