//! `[audit]` as the writer runs it: where, how rotated, how much queued, what folded.

use std::time::Duration;

/// How the access log is written, from `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// A file, or "-" for stdout.
    pub path: String,
    /// Rotate when the file would grow past this.
    pub max_bytes: u64,
    /// Rotated files kept (`path.1` … `path.N`).
    pub keep: usize,
    pub queue: usize,
    /// Refuse new requests (503) while records cannot be written.
    pub fail_closed: bool,
    /// Refusal records written per second from one address (its /64 for IPv6), and from all
    /// together; beyond either, refusals are folded (`fold`).
    pub refusals_per_ip: u32,
    pub refusals_per_second: u32,
    /// How often folded refusals are written.
    pub fold_interval: Duration,
    /// How often a checkpoint is chained (and at shutdown).
    pub checkpoint_interval: Duration,
    /// Where checkpoints are published too: a file, or "stderr".
    pub checkpoints: Option<String>,
    /// The key checkpoints are signed with (`signing_key_secret`).
    pub signer: Option<super::checkpoint::SharedSigner>,
}
