//! Compile a configuration file into a complete `Snapshot`, or report every error at once.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use toml::Spanned;

use super::file::{FileConfig, SecretFile, ServiceFile};
use super::{ConfigError, Source};
use crate::control::snapshot::{Limits, Snapshot, Timeouts};
use crate::policy::Level;
use crate::policy::catalog::{Catalog, STRIPE_CATALOG};
use crate::policy::expand::{Expansions, STRIPE_EXPANSIONS};
use crate::policy::{Accounts, Policy, Service, Token, TokenRef};
use crate::secrets::vault::{Spec, VaultSource};
use crate::secrets::{EnvSource, FileSource, Loaded, Refresh, Secret, SecretCell, SecretSource};
use crate::text::line_of;
use crate::upstream::Upstream;

/// What to build beyond the policy: `keyward explain` needs none of it, `run` and `check` all.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub secrets: bool,
    pub tls: bool,
    pub clients: bool,
}

impl Options {
    pub const FULL: Options = Options { secrets: true, tls: true, clients: true };
    pub const POLICY_ONLY: Options = Options { secrets: false, tls: false, clients: false };
}

struct Errors<'a> {
    src: &'a Source,
    list: Vec<ConfigError>,
}

impl Errors<'_> {
    fn at(&mut self, span: Option<std::ops::Range<usize>>, key: impl AsRef<str>, msg: impl Into<String>) {
        let line = span.map(|s| line_of(&self.src.text, s.start));
        self.list.push(ConfigError::new(&self.src.name, line, key.as_ref(), msg));
    }
}

pub async fn compile(src: &Source, opts: Options) -> Result<Snapshot, Vec<ConfigError>> {
    compile_with(src, opts, None).await
}

/// `compile` for a reload: a vault secret whose configuration is unchanged keeps its cell from
/// `previous` (refreshed now), so a vault outage does not block a reload and counters go on.
pub async fn compile_with(
    src: &Source,
    opts: Options,
    previous: Option<&Snapshot>,
) -> Result<Snapshot, Vec<ConfigError>> {
    let file: FileConfig = toml::from_str(&src.text).map_err(|e| {
        let line = e.span().map(|s| line_of(&src.text, s.start));
        vec![ConfigError::new(&src.name, line, "", scrub(e.message()))]
    })?;
    let mut errs = Errors { src, list: Vec::new() };

    let (catalog, catalog_text) = load_catalog(&file, &mut errs);
    let (expansions, expansions_text) = load_expansions(&file, &catalog, &mut errs);
    let upstreams = build_upstreams(&file, opts, previous, &mut errs);
    let routes =
        catalog.entries.iter().map(|e| upstreams.iter().position(|u| *u.name == *e.upstream)).collect();
    let (secrets, secret_index) = load_secrets(&file, opts, previous, &mut errs).await;
    let (services, tokens) = build_services(&file, &catalog, &secret_index, &mut errs);

    // Bounds that keep a typo from becoming an allocation or a loop of that size.
    if file.audit.keep > 1000 {
        errs.at(None, "audit.keep", "must be at most 1000");
    }
    if file.audit.queue > 1_000_000 {
        errs.at(None, "audit.queue", "must be at most 1000000");
    }
    if file.limits.max_header_bytes < 8192 {
        errs.at(None, "limits.max_header_bytes", "must be at least 8192");
    }
    let l = &file.limits;
    for (key, n) in [
        ("limits.max_connections", l.max_connections),
        ("limits.max_connections_per_ip", l.max_connections_per_ip),
        ("limits.max_handshakes", l.max_handshakes),
        ("limits.max_streams_per_connection", l.max_streams_per_connection as usize),
    ] {
        if n == 0 {
            errs.at(None, key, "must be at least 1");
        }
    }
    let t = &file.timeouts;
    for (key, d) in [
        ("timeouts.request_body_idle", t.request_body_idle),
        ("timeouts.form_body", t.form_body),
        ("timeouts.client_send", t.client_send),
    ] {
        if d.is_zero() {
            errs.at(None, key, "must be longer than zero, e.g. \"10s\"");
        }
    }
    let tls = if opts.tls { load_tls(&file, &mut errs) } else { None };

    if !errs.list.is_empty() {
        return Err(errs.list);
    }
    let digest = Sha256::new()
        .chain_update(&src.text)
        .chain_update(&catalog_text)
        .chain_update(&expansions_text)
        .finalize();
    Ok(Snapshot {
        version: hex::encode(&digest[..6]).into(),
        listen: file.server.listen,
        admin_listen: file.server.admin_listen,
        tls,
        limits: Limits {
            max_body_bytes: file.limits.max_body_bytes,
            max_header_bytes: file.limits.max_header_bytes,
            max_form_bytes: file.limits.max_form_bytes,
            max_connections: file.limits.max_connections,
            max_connections_per_ip: file.limits.max_connections_per_ip,
            max_handshakes: file.limits.max_handshakes,
            max_streams_per_connection: file.limits.max_streams_per_connection,
        },
        timeouts: Timeouts {
            handshake: file.timeouts.handshake,
            request_head: file.timeouts.request_head,
            upstream: file.timeouts.upstream,
            shutdown_grace: file.timeouts.shutdown_grace,
            request_body_idle: file.timeouts.request_body_idle,
            form_body: file.timeouts.form_body,
            client_send: file.timeouts.client_send,
        },
        audit: crate::audit::writer::Settings {
            path: file.audit.path.clone(),
            max_bytes: file.audit.max_bytes,
            keep: file.audit.keep,
            queue: file.audit.queue,
            fail_closed: file.audit.on_failure == super::file::OnFailure::FailClosed,
        },
        files: input_files(src, &file),
        policy: Policy {
            catalog,
            expansions,
            routes,
            upstreams: upstreams.iter().map(|u| u.name.clone()).collect(),
            services,
            tokens,
        },
        upstreams,
        secrets,
    })
}

