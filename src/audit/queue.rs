//! The access log's queue and its writer: forwarded requests reserve a place when they start
//! (so a full queue slows admission instead of dropping records), refusals take one from their
//! own share and write at once; one task chains the records and hands batches to `file`, on a
//! blocking thread, so that a slow disk never stalls request handling.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, RwLock};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::policy::identity::address_key;

use super::AccessRecord;
use super::event::Event;
use super::file::{Output, Pending};
use super::fold::Folds;
use super::publish::Publisher;
use super::settings::Settings;
pub use super::writer::SinkState;
use super::writer::{Checkpoints, Msg, Writer};

pub struct AuditSink {
    tx: mpsc::Sender<Msg>,
    /// The places refusals may hold: a quarter of the queue. Their callers, with or without a
    /// token, cannot crowd out the records of calls being forwarded.
    refusals: Arc<Semaphore>,
    /// How fast one address's refusals, and all of them, are recorded one by one: a flood
    /// must not rotate the log's history away. Past either, they are folded.
    refusal_rate: DefaultKeyedRateLimiter<IpAddr>,
    refusal_budget: DefaultDirectRateLimiter,
    refusals_checked: AtomicU64,
    folds: Arc<Mutex<Folds>>,
    /// The places forwarded calls may hold: the rest of the queue, so that the refusals' quarter
    /// is theirs.
    forwarded: Arc<Semaphore>,
    /// The places each service's calls may hold: half the forwarded share. Read-mostly: a
    /// service's semaphore is made by its first call.
    services: RwLock<foldhash::HashMap<Arc<str>, Arc<Semaphore>>>,
    service_share: usize,
    pub state: Arc<SinkState>,
    pub settings: Settings,
}

/// A reserved place in the queue: sending on it never waits and never fails.
pub struct Slot {
    place: mpsc::OwnedPermit<Msg>,
    /// A refusal's (or a forwarded call's) place in its share: travels with the record to the
    /// writer, which gives it back.
    share: Option<OwnedSemaphorePermit>,
    /// A service's place in its share: held while its call is in progress.
    _service: Option<OwnedSemaphorePermit>,
}

impl Slot {
    pub fn send(self, record: AccessRecord) {
        self.place.send(Msg::Record(Box::new(record), self.share));
    }
}

/// Why a forwarded call found no place.
#[derive(Debug, PartialEq, Eq)]
pub enum Unplaced {
    /// The writer is gone (shutting down).
    Closed,
    /// No place came free within [`SLOT_WAIT`]: the writer is stuck, or calls in progress
    /// hold every place the service (or all forwarded calls) may have.
    Busy,
}

/// The longest a forwarded request waits for a place in the queue before it is refused with
/// 503.
pub const SLOT_WAIT: Duration = Duration::from_secs(10);

impl AuditSink {
    /// Open the log (continuing the chain of what is already there) and start the writer,
    /// which stamps each record with `instance`: the chain is this process's.
    pub fn open(settings: Settings, instance: Arc<str>) -> std::io::Result<AuditSink> {
        let out = Output::open(&settings)?;
        let (seq, prev) = out.chain_tail()?;
        let queue = settings.queue.max(1);
        let (tx, rx) = mpsc::channel(queue);
        let refusal_places = (queue / 4).max(1);
        let refusals = Arc::new(Semaphore::new(refusal_places));
        let forwarded_places = queue.saturating_sub(refusal_places).max(1);
        let per_ip = NonZeroU32::new(settings.refusals_per_ip.max(1)).expect("at least 1");
        let refusal_rate = RateLimiter::keyed(Quota::per_second(per_ip));
        let all = NonZeroU32::new(settings.refusals_per_second.max(1)).expect("at least 1");
        let refusal_budget = RateLimiter::direct(Quota::per_second(all));
        let state = Arc::new(SinkState { healthy: AtomicBool::new(true), ..Default::default() });
        let folds = Arc::new(Mutex::new(Folds::default()));
        tokio::spawn(flush_folds_every(settings.fold_interval, folds.clone(), tx.downgrade(), state.clone()));
        tokio::spawn(checkpoint_every(
            settings.checkpoint_interval,
            folds.clone(),
            tx.downgrade(),
            state.clone(),
        ));
        let publisher = settings.checkpoints.as_deref().map(Publisher::open).transpose()?;
        let checkpoints = Checkpoints {
            signer: settings.signer.clone(),
            interval: settings.checkpoint_interval,
            since_seq: seq + 1,
            answered: 0,
            publisher,
            unpublished: Vec::new(),
        };
        let writer = Writer {
            out: Some(out),
            rx,
            state: state.clone(),
            instance,
            seq,
            prev,
            pending: Pending::default(),
            failed_at: None,
            checkpoints,
        };
        tokio::spawn(writer.run());
        Ok(AuditSink {
            tx,
            refusals,
            refusal_rate,
            refusal_budget,
            refusals_checked: AtomicU64::new(0),
            folds,
            forwarded: Arc::new(Semaphore::new(forwarded_places)),
            services: RwLock::default(),
            service_share: (forwarded_places / 2).max(1),
            state,
            settings,
        })
    }

