//! Each node's view of the others (membership.rs): heartbeats, probes, failed calls, the changes they
//! report (re-homing, as `Replicator::on_change`), the choice of a secondary; and the crash faults.
//! Probes and heartbeats see the truth at once: a heartbeat that misses marks a peer down at once, where the
//! shell waits for several misses (the simulation reaches the same views, only sooner).

use super::*;

impl Sim {
    /// `SessionService::responsive`: `owner` is another node, looks alive, and answers now.
    pub(super) fn responsive(&mut self, x: usize, owner: usize) -> bool {
        owner != x && self.nodes[x].view[owner].alive && self.probe(x, owner)
    }

    /// `Membership::probe`.
    pub(super) fn probe(&mut self, x: usize, p: usize) -> bool {
        if self.reachable(x, p) {
            self.mark_alive(x, p);
            true
        } else {
            let refused = self.refused(x, p);
            self.mark_failed(x, p, refused);
            false
        }
    }

    /// `Membership::heartbeat` to every peer.
    pub(super) fn heartbeat(&mut self, x: usize) {
        if !self.nodes[x].alive {
            return;
        }
        for p in 0..self.nodes.len() {
            if p != x {
                self.probe(x, p);
            }
        }
    }

    /// `Membership::mark_alive`, with the incarnation `p` answered with.
    fn mark_alive(&mut self, x: usize, p: usize) {
        let incarnation = self.nodes[p].incarnation;
        let v = &mut self.nodes[x].view[p];
        let before = std::mem::replace(&mut v.incarnation, incarnation);
        if before != 0 && before != incarnation {
            // Restarted since its last answer, too quickly for a heartbeat to miss: it holds nothing now
            // (`Change::Restarted`).
            self.resend_all(x, p);
        }
        let v = &mut self.nodes[x].view[p];
        v.gone = false;
        if !v.alive {
            v.alive = true;
            self.peer_up(x, p);
        }
    }

    /// `Membership::mark_failed`: a refused connection also marks the peer gone; the change is acted on.
    pub(super) fn mark_failed(&mut self, x: usize, p: usize, refused: bool) {
        if self.note_failed(x, p, refused) {
            self.peer_down(x, p);
        }
    }

    /// `mark_failed` without acting on the change: whether `p` went from alive to dead in `x`'s view. The
    /// shell reports the change to the replicator's own task, so its re-homing may come later.
    pub(super) fn note_failed(&mut self, x: usize, p: usize, refused: bool) -> bool {
        if refused {
            self.nodes[x].view[p].gone = true;
        }
        if p == x || !self.nodes[x].view[p].alive {
            return false;
        }
        self.nodes[x].view[p].alive = false;
        true
    }

    pub(super) fn mark_gone(&mut self, x: usize, p: usize) {
        self.mark_failed(x, p, true);
    }

    /// `Replicator::on_change(Change::Down)`: a dead peer's sessions get new copies.
    pub(super) fn peer_down(&mut self, x: usize, p: usize) {
        let id = node_id(p);
        self.rehome_all(x, |c| c.contains(&id), p);
    }

    /// `Replicator::on_change(Change::Up)`: a broadcast group member (back, or new) gets every session of the
    /// group; otherwise sessions short of copies get them.
    fn peer_up(&mut self, x: usize, p: usize) {
        let id = node_id(p);
        if self.is_group_peer(p) {
            self.rehome_all(x, |c| !c.contains(&id), p);
        } else {
            let wanted = self.cfg.topology.copies();
            self.rehome_all(x, |c| c.len() < wanted, p);
        }
    }

    /// `Membership::is_group_peer`: every node is in the one group of a broadcast run.
    fn is_group_peer(&self, _p: usize) -> bool {
        self.cfg.topology == Topology::Broadcast
    }

    /// `Membership::group`: the peers of `x`'s broadcast group that look alive to `x`, in id order; none
    /// outside the broadcast topology.
    pub(super) fn group(&self, x: usize) -> Vec<NodeId> {
        let mut ids = self.holders(x);
        ids.retain(|&id| self.nodes[x].view[self.index(id)].alive);
        ids
    }

    /// `Membership::holders`: every peer of `x`'s group, alive or not (a takeover probes them), in id order;
    /// none in a pair (nor a bank: the simulation has no session servers).
    pub(super) fn holders(&self, x: usize) -> Vec<NodeId> {
        if !self.is_group_peer(x) {
            return Vec::new();
        }
        let mut ids: Vec<NodeId> = (0..self.nodes.len())
            .filter(|&p| p != x)
            .map(node_id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// `Membership::copy_targets`: who should hold a copy of `s`, owned by `x`, now.
    pub(super) fn copy_targets(&self, x: usize, s: &Session) -> Vec<NodeId> {
        self.cfg.topology.copy_targets(s, &self.group(x))
    }

    /// `Membership::choose_secondary`: any live-looking peer but `x` and `exclude` (the shell prefers
    /// another machine, then the least loaded; any choice is one the shell could make).
    pub(super) fn choose_secondary(&mut self, x: usize, exclude: &[usize]) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.nodes.len())
            .filter(|&p| p != x && self.nodes[x].view[p].alive && !exclude.contains(&p))
            .collect();
        (!candidates.is_empty()).then(|| self.rng.pick(&candidates))
    }

    /// The process dies: everything in its memory goes; what it sent is still on the wire.
    pub(super) fn kill(&mut self, x: usize) {
        let n = &mut self.nodes[x];
        if !n.alive {
            return;
        }
        self.stats.unanswered += n.waiting.len() as u64;
        *n = SimNode::new(self.cfg.nodes, false, n.incarnation);
        n.alive = false;
        self.history.forget_node(x);
    }

    /// A dead node starts again, empty. Peers start as dead until a heartbeat answers (`Membership::new`);
    /// unless views lag, its first heartbeats and its peers' next ones happen at once.
    pub(super) fn restart(&mut self, x: usize) {
        if self.nodes[x].alive {
            return;
        }
        let incarnation = self.nodes[x].incarnation + 1;
        self.nodes[x] = SimNode::new(self.cfg.nodes, false, incarnation);
        self.history.forget_node(x);
        if !self.cfg.faults.lagging_views {
            self.heartbeat(x);
            for p in 0..self.nodes.len() {
                if p != x && self.nodes[p].alive && self.reachable(p, x) {
                    self.probe(p, x);
                }
            }
        }
    }
}
