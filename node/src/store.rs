//! The in-memory session table: sharded maps of [`Entry`], one per session this node hosts (as primary or copy).
//!
//! An entry's `slot` is a FIFO tokio mutex: requests on one session are applied one at a time, in arrival
//! order (seed 000 claims 23-25). Its mark is the replication progress that requests wait on after releasing
//! the slot, so one copy to the secondary covers every update pending at that moment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use std::time::Duration;

use tokio::sync::Notify;

use crate::ids::{NodeId, SessionId};
use crate::session::{Delta, Session};

const SHARDS: usize = 64;

/// The node's clock: tokio's, so that tests under `tokio::time::pause()` move leases, batching, expiry and
/// heartbeats with virtual time; outside tests it is the system's monotonic clock.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Which copy this node holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Serves the session and copies every update to the secondary.
    Primary,
    /// Holds a copy for the primary named in the session.
    Replica,
}

/// A session's local state, guarded by the entry's FIFO mutex.
#[derive(Debug, Clone)]
pub struct Slot {
    /// `None` while a takeover is loading it, or once it was removed or fenced here.
    pub session: Option<Session>,
    /// Whether this node serves the session or keeps a copy of it.
    pub role: Role,
    /// When a request last ran on it here; the idle timeout counts from this.
    pub last_access: Instant,
    /// Replica: no takeover is granted before this instant, because the primary may still hold a read lease.
    pub granted_until: Instant,
    /// Primary: where each copy of the session stands (one cursor per peer that holds or should hold one).
    /// Also kept after the session ended here, until every copy was told to drop it.
    pub copies: Vec<Cursor>,
}

impl Slot {
    /// A slot with no session yet, as a replica, its grant not held back.
    pub fn empty(now: Instant) -> Slot {
        Slot {
            session: None,
            role: Role::Replica,
            last_access: now,
            granted_until: now,
            copies: Vec::new(),
        }
    }

    /// This node's own session, if it is the primary.
    pub fn primary(&mut self) -> Option<&mut Session> {
        match self.role {
            Role::Primary => self.session.as_mut(),
            Role::Replica => None,
        }
    }

    /// Whether nothing is left here: no session and no copy still to be told to drop it.
    pub fn is_vacant(&self) -> bool {
        self.session.is_none() && self.copies.is_empty()
    }
}

/// Where one peer's copy of a primary's session stands: what it still needs. The replication core
/// (`replicate`) reads and moves it; the topology says which peers get one.
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    /// The peer that holds, or should hold, the copy.
    pub peer: NodeId,
    /// Updates applied here and not yet sent to this peer.
    pub pending: Vec<Delta>,
    /// The peer needs the whole session (a new copy, or a gap).
    pub full: bool,
    /// A read needs the lease renewed by this peer.
    pub validate: bool,
    /// The session ended here at this epoch: the peer must drop its copy.
    pub remove: Option<u64>,
    /// The highest version this peer confirmed holding in this tenure.
    pub acked: Option<u64>,
}

impl Cursor {
    /// A cursor for a peer that holds nothing yet: its first item is the full session.
    pub fn fresh(peer: NodeId) -> Cursor {
        Cursor {
            peer,
            pending: Vec::new(),
            full: true,
            validate: false,
            remove: None,
            acked: None,
        }
    }
}

/// Replication progress of a primary's session, as seen by requests waiting for their copy.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    /// The secondary holds every version below this one (its version + 1; 0 = no copy yet).
    pub copied: u64,
    /// Reads may be served locally until then (the secondary promised no takeover before).
    pub lease_until: Instant,
    /// Bumped on every acknowledgement, so a read can wait for a fresh one.
    pub lease_seq: u64,
    /// A newer owner exists: nothing more will be acknowledged here.
    pub fenced: bool,
}

/// One session hosted here.
#[derive(Debug)]
pub struct Entry {
    /// The session's id.
    pub id: SessionId,
    /// The session's turn: a request takes it first and keeps it until answered, so an application sees one
    /// request of a session at a time, in arrival order (FIFO).
    pub turn: tokio::sync::Mutex<()>,
    /// The session's local state, locked only while it is read or changed: never across an application's
    /// call, so copies, pulls and other sessions' requests do not wait on a slow app.
    pub slot: tokio::sync::Mutex<Slot>,
    // A plain mutex and one Notify rather than a watch channel: a few dozen bytes per session, not hundreds.
    mark: Mutex<Mark>,
    changed: Notify,
}

