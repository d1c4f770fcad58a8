//! What happened to keyward itself, in the same chain as the calls: its start and stop
//! (`kind = "lifecycle"`), the configuration text in force (`kind = "config"`, written at start
//! and whenever an accepted reload brings a version not recorded yet), and every
//! administrative action (`kind = "admin"`: reloads, suspensions, resumptions, quarantines),
//! with who did it. These records are rare: they wait for a place in the queue rather than be
//! dropped, and are written by serde.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Kind, Links};

/// `start` (the process's first record, before it serves) or `stop` (after draining, the
/// last before the log closes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lifecycle {
    #[serde(flatten)]
    pub links: Links,
    pub event: String,
    pub keyward_version: String,
    pub config_version: Arc<str>,
    pub config_sha256: String,
}

/// The configuration text a version was compiled from, redacted of anything that looks like
/// a credential (see [`redact_config`]): `keyward audit config VERSION FILE…` prints it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigText {
    #[serde(flatten)]
    pub links: Links,
    pub config_version: Arc<str>,
    /// SHA-256 (hex) of the file's bytes as read (before redaction).
    pub config_sha256: String,
    /// The file's path, or `built-in` for the embedded default.
    pub source: String,
    pub text: String,
}

/// One administrative action: `reload`, `suspend`, `resume` or `quarantine`; `accepted` or
/// `refused`; by `admin:<token id>`, `peer:<ip>`, `sighup`, `file_watch` or `keyward`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Admin {
    #[serde(flatten)]
    pub links: Links,
    pub action: String,
    pub actor: String,
    pub outcome: String,
    /// Reload: the version serving after it (the running one if refused), and its file's
    /// SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_sha256: Option<String>,
    /// Reload: the top-level sections of the file that differ from the last one loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<String>>,
    /// Reload: changed settings kept as they are until a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_only: Option<Vec<String>>,
    /// Reload refused: why (as `keyward check` prints them: never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_id: Option<Arc<str>>,
    /// Suspend, resume: the admin caller's address; quarantine: the address that tipped it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Admin {
    /// An action with no details yet, timed now.
    pub fn new(action: &str, actor: &str, accepted: bool) -> Admin {
        Admin {
            links: Links::now(Kind::Admin),
            action: action.into(),
            actor: actor.into(),
            outcome: if accepted { "accepted" } else { "refused" }.into(),
            ..Default::default()
        }
    }
}

/// A record of keyward's own, for the writer to chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Lifecycle(Lifecycle),
    Config(ConfigText),
    Admin(Admin),
}

impl Event {
    pub(super) fn links_mut(&mut self) -> &mut Links {
        match self {
            Event::Lifecycle(e) => &mut e.links,
            Event::Config(e) => &mut e.links,
            Event::Admin(e) => &mut e.links,
        }
    }

    /// Append this record as compact JSON (no newline).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let written = match self {
            Event::Lifecycle(e) => serde_json::to_writer(out, e),
            Event::Config(e) => serde_json::to_writer(out, e),
            Event::Admin(e) => serde_json::to_writer(out, e),
        };
        written.expect("an event record serialises");
    }

    /// `start` or `stop`, under the configuration `config_version`, whose file's SHA-256 is
    /// `config_sha256`.
    pub fn lifecycle(event: &str, config_version: &Arc<str>, config_sha256: String) -> Event {
        Event::Lifecycle(Lifecycle {
            links: Links::now(Kind::Lifecycle),
            event: event.into(),
            keyward_version: env!("CARGO_PKG_VERSION").into(),
            config_version: config_version.clone(),
            config_sha256,
        })
    }

    /// The configuration `config_version`, read from `source` (`None`: built in) as `text`.
    pub fn config(config_version: &Arc<str>, source: Option<&std::path::Path>, text: &str) -> Event {
        Event::Config(ConfigText {
            links: Links::now(Kind::Config),
            config_version: config_version.clone(),
            config_sha256: sha256_hex(text),
            source: source.map_or_else(|| "built-in".to_string(), |p| p.display().to_string()),
            text: redact_config(text),
        })
    }
}

