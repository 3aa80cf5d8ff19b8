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

    fn mark_alive(&mut self, x: usize, p: usize) {
        let v = &mut self.nodes[x].view[p];
        v.gone = false;
        if !v.alive {
            v.alive = true;
            // A peer coming up takes copies of sessions that had none.
            self.rehome_all(x, |c| c.is_empty(), p);
        }
    }

    /// `Membership::mark_failed`: a refused connection also marks the peer gone.
    pub(super) fn mark_failed(&mut self, x: usize, p: usize, refused: bool) {
        if refused {
            self.mark_gone(x, p);
        } else {
            self.mark_dead(x, p);
        }
    }

    pub(super) fn mark_gone(&mut self, x: usize, p: usize) {
        self.nodes[x].view[p].gone = true;
        self.mark_dead(x, p);
    }

    fn mark_dead(&mut self, x: usize, p: usize) {
        if p == x || !self.nodes[x].view[p].alive {
            return;
        }
        self.nodes[x].view[p].alive = false;
        // A dead peer's sessions get new copies.
        let id = node_id(p);
        self.rehome_all(x, |c| c.contains(&id), p);
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
        *n = SimNode::new(self.cfg.nodes, false);
        n.alive = false;
        self.history.forget_node(x);
    }

    /// A dead node starts again, empty. Peers start as dead until a heartbeat answers (`Membership::new`);
    /// unless views lag, its first heartbeats and its peers' next ones happen at once.
    pub(super) fn restart(&mut self, x: usize) {
        if self.nodes[x].alive {
            return;
        }
        self.nodes[x] = SimNode::new(self.cfg.nodes, false);
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
