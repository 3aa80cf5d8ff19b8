//! The takeover part of the shell (takeover.rs): serving a pull (the granting side) and recovering a
//! session by pulling it from the pair the cookie names (the requester's side, one pull at a time, its
//! answers arriving as later steps).

use node::ids::Pair;
use node::replicate;
use node::store::Role;
use node::takeover::{decide, Grant, PullView};
use node::wire::{Item, PullResult};

use super::*;

const PULL_ROUNDS: u32 = 6;

impl Sim {
    /// `Takeover::serve_pull` on `c` for `requester`. `None` while it waits out the lease the copy granted
    /// (the pull stays on the wire: the same as arriving later).
    pub(super) fn serve_pull(
        &mut self,
        c: usize,
        requester: usize,
        sid: SessionId,
        owner_unreachable: bool,
        min_version: u64,
    ) -> Option<PullResult> {
        let Some(e) = self.nodes[c].entries.get(&sid) else {
            return Some(if self.nodes[c].ended.contains_key(&sid) {
                PullResult::Ended
            } else {
                PullResult::NotFound
            });
        };
        if e.pulling.is_some() {
            return Some(PullResult::Busy); // its lock is held longer than PULL_LOCK_WAIT
        }
        let Some(s) = e.slot.session.as_ref() else {
            return Some(PullResult::NotFound);
        };
        if s.version < min_version {
            // Older than what the client already saw: a copy left behind; a current one is elsewhere.
            return Some(PullResult::NotFound);
        }
        let owner = self.index(s.primary);
        let view = PullView {
            role: e.slot.role,
            owner: s.primary,
            requester: node_id(requester),
            me: node_id(c),
            waiting_writes: self.sync() && !e.slot.copies.is_empty() && !e.mark.covers(s.version),
            owner_alive: owner == c || self.nodes[c].view[owner].alive,
            owner_unreachable,
            owner_gone: self.nodes[c].view[owner].gone,
        };
        let mut decision = decide(&view);
        if decision == Grant::CheckOwner {
            decision = if self.probe(c, owner) {
                Grant::Redirect
            } else {
                decide(&PullView {
                    owner_alive: false,
                    owner_gone: self.nodes[c].view[owner].gone,
                    ..view
                })
            };
        }
        let now = self.now();
        let e = self.nodes[c].entries.get_mut(&sid)?;
        match decision {
            Grant::Busy => return Some(PullResult::Busy),
            Grant::Redirect => {
                let owner = node_id(owner);
                return Some(PullResult::Redirect { owner });
            }
            Grant::AfterLease if now < e.slot.granted_until => return None,
            _ => {}
        }
        let was_primary = e.slot.role == Role::Primary;
        let Some((granted, old_copies)) =
            replicate::grant(&mut e.slot, node_id(requester), node_id(c), now, LEASE)
        else {
            return Some(PullResult::NotFound);
        };
        self.stats.grants += 1;
        if was_primary {
            self.update_mark(c, sid, |m| m.fenced = true);
            // Old copies are orphans now: told to drop theirs, best effort, nobody waits for the answer.
            let items = vec![(
                Item::Drop {
                    sid,
                    epoch: granted.epoch,
                    version: granted.version,
                },
                0,
            )];
            for old in old_copies {
                let body = Body::Batch {
                    items: items.clone(),
                    answered: false,
                };
                self.new_msg(c, self.index(old), body);
            }
        }
        Some(PullResult::Granted { session: granted })
    }

    /// `Takeover::recover`, its start: the entry is locked and the pair's members asked in turn.
    pub(super) fn start_recover(&mut self, x: usize, req: Request, owner_unreachable: bool) {
        let cookie = req.cookie.expect("a takeover starts from a cookie");
        let pair = Pair {
            primary: node_id(cookie.primary),
            secondary: cookie.secondary.map(node_id),
        };
        let holders = self.holders(x);
        let candidates = self
            .cfg
            .topology
            .takeover_sources(pair, node_id(x), || holders)
            .into_iter()
            .map(|n| self.index(n))
            .collect();
        let now = self.now();
        self.entry_or_insert(x, cookie.sid).pulling = Some(Pulling {
            req,
            candidates,
            next: 0,
            round: 0,
            busy: false,
            unanswered: Vec::new(),
            silent: false,
            owner_unreachable,
            min_version: cookie.version,
            asked: None,
            sent_at: now,
        });
        self.ask_next(x, cookie.sid);
    }

    fn pulling(&mut self, x: usize, sid: SessionId) -> Option<&mut Pulling> {
        self.nodes[x].entries.get_mut(&sid)?.pulling.as_mut()
    }

