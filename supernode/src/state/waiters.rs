//! Long-poll waiters of one task, and whom to wake when something changes.

use std::collections::VecDeque;

use tokio::sync::oneshot;

use super::task::Slot;

/// With at most this many waiters every change wakes them all; beyond, wake-ups are targeted.
const WAKE_ALL_BELOW: usize = 64;
/// Waiters looked at per targeted wake-up, to bound the work done under the task lock.
const SCAN_PER_WAKE: usize = 256;

/// What changed, so that only the waiters who may benefit are woken.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wake {
    All,
    /// Piece `piece` got a holder or a parent slot for it freed up: wake up to `budget`
    /// waiters lacking it (not `except`, who caused the change).
    Piece {
        piece: u32,
        budget: usize,
        except: Slot,
    },
}

struct Waiter {
    slot: Slot,
    tx: oneshot::Sender<()>,
}

#[derive(Default)]
pub(crate) struct Waiters(VecDeque<Waiter>);

impl Waiters {
    /// Registers a waiter; the receiver fires (or is dropped) when it should look again.
    pub fn add(&mut self, slot: Slot) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.0.push_back(Waiter { slot, tx });
        rx
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Forgets waiters that gave up (their poll timed out or the client went away).
    pub fn prune(&mut self) {
        self.0.retain(|w| !w.tx.is_closed());
    }

    /// Wakes the waiters that may now get an assignment. Few waiters: all of them. Many (a hot
    /// task with thousands of peers): only as many as the change can serve, oldest first and
    /// only those `lacks(slot, piece)`, so that one report does not make thousands of peers
    /// recompute for one free upload slot.
    pub fn wake(&mut self, hint: Wake, lacks: impl Fn(Slot, u32) -> bool) {
        let (piece, mut budget, except) = match hint {
            Wake::Piece {
                piece,
                budget,
                except,
            } if self.0.len() > WAKE_ALL_BELOW => (piece, budget, except),
            _ => {
                for w in self.0.drain(..) {
                    let _ = w.tx.send(());
                }
                return;
            }
        };
        // Look at a bounded number of waiters from the front; those not interested go to the
        // back, so the next change looks at others.
        let mut looked = 0;
        while budget > 0 && looked < SCAN_PER_WAKE {
            let Some(w) = self.0.pop_front() else {
                break;
            };
            looked += 1;
            if w.tx.is_closed() {
                continue;
            }
            if w.slot != except && lacks(w.slot, piece) {
                if w.tx.send(()).is_ok() {
                    budget -= 1;
                }
            } else {
                self.0.push_back(w);
            }
        }
    }
}
