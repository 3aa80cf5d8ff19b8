//! The replication core, without I/O: what a primary sends to each copy of a session, what a copy does with
//! it, what the primary does with the answer or with a failed send, and the ownership steps of a takeover
//! (grant, promote, install). Every function takes the slot, the message and the clock and returns what to do;
//! [`replicator`] carries that out over sockets, `takeover` and `peer_server` call the ownership steps.
//!
//! Rules (seed 003 [0063]-[0065]): deltas carry their base version, and a copy at any other version answers
//! `NeedFull`; a copy that knows a newer owner (higher epoch, or the same epoch held by another node) answers
//! `Fenced`, and the fenced primary drops its copy so it can never acknowledge another write for the session.
//! A primary keeps one [`Cursor`] per peer that should hold a copy; the topology says which peers those are.

pub mod replicator;

use std::time::{Duration, Instant};

use crate::ids::NodeId;
use crate::session::{Delta, Session};
use crate::store::{Cursor, Role, Slot};
use crate::topology::durable;
use crate::wire::{Item, ItemResult};

/// Primary side: an update was applied here; every copy must get it.
pub fn record(slot: &mut Slot, delta: Delta) {
    if let Some((last, rest)) = slot.copies.split_last_mut() {
        for c in rest {
            c.pending.push(delta.clone());
        }
        last.pending.push(delta);
    }
}

/// Primary side: the session's copies now go to `targets`. A peer that keeps its place keeps its cursor; a new
/// one starts with the full session. Returns the peers dropped: each may hold a copy nobody updates any more,
/// which it must be told to drop ([`Item::Drop`]).
pub fn retarget(slot: &mut Slot, targets: &[NodeId]) -> Vec<NodeId> {
    let mut next: Vec<Cursor> = Vec::with_capacity(targets.len());
    for &t in targets {
        match slot
            .copies
            .iter()
            .position(|c| c.peer == t && c.remove.is_none())
        {
            Some(i) => next.push(slot.copies.swap_remove(i)),
            None => next.push(Cursor::fresh(t)),
        }
    }
    let dropped = slot
        .copies
        .iter()
        .filter(|c| c.remove.is_none() && !targets.contains(&c.peer))
        .map(|c| c.peer)
        .collect();
    slot.copies = next;
    dropped
}

/// Primary side: a read needs every copy to renew the lease; returns the peers to queue.
pub fn want_validate(slot: &mut Slot) -> Vec<NodeId> {
    slot.copies
        .iter_mut()
        .map(|c| {
            c.validate = true;
            c.peer
        })
        .collect()
}

/// Primary side: the session ended here (deleted or expired). Every copy is told to drop it; returns the
/// ended session and the peers to queue.
pub fn end(slot: &mut Slot) -> Option<(Session, Vec<NodeId>)> {
    let s = slot.session.take()?;
    for c in &mut slot.copies {
        c.pending.clear();
        c.full = false;
        c.validate = false;
        c.remove = Some(s.epoch);
    }
    let peers = slot.copies.iter().map(|c| c.peer).collect();
    Some((s, peers))
}

/// Primary side: the item to send to `peer` for session `sid` now, with the version it brings the copy to.
/// `None` when there is nothing to send, or no copy goes to `peer`. A removal is sent once and its cursor
/// dropped: if it is lost, expiry removes the copy. A `whole` peer (a Redis bank, which cannot apply deltas)
/// gets the full session wherever another peer would get deltas.
pub fn outgoing(
    slot: &mut Slot,
    sid: crate::ids::SessionId,
    peer: NodeId,
    whole: bool,
) -> Option<(Item, u64)> {
    let i = slot.copies.iter().position(|c| c.peer == peer)?;
    if let Some(epoch) = slot.copies[i].remove {
        slot.copies.swap_remove(i);
        return Some((Item::Remove { sid, epoch }, 0));
    }
    if slot.role != Role::Primary {
        return None;
    }
    let s = slot.session.as_ref()?;
    let c = &mut slot.copies[i];
    let version = s.version;
    if c.full || (whole && !c.pending.is_empty()) {
        c.full = false;
        c.validate = false;
        c.pending.clear();
        return Some((Item::Full { session: s.clone() }, version));
    }
    if let Some(first) = c.pending.first() {
        let base = first.version - 1;
        c.validate = false;
        let deltas = std::mem::take(&mut c.pending);
        let item = Item::Deltas {
            sid: s.id,
            epoch: s.epoch,
            base,
            deltas,
        };
        return Some((item, version));
    }
    if c.validate {
        c.validate = false;
        let item = Item::Validate {
            sid: s.id,
            epoch: s.epoch,
            version,
        };
        return Some((item, version));
    }
    None
}

