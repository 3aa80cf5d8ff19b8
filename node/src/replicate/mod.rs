//! The replication state machine, without I/O: what a primary sends for a session, what a secondary does with
//! it, and what the primary does with the answer. The task that moves these over sockets is [`task`].
//!
//! Rules (seed 003 [0063]-[0065]): deltas carry their base version, and a copy at any other version answers
//! `NeedFull`; a copy that knows a newer owner (higher epoch, or the same epoch held by another node) answers
//! `Fenced`, and the fenced primary drops its copy so it can never acknowledge another write for the session.

pub mod task;

use std::time::{Duration, Instant};

use crate::ids::NodeId;
use crate::session::Session;
use crate::store::{Role, Slot};
use crate::wire::{Item, ItemResult};

/// Primary side: the item to send to `peer` for this session now, with the version it brings the copy to.
/// `None` when there is nothing to send, or the session no longer goes to `peer`.
pub fn outgoing(slot: &mut Slot, peer: NodeId) -> Option<(Item, u64)> {
    if let Some((sid, epoch, to)) = slot.removed {
        return (to == peer).then(|| {
            slot.removed = None;
            (Item::Remove { sid, epoch }, 0)
        });
    }
    if slot.role != Role::Primary {
        return None;
    }
    let s = slot.session.as_ref()?;
    if s.secondary != Some(peer) {
        return None;
    }
    let version = s.version;
    if slot.needs_full {
        slot.needs_full = false;
        slot.validate = false;
        slot.pending.clear();
        return Some((Item::Full { session: s.clone() }, version));
    }
    if let Some(first) = slot.pending.first() {
        let base = first.version - 1;
        slot.validate = false;
        let deltas = std::mem::take(&mut slot.pending);
        return Some((
            Item::Deltas {
                sid: s.id,
                epoch: s.epoch,
                base,
                deltas,
            },
            version,
        ));
    }
    if slot.validate {
        slot.validate = false;
        return Some((
            Item::Validate {
                sid: s.id,
                epoch: s.epoch,
                version,
            },
            version,
        ));
    }
    None
}

/// Whether a copy `have` must refuse an item from `from` claiming ownership at `epoch`.
fn fences(have: &Session, from: NodeId, epoch: u64) -> bool {
    have.epoch > epoch || (have.epoch == epoch && have.primary != from)
}

fn fenced(have: &Session) -> ItemResult {
    ItemResult::Fenced {
        owner: have.primary,
        epoch: have.epoch,
    }
}

/// Secondary side: applies an item from primary `from` to the local slot (a fresh empty slot when the session
/// was not here). Afterwards `slot.session == None` means the entry can be dropped.
pub fn incoming(
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
            if let Some(s) = &slot.session {
                if s.epoch > epoch {
                    return fenced(s);
                }
            }
            slot.session = None;
            return ItemResult::Applied;
        }
    };
    // Whatever this node thought before, it now holds a copy for `from`.
    slot.role = Role::Replica;
    slot.pending.clear();
    slot.needs_full = false;
    slot.granted_until = now + lease;
    slot.last_access = now;
    result
}

/// What the primary does after the secondary answered for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterReply {
    /// The copy holds `version`: acknowledge writes up to it, renew the lease.
    Acked(u64),
    /// The copy needs the full state: it was marked, send again.
    Resend,
    /// A newer owner exists: the local copy was dropped.
    Fenced,
}

