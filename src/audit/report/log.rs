//! What a report or a scope is made from: the files' records, read by kind, and their chains'
//! verification. Records of kinds keyward is still adding (`admin`, `lifecycle`, `config`) are
//! kept as JSON values and read leniently.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::AccessRecord;
use crate::audit::fold::FoldedRefusals;
use crate::audit::verify::{self, Break};

/// The files' lines, by kind.
#[derive(Debug, Default)]
pub struct Log {
    pub records: Vec<AccessRecord>,
    pub folded: Vec<FoldedRefusals>,
    /// `admin`, `lifecycle` and `config` records, as they are.
    pub events: Vec<serde_json::Value>,
    /// Lines that are no record keyward reads (`keyward audit verify` tells why).
    pub unreadable: u64,
}

/// The record kinds read as [`Log::events`].
pub const EVENT_KINDS: [&str; 3] = ["admin", "lifecycle", "config"];

impl Log {
    pub fn read(files: &[(String, Vec<u8>)]) -> Log {
        #[derive(Deserialize)]
        struct KindOf<'a> {
            #[serde(default, borrow)]
            kind: Option<Cow<'a, str>>,
        }
        let mut log = Log::default();
        let lines = files.iter().flat_map(|(_, b)| b.split(|&c| c == b'\n')).filter(|l| !l.is_empty());
        for line in lines {
            let kind = match serde_json::from_slice::<KindOf<'_>>(line) {
                Ok(k) => k.kind,
                Err(_) => {
                    log.unreadable += 1;
                    continue;
                }
            };
            let read = match kind.as_deref() {
                None | Some("request") => serde_json::from_slice(line).map(|r| log.records.push(r)),
                Some("refusals") => serde_json::from_slice(line).map(|r| log.folded.push(r)),
                Some(k) if EVENT_KINDS.contains(&k) => {
                    serde_json::from_slice(line).map(|v| log.events.push(v))
                }
                // Rotation and checkpoint records matter to `verify`, not to the counts.
                Some("rotation" | "checkpoint") => Ok(()),
                Some(_) => {
                    log.unreadable += 1;
                    Ok(())
                }
            };
            log.unreadable += read.is_err() as u64;
        }
        log
    }
}

/// One input file as the sign-off names it.
#[derive(Debug, Clone, Serialize)]
pub struct Input {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

impl Input {
    pub fn of(files: &[(String, Vec<u8>)]) -> Vec<Input> {
        files
            .iter()
            .map(|(file, b)| Input { file: file.clone(), bytes: b.len() as u64, sha256: sha256_hex(b) })
            .collect()
    }
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[derive(Debug, Default, Serialize)]
pub struct Integrity {
    /// Every chain verified: no record edited, dropped, reordered, inserted or truncated.
    pub verified: bool,
    /// The first place a chain breaks, `file:line: problem`; `None` when verified.
    pub first_break: Option<String>,
    pub chains: Vec<ChainRow>,
    /// What broke, per instance, file and line first; empty when verified.
    pub problems: Vec<String>,
    /// Signed checkpoints (`--key`): the keys, checkpoints and unsigned tail they prove.
    /// `None`: no key was given, so a rewrite of the whole chain cannot be detected.
    pub signed: Option<Signed>,
}

/// What `--key` verification found (filled by the checkpoint verification).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Signed {
    /// The key ids the checkpoints verified under.
    pub keys: Vec<String>,
    /// Checkpoints that verified, over all instances.
    pub checkpoints: u64,
    /// Per instance: the last checkpoint's seq, and records after it (the unsigned tail).
    pub instances: Vec<SignedInstance>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct SignedInstance {
    pub instance: String,
    pub last_checkpoint_seq: Option<u64>,
    pub last_checkpoint_time: Option<String>,
    pub unsigned_tail: u64,
}

impl Integrity {
    /// Every instance's chain in `files` (oldest first), verified.
    pub fn of(files: &[(String, Vec<u8>)]) -> Integrity {
        Integrity::proved(files, &[], None)
    }

