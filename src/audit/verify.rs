//! `keyward audit verify`: walk each instance's chain across files and name the first place it
//! breaks. Replicas write a chain each (records carry `instance`); their lines may be in one
//! file (a log collector's) or in several, in any order between instances.

use std::fmt;

use super::checkpoint::Checkpoint;
use super::{GENESIS, line_hash};

#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Hash of the last line: keep it elsewhere to anchor the chain.
    pub head: String,
    /// Whether the first record given is the first ever written (not a later file alone).
    pub from_genesis: bool,
    /// New chains from the genesis hash after the first (the process restarted, writing to
    /// stdout): each verified on its own; `last_seq` and `head` are the last one's.
    pub restarts: u64,
    /// Records of folded refusals (`kind = "refusals"`), and the refusals they count.
    pub folded_records: u64,
    pub folded_refusals: u64,
    /// The latest rotation record's: the last seq deleted, and when.
    pub rotated_through: Option<(u64, String)>,
    /// The checkpoints in the chain, oldest first (their signatures are checked by `signed`).
    pub checkpoints: Vec<Seen>,
    /// Records after the last checkpoint, and the latest time among them.
    pub tail: u64,
    pub tail_time: Option<String>,
    /// Whether the last chain begun from genesis holds a checkpoint of its own.
    pub last_start_checkpointed: bool,
    /// Checkpoints whose `answered` could be checked against the records (those whose
    /// process's first record is in the files given): all matched.
    pub accounted: u64,
}

/// A checkpoint found in a chain, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub file: String,
    pub line: usize,
    pub checkpoint: Checkpoint,
}

impl Verified {
    /// Where the history these files hold begins, in words.
    pub fn history(&self) -> String {
        if self.from_genesis {
            return "from the first record ever written".into();
        }
        let before = self.first_seq - 1;
        match &self.rotated_through {
            Some((through, at)) if *through >= before => format!(
                "history begins at seq {}: records 1..{before} were rotated away (the chain says so, last at {at})",
                self.first_seq
            ),
            _ => format!(
                "history begins at seq {}: records 1..{before} are not in the files given, and no rotation record here says they were rotated away",
                self.first_seq
            ),
        }
    }
}

/// One instance's chain (records without `instance`, written before replicas had names,
/// form one chain of their own).
#[derive(Debug, PartialEq, Eq)]
pub struct Chain {
    pub instance: Option<String>,
    pub outcome: Result<Verified, Break>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Break {
    pub file: String,
    pub line: usize,
    pub problem: String,
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}: {}", self.file, self.line, self.problem)
    }
}

struct Line<'a> {
    file: &'a str,
    no: usize,
    bytes: &'a [u8],
    seq: u64,
    prev: String,
    /// A folded record's count of refusals.
    folded: Option<u64>,
    /// A rotation record's last seq deleted, and its time.
    rotated: Option<(u64, String)>,
    /// A call's record (not folded, rotation, checkpoint or admin).
    request: bool,
    checkpoint: Option<Checkpoint>,
    time: String,
}

/// Verify one chain in files given oldest first (`audit.jsonl.2 audit.jsonl.1 audit.jsonl`).
pub fn verify(files: &[(String, Vec<u8>)]) -> Result<Verified, Break> {
    let mut chains = verify_all(files)?;
    match chains.len() {
        1 => chains.remove(0).outcome,
        n => Err(Break {
            file: files.first().map(|f| f.0.clone()).unwrap_or_default(),
            line: 0,
            problem: format!("the files hold the chains of {n} instances"),
        }),
    }
}

