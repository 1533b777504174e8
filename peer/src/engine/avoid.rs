//! The parents one download gives up on: for the rest of the download when they cannot be
//! reached or lied, for a while when they stalled (a parent that hung may come back, and a
//! false alarm on a loaded machine should not cost a good parent for good). The list goes
//! with every schedule request, so the supernode does not offer them meanwhile.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use shoal_common::api::PeerId;
use tokio::sync::watch;

/// How long a parent that stalled is not asked again by this download; as long as the
/// supernode keeps a parent reported by several children out of scheduling.
pub(super) const STALLED_FOR: Duration = Duration::from_secs(30);
/// How long a parent whose relay went silent is not asked again: briefly, since the silence
/// may be the origin's ([`crate::error::ParentFault::RelayStalled`]).
pub(super) const RELAY_STALLED_FOR: Duration = Duration::from_secs(5);

pub(crate) struct Avoid {
    map: Mutex<HashMap<PeerId, Option<Instant>>>,
    /// Bumped on every addition, for fetches waiting to learn that their parent is avoided.
    added: watch::Sender<u64>,
}

impl Default for Avoid {
    fn default() -> Self {
        Avoid {
            map: Mutex::new(HashMap::new()),
            added: watch::Sender::new(0),
        }
    }
}

impl Avoid {
    /// Avoids `peer` for the rest of the download.
    pub fn always(&self, peer: &PeerId) {
        self.map.lock().insert(peer.clone(), None);
        self.added.send_modify(|n| *n += 1);
    }

    /// Avoids `peer`, which served a corrupt piece, for the rest of the download, without
    /// giving up the fetches from it still running: each checks its own bytes, and each bad
    /// piece reported is a strike against the parent at the supernode (three blacklist it,
    /// and only then do the pieces it holds go to others or the origin).
    pub fn liar(&self, peer: &PeerId) {
        self.map.lock().insert(peer.clone(), None);
    }

    /// Avoids `peer` for `d` (unless it is avoided for good already).
    pub fn for_a_while(&self, peer: &PeerId, d: Duration) {
        let until = Instant::now() + d;
        let mut map = self.map.lock();
        let entry = map.entry(peer.clone()).or_insert(Some(until));
        if let Some(t) = entry {
            *t = (*t).max(until);
        }
        drop(map);
        self.added.send_modify(|n| *n += 1);
    }

    /// Returns once `peer` is avoided: another fetch from it failed, so the fetches still
    /// waiting on it are given up too instead of each waiting out its own stall timeout.
    pub async fn until_avoided(&self, peer: &PeerId) {
        let mut added = self.added.subscribe();
        loop {
            if self.contains(peer) {
                return;
            }
            if added.changed().await.is_err() {
                // The sender lives as long as `self`: unreachable while borrowed.
                return std::future::pending().await;
            }
        }
    }

    pub fn contains(&self, peer: &PeerId) -> bool {
        let mut map = self.map.lock();
        match map.get(peer) {
            Some(None) => true,
            Some(Some(until)) if *until > Instant::now() => true,
            Some(Some(_)) => {
                map.remove(peer);
                false
            }
            None => false,
        }
    }

    /// The peers avoided now.
    pub fn list(&self) -> Vec<PeerId> {
        let now = Instant::now();
        let mut map = self.map.lock();
        map.retain(|_, until| until.is_none_or(|t| t > now));
        map.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_parents_are_avoided_for_a_while_and_unreachable_ones_for_good() {
        let avoid = Avoid::default();
        let (a, b) = ("a".to_string(), "b".to_string());
        avoid.always(&a);
        avoid.for_a_while(&a, Duration::ZERO);
        avoid.for_a_while(&b, Duration::from_secs(60));
        assert!(avoid.contains(&a) && avoid.contains(&b));
        avoid.for_a_while(&"c".to_string(), Duration::ZERO);
        let mut list = avoid.list();
        list.sort();
        assert_eq!(list, vec![a, b]);
    }

    #[tokio::test]
    async fn waiting_fetches_learn_that_their_parent_is_avoided() {
        let avoid = std::sync::Arc::new(Avoid::default());
        let p = "p".to_string();
        let waiting = tokio::spawn({
            let (avoid, p) = (avoid.clone(), p.clone());
            async move { avoid.until_avoided(&p).await }
        });
        avoid.for_a_while(&"other".to_string(), Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        avoid.for_a_while(&p, Duration::from_secs(60));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
    }
}
