//! The pure half of compiling a configuration: the file's text and its tables (catalog,
//! expansions) in, a `Plan` out, or every error found. No files, sockets or clocks: what needs
//! them (secrets, certificates, upstream clients) is done by `build` from the plan.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::errors::Errors;
use super::file::{FileConfig, SecretFile};
use super::{ConfigError, Source};
use crate::control::snapshot::{ForwardSettings, Limits, Timeouts};
use crate::policy::Policy;
use crate::policy::catalog::Catalog;
use crate::policy::expand::Expansions;
use crate::secrets::vault::Spec;
use crate::text::line_of;

/// A table a configuration reads (catalog, expansions), as text, with the name errors give it.
pub struct Table {
    pub name: String,
    pub text: String,
}

/// Everything a configuration asks for that needs no I/O to know.
pub struct Plan {
    pub file: FileConfig,
    /// Short hash of the configuration and its tables, carried by every access record.
    pub version: Arc<str>,
    pub policy: Policy,
    /// The secrets the services use, by name, in the order of `Service::secret` indices.
    pub secrets: Vec<String>,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub audit: crate::audit::Settings,
    pub forward: Option<ForwardSettings>,
    /// `rate`, `burst`, `concurrency` of the services that have them.
    pub service_limits: Vec<(Arc<str>, Option<crate::control::limits::LimitSpec>)>,
    /// The index in `secrets` of `forward.ca_key_secret`.
    pub forward_ca_secret: Option<usize>,
    /// The index in `secrets` of `audit.signing_key_secret`.
    pub audit_key_secret: Option<usize>,
    /// `[ratelimit]`: the shared budget and the Redis store.
    pub ratelimit: super::ratelimit::RatelimitPlan,
    /// The index in `secrets` of `ratelimit.password_secret`.
    pub redis_secret: Option<usize>,
    /// `telemetry.otlp_endpoint`.
    pub otlp_endpoint: Option<String>,
    /// Every file the configuration reads: a change to any of them triggers a reload.
    pub files: Vec<PathBuf>,
    pub admin: super::admin::AdminSettings,
}

/// Read the configuration text into its file types (the first syntax or type error stops it).
pub fn parse(src: &Source) -> Result<FileConfig, Vec<ConfigError>> {
    toml::from_str(&src.text).map_err(|e| {
        let line = e.span().map(|s| line_of(&src.text, s.start));
        vec![ConfigError::new(&src.name, line, "", with_suggestion(&scrub(e.message())))]
    })
}

