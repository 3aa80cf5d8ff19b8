//! Table-style tests of the replication core over in-memory slots.

use super::*;
use crate::ids::SessionId;
use serde_json::json;

const LEASE: Duration = Duration::from_millis(300);
const SID: SessionId = SessionId(42);

fn id(n: u64) -> NodeId {
    NodeId::new((1 << 50) + n).unwrap()
}

/// A primary slot on node 1 with secondary node 2 (not yet copied), and an empty slot on node 2.
fn pair() -> (Slot, Slot) {
    let now = Instant::now();
    let mut p = Slot::empty(now);
    p.role = Role::Primary;
    p.session = Some(Session::new(SID, id(1), Some(id(2))));
    retarget(&mut p, &[id(2)]);
    (p, Slot::empty(now))
}

fn write(p: &mut Slot, key: &str) {
    let s = p.session.as_mut().unwrap();
    let (_, d) = s.incr(key).unwrap();
    record(p, d);
}

/// Delivers everything outgoing from `p` to `s` until quiet; returns the replies seen.
fn sync(p: &mut Slot, s: &mut Slot) -> Vec<AfterReply> {
    let mut seen = vec![];
    for _ in 0..4 {
        let Some((item, v)) = outgoing(p, SID, id(2), false) else {
            break;
        };
        let r = incoming(s, id(1), item, Instant::now(), LEASE, None);
        seen.push(on_reply(p, id(2), v, &r.result, 1));
    }
    seen
}

fn acked(v: u64) -> AfterReply {
    AfterReply::Acked { durable: Some(v) }
}

#[test]
fn a_copy_left_behind_is_dropped_but_one_sent_again_since_is_kept() {
    let (mut p, mut s) = pair();
    write(&mut p, "a");
    sync(&mut p, &mut s);
    let (epoch, version) = {
        let x = p.session.as_ref().unwrap();
        (x.epoch, x.version)
    };
    assert_eq!(retarget(&mut p, &[]), vec![id(2)], "left behind");
    let drop = || Item::Drop {
        sid: SID,
        epoch,
        version,
    };
    let mut again = s.clone();
    // Sent again since, with a newer write: kept.
    again.session.as_mut().unwrap().version += 1;
    let r = incoming(&mut again, id(1), drop(), Instant::now(), LEASE, None);
    assert_eq!((r.result, r.forget), (ItemResult::Applied, false));
    let r = incoming(&mut s, id(1), drop(), Instant::now(), LEASE, None);
    assert_eq!(
        (r.result, r.forget, r.ended),
        (ItemResult::Applied, true, None),
        "dropped, no tombstone"
    );
}

#[test]
fn a_late_answer_from_a_peer_re_homed_away_confirms_nothing() {
    let (mut p, mut s) = pair();
    write(&mut p, "a");
    let (item, v) = outgoing(&mut p, SID, id(2), false).unwrap();
    let r = incoming(&mut s, id(1), item, Instant::now(), LEASE, None);
    p.copies.clear(); // re-homed: no other peer was left
    assert_eq!(
        on_reply(&mut p, id(2), v, &r.result, 1),
        AfterReply::Ignored
    );
}

#[test]
fn the_first_copy_is_full_then_deltas_follow() {
    let (mut p, mut s) = pair();
    assert_eq!(sync(&mut p, &mut s), vec![acked(0)]);
    write(&mut p, "a");
    write(&mut p, "a");
    assert!(matches!(
        outgoing(&mut p.clone(), SID, id(2), false),
        Some((Item::Deltas { base: 0, .. }, 2))
    ));
    assert_eq!(sync(&mut p, &mut s), vec![acked(2)]);
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
        vec![AfterReply::Resend, acked(1)]
    );
    assert_eq!(restarted.session, p.session);
}

#[test]
fn a_peer_that_takes_whole_copies_gets_the_full_session_instead_of_deltas() {
    let (mut p, mut s) = pair();
    sync(&mut p, &mut s);
    write(&mut p, "a");
    write(&mut p, "b");
    let (item, v) = outgoing(&mut p, SID, id(2), true).unwrap();
    assert!(
        matches!(&item, Item::Full { session } if session.version == 2),
        "{item:?}"
    );
    assert_eq!(v, 2);
    assert!(
        outgoing(&mut p, SID, id(2), true).is_none(),
        "both deltas covered"
    );
    want_validate(&mut p);
    let (item, _) = outgoing(&mut p, SID, id(2), true).unwrap();
    assert!(
        matches!(item, Item::Validate { .. }),
        "a lease renewal stays small"
    );
}

