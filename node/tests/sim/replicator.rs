//! The replicator's part of the shell (replicate/replicator.rs) and the receiving side (peer_server.rs):
//! queue, send one batch per peer at a time, carry out the core's verdict on each answer or on a failed
//! call, re-home copies; and the wire itself: delivery, loss, late arrival.

use node::replicate::{self, AfterFailure, AfterReply};
use node::store::Role;
use node::wire::{Item, ItemResult};

use super::*;

impl Sim {
    pub(super) fn enqueue(&mut self, x: usize, peer: usize, sid: SessionId) {
        if let Some(gen) = self.nodes[x].entries.get(&sid).map(|e| e.gen) {
            self.nodes[x].queue.insert((peer, sid, gen));
        }
    }

    /// `Replicator::run` + `send_batch`: one batch of everything queued for `peer`, if none is in flight.
    pub(super) fn send(&mut self, x: usize, peer: usize) {
        if !self.nodes[x].alive || self.nodes[x].inflight[peer].is_some() {
            return;
        }
        let queued: Vec<(usize, SessionId, u64)> = self.nodes[x]
            .queue
            .iter()
            .filter(|q| q.0 == peer)
            .copied()
            .collect();
        let (mut items, mut sent) = (Vec::new(), Vec::new());
        for q in queued {
            let (_, sid, gen) = q;
            let node = &mut self.nodes[x];
            match node.entries.get_mut(&sid) {
                // Locked by a takeover: the shell waits for the lock; it stays queued.
                Some(e) if e.pulling.is_some() => continue,
                Some(e) if e.gen == gen => {
                    node.queue.remove(&q);
                    if let Some((item, v)) =
                        replicate::outgoing(&mut e.slot, sid, node_id(peer), false)
                    {
                        items.push((item, v));
                        sent.push((sid, gen, v));
                    }
                }
                // Queued for an entry removed since.
                _ => {
                    node.queue.remove(&q);
                }
            }
        }
        if items.is_empty() {
            return;
        }
        let body = Body::Batch {
            items,
            answered: true,
        };
        let id = self.new_msg(x, peer, body);
        self.nodes[x].inflight[peer] = Some(id);
        self.nodes[x].sent.insert(id, sent);
    }

    /// Ends the call of batch `batch`: what it carried, or `None` when it is not the call in flight (the
    /// node died since, or gave up on it already).
    fn end_call(
        &mut self,
        x: usize,
        peer: usize,
        batch: u64,
    ) -> Option<Vec<(SessionId, u64, u64)>> {
        let n = &mut self.nodes[x];
        if !n.alive || n.inflight[peer] != Some(batch) {
            return None;
        }
        n.inflight[peer] = None;
        n.sent.remove(&batch)
    }

    /// The entry `gen` of `sid` on `x`, if it is still there and not locked by a takeover.
    fn current(&mut self, x: usize, sid: SessionId, gen: u64) -> Option<&mut SimEntry> {
        let e = self.nodes[x].entries.get_mut(&sid)?;
        (e.gen == gen && e.pulling.is_none()).then_some(e)
    }

    /// `send_batch`'s answer path: each answer through `on_reply`, then what the core said.
    fn batch_answered(&mut self, x: usize, peer: usize, batch: u64, results: Vec<ItemResult>) {
        let Some(sent) = self.end_call(x, peer, batch) else {
            return;
        };
        let lease_until = self.now() + LEASE;
        let (mode, topology) = (self.cfg.mode, self.cfg.topology);
        for ((sid, gen, version), result) in sent.into_iter().zip(results) {
            let Some(e) = self.current(x, sid, gen) else {
                continue;
            };
            let needed = topology.acks_needed(mode, e.slot.copies.len());
            match replicate::on_reply(&mut e.slot, node_id(peer), version, &result, needed) {
                AfterReply::Acked { durable } => self.update_mark(x, sid, |m| {
                    if let Some(v) = durable {
                        m.copied = m.copied.max(v + 1);
                    }
                    m.lease_until = m.lease_until.max(lease_until);
                    m.lease_seq += 1;
                }),
                AfterReply::Resend => self.enqueue(x, peer, sid),
                AfterReply::Fenced => self.update_mark(x, sid, |m| m.fenced = true),
                AfterReply::Ignored => {}
            }
            self.drop_if_vacant(x, sid);
        }
    }

