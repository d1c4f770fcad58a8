//! The access log's writer task: it takes records from the queue, chains each (`seq`, `prev`,
//! `instance`), gathers them into few writes on a blocking thread, and keeps what it could
//! not write, in order, while the file fails; and the counters it keeps for the metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::checkpoint::Checkpoint;
use super::event::Event;
use super::file::{Output, Pending};
use super::fold::FoldedRefusals;
use super::publish::Publisher;
use super::rotation::Rotation;
use super::{AccessRecord, write_line_hash};

pub(super) enum Msg {
    /// With the refusal share's permit, if it is a refusal's: given back once the writer has it.
    Record(Box<AccessRecord>, Option<OwnedSemaphorePermit>),
    /// Refusals folded over an interval.
    Folded(Box<FoldedRefusals>),
    /// Chain a checkpoint now (`checkpoint`): every `checkpoint_interval`, after the folds.
    Checkpoint,
    /// keyward's own record: lifecycle, admin action, configuration text.
    Event(Box<Event>),
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
    /// Records lost: folded refusals that could not be queued because the writer was gone.
    pub unrecorded: AtomicU64,
    /// Refusals folded into `kind = "refusals"` records.
    pub folded: AtomicU64,
    /// Checkpoints that could not be published to `audit.checkpoints` (the chain has them).
    pub publish_errors: AtomicU64,
    /// The chain's head as written: its last record's seq and line hash (`None` before the
    /// first record), for anchoring elsewhere (`GET /-/audit/head`).
    pub head: std::sync::Mutex<Option<(u64, String)>>,
}

/// A record the writer chains: its `seq`, `prev` and `instance` are set as it is written.
trait Linked {
    fn links(&mut self) -> (&mut u64, &mut String, &mut Option<Arc<str>>);
    fn write_json(&self, out: &mut Vec<u8>);
}

impl Linked for AccessRecord {
    fn links(&mut self) -> (&mut u64, &mut String, &mut Option<Arc<str>>) {
        (&mut self.seq, &mut self.prev, &mut self.instance)
    }
    fn write_json(&self, out: &mut Vec<u8>) {
        AccessRecord::write_json(self, out)
    }
}

impl Linked for Rotation {
    fn links(&mut self) -> (&mut u64, &mut String, &mut Option<Arc<str>>) {
        self.links.parts()
    }
    fn write_json(&self, out: &mut Vec<u8>) {
        Rotation::write_json(self, out)
    }
}

impl Linked for FoldedRefusals {
    fn links(&mut self) -> (&mut u64, &mut String, &mut Option<Arc<str>>) {
        self.links.parts()
    }
    fn write_json(&self, out: &mut Vec<u8>) {
        FoldedRefusals::write_json(self, out)
    }
}

impl Linked for Checkpoint {
    fn links(&mut self) -> (&mut u64, &mut String, &mut Option<Arc<str>>) {
        self.links.parts()
    }
    fn write_json(&self, out: &mut Vec<u8>) {
        Checkpoint::write_json(self, out)
    }
}

impl Linked for Event {
    fn links(&mut self) -> (&mut u64, &mut String, &mut Option<Arc<str>>) {
        self.links_mut().parts()
    }
    fn write_json(&self, out: &mut Vec<u8>) {
        Event::write_json(self, out)
    }
}

impl super::Links {
    fn parts(&mut self) -> (&mut u64, &mut String, &mut Option<Arc<str>>) {
        (&mut self.seq, &mut self.prev, &mut self.instance)
    }
}

pub(super) struct Writer {
    /// The file; away on a blocking thread while a write is in progress.
    pub(super) out: Option<Output>,
    pub(super) rx: mpsc::Receiver<Msg>,
    pub(super) state: Arc<SinkState>,
    pub(super) instance: Arc<str>,
    pub(super) seq: u64,
    pub(super) prev: String,
    /// Chained lines not yet written (kept across write failures, in order).
    pub(super) pending: Pending,
    /// When the last write failed: while failing, the sink is tried once per `RETRY`, not
    /// once per record that arrives.
    pub(super) failed_at: Option<std::time::Instant>,
    pub(super) checkpoints: Checkpoints,
}

/// What the writer needs for its checkpoints.
pub(super) struct Checkpoints {
    pub(super) signer: Option<super::checkpoint::SharedSigner>,
    pub(super) interval: Duration,
    /// The first seq this process writes, and the requests its records account for since.
    pub(super) since_seq: u64,
    pub(super) answered: u64,
    pub(super) publisher: Option<Publisher>,
    /// Checkpoint lines chained but not yet published: published once the log holds them.
    pub(super) unpublished: Vec<u8>,
}

