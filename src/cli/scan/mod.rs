//! `keyward token scan`: find keyward tokens (by their checksum) and Stripe keys in files,
//! directories and, with `--git`, everything a repository holds. Prints where each is, never
//! the whole value (its prefix and last 4), and exits 1 when it found any (a pre-commit hook, a
//! CI step), 2 when it found none but could not read something whole (named on stderr).

mod decode;
mod error;
mod find;
mod git;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use keyward::policy::identity::TokenHash;
use keyward::text::{escaped, printable};

use error::ScanError;

/// One finding: where, what it is, and its value shown as prefix and last 4.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    pub line: usize,
    pub kind: &'static str,
    pub shown: String,
    /// The service and token id of a keyward token found in `--config`.
    pub owner: Option<String>,
    /// What it was found under, outermost first: `base64`, `gzip`, `escaped`, ….
    pub how: Vec<&'static str>,
    /// The value's hash: the same value found twice on a line (through two decodings) is one.
    key: TokenHash,
}

impl Found {
    fn new(kind: &'static str, shown: String, key: TokenHash) -> Self {
        Found { line: 0, kind, shown, owner: None, how: Vec::new(), key }
    }

    /// Found through `how`, inside what it was already found under.
    fn how(mut self, how: &'static str) -> Self {
        self.how.push(how);
        self
    }

    /// Found inside a layer decoded as `how`.
    fn under(mut self, how: &'static str) -> Self {
        self.how.insert(0, how);
        self
    }

    fn same(&self, other: &Found) -> bool {
        self.line == other.line && self.key == other.key
    }
}

/// Configured token hashes → "service \"S\", token \"ID\"".
pub type Owners = HashMap<TokenHash, String>;

/// The default of `--max-bytes`: larger files are scanned only this far (and named).
pub const MAX_BYTES: u64 = 50 * 1024 * 1024;