#[test]
fn a_resent_batch_is_not_applied_twice() {
    let (mut p, mut s) = pair();
    sync(&mut p, &mut s);
    write(&mut p, "a");
    let (item, v) = outgoing(&mut p, SID, id(2), false).unwrap();
    // Applied, but the reply was lost; the primary resends the same deltas.
    incoming(&mut s, id(1), item.clone(), Instant::now(), LEASE, None);
    let r = incoming(&mut s, id(1), item, Instant::now(), LEASE, None);
    assert_eq!(r.result, ItemResult::NeedFull);
    assert_eq!(on_reply(&mut p, id(2), v, &r.result, 1), AfterReply::Resend);
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
    p.copies[0].full = true;
    assert_eq!(sync(&mut p, &mut s), vec![AfterReply::Fenced]);
    assert_eq!(s.session.as_ref().unwrap().epoch, 5);
}

#[test]
fn validate_renews_only_a_matching_copy() {
    let (mut p, mut s) = pair();
    sync(&mut p, &mut s);
    assert_eq!(want_validate(&mut p), vec![id(2)]);
    assert_eq!(sync(&mut p, &mut s), vec![acked(0)]);
    s.session.as_mut().unwrap().version = 9;
    want_validate(&mut p);
    assert_eq!(sync(&mut p, &mut s)[0], AfterReply::Resend);
}

#[test]
fn a_removed_session_is_removed_from_the_copy_once() {
    let (mut p, mut s) = pair();
    sync(&mut p, &mut s);
    let (ended, peers) = end(&mut p).unwrap();
    assert_eq!((ended.id, peers), (SID, vec![id(2)]));
    let (item, _) = outgoing(&mut p, SID, id(2), false).unwrap();
    let r = incoming(&mut s, id(1), item, Instant::now(), LEASE, None);
    assert!(r.ended == Some(1) && r.forget);
    assert!(s.session.is_none());
    assert!(outgoing(&mut p, SID, id(2), false).is_none());
    assert!(p.is_vacant());
}

#[test]
fn items_for_a_peer_without_a_copy_are_not_sent() {
    let (mut p, _) = pair();
    assert!(outgoing(&mut p, SID, id(3), false).is_none());
    assert!(p.copies[0].full, "the cursor stays for the right peer");
}

#[test]
fn retargeting_keeps_a_remaining_copy_and_starts_a_new_one_full() {
    let (mut p, mut s) = pair();
    sync(&mut p, &mut s);
    write(&mut p, "a");
    retarget(&mut p, &[id(2), id(3)]);
    assert_eq!(
        p.copies[0].pending.len(),
        1,
        "the kept copy still needs its delta"
    );
    assert!(
        p.copies[1].full,
        "the new copy starts with the whole session"
    );
    retarget(&mut p, &[id(3)]);
    assert_eq!(p.copies.len(), 1);
    assert_eq!(p.copies[0].peer, id(3));
}

#[test]
fn a_failed_send_rehomes_a_live_session_and_forgets_an_ended_one() {
    let (mut p, _) = pair();
    assert_eq!(on_failure(&mut p, id(2)), AfterFailure::Rehome);
    assert_eq!(on_failure(&mut p, id(3)), AfterFailure::Nothing);
    end(&mut p);
    assert_eq!(on_failure(&mut p, id(2)), AfterFailure::Forget);
    assert!(p.is_vacant());
}

#[test]
fn a_primary_that_learns_of_a_newer_owner_through_a_copy_is_fenced() {
    let (mut p, _) = pair();
    let mut newer = p.session.clone().unwrap();
    newer.epoch = 2;
    newer.primary = id(3);
    newer.secondary = Some(id(1));
    let r = incoming(
        &mut p,
        id(3),
        Item::Full { session: newer },
        Instant::now(),
        LEASE,
        None,
    );
    assert_eq!(r.result, ItemResult::Applied);
    assert!(r.fence, "waiters on the old owner must give up");
    assert_eq!(p.role, Role::Replica);
    assert!(p.copies.is_empty());
}

