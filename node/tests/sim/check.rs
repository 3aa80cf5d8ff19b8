//! The invariants, checked after every step:
//!
//! 1. (sync mode) Every acknowledged write is on at least one live node: some live node's copy of its
//!    session (as primary or replica) holds its key, or a grant of the session on its way to a live node
//!    that waits for it does. A live node may drop the write only when a newer owner has it: some holder
//!    keeps it at a higher epoch than the dropped copy's. The one excuse for losing it is the documented
//!    "both dead" case: the step that took it off the last live node was that node's kill, and no live node
//!    dropped it wrongly before. A write stops being owed when its client asks to delete the session.
//! 2. For each (session, epoch), at most one node ever acknowledges writes.
//! 3. On a live node, since its last start, a session's copy never goes back: its epoch never decreases,
//!    and while the epoch stays the same its version never decreases (a copy dropped and held again later
//!    counts as the same copy).
//! 4. (sync mode) No node declares a session lost (and gives its client a fresh one) while a live node it
//!    asked holds a copy with one of the session's acknowledged writes still owed that names the declaring
//!    node as its owner: a session granted to it whose answer was lost is not lost, it is its own.

use std::collections::BTreeMap;

use node::ids::SessionId;
use node::session::Session;
use node::store::Role;
use node::wire::PullResult;

use super::{node_id, Body, Sim, Step, Waiter};

/// What has been acknowledged, and the highest copy each node held.
#[derive(Debug, Default)]
pub(crate) struct History {
    pub(crate) acks: Vec<Ack>,
    /// Who acknowledged writes at each (session, epoch).
    pub(crate) owners: BTreeMap<(SessionId, u64), usize>,
    /// The highest (epoch, version) each node held of each session since it last started.
    pub(crate) highest: BTreeMap<(usize, SessionId), (u64, u64)>,
    /// A broken invariant noticed in the middle of a step.
    pub(crate) broken: Option<String>,
}

/// One acknowledged write.
#[derive(Debug, Clone)]
pub(crate) struct Ack {
    pub(crate) sid: SessionId,
    pub(crate) trace: u64,
    pub(crate) version: u64,
    pub(crate) epoch: u64,
    pub(crate) node: usize,
    pub(crate) step: usize,
    /// The live nodes holding it after the last step, with the epoch of their copy.
    pub(crate) holders: Vec<(usize, u64)>,
    /// The first time a live node dropped it with no newer owner holding it.
    pub(crate) wrongly_dropped: Option<String>,
    pub(crate) fate: Fate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Still owed.
    Owed,
    /// Lost when its last live holder was killed, at this step.
    DiedWithLastHolder(usize),
    /// Its client deleted the session.
    Retired,
}

impl History {
    /// The client asked to delete `sid`: its writes are owed no longer.
    pub(crate) fn retire(&mut self, sid: SessionId) {
        for a in self.acks.iter_mut().filter(|a| a.sid == sid) {
            a.fate = Fate::Retired;
        }
    }

    /// Node `x` was killed or restarted: its memory is gone; invariant 3 starts over there.
    pub(crate) fn forget_node(&mut self, x: usize) {
        self.highest.retain(|(n, _), _| *n != x);
    }
}

/// The live nodes whose copy of `sid` holds write `trace`, with their copy's epoch; a grant on its way to a
/// live node that still waits for it counts as that node's copy (the granter stepped down for it; it is
/// installed on arrival).
fn holders(sim: &Sim, sid: SessionId, trace: u64) -> Vec<(usize, u64)> {
    let key = format!("w{trace}");
    let granted = |i: usize| {
        let asked = sim.nodes[i].entries.get(&sid)?.pulling.as_ref()?.asked?;
        sim.wire.iter().find_map(|m| match &m.body {
            Body::PullReply {
                pull,
                result: PullResult::Granted { session },
                ..
            } if m.to == i && *pull == asked && session.data.contains_key(&key) => {
                Some(session.epoch)
            }
            _ => None,
        })
    };
    let copy = |i: usize| {
        let s = sim.nodes[i].entries.get(&sid)?.slot.session.as_ref()?;
        s.data.contains_key(&key).then_some(s.epoch)
    };
    (0..sim.nodes.len())
        .filter(|&i| sim.nodes[i].alive)
        .filter_map(|i| Some((i, copy(i).or_else(|| granted(i))?)))
        .collect()
}

/// Node `x` acknowledged write `w`: invariant 2 is checked at once.
pub(crate) fn acknowledged(sim: &mut Sim, x: usize, w: &Waiter) {
    let owner = *sim.history.owners.entry((w.sid, w.epoch)).or_insert(x);
    if owner != x && sim.history.broken.is_none() {
        sim.history.broken = Some(format!(
            "invariant 2: n{x} acknowledged write w{} (version {}) of session s{} at epoch {}, where n{owner} \
             acknowledged writes before",
            w.trace, w.version, w.sid.0, w.epoch
        ));
    }
    let ack = Ack {
        sid: w.sid,
        trace: w.trace,
        version: w.version,
        epoch: w.epoch,
        node: x,
        step: sim.step_no,
        holders: holders(sim, w.sid, w.trace),
        wrongly_dropped: None,
        fate: Fate::Owed,
    };
    sim.history.acks.push(ack);
}

