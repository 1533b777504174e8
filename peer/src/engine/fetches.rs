//! The piece fetches in flight for one download, and its endgame.
//!
//! Once every missing piece is in flight nothing else can use the free slots, and the
//! download ends with its slowest fetch. A single fetch can straggle for seconds behind a
//! parent whose uplink is swamped (seen in the 8-node benchmark: the last piece of a node took
//! 2.2 s while the others took 0.2–0.9 s). So in the endgame a piece in flight for longer than
//! [`STRAGGLER_AFTER`] gets a second fetch from its other parents, never the origin; the first
//! copy to arrive is kept and the other fetch is aborted. Each piece is duplicated at most
//! once, so the extra bytes are bounded by the few pieces of the endgame.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_common::api::Assignment;
use shoal_common::piece::MIN_PIECE_SIZE;
use tokio::task::{AbortHandle, Id, JoinSet};

use super::memory::MemoryBudget;
use super::piece::PieceContext;
use crate::error::{Error, Result};

/// A piece fetch running this long in the endgame gets a second fetch from another parent.
/// Well above a piece's usual fetch time with every slot busy (0.3–0.9 s for 1 MiB over
/// 100 Mbit/s with 8 in flight), so that only real stragglers are duplicated.
pub(super) const STRAGGLER_AFTER: Duration = Duration::from_millis(1_000);

/// Longest run of contiguous small origin pieces fetched with one request.
const MAX_RUN_BYTES: u64 = 1 << 20;

struct Running {
    started: Instant,
    assignment: Assignment,
    /// The fetches of this piece: its own, a second one in the endgame, or a run's.
    tasks: Vec<Id>,
    duplicated: bool,
}

/// What a finished fetch means for the download.
pub(super) enum Joined {
    /// The piece's last running fetch ended with this result (or its first success).
    Piece(u32, Result<()>),
    /// A fetch ended while another fetch of the same piece still runs, or was aborted because
    /// the other one won: nothing to do.
    Superseded,
}

/// Where an assignment may be fetched as part of a run: `Some(None)` the origin (leased),
/// `Some(Some(parent))` its first parent when the digest is known (no relay: a run reads
/// stored pieces); `None` when it must be fetched alone.
fn run_source(a: &Assignment) -> Option<Option<&str>> {
    match (a.origin, a.parents.first(), a.sha256) {
        (true, None, _) => Some(None),
        (false, Some(p), Some(_)) => Some(Some(p.peer_id.as_str())),
        _ => None,
    }
}

pub(super) struct Fetches {
    ctx: Arc<PieceContext>,
    memory: MemoryBudget,
    set: JoinSet<Vec<(u32, Result<()>)>>,
    running: HashMap<u32, Running>,
    /// Single-piece fetches, which a winning copy may abort (a run carries other pieces).
    abortable: HashMap<Id, AbortHandle>,
}

impl Fetches {
    pub fn new(ctx: Arc<PieceContext>, memory: MemoryBudget) -> Self {
        Fetches {
            ctx,
            memory,
            set: JoinSet::new(),
            running: HashMap::new(),
            abortable: HashMap::new(),
        }
    }