impl Mark {
    /// Whether the secondary holds version `v` (or later).
    pub fn covers(&self, v: u64) -> bool {
        self.copied > v
    }
}

impl Entry {
    /// Whether this node owns the session now, without waiting: a slot busy at this instant counts as owned
    /// (it is being served or handed over).
    pub fn owned_now(&self) -> bool {
        self.slot
            .try_lock()
            .map_or(true, |s| s.role == Role::Primary && s.session.is_some())
    }

    fn new(id: SessionId, now: Instant) -> Entry {
        let mark = Mark {
            copied: 0,
            lease_until: now,
            lease_seq: 0,
            fenced: false,
        };
        Entry {
            id,
            turn: tokio::sync::Mutex::new(()),
            slot: tokio::sync::Mutex::new(Slot::empty(now)),
            mark: Mutex::new(mark),
            changed: Notify::new(),
        }
    }

    /// The replication progress now.
    pub fn mark(&self) -> Mark {
        *self.mark.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the progress and wakes every waiter.
    pub fn update_mark(&self, f: impl FnOnce(&mut Mark)) {
        f(&mut self.mark.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify_waiters();
    }

    /// Starts a new tenure as primary: `copied` as given, no lease before `lease_until`, not fenced.
    pub fn reset_mark(&self, copied: u64, lease_until: Instant) {
        self.update_mark(|m| {
            m.copied = copied;
            m.lease_until = lease_until;
            m.fenced = false;
            m.lease_seq += 1;
        });
    }

    /// Waits up to `limit` until `done` holds for the progress.
    ///
    /// Returns [`Waited::Fenced`] as soon as a newer owner exists (even if `done` also holds: nothing may be
    /// acknowledged here then), [`Waited::TimedOut`] when `limit` ran out first.
    pub async fn wait_mark(&self, limit: Duration, done: impl Fn(&Mark) -> bool) -> Waited {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                tokio::pin!(notified);
                // Registered before the check, so an update between the check and the await is not missed.
                notified.as_mut().enable();
                let m = self.mark();
                if m.fenced {
                    return Waited::Fenced;
                }
                if done(&m) {
                    return Waited::Done;
                }
                notified.await;
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .unwrap_or(Waited::TimedOut)
    }
}

/// How a wait for replication progress ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waited {
    /// The condition holds.
    Done,
    /// A newer owner exists: nothing more is acknowledged here.
    Fenced,
    /// The limit ran out first.
    TimedOut,
}

type Shard = HashMap<SessionId, Arc<Entry>, ahash::RandomState>;

/// How long a node remembers that a session ended here (deleted or expired), so that its cookie coming back
/// starts a fresh session without being counted as lost.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

/// A session that ended here.
#[derive(Clone, Copy, Debug)]
struct Ended {
    at: Instant,
    epoch: u64,
    /// The tenure at `epoch` itself ended it (its owner deleted or expired it, here or by a removal it sent),
    /// so that tenure writes nothing more; else a copy holder expired its copy of an owner it thought dead,
    /// who may still be serving at `epoch`.
    by_owner: bool,
    /// No copy could be told (none was reachable): a peer coming back may still hold one.
    untold: bool,
}

/// Sharded session table.
pub struct Store {
    shards: Box<[Mutex<Shard>]>,
    /// Sessions that ended here: when, at which epoch, and whether a copy may still hold them untold.
    ended: Mutex<HashMap<SessionId, Ended, ahash::RandomState>>,
    /// Copies left behind on peers by re-homings (peer -> session -> the epoch then): the peer still holds
    /// a copy nobody updates, to be told to drop it once it answers.
    left_behind: Mutex<LeftBehind>,
}

/// Per peer, the sessions whose copy was left behind there, with the (epoch, version) they had then.
type LeftBehind = HashMap<NodeId, HashMap<SessionId, (u64, u64)>>;

impl Default for Store {
    fn default() -> Self {
        Store {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            ended: Mutex::default(),
            left_behind: Mutex::default(),
        }
    }
}

impl Store {
    fn shard(&self, id: SessionId) -> std::sync::MutexGuard<'_, Shard> {
        // The id is random already: its low bits pick the shard.
        let i = (id.0 as usize) % SHARDS;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The entry for `id`, if there is one here.
    pub fn get(&self, id: SessionId) -> Option<Arc<Entry>> {
        self.shard(id).get(&id).cloned()
    }

