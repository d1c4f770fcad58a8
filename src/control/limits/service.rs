//! A service's own limits: a request rate (GCRA, by governor) and a cap on calls in flight.
//! A reload keeps a service's limiter when its settings are unchanged, so that a reload
//! neither refills a spent budget nor forgets the calls in flight.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Rate;
use super::budget::Priority;
use super::gcra::{Gcra, Params, retry_after};
use crate::policy::Failure;

/// A service's limits as configured (`rate`, `burst`, `concurrency`, `priority`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitSpec {
    pub rate: Option<Rate>,
    /// Calls that may go at once after an idle time; default: the rate's count.
    pub burst: Option<NonZeroU32>,
    pub concurrency: Option<NonZeroU32>,
    pub priority: Priority,
}

/// The live limiters of one service.
pub struct ServiceLimits {
    pub name: Arc<str>,
    pub spec: LimitSpec,
    rate: Option<DefaultDirectRateLimiter>,
    /// This replica's share of the rate while the shared store is out.
    share: Gcra,
    in_flight: Option<Arc<Semaphore>>,
}

impl std::fmt::Debug for ServiceLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.spec.fmt(f)
    }
}

impl ServiceLimits {
    pub fn new(name: Arc<str>, spec: LimitSpec) -> ServiceLimits {
        let rate = spec.rate.map(|r| {
            // One cell every `per / count`; a burst of `burst` (default: `count`) when idle.
            let period = r.per / r.count.get();
            let quota =
                Quota::with_period(period).expect("a rate of at most u32::MAX per minute has a period");
            RateLimiter::direct(quota.allow_burst(spec.burst.unwrap_or(r.count)))
        });
        let in_flight = spec.concurrency.map(|n| Arc::new(Semaphore::new(n.get() as usize)));
        ServiceLimits { name, spec, rate, share: Gcra::default(), in_flight }
    }

    /// A place among the calls in flight, held until the call's answer has ended.
    pub fn hold(&self) -> Result<Option<OwnedSemaphorePermit>, Failure> {
        match &self.in_flight {
            Some(sem) => sem.clone().try_acquire_owned().map(Some).map_err(|_| Failure::ConcurrencyLimited),
            None => Ok(None),
        }
    }

    /// The rate, kept by this process alone.
    pub fn take(&self) -> Result<(), Failure> {
        match &self.rate {
            Some(limiter) => limiter.check().map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                Failure::RateLimited { retry_after: retry_after(wait) }
            }),
            None => Ok(()),
        }
    }

    /// The rate's GCRA parameters for one of `share` replicas; `None` without a rate.
    pub fn params(&self, share: u32) -> Option<Params> {
        let r = self.spec.rate?;
        Some(Params::new(r, self.spec.burst.unwrap_or(r.count), share))
    }

    /// This replica's share of the rate (while the shared store is out).
    pub fn take_share(&self, share: u32) -> Result<(), Failure> {
        match self.params(share) {
            Some(p) => self.share.take(p).map_err(|w| Failure::RateLimited { retry_after: retry_after(w) }),
            None => Ok(()),
        }
    }
}

/// The limiters of each service, by its index in `Policy::services` (`None`: no limits).
pub type Limiters = Vec<Option<Arc<ServiceLimits>>>;

/// The limiters for `specs` (one per service, in order), keeping from `previous` those whose
/// service and settings are unchanged.
pub fn build(specs: &[(Arc<str>, Option<LimitSpec>)], previous: Option<&Limiters>) -> Limiters {
    let before: HashMap<&str, &Arc<ServiceLimits>> =
        previous.into_iter().flatten().flatten().map(|l| (&*l.name, l)).collect();
    specs
        .iter()
        .map(|(name, spec)| {
            let spec = (*spec)?;
            let kept = before.get(&**name).filter(|l| l.spec == spec).map(|l| (*l).clone());
            Some(kept.unwrap_or_else(|| Arc::new(ServiceLimits::new(name.clone(), spec))))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn a_burst_then_the_rate_and_a_cap_on_calls_in_flight() {
        let spec = LimitSpec {
            rate: Some(Rate { count: nz(1), per: Duration::from_secs(60) }),
            burst: Some(nz(3)),
            concurrency: None,
            priority: Priority::Normal,
        };
        let l = ServiceLimits::new("a".into(), spec);
        for _ in 0..3 {
            assert!(l.take().is_ok());
        }
        match l.take() {
            Err(Failure::RateLimited { retry_after }) => {
                assert!((1..=60).contains(&retry_after), "{retry_after}")
            }
            other => panic!("{other:?}"),
        }
        let spec =
            LimitSpec { rate: None, burst: None, concurrency: Some(nz(1)), priority: Priority::Normal };
        let l = ServiceLimits::new("a".into(), spec);
        let held = l.hold().unwrap();
        assert!(matches!(l.hold(), Err(Failure::ConcurrencyLimited)));
        drop(held);
        assert!(l.hold().is_ok());
    }

    #[test]
    fn a_share_is_kept_apart_from_the_whole() {
        let spec = LimitSpec {
            rate: Some(Rate { count: nz(4), per: Duration::from_secs(60) }),
            ..Default::default()
        };
        let l = ServiceLimits::new("a".into(), spec);
        assert_eq!((0..9).filter(|_| l.take_share(2).is_ok()).count(), 2, "half the burst of 4");
        assert_eq!((0..9).filter(|_| l.take().is_ok()).count(), 4, "the whole burst, untouched");
    }

    #[test]
    fn a_reload_keeps_unchanged_limiters() {
        let spec = LimitSpec { concurrency: NonZeroU32::new(2), ..Default::default() };
        let first = build(&[("a".into(), Some(spec)), ("b".into(), Some(spec))], None);
        let changed = LimitSpec { concurrency: NonZeroU32::new(3), ..spec };
        // Reordered, one changed, one without limits now.
        let second =
            build(&[("b".into(), Some(changed)), ("c".into(), None), ("a".into(), Some(spec))], Some(&first));
        let (a1, b1) = (first[0].as_ref().unwrap(), first[1].as_ref().unwrap());
        assert!(Arc::ptr_eq(a1, second[2].as_ref().unwrap()));
        assert!(!Arc::ptr_eq(b1, second[0].as_ref().unwrap()));
        assert!(second[1].is_none());
    }
}