    /// Pieces in flight, second fetches counted again: what the slots are counted in (a run
    /// takes a slot per piece, like single fetches).
    pub fn len(&self) -> usize {
        self.running.len() + self.running.values().filter(|r| r.tasks.len() > 1).count()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn contains(&self, piece: u32) -> bool {
        self.running.contains_key(&piece)
    }

    /// Starts the fetches of a schedule reply. Small pieces that lie next to each other and
    /// come from the same source (the origin, or the same first parent with the piece's
    /// digest) go in one request ([`PieceContext::fetch_run`]); everything else one piece at
    /// a time.
    pub fn start_all(&mut self, assignments: Vec<Assignment>) {
        let small = self.ctx.file.layout().piece_size < MIN_PIECE_SIZE;
        let (mut runs, single): (Vec<Assignment>, Vec<Assignment>) = assignments
            .into_iter()
            .filter(|a| {
                // A piece still in flight here was assigned again (the supernode released it
                // when one of its parents failed, while this fetch went on to the next one):
                // give the new assignment back, or the supernode holds it as in flight until
                // it expires (30 s) and never offers the piece to us meanwhile.
                if self.running.contains_key(&a.piece) && !self.ctx.file.has_piece(a.piece) {
                    self.ctx.give_back(a);
                    return false;
                }
                !self.ctx.file.has_piece(a.piece) && !self.running.contains_key(&a.piece)
            })
            .partition(|a| small && run_source(a).is_some());
        for a in single {
            self.start(a);
        }
        runs.sort_by(|a, b| {
            run_source(a)
                .cmp(&run_source(b))
                .then(a.piece.cmp(&b.piece))
        });
        runs.dedup_by_key(|a| a.piece);
        let max = (MAX_RUN_BYTES / self.ctx.file.layout().piece_size).max(1) as usize;
        let mut run: Vec<Assignment> = Vec::new();
        for a in runs {
            let next = run
                .last()
                .is_some_and(|l| l.piece + 1 == a.piece && run_source(l) == run_source(&a))
                && run.len() < max;
            if !next && !run.is_empty() {
                self.start_run(std::mem::take(&mut run));
            }
            run.push(a);
        }
        if !run.is_empty() {
            self.start_run(run);
        }
    }

    /// Starts fetching an assigned piece unless it is held or already in flight.
    pub fn start(&mut self, a: Assignment) {
        if self.ctx.file.has_piece(a.piece) || self.running.contains_key(&a.piece) {
            return;
        }
        let id = self.spawn(a.clone());
        self.running.insert(
            a.piece,
            Running {
                started: Instant::now(),
                assignment: a,
                tasks: vec![id],
                duplicated: false,
            },
        );
    }

    fn start_run(&mut self, run: Vec<Assignment>) {
        if run.len() == 1 {
            return run.into_iter().for_each(|a| self.start(a));
        }
        let ctx = self.ctx.clone();
        let memory = self.memory.clone();
        let layout = ctx.file.layout();
        let len: u64 = run
            .iter()
            .filter_map(|a| layout.range(a.piece))
            .map(|r| r.end - r.start)
            .sum();
        let pieces: Vec<u32> = run.iter().map(|a| a.piece).collect();
        let assignments = run.clone();
        let handle = self.set.spawn(async move {
            let Some(_buffer) = memory.reserve(len).await else {
                return pieces.iter().map(|&p| (p, Err(Error::Cancelled))).collect();
            };
            ctx.fetch_run(&assignments).await
        });
        let now = Instant::now();
        for a in run {
            self.running.insert(
                a.piece,
                Running {
                    started: now,
                    assignment: a,
                    tasks: vec![handle.id()],
                    duplicated: false,
                },
            );
        }
    }

    fn spawn(&mut self, a: Assignment) -> Id {
        let ctx = self.ctx.clone();
        let memory = self.memory.clone();
        let len = ctx
            .file
            .layout()
            .range(a.piece)
            .map_or(0, |r| r.end - r.start);
        let handle = self.set.spawn(async move {
            let piece = a.piece;
            let Some(_buffer) = memory.reserve(len).await else {
                return vec![(piece, Err(Error::Cancelled))];
            };
            vec![(piece, ctx.fetch(a).await)]
        });
        let id = handle.id();
        self.abortable.insert(id, handle);
        id
    }

    /// Waits for the next fetch to end (a run ends several pieces at once); `None` when none
    /// runs.
    pub async fn join_next(&mut self) -> Option<Result<Vec<Joined>>> {
        let joined = self.set.join_next_with_id().await?;
        Some(match joined {
            Ok((id, results)) => {
                self.abortable.remove(&id);
                Ok(results
                    .into_iter()
                    .map(|(piece, result)| self.finished(id, piece, result))
                    .collect())
            }
            Err(e) if e.is_cancelled() => {
                self.abortable.remove(&e.id());
                Ok(vec![Joined::Superseded])
            }
            Err(e) => Err(Error::DownloadFailed {
                task: self.ctx.file.id(),
                message: format!("piece worker crashed: {e}"),
            }),
        })
    }

    fn finished(&mut self, id: Id, piece: u32, result: Result<()>) -> Joined {
        let Some(running) = self.running.get_mut(&piece) else {
            return Joined::Superseded;
        };
        running.tasks.retain(|t| *t != id);
        if result.is_ok() {
            // The first copy wins: the other fetch, if any, is not needed any more.
            for t in &running.tasks {
                if let Some(h) = self.abortable.get(t) {
                    h.abort();
                }
            }
        } else if !running.tasks.is_empty() {
            return Joined::Superseded;
        }
        self.running.remove(&piece);
        Joined::Piece(piece, result)
    }

    /// In the endgame (every missing piece in flight), with `room` free slots: starts second
    /// fetches of stragglers. Returns when the next piece will become a straggler, if one may.
    pub fn duplicate_stragglers(&mut self, missing: usize, room: usize) -> Option<Instant> {
        if missing == 0 || missing != self.running.len() {
            return None;
        }
        // An origin fetch of ours needs this downlink more: the swarm waits for its bytes.
        if self.running.values().any(|r| r.assignment.origin) {
            return None;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut due = Vec::new();
        for (&piece, r) in &self.running {
            // Only peer pieces with another parent to ask: a second origin fetch would cost
            // origin egress, and the same parent would be just as slow. Nor pieces still
            // coming from the origin (no digest yet): every parent relays the same fetch.
            let a = &r.assignment;
            if r.duplicated || a.origin || a.sha256.is_none() || a.parents.len() < 2 {
                continue;
            }
            let at = r.started + STRAGGLER_AFTER;
            if at <= now {
                due.push(piece);
            } else {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        due.sort_unstable();
        for piece in due.into_iter().take(room) {
            let Some(r) = self.running.get_mut(&piece) else {
                continue;
            };
            r.duplicated = true;
            let mut second = r.assignment.clone();
            second.parents.remove(0);
            let id = self.spawn(second);
            if let Some(r) = self.running.get_mut(&piece) {
                r.tasks.push(id);
            }
            self.ctx.metrics.endgame_duplicates.inc();
            tracing::debug!(task = %self.ctx.file.id(), piece, "endgame: second fetch of a straggling piece");
        }
        next
    }
}
