//! Fair shares: each service's own `rate` and `concurrency` (`service`), one budget toward
//! the payments API spent by priority (`budget`), and, with `[ratelimit] redis`, the rates
//! kept in Redis so that every replica enforces the same ones (`store`).

mod budget;
mod error;
mod gcra;
mod service;
mod store;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

pub use budget::{Budget, BudgetSpec, Priority};
pub use error::LimitsError;
pub use service::{LimitSpec, Limiters, ServiceLimits};
pub use store::{OnRedisError, Store, StoreSpec};

use crate::policy::Failure;
use gcra::retry_after;
use store::Taken;

/// `count` calls per `per`: `"20/s"`, `"600/m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, LimitsError> {
        let bad = || LimitsError::NotARate { text: text.to_string() };
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
            return Err(LimitsError::TooFast { text: text.to_string() });
        }
        Ok(Rate { count, per })
    }
}

/// Every limit a snapshot enforces. Kept across a reload where settings are unchanged.
#[derive(Debug, Default)]
pub struct RateLimits {
    /// Each service's `rate`, `concurrency` and `priority`, by its index.
    pub services: Limiters,
    pub budget: Option<Arc<Budget>>,
    pub store: Option<Arc<Store>>,
}

impl RateLimits {
    /// Admit one call of `service`: a place among its calls in flight (held until the answer
    /// has ended), then its rate and the shared budget, in Redis when there is one.
    pub async fn admit(&self, service: usize) -> Result<Option<OwnedSemaphorePermit>, Failure> {
        let limits = self.services.get(service).and_then(Option::as_ref);
        let permit = match limits {
            Some(l) => l.hold()?,
            None => None,
        };
        let priority = limits.map_or(Priority::Normal, |l| l.spec.priority);
        let rated = limits.is_some_and(|l| l.spec.rate.is_some());
        if !rated && self.budget.is_none() {
            return Ok(permit);
        }
        match &self.store {
            None => {
                if let Some(l) = limits {
                    l.take()?;
                }
                self.take_budget(priority, 1)?;
            }
            Some(store) if store.is_up() => {
                let mut checks = Vec::with_capacity(2);
                if let Some(p) = limits.and_then(|l| l.params(1)) {
                    checks.push((store.key(&format!("rate:{}", limits.map_or("", |l| &*l.name))), p));
                }
                if let Some(b) = &self.budget {
                    checks.push((store.key("budget"), b.params(priority, 1)));
                }
                match store.take(&checks).await {
                    Ok(Taken::Admitted) => {}
                    Ok(Taken::Refused(i, wait)) => {
                        let retry_after = retry_after(wait);
                        return Err(match (i, rated) {
                            (0, true) => Failure::RateLimited { retry_after },
                            _ => Failure::BudgetLimited { retry_after, priority: priority.name() },
                        });
                    }
                    Err(()) => self.without_store(store, limits, priority)?,
                }
            }
            Some(store) => self.without_store(store, limits, priority)?,
        }
        Ok(permit)
    }

    /// `on_redis_error`, while the store is out.
    fn without_store(
        &self,
        store: &Store,
        limits: Option<&Arc<ServiceLimits>>,
        p: Priority,
    ) -> Result<(), Failure> {
        match store.spec.on_error {
            OnRedisError::Allow => Ok(()),
            OnRedisError::Deny => Err(Failure::RateLimitUnavailable),
            OnRedisError::Local => {
                let share = store.replicas();
                if let Some(l) = limits {
                    l.take_share(share)?;
                }
                self.take_budget(p, share)
            }
        }
    }

    fn take_budget(&self, priority: Priority, share: u32) -> Result<(), Failure> {
        match &self.budget {
            Some(b) => b.take(priority, share).map_err(|w| Failure::BudgetLimited {
                retry_after: retry_after(w),
                priority: priority.name(),
            }),
            None => Ok(()),
        }
    }
}

/// What a configuration asks for: per-service specs, the budget, the store.
pub struct Plan<'a> {
    pub services: &'a [(Arc<str>, Option<LimitSpec>)],
    pub budget: Option<BudgetSpec>,
    pub store: Option<StoreSpec>,
}

/// The limits for `plan`, keeping from `previous` what is configured the same: a reload
/// neither refills a spent budget nor forgets the calls in flight, nor reconnects to Redis.
pub async fn build(plan: Plan<'_>, previous: Option<&RateLimits>) -> Result<RateLimits, LimitsError> {
    let services = service::build(plan.services, previous.map(|p| &p.services));
    let kept_budget = previous.and_then(|p| p.budget.clone()).filter(|b| Some(b.spec) == plan.budget);
    let budget = plan.budget.map(|spec| kept_budget.unwrap_or_else(|| Arc::new(Budget::new(spec))));
    let store = match plan.store {
        None => None,
        Some(spec) => match previous.and_then(|p| p.store.clone()).filter(|s| s.spec == spec) {
            Some(kept) => Some(kept),
            None => Some(Store::start(spec).await?),
        },
    };
    Ok(RateLimits { services, budget, store })
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
}
