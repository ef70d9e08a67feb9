//! Slots counted per key: at most `limit` held at once for each key (a source address, a
//! host), each given back when its guard drops. The binary cache counts connections and NAR
//! streams per address (and per host token) with it; the SFTP server counts unauthenticated
//! connections per address and sessions per host.
//!
//! One `tokio::sync::Semaphore` per key that is in use, kept in a map under a mutex and
//! removed when nobody holds or waits for one of its slots, so that the map holds only the
//! keys active now (an address that came once costs nothing afterwards). Hand-written:
//! limiter crates count requests per time, or one global bound; none gives a per-key bound
//! that can be waited for with a deadline and forgets idle keys.
//!
//! May import: nothing of ours.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of every key, shared by whoever hands them out.
#[derive(Debug)]
pub struct PerKey<K: Hash + Eq + Clone> {
    limit: usize,
    map: Mutex<HashMap<K, Arc<Semaphore>>>,
}

/// One slot of one key; dropping it gives the slot back.
#[derive(Debug)]
pub struct Slot<K: Hash + Eq + Clone> {
    owner: Arc<PerKey<K>>,
    key: K,
    permit: Option<OwnedSemaphorePermit>,
}

impl<K: Hash + Eq + Clone> PerKey<K> {
    /// At most `limit` slots per key (a limit of 0 gives none).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(PerKey {
            limit,
            map: Mutex::new(HashMap::new()),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Arc<Semaphore>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The semaphore of `key`, made when the key is new. Clones are only ever taken here,
    /// under the lock, which is what lets [`Slot`]'s drop tell that nobody else has one.
    fn semaphore(&self, key: &K) -> Arc<Semaphore> {
        self.lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limit)))
            .clone()
    }

    /// A slot of `key` now, or `None` when the key holds `limit` already.
    pub fn try_acquire(self: &Arc<Self>, key: K) -> Option<Slot<K>> {
        let semaphore = self.semaphore(&key);
        let permit = semaphore.try_acquire_owned().ok();
        self.slot_or_forget(key, permit)
    }

    /// A slot of `key`, waiting at most `wait` for one to be given back.
    pub async fn acquire_within(self: &Arc<Self>, key: K, wait: Duration) -> Option<Slot<K>> {
        let semaphore = self.semaphore(&key);
        let permit = tokio::time::timeout(wait, semaphore.acquire_owned())
            .await
            .ok()
            .and_then(Result::ok);
        self.slot_or_forget(key, permit)
    }

    fn slot_or_forget(
        self: &Arc<Self>,
        key: K,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Option<Slot<K>> {
        match permit {
            Some(permit) => Some(Slot {
                owner: self.clone(),
                key,
                permit: Some(permit),
            }),
            None => {
                self.forget_if_idle(&key);
                None
            }
        }
    }

    /// Removes `key` when no slot of it is held or waited for (only the map's reference is
    /// left: every holder and waiter keeps a clone of the semaphore).
    fn forget_if_idle(&self, key: &K) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|s| Arc::strong_count(s) == 1) {
            map.remove(key);
        }
    }

    /// Slots of `key` held now.
    pub fn held(&self, key: &K) -> usize {
        self.lock()
            .get(key)
            .map_or(0, |s| self.limit.saturating_sub(s.available_permits()))
    }

    /// Keys with a slot held or waited for now.
    pub fn active_keys(&self) -> usize {
        self.lock().len()
    }
}

impl<K: Hash + Eq + Clone> Slot<K> {
    pub fn key(&self) -> &K {
        &self.key
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        // The permit (and its clone of the semaphore) goes first, so that an idle key is
        // seen as idle.
        drop(self.permit.take());
        self.owner.forget_if_idle(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[tokio::test]
    async fn each_key_gets_its_own_limit_and_slots_come_back() {
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let slots = PerKey::new(2);
        let a1 = slots.try_acquire(a);
        let a2 = slots.try_acquire(a);
        assert!(a1.is_some() && a2.is_some());
        assert!(slots.try_acquire(a).is_none(), "a third for one key");
        assert!(
            slots.try_acquire(b).is_some(),
            "another key is not affected"
        );
        drop(a1);
        assert_eq!(slots.held(&a), 1);
        let a3 = slots.try_acquire(a);
        assert!(a3.is_some(), "a freed slot is reused");
        drop((a2, a3));
        assert_eq!(slots.held(&a), 0);
        assert_eq!(slots.active_keys(), 0, "keys without slots are forgotten");
    }

    #[tokio::test]
    async fn a_waiter_gets_the_slot_given_back_or_gives_up_at_its_deadline() {
        let slots = PerKey::new(1);
        let held = slots.try_acquire("web1").unwrap();
        let gave_up = slots
            .acquire_within("web1", Duration::from_millis(50))
            .await;
        assert!(gave_up.is_none());
        assert_eq!(slots.held(&"web1"), 1, "a waiter that gave up took nothing");

        let waiter = {
            let slots = slots.clone();
            tokio::spawn(async move {
                slots
                    .acquire_within("web1", Duration::from_secs(20))
                    .await
                    .is_some()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(slots.active_keys(), 1, "a waiting key is kept");
        drop(held);
        assert!(
            waiter.await.unwrap(),
            "the slot given back went to the waiter"
        );
        assert_eq!(slots.active_keys(), 0);
    }

    #[test]
    fn a_limit_of_zero_gives_nothing() {
        let slots = PerKey::new(0);
        assert!(slots.try_acquire(1u8).is_none());
        assert_eq!(slots.active_keys(), 0);
    }
}
