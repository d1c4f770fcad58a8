//! The cell a snapshot holds a secret in: read once per request, refreshed in place for
//! sources that change, with the last good value kept (and its staleness bounded) when a
//! refresh fails.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use super::{Loaded, OnStale, SecretSource};

/// A secret as a snapshot holds it. Requests take the current value once (`serving`); a
/// refreshing source replaces it in place, so a new vault version needs no config reload.
pub struct SecretCell {
    pub name: Arc<str>,
    current: ArcSwap<Loaded>,
    refresh: Option<Refresh>,
    /// Failed refreshes since the cell was made (a reload keeps an unchanged vault cell).
    pub refresh_failures: AtomicU64,
    /// Unix milliseconds of the last successful load (shown in metrics).
    last_success_ms: AtomicU64,
    /// The same moment on the monotonic clock (`mono_ms`), for ages: a wall clock stepped
    /// forward must not make a fresh secret stale, nor one stepped back keep a stale one.
    last_success_mono: AtomicU64,
    /// Whether the last refresh failed / the value is older than `max_staleness`: each
    /// change is logged once, not every attempt.
    failing: AtomicBool,
    stale: AtomicBool,
}

/// How a cell is kept fresh.
pub struct Refresh {
    pub source: Box<dyn SecretSource>,
    pub every: Duration,
    pub max_staleness: Duration,
    pub on_stale: OnStale,
    /// Identifies the source's configuration (see `VaultSource::origin`).
    pub origin: [u8; 32],
    /// One refresh at a time: the interval and a reload may ask together.
    lock: tokio::sync::Mutex<()>,
    task_started: AtomicBool,
}

impl Refresh {
    pub fn new(
        source: Box<dyn SecretSource>,
        every: Duration,
        max_staleness: Duration,
        on_stale: OnStale,
        origin: [u8; 32],
    ) -> Refresh {
        Refresh {
            source,
            every,
            max_staleness,
            on_stale,
            origin,
            lock: tokio::sync::Mutex::new(()),
            task_started: AtomicBool::new(false),
        }
    }
}

impl fmt::Debug for SecretCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretCell")
            .field("name", &self.name)
            .field("version", &self.version())
            .field("source", &self.refresh.as_ref().map(|r| &r.source))
            .finish()
    }
}

impl SecretCell {
    /// A secret loaded once (file, env), or by a refreshing source (`refresh`).
    pub fn new(name: &str, loaded: Loaded, refresh: Option<Refresh>) -> SecretCell {
        SecretCell {
            name: name.into(),
            current: ArcSwap::from_pointee(loaded),
            refresh,
            refresh_failures: AtomicU64::new(0),
            last_success_ms: AtomicU64::new(now_ms()),
            last_success_mono: AtomicU64::new(mono_ms()),
            failing: AtomicBool::new(false),
            stale: AtomicBool::new(false),
        }
    }

    /// The value for one request, or `None` when it is older than `max_staleness` and the
    /// policy is to refuse.
    pub fn serving(&self) -> Option<Arc<Loaded>> {
        if let Some(r) = &self.refresh
            && r.on_stale == OnStale::Refuse
            && self.age() > r.max_staleness
        {
            return None;
        }
        Some(self.current.load_full())
    }

    pub fn version(&self) -> Option<u64> {
        self.current.load().version
    }

    pub fn refresh_plan(&self) -> Option<&Refresh> {
        self.refresh.as_ref()
    }

    /// Unix seconds of the last successful load.
    pub fn last_success(&self) -> u64 {
        self.last_success_ms.load(Ordering::Relaxed) / 1000
    }

