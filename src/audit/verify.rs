//! `keyward audit verify`: walk the chain across files and name the first place it breaks.

use std::fmt;

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
}

/// Verify files given oldest first (`audit.jsonl.2 audit.jsonl.1 audit.jsonl`).
pub fn verify(files: &[(String, Vec<u8>)]) -> Result<Verified, Break> {
    let mut lines = Vec::new();
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
            lines.push(Line { file: name, no: i + 1, bytes: raw, seq, prev: prev.to_string() });
        }
    }
    let Some(first) = lines.first() else {
        return Err(Break {
            file: files.first().map(|f| f.0.clone()).unwrap_or_default(),
            line: 0,
            problem: "no records".into(),
        });
    };
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
    let last = lines.last().expect("not empty");
    Ok(Verified {
        records: lines.len() as u64,
        first_seq: first.seq,
        last_seq: last.seq,
        head: line_hash(last.bytes),
        from_genesis,
    })
}

fn brk(l: &Line<'_>, problem: &str) -> Break {
    Break { file: l.file.to_string(), line: l.no, problem: problem.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AccessRecord;

    /// A chain of `n` records as the writer would produce it, split into files of `per_file`.
    fn chain(n: u64) -> Vec<Vec<u8>> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let rec = AccessRecord {
                    seq,
                    prev: prev.clone(),
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
}