/// Whether ownership `a` (owner, epoch) outranks `b`: a higher epoch, or the same epoch held by another node
/// (two owners of one epoch must both stop).
fn outranks(a: (NodeId, u64), b: (NodeId, u64)) -> bool {
    a.1 > b.1 || (a.1 == b.1 && a.0 != b.0)
}

/// Whether a copy `have` must refuse an item from `from` claiming ownership at `epoch`.
fn fences(have: &Session, from: NodeId, epoch: u64) -> bool {
    outranks((have.primary, have.epoch), (from, epoch))
}

fn fenced(have: &Session) -> ItemResult {
    ItemResult::Fenced {
        owner: have.primary,
        epoch: have.epoch,
    }
}

/// What a node does after taking an item from a primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The answer for the sender.
    pub result: ItemResult,
    /// This node served the session until now and a newer owner reached it: waiters here must give up.
    pub fence: bool,
    /// Nothing is left here: drop the entry.
    pub forget: bool,
    /// The owner ended the session at this epoch: remember that it ended (its cookie is not counted as lost,
    /// and older copies are refused).
    pub ended: Option<u64>,
}

/// Copy side: applies an item from primary `from` to the local slot (a fresh empty slot when the session
/// was not here). `ended` is the newest epoch a tombstone here refuses (`Store::refuses_through`): an item of
/// that epoch or an older one is refused, so a late copy cannot bring a deleted session back. When the owner
/// of an epoch ended the session, that tenure cannot write again (a deleted session is never re-created under
/// its id), so an item of its epoch is late or from a second owner of that epoch, who must give up too.
pub fn incoming(
    slot: &mut Slot,
    from: NodeId,
    item: Item,
    now: Instant,
    lease: Duration,
    ended: Option<u64>,
) -> Received {
    let was_primary = slot.role == Role::Primary && slot.session.is_some();
    if let Some(epoch) = ended.filter(|e| slot.session.is_none() && item.epoch() <= *e) {
        return Received {
            result: ItemResult::Ended { epoch },
            fence: false,
            forget: true,
            ended: None,
        };
    }
    let removal = match item {
        Item::Remove { epoch, .. } => Some(epoch),
        _ => None,
    };
    let result = apply_item(slot, from, item, now, lease);
    Received {
        // Given up (a copy for a newer owner, or dropped): waiting writes here must not be acknowledged.
        fence: was_primary && (slot.role == Role::Replica || slot.session.is_none()),
        forget: slot.session.is_none(),
        ended: removal.filter(|_| result == ItemResult::Applied),
        result,
    }
}