pub fn scan(paths: &[PathBuf], config: Option<&Path>, git: bool, max_bytes: u64) -> ExitCode {
    let owners = match config.map(owners).transpose() {
        Ok(o) => o.unwrap_or_default(),
        Err(e) => {
            // 2, not 1: 1 says a token was found.
            eprintln!("error: {}", printable(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    let max = usize::try_from(max_bytes).unwrap_or(usize::MAX);
    let mut s = Scanner { owners: &owners, max, found: 0, partial: BTreeSet::new() };
    let mut repos = HashSet::new();
    for path in paths {
        s.path(path, true);
        if git {
            git::history(path, &mut repos, &mut s);
        }
    }
    s.summary()
}

/// What a scan has seen so far.
struct Scanner<'a> {
    owners: &'a Owners,
    max: usize,
    found: usize,
    /// The places not scanned whole, each already named on stderr.
    partial: BTreeSet<String>,
}

impl Scanner<'_> {
    /// A file or folder. A symlink given is followed; inside a folder, a symlink to a file is
    /// followed and one to a folder is not (a loop).
    fn path(&mut self, path: &Path, given: bool) {
        let place = escaped(&path.display().to_string()).into_owned();
        let link = !given && std::fs::symlink_metadata(path).is_ok_and(|m| m.is_symlink());
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() && !link => self.folder(path, &place),
            Ok(m) if m.is_file() => self.file(path, &place),
            Ok(m) if given && !m.is_dir() => self.not_whole(&place, "not a file or a folder"),
            Ok(_) => {}
            // A dangling symlink met in a folder holds nothing.
            Err(_) if link => {}
            Err(e) => self.not_whole(&place, &e.to_string()),
        }
    }

    /// Every entry of a folder but `.git` (see `--git`), in name order.
    fn folder(&mut self, path: &Path, place: &str) {
        match std::fs::read_dir(path).and_then(|d| d.collect::<Result<Vec<_>, _>>()) {
            Ok(mut entries) => {
                entries.sort_by_key(|e| e.file_name());
                for e in entries.iter().filter(|e| e.file_name() != ".git") {
                    self.path(&e.path(), false);
                }
            }
            Err(e) => self.not_whole(place, &e.to_string()),
        }
    }

    /// One file, its first `max` bytes if it is larger; binary files too (a NUL means nothing
    /// to a token pasted into a build output, a core dump or a database file).
    fn file(&mut self, path: &Path, place: &str) {
        let mut bytes = Vec::new();
        let limit = u64::try_from(self.max).unwrap_or(u64::MAX).saturating_add(1);
        let read = std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut bytes));
        if let Err(e) = read {
            self.not_whole(place, &e.to_string());
        }
        if bytes.len() > self.max {
            bytes.truncate(self.max);
            let max = self.max;
            self.not_whole(place, &format!("larger than --max-bytes; its first {max} bytes were scanned"));
        }
        let found = self.content(place, &bytes);
        self.report(place, &found);
    }

    /// The findings in one file's or object's bytes; a layer in it not read whole is named.
    fn content(&mut self, place: &str, bytes: &[u8]) -> Vec<Found> {
        let (found, partial) = decode::content(bytes, self.owners, self.max);
        for why in partial {
            self.not_whole(place, &why);
        }
        found
    }

    /// `PLACE:LINE: KIND SHOWN (OWNER) [HOW]` on stdout for each finding.
    fn report(&mut self, place: &str, found: &[Found]) {
        for f in found {
            self.found += 1;
            let owner = f.owner.as_ref().map(|o| format!(" ({o})")).unwrap_or_default();
            let how = if f.how.is_empty() { String::new() } else { format!(" [{}]", f.how.join(", ")) };
            println!("{place}:{}: {} {}{owner}{how}", f.line, f.kind, f.shown);
        }
    }

    /// Names on stderr a place not scanned whole (`place` is already escaped).
    fn not_whole(&mut self, place: &str, why: &str) {
        eprintln!("not scanned whole: {place}: {}", escaped(why));
        self.partial.insert(place.to_string());
    }

    /// The last line, and the exit status: 1 if anything was found, else 2 if something was
    /// not scanned whole, else 0.
    fn summary(&self) -> ExitCode {
        let unread = match self.partial.len() {
            0 => String::new(),
            n => format!("{n} not scanned whole (named above)"),
        };
        if self.found > 0 {
            let unread = if unread.is_empty() { unread } else { format!("; {unread}") };
            eprintln!(
                "found {}{unread}: remove them, and revoke or rotate each (docs/operations.md, leaked tokens)",
                self.found
            );
            ExitCode::FAILURE
        } else if !unread.is_empty() {
            eprintln!("no keyward token or Stripe key found in what was scanned, but {unread}");
            ExitCode::from(2)
        } else {
            eprintln!("no keyward token or Stripe key found");
            ExitCode::SUCCESS
        }
    }
}

/// The token hashes a configuration holds, read leniently (a broken config still names them).
fn owners(config: &Path) -> Result<Owners, ScanError> {
    let text = std::fs::read_to_string(config)
        .map_err(|source| ScanError::ConfigRead { path: config.to_path_buf(), source })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ScanError::ConfigToml {
        path: config.to_path_buf(),
        message: e.message().to_string(),
    })?;
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
                out.insert(hash, format!("service \"{}\", token \"{}\"", escaped(name), escaped(id)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::find::find;
    use super::*;
    use keyward::policy::identity::hash_token;
    use keyward::policy::token_format::{self, BODY};

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
        let found = find(text.as_bytes(), &Owners::new());
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
        assert!(find("… é—kw_ …sk_live_ ☃whsec_".as_bytes(), &Owners::new()).is_empty());
        let found = find(format!("{old} {token}").as_bytes(), &owners);
        assert_eq!(
            found[0].owner.as_deref(),
            Some("service \"b\", token \"b1\""),
            "an old token, by its hash"
        );
        assert_eq!((found.len(), found[1].owner.as_deref()), (2, None));
    }
}