    /// Wait for a place in the queue for a call of `service`, at most [`SLOT_WAIT`]:
    /// back-pressure when the writer falls behind. Forwarded calls hold at most three quarters
    /// of the queue, and one service half of that, so one whose calls stall cannot take every
    /// place, nor crowd out the refusals' records.
    pub async fn slot(&self, service: &Arc<str>) -> Result<Slot, Unplaced> {
        let share = self.service_share(service);
        let reserve = async {
            let own = share.acquire_owned().await.expect("never closed");
            let forwarded = self.forwarded.clone().acquire_owned().await.expect("never closed");
            let place = self.tx.clone().reserve_owned().await.map_err(|_| Unplaced::Closed)?;
            Ok(Slot { place, share: Some(forwarded), _service: Some(own) })
        };
        tokio::time::timeout(SLOT_WAIT, reserve).await.unwrap_or(Err(Unplaced::Busy))
    }

    fn service_share(&self, service: &Arc<str>) -> Arc<Semaphore> {
        let services = self.services.read().unwrap_or_else(|e| e.into_inner());
        if let Some(share) = services.get(service) {
            return share.clone();
        }
        drop(services);
        let mut services = self.services.write().unwrap_or_else(|e| e.into_inner());
        services
            .entry(service.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.service_share)))
            .clone()
    }

    /// Record a refusal: on its own line while its address and all refusals are within their
    /// budgets and the refusals' share of the queue has a place free now, else folded. A
    /// refusal never waits, and is never lost.
    pub fn refusal(&self, record: AccessRecord) {
        match self.refusal_slot(record.client_ip) {
            Some(slot) => slot.send(record),
            None => {
                self.folds.lock().unwrap_or_else(|e| e.into_inner()).add(&record);
                self.state.folded.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn refusal_slot(&self, from: Option<IpAddr>) -> Option<Slot> {
        // Forget quiet addresses now and then: the limiter keeps a cell per address.
        if self.refusals_checked.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            self.refusal_rate.retain_recent();
        }
        let own = from.is_none_or(|ip| self.refusal_rate.check_key(&address_key(ip)).is_ok());
        if !own || self.refusal_budget.check().is_err() {
            return None;
        }
        let share = self.refusals.clone().try_acquire_owned().ok()?;
        let place = self.tx.clone().try_reserve_owned().ok()?;
        Some(Slot { place, share: Some(share), _service: None })
    }

    /// Record one of keyward's own events (start, stop, the configuration, an admin action):
    /// they are rare and never dropped, so this waits for a place in the queue. Lost only if
    /// the writer is gone (counted in `unrecorded`, and logged).
    pub async fn event(&self, event: Event) {
        send_event(&self.tx, &self.state, event).await;
    }

    /// [`Self::event`] from code that must not wait (the request path tipping a quarantine):
    /// sent by a task of its own.
    pub fn event_soon(&self, event: Event) {
        let (tx, state) = (self.tx.clone(), self.state.clone());
        tokio::spawn(async move { send_event(&tx, &state, event).await });
    }

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
            flush_folds(&self.folds, &self.tx, &self.state).await;
            let _ = self.tx.send(Msg::Checkpoint).await;
            if self.tx.send(Msg::Close(done)).await.is_ok() {
                let _ = wait.await;
            }
        })
        .await;
    }
}

async fn send_event(tx: &mpsc::Sender<Msg>, state: &SinkState, event: Event) {
    let kind = match &event {
        Event::Lifecycle(_) => "lifecycle",
        Event::Config(_) => "config",
        Event::Admin(_) => "admin",
    };
    if tx.send(Msg::Event(Box::new(event))).await.is_err() {
        state.unrecorded.fetch_add(1, Ordering::Relaxed);
        tracing::error!(kind, "the access log is closed: a record of keyward's own was not written");
    }
}

