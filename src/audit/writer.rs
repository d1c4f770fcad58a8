//! The audit writer: forwarded requests reserve a queue slot when they start (so a full queue
//! slows admission instead of dropping records), refusals take one from their own share of the
//! queue and write at once; one task chains, writes and rotates.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::{AccessRecord, GENESIS, line_hash, write_line_hash};

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
}

enum Msg {
    /// With the refusal share's permit, if it is a refusal's: given back once the writer has it.
    Record(Box<AccessRecord>, Option<OwnedSemaphorePermit>),
    /// Write what is queued, then close the file (and its lock): shutting down.
    Close(oneshot::Sender<()>),
}

/// Counters the metrics and the request path read.
#[derive(Debug, Default)]
pub struct SinkState {
    pub healthy: AtomicBool,
    pub written: AtomicU64,
    pub write_errors: AtomicU64,
    /// Requests refused because the log could not be written (fail closed).
    pub refused: AtomicU64,
    /// Refusals (by keyward or by the HTTP parser) whose record found the refusals' share of
    /// the queue full.
    pub unrecorded: AtomicU64,
}

pub struct AuditSink {
    tx: mpsc::Sender<Msg>,
    /// The places refusals may hold: a quarter of the queue. Their callers, with or without a
    /// token, cannot crowd out the records of calls being forwarded.
    refusals: Arc<Semaphore>,
    pub state: Arc<SinkState>,
    pub settings: Settings,
}

/// A reserved place in the queue: sending on it never waits and never fails.
pub struct Slot {
    place: mpsc::OwnedPermit<Msg>,
    share: Option<OwnedSemaphorePermit>,
}

impl Slot {
    pub fn send(self, record: AccessRecord) {
        self.place.send(Msg::Record(Box::new(record), self.share));
    }
}

/// The longest a forwarded request waits for a place in the queue before it is refused with
/// 503 (the writer is stuck: a dead disk under `keep_serving`).
pub const SLOT_WAIT: Duration = Duration::from_secs(10);

impl AuditSink {
    /// Open the log (continuing the chain of what is already there) and start the writer.
    pub fn open(settings: Settings) -> std::io::Result<AuditSink> {
        let out = Output::open(&settings)?;
        let (seq, prev) = out.chain_tail()?;
        let queue = settings.queue.max(1);
        let (tx, rx) = mpsc::channel(queue);
        let refusals = Arc::new(Semaphore::new((queue / 4).max(1)));
        let state = Arc::new(SinkState { healthy: AtomicBool::new(true), ..Default::default() });
        let writer =
            Writer { out, rx, state: state.clone(), seq, prev, pending: Pending::default(), failed_at: None };
        tokio::spawn(writer.run());
        Ok(AuditSink { tx, refusals, state, settings })
    }

    /// Wait for a place in the queue, at most [`SLOT_WAIT`]: back-pressure when the writer
    /// falls behind. `None`: the writer is gone or stuck.
    pub async fn slot(&self) -> Option<Slot> {
        let reserve = self.tx.clone().reserve_owned();
        let place = tokio::time::timeout(SLOT_WAIT, reserve).await.ok()?.ok()?;
        Some(Slot { place, share: None })
    }

    /// A place for a refusal's record, from the refusals' share, if one is free now: a
    /// refusal never waits. `None` is counted in `unrecorded`.
    pub fn refusal_slot(&self) -> Option<Slot> {
        let taken = self.refusals.clone().try_acquire_owned().ok().and_then(|share| {
            let place = self.tx.clone().try_reserve_owned().ok()?;
            Some(Slot { place, share: Some(share) })
        });
        if taken.is_none() {
            self.state.unrecorded.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Whether a request may be served now: not while records cannot be written, unless
    /// configured to keep serving.
    /// Whether requests can be recorded: the writer is running, and the log writable or
    /// failures tolerated (`keep_serving`).
    pub fn admits(&self) -> bool {
        !self.tx.is_closed() && (!self.settings.fail_closed || self.state.healthy.load(Ordering::Relaxed))
    }

    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Write everything queued, then close the log, releasing its lock for whoever opens it
    /// next. Returns once done, or after 10 s (a failing sink with a full queue must not hold
    /// shutdown forever). Records sent later are refused.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            if self.tx.send(Msg::Close(done)).await.is_ok() {
                let _ = wait.await;
            }
        })
        .await;
    }
}

struct Writer {
    out: Output,
    rx: mpsc::Receiver<Msg>,
    state: Arc<SinkState>,
    seq: u64,
    prev: String,
    /// Chained lines not yet written (kept across write failures, in order).
    pending: Pending,
    /// When the last write failed: while failing, the sink is tried once per `RETRY`, not
    /// once per record that arrives.
    failed_at: Option<std::time::Instant>,
}

