//! The access log's file: opened locked (one writer per chain), a torn last line cut at
//! start, the chain's last record found, lines appended whole or not at all, size-based
//! rotation. Blocking I/O: the queue runs it off the runtime's worker threads.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::settings::Settings;
use super::{GENESIS, line_hash};

/// Lines back to back, each with its newline, serialized in place: no buffer per record,
/// and a batch is written straight from here.
#[derive(Default)]
pub struct Pending {
    pub bytes: Vec<u8>,
    /// Where each line ends in `bytes` (after its newline).
    pub ends: VecDeque<usize>,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of the first `k` lines.
    pub fn prefix(&self, k: usize) -> usize {
        if k == 0 { 0 } else { self.ends[k - 1] }
    }

    /// Drop the first `k` lines (written).
    pub fn consume(&mut self, k: usize) {
        let cut = self.prefix(k);
        self.bytes.drain(..cut);
        self.ends.drain(..k);
        self.ends.iter_mut().for_each(|e| *e -= cut);
        // Give back what a long outage made the buffer grow to.
        if self.bytes.is_empty() && self.bytes.capacity() > 4 << 20 {
            self.bytes = Vec::new();
        }
    }
}

/// The file (or stdout) records go to, with size-based rotation.
pub struct Output {
    path: Option<PathBuf>,
    pub file: Option<File>,
    size: u64,
    max_bytes: u64,
    keep: usize,
    /// Files rotation deleted since last taken: name and the last seq each held.
    pub removed: Vec<(String, u64)>,
}

impl Output {
    /// An output that opens `path` on its first write (`None`: stdout).
    pub fn unopened(path: Option<PathBuf>, max_bytes: u64, keep: usize) -> Output {
        Output { path, file: None, size: 0, max_bytes, keep, removed: Vec::new() }
    }

    pub fn open(s: &Settings) -> std::io::Result<Output> {
        if s.path == "-" {
            return Ok(Output::unopened(None, u64::MAX, 0));
        }
        let path = PathBuf::from(&s.path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut out = Output::unopened(Some(path), s.max_bytes.max(1), s.keep);
        out.reopen()?;
        out.cut_torn_tail()?;
        Ok(out)
    }

    /// Open the current file for appending, locked: two processes continuing one chain would
    /// fork it and interleave their lines.
    fn reopen(&mut self) -> std::io::Result<()> {
        if let Some(path) = &self.path {
            let f = OpenOptions::new().create(true).append(true).open(path)?;
            f.try_lock().map_err(|e| match e {
                std::fs::TryLockError::WouldBlock => std::io::Error::other(
                    "another process is writing this access log (it holds the file's lock)",
                ),
                std::fs::TryLockError::Error(e) => e,
            })?;
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        Ok(())
    }

    /// A write cut short (the process killed mid-write, power lost) leaves a partial line
    /// that was never a record: cut it off, say so, and continue from the last whole one.
    fn cut_torn_tail(&mut self) -> std::io::Result<()> {
        let (Some(path), Some(file)) = (&self.path, &self.file) else { return Ok(()) };
        if self.size == 0 {
            return Ok(());
        }
        let mut f = File::open(path)?;
        let start = self.size.saturating_sub(256 * 1024);
        f.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail)?;
        if tail.ends_with(b"\n") {
            return Ok(());
        }
        let keep = match tail.iter().rposition(|&b| b == b'\n') {
            Some(i) => start + i as u64 + 1,
            None if start == 0 => 0,
            None => return Err(std::io::Error::other("its last line is over 256 KiB long: not a record")),
        };
        file.set_len(keep)?;
        tracing::warn!(path = %path.display(), cut_bytes = self.size - keep,
            "the access log ended in a partial line (an interrupted write): cut off; the chain continues from the last whole record");
        self.size = keep;
        Ok(())
    }

    /// The last record already written (here or in the newest rotated file), so a restart
    /// continues the chain.
    pub fn chain_tail(&self) -> std::io::Result<(u64, String)> {
        let Some(path) = &self.path else { return Ok((0, GENESIS.to_string())) };
        for candidate in [path.clone(), rotated(path, 1)] {
            if let Some(line) = last_line(&candidate)? {
                // Fail closed: a chain continued from something that is not a record would
                // hide what happened to the log.
                let seq = serde_json::from_slice::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v["seq"].as_u64())
                    .ok_or_else(|| {
                        std::io::Error::other(format!(
                            "the last line of {} is not an access record: its chain cannot be continued \
                             (run `keyward audit verify` on it, then move it aside)",
                            candidate.display()
                        ))
                    })?;
                return Ok((seq, line_hash(&line)));
            }
        }
        Ok((0, GENESIS.to_string()))
    }