/// Primary side: applies the answer to an item sent for `sent_version`.
pub fn on_reply(slot: &mut Slot, sent_version: u64, result: &ItemResult) -> AfterReply {
    match result {
        ItemResult::Applied => AfterReply::Acked(sent_version),
        ItemResult::NeedFull => {
            if slot.role == Role::Primary && slot.session.is_some() {
                slot.needs_full = true;
            }
            AfterReply::Resend
        }
        ItemResult::Fenced { .. } => {
            slot.session = None;
            slot.pending.clear();
            slot.needs_full = false;
            slot.validate = false;
            AfterReply::Fenced
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SessionId;
    use serde_json::json;

    const LEASE: Duration = Duration::from_millis(300);

    fn id(n: u64) -> NodeId {
        NodeId::new((1 << 50) + n).unwrap()
    }

    /// A primary slot on node 1 with secondary node 2, and an empty slot on node 2.
    fn pair() -> (Slot, Slot) {
        let now = Instant::now();
        let mut p = Slot::empty(now);
        p.role = Role::Primary;
        p.session = Some(Session::new(SessionId(42), id(1), Some(id(2))));
        p.needs_full = true;
        (p, Slot::empty(now))
    }

    fn write(p: &mut Slot, key: &str) {
        let s = p.session.as_mut().unwrap();
        let (_, d) = s.incr(key).unwrap();
        p.pending.push(d);
    }

    /// Delivers everything outgoing from `p` to `s` until quiet; returns the replies seen.
    fn sync(p: &mut Slot, s: &mut Slot) -> Vec<AfterReply> {
        let mut seen = vec![];
        for _ in 0..4 {
            let Some((item, v)) = outgoing(p, id(2)) else {
                break;
            };
            let r = incoming(s, id(1), item, Instant::now(), LEASE);
            seen.push(on_reply(p, v, &r));
        }
        seen
    }

    #[test]
    fn the_first_copy_is_full_then_deltas_follow() {
        let (mut p, mut s) = pair();
        assert_eq!(sync(&mut p, &mut s), vec![AfterReply::Acked(0)]);
        write(&mut p, "a");
        write(&mut p, "a");
        assert!(matches!(
            outgoing(&mut p.clone_for_test(), id(2)),
            Some((Item::Deltas { base: 0, .. }, 2))
        ));
        assert_eq!(sync(&mut p, &mut s), vec![AfterReply::Acked(2)]);
        assert_eq!(s.session, p.session);
        assert_eq!(s.role, Role::Replica);
    }

    #[test]
    fn a_copy_that_lost_its_state_gets_the_full_session() {
        let (mut p, mut s) = pair();
        sync(&mut p, &mut s);
        write(&mut p, "a");
        let mut restarted = Slot::empty(Instant::now());
        assert_eq!(
            sync(&mut p, &mut restarted),
            vec![AfterReply::Resend, AfterReply::Acked(1)]
        );
        assert_eq!(restarted.session, p.session);
    }

    #[test]
    fn a_resent_batch_is_not_applied_twice() {
        let (mut p, mut s) = pair();
        sync(&mut p, &mut s);
        write(&mut p, "a");
        let (item, v) = outgoing(&mut p, id(2)).unwrap();
        // Applied, but the reply was lost; the primary resends the same deltas.
        incoming(&mut s, id(1), item.clone(), Instant::now(), LEASE);
        let r = incoming(&mut s, id(1), item, Instant::now(), LEASE);
        assert_eq!(r, ItemResult::NeedFull);
        assert_eq!(on_reply(&mut p, v, &r), AfterReply::Resend);
        sync(&mut p, &mut s);
        assert_eq!(s.session.as_ref().unwrap().data["a"], json!(1));
    }

    #[test]
    fn a_primary_fenced_by_a_newer_owner_drops_its_copy() {
        let (mut p, mut s) = pair();
        sync(&mut p, &mut s);
        // Node 3 took the session over from the secondary: epoch 2.
        let sc = s.session.as_mut().unwrap();
        sc.epoch = 2;
        sc.primary = id(3);
        write(&mut p, "a");
        assert_eq!(sync(&mut p, &mut s), vec![AfterReply::Fenced]);
        assert!(p.session.is_none());
        assert_eq!(
            s.session.as_ref().unwrap().version,
            0,
            "the fenced write never reached the copy"
        );
    }

    #[test]
    fn a_stale_full_copy_cannot_overwrite_a_newer_epoch() {
        let (mut p, mut s) = pair();
        sync(&mut p, &mut s);
        s.session.as_mut().unwrap().epoch = 5;
        p.needs_full = true;
        assert_eq!(sync(&mut p, &mut s), vec![AfterReply::Fenced]);
        assert_eq!(s.session.as_ref().unwrap().epoch, 5);
    }

    #[test]
    fn validate_renews_only_a_matching_copy() {
        let (mut p, mut s) = pair();
        sync(&mut p, &mut s);
        p.validate = true;
        assert_eq!(sync(&mut p, &mut s), vec![AfterReply::Acked(0)]);
        s.session.as_mut().unwrap().version = 9;
        p.validate = true;
        assert_eq!(sync(&mut p, &mut s)[0], AfterReply::Resend);
    }

    #[test]
    fn a_removed_session_is_removed_from_the_copy() {
        let (mut p, mut s) = pair();
        sync(&mut p, &mut s);
        let sess = p.session.take().unwrap();
        p.removed = Some((sess.id, sess.epoch, id(2)));
        sync(&mut p, &mut s);
        assert!(s.session.is_none());
        assert!(outgoing(&mut p, id(2)).is_none());
    }

    #[test]
    fn items_for_another_secondary_are_not_sent() {
        let (mut p, _) = pair();
        assert!(outgoing(&mut p, id(3)).is_none());
        assert!(p.needs_full, "the mark stays for the right peer");
    }

    impl Slot {
        fn clone_for_test(&self) -> Slot {
            Slot {
                session: self.session.clone(),
                role: self.role,
                last_access: self.last_access,
                granted_until: self.granted_until,
                pending: self.pending.clone(),
                needs_full: self.needs_full,
                validate: self.validate,
                removed: self.removed,
            }
        }
    }
}