/// Lines back to back, each with its newline, serialized in place: no buffer per record,
/// and a batch is written straight from here.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Where each line ends in `bytes` (after its newline).
    ends: VecDeque<usize>,
}

impl Pending {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of the first `k` lines.
    fn prefix(&self, k: usize) -> usize {
        if k == 0 { 0 } else { self.ends[k - 1] }
    }

    /// Drop the first `k` lines (written).
    fn consume(&mut self, k: usize) {
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

/// Lines held in memory while the sink fails, before the writer stops taking more
/// (which then holds requests back at their queue slot).
const MAX_PENDING: usize = 100_000;
const RETRY: Duration = Duration::from_millis(250);
/// Records gathered into one write. Each write stalls the one thread for tens of µs
/// whatever its size, so few writes: about one per 50 ms, or per 1,024 records.
const BATCH: usize = 1024;
const COALESCE: Duration = Duration::from_millis(50);

impl Writer {
    async fn run(mut self) {
        let mut closers: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            let msg = if self.pending.is_empty() {
                match self.rx.recv().await {
                    Some(m) => Some(m),
                    None => break,
                }
            } else if self.pending.len() < MAX_PENDING {
                // Failing: keep taking records (in memory) while retrying the sink.
                match tokio::time::timeout(RETRY, self.rx.recv()).await {
                    Ok(Some(m)) => Some(m),
                    // Every sender is gone (shutting down): still retry, but with a pause, not
                    // in a busy loop (a closed channel answers at once).
                    Ok(None) => {
                        tokio::time::sleep(RETRY).await;
                        None
                    }
                    Err(_) => None,
                }
            } else {
                tokio::time::sleep(RETRY).await;
                None
            };
            if let Some(m) = msg {
                self.take(m, &mut closers);
            }
            self.drain(&mut closers);
            // Gather records for a moment so one write carries many, chaining each as it comes.
            // The write is made when a record arrives after the window: a record arrives
            // just after its response went out, when the request path has nothing to do.
            // The timer (twice the window) is only a fallback for a quiet moment, so that it
            // seldom fires in the middle of someone's request.
            if self.state.healthy.load(Ordering::Relaxed) {
                let due = tokio::time::Instant::now() + COALESCE;
                let fallback = tokio::time::sleep_until(due + COALESCE);
                tokio::pin!(fallback);
                while self.pending.len() < BATCH && closers.is_empty() {
                    tokio::select! {
                        biased;
                        Some(m) = self.rx.recv() => {
                            self.take(m, &mut closers);
                            self.drain(&mut closers);
                            if tokio::time::Instant::now() >= due {
                                break;
                            }
                        }
                        _ = &mut fallback => break,
                    }
                }
            }
            self.write_pending_paced();
            if self.pending.is_empty() && !closers.is_empty() {
                break;
            }
        }
        self.write_pending();
        self.out.file = None;
        for f in closers {
            let _ = f.send(());
        }
    }

    fn drain(&mut self, closers: &mut Vec<oneshot::Sender<()>>) {
        while self.pending.len() < MAX_PENDING {
            match self.rx.try_recv() {
                Ok(m) => self.take(m, closers),
                Err(_) => break,
            }
        }
    }

    fn take(&mut self, msg: Msg, closers: &mut Vec<oneshot::Sender<()>>) {
        match msg {
            Msg::Close(done) => closers.push(done),
            Msg::Record(mut rec, _share) => {
                self.seq += 1;
                rec.seq = self.seq;
                rec.prev = std::mem::take(&mut self.prev);
                let p = &mut self.pending;
                let start = p.bytes.len();
                rec.write_json(&mut p.bytes);
                // The record's `prev` buffer becomes the next one.
                self.prev = std::mem::take(&mut rec.prev);
                write_line_hash(&p.bytes[start..], &mut self.prev);
                p.bytes.push(b'\n');
                p.ends.push_back(p.bytes.len());
            }
        }
    }

    /// [`Self::write_pending`], unless the last try failed less than `RETRY` ago.
    fn write_pending_paced(&mut self) {
        if self.failed_at.is_none_or(|t| t.elapsed() >= RETRY) {
            self.write_pending();
        }
    }

    fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        self.failed_at = None;
        match self.out.write_lines(&mut self.pending) {
            Ok(n) => {
                self.state.written.fetch_add(n, Ordering::Relaxed);
                if !self.state.healthy.swap(true, Ordering::Relaxed) {
                    tracing::warn!("access log writable again; serving resumes");
                }
            }
            Err(e) => {
                self.failed_at = Some(std::time::Instant::now());
                self.state.write_errors.fetch_add(1, Ordering::Relaxed);
                if self.state.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %e, pending = self.pending.len(), "cannot write the access log");
                }
            }
        }
    }
}