/// Verify every instance's chain in files given oldest first for each instance. `Err` for a
/// line that is no record at all (it belongs to no chain); chains in order of appearance.
pub fn verify_all(files: &[(String, Vec<u8>)]) -> Result<Vec<Chain>, Break> {
    let mut chains: Vec<(Option<String>, Vec<Line<'_>>)> = Vec::new();
    for (name, bytes) in files {
        if bytes.is_empty() {
            continue;
        }
        let complete = bytes.ends_with(b"\n");
        let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        let count = body.split(|&b| b == b'\n').count();
        for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
            let at = |problem: &str| Break { file: name.clone(), line: i + 1, problem: problem.to_string() };
            if i + 1 == count && !complete {
                return Err(at("the last line is incomplete: the file was truncated"));
            }
            let v: serde_json::Value = serde_json::from_slice(raw)
                .map_err(|_| at("not a JSON record: the line was edited or cut"))?;
            let (Some(seq), Some(prev)) = (v["seq"].as_u64(), v["prev"].as_str()) else {
                return Err(at("the record has no seq/prev: not written by keyward, or edited"));
            };
            let instance = v["instance"].as_str().map(String::from);
            let folded = (v["kind"] == "refusals").then(|| v["count"].as_u64().unwrap_or(0));
            let rotated = (v["kind"] == "rotation").then(|| {
                (v["removed_through_seq"].as_u64().unwrap_or(0), v["time"].as_str().unwrap_or("").to_string())
            });
            let request = v.get("kind").is_none_or(|k| k == "request");
            let checkpoint = match v["kind"] == "checkpoint" {
                true => Some(
                    serde_json::from_value(v.clone())
                        .map_err(|_| at("a checkpoint record missing its fields"))?,
                ),
                false => None,
            };
            let time = v["time"].as_str().unwrap_or("").to_string();
            let line = Line {
                file: name,
                no: i + 1,
                bytes: raw,
                seq,
                prev: prev.to_string(),
                folded,
                rotated,
                request,
                checkpoint,
                time,
            };
            match chains.iter_mut().find(|(name, _)| *name == instance) {
                Some((_, lines)) => lines.push(line),
                None => chains.push((instance, vec![line])),
            }
        }
    }
    if chains.is_empty() {
        return Err(Break {
            file: files.first().map(|f| f.0.clone()).unwrap_or_default(),
            line: 0,
            problem: "no records".into(),
        });
    }
    Ok(chains
        .into_iter()
        .map(|(instance, lines)| Chain { instance, outcome: verify_instance(&lines) })
        .collect())
}