/// The files a configuration reads: the config itself, its catalog, secret files, certificates.
fn input_files(src: &Source, file: &FileConfig) -> Vec<std::path::PathBuf> {
    let mut files = vec![src.name.clone(), file.server.tls_cert.clone(), file.server.tls_key.clone()];
    files.extend(file.catalog.path.iter().chain(&file.catalog.expansions).cloned());
    files.extend(file.upstream.values().filter_map(|u| u.ca.clone()));
    for s in file.secret.values() {
        match s {
            SecretFile::File { path, .. } => files.push(path.clone()),
            SecretFile::Vault(v) => files.extend(v.ca.clone()),
            SecretFile::Env { .. } => {}
        }
    }
    files
}

/// A line-based table (catalog, expansions): the built-in one, or the file configured at
/// `key`. Every bad line is reported with its file and line; a broken table compiles empty.
fn load_table<T: Default>(
    path: Option<&Path>,
    builtin: (&str, &str),
    key: &str,
    parse: impl FnOnce(&str) -> Result<T, Vec<crate::policy::catalog::LineError>>,
    errs: &mut Errors,
) -> (T, String) {
    let (name, text) = match path {
        None => (builtin.0.to_string(), builtin.1.to_string()),
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (p.display().to_string(), t),
            Err(e) => {
                errs.at(None, key, format!("{}: {e}", p.display()));
                return (T::default(), String::new());
            }
        },
    };
    match parse(&text) {
        Ok(t) => (t, text),
        Err(lines) => {
            for l in lines {
                errs.list.push(ConfigError::new(Path::new(&name), Some(l.line), "", l.message));
            }
            (T::default(), text)
        }
    }
}

fn load_catalog(file: &FileConfig, errs: &mut Errors) -> (Catalog, String) {
    let builtin = ("<built-in Stripe catalog>", STRIPE_CATALOG);
    load_table(file.catalog.path.as_deref(), builtin, "catalog.path", Catalog::parse, errs)
}

fn load_expansions(file: &FileConfig, catalog: &Catalog, errs: &mut Errors) -> (Expansions, String) {
    // A broken catalog already said why; its names would be missing here too.
    if catalog.permission_count() == 0 {
        return (Expansions::default(), String::new());
    }
    // The built-in table names Stripe's permissions: it goes with the built-in catalog only.
    let builtin = match file.catalog.path {
        None => ("<built-in Stripe expansions>", STRIPE_EXPANSIONS),
        Some(_) => ("<no expansions>", ""),
    };
    let parse = |text: &str| Expansions::parse(text, catalog);
    load_table(file.catalog.expansions.as_deref(), builtin, "catalog.expansions", parse, errs)
}