    /// The entry for `id`, created empty when absent; `true` when it was created.
    pub fn get_or_insert(&self, id: SessionId) -> (Arc<Entry>, bool) {
        let mut shard = self.shard(id);
        if let Some(e) = shard.get(&id) {
            return (e.clone(), false);
        }
        let e = Arc::new(Entry::new(id, now()));
        shard.insert(id, e.clone());
        (e, true)
    }

    /// Removes `entry` when it holds nothing and nobody is working on it (its slot is free): an entry made
    /// for a lookup that found nothing.
    pub fn remove_if_vacant(&self, entry: &Arc<Entry>) {
        if let Ok(slot) = entry.slot.try_lock() {
            if slot.is_vacant() {
                self.remove(entry);
            }
        }
    }

    /// Removes `id` if it still maps to this very entry (a newer one is left alone).
    pub fn remove(&self, entry: &Arc<Entry>) {
        let mut shard = self.shard(entry.id);
        if shard.get(&entry.id).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            shard.remove(&entry.id);
        }
    }

    /// Remembers that session `id` ended here (deleted or expired) at ownership epoch `epoch`; `by_owner` when
    /// the owner of that epoch ended it (not a copy holder expiring its copy).
    pub fn mark_ended(&self, id: SessionId, epoch: u64, by_owner: bool) {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).insert(
            id,
            Ended {
                at: now(),
                epoch,
                by_owner,
                untold: false,
            },
        );
    }

    /// The newest epoch whose copies of session `id` are refused here, if any: the ended epoch when its owner
    /// ended it (that tenure writes nothing more), the one before when a copy holder expired its copy (the
    /// owner may still be serving, and may send it again).
    pub fn refuses_through(&self, id: SessionId) -> Option<u64> {
        let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        let e = ended.get(&id)?;
        if e.by_owner {
            Some(e.epoch)
        } else {
            e.epoch.checked_sub(1)
        }
    }

    /// Notes that no copy of ended session `id` could be told to drop it (none was reachable): a peer that
    /// comes back is told then ([`Store::untold_ends`]).
    pub fn mark_untold(&self, id: SessionId) {
        if let Some(e) = self
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id)
        {
            e.untold = true;
        }
    }

    /// Notes that `peer` may hold a copy of `sid` (owned here at `epoch`, then at `version`) that nothing
    /// updates any more.
    pub fn mark_left_behind(&self, peer: NodeId, sid: SessionId, epoch: u64, version: u64) {
        let mut m = self.left_behind.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(peer).or_default().insert(sid, (epoch, version));
    }

    /// `peer` holds `sid`'s copy again (it is a copy target once more): nothing to tell it.
    pub fn unmark_left_behind(&self, peer: NodeId, sid: SessionId) {
        let mut m = self.left_behind.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = m.get_mut(&peer) {
            s.remove(&sid);
        }
    }

    /// Like [`Store::mark_left_behind`], unless something is noted for that copy already (a newer mark).
    pub fn mark_left_behind_if_none(&self, peer: NodeId, sid: SessionId, epoch: u64, version: u64) {
        let mut m = self.left_behind.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(peer)
            .or_default()
            .entry(sid)
            .or_insert((epoch, version));
    }

    /// The sessions whose copies were left behind on `peer`.
    pub fn left_behind_on(&self, peer: NodeId) -> Vec<SessionId> {
        let m = self.left_behind.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&peer)
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Takes the mark of `sid`'s copy left behind on `peer`: its (epoch, version) then.
    pub fn take_left_behind_one(&self, peer: NodeId, sid: SessionId) -> Option<(u64, u64)> {
        let mut m = self.left_behind.lock().unwrap_or_else(|p| p.into_inner());
        m.get_mut(&peer)?.remove(&sid)
    }

    /// The peers holding copies left behind that they were not told of yet.
    pub fn left_behind_peers(&self) -> Vec<NodeId> {
        let m = self.left_behind.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(p, _)| *p)
            .collect()
    }

    /// Takes the copies left behind on `peer`, to tell it (or forget them: it restarted empty).
    pub fn take_left_behind(&self, peer: NodeId) -> Vec<(SessionId, (u64, u64))> {
        let mut m = self.left_behind.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&peer)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default()
    }

    /// Sessions that ended here, within [`TOMBSTONE_TTL`], that a copy may still hold untold, with the epoch
    /// at which they ended.
    pub fn untold_ends(&self) -> Vec<(SessionId, u64)> {
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, e)| e.untold)
            .map(|(id, e)| (*id, e.epoch))
            .collect()
    }

    /// Whether session `id` ended here within [`TOMBSTONE_TTL`].
    pub fn has_ended(&self, id: SessionId) -> bool {
        self.ended_epoch(id).is_some()
    }

    /// The epoch at which session `id` ended here, within [`TOMBSTONE_TTL`]: copies from older owners are
    /// refused after it, so a late copy cannot bring a deleted session back.
    pub fn ended_epoch(&self, id: SessionId) -> Option<u64> {
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .map(|e| e.epoch)
    }

    /// Forgets sessions that ended before `now - TOMBSTONE_TTL`.
    pub fn prune_ended(&self, now: Instant) {
        self.ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, e| now.saturating_duration_since(e.at) < TOMBSTONE_TTL);
    }

    /// Every entry at this moment (the maps are not held while the caller works on them).
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        let mut all = Vec::new();
        for s in self.shards.iter() {
            all.extend(
                s.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned(),
            );
        }
        all
    }

    /// Entries held, primaries and copies alike (the load a heartbeat reports).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Arc<Entry> {
        Arc::new(Entry::new(SessionId(1), Instant::now()))
    }

    #[test]
    fn an_owners_tombstone_refuses_its_own_epoch_and_a_copy_holders_only_older_ones() {
        let store = Store::default();
        let (deleted, expired) = (SessionId(7), SessionId(8));
        store.mark_ended(deleted, 3, true);
        store.mark_ended(expired, 3, false);
        assert_eq!(store.refuses_through(deleted), Some(3));
        // The owner of epoch 3 may still be serving: its copies of epoch 3 are taken again.
        assert_eq!(store.refuses_through(expired), Some(2));
        assert_eq!(store.refuses_through(SessionId(9)), None);
        assert_eq!(store.ended_epoch(expired), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_when_its_copy_is_acknowledged() {
        let e = entry();
        let waiter = tokio::spawn({
            let e = e.clone();
            async move { e.wait_mark(Duration::from_secs(5), |m| m.covers(3)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        e.update_mark(|m| m.copied = 2); // version 1 only: not yet
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        e.update_mark(|m| m.copied = 4);
        assert_eq!(waiter.await.unwrap(), Waited::Done);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gives_up_at_its_limit_and_on_fencing() {
        let e = entry();
        let started = tokio::time::Instant::now();
        assert_eq!(
            e.wait_mark(Duration::from_secs(2), |m| m.covers(0)).await,
            Waited::TimedOut
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        let waiter = tokio::spawn({
            let e = e.clone();
            async move { e.wait_mark(Duration::from_secs(60), |m| m.covers(0)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        e.update_mark(|m| m.fenced = true);
        assert_eq!(
            waiter.await.unwrap(),
            Waited::Fenced,
            "a fenced session acknowledges nothing"
        );
    }

    #[test]
    fn remove_leaves_a_newer_entry_for_the_same_id_alone() {
        let store = Store::default();
        let (old, created) = store.get_or_insert(SessionId(5));
        assert!(created);
        store.remove(&old);
        let (new, created) = store.get_or_insert(SessionId(5));
        assert!(created);
        store.remove(&old);
        assert!(Arc::ptr_eq(&store.get(SessionId(5)).unwrap(), &new));
        assert_eq!(store.len(), 1);
    }
}
