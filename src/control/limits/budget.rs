//! `[ratelimit] upstream_rate`: one budget of calls toward the payments API, shared by every
//! service, spent in order of priority. Each priority may run the budget's debt up to its own
//! part of the burst: as the budget runs low, batch calls are refused first and critical
//! calls last, so checkout keeps working while a backfill runs.

use std::num::NonZeroU32;

use serde::Deserialize;

use super::Rate;
use super::gcra::{Gcra, Params};

/// A service's place in the shared budget (`priority`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// May spend the whole burst: refused only when the budget is spent.
    Critical,
    /// Refused once less than a fifth of the burst is left.
    #[default]
    Normal,
    /// Refused once less than half of the burst is left.
    Batch,
}

impl Priority {
    pub fn name(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Batch => "batch",
        }
    }

    /// This priority's part of the budget's tolerance.
    pub fn params(self, full: Params) -> Params {
        match self {
            Priority::Critical => full,
            Priority::Normal => full.scaled(4, 5),
            Priority::Batch => full.scaled(1, 2),
        }
    }
}

/// `upstream_rate` and `upstream_burst` (default: the rate's count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetSpec {
    pub rate: Rate,
    pub burst: NonZeroU32,
}

/// The budget as this process keeps it: used alone without Redis, and as this replica's share
/// while Redis is out.
#[derive(Debug)]
pub struct Budget {
    pub spec: BudgetSpec,
    cell: Gcra,
    /// The parameters of each priority for one replica alone: the usual case, computed once.
    alone: [Params; 3],
}

impl Budget {
    pub fn new(spec: BudgetSpec) -> Budget {
        let of = |p: Priority| p.params(Params::new(spec.rate, spec.burst, 1));
        let alone = [of(Priority::Critical), of(Priority::Normal), of(Priority::Batch)];
        Budget { spec, cell: Gcra::default(), alone }
    }

    /// The GCRA parameters for a call of `priority`, for one of `share` replicas.
    pub fn params(&self, priority: Priority, share: u32) -> Params {
        match share {
            0 | 1 => self.alone[priority as usize],
            n => priority.params(Params::new(self.spec.rate, self.spec.burst, n)),
        }
    }

    pub fn take(&self, priority: Priority, share: u32) -> Result<(), std::time::Duration> {
        self.cell.take(self.params(priority, share))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn batch_runs_out_first_and_critical_last() {
        let spec = BudgetSpec {
            rate: Rate { count: NonZeroU32::new(10).unwrap(), per: Duration::from_secs(60) },
            burst: NonZeroU32::new(10).unwrap(),
        };
        let b = Budget::new(spec);
        let admitted = |p| (0..20).take_while(|_| b.take(p, 1).is_ok()).count();
        // Debt allowed: batch 4.5 intervals, normal 7.2, critical 9.
        assert_eq!(admitted(Priority::Batch), 5);
        assert_eq!(admitted(Priority::Batch), 0);
        assert_eq!(admitted(Priority::Normal), 3);
        assert_eq!(admitted(Priority::Critical), 2);
        assert_eq!(admitted(Priority::Critical), 0);
    }
}
