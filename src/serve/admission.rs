//! Who gets a connection: at most `limits.max_connections` open (past it, new connections
//! wait in the kernel's backlog), at most `limits.max_connections_per_ip` from one address
//! (past it, a new one is closed at once), and at most `limits.max_handshakes` TLS handshakes
//! at a time (past it, a handshake waits, within its timeout). Limits are read from the
//! snapshot serving at the time, so a reload changes them; established connections keep
//! working whatever the limits become.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

#[derive(Debug)]
pub struct Admission {
    /// Open connections: the metric is the count.
    open: Gauge,
    closed: Notify,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    handshaking: AtomicUsize,
    handshake_done: Notify,
    /// Connections closed at once because their address had too many.
    refused_per_ip: Counter,
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

    /// Count a new connection from `ip`, unless that address already has `max_per_ip`.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, max_per_ip: usize) -> Option<Connection> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = per_ip.entry(ip).or_default();
        if *n >= max_per_ip {
            drop(per_ip);
            self.refused_per_ip.inc();
            return None;
        }
        *n += 1;
        self.open.inc();
        Some(Connection { admission: self.clone(), ip })
    }

    /// A turn to handshake, once fewer than `max` are in progress.
    pub async fn handshake(self: &Arc<Self>, max: usize) -> Handshake {
        loop {
            let n = self.handshaking.load(Ordering::Acquire);
            if n < max {
                if self.handshaking.compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    return Handshake(self.clone());
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
}

impl Drop for Connection {
    fn drop(&mut self) {
        let a = &self.admission;
        let mut per_ip = a.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
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
pub struct Handshake(Arc<Admission>);

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.handshaking.fetch_sub(1, Ordering::AcqRel);
        self.0.handshake_done.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_address_gets_its_share_and_the_count_returns_on_close() {
        let a = Arc::new(Admission::new(Gauge::default(), Counter::default()));
        let (one, two): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        let held: Vec<_> = (0..3).map(|_| a.admit(one, 3).unwrap()).collect();
        assert!(a.admit(one, 3).is_none(), "a fourth from the same address");
        assert!(a.admit(two, 3).is_some(), "another address is not held up");
        assert_eq!(a.refused_per_ip.get(), 1);
        drop(held);
        assert_eq!(a.open(), 0);
        assert!(a.per_ip.lock().unwrap().is_empty(), "no entry left behind per address");
        assert!(a.admit(one, 3).is_some());
    }

    #[tokio::test]
    async fn handshakes_past_the_cap_wait_for_one_to_end() {
        let a = Arc::new(Admission::new(Gauge::default(), Counter::default()));
        let first = a.handshake(1).await;
        let waiting = tokio::spawn({
            let a = a.clone();
            async move { a.handshake(1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    }
}
