//! What the readers of one download want from it: the whole blob (a pull), or only the pieces
//! under the byte ranges they asked for (a lazy mount's reads: a *sparse* task). Wanted pieces
//! are fetched first, in the order they were asked for, so a small read is not queued behind
//! a large one that came later, nor behind the rest of the blob.
//!
//! A sparse download that has nothing left to fetch waits a while for new ranges, then ends
//! and leaves its pieces in the cache (still served to other peers). Ending and taking a new
//! range race; [`Demand::retire_if_idle`] and [`Demand::want`] settle it under one lock, so a
//! range is never handed to a download that has stopped.

use std::collections::{HashSet, VecDeque};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::storage::TaskFile;

pub struct Demand {
    state: Mutex<State>,
    /// Bumped on every change, so the download loop wakes up for new wants.
    changed: watch::Sender<u64>,
}

struct State {
    whole: bool,
    /// Wanted pieces not known to be held yet, first asked first.
    queue: VecDeque<u32>,
    queued: HashSet<u32>,
    retired: bool,
}

/// The download ended; the caller must start a new one.
#[derive(Debug)]
pub struct Retired;

impl Demand {
    pub fn new(whole: bool) -> Self {
        Demand {
            state: Mutex::new(State {
                whole,
                queue: VecDeque::new(),
                queued: HashSet::new(),
                retired: false,
            }),
            changed: watch::Sender::new(0),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn is_whole(&self) -> bool {
        self.state.lock().whole
    }

    pub fn is_retired(&self) -> bool {
        self.state.lock().retired
    }

    /// Whether a reader asked for `piece` and it has not arrived yet.
    pub fn is_wanted(&self, piece: u32) -> bool {
        self.state.lock().queued.contains(&piece)
    }

    /// Someone wants the whole blob: the download goes on until it is complete.
    pub fn want_whole(&self) -> Result<(), Retired> {
        let mut st = self.state.lock();
        if st.retired {
            return Err(Retired);
        }
        if !st.whole {
            st.whole = true;
            drop(st);
            self.changed.send_modify(|g| *g += 1);
        }
        Ok(())
    }

    /// Adds pieces a reader waits for (those already wanted keep their place).
    pub fn want(&self, pieces: impl IntoIterator<Item = u32>) -> Result<(), Retired> {
        let mut st = self.state.lock();
        if st.retired {
            return Err(Retired);
        }
        let before = st.queue.len();
        for p in pieces {
            if st.queued.insert(p) {
                st.queue.push_back(p);
            }
        }
        let added = st.queue.len() > before;
        drop(st);
        if added {
            self.changed.send_modify(|g| *g += 1);
        }
        Ok(())
    }

    /// Wanted pieces still missing from `file`, most urgent first, at most `max`, skipping
    /// those `busy` (in flight). Forgets wanted pieces that have arrived.
    pub fn pending(&self, file: &TaskFile, max: usize, busy: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut st = self.state.lock();
        let State { queue, queued, .. } = &mut *st;
        queue.retain(|&p| {
            let held = file.has_piece(p);
            if held {
                queued.remove(&p);
            }
            !held
        });
        queue
            .iter()
            .copied()
            .filter(|&p| !busy(p))
            .take(max)
            .collect()
    }

    /// Ends a sparse download that has nothing left to fetch: afterwards [`Demand::want`]
    /// fails, and the next reader starts a new download. `false` when a reader still waits
    /// for a piece, or the blob is wanted whole.
    pub fn retire_if_idle(&self, file: &TaskFile) -> bool {
        let mut st = self.state.lock();
        if st.whole || st.queue.iter().any(|&p| !file.has_piece(p)) {
            return false;
        }
        st.retired = true;
        true
    }

    /// Ends the download for good (it finished or failed): new readers start another.
    pub fn retire(&self) {
        self.state.lock().retired = true;
    }
}