    /// Write lines from the front; those written leave the queue. Returns how many.
    pub fn write_lines(&mut self, lines: &mut Pending) -> std::io::Result<u64> {
        if self.path.is_none() {
            let mut out = std::io::stdout().lock();
            out.write_all(&lines.bytes)?;
            out.flush()?;
            let n = lines.len();
            lines.consume(n);
            return Ok(n as u64);
        }
        if self.file.is_none() {
            self.reopen()?;
        }
        let mut n = 0;
        while !lines.is_empty() {
            // As many lines as fit in the current file (always at least one in an empty file).
            let mut k = 0;
            while k < lines.len() {
                let (len, end) = (lines.prefix(k + 1), lines.prefix(k));
                let fits = self.size + len as u64 <= self.max_bytes;
                if !fits && (self.size > 0 || k > 0) || end >= 1 << 20 {
                    break;
                }
                k += 1;
            }
            if k == 0 {
                self.rotate()?;
                continue;
            }
            self.append(&lines.bytes[..lines.prefix(k)])?;
            lines.consume(k);
            n += k as u64;
        }
        Ok(n)
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let f = self.file.as_mut().ok_or_else(|| std::io::Error::other("access log not open"))?;
        // Where this write starts, from the file itself: it may have been truncated under us
        // (logrotate's copytruncate), and cutting back to a stale size would pad it with NULs.
        let start = f.metadata()?.len();
        if let Err(e) = f.write_all(bytes).and_then(|_| f.flush()) {
            // Cut any partial line (a full disk takes what fits), so the chain stays whole,
            // and reopen next time: the file may have been replaced or fixed.
            let _ = f.set_len(start);
            self.file = None;
            return Err(e);
        }
        self.size = start + bytes.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let Some(path) = self.path.clone() else { return Ok(()) };
        self.file = None;
        if self.keep == 0 {
            self.removing(&path);
            std::fs::remove_file(&path)?;
        } else {
            // With `.1` free the older files have moved already (a retry after the last step
            // failed): moving them again would delete one more old file per retry.
            if rotated(&path, 1).exists() {
                let oldest = rotated(&path, self.keep);
                if oldest.exists() {
                    self.removing(&oldest);
                }
                let _ = std::fs::remove_file(oldest);
                for i in (1..self.keep).rev() {
                    let from = rotated(&path, i);
                    if from.exists() {
                        std::fs::rename(&from, rotated(&path, i + 1))?;
                    }
                }
            }
            match std::fs::rename(&path, rotated(&path, 1)) {
                // Removed from under us: nothing to keep, start a new file.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                r => r?,
            }
        }
        self.reopen()
    }
}

impl Output {
    /// Note that `file` is about to be deleted, with the last seq it holds (0 if unreadable:
    /// the record still says a file went).
    fn removing(&mut self, file: &Path) {
        let seq = last_line(file)
            .ok()
            .flatten()
            .and_then(|l| serde_json::from_slice::<serde_json::Value>(&l).ok()?["seq"].as_u64())
            .unwrap_or(0);
        self.removed.push((file.display().to_string(), seq));
    }
}

/// `audit.jsonl` → `audit.jsonl.N`
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The last complete line of a file, if any.
fn last_line(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(256 * 1024);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let line = body.rsplit(|&b| b == b'\n').next().unwrap_or(body);
    Ok((!line.is_empty()).then(|| line.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_retried_after_its_last_step_failed_loses_no_older_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(rotated(&path, 1), "A").unwrap();
        std::fs::write(rotated(&path, 2), "B").unwrap();
        let mut out = Output::unopened(Some(path.clone()), 10, 2);
        // The current file is gone, so the last step (current → .1) finds nothing to move.
        out.rotate().unwrap();
        out.rotate().unwrap();
        assert_eq!(std::fs::read_to_string(rotated(&path, 2)).unwrap(), "A", "the retry kept .2");
        assert!(path.exists(), "a new current file");
    }
}
