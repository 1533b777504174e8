//! The credentials of everyone sharing a download. A download starts with the
//! `Authorization` of the request that started it, but every client that joins it was allowed
//! to read the blob with credentials of its own. When the origin refuses the credentials in
//! use (the starting client's bearer token expiring), the download goes on with the next ones
//! that still work instead of failing for everyone who joined: a client's expired token is
//! that client's problem (its next request gets the registry's challenge), never the crowd's.
//!
//! Members are tried in the order they joined; a member that cannot renew is dropped (a
//! client's bearer token that the registry refuses will not work again).

use std::sync::Arc;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use reqwest::header::HeaderValue;
use shoal_common::Digest;

use super::OriginAuth;

/// Distinct credentials kept per download: enough for every kind of client of one node
/// (containerd with a few pull secrets, lazy mounts, the node's own), and a bound on the
/// renewals one refusal can cost.
const MAX_MEMBERS: usize = 16;

#[derive(Debug, Default)]
pub struct AuthPool {
    members: Mutex<Vec<Arc<dyn OriginAuth>>>,
}

impl AuthPool {
    pub fn new(first: Option<Arc<dyn OriginAuth>>) -> Self {
        let pool = AuthPool::default();
        pool.add(first.as_ref());
        pool
    }

    /// Adds a joining requester's credentials, unless the same ones are already in (or the
    /// pool is full).
    pub fn add(&self, auth: Option<&Arc<dyn OriginAuth>>) {
        let Some(auth) = auth else {
            return;
        };
        let mut members = self.members.lock();
        let id = auth.identity();
        let known = id.is_some() && members.iter().any(|m| m.identity() == id);
        if !known && members.len() < MAX_MEMBERS {
            members.push(auth.clone());
        }
    }

    /// Members now (for tests and logs).
    pub fn len(&self) -> usize {
        self.members.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn renew_any(&self, refused: Option<&HeaderValue>) -> Option<HeaderValue> {
        loop {
            let first = self.members.lock().first().cloned()?;
            if let Some(value) = first.renew(refused).await {
                return Some(value);
            }
            tracing::info!(
                credentials = ?first,
                "origin refused a requester's credentials: going on with the next requester's"
            );
            let mut members = self.members.lock();
            if members.first().is_some_and(|m| Arc::ptr_eq(m, &first)) {
                members.remove(0);
            }
        }
    }
}

impl OriginAuth for AuthPool {
    fn renew<'a>(&'a self, refused: Option<&'a HeaderValue>) -> BoxFuture<'a, Option<HeaderValue>> {
        Box::pin(self.renew_any(refused))
    }

    fn identity(&self) -> Option<Digest> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Renews to `value` while it has renewals left.
    #[derive(Debug)]
    struct Fake {
        id: u8,
        value: &'static str,
        left: AtomicU32,
        asked: AtomicU32,
    }

    impl Fake {
        fn new(id: u8, value: &'static str, left: u32) -> Arc<Fake> {
            Arc::new(Fake {
                id,
                value,
                left: AtomicU32::new(left),
                asked: AtomicU32::new(0),
            })
        }
    }

    impl OriginAuth for Fake {
        fn renew<'a>(&'a self, _: Option<&'a HeaderValue>) -> BoxFuture<'a, Option<HeaderValue>> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let ok = self
                .left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            Box::pin(async move { ok.then(|| HeaderValue::from_static(self.value)) })
        }

        fn identity(&self) -> Option<Digest> {
            Some(Digest::of(&[self.id]))
        }
    }

    #[tokio::test]
    async fn a_refused_member_hands_over_to_the_next_and_is_dropped() {
        let a = Fake::new(1, "a", 0);
        let b = Fake::new(2, "b", 2);
        let pool = AuthPool::new(Some(a.clone() as Arc<dyn OriginAuth>));
        pool.add(Some(&(b.clone() as Arc<dyn OriginAuth>)));
        // The same credentials joining again add nothing.
        pool.add(Some(&(Fake::new(2, "b2", 9) as Arc<dyn OriginAuth>)));
        assert_eq!(pool.len(), 2);
        assert_eq!(pool.renew(None).await.unwrap(), "b");
        assert_eq!(pool.len(), 1, "a cannot renew: dropped");
        assert_eq!(pool.renew(None).await.unwrap(), "b");
        assert_eq!(pool.renew(None).await, None, "nobody left who can renew");
        assert!(pool.is_empty());
        assert_eq!(a.asked.load(Ordering::SeqCst), 1);
    }
}
