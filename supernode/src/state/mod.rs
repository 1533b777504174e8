//! The supernode's in-memory state and the domain operations on it, one per API call.
//!
//! - [`peers`]: the live peers and the tasks each is registered on;
//! - [`task`]: one task's pieces, holders, assignments, leases and waiters;
//! - [`member`]: one peer's record within a task;
//! - `listing`: the peer and task listings (`GET /api/v1/peers`, `GET /api/v1/tasks`);
//! - [`report`]: applying piece reports to a task;
//! - `down`: parents taken out of scheduling when their children cannot reach them;
//! - [`waiters`]: long-polling schedule requests and whom to wake.
//!
//! Lock order: peer map → one peer → task map → one task. Each task has its own mutex, so
//! tasks never contend with each other, and no lock is held across an `.await`.

pub(crate) mod bytes;
pub(crate) mod down;
mod listing;
pub(crate) mod member;
pub(crate) mod peers;
pub(crate) mod report;
pub(crate) mod task;
#[cfg(test)]
mod tests;
pub(crate) mod waiters;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use shoal_common::api::{
    self, AnnounceReply, Heartbeat, HeartbeatReply, PeerAnnounce, PieceReport, RegisterTask,
    ReportReply, ScheduleReply, ScheduleRequest, TaskInfo,
};
use shoal_common::{PieceLayout, TaskId};
use tokio_util::sync::CancellationToken;

use self::bytes::SourceBytes;
use self::peers::{PeerRecord, Peers, Removed};
use self::task::{Slot, Task};
use crate::config::SupernodeConfig;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::schedule::{self, Outcome, ParentSelector, Policy};

type TaskRef = Arc<Mutex<Task>>;

pub(crate) struct State {
    config: SupernodeConfig,
    policy: Policy,
    peers: Peers,
    tasks: RwLock<HashMap<TaskId, TaskRef>>,
    pub metrics: Metrics,
    /// Piece bytes reported fetched, by source (for the status page).
    pub bytes: SourceBytes,
}

