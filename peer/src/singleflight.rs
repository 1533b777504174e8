//! One call at a time per key: concurrent callers of the same key share the first one's
//! answer instead of each asking. A thousand clients asking for one blob at once would
//! otherwise send a thousand identical `HEAD`s upstream.
//!
//! Nothing is remembered once the call has answered (that is the caller's cache, with its own
//! lifetime). A caller that goes away mid-call (a client disconnecting) does not fail the
//! others: the next waiter makes the call itself.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

pub struct SingleFlight<K, V> {
    calls: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            calls: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// The answer of `call` for `key`, made once for all callers waiting on `key` together.
    pub async fn run<F, Fut>(&self, key: K, call: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self.calls.lock().entry(key.clone()).or_default().clone();
        let answer = cell.get_or_init(call).await.clone();
        let mut calls = self.calls.lock();
        if calls.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            calls.remove(&key);
        }
        answer
    }

    /// Calls in progress (for tests).
    pub fn in_flight(&self) -> usize {
        self.calls.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_call_and_later_ones_call_again() {
        let flights = Arc::new(SingleFlight::<u8, u32>::default());
        let calls = Arc::new(AtomicU32::new(0));
        let ask = |flights: Arc<SingleFlight<u8, u32>>, calls: Arc<AtomicU32>| async move {
            flights
                .run(1, || async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    calls.fetch_add(1, Ordering::SeqCst) + 1
                })
                .await
        };
        let waiters: Vec<_> = (0..10)
            .map(|_| tokio::spawn(ask(flights.clone(), calls.clone())))
            .collect();
        for w in waiters {
            assert_eq!(w.await.unwrap(), 1);
        }
        assert_eq!(flights.in_flight(), 0);
        assert_eq!(ask(flights.clone(), calls.clone()).await, 2);
    }

    #[tokio::test]
    async fn a_caller_going_away_hands_the_call_to_the_next() {
        let flights = Arc::new(SingleFlight::<u8, &'static str>::default());
        let first = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run(1, std::future::pending::<&'static str>).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let second = {
            let flights = flights.clone();
            tokio::spawn(async move { flights.run(1, || async { "second" }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.abort();
        let answer = tokio::time::timeout(Duration::from_secs(5), second).await;
        assert_eq!(answer.unwrap().unwrap(), "second");
    }
}