/// Lines held in memory while the sink fails, before the writer stops taking more
/// (which then holds requests back at their queue slot).
const MAX_PENDING: usize = 100_000;
pub(super) const RETRY: Duration = Duration::from_millis(250);
/// Records gathered into one write. Each write stalls the one thread for tens of µs
/// whatever its size, so few writes: about one per 50 ms, or per 1,024 records.
const BATCH: usize = 1024;
pub(super) const COALESCE: Duration = Duration::from_millis(50);

impl Writer {
    pub(super) async fn run(mut self) {
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
            self.write_pending_paced().await;
            if self.pending.is_empty() && !closers.is_empty() {
                break;
            }
        }
        self.write_pending().await;
        // Closing the file releases its lock for whoever opens the log next.
        self.out = None;
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
                self.checkpoints.answered += u64::from(rec.kind == super::Kind::Request);
                self.append(&mut *rec)
            }
            Msg::Folded(mut rec) => {
                self.checkpoints.answered += rec.count;
                self.append(&mut *rec)
            }
            Msg::Event(mut rec) => self.append(&mut *rec),
            Msg::Checkpoint => self.checkpoint(),
        }
    }

    /// Chain a checkpoint over the head, signed if there is a key, and keep its line to
    /// publish.
    fn checkpoint(&mut self) {
        let c = &self.checkpoints;
        let unrecordable =
            self.state.refused.load(Ordering::Relaxed) + self.state.unrecorded.load(Ordering::Relaxed);
        let mut cp = Checkpoint {
            links: super::Links::now(super::Kind::Checkpoint),
            head: self.prev.clone(),
            interval_ms: c.interval.as_millis() as u64,
            since_seq: c.since_seq,
            answered: c.answered,
            unrecordable,
            key_id: None,
            signature: None,
        };
        cp.links.seq = self.seq + 1;
        cp.links.instance = Some(self.instance.clone());
        if let Some(signer) = &c.signer {
            cp.sign(signer);
        }
        let start = self.pending.bytes.len();
        self.append(&mut cp);
        if self.checkpoints.publisher.is_some() {
            let line = self.pending.bytes[start..].to_vec();
            self.checkpoints.unpublished.extend_from_slice(&line);
        }
    }

    /// Chain `rec` onto the head and queue its line.
    fn append(&mut self, rec: &mut impl Linked) {
        self.seq += 1;
        let (seq, prev, instance) = rec.links();
        *seq = self.seq;
        *prev = std::mem::take(&mut self.prev);
        *instance = Some(self.instance.clone());
        let p = &mut self.pending;
        let start = p.bytes.len();
        rec.write_json(&mut p.bytes);
        // The record's `prev` buffer becomes the next one.
        self.prev = std::mem::take(rec.links().1);
        write_line_hash(&p.bytes[start..], &mut self.prev);
        p.bytes.push(b'\n');
        p.ends.push_back(p.bytes.len());
    }

    /// Publish the checkpoints the log now holds. A failure is counted and said, and the
    /// lines kept for the next try: the chain has them either way.
    fn publish(&mut self) {
        let c = &mut self.checkpoints;
        let Some(p) = c.publisher.as_mut().filter(|_| !c.unpublished.is_empty()) else { return };
        match p.publish(&c.unpublished) {
            Ok(()) => c.unpublished.clear(),
            Err(e) => {
                self.state.publish_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot publish audit checkpoints (audit.checkpoints)");
            }
        }
    }

    /// [`Self::write_pending`], unless the last try failed less than `RETRY` ago.
    async fn write_pending_paced(&mut self) {
        if self.failed_at.is_none_or(|t| t.elapsed() >= RETRY) {
            self.write_pending().await;
        }
    }

    /// Write what is pending, on a blocking thread: the disk may be slow, the runtime's
    /// threads serve requests. Records arriving meanwhile wait in the channel.
    async fn write_pending(&mut self) {
        let Some(mut out) = self.out.take().filter(|_| !self.pending.is_empty()) else {
            return;
        };
        self.failed_at = None;
        let mut pending = std::mem::take(&mut self.pending);
        let done = tokio::task::spawn_blocking(move || {
            let written = out.write_lines(&mut pending);
            (out, pending, written)
        })
        .await;
        let (mut out, pending, written) = done.expect("writing the access log does not panic");
        let removed = std::mem::take(&mut out.removed);
        (self.out, self.pending) = (Some(out), pending);
        // Files rotation deleted: the chain says so, in the next write.
        for (removed_file, removed_through_seq) in removed {
            let links = super::Links::now(super::Kind::Rotation);
            self.append(&mut Rotation { links, removed_file, removed_through_seq });
        }
        match written {
            Ok(n) => {
                self.state.written.fetch_add(n, Ordering::Relaxed);
                if self.pending.is_empty() {
                    *self.state.head.lock().expect("not poisoned") = Some((self.seq, self.prev.clone()));
                    self.publish();
                }
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
