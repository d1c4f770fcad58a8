//! `keyward audit verify`, `report`, `scope`, `head` and `config`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use keyward::audit::report;
use keyward::text::printable;

use super::fail;

mod config;
mod verify;

use config::config;
use verify::{read_keys, verify};

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check that no record was edited, dropped, reordered, inserted or truncated: each
    /// instance's (replica's) chain on its own.
    Verify {
        /// Access-log files, each instance's oldest first: audit.jsonl.2 audit.jsonl.1 audit.jsonl
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        keys: Keys,
    },
    /// Each service's grants against the access it used (and, in report mode, what its
    /// would_deny calls needed): grants never used, writes where only reads were used, and the
    /// smallest scope that allows it all (`--format toml` prints it to paste).
    Scope {
        /// Access-log files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        config: super::ConfigArg,
        /// Only records from this RFC 3339 time on, e.g. 2026-11-01T00:00:00Z.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: ScopeFormat,
        /// Exit 1 if any service holds a grant it did not use, or write where it only read
        /// (a weekly CI job).
        #[arg(long)]
        check: bool,
        /// Print it though the log's chain does not verify, marked UNVERIFIED (first and
        /// last line, or an `unverified` field): without it such a log is refused.
        #[arg(long)]
        unverified: bool,
        #[command(flatten)]
        keys: Keys,
    },
    /// Print the configuration text recorded for a config version (`kind = "config"`), as the
    /// log holds it (credentials redacted): the policy that decided the records that name it.
    Config {
        /// The `config_version` of the records in question, e.g. 3f9a0c12d4e5.
        version: String,
        /// Access-log files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print it even if the log does not verify (it may have been altered).
        #[arg(long)]
        unverified: bool,
    },
    /// Print each instance's chain head (seq and hash), once its chain verifies: record it
    /// elsewhere, and later prove that nothing before it changed.
    Head {
        /// Access-log files, each instance's oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Summarise for an auditor to sign: integrity (a log that does not verify is refused),
    /// the policy versions in force, admin actions, write operations, decisions and what
    /// refused calls lacked, requests over time, source addresses, Connect accounts, secret
    /// versions, live keys, suspicious activity; with `--config` also the configured tokens'
    /// state (those without expiry flagged) and the scope table; last, a sign-off section.
    Report {
        /// Access-log files, oldest first.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Only records from this RFC 3339 time on (inclusive), e.g. 2026-11-01T00:00:00Z.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Only records before this RFC 3339 time (exclusive).
        #[arg(long, value_name = "TIME")]
        until: Option<String>,
        /// Only this service's records.
        #[arg(long)]
        service: Option<String>,
        /// The configuration the log was written under: adds configured tokens that are
        /// unused, expired or expiring, and each service's grants against its use.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// List every allowed call that is no read (not GET or HEAD): time, service,
        /// endpoint, account, request id.
        #[arg(long)]
        writes: bool,
        /// Print it though the log's chain does not verify, each page marked UNVERIFIED:
        /// without it such a log is refused.
        #[arg(long)]
        unverified: bool,
        #[command(flatten)]
        keys: Keys,
    },
}

/// What proves the log was not rewritten: the checkpoints' public keys, and the checkpoints
/// as published.
#[derive(clap::Args, Default)]
pub struct Keys {
    /// A public key (PEM, from `keyward certs audit-key`) checkpoints are signed with; repeat
    /// it for each key in use over the log's time (rotation). Every instance must then have
    /// checkpoints signed by one of them.
    #[arg(long = "key", value_name = "PUB")]
    pub keys: Vec<PathBuf>,
    /// The checkpoints as published (`audit.checkpoints`): the log must hold each one in its
    /// range, and must not end before the last.
    #[arg(long, value_name = "FILE")]
    pub checkpoints: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ScopeFormat {
    Table,
    Json,
    /// The suggested `[service.scope]` blocks.
    Toml,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// Plain text.
    Table,
    /// The same data as one JSON object.
    Json,
    /// A self-contained page with charts, to print or keep.
    Html,
}

pub fn audit(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify { files, keys } => verify(&files, &keys, false),
        AuditCommand::Head { files } => verify(&files, &Keys::default(), true),
        AuditCommand::Config { version, files, unverified } => config(&version, &files, unverified),
        AuditCommand::Scope { files, config, since, format, check, unverified, keys } => {
            scope(&files, &config, since.as_deref(), format, check, unverified, &keys)
        }
        AuditCommand::Report { files, since, until, service, config, format, writes, unverified, keys } => {
            let window = Window { since: since.as_deref(), until: until.as_deref(), service };
            report(&files, window, config.as_deref(), format, writes, unverified, &keys)
        }
    }
}

fn read_all(files: &[PathBuf]) -> Result<Vec<(String, Vec<u8>)>, ExitCode> {
    files
        .iter()
        .map(|f| std::fs::read(f).map(|b| (f.display().to_string(), b)))
        .collect::<Result<_, _>>()
        .map_err(|e| fail([format!("cannot read: {e}")]))
}

