//! `keyward token new`: mint a token, print it once with the configuration that admits it.

use std::process::ExitCode;

use clap::Subcommand;
use keyward::control::config::Source;
use keyward::policy::identity::hash_token;
use keyward::policy::token_format::{self, ALPHABET, BODY};

use super::ConfigArg;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Mint a token for SERVICE: printed once, with the configuration block holding its hash.
    /// Changes no file.
    New {
        /// The service the token is for.
        #[arg(required_unless_present = "admin")]
        service: Option<String>,
        /// Mint an admin token with this id instead (`[[admin.token]]`): it may reload and
        /// suspend or resume tokens on the admin port.
        #[arg(long, value_name = "ID", conflicts_with_all = ["service", "id"])]
        admin: Option<String>,
        /// Token id [default: SERVICE-YYYY-MM-DD, then -2, -3, … if the service has that one].
        #[arg(long)]
        id: Option<String>,
        /// Print one JSON object (`service`, `id`, `token`, `sha256`, `snippet`) for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Find keyward tokens (by their checksum) and Stripe keys in files and directories; exit 1
    /// if any is found (a pre-commit hook, a CI step). Shows only a prefix and the last 4.
    Scan {
        /// Files and directories to read (`.git` folders are skipped, see --git; symlinks given
        /// are followed, symlinked folders met inside one are not).
        #[arg(required = true)]
        paths: Vec<std::path::PathBuf>,
        /// Name the service and token id of each keyward token found (by its hash), and find
        /// tokens older than the checksum too.
        #[arg(long, value_name = "PATH")]
        config: Option<std::path::PathBuf>,
        /// Also read everything the repositories the paths are in hold: every blob, commit and
        /// tag their refs, reflogs (stashes) and index reach.
        #[arg(long)]
        git: bool,
        /// Scan at most this many bytes of a file, object or decompressed gzip; a larger one is
        /// named on stderr (exit 2 if nothing was found).
        #[arg(long, value_name = "BYTES", default_value_t = super::scan::MAX_BYTES)]
        max_bytes: u64,
    },
    /// Suspend every token with this id now, on the running keyward (`POST
    /// /-/tokens/ID/suspend`): refused until resumed, across reloads and restarts.
    Suspend(AdminCall),
    /// Lift the suspension of every token with this id (`POST /-/tokens/ID/resume`).
    Resume(AdminCall),
}

/// A call to the running keyward's admin port, with the admin token in `KEYWARD_ADMIN_TOKEN`.
#[derive(clap::Args)]
pub struct AdminCall {
    /// The token id.
    id: String,
    /// The admin address [default: `server.admin_listen` of the configuration].
    #[arg(long, value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
    #[command(flatten)]
    config: ConfigArg,
}

pub async fn token(command: TokenCommand) -> ExitCode {
    let (service, id, json, config) = match command {
        TokenCommand::New { admin: Some(id), json, .. } => return new_admin(&id, json),
        TokenCommand::New { service, id, json, config, .. } => {
            (service.unwrap_or_default(), id, json, config)
        }
        TokenCommand::Scan { paths, config, git, max_bytes } => {
            return super::scan::scan(&paths, config.as_deref(), git, max_bytes);
        }
        TokenCommand::Suspend(call) => return admin_call(call, "suspend").await,
        TokenCommand::Resume(call) => return admin_call(call, "resume").await,
    };
    // Read leniently: only to learn the service's token ids and whether it exists.
    let table = Source::locate(config.config.as_deref())
        .ok()
        .and_then(|src| toml::from_str::<toml::Table>(&src.text).ok())
        .unwrap_or_default();
    let configured = configured_services(&table);
    let existing = configured.iter().find(|(name, _)| *name == service).map(|(_, ids)| ids.clone());
    let date = time::OffsetDateTime::now_utc().date();
    let id =
        id.unwrap_or_else(|| free_id(&format!("{service}-{date}"), existing.as_deref().unwrap_or_default()));
    let token = new_token();
    let block = match existing {
        Some(_) => snippet(&id, &token),
        None => service_block(&service, first_secret(&table), &id, &token),
    };
    if json {
        let v = serde_json::json!({
            "service": service, "id": id, "token": token,
            "sha256": hex::encode(hash_token(&token)), "snippet": block,
        });
        println!("{v}");
        return ExitCode::SUCCESS;
    }
    println!("token (shown once; give it to the {service} service, store it nowhere else):\n\n  {token}\n");
    match configured.iter().any(|(name, _)| *name == service) {
        true => println!("add to the [[service]] named \"{service}\" in the config:\n"),
        false => println!("no service \"{service}\" is configured yet; add this to the config:\n"),
    }
    print!("{block}");
    ExitCode::SUCCESS
}