/// Upstreams and their pooled clients. A reload keeps an upstream whose clients would be
/// built the same (same URL, CA file content, egress addresses, connect timeout), so its
/// warm connections survive the swap.
fn build_upstreams(
    file: &FileConfig,
    opts: Options,
    previous: Option<&Snapshot>,
    errs: &mut Errors,
) -> Vec<Upstream> {
    if file.upstream.is_empty() {
        errs.at(None, "upstream", "no [upstream.NAME] is configured");
    }
    let service_egress: HashSet<Option<IpAddr>> =
        file.service.iter().filter_map(|s| s.egress_ip).map(Some).collect();
    let mut out = Vec::new();
    for (name, u) in &file.upstream {
        let mut egress = service_egress.clone();
        egress.insert(u.egress_ip);
        let egress = if opts.clients { egress } else { HashSet::new() };
        let identity = upstream_identity(
            u.url.get_ref(),
            u.ca.as_deref(),
            &egress,
            file.timeouts.upstream_connect,
            u.http2,
        );
        let kept =
            previous.and_then(|p| p.upstreams.iter().find(|o| *o.name == **name && o.identity == identity));
        if let Some(old) = kept {
            out.push(old.clone().with_egress(u.egress_ip));
            continue;
        }
        let connect = file.timeouts.upstream_connect;
        match Upstream::build(name, u.url.get_ref(), u.ca.as_deref(), egress, connect, u.http2) {
            Ok(up) => out.push(up.with_egress(u.egress_ip).with_identity(identity)),
            Err(msg) => errs.at(Some(u.url.span()), format!("upstream.{name}.url"), msg),
        }
    }
    out
}

fn upstream_identity(
    url: &str,
    ca: Option<&Path>,
    egress: &HashSet<Option<IpAddr>>,
    connect: std::time::Duration,
    http2: bool,
) -> [u8; 32] {
    let mut egress: Vec<String> = egress.iter().map(|e| format!("{e:?}")).collect();
    egress.sort();
    let ca_bytes = ca.map(|p| std::fs::read(p).unwrap_or_default()).unwrap_or_default();
    Sha256::new()
        .chain_update(url)
        .chain_update([0])
        .chain_update(&ca_bytes)
        .chain_update(egress.join(","))
        .chain_update(connect.as_millis().to_le_bytes())
        .chain_update([u8::from(http2)])
        .finalize()
        .into()
}

async fn load_secrets(
    file: &FileConfig,
    opts: Options,
    previous: Option<&Snapshot>,
    errs: &mut Errors<'_>,
) -> (Vec<Arc<SecretCell>>, HashMap<String, usize>) {
    let used: HashSet<&str> = file.service.iter().map(|s| s.secret.get_ref().as_str()).collect();
    let mut secrets = Vec::new();
    let mut index = HashMap::new();
    for (name, def) in &file.secret {
        if !used.contains(name.as_str()) {
            continue;
        }
        let key = format!("secret.{name}");
        let cell = match def {
            SecretFile::Vault(v) => {
                let spec = match Spec::parse(v) {
                    Ok(spec) => spec,
                    Err(list) => {
                        for (k, msg) in list {
                            errs.at(None, format!("{key}.{k}"), msg);
                        }
                        continue;
                    }
                };
                if !opts.secrets {
                    placeholder(name)
                } else {
                    match vault_cell(name, spec, v, previous).await {
                        Ok(cell) => cell,
                        Err(msg) => {
                            errs.at(None, &key, msg);
                            continue;
                        }
                    }
                }
            }
            SecretFile::File { .. } | SecretFile::Env { .. } if !opts.secrets => placeholder(name),
            SecretFile::File { path, key: k } => {
                match (FileSource { path: path.clone(), key: k.clone() }).load().await {
                    Ok(l) => Arc::new(SecretCell::new(name, l, None)),
                    Err(msg) => {
                        errs.at(None, &key, msg);
                        continue;
                    }
                }
            }
            SecretFile::Env { var } => match (EnvSource { var: var.clone() }).load().await {
                Ok(l) => Arc::new(SecretCell::new(name, l, None)),
                Err(msg) => {
                    errs.at(None, &key, msg);
                    continue;
                }
            },
        };
        index.insert(name.clone(), secrets.len());
        secrets.push(cell);
    }
    (secrets, index)
}