#[test]
fn a_grant_raises_the_epoch_and_keeps_a_copy_here() {
    let (mut p, mut s) = pair();
    sync(&mut p, &mut s);
    let now = Instant::now();
    let (granted, old) = grant(&mut s, id(3), id(2), now, LEASE).unwrap();
    assert_eq!(
        (granted.epoch, granted.primary, granted.secondary),
        (2, id(3), Some(id(2)))
    );
    assert!(old.is_empty(), "a copy has no copies of its own to tell");
    assert_eq!(s.granted_until, now + LEASE);
    let mut taker = Slot::empty(now);
    assert!(!install(&mut taker, granted, 0, now));
    assert_eq!(taker.role, Role::Primary);
    assert_eq!(
        taker.copies[0].acked,
        Some(0),
        "the granter holds what it granted"
    );
    // The old owner's next write is refused by the granter, now a copy of the new owner.
    write(&mut p, "a");
    assert_eq!(sync(&mut p, &mut s), vec![AfterReply::Fenced]);
}

#[test]
fn an_owner_granting_its_session_names_its_other_copies() {
    let (mut p, _) = pair();
    let (_, old) = grant(&mut p, id(3), id(1), Instant::now(), LEASE).unwrap();
    assert_eq!(old, vec![id(2)]);
}

#[test]
fn a_promoted_copy_is_owned_here_and_flags_staleness() {
    let (mut p, mut s) = pair();
    sync(&mut p, &mut s);
    let got = promote(&mut s, id(2), 3, Instant::now()).unwrap();
    assert_eq!(
        got,
        Promoted {
            old_owner: id(1),
            stale: true
        }
    );
    let sess = s.session.as_ref().unwrap();
    assert_eq!((sess.epoch, sess.primary, sess.secondary), (2, id(2), None));
    assert_eq!(s.role, Role::Primary);
}

/// Node 1 sends a delta to node 2, then hands the session to node 2 before it arrives; node 2, owner now,
/// refuses it. Returns both slots, node 2's answer and the version node 1 sent.
fn a_late_item_refused_by_the_new_owner() -> (Slot, Slot, ItemResult, u64) {
    let (mut p, mut s) = pair();
    sync(&mut p, &mut s);
    write(&mut p, "a");
    let (item, v) = outgoing(&mut p, SID, id(2), false).unwrap();
    let now = Instant::now();
    let (granted, _) = grant(&mut p, id(2), id(1), now, LEASE).unwrap();
    install(&mut s, granted, 0, now);
    let r = incoming(&mut s, id(1), item, now, LEASE, None);
    assert!(matches!(r.result, ItemResult::Fenced { .. }));
    (p, s, r.result, v)
}

/// Found by the simulator (tests/simulator.rs, crash walks): node 1 sends an item, then hands the session
/// to node 2 before the answer comes; node 2, owner now, refuses the old item. That late `Fenced`
/// must not drop the copy node 1 now holds for node 2: it may be the only other copy of acknowledged writes.
#[test]
fn a_late_fenced_answer_leaves_the_copy_held_for_the_new_owner() {
    let (mut p, _, answer, v) = a_late_item_refused_by_the_new_owner();
    assert_eq!(on_reply(&mut p, id(2), v, &answer, 1), AfterReply::Fenced);
    let kept = p
        .session
        .as_ref()
        .expect("the copy for the new owner stays");
    assert_eq!((kept.epoch, kept.primary, kept.version), (2, id(2), 1));
}

/// The same late answer reaching a node that owns the session again, at a higher epoch, is about its old
/// tenure: the session stays, and so does its copy.
#[test]
fn a_late_fenced_answer_leaves_a_newer_tenure_alone() {
    let (mut p, mut s, answer, v) = a_late_item_refused_by_the_new_owner();
    // Node 1 takes it back (epoch 3) before the answer arrives.
    let now = Instant::now();
    let (back, _) = grant(&mut s, id(1), id(2), now, LEASE).unwrap();
    install(&mut p, back, 0, now);
    assert_ne!(on_reply(&mut p, id(2), v, &answer, 1), AfterReply::Fenced);
    assert_eq!(p.session.as_ref().map(|s| s.epoch), Some(3));
    assert_eq!(p.copies.len(), 1, "its copy on node 2 stays");
}