/// Check everything in `file` and compile its policy. `catalog` and `expansions` are the
/// tables it names (or the built-in ones), already read. The plan comes with every error
/// found; with errors it is only good for finding more (`build` still checks its files and
/// secrets, so that `keyward check` reports everything at once).
pub fn validate(
    src: &Source,
    file: FileConfig,
    catalog: &Table,
    expansions: &Table,
) -> (Plan, Vec<ConfigError>) {
    let mut errs = Errors { src, list: Vec::new() };
    let catalog_parsed = Catalog::parse(&catalog.text).unwrap_or_else(|lines| {
        errs.table(&catalog.name, lines);
        Catalog::default()
    });
    // A broken catalog already said why; its names would be missing here too.
    let expansions_parsed = match catalog_parsed.permission_count() {
        0 => Expansions::default(),
        _ => Expansions::parse(&expansions.text, &catalog_parsed).unwrap_or_else(|lines| {
            errs.table(&expansions.name, lines);
            Expansions::default()
        }),
    };
    check_upstreams(&file, &mut errs);
    let upstreams: Vec<Arc<str>> = file.upstream.keys().map(|n| Arc::from(n.as_str())).collect();
    let routes =
        catalog_parsed.entries.iter().map(|e| upstreams.iter().position(|u| **u == *e.upstream)).collect();
    let mut hosts = super::forward::hosts(&file);
    let forward = super::forward::check(&file, &hosts, &mut errs);
    // Without a `[forward]` no host is intercepted: a reload that removes it ends the tunnels.
    if forward.is_none() {
        hosts.fill(None);
    }
    let secrets = check_secrets(&file, &mut errs);
    let forward_ca_secret = file
        .forward
        .as_ref()
        .and_then(|f| f.ca_key_secret.as_ref())
        .and_then(|n| secrets.iter().position(|s| s == n.get_ref()));
    let audit_key_secret =
        file.audit.signing_key_secret.as_ref().and_then(|n| secrets.iter().position(|s| s == n.get_ref()));
    let redis_secret =
        file.ratelimit.password_secret.as_ref().and_then(|n| secrets.iter().position(|s| s == n.get_ref()));
    let ratelimit = super::ratelimit::check(&file, &mut errs);
    let otlp_endpoint = check_otlp(&file, &mut errs);
    let index: HashMap<&str, usize> = secrets.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
    let compiled = super::services::build(&file, &catalog_parsed, &index, &mut errs);
    let (services, tokens, service_limits) = (compiled.services, compiled.tokens, compiled.limits);
    let admin = super::admin::check(&file, &tokens, &mut errs);
    check_bounds(&file, &mut errs);
    let digest = Sha256::new()
        .chain_update(&src.text)
        .chain_update(&catalog.text)
        .chain_update(&expansions.text)
        .finalize();
    let (l, t, a) = (&file.limits, &file.timeouts, &file.audit);
    let plan = Plan {
        version: hex::encode(&digest[..6]).into(),
        policy: Policy {
            catalog: catalog_parsed,
            expansions: expansions_parsed,
            routes,
            main_upstream: upstreams.iter().position(|u| **u == *crate::policy::MAIN_UPSTREAM),
            upstreams,
            hosts,
            services,
            tokens,
        },
        secrets,
        limits: limits(l),
        timeouts: timeouts(t),
        audit: crate::audit::Settings {
            path: a.path.clone(),
            max_bytes: a.max_bytes,
            keep: a.keep,
            queue: a.queue,
            fail_closed: a.on_failure == super::file::OnFailure::FailClosed,
            refusals_per_ip: a.refusals_per_ip,
            refusals_per_second: a.refusals_per_second,
            fold_interval: a.fold_interval,
            checkpoint_interval: a.checkpoint_interval,
            checkpoints: a.checkpoints.clone(),
            signer: None,
        },
        audit_key_secret,
        forward,
        service_limits,
        forward_ca_secret,
        ratelimit,
        redis_secret,
        otlp_endpoint,
        files: input_files(src, &file),
        admin,
        file,
    };
    (plan, errs.list)
}

fn check_upstreams(file: &FileConfig, errs: &mut Errors) {
    if file.upstream.is_empty() {
        errs.at(None, "upstream", "no [upstream.NAME] is configured");
    }
    for (name, u) in &file.upstream {
        if let Err(msg) = crate::upstream::check_url(u.url.get_ref()) {
            errs.at(Some(u.url.span()), format!("upstream.{name}.url"), msg);
        }
    }
}

/// The secrets services use (others are never read), checked where that needs no I/O.
fn check_secrets(file: &FileConfig, errs: &mut Errors) -> Vec<String> {
    let forward = file.forward.iter().filter_map(|f| f.ca_key_secret.as_ref());
    let redis = file.ratelimit.password_secret.iter();
    let audit = file.audit.signing_key_secret.iter();
    let used: HashSet<&str> = file
        .service
        .iter()
        .map(|s| &s.secret)
        .chain(forward)
        .chain(redis)
        .chain(audit)
        .map(|s| s.get_ref().as_str())
        .collect();
    let mut out = Vec::new();
    for (name, def) in file.secret.iter().filter(|(n, _)| used.contains(n.as_str())) {
        if let SecretFile::Vault(v) = def
            && let Err(list) = Spec::parse(v)
        {
            for (k, msg) in list {
                errs.at(None, format!("secret.{name}.{k}"), msg);
            }
        }
        out.push(name.clone());
    }
    out
}

/// `telemetry.otlp_endpoint`: an `http://` or `https://` base URL, nothing after the path.
fn check_otlp(file: &FileConfig, errs: &mut Errors) -> Option<String> {
    let e = file.telemetry.otlp_endpoint.as_ref()?;
    let ok = e.get_ref().parse::<http::Uri>().is_ok_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some() && u.query().is_none()
    });
    if !ok {
        errs.at(
            Some(e.span()),
            "telemetry.otlp_endpoint",
            "must be an http:// or https:// URL such as http://otel-collector:4318",
        );
        return None;
    }
    Some(e.get_ref().clone())
}

/// The `[limits]` as the request path reads them.
pub fn limits(l: &super::file::LimitsFile) -> Limits {
    Limits {
        max_body_bytes: l.max_body_bytes,
        max_header_bytes: l.max_header_bytes,
        max_form_bytes: l.max_form_bytes,
        max_form_bytes_total: l.max_form_bytes_total,
        max_connections: l.max_connections,
        max_connections_per_ip: l.max_connections_per_ip,
        max_handshakes: l.max_handshakes,
        max_handshakes_per_ip: l.max_handshakes_per_ip,
        max_streams_per_connection: l.max_streams_per_connection,
        max_unproven_connections: l.max_unproven_connections,
        max_unproven_per_ip: l.max_unproven_per_ip,
        refusals_per_connection: l.refusals_per_connection,
    }
}

