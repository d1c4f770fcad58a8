//! `keyward token scan`: find keyward tokens (by their checksum) and Stripe keys in files,
//! directories and, with `--git`, a repository's history. Prints where each is, never the
//! whole value (its prefix and last 4), and exits 1 when it found any: a pre-commit hook or a
//! CI step.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use keyward::policy::identity::hash_token;
use keyward::policy::token_format::{self, BODY, PREFIX};

/// Files larger than this are not read (build outputs, archives).
const MAX_FILE: u64 = 50 * 1024 * 1024;
/// Stripe's secret kinds: secret and restricted keys, live and test, and webhook secrets.
const STRIPE: [&str; 5] = ["sk_live_", "rk_live_", "sk_test_", "rk_test_", "whsec_"];
/// Shorter than this after the prefix is a placeholder (`sk_test_...`), not a key.
const STRIPE_MIN: usize = 16;

/// One finding: what it is and its value shown as prefix and last 4.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    pub line: usize,
    pub kind: &'static str,
    pub shown: String,
    /// The service and token id of a keyward token found in `--config`.
    pub owner: Option<String>,
}

/// Configured token hashes → "service \"S\", token \"ID\"".
pub type Owners = HashMap<[u8; 32], String>;

/// Every token and key in `text`.
pub fn find(text: &str, owners: &Owners) -> Vec<Found> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut at = 0;
        while let Some(start) = next_start(line, at) {
            let word_end = start
                + line[start..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(line.len() - start);
            let word = &line[start..word_end];
            at = word_end.max(start + 1);
            if let Some(f) = classify(word, owners) {
                out.push(Found { line: i + 1, ..f });
            }
        }
    }
    out
}

/// The next place at or after `from` where a token or key may begin (not inside a word).
fn next_start(line: &str, from: usize) -> Option<usize> {
    let bytes = line.as_bytes();
    (from..bytes.len()).find(|&i| {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        // Bytes, not `str` slices: `i` may fall inside a multi-byte character.
        let rest = &bytes[i..];
        boundary
            && (rest.starts_with(PREFIX.as_bytes()) || STRIPE.iter().any(|p| rest.starts_with(p.as_bytes())))
    })
}

fn classify(word: &str, owners: &Owners) -> Option<Found> {
    let owner = || owners.get(&hash_token(word)).cloned();
    if let Some(rest) = word.strip_prefix(PREFIX) {
        // A checksummed token; or, with --config, an older one (no checksum) whose hash is there.
        let known = token_format::checksum_ok(word) || (rest.len() == BODY && owner().is_some());
        return known.then(|| Found {
            line: 0,
            kind: "keyward token",
            shown: shown(PREFIX, word),
            owner: owner(),
        });
    }
    let prefix = STRIPE.iter().find(|p| word.starts_with(**p))?;
    let rest = &word[prefix.len()..];
    (rest.len() >= STRIPE_MIN && rest.bytes().all(|b| b.is_ascii_alphanumeric())).then(|| Found {
        line: 0,
        kind: if prefix.starts_with("whsec") { "Stripe webhook secret" } else { "Stripe key" },
        shown: shown(prefix, word),
        owner: None,
    })
}

/// `kw_…WXYZ`: the prefix and the last 4 characters.
fn shown(prefix: &str, word: &str) -> String {
    format!("{prefix}…{}", &word[word.len() - 4..])
}

pub fn scan(paths: &[PathBuf], config: Option<&Path>, git: bool) -> ExitCode {
    let owners = match config.map(owners).transpose() {
        Ok(o) => o.unwrap_or_default(),
        Err(e) => return super::fail([e]),
    };
    let mut found = 0usize;
    let mut report = |place: &str, text: &str| {
        for f in find(text, &owners) {
            found += 1;
            let owner = f.owner.map(|o| format!(" ({o})")).unwrap_or_default();
            println!("{place}:{}: {} {}{owner}", f.line, f.kind, f.shown);
        }
    };
    for path in paths {
        let walked = walk(path, &mut |file, text| report(&file.display().to_string(), text));
        if let Err(e) = walked {
            return super::fail([format!("{}: {e}", path.display())]);
        }
        if git
            && path.join(".git").exists()
            && let Err(e) = history(path, &mut report)
        {
            return super::fail([format!("{}: git history: {e}", path.display())]);
        }
    }
    if found == 0 {
        eprintln!("no keyward token or Stripe key found");
        return ExitCode::SUCCESS;
    }
    eprintln!("found {found}: remove them, and revoke or rotate each (docs/operations.md, leaked tokens)");
    ExitCode::FAILURE
}