fn apply_item(
    slot: &mut Slot,
    from: NodeId,
    item: Item,
    now: Instant,
    lease: Duration,
) -> ItemResult {
    let result = match item {
        Item::Deltas {
            epoch,
            base,
            deltas,
            ..
        } => {
            let Some(s) = slot.session.as_mut() else {
                return ItemResult::NeedFull;
            };
            if fences(s, from, epoch) {
                return fenced(s);
            }
            if s.version != base {
                return ItemResult::NeedFull;
            }
            // Each delta applies whole or not at all, so a failure part-way leaves a consistent older copy,
            // which the full state then replaces.
            for d in &deltas {
                if s.apply(d).is_err() {
                    return ItemResult::NeedFull;
                }
            }
            s.epoch = epoch;
            s.primary = from;
            ItemResult::Applied
        }
        Item::Full { session } => {
            if let Some(have) = &slot.session {
                if fences(have, from, session.epoch) {
                    return fenced(have);
                }
            }
            slot.session = Some(session);
            ItemResult::Applied
        }
        Item::Validate { epoch, version, .. } => {
            let Some(s) = slot.session.as_ref() else {
                return ItemResult::NeedFull;
            };
            if fences(s, from, epoch) {
                return fenced(s);
            }
            if s.version != version {
                return ItemResult::NeedFull;
            }
            ItemResult::Applied
        }
        Item::Remove { epoch, .. } => {
            // Fenced like any item: a late removal from an old owner must not drop the copy of another owner
            // of that epoch (a grant's removal racing the new owner's full copy, or a promotion).
            if let Some(s) = &slot.session {
                if fences(s, from, epoch) {
                    return fenced(s);
                }
            }
            slot.session = None;
            return ItemResult::Applied;
        }
        Item::Drop { epoch, version, .. } => {
            match &slot.session {
                Some(s) if fences(s, from, epoch) => return fenced(s),
                // Sent again since it was left behind: current, kept.
                Some(s) if s.epoch == epoch && s.version > version => {}
                _ => slot.session = None,
            }
            return ItemResult::Applied;
        }
    };
    // Whatever this node thought before, it now holds a copy for `from`.
    slot.role = Role::Replica;
    slot.copies.clear();
    slot.granted_until = now + lease;
    slot.last_access = now;
    result
}

/// What the primary does after a copy answered for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterReply {
    /// The copy confirmed: renew the lease; every version up to `durable` is held by as many copies as a
    /// write needs (`None`: not yet).
    Acked {
        /// The highest version as many copies as a write needs now hold (`None`: not yet).
        durable: Option<u64>,
    },
    /// The copy needs the full state: it was marked, queue the peer again. (Also the answer to a late
    /// `Fenced` about an earlier tenure of this node: queueing the peer again is harmless.)
    Resend,
    /// A newer owner exists: the local copy was dropped, unless it already is a copy for a newer owner.
    Fenced,
    /// An answer from a peer that no longer holds a copy for this node (re-homed away meanwhile): it
    /// confirms nothing, and renews no read lease.
    Ignored,
}

/// Primary side: applies `peer`'s answer to an item sent for `sent_version`. `needed` is how many copies
/// must confirm a write (the topology's `acks_needed` for this session).
pub fn on_reply(
    slot: &mut Slot,
    peer: NodeId,
    sent_version: u64,
    result: &ItemResult,
    needed: usize,
) -> AfterReply {
    match result {
        ItemResult::Applied => {
            let Some(s) = slot.session.as_ref() else {
                return AfterReply::Acked { durable: None };
            };
            // With no copy of its own counted, `needed` below would be 0 and any answer would confirm every
            // write: with `min_copies = 2` that acknowledged writes with the owner's copy alone.
            let Some(c) = slot.copies.iter_mut().find(|c| c.peer == peer) else {
                return AfterReply::Ignored;
            };
            c.acked = Some(c.acked.map_or(sent_version, |a| a.max(sent_version)));
            let needed = needed.min(slot.copies.len());
            let durable = durable(slot.copies.iter().map(|c| c.acked), needed, s.version);
            AfterReply::Acked { durable }
        }
        ItemResult::NeedFull => {
            if slot.role == Role::Primary && slot.session.is_some() {
                if let Some(c) = slot.copies.iter_mut().find(|c| c.peer == peer) {
                    c.full = true;
                }
            }
            AfterReply::Resend
        }
        // The session ended on the copy after this tenure: this copy is stale (an answer about an older tenure
        // of this node, now at a higher epoch, is ignored).
        ItemResult::Ended { epoch } => match slot.session.as_ref() {
            Some(s) if s.epoch > *epoch => AfterReply::Resend,
            _ => drop_copy(slot),
        },
        ItemResult::Fenced { owner, epoch } => {
            // The answer may be late, about an item sent before this node handed the session over: it may
            // hold a copy for that newer owner by now (kept: it may be the only other copy of acknowledged
            // writes), or own the session again at a higher epoch (the answer is about an old tenure).
            match slot.session.as_ref() {
                Some(s)
                    if slot.role == Role::Primary
                        && !outranks((*owner, *epoch), (s.primary, s.epoch)) =>
                {
                    AfterReply::Resend
                }
                Some(_) if slot.role == Role::Replica => AfterReply::Fenced,
                _ => drop_copy(slot),
            }
        }
    }
}

