//! Who gets a connection, and what a caller that has proven nothing may hold.
//!
//! A connection is *unproven* until one of its requests passes the token (and client
//! certificate) checks. Unproven connections get a bounded share of everything a flood could
//! take, and proven ones keep the rest:
//!
//! - at most `limits.max_connections` open (past it, new connections wait in the kernel's
//!   backlog) and `limits.max_connections_per_ip` from one address (past it, closed at once);
//! - at most `limits.max_unproven_connections` unproven ones in all: past it, a newcomer from
//!   an address that holds fewer than the busiest takes the place of that address's oldest
//!   unproven connection, and any other is closed at once. A flood from many addresses settles
//!   at equal shares, and a caller from a quiet address always gets in; at most
//!   `limits.max_unproven_per_ip` from one address (past it, closed at once);
//! - TLS handshake turns (`limits.max_handshakes`, `limits.max_handshakes_per_ip`), taken only
//!   once a whole ClientHello has arrived (`listener`), shared the same way: with every turn
//!   taken, a newcomer takes the oldest turn of an address that holds more than its own.
//!
//! An IPv6 address counts with the rest of its /64, which one host may hold whole. Limits are
//! read from the snapshot serving at the time, so a reload changes them; connections already
//! open keep what they have.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use foldhash::HashMap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use crate::control::metrics::AdmissionMetrics;
use crate::control::snapshot::Limits;
use crate::policy::identity::address_key;

#[derive(Debug)]
pub struct Admission {
    metrics: AdmissionMetrics,
    open: Arc<Open>,
    table: Mutex<Table>,
    turn_free: Notify,
}

/// The connections open on both ports together (`limits.max_connections` counts them all),
/// and a wake-up for the accept loops waiting for one to close. Its own count, not the
/// metric's: a gauge is for reading, not for deciding.
#[derive(Debug, Default)]
pub struct Open {
    count: AtomicUsize,
    closed: Notify,
}

/// An unproven connection or a handshake in progress, in its address's queue, oldest first.
#[derive(Debug)]
struct Held {
    id: u64,
    evict: CancellationToken,
}

#[derive(Debug, Default)]
struct Table {
    /// Open connections per address.
    connections: HashMap<IpAddr, usize>,
    /// Unproven connections per address (only addresses that have some).
    unproven: HashMap<IpAddr, VecDeque<Held>>,
    unproven_total: usize,
    /// Handshakes holding a turn, per address (only addresses that have some).
    turns: HashMap<IpAddr, VecDeque<Held>>,
    turns_total: usize,
    next_id: u64,
}

impl Table {
    /// Take `id` out of `ip`'s queue in `map`, if it is there; whether it was.
    fn remove(map: &mut HashMap<IpAddr, VecDeque<Held>>, ip: IpAddr, id: u64) -> bool {
        let Some(queue) = map.get_mut(&ip) else { return false };
        let Some(at) = queue.iter().position(|h| h.id == id) else { return false };
        queue.remove(at);
        if queue.is_empty() {
            map.remove(&ip);
        }
        true
    }

    /// The oldest entry of the address that holds the most in `map` (if it holds more than
    /// `more_than`), taken out of its queue and told to go.
    fn evict_busiest(map: &mut HashMap<IpAddr, VecDeque<Held>>, more_than: usize) -> bool {
        let busiest = map.iter().max_by_key(|(_, q)| q.len()).filter(|(_, q)| q.len() > more_than);
        let Some((&ip, _)) = busiest else { return false };
        let queue = map.get_mut(&ip).expect("just found");
        let held = queue.pop_front().expect("queues in the map are not empty");
        if queue.is_empty() {
            map.remove(&ip);
        }
        held.evict.cancel();
        true
    }
}