/// `keyward token new --admin ID`: an admin token and its `[[admin.token]]`.
fn new_admin(id: &str, json: bool) -> ExitCode {
    let token = new_token();
    let sha256 = hex::encode(hash_token(&token));
    let block = format!("[[admin.token]]\nid = \"{id}\"\nsha256 = \"{sha256}\"\n");
    if json {
        println!(
            "{}",
            serde_json::json!({ "admin": id, "token": token, "sha256": sha256, "snippet": block })
        );
        return ExitCode::SUCCESS;
    }
    println!(
        "admin token (shown once; keep it in a secret store, give it as KEYWARD_ADMIN_TOKEN):\n\n  {token}\n"
    );
    println!("add to the config:\n");
    print!("{block}");
    ExitCode::SUCCESS
}

/// `keyward token suspend|resume ID`: the admin port's answer, printed.
async fn admin_call(call: AdminCall, action: &str) -> ExitCode {
    let addr = match super::reload::admin_addr(call.admin, &call.config) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let path = format!("/-/tokens/{}/{action}", call.id);
    match super::reload::admin_request(addr, http::Method::POST, &path).await {
        Ok((status, body)) => {
            println!("{body}");
            if status == 200 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => super::fail([format!("admin endpoint {addr}: {e}")]),
    }
}

/// The services a configuration names, each with its token ids.
fn configured_services(table: &toml::Table) -> Vec<(String, Vec<String>)> {
    let services = table.get("service").and_then(|s| s.as_array()).cloned().unwrap_or_default();
    services
        .iter()
        .filter_map(|s| {
            let name = s.get("name")?.as_str()?.to_string();
            let tokens = s.get("token").and_then(|t| t.as_array()).cloned().unwrap_or_default();
            let ids = tokens.iter().filter_map(|t| Some(t.get("id")?.as_str()?.to_string())).collect();
            Some((name, ids))
        })
        .collect()
}

fn first_secret(table: &toml::Table) -> Option<&str> {
    table.get("secret")?.as_table()?.keys().next().map(String::as_str)
}

/// `base`, or `base-2`, `base-3`, … : the first not in `taken`.
fn free_id(base: &str, taken: &[String]) -> String {
    (1..)
        .map(|n| if n == 1 { base.to_string() } else { format!("{base}-{n}") })
        .find(|c| !taken.contains(c))
        .unwrap()
}

/// A whole `[[service]]` for a service not configured yet: report mode, no scope, loopback.
fn service_block(service: &str, secret: Option<&str>, id: &str, token: &str) -> String {
    format!(
        "[[service]]\nname = \"{service}\"\nsecret = \"{}\"          # a [secret.NAME] of this configuration\n\
         source_ips = [\"127.0.0.1/32\"]  # the networks the service calls from\n\
         mode = \"report\"               # forward and record would_deny; \"enforce\" once the scope is right\n\n\
         {}\n[service.scope]                # permission = \"read\" | \"write\" (see `keyward catalog`)\n",
        secret.unwrap_or("stripe"),
        snippet(id, token).trim_end()
    )
}

/// A fresh token: `kw_`, 43 base62 characters (256 bits) from the OS's randomness, and their
/// checksum (`policy::token_format`).
pub fn new_token() -> String {
    let mut body = String::with_capacity(BODY);
    let mut buf = [0u8; 64];
    while body.len() < BODY {
        getrandom::fill(&mut buf).expect("the OS has randomness");
        // Rejection sampling keeps every character equally likely.
        for b in buf.iter().filter(|&&b| b < 248) {
            if body.len() == BODY {
                break;
            }
            body.push(ALPHABET[(b % 62) as usize] as char);
        }
    }
    token_format::with_checksum(&body)
}

/// The `[[service.token]]` block that admits `token`.
pub fn snippet(id: &str, token: &str) -> String {
    format!("[[service.token]]\nid = \"{id}\"\nsha256 = \"{}\"\n", hex::encode(hash_token(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_distinct_and_base62() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), token_format::LEN);
        assert!(a[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert!(token_format::checksum_ok(&a));
        assert!(snippet("x", &a).contains(&hex::encode(hash_token(&a))));
    }

    #[test]
    fn a_second_token_of_the_day_gets_an_id_of_its_own() {
        let taken = ["b-2026-12-01".to_string(), "b-2026-12-01-2".to_string()];
        assert_eq!(free_id("b-2026-12-01", &taken), "b-2026-12-01-3");
        assert_eq!(free_id("b-2026-12-02", &taken), "b-2026-12-02");
    }

    #[test]
    fn a_new_service_gets_a_whole_block_that_parses() {
        let block = service_block("billing", Some("stripe"), "billing-1", &new_token());
        let t: toml::Table = toml::from_str(&block).unwrap();
        let s = &t["service"][0];
        assert_eq!((s["name"].as_str(), s["mode"].as_str()), (Some("billing"), Some("report")));
        assert_eq!(s["token"][0]["id"].as_str(), Some("billing-1"));
    }
}
