//! Suspended tokens (`POST /-/tokens/{id}/suspend`, and quarantine), by the token's SHA-256:
//! a renamed id, a reload, an unrelated edit or a restart does not lift a suspension; only
//! `POST /-/tokens/{id}/resume`, or the token leaving the configuration, does. Kept in
//! `[admin] state_file`, written whole (a temporary file renamed over it) on every change: a
//! suspension the file does not hold yet is still in force in memory, and said to be unsaved.
//! A state file that cannot be read stops keyward from starting: it would otherwise start with
//! every suspension lifted.
//!
//! With `[ratelimit] redis`, every replica shares them: each replica writes its changes to a
//! Redis hash (`PREFIX:suspended`) and merges the hash in, every second. A change made while
//! Redis is out is in force here at once and shared when Redis answers again; neither an
//! outage nor a Redis that lost its data lifts a suspension.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::control::limits::{LimitsError, Store};
use crate::policy::Policy;
use crate::policy::identity::TokenHash;

/// Why the state file cannot be read or written, or Redis did not share the suspensions.
#[derive(Debug, thiserror::Error)]
pub enum SuspensionsError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{}: not a keyward state file ({source}); fix or remove it (it holds suspended tokens)",
        path.display()
    )]
    NotStateFile { path: PathBuf, source: serde_json::Error },
    /// `key`: a key of the file's `suspended` table (a hash, never a token).
    #[error("{}: {key:?} is not a token's SHA-256", path.display())]
    NotAHash { path: PathBuf, key: String },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Store(#[from] LimitsError),
}

/// One suspension as the state file holds it (never the token: its hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub service: String,
    pub token_id: String,
    /// When, RFC 3339.
    pub since: String,
    /// `admin` or `quarantine`.
    pub by: String,
}

/// A resumption, in the Redis hash.
const RESUMED: &str = "resumed";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    /// Token SHA-256 (hex) → its suspension.
    suspended: BTreeMap<String, Entry>,
}

#[derive(Debug)]
pub struct Suspensions {
    /// Read on every call: swapped whole on each change.
    now: ArcSwap<foldhash::HashSet<TokenHash>>,
    /// The entries, and the writes of the state file, one at a time.
    entries: Mutex<BTreeMap<String, Entry>>,
    file: Option<PathBuf>,
    /// Changes not yet written to Redis: hash → the entry to set, or `None` to delete.
    unshared: Mutex<BTreeMap<String, Option<Entry>>>,
}

