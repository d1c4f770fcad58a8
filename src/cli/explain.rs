//! `keyward explain`: how a call would be classified and decided for a service, by the same
//! pure policy the proxy runs (no token, no source address, no network).

use std::process::ExitCode;

use clap::Args;
use keyward::policy::catalog::{Access, Catalog, STRIPE_CATALOG, permission_name};
use keyward::policy::expand::{Expansions, STRIPE_EXPANSIONS};
use keyward::policy::{self, Accounts, Decision, Failure, Level, Mode, Policy, Service, Verdict};

use super::{ConfigArg, fail, lenient_policy};

#[derive(Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Use the built-in Stripe catalog and no services: say which permission a call needs.
    #[arg(long, conflicts_with_all = ["config", "service"])]
    no_config: bool,
    /// The service whose scope decides [required unless --no-config].
    #[arg(long, required_unless_present = "no_config")]
    service: Option<String>,
    /// Extra request header, e.g. --header 'Stripe-Account: acct_123' (repeatable).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// A form body (application/x-www-form-urlencoded) to check too, e.g. 'expand[]=customer'.
    #[arg(long, value_name = "BODY")]
    form: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// GET, POST or DELETE.
    method: String,
    /// The path and query, e.g. /v1/charges/ch_123?expand[]=customer
    path: String,
}

pub async fn explain(args: ExplainArgs) -> ExitCode {
    let policy = match args.no_config {
        true => builtin(),
        false => match lenient_policy(args.config.config.as_deref()) {
            Ok(p) => p,
            Err(code) => return code,
        },
    };
    let anyone = anyone(&policy);
    let svc = match &args.service {
        None => &anyone,
        Some(name) => match policy.services.iter().find(|s| &*s.name == name) {
            Some(s) => s,
            None => {
                let known: Vec<&str> = policy.services.iter().map(|s| &*s.name).collect();
                let known = match known.is_empty() {
                    true => "the configuration has none".to_string(),
                    false => format!("the configuration has: {}", known.join(", ")),
                };
                return fail([format!("no service named `{name}`; {known}")]);
            }
        },
    };
    let mut req = http::Request::builder().method(args.method.to_ascii_uppercase().as_str()).uri(&args.path);
    for h in &args.headers {
        let Some((k, v)) = h.split_once(':') else {
            return fail([format!("header `{h}` is not `Name: value`")]);
        };
        req = req.header(k.trim(), v.trim());
    }
    let parts = match req.body(()) {
        Ok(r) => r.into_parts().0,
        Err(e) => return fail([format!("bad request: {e}")]),
    };
    let ruling = policy::authorize(&policy, svc, &parts, args.form.is_some(), "kw_***");
    // The body rules apply to a call the policy lets go.
    let form = match (&ruling.verdict, &args.form) {
        (Verdict::Allow(_) | Verdict::WouldDeny(..), Some(body)) => {
            policy::check_form(&policy, svc, body.as_bytes(), "kw_***")
        }
        _ => Ok(None),
    };
    let (decision, failure) = match (&ruling.verdict, &form) {
        (_, Err(f)) => (Decision::Deny, Some(f)),
        (Verdict::Deny(f), _) => (Decision::Deny, Some(f)),
        (Verdict::WouldDeny(_, f), _) | (Verdict::Allow(_), Ok(Some(f))) => (Decision::WouldDeny, Some(f)),
        (Verdict::Allow(_), Ok(None)) => (Decision::Allow, None),
    };
    // The expansions asked for in the query string and in the form body, if they read one way.
    let mut query =
        keyward::policy::params::read(parts.uri.query().unwrap_or("").as_bytes()).unwrap_or_default();
    if let Some(body) = &args.form {
        query.extend(keyward::policy::params::read(body.as_bytes()).unwrap_or_default());
    }
    let expansions: Vec<serde_json::Value> = policy
        .expansions
        .required(&query)
        .map(|(field, perm)| {
            serde_json::json!({
                "field": field,
                "permission": permission_name(policy.catalog.permission(perm), Access::Read),
                "granted": svc.level(perm) >= Level::Read,
            })
        })
        .collect();
    let out = serde_json::json!({
        "decision": decision.as_str(),
        "reason": failure.map_or("ok", Failure::code),
        "allow_with": failure.and_then(scope_line),
        "message": failure.map(Failure::message),
        "service": args.service,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "template": ruling.entry.map(|e| e.template.clone()),
        "permission": ruling.entry.map(|e| e.name.clone()),
        "access": ruling.entry.map(|e| e.access.as_str()),
        "upstream": ruling.upstream.map(|i| policy.upstreams[i].clone()),
        "expansions": expansions,
    });
    if args.json {
        println!("{out}");
    } else {
        // Decision first, then why and what would allow it, then what was classified.
        let order = ["decision", "reason", "allow_with", "message", "service", "method", "path", "template"];
        let rest = ["permission", "access", "upstream", "expansions"];
        for k in order.iter().chain(&rest) {
            let v = &out[k];
            if !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()) {
                let v = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
                println!("{k:>10}: {}", keyward::text::shown(&v));
            }
        }
    }
    // Without a configuration the question is only which permission a call needs.
    let refused = match args.no_config {
        true => failure.is_some_and(|f| !matches!(f, Failure::MissingPermission { .. })),
        false => decision == Decision::Deny,
    };
    if refused { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// The scope lines that would allow a call refused for permissions: `charge = "write"`, and
/// each expansion's after it (`charge = "read", invoice = "read"`).
fn scope_line(f: &Failure) -> Option<String> {
    let lines: Vec<String> = f
        .missing()
        .filter_map(|p| p.rsplit_once('_'))
        .map(|(base, level)| format!("{base} = \"{level}\""))
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}

/// The built-in Stripe catalog and expansions, with no services.
fn builtin() -> Policy {
    let catalog = Catalog::parse(STRIPE_CATALOG).expect("the built-in catalog parses");
    let expansions = Expansions::parse(STRIPE_EXPANSIONS, &catalog).expect("the built-in expansions parse");
    // Every upstream the catalog names, as if configured.
    let mut upstreams: Vec<std::sync::Arc<str>> = Vec::new();
    for e in &catalog.entries {
        if !upstreams.iter().any(|u| **u == *e.upstream) {
            upstreams.push(e.upstream.as_str().into());
        }
    }
    let routes = catalog.entries.iter().map(|e| upstreams.iter().position(|u| **u == *e.upstream)).collect();
    let main_upstream = upstreams.iter().position(|u| **u == *policy::MAIN_UPSTREAM);
    Policy { catalog, expansions, routes, upstreams, main_upstream, ..Policy::default() }
}

/// A service granted nothing, for any account: what `--no-config` decides for.
fn anyone(policy: &Policy) -> Service {
    Service {
        index: usize::MAX,
        livemode: None,
        name: "(none)".into(),
        mode: Mode::Enforce,
        source_ips: vec![],
        accounts: Accounts::Any,
        scope: vec![Level::None; policy.catalog.permission_count()],
        secret: 0,
        egress_ip: None,
        tokens: vec![],
        client_ids: vec![],
        quarantine: None,
        spend: Vec::new(),
    }
}
