//! Command-line interface: run, check, explain, catalog, token new, certs dev.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keyward::control::config::{self, Options, Source};
use keyward::policy::{Verdict, authorize};

#[derive(Parser)]
#[command(name = "keyward", version, about = "Egress proxy that holds your payments API keys")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve: the proxy on `server.listen`.
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Log format: text or json.
        #[arg(long, default_value = "text")]
        log_format: String,
        /// Worker threads (default: one per CPU). 1 runs everything on one thread.
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Validate the configuration, its catalog, certificates and secrets.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Warn about tokens that expire within this long (e.g. 14d, 36h).
        #[arg(long, default_value = "14d", value_parser = humantime::parse_duration)]
        expiry_warning: std::time::Duration,
    },
    /// Ask the running keyward to reload its configuration (POST /-/reload on the admin port).
    Reload {
        #[arg(long)]
        config: Option<PathBuf>,
        /// The admin address; default: `server.admin_listen` from the config.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
    /// Show how a call would be classified and decided for a service.
    Explain {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        service: String,
        /// Extra request header, e.g. --header 'Stripe-Account: acct_123'.
        #[arg(long = "header")]
        headers: Vec<String>,
        #[arg(long)]
        json: bool,
        method: String,
        path: String,
    },
    /// List the catalog: which permission each endpoint needs.
    Catalog {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only entries whose permission base or path contains this text.
        filter: Option<String>,
    },
    /// The access log: verify its chain, summarise it.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token for SERVICE: prints it once, with the config snippet holding its hash.
    New {
        service: String,
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check that no record was edited, dropped, reordered, inserted or truncated.
    /// Give rotated files oldest first: audit.jsonl.2 audit.jsonl.1 audit.jsonl
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Summarise: decisions per service and permission, top denials, would-deny, tokens, upstreams.
    Report {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// RFC 3339 time, inclusive.
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 time, exclusive.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        service: Option<String>,
        /// table, json or html.
        #[arg(long, default_value = "table")]
        format: String,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Make a development CA and a certificate for localhost in DIR.
    Dev {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = match &cli.command {
        Command::Run { log_format, .. } => log_format.as_str(),
        _ => "text",
    };
    init_logging(log_format);
    let workers = match &cli.command {
        Command::Run { workers, .. } => *workers,
        _ => None,
    };
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = workers.filter(|n| *n > 1) {
        builder.worker_threads(n);
    }
    let rt = builder.enable_all().build().expect("tokio runtime");
    rt.block_on(async {
        match cli.command {
            Command::Run { config, .. } => run(config.as_deref()).await,
            Command::Check { config, expiry_warning } => check(config.as_deref(), expiry_warning).await,
            Command::Reload { config, admin } => reload(config.as_deref(), admin).await,
            Command::Explain { config, service, headers, json, method, path } => {
                explain(config.as_deref(), &service, &headers, json, &method, &path).await
            }
            Command::Catalog { config, filter } => catalog(config.as_deref(), filter.as_deref()).await,
            Command::Token { command: TokenCommand::New { service, id } } => token_new(&service, id),
            Command::Audit { command: AuditCommand::Verify { files } } => audit_verify(&files),
            Command::Audit { command: AuditCommand::Report { files, since, until, service, format } } => {
                audit_report(&files, since.as_deref(), until.as_deref(), service, &format)
            }
            Command::Certs { command: CertsCommand::Dev { dir } } => certs_dev(&dir),
        }
    })
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYWARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal, never into a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn fail(errors: impl IntoIterator<Item = impl std::fmt::Display>) -> ExitCode {
    for e in errors {
        eprintln!("error: {e}");
    }
    ExitCode::FAILURE
}

async fn load(path: Option<&Path>, opts: Options) -> Result<keyward::control::snapshot::Snapshot, ExitCode> {
    let src = Source::locate(path).map_err(fail)?;
    config::compile(&src, opts).await.map_err(fail)
}

async fn run(path: Option<&Path>) -> ExitCode {
    let src = match Source::locate(path) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let shutdown = match keyward::app::shutdown_signal() {
        Ok(s) => s,
        Err(e) => return fail([format!("cannot listen for signals: {e}")]),
    };
    match keyward::app::start(&src).await {
        Ok(running) => {
            running.until(shutdown).await;
            ExitCode::SUCCESS
        }
        Err(msg) => fail(msg.lines()),
    }
}

async fn check(path: Option<&Path>, expiry_warning: std::time::Duration) -> ExitCode {
    match load(path, Options::FULL).await {
        Ok(snap) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let horizon = now + expiry_warning.as_secs() as i64;
            for s in &snap.policy.services {
                for t in s.tokens.iter().filter(|t| t.expires.is_some_and(|e| e <= horizon)) {
                    let left = t.expires.unwrap_or(now) - now;
                    let when = if left <= 0 {
                        "has expired".to_string()
                    } else {
                        format!(
                            "expires in {}",
                            humantime::format_duration(std::time::Duration::from_secs(left as u64))
                        )
                    };
                    println!("warning: service {} token {} {when}", s.name, t.id);
                }
            }
            let tokens: usize = snap.policy.services.iter().map(|s| s.tokens.len()).sum();
            println!(
                "ok: {} services, {} tokens, {} upstreams, {} catalog entries, version {}",
                snap.policy.services.len(),
                tokens,
                snap.upstreams.len(),
                snap.policy.catalog.entries.len(),
                snap.version
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn reload(path: Option<&Path>, admin: Option<std::net::SocketAddr>) -> ExitCode {
    let addr = match admin {
        Some(a) => a,
        None => {
            let src = match Source::locate(path) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            match admin_listen(&src.text) {
                Some(a) => a,
                None => {
                    return fail([format!(
                        "{}: no server.admin_listen; pass --admin ADDR",
                        src.name.display()
                    )]);
                }
            }
        }
    };
    match post_reload(addr).await {
        Ok((status, body)) => {
            let pretty = serde_json::from_str::<serde_json::Value>(&body)
                .and_then(|v| serde_json::to_string_pretty(&v))
                .unwrap_or(body);
            println!("{pretty}");
            if status == 200 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => fail([format!("admin endpoint {addr}: {e}")]),
    }
}

/// `server.admin_listen`, read leniently: a config with other errors is exactly the one whose
/// reload report the operator wants to see.
fn admin_listen(text: &str) -> Option<std::net::SocketAddr> {
    if let Ok(t) = toml::from_str::<toml::Table>(text) {
        return t.get("server")?.get("admin_listen")?.as_str()?.parse().ok();
    }
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("admin_listen")?.trim().strip_prefix('='))
        .find_map(|v| v.trim().trim_matches('"').parse().ok())
}

async fn post_reload(addr: std::net::SocketAddr) -> Result<(u16, String), Box<dyn std::error::Error>> {
    use http_body_util::{BodyExt, Empty};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::post("/-/reload")
        .header("host", addr.to_string())
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn explain(
    path: Option<&Path>,
    service: &str,
    headers: &[String],
    json: bool,
    method: &str,
    target: &str,
) -> ExitCode {
    let snap = match load(path, Options::POLICY_ONLY).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let Some(svc) = snap.policy.services.iter().find(|s| &*s.name == service) else {
        return fail([format!("no service named `{service}`")]);
    };
    let mut req = http::Request::builder().method(method.to_ascii_uppercase().as_str()).uri(target);
    for h in headers {
        let Some((k, v)) = h.split_once(':') else {
            return fail([format!("header `{h}` is not `Name: value`")]);
        };
        req = req.header(k.trim(), v.trim());
    }
    let parts = match req.body(()) {
        Ok(r) => r.into_parts().0,
        Err(e) => return fail([format!("bad request: {e}")]),
    };
    let d = authorize(&snap.policy, svc, &parts, "kw_***");
    let message = match &d.verdict {
        Verdict::Allow(_) => None,
        Verdict::WouldDeny(_, f) | Verdict::Deny(f) => Some(f.message()),
    };
    let (decision, reason) = (d.verdict.decision().as_str(), d.verdict.reason());
    let permission = d.entry.map(|e| e.name.clone());
    let upstream = d.upstream.map(|i| snap.upstreams[i].name.clone());
    // A query string the policy refused has no expansions to show: the refusal says why.
    let fields =
        keyward::policy::params::read(parts.uri.query().unwrap_or("").as_bytes()).unwrap_or_default();
    let expansions: Vec<serde_json::Value> = snap
        .policy
        .expansions
        .required(&fields)
        .map(|(field, perm)| {
            serde_json::json!({
                "field": field,
                "permission": format!("{}_read", snap.policy.catalog.permission(perm)),
                "granted": svc.level(perm) >= keyward::policy::Level::Read,
            })
        })
        .collect();
    let out = serde_json::json!({
        "service": service,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "template": d.entry.map(|e| e.template.clone()),
        "permission": permission,
        "access": d.entry.map(|e| e.access.as_str()),
        "upstream": upstream,
        "expansions": expansions,
        "decision": decision,
        "reason": reason,
        "message": message,
    });
    if json {
        println!("{out}");
    } else {
        for (k, v) in out.as_object().into_iter().flatten() {
            if !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()) {
                println!("{k:>10}: {}", v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
            }
        }
    }
    ExitCode::SUCCESS
}

async fn catalog(path: Option<&Path>, filter: Option<&str>) -> ExitCode {
    let snap = match load(path, Options::POLICY_ONLY).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for e in &snap.policy.catalog.entries {
        let perm = &e.name;
        if filter.is_some_and(|f| !perm.contains(f) && !e.template.contains(f)) {
            continue;
        }
        let direct = if e.direct { " (direct)" } else { "" };
        let line = format!("{:<7}{:<60}{:<40}{}{direct}", e.method.as_str(), e.template, perm, e.upstream);
        // A closed pipe (`keyward catalog | head`) ends the listing quietly.
        if writeln!(out, "{line}").is_err() {
            break;
        }
    }
    ExitCode::SUCCESS
}

fn read_all(files: &[PathBuf]) -> Result<Vec<(String, Vec<u8>)>, ExitCode> {
    files
        .iter()
        .map(|f| std::fs::read(f).map(|b| (f.display().to_string(), b)))
        .collect::<Result<_, _>>()
        .map_err(|e| fail([format!("cannot read: {e}")]))
}

fn audit_verify(files: &[PathBuf]) -> ExitCode {
    let data = match read_all(files) {
        Ok(d) => d,
        Err(code) => return code,
    };
    match keyward::audit::verify::verify(&data) {
        Ok(v) => {
            let from = if v.from_genesis {
                "from the first record ever written".to_string()
            } else {
                format!("from seq {}", v.first_seq)
            };
            println!(
                "OK: {} records, seq {}..{} ({from}); head {}",
                v.records, v.first_seq, v.last_seq, v.head
            );
            ExitCode::SUCCESS
        }
        Err(b) => fail([format!("chain broken: {b}")]),
    }
}

fn audit_report(
    files: &[PathBuf],
    since: Option<&str>,
    until: Option<&str>,
    service: Option<String>,
    format: &str,
) -> ExitCode {
    use keyward::audit::report;
    let parse = |s: Option<&str>| {
        s.map(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)).transpose()
    };
    let (since, until) = match (parse(since), parse(until)) {
        (Ok(s), Ok(u)) => (s, u),
        _ => return fail(["--since and --until take RFC 3339 times such as 2026-11-01T00:00:00Z"]),
    };
    let data = match read_all(files) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let lines = data.iter().flat_map(|(_, b)| b.split(|&c| c == b'\n')).filter(|l| !l.is_empty());
    let (mut records, mut unreadable) = (Vec::new(), 0u64);
    for line in lines {
        match serde_json::from_slice::<keyward::audit::AccessRecord>(line) {
            Ok(r) => records.push(r),
            Err(_) => unreadable += 1,
        }
    }
    // Said on stderr, so that json and html output stay clean: `keyward audit verify` tells why.
    if unreadable > 0 {
        eprintln!(
            "warning: {unreadable} lines are not access records and were left out (see `keyward audit verify`)"
        );
    }
    let rep = report::build(&records, &report::Filter { since, until, service });
    match format {
        "table" => print!("{}", report::table(&rep)),
        "json" => println!("{}", serde_json::to_string_pretty(&rep).unwrap_or_default()),
        "html" => print!("{}", report::html(&rep)),
        other => return fail([format!("unknown format `{other}`: use table, json or html")]),
    }
    ExitCode::SUCCESS
}

fn token_new(service: &str, id: Option<String>) -> ExitCode {
    let token = keyward::token::new_token();
    let date = time::OffsetDateTime::now_utc().date();
    let id = id.unwrap_or_else(|| format!("{service}-{date}"));
    println!("token (shown once; give it to the {service} service, store it nowhere else):\n\n  {token}\n");
    println!("add to the [[service]] named \"{service}\" in the config:\n");
    print!("{}", keyward::token::snippet(&id, &token));
    ExitCode::SUCCESS
}

fn certs_dev(dir: &Path) -> ExitCode {
    match keyward::control::tls::ensure_dev_certs(&dir.join("keyward.crt"), &dir.join("keyward.key")) {
        Ok(true) => {
            println!("wrote {0}/ca.crt, {0}/keyward.crt, {0}/keyward.key", dir.display());
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("{}/keyward.crt and keyward.key exist; left as they are", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail([e]),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn admin_listen_is_found_even_in_a_broken_config() {
        let ok = "[server]\nadmin_listen = \"127.0.0.1:9090\"\n";
        assert_eq!(super::admin_listen(ok), Some("127.0.0.1:9090".parse().unwrap()));
        let broken = "[server]\nadmin_listen = \"127.0.0.1:9091\"\n[service\nname = ";
        assert_eq!(super::admin_listen(broken), Some("127.0.0.1:9091".parse().unwrap()));
        assert_eq!(super::admin_listen("[server]\n"), None);
    }
}