impl Admission {
    pub fn new(metrics: AdmissionMetrics, open: Arc<Open>) -> Admission {
        Admission { metrics, open, table: Mutex::default(), turn_free: Notify::new() }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn open(&self) -> usize {
        self.open.count.load(Ordering::Relaxed)
    }

    /// Until fewer than `max` connections are open (on both ports).
    pub async fn room(&self, max: usize) {
        loop {
            // Listening before looking: a close between the two still wakes this.
            let closed = self.open.closed.notified();
            let mut closed = std::pin::pin!(closed);
            closed.as_mut().enable();
            if self.open() < max {
                return;
            }
            closed.await;
        }
    }

    /// Count a new, unproven connection from `ip`, unless that address already has
    /// `max_connections_per_ip` or `max_unproven_per_ip`; with `unproven_cap` unproven
    /// connections open, the busiest address's oldest is evicted for it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, limits: &Limits, unproven_cap: usize) -> Option<Connection> {
        let ip = address_key(ip);
        let mut t = self.table();
        let open = t.connections.get(&ip).copied().unwrap_or(0);
        let unproven = t.unproven.get(&ip).map_or(0, VecDeque::len);
        let refuse = |t: std::sync::MutexGuard<'_, Table>| {
            drop(t);
            self.metrics.refused_per_ip.inc();
            None
        };
        if open >= limits.max_connections_per_ip || unproven >= limits.max_unproven_per_ip {
            return refuse(t);
        }
        // With the unproven share full, an address holding fewer than the busiest (by two or
        // more) takes the busiest's oldest place; any other newcomer is closed at once, before
        // any TLS: a flood from many addresses settles at equal shares instead of churning.
        if t.unproven_total >= unproven_cap {
            if !Table::evict_busiest(&mut t.unproven, unproven + 1) {
                return refuse(t);
            }
            t.unproven_total -= 1;
            self.metrics.unproven.dec();
            self.metrics.evicted.inc();
        }
        t.next_id += 1;
        let (id, evict) = (t.next_id, CancellationToken::new());
        *t.connections.entry(ip).or_default() += 1;
        t.unproven.entry(ip).or_default().push_back(Held { id, evict: evict.clone() });
        t.unproven_total += 1;
        drop(t);
        self.open.count.fetch_add(1, Ordering::Relaxed);
        self.metrics.open.inc();
        self.metrics.unproven.inc();
        Some(Connection {
            admission: self.clone(),
            ip,
            id,
            evict,
            proven: AtomicBool::new(false),
            proved: CancellationToken::new(),
            refusals: AtomicU32::new(0),
            activity: AtomicU64::new(0),
        })
    }

    /// A turn to handshake, for a connection whose ClientHello has arrived: one of its
    /// address's `max_handshakes_per_ip`, and of the `max_handshakes` in all. With every turn
    /// taken, an address holding more turns than this one (plus the one it asks for) gives up
    /// its oldest; otherwise this waits for one to end.
    async fn handshake(self: &Arc<Self>, conn: &Connection, limits: &Limits) -> Handshake {
        loop {
            let freed = self.turn_free.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut t = self.table();
                let own = t.turns.get(&conn.ip).map_or(0, VecDeque::len);
                let room = own < limits.max_handshakes_per_ip
                    && (t.turns_total < limits.max_handshakes || Table::evict_busiest(&mut t.turns, own + 1));
                if room {
                    if t.turns_total >= limits.max_handshakes {
                        t.turns_total -= 1;
                        self.metrics.evicted.inc();
                    }
                    // A proven connection (a tunnel opened with a good Proxy-Authorization) is
                    // never closed: its turn may be taken, not the connection.
                    let evict = if conn.is_proven() { CancellationToken::new() } else { conn.evict.clone() };
                    t.turns.entry(conn.ip).or_default().push_back(Held { id: conn.id, evict });
                    t.turns_total += 1;
                    return Handshake { admission: self.clone(), ip: conn.ip, id: conn.id };
                }
            }
            freed.await;
        }
    }
}

/// How watching an unproven connection ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Unproven {
    /// Nothing more to watch.
    Proven,
    /// To be closed now, and why.
    Closed(&'static str),
}