/// The file (or stdout) records go to, with size-based rotation.
struct Output {
    path: Option<PathBuf>,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    keep: usize,
}

impl Output {
    fn open(s: &Settings) -> std::io::Result<Output> {
        if s.path == "-" {
            return Ok(Output { path: None, file: None, size: 0, max_bytes: u64::MAX, keep: 0 });
        }
        let path = PathBuf::from(&s.path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut out =
            Output { path: Some(path), file: None, size: 0, max_bytes: s.max_bytes.max(1), keep: s.keep };
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
    fn chain_tail(&self) -> std::io::Result<(u64, String)> {
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
    fn write_lines(&mut self, lines: &mut Pending) -> std::io::Result<u64> {
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
            std::fs::remove_file(&path)?;
        } else {
            // With `.1` free the older files have moved already (a retry after the last step
            // failed): moving them again would delete one more old file per retry.
            if rotated(&path, 1).exists() {
                let _ = std::fs::remove_file(rotated(&path, self.keep));
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
        let mut out = Output { path: Some(path.clone()), file: None, size: 0, max_bytes: 10, keep: 2 };
        // The current file is gone, so the last step (current → .1) finds nothing to move.
        out.rotate().unwrap();
        out.rotate().unwrap();
        assert_eq!(std::fs::read_to_string(rotated(&path, 2)).unwrap(), "A", "the retry kept .2");
        assert!(path.exists(), "a new current file");
    }

    #[tokio::test]
    async fn refusals_hold_at_most_a_quarter_of_the_queue_and_never_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl").display().to_string();
        let settings = Settings { path, max_bytes: u64::MAX, keep: 0, queue: 8, fail_closed: true };
        let sink = AuditSink::open(settings).unwrap();
        let refusals: Vec<Slot> = std::iter::from_fn(|| sink.refusal_slot()).take(10).collect();
        assert_eq!(refusals.len(), 2, "a quarter of 8");
        assert_eq!(sink.state.unrecorded.load(Ordering::Relaxed), 1, "the one refused is counted");
        // Forwarded requests still find the rest.
        let forwarded: Vec<Slot> = std::iter::from_fn(|| sink.tx.clone().try_reserve_owned().ok())
            .map(|place| Slot { place, share: None })
            .collect();
        assert_eq!(forwarded.len(), 6);
        // A refusal's share comes back once the writer has taken its record.
        for slot in refusals {
            slot.send(AccessRecord::default());
        }
        drop(forwarded);
        tokio::time::timeout(Duration::from_secs(5), async {
            while sink.refusals.available_permits() < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("shares given back");
    }

    /// A writer whose every write fails (its directory does not exist), and its sender.
    fn failing(dir: &Path) -> (Writer, mpsc::Sender<Msg>, Arc<SinkState>) {
        let out = Output {
            path: Some(dir.join("gone/audit.jsonl")),
            file: None,
            size: 0,
            max_bytes: u64::MAX,
            keep: 0,
        };
        let (tx, rx) = mpsc::channel(64);
        let state = Arc::new(SinkState::default());
        let pending = Pending::default();
        let writer =
            Writer { out, rx, state: state.clone(), seq: 0, prev: GENESIS.into(), pending, failed_at: None };
        (writer, tx, state)
    }

    #[tokio::test]
    async fn a_failing_sink_retries_with_a_pause_once_every_sender_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, tx, state) = failing(dir.path());
        let task = tokio::spawn(writer.run());
        tx.send(Msg::Record(Box::default(), None)).await.unwrap();
        drop(tx);
        // The writer used to retry here in a busy loop (thousands of tries a second).
        tokio::time::sleep(RETRY * 2).await;
        let tries = state.write_errors.load(Ordering::Relaxed);
        assert!((2..=5).contains(&tries), "{tries} tries in {:?}: retried, with a pause", RETRY * 2);
        assert!(!task.is_finished(), "still holding the record it could not write");
        task.abort();
    }

    #[tokio::test]
    async fn a_failing_sink_is_tried_once_per_pause_not_once_per_record() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, tx, state) = failing(dir.path());
        let task = tokio::spawn(writer.run());
        for _ in 0..40 {
            tx.send(Msg::Record(Box::default(), None)).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // 40 records over about 200 ms (less than a pause): the first write, one retry at most.
        let tries = state.write_errors.load(Ordering::Relaxed);
        assert!((1..=3).contains(&tries), "{tries} tries for 40 records");
        task.abort();
    }
}
