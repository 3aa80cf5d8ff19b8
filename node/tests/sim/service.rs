//! The session service's part of the shell (service.rs, and the marks of store.rs): locate a session,
//! promote or take it over, apply a write and answer it once its copies hold it. Like the other shell
//! modules here, one function per shell function, in its order; where the simulation takes a shortcut, a
//! comment says which and why it only narrows what the shell could do.

use node::replicate;
use node::session::Outcome;
use node::store::{Mark, Role, Slot};
use serde_json::json;

use super::*;

const MAX_HOPS: u8 = 2;
const ATTEMPTS: usize = 5;

pub(super) fn fresh_mark(now: Instant) -> Mark {
    Mark {
        copied: 0,
        lease_until: now,
        lease_seq: 0,
        fenced: false,
    }
}

impl Sim {
    // ---- The session service (service.rs) ----

    pub(super) fn client_request(
        &mut self,
        client: usize,
        node: usize,
        op: Op,
        old_cookie: usize,
        forward_fails: bool,
    ) {
        let c = &self.clients[client];
        let cookie = match old_cookie {
            0 => c.cookie,
            n => c.older.len().checked_sub(n).map(|i| c.older[i]),
        };
        if self.nodes[node].alive {
            let req = Request {
                client,
                op,
                cookie,
                hops: 0,
            };
            self.execute(node, req, forward_fails);
        }
    }

    /// Client `client` takes `from`'s current cookie; its own goes to its older ones.
    pub(super) fn share(&mut self, client: usize, from: usize) {
        let Some(k) = self.clients[from].cookie else {
            return;
        };
        self.clients[client].take(k);
    }

    /// `SessionService::execute`: locates the session and runs the request. A forward is followed at once;
    /// a takeover by pull goes on as its answers arrive.
    pub(super) fn execute(&mut self, x: usize, req: Request, mut forward_fails: bool) {
        let mut unreachable: Vec<usize> = Vec::new();
        for _ in 0..ATTEMPTS {
            let Some(cookie) = req.cookie else {
                return self.fresh(x, req);
            };
            let sid = cookie.sid;
            let entry = self.nodes[x].entries.get(&sid);
            if entry.is_some_and(|e| e.pulling.is_some()) {
                // A takeover holds the lock: the request would queue behind it. Here the client simply
                // tries again later.
                return;
            }
            let held = entry.and_then(|e| {
                let s = e.slot.session.as_ref()?;
                Some((e.slot.role, s.primary, e.slot.granted_until))
            });
            // `SessionService::execute` treats a copy the cookie does not name as an orphan: asked for
            // through the cookie's pair like a session not held here.
            let named = cookie.primary == x || cookie.secondary == Some(x);
            let owner = match held {
                Some((Role::Primary, _, _)) => return self.run(x, req, sid),
                Some((Role::Replica, owner, granted_until)) if named => {
                    let owner = self.index(owner);
                    // The copy's owner, else the cookie's primary (a newer owner the copy was not told of).
                    let live = [owner, cookie.primary].into_iter().find(|&o| {
                        req.hops < MAX_HOPS && !unreachable.contains(&o) && self.responsive(x, o)
                    });
                    let Some(live) = live else {
                        // `Takeover::promote` sleeps until the lease this copy granted runs out, unless the
                        // owner is gone; the simulated request stops instead and the client tries later.
                        if !self.nodes[x].view[owner].gone && self.now() < granted_until {
                            return;
                        }
                        return self.promote(x, req, sid);
                    };
                    live
                }
                _ => {
                    if held.is_none() && self.nodes[x].ended.contains_key(&sid) {
                        return self.fresh(x, req);
                    }
                    let owner = cookie.primary;
                    let forward = req.hops < MAX_HOPS && !unreachable.contains(&owner);
                    if !(forward && self.responsive(x, owner)) {
                        return self.start_recover(x, req, !unreachable.is_empty());
                    }
                    owner
                }
            };
            if std::mem::take(&mut forward_fails) {
                unreachable.push(owner);
                continue;
            }
            let hops = req.hops + 1;
            return self.execute(owner, Request { hops, ..req }, false);
        }
        self.stats.unanswered += 1;
    }