/// Node `x` declared session `sid` lost after asking `asked`: invariant 4 is checked at once.
pub(crate) fn declared_lost(sim: &mut Sim, x: usize, sid: SessionId, asked: &[usize]) {
    if !sim.sync() || sim.history.broken.is_some() {
        return;
    }
    let owed = sim
        .history
        .acks
        .iter()
        .filter(|a| a.sid == sid && a.fate == Fate::Owed);
    let names_x = |n: usize| sim.copy(n, sid).is_some_and(|s| s.primary == node_id(x));
    let mut held = owed.map(|a| {
        let mut h = holders(sim, sid, a.trace);
        h.retain(|(n, _)| asked.contains(n) && names_x(*n));
        (a, h)
    });
    if let Some((a, h)) = held.find(|(_, h)| !h.is_empty()) {
        sim.history.broken = Some(format!(
            "invariant 4: n{x} declared session s{} lost while its acknowledged write w{} is held by {h:?}              (node, epoch)",
            sid.0, a.trace
        ));
    }
}

/// After quiescence in a broadcast group (`Sim::quiesce`): a session with a live owner has one, and every
/// live member holds the owner's copy: the same epoch, version, owner and data, so concurrent writes at
/// different members were each applied once, in the one order every member holds.
pub(crate) fn converged(sim: &Sim) -> Result<(), String> {
    let live: Vec<usize> = (0..sim.nodes.len())
        .filter(|&i| sim.nodes[i].alive)
        .collect();
    for sid in sim.sessions() {
        let owners: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| {
                let e = &sim.nodes[i].entries.get(&sid);
                e.is_some_and(|e| e.slot.role == Role::Primary && e.slot.session.is_some())
            })
            .collect();
        let Some(&owner) = owners.first() else {
            continue;
        };
        if owners.len() > 1 {
            return Err(format!(
                "after quiescence session s{} has owners {owners:?}",
                sid.0
            ));
        }
        let want = sim.copy(owner, sid).expect("an owner holds the session");
        let brief = |s: &Session| (s.epoch, s.version, sim.index(s.primary));
        for &m in live.iter().filter(|&&m| m != owner) {
            let same = sim.copy(m, sid).is_some_and(|c| {
                (c.epoch, c.version, c.primary) == (want.epoch, want.version, want.primary)
                    && c.data == want.data
            });
            if !same {
                return Err(format!(
                    "after quiescence n{m} holds {:?} of session s{} where its owner n{owner} holds {:?} \
                     (epoch, version, owner){}",
                    sim.copy(m, sid).map(brief),
                    sid.0,
                    brief(want),
                    if sim.copy(m, sid).is_some_and(|c| brief(c) == brief(want)) {
                        ", with other data"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    Ok(())
}

/// Checks every invariant after a step; `Err` says which one broke and how.
pub(crate) fn after_step(sim: &mut Sim) -> Result<(), String> {
    if let Some(b) = sim.history.broken.take() {
        return Err(b);
    }
    never_back(sim)?;
    if sim.sync() {
        nothing_acknowledged_lost(sim)?;
    }
    Ok(())
}

/// Invariant 3.
fn never_back(sim: &mut Sim) -> Result<(), String> {
    for (x, n) in sim.nodes.iter().enumerate().filter(|(_, n)| n.alive) {
        for (sid, e) in &n.entries {
            let Some(s) = &e.slot.session else { continue };
            let now = (s.epoch, s.version);
            let before = sim.history.highest.entry((x, *sid)).or_insert(now);
            let back = now.0 < before.0 || (now.0 == before.0 && now.1 < before.1);
            if back {
                return Err(format!(
                    "invariant 3: n{x}'s copy of session s{} went back from epoch {} version {} to epoch {} \
                     version {}",
                    sid.0, before.0, before.1, now.0, now.1
                ));
            }
            *before = now.max(*before);
        }
    }
    Ok(())
}

/// Invariant 1.
fn nothing_acknowledged_lost(sim: &mut Sim) -> Result<(), String> {
    let killed = match sim.steps.last() {
        Some(Step::Kill { node }) => Some(*node),
        _ => None,
    };
    for i in 0..sim.history.acks.len() {
        if sim.history.acks[i].fate != Fate::Owed {
            continue;
        }
        let a = &sim.history.acks[i];
        let now = holders(sim, a.sid, a.trace);
        // A live node that no longer holds it: fine only if a newer owner has it.
        let newest = now.iter().map(|h| h.1).max();
        let dropped = a.holders.iter().find(|(n, e)| {
            sim.nodes[*n].alive && !now.iter().any(|h| h.0 == *n) && newest.is_none_or(|m| m <= *e)
        });
        let dropped = dropped.map(|(n, e)| {
            format!(
                "n{n} dropped its epoch-{e} copy at step {} with no newer owner holding it",
                sim.step_no
            )
        });
        let a = &mut sim.history.acks[i];
        a.wrongly_dropped = a.wrongly_dropped.take().or(dropped);
        let last_holder_killed = killed.is_some_and(|k| a.holders.iter().map(|h| h.0).eq([k]));
        if !now.is_empty() {
            a.holders = now;
        } else if last_holder_killed && a.wrongly_dropped.is_none() {
            a.fate = Fate::DiedWithLastHolder(sim.step_no);
            sim.stats.lost_with_last_holder += 1;
        } else {
            return Err(format!(
                "invariant 1: write w{} (version {}, epoch {}) of session s{}, acknowledged by n{} at step {}, \
                 is on no live node; after the step before it was on {:?} (node, epoch){}",
                a.trace,
                a.version,
                a.epoch,
                a.sid.0,
                a.node,
                a.step,
                a.holders,
                a.wrongly_dropped.as_ref().map_or(String::new(), |d| format!("; before that, {d}"))
            ));
        }
    }
    Ok(())
}