fn placeholder(name: &str) -> Arc<SecretCell> {
    Arc::new(SecretCell::new(name, Loaded { value: Secret::new(String::new()), version: None }, None))
}

/// The running cell if its configuration is unchanged (refreshed now: a failure keeps the
/// last good value), else a new source loaded for the first time (a failure is an error).
async fn vault_cell(
    name: &str,
    spec: Spec,
    file: &crate::secrets::vault::VaultFile,
    previous: Option<&Snapshot>,
) -> Result<Arc<SecretCell>, String> {
    let source = VaultSource::connect(spec, file)?;
    let kept = previous
        .and_then(|p| p.secrets.iter().find(|c| &*c.name == name))
        .filter(|c| c.refresh_plan().is_some_and(|r| r.origin == source.origin()));
    if let Some(cell) = kept {
        cell.refresh().await;
        return Ok(cell.clone());
    }
    let loaded = source.load().await?;
    let s = source.spec();
    let (every, max_staleness, on_stale, origin) = (s.refresh, s.max_staleness, s.on_stale, source.origin());
    let refresh = Refresh::new(Box::new(source), every, max_staleness, on_stale, origin);
    Ok(Arc::new(SecretCell::new(name, loaded, Some(refresh))))
}

fn build_services(
    file: &FileConfig,
    catalog: &Catalog,
    secret_index: &HashMap<String, usize>,
    errs: &mut Errors,
) -> (Vec<Service>, HashMap<[u8; 32], TokenRef>) {
    let mut services = Vec::new();
    let mut tokens = HashMap::new();
    let mut names = HashSet::new();
    for (i, s) in file.service.iter().enumerate() {
        let key = format!("service[{i}]");
        // Records, reports and metrics name a service by this; `(…)` is theirs for "none".
        let name = s.name.get_ref().as_str();
        if name.is_empty() || name.starts_with('(') || name.chars().any(char::is_control) {
            errs.at(
                Some(s.name.span()),
                format!("{key}.name"),
                "must be non-empty, not start with `(`, and have no control characters",
            );
        }
        if !names.insert(s.name.get_ref().as_str()) {
            errs.at(
                Some(s.name.span()),
                format!("{key}.name"),
                format!("service `{}` is defined twice", s.name.get_ref()),
            );
        }
        let secret = match secret_index.get(s.secret.get_ref()) {
            Some(idx) => *idx,
            None if file.secret.contains_key(s.secret.get_ref()) => usize::MAX, // failed to load: reported
            None => {
                errs.at(
                    Some(s.secret.span()),
                    format!("{key}.secret"),
                    format!("no [secret.{}] is defined", s.secret.get_ref()),
                );
                usize::MAX
            }
        };
        if s.source_ips.is_empty() {
            errs.at(
                Some(s.name.span()),
                format!("{key}.source_ips"),
                "is empty: list the networks allowed to call, e.g. [\"10.0.0.0/8\"]",
            );
        }
        let svc_tokens = build_tokens(s, &key, services.len() as u32, &mut tokens, errs);
        services.push(Service {
            name: s.name.get_ref().as_str().into(),
            mode: s.mode,
            source_ips: s.source_ips.clone(),
            accounts: accounts(s, &key, errs),
            scope: scope(s, &key, catalog, errs),
            secret,
            egress_ip: s.egress_ip,
            tokens: svc_tokens,
        });
    }
    (services, tokens)
}