    /// Time since the last successful load.
    pub fn age(&self) -> Duration {
        Duration::from_millis(mono_ms().saturating_sub(self.last_success_mono.load(Ordering::Relaxed)))
    }

    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Relaxed)
    }

    /// Older than its `max_staleness` (never, for a secret that is not refreshed).
    pub fn is_stale(&self) -> bool {
        self.refresh.as_ref().is_some_and(|r| self.age() > r.max_staleness)
    }

    /// Load again from the source; on failure keep the last good value. Logs only changes:
    /// a new version, healthy → failing, failing → healthy, fresh → stale.
    pub async fn refresh(&self) {
        let Some(r) = &self.refresh else {
            return;
        };
        let _one_at_a_time = r.lock.lock().await;
        match r.source.load().await {
            Ok(loaded) => {
                let before = self.version();
                if loaded.version != before {
                    tracing::info!(secret = %self.name, from = before, to = loaded.version, "secret has a new version");
                }
                self.current.store(Arc::new(loaded));
                self.last_success_ms.store(now_ms(), Ordering::Relaxed);
                self.last_success_mono.store(mono_ms(), Ordering::Relaxed);
                self.stale.store(false, Ordering::Relaxed);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(secret = %self.name, failures = self.refresh_failures.load(Ordering::Relaxed),
                        "secret refresh recovered");
                }
            }
            Err(error) => {
                self.refresh_failures.fetch_add(1, Ordering::Relaxed);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(secret = %self.name, %error,
                        "secret refresh failing; serving the last good value (logged again when it recovers)");
                }
                let age = self.age();
                if age > r.max_staleness && !self.stale.swap(true, Ordering::Relaxed) {
                    let policy = match r.on_stale {
                        OnStale::Serve => "still serving it (on_stale = \"serve\")",
                        OnStale::Refuse => "refusing requests with 503 (on_stale = \"refuse\")",
                    };
                    tracing::error!(secret = %self.name, age_s = age.as_secs(), %error,
                        "secret is older than max_staleness: {policy}");
                }
            }
        }
    }
}

/// Start the background refresh of every refreshing cell not refreshed yet. Each task holds
/// only a weak reference: it ends once no snapshot holds its cell.
pub fn spawn_refresh(cells: &[Arc<SecretCell>]) {
    for cell in cells {
        let Some(r) = &cell.refresh else {
            continue;
        };
        if r.task_started.swap(true, Ordering::Relaxed) {
            continue;
        }
        let (weak, every): (Weak<SecretCell>, Duration) = (Arc::downgrade(cell), r.every);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(cell) = weak.upgrade() else {
                    break;
                };
                cell.refresh().await;
            }
        });
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds on the monotonic clock, counted from a point a million seconds before the
/// first call, so that "some time ago" never goes below zero.
fn mono_ms() -> u64 {
    static START: std::sync::LazyLock<std::time::Instant> = std::sync::LazyLock::new(std::time::Instant::now);
    1_000_000_000 + START.elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::{LoadFuture, Secret, SecretError};

    /// A source that answers from a script, one answer per load.
    #[derive(Debug)]
    struct Scripted(std::sync::Mutex<Vec<Result<(&'static str, u64), &'static str>>>);

    impl SecretSource for Scripted {
        fn load(&self) -> LoadFuture<'_> {
            let next = self.0.lock().unwrap().remove(0);
            Box::pin(async move {
                next.map(|(v, n)| Loaded { value: Secret::new(v.into()), version: Some(n) })
                    .map_err(|why| SecretError::EnvUnset { var: why.into() })
            })
        }
    }

    fn cell(on_stale: OnStale, script: Vec<Result<(&'static str, u64), &'static str>>) -> SecretCell {
        let source = Box::new(Scripted(std::sync::Mutex::new(script)));
        let refresh =
            Refresh::new(source, Duration::from_secs(1), Duration::from_secs(60), on_stale, [0; 32]);
        let first = Loaded { value: Secret::new("v1".into()), version: Some(1) };
        SecretCell::new("stripe", first, Some(refresh))
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_good_value() {
        let c = cell(OnStale::Serve, vec![Err("vault down"), Err("vault down"), Ok(("v2", 2))]);
        c.refresh().await;
        c.refresh().await;
        assert_eq!(c.serving().unwrap().value.expose(), "v1");
        assert!(c.is_failing());
        assert_eq!(c.refresh_failures.load(Ordering::Relaxed), 2);
        c.refresh().await;
        let now = c.serving().unwrap();
        assert_eq!((now.value.expose(), now.version), ("v2", Some(2)));
        assert!(!c.is_failing());
    }

    #[tokio::test]
    async fn past_max_staleness_refuse_serves_nothing_and_serve_goes_on() {
        let long_ago = mono_ms() - 61_000;
        for (policy, serves) in [(OnStale::Serve, true), (OnStale::Refuse, false)] {
            let c = cell(policy, vec![Err("vault down"), Ok(("v2", 2))]);
            c.last_success_mono.store(long_ago, Ordering::Relaxed);
            c.refresh().await;
            assert!(c.is_stale());
            assert_eq!(c.serving().is_some(), serves, "{policy:?}");
            c.refresh().await;
            assert!(!c.is_stale() && c.serving().is_some());
        }
    }
}