/// A newer owner exists, or the session ended after this tenure: the local copy goes, so this node can never
/// acknowledge another write for it.
fn drop_copy(slot: &mut Slot) -> AfterReply {
    slot.session = None;
    slot.copies.clear();
    AfterReply::Fenced
}

/// What the primary does when a send to a peer failed (the peer is marked down).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// The session still copies to that peer: give it another (the peer excluded).
    Rehome,
    /// A removal went down with the peer and nothing else is left here: drop the entry, release waiters.
    Forget,
    /// Nothing to do for this session.
    Nothing,
}

/// Primary side: a batch to `peer` failed.
pub fn on_failure(slot: &mut Slot, peer: NodeId) -> AfterFailure {
    if slot.session.is_some() {
        let copies_there = slot.copies.iter().any(|c| c.peer == peer);
        return if copies_there && slot.role == Role::Primary {
            AfterFailure::Rehome
        } else {
            AfterFailure::Nothing
        };
    }
    slot.copies.retain(|c| c.peer != peer);
    if slot.copies.is_empty() {
        AfterFailure::Forget
    } else {
        AfterFailure::Nothing
    }
}

/// Copy or owner side of a takeover: hands the session in `slot` to `requester`, raising the epoch; this node
/// keeps a copy as its secondary and grants the new owner a read lease until `now + lease`. Returns the
/// granted session and, when this node was the owner, its old copies (to be told to drop theirs).
pub fn grant(
    slot: &mut Slot,
    requester: NodeId,
    me: NodeId,
    now: Instant,
    lease: Duration,
) -> Option<(Session, Vec<NodeId>)> {
    let was_primary = slot.role == Role::Primary;
    let s = slot.session.as_mut()?;
    s.epoch += 1;
    s.primary = requester;
    // The granter keeps its copy and is named by the new cookie; a second bank copy stays where it is (the
    // old secondary, when the granter was the second).
    if s.also == Some(me) {
        s.also = s.secondary.filter(|o| *o != requester);
    }
    s.secondary = Some(me);
    let granted = s.clone();
    let old_copies = if was_primary {
        slot.copies
            .iter()
            .map(|c| c.peer)
            .filter(|p| *p != requester)
            .collect()
    } else {
        Vec::new()
    };
    slot.role = Role::Replica;
    slot.copies.clear();
    // The requester now holds a read lease of its own: no other takeover before it ends.
    slot.granted_until = now + lease;
    Some((granted, old_copies))
}

/// A promotion's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    /// The owner the copy named before.
    pub old_owner: NodeId,
    /// The copy is older than the client's signed cookie: updates were lost (async mode).
    pub stale: bool,
}

/// Copy side: this node becomes the owner of the copy in `slot` (its owner dead): epoch + 1, no copies yet
/// (the caller picks them). `None` when there is no copy here.
pub fn promote(slot: &mut Slot, me: NodeId, cookie_version: u64, now: Instant) -> Option<Promoted> {
    let s = slot.session.as_mut()?;
    let old_owner = s.primary;
    s.epoch += 1;
    s.primary = me;
    s.secondary = None;
    s.also = None;
    let stale = s.version < cookie_version;
    slot.role = Role::Primary;
    slot.last_access = now;
    slot.copies.clear();
    Some(Promoted { old_owner, stale })
}

/// Requester side of a takeover: installs a granted session as this node's own. Returns whether it is older
/// than the client's signed cookie.
pub fn install(slot: &mut Slot, session: Session, cookie_version: u64, now: Instant) -> bool {
    let stale = session.version < cookie_version;
    // The granter keeps a copy as secondary and holds the version it granted.
    let granter = session.secondary;
    let also = session.also.filter(|a| Some(*a) != granter);
    let version = session.version;
    slot.session = Some(session);
    slot.role = Role::Primary;
    slot.last_access = now;
    slot.copies = granter
        .map(|g| {
            let mut c = Cursor::fresh(g);
            c.full = false;
            c.acked = Some(version);
            c
        })
        .into_iter()
        // A second bank copy may be behind or of an older epoch: it gets the whole session first.
        .chain(also.map(Cursor::fresh))
        .collect();
    stale
}

#[cfg(test)]
mod tests;