/// SHA-256 (hex) of a text's bytes.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// The top-level sections (`server`, `service`, `secret`, …) whose contents differ between two
/// configuration texts, sorted. A text that does not parse differs in every section of the
/// other (and is named `(unparsed)` when neither parses).
pub fn changed_sections(old: &str, new: &str) -> Vec<String> {
    let (a, b) = (old.parse::<toml::Table>(), new.parse::<toml::Table>());
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        (Ok(t), Err(_)) | (Err(_), Ok(t)) => return t.keys().cloned().collect(),
        (Err(_), Err(_)) => return if old == new { vec![] } else { vec!["(unparsed)".into()] },
    };
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter().filter(|k| a.get(*k) != b.get(*k)).cloned().collect()
}

/// What a recorded configuration shows instead of a credential.
pub const REDACTED: &str = "[redacted]";

/// Prefixes of credentials (Stripe secret and restricted keys, webhook secrets, meter-event
/// session tokens, keyward tokens): such a value is replaced wherever it starts a word.
const PREFIXES: [&str; 5] = ["sk_", "rk_", "whsec_", "mes_tok_", "kw_"];

/// Keys whose inline string value is a credential, whatever it looks like. keyward's own keys
/// name secrets (`secret`, `password_secret`, `key`) and never hold one; these are what a
/// person might paste into a file by mistake.
const CREDENTIAL_KEYS: [&str; 10] = [
    "password",
    "passwd",
    "pass",
    "token",
    "api_key",
    "apikey",
    "secret_key",
    "client_secret",
    "private_key",
    "access_token",
];

/// A configuration text as the log records it: every value that looks like a credential is
/// `[redacted]`. The text holds token hashes and names of secrets, never secrets, by design;
/// this is for what a person pasted anyway (in a value or a comment): a keyward token, a
/// Stripe key, a PEM private key block, a password in a URL or under a password-like key.
/// Hashes (`sha256 = "…"`) are kept: verification needs them.
pub fn redact_config(text: &str) -> String {
    let text = redact_pem(text);
    let text = redact_prefixed(&text);
    let text = redact_url_passwords(&text);
    text.lines().map(redact_credential_key).collect::<Vec<_>>().join("\n")
        + if text.ends_with('\n') { "\n" } else { "" }
}

/// `-----BEGIN … PRIVATE KEY-----` to its `-----END … PRIVATE KEY-----` (or to the end of the
/// text, if it has none), replaced.
fn redact_pem(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(begin) = rest.find("-----BEGIN ") {
        let header_end = rest[begin..].find('\n').map_or(rest.len(), |i| begin + i);
        if !rest[begin..header_end].contains("PRIVATE KEY") {
            out.push_str(&rest[..begin + 1]);
            rest = &rest[begin + 1..];
            continue;
        }
        out.push_str(&rest[..begin]);
        out.push_str(REDACTED);
        let end = rest[begin..].find("-----END ").map(|i| begin + i).and_then(|e| {
            let after = rest[e + 9..].find("-----")?;
            Some(e + 9 + after + 5)
        });
        rest = end.map_or("", |e| &rest[e..]);
    }
    out.push_str(rest);
    out
}

fn word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// A credential prefix at the start of a word, and the letters, digits and `_` after it.
fn redact_prefixed(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let (mut i, mut copied) = (0, 0);
    while i < bytes.len() {
        let starts_word = i == 0 || !word_byte(bytes[i - 1]);
        let prefix =
            starts_word.then(|| PREFIXES.iter().find(|p| bytes[i..].starts_with(p.as_bytes()))).flatten();
        let Some(prefix) = prefix else {
            i += 1;
            continue;
        };
        let run = bytes[i + prefix.len()..].iter().take_while(|b| word_byte(**b)).count();
        if run == 0 {
            i += prefix.len();
            continue;
        }
        out.push_str(&text[copied..i]);
        out.push_str(REDACTED);
        i += prefix.len() + run;
        copied = i;
    }
    out.push_str(&text[copied..]);
    out
}

/// `scheme://user:PASSWORD@host` → `scheme://user:[redacted]@host`.
fn redact_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = at + 3;
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        // The authority: up to a quote, whitespace, `/`, `?` or `#`.
        let end = rest.find(|c: char| c.is_whitespace() || "\"'/?#".contains(c)).unwrap_or(rest.len());
        let authority = &rest[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon + 1]);
                out.push_str(REDACTED);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `password = "…"` (or a key like it, bare, quoted or dotted, in a table or inline) with its