fn timeouts(t: &super::file::TimeoutsFile) -> Timeouts {
    Timeouts {
        handshake: t.handshake,
        request_head: t.request_head,
        upstream: t.upstream,
        shutdown_grace: t.shutdown_grace,
        request_body_idle: t.request_body_idle,
        form_body: t.form_body,
        client_send: t.client_send,
        drain_delay: t.drain_delay,
        ping_interval: t.ping_interval,
        ping_timeout: t.ping_timeout,
        client_hello: t.client_hello,
        unproven_idle: t.unproven_idle,
    }
}

/// Bounds that keep a typo from becoming an allocation or a loop of that size.
fn check_bounds(file: &FileConfig, errs: &mut Errors) {
    if file.audit.keep > 1000 {
        errs.at(None, "audit.keep", "must be at most 1000");
    }
    if file.audit.queue > 1_000_000 {
        errs.at(None, "audit.queue", "must be at most 1000000");
    }
    if file.audit.refusals_per_ip == 0 {
        errs.at(None, "audit.refusals_per_ip", "must be at least 1");
    }
    if file.audit.refusals_per_second < file.audit.refusals_per_ip {
        errs.at(None, "audit.refusals_per_second", "must be at least audit.refusals_per_ip");
    }
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&file.audit.fold_interval) {
        errs.at(None, "audit.fold_interval", "must be between 100ms and 60s");
    }
    if !(Duration::from_millis(100)..=Duration::from_secs(3600)).contains(&file.audit.checkpoint_interval) {
        errs.at(None, "audit.checkpoint_interval", "must be between 100ms and 1h");
    }
    if let Some(s) = &file.audit.signing_key_secret
        && !file.secret.contains_key(s.get_ref())
    {
        errs.at(
            Some(s.span()),
            "audit.signing_key_secret",
            format!("no [secret.{}] is defined", s.get_ref()),
        );
    }
    if file.audit.checkpoints.as_deref().is_some_and(|c| c.is_empty() || c == "-" || c == file.audit.path) {
        errs.at(
            None,
            "audit.checkpoints",
            "must be \"stderr\" or a file other than the access log (audit.path), kept where the log's writer cannot rewrite it",
        );
    }
    if file.limits.max_header_bytes < 8192 {
        errs.at(None, "limits.max_header_bytes", "must be at least 8192");
    }
    if file.limits.max_form_bytes_total < file.limits.max_form_bytes {
        errs.at(None, "limits.max_form_bytes_total", "must be at least limits.max_form_bytes");
    }
    let l = &file.limits;
    for (key, n) in [
        ("limits.max_connections", l.max_connections),
        ("limits.max_connections_per_ip", l.max_connections_per_ip),
        ("limits.max_handshakes", l.max_handshakes),
        ("limits.max_handshakes_per_ip", l.max_handshakes_per_ip),
        ("limits.max_streams_per_connection", l.max_streams_per_connection as usize),
        ("limits.max_unproven_connections", l.max_unproven_connections),
        ("limits.max_unproven_per_ip", l.max_unproven_per_ip),
        ("limits.refusals_per_connection", l.refusals_per_connection as usize),
    ] {
        if n == 0 {
            errs.at(None, key, "must be at least 1");
        }
    }
    let t = &file.timeouts;
    for (key, d) in [
        ("timeouts.handshake", t.handshake),
        ("timeouts.request_head", t.request_head),
        ("timeouts.upstream_connect", t.upstream_connect),
        ("timeouts.upstream", t.upstream),
        ("timeouts.request_body_idle", t.request_body_idle),
        ("timeouts.form_body", t.form_body),
        ("timeouts.client_send", t.client_send),
        ("timeouts.ping_interval", t.ping_interval),
        ("timeouts.ping_timeout", t.ping_timeout),
        ("timeouts.client_hello", t.client_hello),
        ("timeouts.unproven_idle", t.unproven_idle),
    ] {
        if d.is_zero() {
            errs.at(None, key, "must be longer than zero, e.g. \"10s\"");
        }
    }
}