    /// `SessionService::fresh`: no session to serve; a delete has nothing to do, anything else starts one.
    pub(super) fn fresh(&mut self, x: usize, req: Request) {
        if req.op == Op::Write {
            self.create(x, req);
        }
    }

    /// `SessionService::create`: a new session here, copied to a secondary when a peer looks alive.
    fn create(&mut self, x: usize, req: Request) {
        let sid = self.new_sid();
        let mut secondary = self.choose_secondary(x, &[]);
        if secondary.is_none() {
            // Heartbeat on request: peers may have come up since the last beat.
            for p in 0..self.nodes.len() {
                if p != x {
                    self.probe(x, p);
                }
            }
            secondary = self.choose_secondary(x, &[]);
        }
        let now = self.now();
        let session = Session::new(sid, node_id(x), secondary.map(node_id));
        let targets = self.copy_targets(x, &session);
        let mut slot = Slot::empty(now);
        slot.session = Some(session);
        slot.role = Role::Primary;
        replicate::retarget(&mut slot, &targets);
        let gen = self.new_gen();
        let entry = SimEntry {
            gen,
            slot,
            mark: fresh_mark(now),
            pulling: None,
        };
        self.nodes[x].entries.insert(sid, entry);
        self.reset_mark(x, sid, u64::from(targets.is_empty()), now);
        for t in targets {
            self.enqueue(x, self.index(t), sid);
        }
        self.run(x, req, sid);
    }

    /// `Takeover::promote`: the copy here becomes the owner (epoch + 1); new copies, the old owner excluded.
    pub(super) fn promote(&mut self, x: usize, req: Request, sid: SessionId) {
        let cookie_version = req.cookie.map_or(0, |c| c.version);
        let now = self.now();
        let Some(e) = self.nodes[x].entries.get_mut(&sid) else {
            return;
        };
        let Some(p) = replicate::promote(&mut e.slot, node_id(x), cookie_version, now) else {
            return;
        };
        self.stats.promotions += 1;
        self.reset_mark(x, sid, 0, now);
        let old_owner = self.index(p.old_owner);
        self.rehome(x, sid, &[old_owner]);
        self.run(x, req, sid);
    }

    /// `SessionService::run` on the primary session here.
    pub(super) fn run(&mut self, x: usize, req: Request, sid: SessionId) {
        match req.op {
            Op::Write => self.write(x, req, sid),
            Op::Delete => self.delete(x, req, sid),
        }
    }

    /// A write: applied and recorded, copies queued; answered once its copies hold it (sync mode with
    /// copies), else at once.
    fn write(&mut self, x: usize, req: Request, sid: SessionId) {
        let trace = self.new_trace();
        let now = self.now();
        let e = self.nodes[x]
            .entries
            .get_mut(&sid)
            .expect("run on an entry");
        e.slot.last_access = now;
        let s = e
            .slot
            .session
            .as_mut()
            .expect("a primary slot holds a session");
        let mut delta = s
            .patch(&json!({ format!("w{trace}"): true }), usize::MAX)
            .expect("an object patch with no size limit applies");
        s.record(&mut delta, &format!("r{trace}"), Outcome::Patched);
        let (version, epoch, secondary) = (s.version, s.epoch, s.secondary);
        replicate::record(&mut e.slot, delta);
        let peers: Vec<NodeId> = e.slot.copies.iter().map(|c| c.peer).collect();
        let gen = e.gen;
        if peers.is_empty() {
            self.update_mark(x, sid, |m| m.copied = m.copied.max(version + 1));
        }
        for p in &peers {
            self.enqueue(x, self.index(*p), sid);
        }
        let cookie = Cookie {
            sid,
            primary: x,
            secondary: secondary.map(|n| self.index(n)),
            version,
        };
        let w = Waiter {
            client: req.client,
            sid,
            version,
            epoch,
            trace,
            cookie,
            gen,
            since: self.step_no,
        };
        if self.sync() && !peers.is_empty() {
            self.nodes[x].waiting.push(w);
        } else {
            self.acknowledge(x, w);
        }
    }