fn build_tokens(
    s: &ServiceFile,
    key: &str,
    service: u32,
    index: &mut HashMap<[u8; 32], TokenRef>,
    errs: &mut Errors,
) -> Vec<Token> {
    let mut out = Vec::new();
    let mut ids = HashSet::new();
    for (j, t) in s.token.iter().enumerate() {
        let tkey = format!("{key}.token[{j}]");
        if !ids.insert(t.id.get_ref().as_str()) {
            errs.at(Some(t.id.span()), format!("{tkey}.id"), "token id is used twice in this service");
        }
        let hash = t.sha256.get_ref();
        let mut digest = [0u8; 32];
        if hash.len() != 64 || hex::decode_to_slice(hash.to_ascii_lowercase(), &mut digest).is_err() {
            errs.at(
                Some(t.sha256.span()),
                format!("{tkey}.sha256"),
                "must be 64 hex digits (the SHA-256 of the token; see `keyward token new`)",
            );
        } else if index.insert(digest, TokenRef { service, token: j as u32 }).is_some() {
            errs.at(
                Some(t.sha256.span()),
                format!("{tkey}.sha256"),
                "the same token hash is configured twice",
            );
        }
        out.push(Token {
            id: t.id.get_ref().as_str().into(),
            expires: timestamp(t.expires.as_ref(), &format!("{tkey}.expires"), errs),
            not_before: timestamp(t.not_before.as_ref(), &format!("{tkey}.not_before"), errs),
            source_ips: t.source_ips.clone(),
        });
    }
    out
}

fn timestamp(v: Option<&Spanned<String>>, key: &str, errs: &mut Errors) -> Option<i64> {
    let v = v?;
    match OffsetDateTime::parse(v.get_ref(), &Rfc3339) {
        Ok(t) => Some(t.unix_timestamp()),
        Err(_) => {
            errs.at(Some(v.span()), key, "must be an RFC 3339 time such as 2027-01-31T00:00:00Z");
            None
        }
    }
}

fn accounts(s: &ServiceFile, key: &str, errs: &mut Errors) -> Accounts {
    match s.accounts.as_slice() {
        [] => Accounts::PlatformOnly,
        [one] if one == "*" => Accounts::Any,
        list => {
            if list.iter().any(|a| a == "*") {
                errs.at(Some(s.name.span()), format!("{key}.accounts"), "\"*\" must stand alone");
            }
            // Not repeated: a value pasted into the wrong place could be a secret.
            for (n, _) in list.iter().enumerate().filter(|(_, a)| !is_account_id(a)) {
                errs.at(
                    Some(s.name.span()),
                    format!("{key}.accounts[{n}]"),
                    "is not an account id like acct_1Nv0FGQ9RKHgCVdK",
                );
            }
            Accounts::Only(list.to_vec())
        }
    }
}

fn is_account_id(a: &str) -> bool {
    a.strip_prefix("acct_").is_some_and(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn scope(s: &ServiceFile, key: &str, catalog: &Catalog, errs: &mut Errors) -> Vec<Level> {
    let default = s.scope.iter().find(|(k, _)| k.get_ref() == "*").map(|(_, l)| *l).unwrap_or(Level::None);
    let mut levels = vec![default; catalog.permission_count()];
    for (name, level) in &s.scope {
        if name.get_ref() == "*" {
            continue;
        }
        match catalog.permission_id(name.get_ref()) {
            Some(id) => levels[id.0 as usize] = *level,
            None => errs.at(
                Some(name.span()),
                format!("{key}.scope.{}", name.get_ref()),
                "names no permission in the catalog (see `keyward catalog`)",
            ),
        }
    }
    levels
}

fn load_tls(file: &FileConfig, errs: &mut Errors) -> Option<Arc<rustls::ServerConfig>> {
    let (cert, key) = (&file.server.tls_cert, &file.server.tls_key);
    if file.server.dev_certs {
        match crate::control::tls::ensure_dev_certs(cert, key) {
            Ok(true) => {
                tracing::warn!(cert = %cert.display(), "made development certificates; do not use them in production")
            }
            Ok(false) => {}
            Err(msg) => errs.at(None, "server.dev_certs", msg),
        }
    }
    match crate::control::tls::server_config(cert, key) {
        Ok(cfg) => Some(Arc::new(cfg)),
        Err(msg) => {
            errs.at(None, "server.tls_cert", msg);
            None
        }
    }
}

/// serde messages quote the offending value (`invalid type: string "…"`); a config may hold
/// a secret in the wrong place, so drop anything quoted.
fn scrub(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let tail = rest.split_once('`').map_or("", |(_, t)| t);
        return format!("unknown variant{tail}").trim_end().to_string();
    }
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match c {
            '"' if !quoted => {
                quoted = true;
                out.push_str("\"…");
            }
            '"' => {
                quoted = false;
                out.push('"');
            }
            _ if quoted => {}
            _ => out.push(c),
        }
    }
    out.trim_end().to_string()
}