    /// `recover`'s loop: the next candidate that looks alive or answers a probe gets a pull; a busy answer, or
    /// a first failed call, ends the round and starts another (up to `PULL_ROUNDS`, after which the request
    /// gives up); when every candidate said it has nothing as new as the cookie, another round takes any
    /// copy; when they said it has nothing at all, the session is lost and the client gets a fresh one.
    fn ask_next(&mut self, x: usize, sid: SessionId) {
        loop {
            let Some(p) = self.pulling(x, sid).cloned() else {
                return;
            };
            if p.next < p.candidates.len() {
                let c = p.candidates[p.next];
                self.pulling(x, sid).expect("checked above").next += 1;
                if !self.nodes[x].view[c].alive && !self.probe(x, c) {
                    // Silent still, unless its port refuses (`recover`).
                    let gone = self.nodes[x].view[c].gone;
                    let p = self.pulling(x, sid).expect("checked above");
                    p.silent |= p.unanswered.contains(&c) && !gone;
                    continue;
                }
                let primary = p
                    .req
                    .cookie
                    .expect("a takeover starts from a cookie")
                    .primary;
                let primary_alive = primary == x || self.nodes[x].view[primary].alive;
                let body = Body::Pull {
                    sid,
                    owner_unreachable: p.owner_unreachable || !primary_alive,
                    min_version: p.min_version,
                };
                let id = self.new_msg(x, c, body);
                let now = self.now();
                let p = self.pulling(x, sid).expect("checked above");
                (p.asked, p.sent_at) = (Some(id), now);
                return;
            }
            if p.busy && p.round + 1 < PULL_ROUNDS {
                let p = self.pulling(x, sid).expect("checked above");
                (p.round, p.next, p.busy, p.silent) = (p.round + 1, 0, false, false);
                // A candidate that did not answer goes first (`recover`).
                let unanswered = p.unanswered.clone();
                p.candidates.sort_by_key(|c| !unanswered.contains(c));
                continue;
            }
            if !p.busy && !p.silent && p.min_version > 0 && p.round + 1 < PULL_ROUNDS {
                // Every holder said it has nothing as new as the cookie: settle for the best copy left.
                let p = self.pulling(x, sid).expect("checked above");
                (p.round, p.next, p.min_version) = (p.round + 1, 0, 0);
                continue;
            }
            if p.busy || p.silent {
                // `Recovered::Busy`: the shell lets go of the lock and locates the session again, and in the
                // end asks the client to retry; here the request stops and the client tries later.
                self.end_pull(x, sid);
                self.stats.unanswered += 1;
                return;
            }
            // Nobody the cookie names has it: an orphan copy held here is the best one left. Like the
            // shell's promotion it waits out the lease it granted unless its owner is gone (here: the
            // request stops and the client tries later).
            let orphan = self.nodes[x].entries.get(&sid).and_then(|e| {
                let s = e.slot.session.as_ref()?;
                (e.slot.role == Role::Replica)
                    .then(|| (self.index(s.primary), e.slot.granted_until))
            });
            if let Some(e) = self.nodes[x].entries.get_mut(&sid) {
                e.pulling = None;
            }
            if let Some((owner, granted_until)) = orphan {
                if !self.nodes[x].view[owner].gone && self.now() < granted_until {
                    return;
                }
                return self.promote(x, p.req, sid);
            }
            self.end_pull(x, sid);
            if p.req.op == Op::Write {
                self.stats.lost_declared += 1;
                check::declared_lost(self, x, sid, &p.candidates);
            }
            return self.fresh(x, p.req);
        }
    }

    fn end_pull(&mut self, x: usize, sid: SessionId) {
        if let Some(e) = self.nodes[x].entries.get_mut(&sid) {
            e.pulling = None;
        }
        self.drop_if_vacant(x, sid);
    }

    /// The answer to pull `pull` reached the requester `x`.
    pub(super) fn pull_answered(
        &mut self,
        x: usize,
        pull: u64,
        sid: SessionId,
        result: PullResult,
    ) {
        let Some(p) = self.pulling(x, sid).cloned() else {
            return;
        };
        if !self.nodes[x].alive || p.asked != Some(pull) {
            return;
        }
        match result {
            PullResult::Granted { session } => {
                let version = session.version;
                let cookie_version = p.req.cookie.map_or(0, |c| c.version);
                let now = self.now();
                let e = self.nodes[x].entries.get_mut(&sid).expect("pulling above");
                e.pulling = None;
                replicate::install(&mut e.slot, session, cookie_version, now);
                self.reset_mark(x, sid, version + 1, p.sent_at + LEASE);
                if self.cfg.topology == Topology::Broadcast {
                    // The granter keeps its copy; every other live member of the group gets one too.
                    self.rehome(x, sid, &[]);
                }
                self.stats.installs += 1;
                self.run(x, p.req, sid);
            }
            PullResult::Redirect { owner } if owner != node_id(x) => {
                self.end_pull(x, sid);
                let owner = self.index(owner);
                // `execute` forwards to the owner named; a forward that cannot get there ends this request.
                if p.req.hops < 2 && self.reachable(x, owner) {
                    let hops = p.req.hops + 1;
                    self.execute(owner, Request { hops, ..p.req }, false);
                }
            }
            PullResult::Busy => {
                self.end_round(x, sid);
                self.ask_next(x, sid);
            }
            PullResult::Ended => {
                self.end_pull(x, sid);
                self.fresh(x, p.req);
            }
            _ => self.ask_next(x, sid),
        }
    }

    /// The call of pull `pull` from `x` to `c` failed: a refused connection marks `c` gone; on to the next.
    pub(super) fn pull_failed(
        &mut self,
        x: usize,
        c: usize,
        pull: u64,
        sid: SessionId,
        refused: bool,
    ) {
        let asked = self.pulling(x, sid).and_then(|p| p.asked);
        if !self.nodes[x].alive || asked != Some(pull) {
            return;
        }
        if refused {
            self.mark_gone(x, c);
        } else if let Some(p) = self.pulling(x, sid) {
            if p.unanswered.contains(&c) {
                p.silent = true;
            } else {
                // It may have granted the session and its answer been lost: asked again first.
                p.unanswered.push(c);
                self.end_round(x, sid);
            }
        }
        self.ask_next(x, sid);
    }

    /// The round ends here; another follows (the shell's `busy` and `break`).
    fn end_round(&mut self, x: usize, sid: SessionId) {
        let p = self.pulling(x, sid).expect("a round of a pull in progress");
        (p.busy, p.next) = (true, p.candidates.len());
    }
}