/// The files a configuration reads: the config itself, its tables, secret files, certificates.
fn input_files(src: &Source, file: &FileConfig) -> Vec<PathBuf> {
    let mut files = vec![src.name.clone(), file.server.tls_cert.clone(), file.server.tls_key.clone()];
    files.extend(file.server.client_ca.clone());
    files.extend(file.catalog.path.iter().chain(&file.catalog.expansions).cloned());
    files.extend(file.upstream.values().filter_map(|u| u.ca.clone()));
    if let Some(f) = &file.forward {
        files.push(f.ca_cert.clone());
        files.extend(f.ca_key.clone());
    }
    for s in file.secret.values() {
        match s {
            SecretFile::File { path, .. } => files.push(path.clone()),
            SecretFile::Vault(v) => files.extend(v.ca.clone()),
            SecretFile::Env { .. } => {}
        }
    }
    files
}

/// serde's "unknown field `tokn`, expected one of `token`, …" with the closest one named.
fn with_suggestion(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else { return message.to_string() };
    let Some((given, expected)) = rest.split_once("`, expected ") else { return message.to_string() };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    format!("{message}{}", super::services::did_you_mean(given, &known))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::catalog::STRIPE_CATALOG;
    use crate::policy::expand::STRIPE_EXPANSIONS;

    const HASH: &str = "5f9c4ab08cac7457e9111a30e4664920607ea2c115a1433d7be98e97e64244ca";

    fn config(service: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"c\"\ntls_key = \"k\"\n\
             [upstream.api]\nurl = \"https://api.stripe.com\"\n\
             [secret.stripe]\nsource = \"env\"\nvar = \"S\"\n\
             [[service]]\nname = \"billing\"\nsecret = \"stripe\"\nsource_ips = [\"10.0.0.0/8\"]\n{service}"
        )
    }

    /// Every error `check` would print for `text`, one per line.
    fn errors(text: &str) -> String {
        let src = Source { name: "k.toml".into(), text: text.to_string() };
        let builtin = |name: &str, text: &str| Table { name: name.into(), text: text.into() };
        let list = match parse(&src) {
            Ok(file) => {
                validate(&src, file, &builtin("<c>", STRIPE_CATALOG), &builtin("<e>", STRIPE_EXPANSIONS)).1
            }
            Err(list) => list,
        };
        list.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn a_good_configuration_plans_without_io() {
        let text = config(&format!(
            "[[service.token]]\nid = \"b1\"\nsha256 = \"{HASH}\"\n[service.scope]\ncharge = \"read\"\n"
        ));
        assert_eq!(errors(&text), "");
    }

    #[test]
    fn each_mistake_is_named_by_line_key_and_what_was_expected() {
        let cases = [
            ("tokn = 1\n", "unknown field `tokn`"),
            ("tokn = 1\n", "did you mean `token`?"),
            (
                "[service.scope]\nchrage = \"read\"\n",
                "k.toml:15: service \"billing\".scope.chrage: names no permission",
            ),
            ("[service.scope]\nchrage = \"read\"\n", "did you mean `charge`?"),
            ("[service.scope]\ncharge = \"reed\"\n", "unknown variant, expected one of"),
            (
                "[[service.token]]\nid = \"b1\"\nsha256 = \"zz\"\n",
                "service \"billing\".token[0].sha256: must be 64 hex digits",
            ),
            (
                &format!("[[service.token]]\nid = \"b1\"\nsha256 = \"{HASH}\"\nexpires = \"tomorrow\"\n"),
                "token[0].expires: must be an RFC 3339 time such as \"2027-01-31T00:00:00Z\"",
            ),
            ("accounts = [\"sk_live_CANARY\"]\n", "accounts[0]: is not an account id"),
        ];
        for (service, want) in cases {
            let got = errors(&config(service));
            assert!(got.contains(want), "{service:?}: want {want:?} in:\n{got}");
            assert!(!got.contains("CANARY"), "a value was repeated: {got}");
        }
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let text = config("[service.scope]\nchrage = \"read\"\nrefnd = \"write\"\n")
            .replace("secret = \"stripe\"", "secret = \"strpe\"")
            .replace("https://api.stripe.com", "http://api.stripe.com")
            + "[limits]\nmax_handshakes = 0\n";
        let got = errors(&text);
        for want in [
            "scope.chrage",
            "scope.refnd",
            "no [secret.strpe] is defined; did you mean `stripe`?",
            "upstream.api.url",
            "limits.max_handshakes: must be at least 1",
        ] {
            assert!(got.contains(want), "want {want:?} in:\n{got}");
        }
    }
}
