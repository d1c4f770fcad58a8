//! `keyward check`: build everything `run` would, and say what is wrong, all at once.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use keyward::control::config::Options;

use super::{ConfigArg, load};

#[derive(Args)]
pub struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Warn about tokens that expire within this long (e.g. 14d, 36h).
    #[arg(long, default_value = "14d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    expiry_warning: Duration,
    /// Check the configuration and its tables only: read no secret, vault, certificate or CA
    /// file (for CI on a repository of configurations).
    #[arg(long)]
    offline: bool,
}

pub async fn check(args: CheckArgs) -> ExitCode {
    let opts = if args.offline { Options::POLICY_ONLY } else { Options::FULL };
    let snap = match load(args.config.config.as_deref(), opts).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let horizon = now + args.expiry_warning.as_secs() as i64;
    let services = &snap.policy.services;
    for s in services {
        for t in s.tokens.iter().filter(|t| t.expires.is_some_and(|e| e <= horizon)) {
            let left = t.expires.unwrap_or(now) - now;
            let when = match left {
                ..=0 => "has expired".to_string(),
                _ => format!("expires in {}", short_duration(left as u64)),
            };
            println!("warning: service {} token {} {when}", s.name, t.id);
        }
    }
    for w in &snap.warnings {
        println!("warning: {w}");
    }
    let tokens: usize = services.iter().map(|s| s.tokens.len()).sum();
    let offline = if args.offline { " (offline: no secrets, certificates or CA files read)" } else { "" };
    println!(
        "ok: {} services, {tokens} tokens, {} upstreams, {} catalog entries, version {}{offline}",
        services.len(),
        snap.policy.upstreams.len(),
        snap.policy.catalog.entries.len(),
        snap.version
    );
    ExitCode::SUCCESS
}

/// A time left as people write it: its two largest units, `4d 8h`, `3h 20m`, `45s`.
fn short_duration(secs: u64) -> String {
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut left = secs;
    for (size, unit) in units {
        if left >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{unit}", left / size));
            left %= size;
        } else if !parts.is_empty() {
            break;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn time_left_is_written_in_its_two_largest_units() {
        let cases = [
            (4 * 86_400 + 8 * 3_600 + 125, "4d 8h"),
            (3 * 3_600 + 20 * 60 + 5, "3h 20m"),
            (45, "45s"),
            (0, "0s"),
            (86_400 + 30, "1d"),
        ];
        for (secs, want) in cases {
            assert_eq!(super::short_duration(secs), want, "{secs}");
        }
    }
}
