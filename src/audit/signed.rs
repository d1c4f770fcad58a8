//! `audit verify --key`: what the signed checkpoints prove beyond the chain. A chain that
//! verifies may still have been rewritten whole (re-hashed after an edit, an instance made
//! up, a chain restarted from genesis) or cut at its end; only a checkpoint signed by a key
//! the auditor holds, and the checkpoints published out of the writer's reach, tell.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::checkpoint::{Checkpoint, PublicKey};
use super::verify::{Chain, Verified};

/// What one instance's signed checkpoints prove.
#[derive(Debug, PartialEq, Eq)]
pub struct Signed {
    /// Checkpoints, all signed by a key given.
    pub checkpoints: u64,
    /// The last one's seq: everything up to it is signed.
    pub signed_through: u64,
    /// Records after the last checkpoint: written less than one interval before the log was
    /// read, else refused.
    pub unsigned_tail: u64,
}

/// Check `chain`'s checkpoints against `keys`.
pub fn check(chain: &Verified, keys: &[PublicKey]) -> Result<Signed, String> {
    for seen in &chain.checkpoints {
        if seen.checkpoint.head != seen.checkpoint.links.prev {
            return Err(format!(
                "{} line {}: checkpoint seq {}: its head is not the hash of the record before it: the chain was rewritten",
                seen.file, seen.line, seen.checkpoint.links.seq
            ));
        }
        if let Err(why) = seen.checkpoint.check(keys) {
            return Err(format!(
                "{} line {}: checkpoint seq {}: {why}",
                seen.file, seen.line, seen.checkpoint.links.seq
            ));
        }
    }
    let Some(last) = chain.checkpoints.last() else {
        return Err(format!(
            "no signed checkpoint among its {} records: the instance is unknown (forged, or written without \
             audit.signing_key_secret)",
            chain.records
        ));
    };
    if !chain.last_start_checkpointed {
        return Err(format!(
            "its last {} records begin a new chain from genesis after the last checkpoint (seq {}), with no \
             checkpoint of their own: a chain restarted by a forger, or a restart whose first checkpoint never came",
            chain.tail, last.checkpoint.links.seq
        ));
    }
    let cp = &last.checkpoint;
    if let Some(tail_time) = &chain.tail_time {
        let span = elapsed(&cp.links.time, tail_time);
        // A checkpoint is due every interval; a second of slack for a busy writer.
        if span.is_none_or(|ms| ms > cp.interval_ms.saturating_add(1000)) {
            return Err(format!(
                "its last {} records, after the last checkpoint (seq {}, {}), span more than one checkpoint \
                 interval ({} ms) without a checkpoint: they are not signed, and should have been",
                chain.tail, cp.links.seq, cp.links.time, cp.interval_ms
            ));
        }
    }
    Ok(Signed {
        checkpoints: chain.checkpoints.len() as u64,
        signed_through: cp.links.seq,
        unsigned_tail: chain.tail,
    })
}

/// Milliseconds from `from` to `to` (RFC 3339), if both read.
fn elapsed(from: &str, to: &str) -> Option<u64> {
    let (a, b) = (OffsetDateTime::parse(from, &Rfc3339).ok()?, OffsetDateTime::parse(to, &Rfc3339).ok()?);
    Some(u64::try_from((b - a).whole_milliseconds()).unwrap_or(0))
}

/// Checkpoints as published (`audit.checkpoints`), by instance, each signed by a key given.
#[derive(Debug, Default)]
pub struct Published {
    pub by_instance: BTreeMap<String, Vec<Checkpoint>>,
}