/// string value replaced.
fn redact_credential_key(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim_end();
        let key = key.rsplit(|c: char| c.is_whitespace() || ",{.".contains(c)).next().unwrap_or("");
        let key = key.trim_matches(|c| c == '"' || c == '\'').to_ascii_lowercase();
        let value = &rest[eq + 1..];
        let lead = value.len() - value.trim_start().len();
        let quote = value.trim_start().chars().next().filter(|c| *c == '"' || *c == '\'');
        let closing = quote.and_then(|q| value[lead + 1..].find(q).map(|i| lead + 1 + i));
        match (CREDENTIAL_KEYS.contains(&key.as_str()), quote, closing) {
            (true, Some(q), Some(close)) => {
                out.push_str(&rest[..eq + 1 + lead]);
                out.push(q);
                out.push_str(REDACTED);
                out.push(q);
                rest = &value[close + 1..];
            }
            (true, Some(q), None) => {
                // A multi-line or unterminated string: what follows on this line goes.
                out.push_str(&rest[..eq + 1 + lead]);
                out.push(q);
                out.push_str(REDACTED);
                return out;
            }
            _ => {
                out.push_str(&rest[..eq + 1]);
                rest = value;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_sections_are_the_top_level_tables_that_differ() {
        let old = "[server]\nlisten = \"127.0.0.1:1\"\n[secret.a]\nsource = \"env\"\nvar = \"A\"\n\
                   [[service]]\nname = \"s\"\n[audit]\npath = \"-\"\n";
        let new = "[server]\nlisten = \"127.0.0.1:1\"\n[secret.a]\nsource = \"env\"\nvar = \"B\"\n\
                   [[service]]\nname = \"t\"\n[limits]\nmax_connections = 3\n";
        assert_eq!(changed_sections(old, new), ["audit", "limits", "secret", "service"]);
        assert_eq!(changed_sections(old, old), Vec::<String>::new());
        // Layout and comments are not changes.
        let relaid = "# a comment\n[audit]\npath = '-'\n[server]\nlisten = \"127.0.0.1:1\"\n\
                      [[service]]\nname = \"s\"\n[secret.a]\nvar = \"A\"\nsource = \"env\"\n";
        assert_eq!(changed_sections(old, relaid), Vec::<String>::new());
        assert_eq!(changed_sections(old, "[server"), ["audit", "secret", "server", "service"]);
    }

    #[test]
    fn credential_looking_values_are_redacted_and_hashes_kept() {
        let hash = "cb31b4a5a7a5084e86d5d3f253569f06e9232db32d82c7863748c43cbda23ec6";
        // A real key, made now (no key is kept in the source).
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let text = format!(
            "[ratelimit]\nredis = \"redis://u:hunter2@localhost:6379\"\n\
             [[service.token]]\nid = \"t1\"\nsha256 = \"{hash}\"   # kw_demo_local_only_do_not_deploy\n\
             note = {{ password = \"p@ss word\", other = \"x\" }}\n\
             \"api_key\" = 'sk_live_51Hx'\n\
             secret = \"stripe\"\nkey = \"stripe\"\nname = \"task_runner\"\n\
             pem = \"\"\"\n{pem}\"\"\"\n\
             cert = \"-----BEGIN CERTIFICATE-----\"\nhook = \"whsec_abc\" # rk_test_1 mes_tok_Zq\n"
        );
        let r = redact_config(&text);
        for gone in
            ["hunter2", "kw_demo", "p@ss", "sk_live", "whsec_", "rk_test", "mes_tok"].iter().chain(&body)
        {
            assert!(!r.contains(gone), "{gone} in\n{r}");
        }
        for kept in [
            hash,
            "redis://u:[redacted]@localhost:6379",
            "secret = \"stripe\"",
            "key = \"stripe\"",
            "task_runner",
            "other = \"x\"",
            "BEGIN CERTIFICATE",
            "password = \"[redacted]\"",
        ] {
            assert!(r.contains(kept), "{kept} not in\n{r}");
        }
        assert!(r.ends_with('\n'));
    }
}
