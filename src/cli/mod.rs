//! The `keyward` command: one file per subcommand.

mod audit;
mod catalog;
mod certs;
mod check;
mod explain;
mod reload;
mod run;
mod scan;
mod status;
mod token;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use keyward::control::config::{self, ConfigError, Options, Source};
use keyward::control::snapshot::Snapshot;

#[derive(Parser)]
#[command(name = "keyward", version, about = "Egress proxy that holds your payments API keys")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the configuration comes from.
#[derive(Args, Clone)]
struct ConfigArg {
    /// Configuration file [default: config/keyward.toml if it exists, else the built-in
    /// default configuration].
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve: the proxy on `server.listen`, the admin port on `server.admin_listen`.
    Run(run::RunArgs),
    /// Validate the configuration, its catalog, certificates and secrets.
    Check(check::CheckArgs),
    /// Ask the running keyward to reload its configuration (POST /-/reload on the admin port).
    Reload(reload::ReloadArgs),
    /// What the running keyward serves: version, secrets' ages, tokens near expiry, log head.
    Status(status::StatusArgs),
    /// Exit 0 if the running keyward answers (`--ready`: and serves), else 1: for HEALTHCHECK.
    Health(status::HealthArgs),
    /// Show how a call would be classified and decided for a service (exit 1 if refused).
    Explain(explain::ExplainArgs),
    /// List the catalog: which permission each endpoint needs.
    Catalog(catalog::CatalogArgs),
    /// The access log: verify its chain, summarise it.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Tokens.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Certificates.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let (log_format, workers) = match &cli.command {
        Command::Run(a) => (a.log_format, a.workers),
        _ => (LogFormat::Text, None),
    };
    init_logging(log_format);
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
            Command::Run(a) => run::run(a).await,
            Command::Check(a) => check::check(a).await,
            Command::Reload(a) => reload::reload(a).await,
            Command::Status(a) => status::status(a).await,
            Command::Health(a) => status::health(a).await,
            Command::Explain(a) => explain::explain(a).await,
            Command::Catalog(a) => catalog::catalog(a).await,
            Command::Audit { command } => audit::audit(command),
            Command::Token { command } => token::token(command).await,
            Command::Certs { command } => certs::certs(command),
        }
    })
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // At debug, `h2` logs every frame, a GOAWAY's debug data with it: text the upstream chose,
    // which may echo the secret. Its events stay at info whatever KEYWARD_LOG asks.
    let asked = std::env::var("KEYWARD_LOG").unwrap_or_else(|_| "info".into());
    let kept: Vec<&str> = asked.split(',').filter(|d| !d.trim_start().starts_with("h2")).collect();
    let filter = EnvFilter::try_new(kept.join(","))
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive("h2=info".parse().expect("a directive"));
    // Colour only for a person at a terminal, never into a log file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn fail(errors: impl IntoIterator<Item = impl std::fmt::Display>) -> ExitCode {
    for e in errors {
        eprintln!("error: {}", keyward::text::printable(&e.to_string()));
    }
    ExitCode::FAILURE
}

/// The whole snapshot `opts` asks for, or every error (printed) and exit status 1.
async fn load(path: Option<&Path>, opts: Options) -> Result<Snapshot, ExitCode> {
    let src = Source::locate(path).map_err(fail)?;
    config::compile(&src, opts).await.map_err(fail)
}

/// The policy of a configuration, even one with errors elsewhere: what could be read is
/// used, and the errors are said as warnings (`explain` and `catalog` answer anyway).
fn lenient_policy(path: Option<&Path>) -> Result<keyward::policy::Policy, ExitCode> {
    let src = Source::locate(path).map_err(fail)?;
    let file = config::validate::parse(&src).map_err(fail)?;
    let (catalog, expansions) = config::build::tables(&src, &file).map_err(fail)?;
    let (plan, errors) = config::validate::validate(&src, file, &catalog, &expansions);
    warn(&errors);
    Ok(plan.policy)
}

fn warn(errors: &[ConfigError]) {
    if !errors.is_empty() {
        eprintln!(
            "warning: the configuration has {} errors (see `keyward check`); answering with what could be read:",
            errors.len()
        );
        for e in errors {
            eprintln!("warning: {e}");
        }
    }
}