/// Found by the simulator (crash walks): node 1 grants the session to node 3 (epoch 2) and tells its old
/// copy on node 2 to drop it; before that removal arrives, node 3 re-homed its copy to node 2. The late
/// removal names epoch 2 but comes from node 1, not node 2's owner at epoch 2: it is refused, as any item
/// is, and node 3's copy stays.
#[test]
fn a_late_removal_from_an_old_owner_leaves_a_copy_of_the_same_epoch_alone() {
    let (mut p, mut s) = pair();
    sync(&mut p, &mut s);
    let now = Instant::now();
    let (granted, old) = grant(&mut p, id(3), id(1), now, LEASE).unwrap();
    assert_eq!(old, vec![id(2)]);
    let mut taker = Slot::empty(now);
    install(&mut taker, granted.clone(), 0, now);
    let r = incoming(
        &mut s,
        id(3),
        Item::Full { session: granted },
        now,
        LEASE,
        None,
    );
    assert_eq!(r.result, ItemResult::Applied);
    let removal = Item::Remove { sid: SID, epoch: 2 };
    let r = incoming(&mut s, id(1), removal, now, LEASE, None);
    assert!(matches!(r.result, ItemResult::Fenced { .. }));
    assert!(!r.forget && r.ended.is_none());
    assert_eq!(s.session.as_ref().map(|x| x.primary), Some(id(3)));
}

/// The owner's own removal at its epoch still removes the copy.
#[test]
fn the_owners_removal_at_its_epoch_removes_the_copy() {
    let (mut p, mut s) = pair();
    sync(&mut p, &mut s);
    let removal = Item::Remove { sid: SID, epoch: 1 };
    let r = incoming(&mut s, id(1), removal, Instant::now(), LEASE, None);
    assert_eq!(r.result, ItemResult::Applied);
    assert!(r.forget && r.ended.is_some() && s.session.is_none());
}

/// Found by the simulator (forward-timeout walks): a removal at epoch 2 reaches the copy first; a full copy
/// the epoch-1 owner sent earlier arrives after it. It must not bring the deleted session back, and its
/// sender drops its stale copy.
#[test]
fn a_late_copy_from_an_older_owner_does_not_bring_a_removed_session_back() {
    let (mut p, mut s) = pair();
    sync(&mut p, &mut s);
    let (late, v) = {
        p.copies[0].full = true;
        outgoing(&mut p, SID, id(2), false).unwrap()
    };
    let removal = Item::Remove { sid: SID, epoch: 2 };
    let r = incoming(&mut s, id(3), removal, Instant::now(), LEASE, None);
    assert_eq!(r.ended, Some(2));
    let r = incoming(&mut s, id(1), late, Instant::now(), LEASE, r.ended);
    assert_eq!(r.result, ItemResult::Ended { epoch: 2 });
    assert!(s.session.is_none(), "the removed session stays removed");
    assert_eq!(on_reply(&mut p, id(2), v, &r.result, 1), AfterReply::Fenced);
    assert!(p.session.is_none(), "the stale sender drops its copy");
}

/// Found by the simulator (`SIM_SEED=360` of the broadcast walks): the owner of epoch 1 removed the session;
/// a copy of that same epoch arriving after the removal (late, or from a second owner of the epoch) is
/// refused like an older one, and its sender drops it.
#[test]
fn a_copy_of_the_removed_epoch_itself_does_not_bring_the_session_back() {
    let (mut p, mut s) = pair();
    sync(&mut p, &mut s);
    let (late, v) = {
        p.copies[0].full = true;
        outgoing(&mut p, SID, id(2), false).unwrap()
    };
    let removal = Item::Remove { sid: SID, epoch: 1 };
    let r = incoming(&mut s, id(1), removal, Instant::now(), LEASE, None);
    assert_eq!(r.ended, Some(1));
    let r = incoming(&mut s, id(1), late, Instant::now(), LEASE, r.ended);
    assert_eq!(r.result, ItemResult::Ended { epoch: 1 });
    assert!(s.session.is_none(), "the removed session stays removed");
    assert_ne!(
        on_reply(&mut p, id(2), v, &r.result, 1),
        AfterReply::Resend,
        "the sender does not insist"
    );
    assert!(
        p.session.is_none(),
        "the sender of the same epoch drops its copy"
    );
}
