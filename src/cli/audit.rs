//! `keyward audit verify`, `report`, `scope`, `head` and `config`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use keyward::audit::Kind;
use keyward::audit::checkpoint::PublicKey;
use keyward::audit::report;
use keyward::audit::signed::Published;
use keyward::text::printable;
use std::collections::BTreeMap;

use super::fail;

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

/// The public keys and published checkpoints `keys` names, read.
fn read_keys(keys: &Keys) -> Result<(Vec<PublicKey>, Option<Published>), ExitCode> {
    let read =
        |p: &PathBuf| std::fs::read(p).map_err(|e| fail([format!("cannot read {}: {e}", p.display())]));
    let mut public = Vec::new();
    for p in &keys.keys {
        let text = String::from_utf8(read(p)?).unwrap_or_default();
        public.push(PublicKey::from_pem(&text).map_err(|e| fail([format!("{}: {e}", p.display())]))?);
    }
    let published = match &keys.checkpoints {
        Some(p) => Some(
            Published::read(&p.display().to_string(), &read(p)?, &public)
                .map_err(|e| fail([format!("checkpoints forged: {e}")]))?,
        ),
        None => None,
    };
    Ok((public, published))
}

/// `verify`, or with `head_only` `head`: one line per instance; exit 1 if any chain is broken.
fn verify(files: &[PathBuf], keys: &Keys, head_only: bool) -> ExitCode {
    let data = match read_all(files) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let (public, published) = match read_keys(keys) {
        Ok(k) => k,
        Err(code) => return code,
    };
    let chains = match keyward::audit::verify::verify_all(&data) {
        Ok(c) => c,
        Err(b) => return fail([format!("chain broken: {b}")]),
    };
    let name =
        |c: &keyward::audit::verify::Chain| c.instance.clone().unwrap_or_else(|| "(no instance)".into());
    let mut broken: Vec<String> = chains
        .iter()
        .filter_map(|c| c.outcome.as_ref().err().map(|b| format!("chain broken: {}: {b}", name(c))))
        .collect();
    let mut signed = BTreeMap::new();
    for c in &chains {
        let Ok(v) = &c.outcome else { continue };
        if let Some(p) = &published
            && let Err(why) = p.check(c.instance.as_deref().unwrap_or(""), v)
        {
            broken.push(format!("chain broken: {}: {why}", name(c)));
        }
        if !public.is_empty() {
            match keyward::audit::signed::check(v, &public) {
                Ok(s) => _ = signed.insert(name(c), s),
                Err(why) => broken.push(format!("forged: {}: {why}", name(c))),
            }
        }
    }
    if let Some(p) = &published {
        let present: Vec<Option<String>> = chains.iter().map(|c| c.instance.clone()).collect();
        for (instance, seq) in p.missing(&present) {
            broken.push(format!(
                "truncated: instance {instance} published checkpoints through seq {seq}, and the files given hold none of its records"
            ));
        }
    }
    if head_only {
        for c in &chains {
            if let Ok(v) = &c.outcome {
                say(format!("{} {} {}", name(c), v.last_seq, v.head));
            }
        }
        return if broken.is_empty() { ExitCode::SUCCESS } else { fail(broken) };
    }
    let records: u64 = chains.iter().filter_map(|c| c.outcome.as_ref().ok()).map(|v| v.records).sum();
    let (n, s) = (chains.len(), if chains.len() == 1 { "" } else { "s" });
    if broken.is_empty() {
        say(format!("OK: {n} instance{s}, {records} records"));
    }
    for c in &chains {
        if let Ok(v) = &c.outcome {
            let from = v.history();
            let from = match v.folded_records {
                0 => from,
                n => format!("{from}; {n} records fold {} refusals", v.folded_refusals),
            };
            let restarts = match v.restarts {
                0 => String::new(),
                r => format!("; {r} restart(s) began new chains from genesis"),
            };
            say(format!(
                "  {}: {} records, seq {}..{} ({from}{restarts}); head {}",
                name(c),
                v.records,
                v.first_seq,
                v.last_seq,
                v.head
            ));
            if let Some(s) = signed.get(&name(c)) {
                say(format!(
                    "    signed: {} checkpoint(s), through seq {}; unsigned tail: {} records",
                    s.checkpoints, s.signed_through, s.unsigned_tail
                ));
            }
            if v.accounted > 0 {
                say(format!(
                    "    accounted: at each of {} checkpoint(s), the requests answered match the records (own and folded)",
                    v.accounted
                ));
            }
        }
    }
    if broken.is_empty() && public.is_empty() {
        say("note: no --key given: a chain verifies, but cannot show that the whole log was not rewritten \
             (re-hashed after an edit, or cut at its end)"
            .into());
    }
    if broken.is_empty() { ExitCode::SUCCESS } else { fail(broken) }
}

/// `config`: the text recorded for `version` (the latest record of it), exit 1 if none.
fn config(version: &str, files: &[PathBuf], unverified: bool) -> ExitCode {
    let data = match read_all(files) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let broken = match keyward::audit::verify::verify_all(&data) {
        Ok(chains) => chains.into_iter().find_map(|c| c.outcome.err().map(|b| b.to_string())),
        Err(b) => Some(b.to_string()),
    };
    match (broken, unverified) {
        (Some(b), false) => {
            return fail([
                format!("chain broken: {b}"),
                "the recorded configuration may have been altered: `--unverified` prints it all the same"
                    .into(),
            ]);
        }
        (Some(_), true) => {
            eprintln!("warning: the access log does not verify: this text may have been altered")
        }
        (None, _) => {}
    }
    let lines = data.iter().flat_map(|(_, b)| b.split(|&c| c == b'\n')).filter(|l| !l.is_empty());
    const KIND: &[u8] = br#""kind":"config""#;
    let found: Vec<keyward::audit::event::ConfigText> = lines
        .filter(|l| l.windows(KIND.len()).any(|w| w == KIND))
        .filter_map(|l| serde_json::from_slice::<keyward::audit::event::ConfigText>(l).ok())
        .filter(|c| c.links.kind == Kind::Config && &*c.config_version == version)
        .collect();
    let Some(last) = found.last() else {
        let v = keyward::text::escaped(version);
        return fail([format!(
            "no configuration text for version {v} in these files (kind = \"config\" records)"
        )]);
    };
    if found.iter().any(|c| c.config_sha256 != last.config_sha256) {
        let v = keyward::text::escaped(version);
        eprintln!("warning: version {v} was recorded with different texts; printing the latest");
    }
    let text = printable(&last.text);
    print!("{text}");
    if !text.ends_with('\n') {
        println!();
    }
    ExitCode::SUCCESS
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