/// Every readable text file under `path` (not inside `.git`), as `(file, text)`.
fn walk(path: &Path, each: &mut dyn FnMut(&Path, &str)) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries.iter().filter(|e| e.file_name() != ".git") {
            walk(&e.path(), each)?;
        }
    } else if meta.is_file() && meta.len() <= MAX_FILE {
        let bytes = std::fs::read(path)?;
        // Binary files (a NUL early on) are not text a token is pasted into.
        if !bytes[..bytes.len().min(8192)].contains(&0) {
            each(path, &String::from_utf8_lossy(&bytes));
        }
    }
    Ok(())
}

/// Lines added in every commit of the repository at `repo` (`git log -p --all`), reported as
/// `git:COMMIT:FILE`.
fn history(repo: &Path, report: &mut dyn FnMut(&str, &str)) -> Result<(), String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["log", "-p", "--all", "--no-color", "--no-ext-diff", "--format=commit %H"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let (mut commit, mut file) = (String::new(), String::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(c) = line.strip_prefix("commit ") {
            commit = c.chars().take(12).collect();
        } else if let Some(f) = line.strip_prefix("+++ b/") {
            file = f.to_string();
        } else if let Some(added) = line.strip_prefix('+').filter(|_| !line.starts_with("+++")) {
            report(&format!("git:{commit}:{file}"), added);
        }
    }
    Ok(())
}

/// The token hashes a configuration holds, read leniently (a broken config still names them).
fn owners(config: &Path) -> Result<Owners, String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {}", config.display(), e.message()))?;
    let mut out = Owners::new();
    for s in table.get("service").and_then(|s| s.as_array()).into_iter().flatten() {
        let name = s.get("name").and_then(|n| n.as_str()).unwrap_or("?");
        for t in s.get("token").and_then(|t| t.as_array()).into_iter().flatten() {
            let id = t.get("id").and_then(|i| i.as_str()).unwrap_or("?");
            let Some(hash) = t.get("sha256").and_then(|h| h.as_str()).and_then(|h| hex::decode(h).ok())
            else {
                continue;
            };
            if let Ok(hash) = <[u8; 32]>::try_from(hash) {
                out.insert(hash, format!("service \"{name}\", token \"{id}\""));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tokens_and_keys_and_never_shows_them_whole() {
        let token = token_format::with_checksum(&"Q".repeat(BODY));
        let lookalike = format!("kw_{}", "Q".repeat(BODY + 6));
        let live = format!("sk_live_{}", "9".repeat(24));
        let text = format!(
            "KEY={token}\nnot one: {lookalike} xkw_{} sk_test_... sk_test_short\n\"{live}\",whsec_{}\n",
            "Q".repeat(49),
            "w".repeat(32)
        );
        let found = find(&text, &Owners::new());
        let got: Vec<_> = found.iter().map(|f| (f.line, f.kind, f.shown.as_str())).collect();
        assert_eq!(
            got,
            [
                (1, "keyward token", &*format!("kw_…{}", &token[token.len() - 4..])),
                (3, "Stripe key", "sk_live_…9999"),
                (3, "Stripe webhook secret", "whsec_…wwww"),
            ]
        );
        let old = format!("kw_{}", "Z".repeat(BODY));
        let owners = Owners::from([(hash_token(&old), "service \"b\", token \"b1\"".to_string())]);
        // Any text: multi-byte characters next to where a token could start.
        assert!(find("… é—kw_ …sk_live_ ☃whsec_", &Owners::new()).is_empty());
        let found = find(&format!("{old} {token}"), &owners);
        assert_eq!(
            found[0].owner.as_deref(),
            Some("service \"b\", token \"b1\""),
            "an old token, by its hash"
        );
        assert_eq!((found.len(), found[1].owner.as_deref()), (2, None));
    }
}