impl Published {
    /// Read a checkpoints file (`name` for messages): each line a checkpoint, signed under
    /// `keys` when keys are given.
    pub fn read(name: &str, bytes: &[u8], keys: &[PublicKey]) -> Result<Published, String> {
        let mut out = Published::default();
        let lines = bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty());
        for (i, raw) in lines.enumerate() {
            let at = |why: &str| format!("{name} line {}: {why}", i + 1);
            let cp: Checkpoint =
                serde_json::from_slice(raw).map_err(|_| at("not a checkpoint: the file was edited"))?;
            if cp.links.kind != super::Kind::Checkpoint {
                return Err(at("not a checkpoint: the file was edited"));
            }
            if !keys.is_empty() {
                cp.check(keys).map_err(|why| at(&why))?;
            }
            let instance = cp.links.instance.as_deref().unwrap_or("").to_string();
            out.by_instance.entry(instance).or_default().push(cp);
        }
        Ok(out)
    }

    /// Check `chain` (instance `instance`) against what was published for it: the log holds
    /// every published checkpoint in its range, unchanged, and does not end before the last.
    pub fn check(&self, instance: &str, chain: &Verified) -> Result<(), String> {
        let Some(published) = self.by_instance.get(instance) else { return Ok(()) };
        let in_log: BTreeMap<u64, &Checkpoint> =
            chain.checkpoints.iter().map(|s| (s.checkpoint.links.seq, &s.checkpoint)).collect();
        for p in published.iter().filter(|p| p.links.seq >= chain.first_seq && p.links.seq <= chain.last_seq)
        {
            match in_log.get(&p.links.seq) {
                Some(c) if *c == p => {}
                _ => {
                    return Err(format!(
                        "record seq {} is not the checkpoint published for it ({}, head {}): the log was rewritten",
                        p.links.seq, p.links.time, p.head
                    ));
                }
            }
        }
        let last = published.iter().map(|p| p.links.seq).max().unwrap_or(0);
        if last > chain.last_seq {
            return Err(format!(
                "truncated: the log ends at seq {}, but a checkpoint was published at seq {last}: records seq \
                 {}..{last} are missing",
                chain.last_seq,
                chain.last_seq + 1
            ));
        }
        Ok(())
    }

    /// Instances with published checkpoints and no records in the files given.
    pub fn missing<'a>(&'a self, present: &[Option<String>]) -> Vec<(&'a str, u64)> {
        self.by_instance
            .iter()
            .filter(|(i, _)| !present.iter().any(|p| p.as_deref() == Some(i.as_str())))
            .map(|(i, cps)| (i.as_str(), cps.iter().map(|c| c.links.seq).max().unwrap_or(0)))
            .collect()
    }
}

/// What the keys and the published checkpoints prove of verified chains (`audit verify`,
/// and the report's and scope's integrity): each instance's signed checkpoints, and every
/// problem found, in the order of the chains.
#[derive(Debug, Default)]
pub struct Proof {
    /// By instance name (`(no instance)` for records without one).
    pub signed: BTreeMap<String, Signed>,
    pub problems: Vec<Problem>,
}

#[derive(Debug)]
pub struct Problem {
    pub instance: String,
    /// `chain broken` (against the published checkpoints) or `forged` (against the keys).
    pub kind: &'static str,
    pub why: String,
}

/// The name a chain's instance is shown by.
pub fn instance_name(c: &Chain) -> String {
    c.instance.clone().unwrap_or_else(|| "(no instance)".into())
}

/// Check each verified chain against `published` and, when keys are given, `keys`; and that
/// every instance published has records in the files.
pub fn prove(chains: &[Chain], keys: &[PublicKey], published: Option<&Published>) -> Proof {
    let mut proof = Proof::default();
    for c in chains {
        let Ok(v) = &c.outcome else { continue };
        let instance = instance_name(c);
        let mut problem = |kind, why| proof.problems.push(Problem { instance: instance.clone(), kind, why });
        if let Some(Err(why)) = published.map(|p| p.check(c.instance.as_deref().unwrap_or(""), v)) {
            problem("chain broken", why);
        }
        if !keys.is_empty() {
            match check(v, keys) {
                Ok(s) => _ = proof.signed.insert(instance.clone(), s),
                Err(why) => problem("forged", why),
            }
        }
    }
    let present: Vec<Option<String>> = chains.iter().map(|c| c.instance.clone()).collect();
    for (instance, seq) in published.map(|p| p.missing(&present)).unwrap_or_default() {
        let why = format!(
            "truncated: checkpoints were published through seq {seq}, and the files given hold none of its records"
        );
        proof.problems.push(Problem { instance: instance.to_string(), kind: "chain broken", why });
    }
    proof
}