fn check_peer_id(id: &str) -> Result<(), Error> {
    api::validate_peer_id(id).map_err(Error::BadRequest)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl State {
    pub fn new(
        config: SupernodeConfig,
        metrics: Metrics,
        selector: Arc<dyn ParentSelector>,
    ) -> Self {
        State {
            policy: Policy::new(&config, selector),
            config,
            peers: Peers::default(),
            tasks: RwLock::new(HashMap::new()),
            metrics,
            bytes: SourceBytes::default(),
        }
    }

    pub fn announce(&self, a: &PeerAnnounce) -> Result<AnnounceReply, Error> {
        check_peer_id(&a.peer_id)?;
        let now = Instant::now();
        let (rec, changed, replaced) = self.peers.upsert(a, now);
        if let Some(old) = replaced {
            tracing::info!(peer = %old.id, tasks = old.tasks.len(), "peer restarted: dropping what its earlier process had in flight");
            self.forget(old, now);
        }
        if changed {
            // New address or zone: the tasks it is on hand out the new values from now on.
            let inner = rec.inner.lock();
            for id in &inner.tasks {
                if let Some(task) = self.task_opt(id) {
                    task.lock()
                        .join(&rec.id, rec.incarnation, inner.addr, inner.zone(), now);
                }
            }
        }
        self.metrics.peers.set(self.peers.len() as i64);
        Ok(AnnounceReply {
            heartbeat_interval_ms: millis(self.config.heartbeat_interval),
            peer_ttl_ms: millis(self.config.peer_ttl),
        })
    }

    pub fn heartbeat(&self, peer: &str, hb: &Heartbeat) -> Result<HeartbeatReply, Error> {
        check_peer_id(peer)?;
        if !self.peers.heartbeat(peer, hb, Instant::now()) {
            return Err(Error::PeerUnknown(peer.to_owned()));
        }
        Ok(HeartbeatReply {
            heartbeat_interval_ms: millis(self.config.heartbeat_interval),
        })
    }

    pub fn remove_peer(&self, peer: &str) -> Result<(), Error> {
        check_peer_id(peer)?;
        let removed = self
            .peers
            .remove(peer)
            .ok_or_else(|| Error::PeerUnknown(peer.to_owned()))?;
        self.forget(removed, Instant::now());
        self.metrics.peers.set(self.peers.len() as i64);
        Ok(())
    }

    /// Removes a departed peer from the tasks it was on.
    fn forget(&self, removed: Removed, now: Instant) {
        for id in &removed.tasks {
            if let Some(task) = self.task_opt(id) {
                task.lock()
                    .leave_incarnation(&removed.id, removed.incarnation, now);
            }
        }
    }

    fn task_opt(&self, id: &TaskId) -> Option<TaskRef> {
        self.tasks.read().get(id).cloned()
    }

    fn task(&self, id: &TaskId) -> Result<TaskRef, Error> {
        self.task_opt(id).ok_or(Error::TaskUnknown(*id))
    }

    pub fn task_info(&self, id: &TaskId) -> Result<TaskInfo, Error> {
        Ok(self.task(id)?.lock().info())
    }

    /// Runs `f` on the task with the peer as a member, joining it first when needed. With
    /// `create`, an unknown task is created with that layout and url.
    fn with_member<R>(
        &self,
        task_id: &TaskId,
        peer: &str,
        create: Option<(PieceLayout, &str)>,
        f: impl FnOnce(&mut Task, Slot) -> R,
    ) -> Result<R, Error> {
        let now = Instant::now();
        let rec = self
            .peers
            .touch(peer, now)
            .ok_or_else(|| Error::PeerUnknown(peer.to_owned()))?;
        if let Some(task) = self.task_opt(task_id) {
            let mut t = task.lock();
            if let Some(slot) = t.slot_of(peer).filter(|_| !t.removed) {
                if t.member(slot)
                    .is_some_and(|m| m.incarnation == rec.incarnation)
                {
                    return Ok(f(&mut t, slot));
                }
            }
        }
        self.join(&rec, task_id, create, now, f)
    }

    fn join<R>(
        &self,
        rec: &PeerRecord,
        task_id: &TaskId,
        create: Option<(PieceLayout, &str)>,
        now: Instant,
        f: impl FnOnce(&mut Task, Slot) -> R,
    ) -> Result<R, Error> {
        // Holding the peer's lock while joining: either the join completes before an expiry
        // takes the peer's task list (and the expiry then cleans this task too), or the
        // expiry came first and `removed` is set.
        let mut inner = rec.inner.lock();
        if inner.removed {
            return Err(Error::PeerUnknown(rec.id.to_string()));
        }
        loop {
            let task = match (self.task_opt(task_id), create) {
                (Some(task), _) => task,
                (None, None) => return Err(Error::TaskUnknown(*task_id)),
                (None, Some((layout, url))) => {
                    let mut tasks = self.tasks.write();
                    let task = tasks
                        .entry(*task_id)
                        .or_insert_with(|| {
                            tracing::info!(task = %task_id, pieces = layout.piece_count(), "new task");
                            Arc::new(Mutex::new(Task::new(*task_id, layout, url.to_owned(), now)))
                        })
                        .clone();
                    self.metrics.tasks.set(tasks.len() as i64);
                    task
                }
            };
            let mut t = task.lock();
            if t.removed {
                continue; // garbage-collected meanwhile: look it up again
            }
            inner.tasks.insert(*task_id);
            let slot = t.join(&rec.id, rec.incarnation, inner.addr, inner.zone(), now);
            return Ok(f(&mut t, slot));
        }
    }

    pub fn register(&self, task_id: &TaskId, r: &RegisterTask) -> Result<TaskInfo, Error> {
        check_peer_id(&r.peer_id)?;
        if let Some(layout) = &r.layout {
            layout
                .validate()
                .map_err(|e| Error::BadRequest(e.to_string()))?;
        }
        let create = r.layout.map(|l| (l, r.url.as_str()));
        self.with_member(task_id, &r.peer_id, create, |t, slot| {
            if let Some(have) = &r.have {
                let n = t.piece_count();
                if have.len() != n {
                    return Err(Error::bad(format!(
                        "have lists {} pieces but task {} has {n}",
                        have.len(),
                        t.id
                    )));
                }
                if let Some(d) = r.digests.iter().find(|d| d.piece >= n) {
                    return Err(Error::bad(format!(
                        "digest for piece {} is past the end of task {} ({n} pieces)",
                        d.piece, t.id
                    )));
                }
                t.set_have(slot, have, &r.digests);
            }
            if t.url.is_empty() && !r.url.is_empty() {
                t.url = r.url.clone();
            }
            Ok(t.info())
        })?
    }

    pub fn unregister(&self, task_id: &TaskId, peer: &str) -> Result<(), Error> {
        check_peer_id(peer)?;
        let task = self.task(task_id)?;
        // Peer first (lock order), so that a concurrent join cannot slip in between.
        let rec = self.peers.get(peer);
        let mut inner = rec.as_ref().map(|r| r.inner.lock());
        let mut t = task.lock();
        if let Some(slot) = t.slot_of(peer) {
            t.leave(slot, Instant::now());
        }
        if let Some(inner) = inner.as_mut() {
            inner.tasks.remove(task_id);
        }
        Ok(())
    }

    /// One schedule, long-polling up to `wait_ms` (capped) while there is nothing to assign.
    pub async fn schedule(
        &self,
        task_id: &TaskId,
        req: &ScheduleRequest,
        shutdown: &CancellationToken,
    ) -> Result<ScheduleReply, Error> {
        check_peer_id(&req.peer_id)?;
        if req.want.len() > api::MAX_WANTED {
            return Err(Error::bad(format!(
                "want lists {} pieces, at most {} are accepted",
                req.want.len(),
                api::MAX_WANTED
            )));
        }
        let wait = Duration::from_millis(req.wait_ms.min(api::MAX_WAIT_MS));
        let deadline = tokio::time::Instant::now() + wait;
        let mut fresh = true;
        loop {
            let start = Instant::now();
            let may_wait = req.capacity > 0 && tokio::time::Instant::now() < deadline;
            let (outcome, waiter) =
                self.with_member(task_id, &req.peer_id, None, |t, slot| {
                    if let Some(p) = req.want.iter().find(|&&p| p >= t.piece_count()) {
                        return Err(Error::bad(format!(
                            "wanted piece {p} is past the end of task {} ({} pieces)",
                            t.id,
                            t.piece_count()
                        )));
                    }
                    let wanted = schedule::Wanted {
                        pieces: &req.want,
                        sparse: req.sparse,
                        fresh,
                    };
                    let outcome = schedule::schedule(
                        t,
                        slot,
                        req.capacity,
                        &req.avoid,
                        &wanted,
                        &self.policy,
                        start,
                    );
                    let waiter =
                        (may_wait && outcome == Outcome::Empty).then(|| t.add_waiter(slot));
                    Ok((outcome, waiter))
                })??;
            self.metrics
                .schedule_duration
                .observe(start.elapsed().as_secs_f64());
            let reply = match outcome {
                Outcome::Done => ScheduleReply {
                    assignments: Vec::new(),
                    done: true,
                },
                Outcome::Assigned {
                    assignments,
                    from_origin,
                } => {
                    let m = &self.metrics.assignments;
                    m.with_label_values(&["origin"]).inc_by(from_origin as u64);
                    m.with_label_values(&["peer"])
                        .inc_by((assignments.len() - from_origin) as u64);
                    ScheduleReply {
                        assignments,
                        done: false,
                    }
                }
                Outcome::Empty => {
                    if let Some(waiter) = waiter {
                        tokio::select! {
                            _ = waiter => {}
                            _ = tokio::time::sleep_until(deadline) => {}
                            _ = shutdown.cancelled() => {}
                        }
                        if !shutdown.is_cancelled() {
                            fresh = false;
                            continue; // recompute; after the deadline, without waiting
                        }
                    }
                    ScheduleReply::default()
                }
            };
            let result = match (&reply.done, reply.assignments.is_empty()) {
                (true, _) => "done",
                (false, true) => "empty",
                (false, false) => "assigned",
            };
            self.metrics
                .schedule_requests
                .with_label_values(&[result])
                .inc();
            return Ok(reply);
        }
    }

    pub fn report(&self, task_id: &TaskId, r: &PieceReport) -> Result<ReportReply, Error> {
        check_peer_id(&r.peer_id)?;
        let max_uploads = self.policy.max_uploads;
        let outcome = self.with_member(task_id, &r.peer_id, None, |t, slot| {
            let fresh = SourceBytes::unheld(t, slot, r);
            let outcome = t.apply_report(slot, r, max_uploads, Instant::now());
            self.bytes.count(t, slot, &fresh);
            outcome
        })??;
        let m = &self.metrics;
        let rejected = outcome.reply.rejected.len() as u64;
        m.pieces_reported
            .with_label_values(&["accepted"])
            .inc_by(u64::from(outcome.reply.accepted));
        m.pieces_reported
            .with_label_values(&["rejected"])
            .inc_by(rejected);
        for reason in outcome.failures {
            m.piece_failures.with_label_values(&[reason]).inc();
        }
        m.parents_down.inc_by(outcome.downed);
        Ok(outcome.reply)
    }

    /// Periodic housekeeping: expires silent peers, in-flight assignments and leases past
    /// their time, and tasks without peers for `task_gc_after`.
    pub fn sweep(&self, now: Instant) {
        let expired = self.peers.expire(now, self.config.peer_ttl);
        if !expired.is_empty() {
            tracing::info!(count = expired.len(), "expiring silent peers");
            self.metrics.peers_expired.inc_by(expired.len() as u64);
        }
        for removed in expired {
            tracing::debug!(peer = %removed.id, "peer expired");
            self.forget(removed, now);
        }
        self.metrics.peers.set(self.peers.len() as i64);

        let tasks: Vec<(TaskId, TaskRef)> = self
            .tasks
            .read()
            .iter()
            .map(|(id, t)| (*id, t.clone()))
            .collect();
        let gc_after = self.config.task_gc_after;
        let stale = |t: &Task| {
            t.empty_since
                .is_some_and(|since| now.saturating_duration_since(since) >= gc_after)
        };
        // Members whose peer is gone (a safety net: joins and removals are ordered so that
        // this should find nothing). Only members that joined before the snapshot count.
        let snapshot_at = Instant::now();
        let live: HashMap<Arc<str>, u64> = self
            .peers
            .snapshot()
            .into_iter()
            .map(|rec| (rec.id.clone(), rec.incarnation))
            .collect();
        let mut garbage = Vec::new();
        for (id, task) in tasks {
            let mut t = task.lock();
            let ghosts: Vec<Slot> = t
                .members()
                .filter(|(_, m)| {
                    m.joined_at < snapshot_at && live.get(&m.id) != Some(&m.incarnation)
                })
                .map(|(slot, _)| slot)
                .collect();
            for slot in ghosts {
                tracing::warn!(task = %id, "dropping a member whose peer is gone");
                t.leave(slot, now);
            }
            t.expire(now);
            if stale(&t) {
                garbage.push(id);
            }
        }
        if !garbage.is_empty() {
            let mut map = self.tasks.write();
            for id in garbage {
                let Some(task) = map.get(&id).cloned() else {
                    continue;
                };
                let mut t = task.lock();
                if stale(&t) {
                    tracing::info!(task = %id, "forgetting task without peers");
                    t.removed = true;
                    map.remove(&id);
                }
            }
            self.metrics.tasks.set(map.len() as i64);
        }
    }
}
