//! Telling a parent that stopped answering from one that is merely busy, within about a piece
//! time instead of the whole-transfer timeout.
//!
//! A parent that dies closes its connections and is noticed at once; one that hangs (a stuck
//! process, a dropped link, a full disk under a synchronous read) keeps its connections open
//! and silent, and without a bound of its own a fetch waits `piece_timeout` (60 s) for it. So
//! a transfer from a parent must
//! - get the response head, and then each next body chunk, within `stall` ("accepts and never
//!   answers", "stops sending in the middle of a body"); twice that from a parent relaying a
//!   piece still arriving from its own source (its source may be the one that stalled, and
//!   the parent cuts its readers off when it notices);
//! - and, once it has waited `stall` in all, average at least `min_rate` (a parent trickling
//!   a byte now and then never stalls but is no better).
//!
//! Only time spent waiting for the parent counts: a fetch paused by our own `--download-rate`
//! is not the parent's fault (its bytes wait in the socket meanwhile and arrive at once).
//! The floor is low on purpose: piece times vary tenfold in healthy swarms (a parent's uplink
//! shared by eight children), and an abandoned piece loses the bytes it had; merely slow
//! parents are overtaken by the endgame's second fetch instead (`engine::fetches`).

use std::future::Future;
use std::time::{Duration, Instant};

use super::http::FetchFailure;

#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// Longest wait for the response head, and for each next body chunk.
    pub stall: Duration,
    /// Least average body rate (bytes per second) over the time spent waiting, checked once
    /// that time reaches `stall`; 0 = no floor.
    pub min_rate: u64,
}

/// The time a transfer has spent waiting for the parent, and what it got meanwhile.
pub(super) struct Progress {
    liveness: Option<Liveness>,
    waited: Duration,
}

impl Progress {
    pub fn new(liveness: Option<Liveness>) -> Self {
        Progress {
            liveness,
            waited: Duration::ZERO,
        }
    }

    /// The server relays a piece still arriving from its own source: it gets twice the time,
    /// since it cuts its readers off itself when that source stalls (and a chain of relays
    /// should fail from its root, not at every hop).
    pub fn relaying(&mut self) {
        if let Some(l) = &mut self.liveness {
            l.stall *= 2;
        }
    }

    /// Waits for `step` (the head, or the next chunk), at most `stall`.
    pub async fn wait<T>(
        &mut self,
        what: impl FnOnce() -> String,
        step: impl Future<Output = T>,
    ) -> Result<T, FetchFailure> {
        let started = Instant::now();
        let out = match self.liveness {
            None => Ok(step.await),
            Some(l) => {
                tokio::time::timeout(l.stall, step)
                    .await
                    .map_err(|_| FetchFailure::Stalled {
                        message: format!("nothing for {:?} {}", l.stall, what()),
                        relayed: false,
                    })
            }
        };
        self.waited += started.elapsed();
        out
    }

    /// Fails when `got` bytes are too few for the time waited.
    pub fn check_rate(&self, got: u64) -> Result<(), FetchFailure> {
        let Some(l) = self.liveness else {
            return Ok(());
        };
        if l.min_rate == 0 || self.waited < l.stall {
            return Ok(());
        }
        let rate = got as f64 / self.waited.as_secs_f64();
        if rate < l.min_rate as f64 {
            return Err(FetchFailure::Stalled {
                message: format!(
                    "{got} bytes in {:.1} s, below the minimum of {} bytes/s",
                    self.waited.as_secs_f64(),
                    l.min_rate
                ),
                relayed: false,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_step_fails_after_the_stall_time() {
        let mut p = Progress::new(Some(Liveness {
            stall: Duration::from_millis(200),
            min_rate: 0,
        }));
        let r = p
            .wait(|| "x".into(), tokio::time::sleep(Duration::from_secs(10)))
            .await;
        assert!(matches!(r, Err(FetchFailure::Stalled { .. })), "{r:?}");
        let ok = p
            .wait(|| "x".into(), tokio::time::sleep(Duration::from_millis(10)))
            .await;
        assert!(ok.is_ok());
    }

    #[tokio::test]
    async fn a_trickle_fails_the_rate_once_it_has_waited_the_stall_time() {
        let mut p = Progress::new(Some(Liveness {
            stall: Duration::from_millis(400),
            min_rate: 1000,
        }));
        p.wait(|| "x".into(), tokio::time::sleep(Duration::from_millis(50)))
            .await
            .unwrap();
        // Too early to judge.
        assert!(p.check_rate(10).is_ok());
        p.wait(
            || "x".into(),
            tokio::time::sleep(Duration::from_millis(380)),
        )
        .await
        .unwrap();
        assert!(p.check_rate(10).is_err());
        assert!(p.check_rate(10_000).is_ok());
    }

    #[tokio::test]
    async fn without_liveness_nothing_is_enforced() {
        let mut p = Progress::new(None);
        p.wait(|| "x".into(), tokio::time::sleep(Duration::from_millis(50)))
            .await
            .unwrap();
        assert!(p.check_rate(0).is_ok());
    }
}