    /// [`Integrity::of`], and with `keys` each instance's signed checkpoints checked, with
    /// `published` the checkpoints as published (`audit verify --key --checkpoints`): what
    /// fails is a break like any other.
    pub fn proved(
        files: &[(String, Vec<u8>)],
        keys: &[crate::audit::checkpoint::PublicKey],
        published: Option<&crate::audit::signed::Published>,
    ) -> Integrity {
        let chains = match verify::verify_all(files) {
            Ok(c) => c,
            Err(b) => {
                return Integrity {
                    first_break: Some(at(&b)),
                    problems: vec![b.to_string()],
                    ..Default::default()
                };
            }
        };
        let mut out = Integrity { verified: true, ..Default::default() };
        let proof = crate::audit::signed::prove(&chains, keys, published);
        for p in &proof.problems {
            let problem = match p.kind {
                "forged" => format!("{}: forged: {}", p.instance, p.why),
                _ => format!("{}: {}", p.instance, p.why),
            };
            out.verified = false;
            out.first_break.get_or_insert_with(|| problem.clone());
            out.problems.push(problem);
        }
        out.signed = (!keys.is_empty()).then(|| Signed {
            keys: keys.iter().map(|k| k.id.clone()).collect(),
            checkpoints: proof.signed.values().map(|s| s.checkpoints).sum(),
            instances: chains
                .iter()
                .filter_map(|c| {
                    let s = proof.signed.get(&crate::audit::signed::instance_name(c))?;
                    let last = c.outcome.as_ref().ok()?.checkpoints.last();
                    Some(SignedInstance {
                        instance: crate::audit::signed::instance_name(c),
                        last_checkpoint_seq: Some(s.signed_through),
                        last_checkpoint_time: last.map(|l| l.checkpoint.links.time.clone()),
                        unsigned_tail: s.unsigned_tail,
                    })
                })
                .collect(),
        });
        for c in chains {
            let instance = c.instance.unwrap_or_else(|| "(no instance)".into());
            match c.outcome {
                Ok(v) => out.chains.push(ChainRow {
                    gap: (!v.from_genesis).then(|| Gap {
                        through: v.first_seq - 1,
                        rotated: v.rotated_through.as_ref().is_some_and(|(t, _)| *t + 1 >= v.first_seq),
                    }),
                    history: v.history(),
                    instance,
                    records: v.records,
                    first_seq: v.first_seq,
                    last_seq: v.last_seq,
                    head: v.head,
                    restarts: v.restarts,
                    folded_records: v.folded_records,
                    folded_refusals: v.folded_refusals,
                    accounted: v.checkpoints.last().filter(|_| v.accounted > 0).map(|s| Accounted {
                        checkpoints: v.accounted,
                        answered: s.checkpoint.answered,
                        unrecordable: s.checkpoint.unrecordable,
                    }),
                }),
                Err(b) => {
                    out.verified = false;
                    out.first_break.get_or_insert_with(|| at(&b));
                    out.problems.push(format!("{instance}: {b}"));
                }
            }
        }
        out
    }

    /// The line every page of a report on an unverified log carries.
    pub fn banner(&self) -> Option<String> {
        let at = self.first_break.as_deref()?;
        Some(format!(
            "UNVERIFIED: printed with --unverified: this log's chain does not verify ({at}); nothing below is evidence"
        ))
    }
}

/// A break as `file:line: problem`.
fn at(b: &Break) -> String {
    format!("{}:{}: {}", b.file, b.line, b.problem)
}

#[derive(Debug, Serialize)]
pub struct ChainRow {
    pub instance: String,
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Where the files' history begins (`Verified::history`).
    pub history: String,
    /// Records before the first one given: rotated away (a rotation record says so) or not.
    pub gap: Option<Gap>,
    pub head: String,
    pub restarts: u64,
    /// Records of folded refusals in this chain, and the refusals they count.
    pub folded_records: u64,
    pub folded_refusals: u64,
    /// What the last checkpoint accounts for, once its count matched the records.
    pub accounted: Option<Accounted>,
}

/// Requests answered since the instance's process began, by its last checkpoint: each one
/// is in the chain, on its own or folded (`audit verify` checked the count at every
/// checkpoint); `unrecordable` were answered 503 because the log could not take them.
#[derive(Debug, Serialize)]
pub struct Accounted {
    pub checkpoints: u64,
    pub answered: u64,
    pub unrecordable: u64,
}

/// Records `1..=through` are not in the files given.
#[derive(Debug, Serialize)]
pub struct Gap {
    pub through: u64,
    /// A rotation record in the chain says they were rotated away.
    pub rotated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_by_kind_and_new_kinds_leniently() {
        let text = concat!(
            r#"{"seq":1,"prev":"0","time":"2026-01-01T00:00:00.000000Z","kind":"request","request_id":"r","service":null,"token_id":null,"client_ip":null,"method":"GET","path":"/","template":null,"permission":null,"access":null,"decision":"allow","reason":"ok","status":200,"upstream":null,"upstream_request_id":null,"stripe_account":null,"egress_ip":null,"duration_ms":1.0,"upstream_ms":null,"bytes_in":0,"bytes_out":0,"config_version":"v1","secret_version":null}"#,
            "\n",
            r#"{"seq":2,"prev":"0","time":"2026-01-01T00:00:01.000000Z","kind":"admin","action":"suspend","actor":"admin:ops"}"#,
            "\n",
            r#"{"seq":3,"prev":"0","time":"2026-01-01T00:00:02.000000Z","kind":"rotation"}"#,
            "\n",
            r#"{"seq":4,"prev":"0","kind":"whatever"}"#,
            "\nnot json\n",
        );
        let log = Log::read(&[("a".into(), text.as_bytes().to_vec())]);
        assert_eq!((log.records.len(), log.events.len(), log.unreadable), (1, 1, 2));
        assert_eq!(log.events[0]["action"], "suspend");
    }
}
