//! Per-service limits: a request rate (GCRA, by governor) and a cap on calls in flight. A
//! reload keeps a service's limiter when its settings are unchanged, so that a reload neither
//! refills a spent budget nor forgets the calls in flight.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::policy::Failure;

/// A service's limits as configured (`rate`, `burst`, `concurrency`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec {
    pub rate: Option<Rate>,
    /// Calls that may go at once after an idle time; default: the rate's count.
    pub burst: Option<NonZeroU32>,
    pub concurrency: Option<NonZeroU32>,
}

/// `count` calls per `per`: `"20/s"`, `"600/m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || format!("`{text}` is not a rate like \"20/s\" or \"600/m\"");
        let (n, unit) = text.split_once('/').ok_or_else(bad)?;
        let per = match unit {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            _ => return Err(bad()),
        };
        let count = n.parse::<NonZeroU32>().map_err(|_| bad())?;
        if !n.bytes().all(|b| b.is_ascii_digit()) || n.starts_with('0') {
            return Err(bad());
        }
        // GCRA adds one call every `per / count`: that must be at least a nanosecond.
        if per.as_nanos() / u128::from(count.get()) == 0 {
            return Err(format!("`{text}` is more than 1000000000 calls a second"));
        }
        Ok(Rate { count, per })
    }
}

/// The live limiters of one service.
pub struct ServiceLimits {
    pub spec: LimitSpec,
    rate: Option<DefaultDirectRateLimiter>,
    in_flight: Option<Arc<Semaphore>>,
}

impl std::fmt::Debug for ServiceLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.spec.fmt(f)
    }
}

impl ServiceLimits {
    pub fn new(spec: LimitSpec) -> ServiceLimits {
        let rate = spec.rate.map(|r| {
            // One cell every `per / count`; a burst of `burst` (default: `count`) when idle.
            let period = r.per / r.count.get();
            let quota =
                Quota::with_period(period).expect("a rate of at most u32::MAX per minute has a period");
            RateLimiter::direct(quota.allow_burst(spec.burst.unwrap_or(r.count)))
        });
        let in_flight = spec.concurrency.map(|n| Arc::new(Semaphore::new(n.get() as usize)));
        ServiceLimits { spec, rate, in_flight }
    }

    /// Admit one call: `Err` past the rate (with when to retry) or the concurrency; the permit,
    /// if any, is held until the call's answer has ended.
    pub fn admit(&self) -> Result<Option<OwnedSemaphorePermit>, Failure> {
        if let Some(limiter) = &self.rate
            && let Err(not_until) = limiter.check()
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(Failure::RateLimited { retry_after: wait.as_secs_f64().ceil().max(1.0) as u64 });
        }
        match &self.in_flight {
            Some(sem) => sem.clone().try_acquire_owned().map(Some).map_err(|_| Failure::ConcurrencyLimited),
            None => Ok(None),
        }
    }
}

/// The limiters of the services that have limits, by service name.
pub type Limiters = HashMap<Arc<str>, Arc<ServiceLimits>>;

/// The limiters for `specs`, keeping from `previous` those whose settings are unchanged.
pub fn build(specs: &[(Arc<str>, LimitSpec)], previous: Option<&Limiters>) -> Limiters {
    specs
        .iter()
        .map(|(name, spec)| {
            let kept = previous.and_then(|p| p.get(name)).filter(|l| l.spec == *spec);
            (name.clone(), kept.cloned().unwrap_or_else(|| Arc::new(ServiceLimits::new(*spec))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_one_way() {
        let r = Rate::parse("20/s").unwrap();
        assert_eq!((r.count.get(), r.per), (20, Duration::from_secs(1)));
        assert_eq!(Rate::parse("600/m").unwrap().per, Duration::from_secs(60));
        for bad in [
            "20",
            "0/s",
            "020/s",
            "-1/s",
            "20/h",
            "20/S",
            " 20/s",
            "20 /s",
            "1.5/s",
            "/s",
            "20/",
            "4000000000/s",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_burst_then_the_rate_and_a_cap_on_calls_in_flight() {
        let nz = |n| NonZeroU32::new(n).unwrap();
        let spec = LimitSpec {
            rate: Some(Rate { count: nz(1), per: Duration::from_secs(60) }),
            burst: Some(nz(3)),
            concurrency: None,
        };
        let l = ServiceLimits::new(spec);
        for _ in 0..3 {
            assert!(l.admit().is_ok());
        }
        match l.admit() {
            Err(Failure::RateLimited { retry_after }) => {
                assert!((1..=60).contains(&retry_after), "{retry_after}")
            }
            other => panic!("{other:?}"),
        }
        let l = ServiceLimits::new(LimitSpec { rate: None, burst: None, concurrency: Some(nz(1)) });
        let held = l.admit().unwrap();
        assert!(matches!(l.admit(), Err(Failure::ConcurrencyLimited)));
        drop(held);
        assert!(l.admit().is_ok());
    }

    #[test]
    fn a_reload_keeps_unchanged_limiters() {
        let spec = LimitSpec { rate: None, burst: None, concurrency: NonZeroU32::new(2) };
        let first = build(&[("a".into(), spec), ("b".into(), spec)], None);
        let changed = LimitSpec { concurrency: NonZeroU32::new(3), ..spec };
        let second = build(&[("a".into(), spec), ("b".into(), changed)], Some(&first));
        assert!(Arc::ptr_eq(&first["a"], &second["a"]));
        assert!(!Arc::ptr_eq(&first["b"], &second["b"]));
    }
}