/// An open connection, counted until dropped.
pub struct Connection {
    admission: Arc<Admission>,
    ip: IpAddr,
    id: u64,
    /// Cancelled to close the connection at once: evicted while unproven, or unproven and
    /// idle or refused too often (`listener::guarded`).
    pub evict: CancellationToken,
    proven: AtomicBool,
    /// Cancelled when it is proven: its watch (`watch_unproven`) ends.
    proved: CancellationToken,
    /// Requests refused on this connection while it was unproven.
    refusals: AtomicU32,
    /// Bumped by each request and the handshake's end: what `timeouts.unproven_idle` watches.
    activity: AtomicU64,
}

impl Connection {
    /// One of its requests passed the token checks: from now on it holds no unproven place,
    /// and nothing evicts it.
    pub fn prove(&self) {
        if self.proven.swap(true, Ordering::AcqRel) {
            return;
        }
        self.proved.cancel();
        let a = &self.admission;
        let mut t = a.table();
        if Table::remove(&mut t.unproven, self.ip, self.id) {
            t.unproven_total -= 1;
            a.metrics.unproven.dec();
        }
    }

    /// A turn to handshake (see [`Admission::handshake`]).
    pub async fn turn(&self, limits: &Limits) -> Handshake {
        self.admission.handshake(self, limits).await
    }

    pub fn is_proven(&self) -> bool {
        self.proven.load(Ordering::Acquire)
    }

    /// A request refused while unproven: how many this connection has had.
    pub fn refused(&self) -> u32 {
        self.refusals.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Something happened on the connection (a request, a finished handshake).
    pub fn active(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }

    /// Watch the connection while it is unproven: `Proven` as soon as it is, `Closed` once it
    /// has been evicted, or quiet for a whole `every` (no request began and no handshake ended
    /// in it).
    pub async fn watch_unproven(&self, every: std::time::Duration) -> Unproven {
        let idle = async {
            let mut seen = self.activity.load(Ordering::Relaxed);
            loop {
                tokio::time::sleep(every).await;
                let now = self.activity.load(Ordering::Relaxed);
                if now == seen {
                    return;
                }
                seen = now;
            }
        };
        tokio::select! {
            _ = self.proved.cancelled() => Unproven::Proven,
            _ = self.evict.cancelled() => Unproven::Closed("unproven connection evicted"),
            _ = idle => Unproven::Closed("unproven connection idle (timeouts.unproven_idle)"),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let a = &self.admission;
        let mut t = a.table();
        if let Some(n) = t.connections.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.connections.remove(&self.ip);
            }
        }
        if Table::remove(&mut t.unproven, self.ip, self.id) {
            t.unproven_total -= 1;
            a.metrics.unproven.dec();
        }
        drop(t);
        a.open.count.fetch_sub(1, Ordering::Relaxed);
        a.metrics.open.dec();
        // Both ports' accept loops may wait for room.
        a.open.closed.notify_waiters();
    }
}

/// A handshake holding a turn.
pub struct Handshake {
    admission: Arc<Admission>,
    ip: IpAddr,
    id: u64,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let a = &self.admission;
        let mut t = a.table();
        // Not there if it was evicted (its turn already went to another).
        if Table::remove(&mut t.turns, self.ip, self.id) {
            t.turns_total -= 1;
        }
        drop(t);
        a.turn_free.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn admission() -> Arc<Admission> {
        Arc::new(Admission::new(AdmissionMetrics::default(), Arc::default()))
    }

