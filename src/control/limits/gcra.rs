//! GCRA, the generic cell rate algorithm, over one atomic "theoretical arrival time" (TAT),
//! for what governor cannot express: a tolerance chosen per call (the shared budget's
//! priorities) and a rate that changes at run time (a replica's share of a limit while Redis
//! is out). `redis.rs` runs the same arithmetic in a script, for the limits replicas share.

use std::num::NonZeroU32;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Rate;

/// One cell every `interval`; a call is admitted while the debt (TAT minus now) is at most
/// `tolerance`. A burst of `b` calls after an idle time is a tolerance of `b - 1` intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub interval: Duration,
    pub tolerance: Duration,
}

impl Params {
    /// `rate` with bursts of `burst`, for one of `share` replicas: each gets `1/share` of the
    /// rate and of the burst (at least one call).
    pub fn new(rate: Rate, burst: NonZeroU32, share: u32) -> Params {
        let share = share.max(1);
        let interval = rate.per / rate.count.get() * share;
        let calls = (burst.get() / share).max(1);
        Params { interval, tolerance: interval * (calls - 1) }
    }

    /// The same interval with a part of the tolerance: `num / den` of it.
    pub fn scaled(self, num: u32, den: u32) -> Params {
        Params { tolerance: self.tolerance * num / den, ..self }
    }
}

#[derive(Debug, Default)]
pub struct Gcra {
    /// Nanoseconds since `epoch()`.
    tat: AtomicU64,
}

impl Gcra {
    /// Admit one call now, or say how long until one would be admitted.
    pub fn take(&self, p: Params) -> Result<(), Duration> {
        let now = nanos_now();
        let (interval, tolerance) = (p.interval.as_nanos() as u64, p.tolerance.as_nanos() as u64);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > tolerance {
                return Err(Duration::from_nanos(start - now - tolerance));
            }
            match self.tat.compare_exchange_weak(tat, start + interval, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(seen) => tat = seen,
            }
        }
    }
}

fn nanos_now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Whole seconds to wait, at least one: `Retry-After`.
pub fn retry_after(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_minute(n: u32, burst: u32, share: u32) -> Params {
        let rate = Rate { count: NonZeroU32::new(n).unwrap(), per: Duration::from_secs(60) };
        Params::new(rate, NonZeroU32::new(burst).unwrap(), share)
    }

    #[test]
    fn a_burst_then_one_call_per_interval() {
        let g = Gcra::default();
        let p = per_minute(6, 3, 1);
        assert_eq!(p, Params { interval: Duration::from_secs(10), tolerance: Duration::from_secs(20) });
        for _ in 0..3 {
            assert!(g.take(p).is_ok());
        }
        let wait = g.take(p).unwrap_err();
        assert!(wait > Duration::from_secs(9) && wait <= Duration::from_secs(10), "{wait:?}");
        assert_eq!(retry_after(wait), 10);
    }

    #[test]
    fn a_smaller_tolerance_is_refused_first() {
        let g = Gcra::default();
        let full = per_minute(10, 10, 1);
        let half = full.scaled(1, 2);
        let admitted = |p| (0..20).take_while(|_| g.take(p).is_ok()).count();
        assert_eq!(admitted(half), 5, "debt up to 4.5 intervals");
        assert_eq!(admitted(full), 5, "the rest of the burst");
    }

    #[test]
    fn a_share_divides_rate_and_burst() {
        let p = per_minute(10, 10, 2);
        assert_eq!(p, Params { interval: Duration::from_secs(12), tolerance: Duration::from_secs(48) });
        assert_eq!(per_minute(10, 1, 4).tolerance, Duration::ZERO, "at least one call");
    }
}