/// One instance's lines: a chain, and after it any chains begun anew from genesis.
fn verify_instance(lines: &[Line<'_>]) -> Result<Verified, Break> {
    let starts = (1..lines.len()).filter(|&i| lines[i].seq == 1 && lines[i].prev == GENESIS);
    let bounds: Vec<usize> = std::iter::once(0).chain(starts).chain([lines.len()]).collect();
    let mut total: Option<Verified> = None;
    for w in bounds.windows(2) {
        let v = verify_chain(&lines[w[0]..w[1]])?;
        total = Some(match total {
            None => v,
            Some(t) => Verified {
                records: t.records + v.records,
                folded_records: t.folded_records + v.folded_records,
                folded_refusals: t.folded_refusals + v.folded_refusals,
                rotated_through: v.rotated_through.or(t.rotated_through),
                last_seq: v.last_seq,
                head: v.head,
                restarts: t.restarts + 1,
                tail: if v.last_start_checkpointed { v.tail } else { t.tail + v.tail },
                checkpoints: [t.checkpoints, v.checkpoints].concat(),
                tail_time: v.tail_time.or(t.tail_time),
                last_start_checkpointed: v.last_start_checkpointed,
                accounted: t.accounted + v.accounted,
                ..t
            },
        });
    }
    Ok(total.expect("at least one line"))
}

fn verify_chain(lines: &[Line<'_>]) -> Result<Verified, Break> {
    let first = &lines[0];
    let from_genesis = first.seq == 1 && first.prev == GENESIS;
    if first.seq == 1 && !from_genesis {
        return Err(brk(first, "the first record does not start the chain (prev is not the genesis hash)"));
    }
    for i in 1..lines.len() {
        let (before, this) = (&lines[i - 1], &lines[i]);
        if before.seq.checked_add(1) != Some(this.seq) {
            let problem = if this.seq <= before.seq {
                format!(
                    "seq {} comes after seq {}: a line was inserted or lines were reordered",
                    this.seq, before.seq
                )
            } else if lines.get(i + 1).is_some_and(|next| Some(next.seq) == before.seq.checked_add(1)) {
                format!(
                    "seq {} comes before seq {}: lines were reordered",
                    this.seq,
                    before.seq.saturating_add(1)
                )
            } else {
                format!(
                    "records seq {}..{} are missing before this line: lines or a rotated file were removed",
                    before.seq.saturating_add(1),
                    this.seq - 1
                )
            };
            return Err(brk(this, &problem));
        }
        if this.prev != line_hash(before.bytes) {
            // Its own `prev` was edited if the next record no longer matches it either.
            if lines.get(i + 1).is_some_and(|next| next.prev != line_hash(this.bytes)) {
                let problem = format!(
                    "this record does not match the hash that {} line {} (seq {}) holds for it, and its own \
                     prev does not match the line before: it was edited",
                    lines[i + 1].file,
                    lines[i + 1].no,
                    lines[i + 1].seq
                );
                return Err(brk(this, &problem));
            }
            let problem = format!(
                "this record does not match the hash that {} line {} (seq {}) holds for it: it was edited",
                this.file, this.no, this.seq
            );
            return Err(brk(before, &problem));
        }
    }
    let accounted = check_accounts(lines)?;
    let last_cp = lines.iter().rposition(|l| l.checkpoint.is_some());
    let after = &lines[last_cp.map_or(0, |i| i + 1)..];
    let last = lines.last().expect("not empty");
    Ok(Verified {
        checkpoints: lines
            .iter()
            .filter_map(|l| {
                let checkpoint = l.checkpoint.clone()?;
                Some(Seen { file: l.file.to_string(), line: l.no, checkpoint })
            })
            .collect(),
        tail: after.len() as u64,
        tail_time: after.iter().map(|l| &l.time).max().cloned(),
        last_start_checkpointed: last_cp.is_some(),
        accounted,
        records: lines.len() as u64,
        first_seq: first.seq,
        last_seq: last.seq,
        head: line_hash(last.bytes),
        from_genesis,
        restarts: 0,
        folded_records: lines.iter().filter(|l| l.folded.is_some()).count() as u64,
        folded_refusals: lines.iter().filter_map(|l| l.folded).sum(),
        rotated_through: lines.iter().rev().find_map(|l| l.rotated.clone()),
    })
}

/// Each checkpoint's `answered` against the records between its process's first record and
/// it: one per call's record, `count` per folded one. Checkpoints whose process began before
/// the lines given cannot be checked, and are not counted.
fn check_accounts(lines: &[Line<'_>]) -> Result<u64, Break> {
    let mut checked = 0;
    for (i, l) in lines.iter().enumerate() {
        let Some(cp) = &l.checkpoint else { continue };
        let Some(from) = lines[..i].iter().position(|x| x.seq == cp.since_seq) else {
            if cp.since_seq == l.seq && cp.answered == 0 {
                checked += 1;
            }
            continue;
        };
        let held: u64 = lines[from..i].iter().map(|x| x.folded.unwrap_or(u64::from(x.request))).sum();
        if held != cp.answered {
            let problem = format!(
                "this checkpoint accounts for {} requests answered since seq {}, and the chain holds \
                 records of {held}: records were removed or added, and the chain re-hashed",
                cp.answered, cp.since_seq
            );
            return Err(brk(l, &problem));
        }
        checked += 1;
    }
    Ok(checked)
}

fn brk(l: &Line<'_>, problem: &str) -> Break {
    Break { file: l.file.to_string(), line: l.no, problem: problem.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AccessRecord;

    /// A chain of `n` records as the writer would produce it.
    fn chain(n: u64) -> Vec<Vec<u8>> {
        chain_of(None, n)
    }

    fn chain_of(instance: Option<&str>, n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let rec = AccessRecord {
                    seq,
                    prev: prev.clone(),
                    instance: instance.map(Into::into),
                    decision: crate::policy::Decision::Allow,
                    status: 200,
                    ..Default::default()
                };
                let line = serde_json::to_vec(&rec).unwrap();
                prev = line_hash(&line);
                line
            })
            .collect()
    }

    fn file(lines: &[Vec<u8>]) -> Vec<u8> {
        lines.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect()
    }

    fn one(lines: &[Vec<u8>]) -> Result<Verified, Break> {
        verify(&[("a.jsonl".to_string(), file(lines))])
    }

    #[test]
    fn an_intact_chain_verifies_across_files() {
        let l = chain(10);
        let v = verify(&[("a.1".into(), file(&l[..4])), ("a".into(), file(&l[4..]))]).unwrap();
        assert_eq!((v.records, v.first_seq, v.last_seq, v.from_genesis), (10, 1, 10, true));
        let later = verify(&[("a".into(), file(&l[4..]))]).unwrap();
        assert!(!later.from_genesis, "a later file alone verifies, not from genesis");
    }

    #[test]
    fn every_kind_of_tampering_is_found_where_it_happened() {
        let l = chain(10);
        let edit = |i: usize| {
            let mut l = l.clone();
            l[i] = String::from_utf8(l[i].clone())
                .unwrap()
                .replace("\"status\":200", "\"status\":201")
                .into_bytes();
            l
        };
        let mut dropped = l.clone();
        dropped.remove(4);
        let mut swapped = l.clone();
        swapped.swap(3, 4);
        let mut inserted = l.clone();
        inserted.insert(6, l[5].clone());
        let cases: Vec<(&str, Result<Verified, Break>, usize, &str)> = vec![
            ("edit", one(&edit(3)), 4, "was edited"),
            ("edit last-but-one", one(&edit(8)), 9, "was edited"),
            ("drop", one(&dropped), 5, "seq 5..5 are missing"),
            ("swap", one(&swapped), 4, "reordered"),
            ("insert", one(&inserted), 7, "inserted"),
            ("garbage", one(&[l[0].clone(), b"{oops".to_vec(), l[2].clone()]), 2, "not a JSON record"),
        ];
        for (what, got, line, want) in cases {
            let b = got.expect_err(what);
            assert_eq!(b.line, line, "{what}: {b}");
            assert!(b.problem.contains(want), "{what}: {b}");
        }
        let mut cut = file(&l);
        cut.truncate(cut.len() - 7);
        let b = verify(&[("a".into(), cut)]).unwrap_err();
        assert_eq!((b.line, b.problem.contains("truncated")), (10, true), "{b}");
        let gap = verify(&[("a.2".into(), file(&l[..3])), ("a".into(), file(&l[6..]))]).unwrap_err();
        assert_eq!((gap.file.as_str(), gap.line), ("a", 1));
        assert!(gap.problem.contains("4..6 are missing"), "{gap}");
    }

    #[test]
    fn each_instance_keeps_its_own_chain_in_one_file_or_many() {
        let (a, b) = (chain_of(Some("kw-a"), 6), chain_of(Some("kw-b"), 4));
        // A collector's file: the replicas' lines interleaved.
        let mixed: Vec<Vec<u8>> = a
            .iter()
            .zip(b.iter().chain(std::iter::repeat(&Vec::new())))
            .flat_map(|(x, y)| [x.clone(), y.clone()])
            .filter(|l| !l.is_empty())
            .collect();
        let chains = verify_all(&[("all".into(), file(&mixed))]).unwrap();
        let got: Vec<_> =
            chains.iter().map(|c| (c.instance.as_deref(), c.outcome.as_ref().map(|v| v.last_seq))).collect();
        assert_eq!(got, [(Some("kw-a"), Ok(6)), (Some("kw-b"), Ok(4))]);
        assert!(verify(&[("all".into(), file(&mixed))]).unwrap_err().problem.contains("2 instances"));
        // One file per replica, in any order; an edit in one is that one's break only.
        let mut edited = b.clone();
        edited[1] = String::from_utf8(edited[1].clone()).unwrap().replace("200", "201").into_bytes();
        let chains = verify_all(&[("b".into(), file(&edited)), ("a".into(), file(&a))]).unwrap();
        assert!(chains[0].outcome.as_ref().unwrap_err().problem.contains("edited"));
        assert_eq!(chains[1].outcome.as_ref().unwrap().records, 6);
    }

    #[test]
    fn a_restart_begins_a_new_chain_that_is_verified_too() {
        let (first, second) = (chain_of(Some("kw-a"), 5), chain_of(Some("kw-a"), 3));
        let both: Vec<_> = first.iter().chain(second.iter()).cloned().collect();
        let v = verify(&[("a".into(), file(&both))]).unwrap();
        assert_eq!((v.records, v.first_seq, v.last_seq, v.restarts), (8, 1, 3, 1));
        let mut broken = both.clone();
        broken.remove(6);
        assert!(verify(&[("a".into(), file(&broken))]).unwrap_err().problem.contains("missing"));
    }
}
