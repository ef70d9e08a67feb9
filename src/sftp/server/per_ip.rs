//! Connections per source address that have not authenticated yet: one address may not
//! hold every connection slot with half-open handshakes while real hosts wait. A slot is
//! taken at accept and given back when the connection authenticates or ends, so many
//! hosts behind one NAT address are limited only while they log in.
//!
//! Hand-written: a count per address under a mutex, with a guard that gives the slot back;
//! connection-limit crates count connections, none counts "not logged in yet".

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The counts, shared by the accept loop and every connection.
#[derive(Debug)]
pub(crate) struct PerIp {
    limit: usize,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One unauthenticated connection of an address; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Slot {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    pub(crate) fn new(limit: usize) -> Arc<PerIp> {
        Arc::new(PerIp {
            limit,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `ip`, or `None` when it already holds `limit` unauthenticated connections.
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut counts = match self.counts.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot {
            owner: self.clone(),
            ip,
        })
    }

    /// Unauthenticated connections of `ip` now.
    #[cfg(test)]
    fn count(&self, ip: IpAddr) -> usize {
        match self.counts.lock() {
            Ok(g) => g.get(&ip).copied().unwrap_or(0),
            Err(poisoned) => poisoned.into_inner().get(&ip).copied().unwrap_or(0),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = match self.owner.counts.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_its_own_limit_and_slots_come_back() {
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let per_ip = PerIp::new(2);
        let a1 = per_ip.try_acquire(a);
        let a2 = per_ip.try_acquire(a);
        assert!(a1.is_some() && a2.is_some());
        assert!(per_ip.try_acquire(a).is_none(), "a third from one address");
        assert!(
            per_ip.try_acquire(b).is_some(),
            "another address is not affected"
        );
        drop(a1);
        assert_eq!(per_ip.count(a), 1);
        let a3 = per_ip.try_acquire(a);
        assert!(a3.is_some(), "a freed slot is reused");
        drop((a2, a3));
        assert_eq!(per_ip.count(a), 0);
        assert!(
            per_ip.counts.lock().map(|c| c.is_empty()).unwrap_or(false),
            "addresses without connections are forgotten"
        );
    }
}