    fn limits(
        per_ip: usize,
        unproven: usize,
        unproven_per_ip: usize,
        turns: usize,
        turns_per_ip: usize,
    ) -> Limits {
        Limits {
            max_connections_per_ip: per_ip,
            max_unproven_connections: unproven,
            max_unproven_per_ip: unproven_per_ip,
            max_handshakes: turns,
            max_handshakes_per_ip: turns_per_ip,
            ..crate::control::config::validate::limits(&Default::default())
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn an_address_gets_its_share_and_the_count_returns_on_close() {
        let a = admission();
        let l = limits(3, 100, 100, 8, 8);
        let held: Vec<_> = (0..3).map(|_| a.admit(ip(2), &l, l.max_unproven_connections).unwrap()).collect();
        assert!(a.admit(ip(2), &l, l.max_unproven_connections).is_none(), "a fourth from the same address");
        assert!(a.admit(ip(3), &l, l.max_unproven_connections).is_some(), "another address is not held up");
        assert_eq!(a.metrics.refused_per_ip.get(), 1);
        drop(held);
        assert_eq!(a.open(), 0);
        let t = a.table();
        assert!(t.connections.is_empty() && t.unproven.is_empty(), "nothing left behind per address");
        drop(t);
        assert!(a.admit(ip(2), &l, l.max_unproven_connections).is_some());
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64() {
        let a = admission();
        let l = limits(1, 100, 100, 8, 8);
        let _first = a.admit("2001:db8::1".parse().unwrap(), &l, 100).unwrap();
        assert!(a.admit("2001:db8::ffff:2".parse().unwrap(), &l, 100).is_none(), "same /64");
        assert!(a.admit("2001:db8:0:1::1".parse().unwrap(), &l, 100).is_some(), "another /64");
    }

    #[test]
    fn past_the_unproven_share_the_busiest_address_makes_room_and_proven_ones_stay() {
        let a = admission();
        let l = limits(100, 4, 3, 8, 8);
        let flood: Vec<_> = (0..3).map(|_| a.admit(ip(2), &l, l.max_unproven_connections).unwrap()).collect();
        assert!(a.admit(ip(2), &l, l.max_unproven_connections).is_none(), "past max_unproven_per_ip");
        let other = a.admit(ip(3), &l, l.max_unproven_connections).unwrap();
        other.prove();
        let late = a.admit(ip(4), &l, l.max_unproven_connections).unwrap();
        assert!(flood.iter().all(|c| !c.evict.is_cancelled()), "proving freed a place");
        let newcomer = a.admit(ip(5), &l, l.max_unproven_connections).unwrap();
        assert!(flood[0].evict.is_cancelled(), "the busiest address's oldest went");
        assert!(
            !flood[1].evict.is_cancelled() && !late.evict.is_cancelled() && !newcomer.evict.is_cancelled()
        );
        assert!(!other.evict.is_cancelled(), "a proven connection is never evicted");
        assert!(a.admit(ip(4), &l, 4).is_none(), "shares are even (2, 1, 1): no eviction, closed at once");
        assert_eq!((a.table().unproven_total, a.metrics.unproven.get()), (4, 4));
        drop(flood);
        assert_eq!((a.table().unproven_total, a.metrics.unproven.get(), a.open()), (2, 2, 3));
    }

    #[tokio::test]
    async fn with_every_turn_taken_a_busier_address_gives_one_up() {
        let a = admission();
        let l = limits(100, 100, 100, 2, 2);
        let (c1, c2, c3, c4) = (
            a.admit(ip(2), &l, l.max_unproven_connections).unwrap(),
            a.admit(ip(2), &l, l.max_unproven_connections).unwrap(),
            a.admit(ip(3), &l, l.max_unproven_connections).unwrap(),
            a.admit(ip(3), &l, l.max_unproven_connections).unwrap(),
        );
        let first = a.handshake(&c1, &l).await;
        let _second = a.handshake(&c2, &l).await;
        // 127.0.0.2 holds both turns; 127.0.0.3 (none) takes the older.
        let _third = tokio::time::timeout(Duration::from_secs(1), a.handshake(&c3, &l)).await.unwrap();
        assert!(c1.evict.is_cancelled() && !c2.evict.is_cancelled());
        // Now one each: the next from 127.0.0.3 waits for a turn to end.
        let fourth = tokio::spawn({
            let a = a.clone();
            async move {
                let _turn = a.handshake(&c4, &l).await;
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!fourth.is_finished(), "equal shares: it waits");
        drop(first); // evicted already: ending it frees nothing more
        drop(_second);
        tokio::time::timeout(Duration::from_secs(1), fourth).await.unwrap().unwrap();
    }
}
