//! Automatic quarantine (`quarantine = { ip_refusals = 20, within = "5m" }` on a service): a
//! token presented from outside its allowlist that often is suspended, as
//! `POST /-/tokens/{id}/suspend` would, until the next configuration change. Only tokens the
//! configuration knows are counted, each keeping at most `ip_refusals` times: the memory is
//! bounded by the configuration, whatever callers send.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use crate::policy::Quarantine;

/// Recent refusals per (service index, token id), for one configuration version.
#[derive(Debug, Default)]
pub struct Strikes {
    version: Arc<str>,
    times: HashMap<(usize, Arc<str>), VecDeque<Instant>>,
}

impl Strikes {
    /// Count one refusal at `now`; true for the one that reaches the limit (the token is then
    /// suspended, and its count forgotten).
    pub fn strike(
        &mut self,
        version: &Arc<str>,
        key: (usize, Arc<str>),
        q: Quarantine,
        now: Instant,
    ) -> bool {
        if self.version != *version {
            *self = Strikes { version: version.clone(), times: HashMap::new() };
        }
        let times = self.times.entry(key.clone()).or_default();
        while times.front().is_some_and(|t| now.duration_since(*t) >= q.within) {
            times.pop_front();
        }
        times.push_back(now);
        if times.len() < q.refusals as usize {
            return false;
        }
        self.times.remove(&key);
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_nth_refusal_within_the_window_quarantines_and_old_ones_age_out() {
        let q = Quarantine { refusals: 3, within: Duration::from_secs(60) };
        let (v1, v2): (Arc<str>, Arc<str>) = ("v1".into(), "v2".into());
        let key = (0, Arc::<str>::from("t1"));
        let t0 = Instant::now();
        let mut s = Strikes::default();
        assert!(!s.strike(&v1, key.clone(), q, t0));
        assert!(!s.strike(&v1, key.clone(), q, t0 + Duration::from_secs(30)));
        // The first has aged out: two in the window.
        assert!(!s.strike(&v1, key.clone(), q, t0 + Duration::from_secs(61)));
        assert!(!s.strike(&v1, (1, key.1.clone()), q, t0 + Duration::from_secs(62)), "another service's");
        assert!(s.strike(&v1, key.clone(), q, t0 + Duration::from_secs(62)));
        assert!(!s.strike(&v1, key.clone(), q, t0 + Duration::from_secs(63)), "counting begins anew");
        // A new configuration forgets the counts.
        assert!(!s.strike(&v2, key.clone(), q, t0 + Duration::from_secs(64)));
        assert!(!s.strike(&v2, key.clone(), q, t0 + Duration::from_secs(64)));
        assert!(s.strike(&v2, key, q, t0 + Duration::from_secs(64)));
    }
}
