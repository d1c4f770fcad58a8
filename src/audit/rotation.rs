//! When the oldest file is deleted by rotation (`audit.keep`), the writer chains a record that
//! says so (`kind = "rotation"`): which file, and the last seq it held. An auditor given the
//! files that are left can then tell records rotated away from records removed: `audit verify`
//! says "history begins at seq N: records 1..N-1 were rotated away" only when the chain itself
//! says they were.

use serde::{Deserialize, Serialize};

use super::Links;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rotation {
    #[serde(flatten)]
    pub links: Links,
    /// The file deleted, as configured (`audit.jsonl.10`, or `audit.jsonl` with `keep = 0`).
    pub removed_file: String,
    /// The last record it held: every record up to this one is gone from the files.
    pub removed_through_seq: u64,
}

impl Rotation {
    pub fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("a rotation record serialises");
    }
}
