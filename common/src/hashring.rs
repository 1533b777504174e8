//! Which supernode owns a task when several share the load. Rendezvous (highest-random-weight)
//! hashing: every peer computes the same owner from the same list, and removing one supernode
//! only moves the tasks it owned.

use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone)]
pub struct HashRing<T> {
    members: Vec<(String, T)>,
}

impl<T> HashRing<T> {
    /// `members` are (stable key, value), e.g. (supernode URL, client).
    pub fn new(members: Vec<(String, T)>) -> Self {
        HashRing { members }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn members(&self) -> impl Iterator<Item = &T> {
        self.members.iter().map(|(_, v)| v)
    }

    /// Members ordered by preference for `key`: the owner first, then fail-over order.
    pub fn ranked(&self, key: &str) -> Vec<&T> {
        let mut scored: Vec<([u8; 32], &T)> = self
            .members
            .iter()
            .map(|(name, v)| {
                let mut h = Sha256::new();
                h.update(name.as_bytes());
                h.update([0]);
                h.update(key.as_bytes());
                (h.finalize().into(), v)
            })
            .collect();
        scored.sort_by_key(|s| std::cmp::Reverse(s.0));
        scored.into_iter().map(|(_, v)| v).collect()
    }

    pub fn owner(&self, key: &str) -> Option<&T> {
        self.ranked(key).into_iter().next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_minimal_movement() {
        let names = ["a", "b", "c"];
        let ring = HashRing::new(names.iter().map(|n| (n.to_string(), *n)).collect());
        let ring2 = HashRing::new(names[..2].iter().map(|n| (n.to_string(), *n)).collect());
        let mut counts = [0; 3];
        for i in 0..300 {
            let key = format!("task{i}");
            let o = *ring.owner(&key).unwrap();
            counts[names.iter().position(|n| *n == o).unwrap()] += 1;
            if o != "c" {
                assert_eq!(*ring2.owner(&key).unwrap(), o);
            }
        }
        assert!(counts.iter().all(|c| *c > 50), "{counts:?}");
    }
}
