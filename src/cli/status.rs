//! `keyward status` (what the running keyward serves) and `keyward health` (exit 0/1, for a
//! container's HEALTHCHECK in an image without curl).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;

use super::reload::{admin_addr, admin_request};
use super::{ConfigArg, fail};

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The admin address [default: `server.admin_listen` of the configuration].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
}

#[derive(Args)]
pub struct HealthArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The admin address [default: `server.admin_listen` of the configuration].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Ask `/readyz` (serving: config, secrets and access log ready, not draining) instead
    /// of `/healthz` (the process answers).
    #[arg(long)]
    ready: bool,
}

/// Version, instance, secrets' ages, tokens expiring within 7 days, the access log's head,
/// each spend cap's spend and what is left.
pub async fn status(args: StatusArgs) -> ExitCode {
    let addr = match admin_addr(args.admin, &args.config) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let (code, body) = match admin_request(addr, http::Method::GET, "/-/status").await {
        Ok(r) => r,
        Err(e) => return fail([format!("admin endpoint {addr}: {e}")]),
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body).map_err(|_| ()).and_then(|v| match code {
        200 => Ok(v),
        _ => Err(()),
    }) else {
        return fail([format!("admin endpoint {addr} answered {code}: {}", body.trim())]);
    };
    print!("{}", render(&v));
    ExitCode::SUCCESS
}

fn render(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    // Every field comes from a config or a running process: shown escaped, one line each.
    let s = |v: &serde_json::Value| {
        keyward::text::shown(&v.as_str().map(String::from).unwrap_or_else(|| v.to_string()))
    };
    let mut out = String::new();
    let _ = writeln!(out, "instance  {}", s(&v["instance"]));
    let _ = writeln!(
        out,
        "version   {}{}",
        s(&v["version"]),
        if v["draining"] == true { " (draining)" } else { "" }
    );
    let head = &v["audit"]["head"];
    let log = if v["audit"]["healthy"] == true { "writable" } else { "NOT WRITABLE" };
    let _ = writeln!(out, "audit     {log}; head seq {} {}", s(&head["seq"]), s(&head["head"]));
    if let Some(store) = v["ratelimit_store"].as_object() {
        let up = if store["up"] == true { "up" } else { "OUT" };
        let _ = writeln!(out, "redis     {up}; {} replicas", s(&store["replicas"]));
    }
    for cap in v["spend"].as_array().into_iter().flatten() {
        let what = format!("{} {} {}", s(&cap["service"]), s(&cap["kind"]), s(&cap["currency"]));
        let limit = match cap["per_day"].as_u64() {
            Some(d) => format!("per_day {d}"),
            None => "no per_day".into(),
        };
        let where_ = if cap["shared"] == true { "all replicas" } else { "this replica" };
        let line = |st: &serde_json::Value| {
            let left = st["left"].as_u64().map_or(String::new(), |l| format!(", {l} left"));
            let frees = match st["oldest_frees_at"].as_i64() {
                Some(t) => format!("; oldest frees in {} min", ((t - now()).max(0) + 59) / 60),
                None => String::new(),
            };
            format!("{} spent in 24 h{left}{frees}", s(&st["spent"]))
        };
        if let Some(why) = cap.get("error") {
            let _ = writeln!(out, "spend     {what} ({limit}, {where_}): UNAVAILABLE: {}", s(why));
        } else if cap["per_account"] == true {
            let accounts = cap["accounts"].as_array();
            if accounts.is_none() {
                let _ =
                    writeln!(out, "spend     {what} ({limit} per account, {where_}): accounts not listed");
            }
            for a in accounts.into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "spend     {what} ({limit}, {where_}) account {}: {}",
                    s(&a["account"]),
                    line(a)
                );
            }
            if accounts.is_some_and(|a| a.is_empty()) {
                let _ =
                    writeln!(out, "spend     {what} ({limit} per account, {where_}): nothing spent in 24 h");
            }
        } else {
            let _ = writeln!(out, "spend     {what} ({limit}, {where_}): {}", line(cap));
        }
    }
    for sec in v["secrets"].as_array().into_iter().flatten() {
        let stale = if sec["stale"] == true { " STALE" } else { "" };
        let _ =
            writeln!(out, "secret    {}: loaded {} s ago{stale}", s(&sec["name"]), s(&sec["age_seconds"]));
    }
    let soon = v["tokens_expiring_within_7_days"].as_array().cloned().unwrap_or_default();
    if soon.is_empty() {
        let _ = writeln!(out, "tokens    none expiring within 7 days");
    }
    for t in soon {
        let left = t["expires_in_seconds"].as_i64().unwrap_or(0);
        let when = if left < 0 {
            format!("EXPIRED {} h ago", -left / 3600)
        } else {
            format!("expires in {} h", left / 3600)
        };
        let _ = writeln!(out, "token     {}/{}: {when}", s(&t["service"]), s(&t["token_id"]));
    }
    out
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Exit 0 if the admin port answers 200 to `/healthz` (or `/readyz`), else 1.
pub async fn health(args: HealthArgs) -> ExitCode {
    let addr = match admin_addr(args.admin, &args.config) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let path = if args.ready { "/readyz" } else { "/healthz" };
    match admin_request(addr, http::Method::GET, path).await {
        Ok((200, _)) => ExitCode::SUCCESS,
        Ok((code, body)) => fail([format!("{path} answered {code}: {}", body.trim())]),
        Err(e) => fail([format!("admin endpoint {addr}: {e}")]),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn what_a_process_or_config_says_is_shown_escaped_one_line_each() {
        let v = serde_json::json!({
            "instance": "kw-1\u{1b}[2J",
            "version": "v1",
            "audit": { "healthy": true, "head": { "seq": 1, "head": "ab" } },
            "secrets": [{ "name": "sk_live_0123456789abcdef", "age_seconds": 3 }],
            "tokens_expiring_within_7_days":
                [{ "service": "billing\u{202e}", "token_id": "t\nforged OK", "expires_in_seconds": 7200 }],
        });
        let out = super::render(&v);
        assert!(out.contains("kw-1\\x1b[2J") && !out.contains('\u{1b}'), "{out}");
        assert!(out.contains("billing\\u{202e}/t\\nforged OK: expires in 2 h"), "{out}");
        assert!(out.contains("sk_live_…cdef") && !out.contains("0123456789abcdef"), "{out}");
        assert_eq!(out.lines().count(), 5, "{out}");
    }

    #[test]
    fn each_cap_shows_its_spend_and_what_is_left() {
        let v = serde_json::json!({
            "spend": [
                { "service": "support-tool", "kind": "refund", "currency": "usd", "per_day": 10000,
                  "per_account": false, "shared": true, "spent": 6000, "left": 4000 },
                { "service": "payouts", "kind": "payout", "currency": "eur", "per_day": 500,
                  "per_account": false, "shared": true, "error": "the spend store (ratelimit.redis) is out" },
                { "service": "platform", "kind": "transfer", "currency": "usd", "per_day": 100,
                  "per_account": true, "shared": false,
                  "accounts": [{ "account": "acct_1", "spent": 30, "left": 70 }] },
            ],
        });
        let out = super::render(&v);
        assert!(out.contains("spend     support-tool refund usd (per_day 10000, all replicas): 6000 spent in 24 h, 4000 left"), "{out}");
        assert!(
            out.contains("payouts payout eur (per_day 500, all replicas): UNAVAILABLE: the spend store"),
            "{out}"
        );
        assert!(
            out.contains(
                "platform transfer usd (per_day 100, this replica) account acct_1: 30 spent in 24 h, 70 left"
            ),
            "{out}"
        );
    }
}