    /// `SessionService::delete`: ends the session here and on every copy. From now on the client's writes
    /// to it are owed to no one: it asked for them to go.
    fn delete(&mut self, x: usize, req: Request, sid: SessionId) {
        let e = self.nodes[x]
            .entries
            .get_mut(&sid)
            .expect("run on an entry");
        let Some((ended, peers)) = replicate::end(&mut e.slot) else {
            return;
        };
        self.nodes[x].ended.insert(sid, ended.epoch);
        if peers.is_empty() {
            self.remove_entry(x, sid);
        }
        for p in peers {
            self.enqueue(x, self.index(p), sid);
        }
        self.stats.deletes += 1;
        self.history.retire(sid);
        let c = &mut self.clients[req.client];
        if let Some(k) = c.cookie.filter(|k| k.sid == sid) {
            c.older.push(k);
            c.cookie = None;
        }
    }

    /// The client gets its answer, and the cookie with it.
    fn acknowledge(&mut self, x: usize, w: Waiter) {
        self.stats.acked += 1;
        check::acknowledged(self, x, &w);
        self.clients[w.client].take(w.cookie);
    }

    /// Writes waiting longer than the wait limit are answered 503 (they stay applied).
    pub(super) fn expire_waiters(&mut self) {
        let step = self.step_no;
        for n in &mut self.nodes {
            let before = n.waiting.len();
            n.waiting.retain(|w| step - w.since < WAIT_STEPS);
            self.stats.unanswered += (before - n.waiting.len()) as u64;
        }
    }

    // ---- Replication progress (store.rs: Entry's mark and its waiters) ----

    /// `Entry::update_mark`: changes the progress and wakes the waiters.
    pub(super) fn update_mark(&mut self, x: usize, sid: SessionId, f: impl FnOnce(&mut Mark)) {
        let Some(e) = self.nodes[x].entries.get_mut(&sid) else {
            return;
        };
        f(&mut e.mark);
        let (mark, gen) = (e.mark, e.gen);
        // `wait_mark`: a fenced session acknowledges nothing, even a write its copies already hold.
        let waiting = std::mem::take(&mut self.nodes[x].waiting);
        let mut kept = Vec::new();
        for w in waiting {
            if w.sid != sid || w.gen != gen {
                kept.push(w);
            } else if mark.fenced {
                self.stats.fenced += 1;
            } else if mark.covers(w.version) {
                self.acknowledge(x, w);
            } else {
                kept.push(w);
            }
        }
        self.nodes[x].waiting.append(&mut kept);
    }

    /// `Entry::reset_mark`: a new tenure as primary.
    pub(super) fn reset_mark(
        &mut self,
        x: usize,
        sid: SessionId,
        copied: u64,
        lease_until: Instant,
    ) {
        self.update_mark(x, sid, |m| {
            m.copied = copied;
            m.lease_until = lease_until;
            m.fenced = false;
            m.lease_seq += 1;
        });
    }

    pub(super) fn entry_or_insert(&mut self, x: usize, sid: SessionId) -> &mut SimEntry {
        let now = self.now();
        if !self.nodes[x].entries.contains_key(&sid) {
            let gen = self.new_gen();
            let e = SimEntry {
                gen,
                slot: Slot::empty(now),
                mark: fresh_mark(now),
                pulling: None,
            };
            self.nodes[x].entries.insert(sid, e);
        }
        self.nodes[x].entries.get_mut(&sid).expect("inserted above")
    }

    /// `Store::remove`. Writes still waiting on the removed entry can only time out now.
    pub(super) fn remove_entry(&mut self, x: usize, sid: SessionId) {
        self.nodes[x].entries.remove(&sid);
    }

    pub(super) fn drop_if_vacant(&mut self, x: usize, sid: SessionId) {
        let e = self.nodes[x].entries.get(&sid);
        if e.is_some_and(|e| e.pulling.is_none() && e.slot.is_vacant()) {
            self.remove_entry(x, sid);
        }
    }
}
