//! Who gets a connection: at most `limits.max_connections` open (past it, new connections
//! wait in the kernel's backlog), at most `limits.max_connections_per_ip` from one address
//! (past it, a new one is closed at once), and at most `limits.max_handshakes` TLS handshakes
//! at a time, `limits.max_handshakes_per_ip` of them from one address (past them, a handshake
//! waits for a turn, within its timeout): one address with many silent connections cannot
//! take every turn. An IPv6 address counts with the rest of its /64, which one host may hold
//! whole. Limits are read from the snapshot serving at the time, so a reload changes them;
//! established connections keep working whatever the limits become.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::policy::identity::address_key;

#[derive(Debug)]
pub struct Admission {
    /// Open connections: the metric is the count.
    open: Gauge,
    closed: Notify,
    per_ip: Mutex<HashMap<IpAddr, PerIp>>,
    handshaking: AtomicUsize,
    handshake_done: Notify,
    /// Connections closed at once because their address had too many.
    refused_per_ip: Counter,
}

#[derive(Debug)]
struct PerIp {
    connections: usize,
    /// This address's handshake turns, and how many there are.
    handshakes: Arc<Semaphore>,
    turns: usize,
}

impl Admission {
    pub fn new(open: Gauge, refused_per_ip: Counter) -> Admission {
        Admission {
            open,
            closed: Notify::new(),
            per_ip: Mutex::default(),
            handshaking: AtomicUsize::new(0),
            handshake_done: Notify::new(),
            refused_per_ip,
        }
    }

    pub fn open(&self) -> usize {
        self.open.get().max(0) as usize
    }

    /// Until fewer than `max` connections are open.
    pub async fn room(&self, max: usize) {
        while self.open() >= max {
            self.closed.notified().await;
        }
    }

    /// Count a new connection from `ip`, unless that address already has `max_per_ip`; its
    /// handshake will take one of the address's `handshakes_per_ip` turns.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_per_ip: usize,
        handshakes_per_ip: usize,
    ) -> Option<Connection> {
        let ip = address_key(ip);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let turns = handshakes_per_ip.max(1);
        let entry = per_ip.entry(ip).or_insert_with(|| PerIp {
            connections: 0,
            handshakes: Arc::new(Semaphore::new(turns)),
            turns,
        });
        // A reload changed the limit: new connections take turns from a new set (those
        // handshaking keep theirs until done).
        if entry.turns != turns {
            (entry.handshakes, entry.turns) = (Arc::new(Semaphore::new(turns)), turns);
        }
        if entry.connections >= max_per_ip {
            drop(per_ip);
            self.refused_per_ip.inc();
            return None;
        }
        entry.connections += 1;
        let turns = entry.handshakes.clone();
        self.open.inc();
        Some(Connection { admission: self.clone(), ip, turns })
    }

    /// A turn to handshake: one of the address's, then one of the `max` in all.
    pub async fn handshake(self: &Arc<Self>, conn: &Connection, max: usize) -> Handshake {
        let own = conn.turns.clone().acquire_owned().await.expect("the semaphore is never closed");
        loop {
            let n = self.handshaking.load(Ordering::Acquire);
            if n < max {
                if self.handshaking.compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    return Handshake { admission: self.clone(), _own: own };
                }
                continue;
            }
            self.handshake_done.notified().await;
        }
    }
}

/// An open connection, counted until dropped.
pub struct Connection {
    admission: Arc<Admission>,
    ip: IpAddr,
    turns: Arc<Semaphore>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        let a = &self.admission;
        let mut per_ip = a.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = per_ip.get_mut(&self.ip) {
            entry.connections -= 1;
            if entry.connections == 0 {
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        a.open.dec();
        // One waiter (the accept loop); a stored permit covers a close just before it waits.
        a.closed.notify_one();
    }
}

/// A handshake in progress.
pub struct Handshake {
    admission: Arc<Admission>,
    _own: OwnedSemaphorePermit,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.admission.handshaking.fetch_sub(1, Ordering::AcqRel);
        self.admission.handshake_done.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn admission() -> Arc<Admission> {
        Arc::new(Admission::new(Gauge::default(), Counter::default()))
    }

    #[test]
    fn an_address_gets_its_share_and_the_count_returns_on_close() {
        let a = admission();
        let (one, two): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let held: Vec<_> = (0..3).map(|_| a.admit(one, 3, 8).unwrap()).collect();
        assert!(a.admit(one, 3, 8).is_none(), "a fourth from the same address");
        assert!(a.admit(two, 3, 8).is_some(), "another address is not held up");
        assert_eq!(a.refused_per_ip.get(), 1);
        drop(held);
        assert_eq!(a.open(), 0);
        assert!(a.per_ip.lock().unwrap().is_empty(), "no entry left behind per address");
        assert!(a.admit(one, 3, 8).is_some());
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64() {
        let a = admission();
        let _first = a.admit("2001:db8::1".parse().unwrap(), 1, 8).unwrap();
        assert!(a.admit("2001:db8::ffff:2".parse().unwrap(), 1, 8).is_none(), "same /64");
        assert!(a.admit("2001:db8:0:1::1".parse().unwrap(), 1, 8).is_some(), "another /64");
    }

    #[tokio::test]
    async fn handshakes_past_either_cap_wait_for_one_to_end() {
        let a = admission();
        let (busy, other): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let (c1, c2, c3) =
            (a.admit(busy, 9, 1).unwrap(), a.admit(busy, 9, 1).unwrap(), a.admit(other, 9, 1).unwrap());
        let first = a.handshake(&c1, 2).await;
        // The busy address has used its one turn; another address still gets one.
        let second = tokio::spawn({
            let a = a.clone();
            async move { a.handshake(&c2, 2).await }
        });
        let third = tokio::time::timeout(Duration::from_secs(5), a.handshake(&c3, 2)).await.unwrap();
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "the address's second handshake waits for its first");
        drop((first, third));
        tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap();
    }
}