    /// `send_items`' error path: the peer marked down, every session of the batch re-homed (the peer
    /// excluded) or forgotten; then the change re-homes the rest, as `Replicator::on_change` does.
    fn batch_failed(&mut self, x: usize, peer: usize, batch: u64, refused: bool) {
        let Some(sent) = self.end_call(x, peer, batch) else {
            return;
        };
        // Marked first: a broadcast group's re-homing below copies to the live group, which no longer
        // includes the peer.
        let down = self.note_failed(x, peer, refused);
        for (sid, gen, _) in sent {
            let Some(e) = self.current(x, sid, gen) else {
                continue;
            };
            match replicate::on_failure(&mut e.slot, node_id(peer)) {
                AfterFailure::Rehome => self.rehome(x, sid, &[peer]),
                AfterFailure::Forget => {
                    self.update_mark(x, sid, |m| m.lease_seq += 1);
                    self.remove_entry(x, sid);
                }
                AfterFailure::Nothing => {}
            }
        }
        if down {
            self.peer_down(x, peer);
        }
    }

    /// `Replicator::rehome`: new copy targets for one primary session (none of `exclude`), full copies to
    /// the new ones; with no live peer it runs without a copy and its waiting writes are released, and with
    /// fewer copies what the kept ones confirmed may be enough to release them.
    pub(super) fn rehome(&mut self, x: usize, sid: SessionId, exclude: &[usize]) {
        let Some(secondary) = self.nodes[x]
            .entries
            .get(&sid)
            .and_then(|e| e.slot.session.as_ref())
            .map(|s| s.secondary)
        else {
            return;
        };
        // A broadcast group's session keeps the secondary its cookie names while that one lives.
        let keep = self.cfg.topology == Topology::Broadcast
            && secondary.is_some_and(|n| {
                let n = self.index(n);
                self.nodes[x].view[n].alive && !exclude.contains(&n)
            });
        let secondary = if keep {
            secondary
        } else {
            self.choose_secondary(x, exclude).map(node_id)
        };
        let group = self.group(x);
        let e = self.nodes[x].entries.get_mut(&sid).expect("checked above");
        let s = e.slot.session.as_mut().expect("checked above");
        s.secondary = secondary;
        let version = s.version;
        let targets = self.cfg.topology.copy_targets(s, &group);
        replicate::retarget(&mut e.slot, &targets);
        let needed = self
            .cfg
            .topology
            .acks_needed(self.cfg.mode, e.slot.copies.len());
        let acked = e.slot.copies.iter().map(|c| c.acked);
        let durable = node::topology::durable(acked, needed, version);
        if targets.is_empty() {
            self.update_mark(x, sid, |m| {
                m.copied = m.copied.max(version + 1);
                m.lease_seq += 1;
            });
        } else if let Some(v) = durable {
            self.update_mark(x, sid, |m| m.copied = m.copied.max(v + 1));
        }
        for t in targets {
            self.enqueue(x, self.index(t), sid);
        }
    }

    /// `Replicator::rehome_all`: every primary session here whose copies (their peers) match `pred` gets new
    /// ones (never `avoid` while it looks down).
    pub(super) fn rehome_all(&mut self, x: usize, pred: impl Fn(&[NodeId]) -> bool, avoid: usize) {
        let sids: Vec<SessionId> = self.nodes[x]
            .entries
            .iter()
            .filter(|(_, e)| {
                let primary = e.slot.role == Role::Primary && e.slot.session.is_some();
                let peers: Vec<NodeId> = e.slot.copies.iter().map(|c| c.peer).collect();
                e.pulling.is_none() && primary && pred(&peers)
            })
            .map(|(sid, _)| *sid)
            .collect();
        for sid in sids {
            let exclude = if self.nodes[x].view[avoid].alive {
                vec![]
            } else {
                vec![avoid]
            };
            self.rehome(x, sid, &exclude);
        }
    }