impl Suspensions {
    /// The suspensions kept in `file` (none yet if it does not exist); an error names a file
    /// that exists and cannot be read as a state file.
    pub fn open(file: Option<PathBuf>) -> Result<Suspensions, SuspensionsError> {
        let entries = match &file {
            Some(path) => read(path)?,
            None => BTreeMap::new(),
        };
        let s = Suspensions {
            now: ArcSwap::default(),
            entries: Mutex::new(entries),
            file,
            unshared: Mutex::default(),
        };
        s.publish(&s.lock());
        Ok(s)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn contains(&self, hash: &TokenHash) -> bool {
        self.now.load().contains(hash)
    }

    pub fn len(&self) -> usize {
        self.now.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Suspend these tokens; whether the state file holds them (`Err`: why not).
    pub fn add(&self, tokens: &[(TokenHash, Entry)]) -> Result<(), SuspensionsError> {
        let mut entries = self.lock();
        for (hash, entry) in tokens {
            let entry = entries.entry(hex::encode(hash)).or_insert_with(|| entry.clone());
            self.unshared().insert(hex::encode(hash), Some(entry.clone()));
        }
        self.publish(&entries);
        self.save(&entries)
    }

    /// Lift the suspension of these tokens; how many were suspended, and whether the state
    /// file says so.
    pub fn remove(&self, hashes: &[TokenHash]) -> (usize, Result<(), SuspensionsError>) {
        let mut entries = self.lock();
        let lifted = hashes.iter().filter(|h| entries.remove(&hex::encode(h)).is_some()).count();
        self.unshared().extend(hashes.iter().map(|h| (hex::encode(h), None)));
        self.publish(&entries);
        (lifted, if lifted > 0 { self.save(&entries) } else { Ok(()) })
    }

    /// Forget suspensions of tokens `policy` no longer has: a token removed from the
    /// configuration is gone for good, and one added back later is a new decision. Returns
    /// the suspensions forgotten.
    pub fn retain(&self, policy: &Policy) -> Vec<Entry> {
        let mut entries = self.lock();
        let mut gone = Vec::new();
        entries.retain(|hex_hash, e| {
            let mut h = [0u8; 32];
            let kept = hex::decode_to_slice(hex_hash, &mut h).is_ok() && policy.tokens.contains_key(&h);
            if !kept {
                gone.push(e.clone());
            }
            kept
        });
        if !gone.is_empty() {
            self.publish(&entries);
            if let Err(e) = self.save(&entries) {
                tracing::error!(error = %e, "suspensions of removed tokens dropped in memory only");
            }
        }
        gone
    }

    /// The suspensions, for `/-/status`: hash prefix, service, token id, since, by.
    pub fn list(&self) -> Vec<(String, Entry)> {
        self.lock().iter().map(|(h, e)| (h[..12].to_string(), e.clone())).collect()
    }

    fn unshared(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Option<Entry>>> {
        self.unshared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// With Redis: write this replica's changes, then merge the shared hash in: what any
    /// replica suspended, less what any resumed. A resumption is kept in the hash as
    /// `"resumed"`, not deleted, so that a Redis that lost its data lifts nothing: what this
    /// replica knows and Redis does not is written back. `Err` (Redis out): nothing changes
    /// here, and the changes are written next time.
    pub async fn share(&self, store: &Store) -> Result<(), SuspensionsError> {
        let key = store.key("suspended");
        let pending = std::mem::take(&mut *self.unshared());
        let set: Vec<(String, String)> = pending
            .iter()
            .map(|(h, e)| {
                let v =
                    e.as_ref().and_then(|e| serde_json::to_string(e).ok()).unwrap_or_else(|| RESUMED.into());
                (h.clone(), v)
            })
            .collect();
        let shared = match store.hash_set(&key, &set).await {
            Ok(()) => store.hash_all(&key).await,
            Err(e) => Err(e),
        };
        let shared = match shared {
            Ok(s) => s,
            Err(e) => {
                // Kept for the next try, behind anything newer.
                let mut unshared = self.unshared();
                for (h, e) in pending {
                    unshared.entry(h).or_insert(e);
                }
                return Err(e.into());
            }
        };
        let mut entries = self.lock();
        let mut merged = entries.clone();
        for (h, v) in shared.iter().filter(|(h, _)| h.len() == 64 && hex::decode(h).is_ok()) {
            match serde_json::from_str::<Entry>(v) {
                Ok(e) => drop(merged.insert(h.clone(), e)),
                Err(_) if v == RESUMED => drop(merged.remove(h)),
                Err(_) => {}
            }
        }
        let mut unshared = self.unshared();
        for (h, e) in &merged {
            if !shared.contains_key(h) {
                unshared.entry(h.clone()).or_insert_with(|| Some(e.clone()));
            }
        }
        drop(unshared);
        if *entries != merged {
            *entries = merged;
            self.publish(&entries);
            if let Err(e) = self.save(&entries) {
                tracing::error!(error = %e, "suspensions shared by Redis not saved to the state file");
            }
        }
        Ok(())
    }

    fn publish(&self, entries: &BTreeMap<String, Entry>) {
        let set = entries
            .keys()
            .filter_map(|k| {
                let mut h = [0u8; 32];
                hex::decode_to_slice(k, &mut h).ok().map(|()| h)
            })
            .collect();
        self.now.store(Arc::new(set));
    }

    fn save(&self, entries: &BTreeMap<String, Entry>) -> Result<(), SuspensionsError> {
        let Some(path) = &self.file else { return Ok(()) };
        let text = serde_json::to_string_pretty(&FileShape { suspended: entries.clone() })?;
        let tmp = path.with_extension("tmp");
        let written = (|| {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)
        })();
        written.map_err(|source| SuspensionsError::Io { path: path.clone(), source })
    }
}

fn read(path: &Path) -> Result<BTreeMap<String, Entry>, SuspensionsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(source) => return Err(SuspensionsError::Io { path: path.to_path_buf(), source }),
    };
    let shape: FileShape = serde_json::from_str(&text)
        .map_err(|source| SuspensionsError::NotStateFile { path: path.to_path_buf(), source })?;
    if let Some(bad) = shape.suspended.keys().find(|k| k.len() != 64 || hex::decode(k).is_err()) {
        return Err(SuspensionsError::NotAHash { path: path.to_path_buf(), key: bad.clone() });
    }
    Ok(shape.suspended)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            service: "billing".into(),
            token_id: id.into(),
            since: "2026-12-07T00:00:00Z".into(),
            by: "admin".into(),
        }
    }

    #[test]
    fn suspensions_are_kept_in_the_state_file_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("state/keyward-state.json");
        let s = Suspensions::open(Some(file.clone())).unwrap();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        s.add(&[(a, entry("one")), (b, entry("two"))]).unwrap();
        assert!(s.contains(&a) && s.contains(&b));
        assert_eq!(s.remove(&[b, [3u8; 32]]).0, 1);
        let again = Suspensions::open(Some(file.clone())).unwrap();
        assert!(again.contains(&a) && !again.contains(&b), "read back after a restart");
        assert_eq!(again.list()[0].1, entry("one"));
    }

    #[test]
    fn a_state_file_that_cannot_be_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keyward-state.json");
        for (text, says) in [
            ("{", "not a keyward state file"),
            (
                r#"{"suspended":{"abc":{"service":"s","token_id":"t","since":"x","by":"admin"}}}"#,
                "is not a token's SHA-256",
            ),
            (r#"{"suspended":{},"extra":1}"#, "not a keyward state file"),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = Suspensions::open(Some(file.clone())).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