/// Write what was folded every `every`, until the sink is gone.
async fn flush_folds_every(
    every: Duration,
    folds: Arc<Mutex<Folds>>,
    tx: mpsc::WeakSender<Msg>,
    state: Arc<SinkState>,
) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(tx) = tx.upgrade() else { return };
        flush_folds(&folds, &tx, &state).await;
    }
}

/// Chain a checkpoint every `every`, the refusals folded so far written first (so that it
/// accounts for them), until the sink is gone.
async fn checkpoint_every(
    every: Duration,
    folds: Arc<Mutex<Folds>>,
    tx: mpsc::WeakSender<Msg>,
    state: Arc<SinkState>,
) {
    let every = every.max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(tx) = tx.upgrade() else { return };
        flush_folds(&folds, &tx, &state).await;
        if tx.send(Msg::Checkpoint).await.is_err() {
            return;
        }
    }
}

/// Queue the folded records (at most `fold::MAX_ADDRESSES` + 1), waiting for places: they
/// are few, and each stands for many refusals.
async fn flush_folds(folds: &Mutex<Folds>, tx: &mpsc::Sender<Msg>, state: &SinkState) {
    let records = folds.lock().unwrap_or_else(|e| e.into_inner()).take();
    for mut r in records {
        r.links.time = super::timestamp(time::OffsetDateTime::now_utc());
        let count = r.count;
        if tx.send(Msg::Folded(Box::new(r))).await.is_err() {
            state.unrecorded.fetch_add(count, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::audit::writer::{COALESCE, RETRY};

    #[tokio::test]
    async fn refusals_hold_at_most_a_quarter_of_the_queue_and_never_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl").display().to_string();
        let settings = Settings {
            path,
            max_bytes: u64::MAX,
            keep: 0,
            queue: 8,
            fail_closed: true,
            refusals_per_ip: 100,
            refusals_per_second: 100,
            fold_interval: Duration::from_secs(1),
            checkpoint_interval: Duration::from_secs(10),
            checkpoints: None,
            signer: None,
        };
        let sink = AuditSink::open(settings, "test".into()).unwrap();
        let from = "127.0.0.2".parse().unwrap();
        let refusals: Vec<Slot> = std::iter::from_fn(|| sink.refusal_slot(Some(from))).take(10).collect();
        assert_eq!(refusals.len(), 2, "a quarter of 8");
        // Forwarded requests still find the rest.
        let forwarded: Vec<Slot> = std::iter::from_fn(|| sink.tx.clone().try_reserve_owned().ok())
            .map(|place| Slot { place, share: None, _service: None })
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

    fn sink(dir: &Path, queue: usize, refusals_per_ip: u32) -> AuditSink {
        let path = dir.join("audit.jsonl").display().to_string();
        AuditSink::open(
            Settings {
                path,
                max_bytes: u64::MAX,
                keep: 0,
                queue,
                fail_closed: true,
                refusals_per_ip,
                refusals_per_second: 1000,
                fold_interval: Duration::from_secs(1),
                checkpoint_interval: Duration::from_secs(10),
                checkpoints: None,
                signer: None,
            },
            "test".into(),
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn forwarded_calls_hold_three_quarters_and_a_service_half_of_that() {
        // 8 places: 2 for refusals, 6 for forwarded calls, 3 for any one service.
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), 8, 100);
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(sink.slot(&a).await.unwrap());
        }
        assert_eq!(sink.slot(&a).await.err(), Some(Unplaced::Busy), "a fourth place for the same service");
        for _ in 0..3 {
            held.push(sink.slot(&b).await.unwrap());
        }
        assert_eq!(sink.slot(&c).await.err(), Some(Unplaced::Busy), "forwarded calls hold six at most");
        assert!(sink.refusal_slot("127.0.0.2".parse().ok()).is_some(), "the refusals' places are theirs");
        drop(held.remove(0));
        assert!(sink.slot(&a).await.is_ok(), "a place given back is the service's again");
    }

    #[tokio::test]
    async fn an_address_gets_so_many_refusal_records_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(dir.path(), 64, 3);
        let (flood, other) = ("2001:db8::1".parse().unwrap(), "127.0.0.9".parse().unwrap());
        let recorded = (0..10).filter_map(|_| sink.refusal_slot(Some(flood))).count();
        assert_eq!(recorded, 3);
        assert!(sink.refusal_slot("2001:db8::2".parse().ok()).is_none(), "the same /64");
        assert!(sink.refusal_slot(Some(other)).is_some(), "another address is recorded");
    }

    #[tokio::test]
    async fn refusals_past_the_budgets_are_folded_into_one_chained_record_and_none_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let settings = Settings {
            path: path.display().to_string(),
            max_bytes: u64::MAX,
            keep: 0,
            queue: 64,
            fail_closed: true,
            refusals_per_ip: 3,
            refusals_per_second: 5,
            fold_interval: Duration::from_millis(100),
            checkpoint_interval: Duration::from_secs(10),
            checkpoints: None,
            signer: None,
        };
        let sink = AuditSink::open(settings, "test".into()).unwrap();
        let refusal = |ip: &str| AccessRecord {
            client_ip: ip.parse().ok(),
            reason: "api_key_missing".into(),
            time: crate::audit::timestamp(time::OffsetDateTime::now_utc()),
            ..Default::default()
        };
        for _ in 0..10 {
            sink.refusal(refusal("127.0.0.2"));
        }
        for _ in 0..4 {
            sink.refusal(refusal("127.0.0.3"));
        }
        // 3 of the first address's, then 2 of the second's (the budget of 5 for all): 9 folded.
        tokio::time::sleep(Duration::from_millis(300)).await;
        sink.close().await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let folded: Vec<_> = lines.iter().filter(|r| r["kind"] == "refusals").collect();
        let own = lines.iter().filter(|r| r["kind"] == "request").count();
        assert_eq!(own, 5, "{text}");
        let counts: Vec<_> =
            folded.iter().map(|r| (r["client_ip"].as_str().unwrap(), r["count"].as_u64().unwrap())).collect();
        assert_eq!(counts, [("127.0.0.2", 7), ("127.0.0.3", 2)]);
        assert_eq!(folded[0]["reasons"]["api_key_missing"], 7);
        assert_eq!(sink.state.folded.load(Ordering::Relaxed), 9);
        assert_eq!(sink.state.unrecorded.load(Ordering::Relaxed), 0);
        let files = vec![(path.display().to_string(), text.into_bytes())];
        assert_eq!(
            crate::audit::verify::verify(&files).unwrap().records,
            14 - 9 + 2 + 1,
            "chained like the rest, and the checkpoint written at close"
        );
    }

    #[tokio::test]
    async fn a_file_deleted_by_rotation_is_recorded_so_verify_can_tell_rotation_from_loss() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let settings = Settings {
            path: path.display().to_string(),
            max_bytes: 2000,
            keep: 1,
            queue: 64,
            fail_closed: true,
            refusals_per_ip: 100,
            refusals_per_second: 100,
            fold_interval: Duration::from_secs(1),
            checkpoint_interval: Duration::from_secs(10),
            checkpoints: None,
            signer: None,
        };
        let sink = AuditSink::open(settings, "test".into()).unwrap();
        let service: Arc<str> = "svc".into();
        for i in 0..60 {
            let slot = sink.slot(&service).await.unwrap();
            slot.send(AccessRecord { request_id: format!("kwreq_{i}"), ..Default::default() });
            if i % 10 == 9 {
                tokio::time::sleep(COALESCE * 3).await;
            }
        }
        tokio::time::sleep(RETRY * 2).await;
        sink.close().await;
        let read = |p: &Path| (p.display().to_string(), std::fs::read(p).unwrap());
        let files = vec![read(&super::super::file::rotated(&path, 1)), read(&path)];
        let v = crate::audit::verify::verify(&files).unwrap();
        assert!(!v.from_genesis, "the oldest files were deleted");
        let history = v.history();
        assert!(history.contains("were rotated away (the chain says so"), "{history}");
        // Without the newest file, which holds the rotation records, nothing says so.
        let older = crate::audit::verify::verify(&files[..1]).unwrap();
        assert!(older.history().contains("no rotation record"), "{}", older.history());
    }

    /// A writer whose every write fails (its directory does not exist), and its sender.
    fn failing(dir: &Path) -> (Writer, mpsc::Sender<Msg>, Arc<SinkState>) {
        let out = Some(Output::unopened(Some(dir.join("gone/audit.jsonl")), u64::MAX, 0));
        let (tx, rx) = mpsc::channel(64);
        let state = Arc::new(SinkState::default());
        let pending = Pending::default();
        let writer = Writer {
            out,
            rx,
            state: state.clone(),
            instance: "test".into(),
            seq: 0,
            prev: crate::audit::GENESIS.into(),
            pending,
            failed_at: None,
            checkpoints: Checkpoints {
                signer: None,
                interval: Duration::from_secs(10),
                since_seq: 1,
                answered: 0,
                publisher: None,
                unpublished: Vec::new(),
            },
        };
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