    /// `Replicator::resend_all`: `peer` restarted since its last answer and holds nothing, so every primary
    /// session copied to it is sent in full again.
    pub(super) fn resend_all(&mut self, x: usize, peer: usize) {
        let id = node_id(peer);
        let mut sids = Vec::new();
        for (sid, e) in &mut self.nodes[x].entries {
            if e.slot.role != Role::Primary || e.slot.session.is_none() {
                continue;
            }
            if let Some(c) = e.slot.copies.iter_mut().find(|c| c.peer == id) {
                c.full = true;
                c.acked = None;
                sids.push(*sid);
            }
        }
        for sid in sids {
            self.enqueue(x, peer, sid);
        }
    }

    /// `PeerServer::receive`: one item from primary `from`, under its session's lock.
    fn receive(&mut self, y: usize, from: usize, item: Item) -> ItemResult {
        let sid = item.sid();
        let now = self.now();
        let ended = self.nodes[y].ended.get(&sid).copied();
        let e = self.entry_or_insert(y, sid);
        let r = replicate::incoming(&mut e.slot, node_id(from), item, now, LEASE, ended);
        if r.fence {
            self.update_mark(y, sid, |m| m.fenced = true);
        }
        if let Some(epoch) = r.ended {
            self.nodes[y].ended.insert(sid, epoch);
        }
        if r.forget {
            self.remove_entry(y, sid);
        }
        r.result
    }

    /// Message `id` arrives: or, when its receiver is dead or the link cut, its sender's call fails. A
    /// message whose session is locked on the receiver stays on the wire (as if it arrived later).
    pub(super) fn deliver(&mut self, id: u64) {
        let Some(m) = self.wire.iter().find(|m| m.id == id).cloned() else {
            return;
        };
        if !self.reachable(m.from, m.to) {
            self.take_msg(id);
            return self.call_failed(&m, self.refused(m.from, m.to));
        }
        match m.body {
            Body::Batch { items, answered } => {
                let locked = items.iter().any(|(item, _)| {
                    let e = self.nodes[m.to].entries.get(&item.sid());
                    e.is_some_and(|e| e.pulling.is_some())
                });
                if locked {
                    return;
                }
                self.take_msg(id);
                let results = items
                    .into_iter()
                    .map(|(item, _)| self.receive(m.to, m.from, item))
                    .collect();
                if answered && !m.orphan {
                    let body = Body::BatchReply {
                        batch: m.id,
                        results,
                    };
                    self.new_msg(m.to, m.from, body);
                }
            }
            Body::BatchReply { batch, results } => {
                self.take_msg(id);
                self.batch_answered(m.to, m.from, batch, results);
            }
            Body::Pull {
                sid,
                owner_unreachable,
                min_version,
            } => {
                let served = self.serve_pull(m.to, m.from, sid, owner_unreachable, min_version);
                let Some(result) = served else {
                    return; // waits out a lease: the same as arriving later
                };
                self.take_msg(id);
                if !m.orphan {
                    let body = Body::PullReply {
                        pull: m.id,
                        sid,
                        result,
                    };
                    self.new_msg(m.to, m.from, body);
                }
            }
            Body::PullReply { pull, sid, result } => {
                self.take_msg(id);
                self.pull_answered(m.to, pull, sid, result);
            }
        }
    }

    /// The sender of message `id` stops waiting (`lost`: the message is gone too; else it may still
    /// arrive, its answer dropped). An answer given up on is simply gone: its call failed.
    pub(super) fn give_up(&mut self, id: u64, lost: bool) {
        let Some(i) = self.wire.iter().position(|m| m.id == id) else {
            return;
        };
        let m = self.wire[i].clone();
        let request = matches!(m.body, Body::Batch { .. } | Body::Pull { .. });
        if lost || !request {
            self.wire.remove(i);
        } else {
            self.wire[i].orphan = true;
        }
        self.call_failed(&m, false);
    }

    /// The call that `m` belongs to failed (`refused`: the receiver's port refused the connection).
    fn call_failed(&mut self, m: &Msg, refused: bool) {
        match &m.body {
            Body::Batch { answered: true, .. } if !m.orphan => {
                self.batch_failed(m.from, m.to, m.id, refused)
            }
            Body::BatchReply { batch, .. } => self.batch_failed(m.to, m.from, *batch, false),
            Body::Pull { sid, .. } if !m.orphan => {
                self.pull_failed(m.from, m.to, m.id, *sid, refused)
            }
            Body::PullReply { pull, sid, .. } => self.pull_failed(m.to, m.from, *pull, *sid, false),
            _ => {}
        }
    }
}
