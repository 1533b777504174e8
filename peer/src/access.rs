//! The private-blob leak check's memory: positive answers of "may this credential read this
//! blob of this repository?" (with the blob's length, from the same answer), kept for a short
//! TTL so a pull pays at most one upstream `HEAD` per blob and credential per TTL, however
//! many clients ask and whether or not the blob is cached yet.
//!
//! Entries are keyed by a sha256 of (credential, host, repository, digest): the raw secret is
//! never stored. The digest is part of the key on purpose: a credential that may read
//! repository A must not be served a cached blob of private repository B by asking for it
//! under A's name (registries answer 404 for blobs not linked to the repository asked).

use std::time::Duration;

use shoal_common::{Digest, Sha256Hasher};

/// Entries kept at most (least recently used go first beyond that).
const MAX_ENTRIES: u64 = 100_000;

pub struct AccessCache {
    /// `None` when the TTL is zero: nothing is remembered.
    entries: Option<moka::sync::Cache<Digest, Allowed>>,
}

/// A positive answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// The blob's length, when the registry said (bytes).
    pub length: Option<u64>,
}

impl AccessCache {
    pub fn new(ttl: Duration) -> Self {
        let entries = (!ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(MAX_ENTRIES)
                .time_to_live(ttl)
                .build()
        });
        AccessCache { entries }
    }

    /// The key of (credential identity, host, repository, blob).
    pub fn key(identity: &[u8], host: &str, repo: &str, digest: &Digest) -> Digest {
        let mut h = Sha256Hasher::new();
        for part in [identity, host.as_bytes(), repo.as_bytes()] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        h.update(digest.to_string().as_bytes());
        h.finish()
    }

    /// The positive answer for `key`, while it is fresh.
    pub fn allowed(&self, key: &Digest) -> Option<Allowed> {
        self.entries.as_ref()?.get(key)
    }

    /// Remembers a positive answer for the TTL.
    pub fn remember(&self, key: Digest, allowed: Allowed) {
        if let Some(c) = &self.entries {
            c.insert(key, allowed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_credentials_repos_and_blobs() {
        let d = Digest::of(b"x");
        let e = Digest::of(b"y");
        let k = AccessCache::key(b"Basic a", "h", "r", &d);
        assert_ne!(k, AccessCache::key(b"Basic b", "h", "r", &d));
        assert_ne!(k, AccessCache::key(b"Basic a", "h", "s", &d));
        assert_ne!(k, AccessCache::key(b"Basic a", "h2", "r", &d));
        assert_ne!(k, AccessCache::key(b"Basic a", "h", "r", &e));
        // Length prefixes: moving bytes between fields changes the key.
        assert_ne!(
            AccessCache::key(b"ab", "c", "r", &d),
            AccessCache::key(b"a", "bc", "r", &d)
        );
    }

    #[test]
    fn remembers_for_the_ttl_only() {
        let c = AccessCache::new(Duration::from_millis(50));
        let k = AccessCache::key(b"", "h", "r", &Digest::of(b"x"));
        let yes = Allowed { length: Some(7) };
        assert_eq!(c.allowed(&k), None);
        c.remember(k, yes);
        assert_eq!(c.allowed(&k), Some(yes));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.allowed(&k), None);
        let off = AccessCache::new(Duration::ZERO);
        off.remember(k, yes);
        assert_eq!(off.allowed(&k), None);
    }
}