/// A line of text made from the log, printed as a terminal will not act on it.
fn say(line: String) {
    println!("{}", printable(&line));
}

fn scope(
    files: &[PathBuf],
    config: &super::ConfigArg,
    since: Option<&str>,
    format: ScopeFormat,
    check: bool,
    unverified: bool,
    keys: &Keys,
) -> ExitCode {
    let since = match time_arg(since) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let policy = match super::lenient_policy(config.config.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let data = match read_all(files) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let banner = match checked(&data, unverified, keys) {
        Ok(integrity) => integrity.banner(),
        Err(code) => return code,
    };
    let log = read_log(&data);
    let filter = report::Filter { since, until: None, service: None };
    let mut rep = keyward::audit::scope::scope(&policy, log.records.iter().filter(|r| filter.keeps(r)));
    let marked = |text: String, prefix: &str| match &banner {
        Some(b) => format!("{prefix}{b}\n{text}{prefix}{b}\n"),
        None => text,
    };
    match format {
        ScopeFormat::Table => print!("{}", printable(&marked(keyward::audit::scope::table(&rep), ""))),
        ScopeFormat::Json => {
            rep.unverified = banner.clone();
            println!("{}", serde_json::to_string_pretty(&rep).unwrap_or_default())
        }
        ScopeFormat::Toml => print!("{}", printable(&marked(keyward::audit::scope::toml(&rep), "# "))),
    }
    let excess: Vec<String> = rep
        .services
        .iter()
        .filter(|(_, s)| !s.unused.is_empty() || !s.write_only_read.is_empty())
        .map(|(name, s)| {
            format!(
                "service \"{name}\": {} unused, {} write used only to read",
                s.unused.len(),
                s.write_only_read.len()
            )
        })
        .collect();
    if check && !excess.is_empty() { fail(excess) } else { ExitCode::SUCCESS }
}

/// `--since` / `--until`: an RFC 3339 time.
fn time_arg(t: Option<&str>) -> Result<Option<time::OffsetDateTime>, ExitCode> {
    t.map(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339))
        .transpose()
        .map_err(|_| fail(["--since and --until take RFC 3339 times such as 2026-11-01T00:00:00Z"]))
}

/// The chains' verification. A log that does not verify is refused (exit 1, naming the first
/// bad file and line) unless `unverified`: then what is printed says so on every page.
fn checked(data: &[(String, Vec<u8>)], unverified: bool, keys: &Keys) -> Result<report::Integrity, ExitCode> {
    let (public, published) = read_keys(keys)?;
    let integrity = report::Integrity::proved(data, &public, published.as_ref());
    match &integrity.first_break {
        Some(at) if !unverified => Err(fail([
            format!("the access log does not verify: {at}"),
            "nothing in it is evidence until it does (see `keyward audit verify`); --unverified prints it \
             anyway, marked UNVERIFIED"
                .to_string(),
        ])),
        Some(at) => {
            eprintln!(
                "warning: the access log does not verify ({}): printed marked UNVERIFIED",
                printable(at)
            );
            Ok(integrity)
        }
        None => Ok(integrity),
    }
}

/// Every record in `data`, by kind. Lines that are not records are left out, and said so on
/// stderr (json and html output stay clean; `keyward audit verify` tells why).
fn read_log(data: &[(String, Vec<u8>)]) -> report::Log {
    let log = report::Log::read(data);
    if log.unreadable > 0 {
        eprintln!(
            "warning: {} lines are not access records and were left out (see `keyward audit verify`)",
            log.unreadable
        );
    }
    log
}

/// `--since`, `--until`, `--service`.
struct Window<'a> {
    since: Option<&'a str>,
    until: Option<&'a str>,
    service: Option<String>,
}

fn report(
    files: &[PathBuf],
    window: Window<'_>,
    config: Option<&std::path::Path>,
    format: Format,
    list_writes: bool,
    unverified: bool,
    keys: &Keys,
) -> ExitCode {
    let (since, until) = match time_arg(window.since).and_then(|s| Ok((s, time_arg(window.until)?))) {
        Ok(both) => both,
        Err(code) => return code,
    };
    let policy = match config.map(|c| super::lenient_policy(Some(c))).transpose() {
        Ok(p) => p,
        Err(code) => return code,
    };
    let data = match read_all(files) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let integrity = match checked(&data, unverified, keys) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let log = read_log(&data);
    let cx = report::Context {
        inputs: report::Input::of(&data),
        filter: report::Filter { since, until, service: window.service },
        integrity,
        now: time::OffsetDateTime::now_utc(),
        policy: policy.as_ref(),
        folded: &log.folded,
        events: &log.events,
        list_writes,
        unverified,
    };
    let rep = report::build(&log.records, cx);
    match format {
        Format::Table => print!("{}", report::table(&rep)),
        Format::Json => print!("{}", report::json(&rep)),
        Format::Html => print!("{}", report::html(&rep)),
    }
    ExitCode::SUCCESS
}
