//! An in-memory cluster over the pure replication core, after raft-rs's test `Network`: N nodes' session
//! slots, a wire of in-flight messages, clients, and faults (cut, isolate, heal, kill, restart empty, lost
//! and late messages, reordering). Time is a base `Instant` plus a step counter; nothing sleeps.
//!
//! - `service`, `replicator`, `takeover`, `membership`: what the node's I/O shell does around each call of
//!   the core, one function per shell function (named in its doc), written to follow it line by line.
//! - The topology (`Config::topology`): a pair, or one broadcast group of every node; the shell's branches on
//!   it are mirrored with the real `node::topology::Topology` functions, given the group and holders in the
//!   node's own view (`membership`).
//! - `check`: the invariants, checked after every step, and for a broadcast group, the copies after a walk.
//! - `state`: clients, nodes, entries, messages; `steps`: the faults and steps, and the random choice of one;
//!   `report`: text for failure reports.
//! - this file: the cluster itself, applying one step, and small helpers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use node::config::ReplicationMode;
use node::ids::{NodeId, SessionId};
use node::session::Session;
use node::store::{Mark, Slot};
use node::topology::Topology;
use node::wire::{Item, ItemResult, PullResult};

pub(crate) mod check;
mod membership;
mod replicator;
mod report;
pub(crate) mod rng;
mod service;
mod state;
mod steps;
mod takeover;

use check::History;
use rng::Rng;

/// The read lease a copy grants its primary: no takeover of the copy before it ends.
pub(crate) const LEASE: Duration = Duration::from_millis(150);
/// Simulated time per step.
pub(crate) const TICK: Duration = Duration::from_millis(25);
/// Steps a write waits for its copy before it is answered 503 (`wait_limit`).
pub(crate) const WAIT_STEPS: usize = 40;

/// The node id of node `i`.
pub(crate) fn node_id(i: usize) -> NodeId {
    NodeId::new((1 << 50) + i as u64).expect("ids from 2^50 up are valid")
}

pub(crate) use state::*;
pub(crate) use steps::*;

/// The whole simulated cluster.
pub(crate) struct Sim {
    pub(crate) cfg: Config,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) clients: Vec<Client>,
    pub(crate) wire: Vec<Msg>,
    /// Cut links, as (smaller, larger) node index.
    pub(crate) cuts: BTreeSet<(usize, usize)>,
    pub(crate) base: Instant,
    /// Steps applied so far.
    pub(crate) step_no: usize,
    pub(crate) rng: Rng,
    pub(crate) history: History,
    pub(crate) stats: Stats,
    pub(crate) steps: Vec<Step>,
    /// Each step as text, with what its message was.
    pub(crate) log: Vec<String>,
    next_msg: u64,
    next_trace: u64,
    next_sid: u128,
    next_gen: u64,
}

impl Sim {
    pub(crate) fn new(cfg: Config, seed: u64) -> Sim {
        Sim {
            nodes: (0..cfg.nodes)
                .map(|_| SimNode::new(cfg.nodes, true, 1))
                .collect(),
            clients: vec![Client::default(); cfg.clients],
            wire: Vec::new(),
            cuts: BTreeSet::new(),
            base: Instant::now(),
            step_no: 0,
            rng: Rng::new(seed),
            history: History::default(),
            stats: Stats::default(),
            steps: Vec::new(),
            log: Vec::new(),
            next_msg: 1,
            next_trace: 1,
            next_sid: 1,
            next_gen: 1,
            cfg,
        }
    }

    /// The simulated clock.
    pub(crate) fn now(&self) -> Instant {
        self.base + TICK * self.step_no as u32
    }

    pub(crate) fn sync(&self) -> bool {
        self.cfg.mode == ReplicationMode::Sync
    }

    /// The index of the node with id `id`.
    pub(crate) fn index(&self, id: NodeId) -> usize {
        (0..self.nodes.len())
            .find(|&i| node_id(i) == id)
            .expect("every id in a session names a simulated node")
    }

    /// Whether `a` reaches `b` now: `b` runs and the link is not cut.
    pub(crate) fn reachable(&self, a: usize, b: usize) -> bool {
        a == b || (self.nodes[b].alive && !self.cut(a, b))
    }

    /// Whether a connection from `a` to `b` is refused: `b`'s host answers but its process is not running.
    pub(crate) fn refused(&self, a: usize, b: usize) -> bool {
        !self.nodes[b].alive && !self.cut(a, b)
    }

    fn cut(&self, a: usize, b: usize) -> bool {
        self.cuts.contains(&(a.min(b), a.max(b)))
    }

    fn new_msg(&mut self, from: usize, to: usize, body: Body) -> u64 {
        let id = self.next_msg;
        self.next_msg += 1;
        self.wire.push(Msg {
            id,
            from,
            to,
            body,
            orphan: false,
        });
        id
    }

    fn take_msg(&mut self, id: u64) -> Option<Msg> {
        let i = self.wire.iter().position(|m| m.id == id)?;
        Some(self.wire.remove(i))
    }

    fn new_trace(&mut self) -> u64 {
        self.next_trace += 1;
        self.next_trace - 1
    }

    fn new_gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen - 1
    }

    fn new_sid(&mut self) -> SessionId {
        self.next_sid += 1;
        SessionId(self.next_sid - 1)
    }

    /// Applies one step, then checks every invariant; `Err` names the one broken.
    pub(crate) fn step(&mut self, step: Step) -> Result<(), String> {
        self.step_no += 1;
        let text = match &step {
            Step::Deliver { id } | Step::Timeout { id } | Step::Lose { id } => {
                format!("{step}: {}", self.what(*id))
            }
            s => s.to_string(),
        };
        self.log.push(text);
        self.steps.push(step.clone());
        match step {
            Step::Request {
                client,
                node,
                op,
                old_cookie,
                forward_fails,
            } => self.client_request(client, node, op, old_cookie, forward_fails),
            Step::Send { from, to } => self.send(from, to),
            Step::Deliver { id } => self.deliver(id),
            Step::Timeout { id } => self.give_up(id, false),
            Step::Lose { id } => self.give_up(id, true),
            Step::Heartbeat { node } => self.heartbeat(node),
            Step::Cut { a, b } => {
                if a != b {
                    self.cuts.insert((a.min(b), a.max(b)));
                }
            }
            Step::Isolate { node } => {
                for o in 0..self.nodes.len() {
                    if o != node {
                        self.cuts.insert((o.min(node), o.max(node)));
                    }
                }
            }
            Step::Heal => self.cuts.clear(),
            Step::Kill { node } => self.kill(node),
            Step::Restart { node } => self.restart(node),
            Step::Wait => {}
            Step::Share { client, from } => self.share(client, from),
        }
        self.expire_waiters();
        if std::env::var_os("SIM_TRACE").is_some() {
            eprintln!("{:>4} {}", self.step_no, self.log[self.step_no - 1]);
            for sid in self.sessions() {
                eprint!("{}", self.describe(sid));
            }
        }
        check::after_step(self)
    }

    /// The first message on the wire from `from` to `to` that `pred` accepts.
    pub(crate) fn find(&self, from: usize, to: usize, pred: impl Fn(&Body) -> bool) -> Option<u64> {
        let m = self
            .wire
            .iter()
            .find(|m| m.from == from && m.to == to && pred(&m.body));
        m.map(|m| m.id)
    }

    /// Node `x`'s copy of session `sid`, if it holds one.
    pub(crate) fn copy(&self, x: usize, sid: SessionId) -> Option<&Session> {
        self.nodes[x].entries.get(&sid)?.slot.session.as_ref()
    }

    /// Every session some node holds an entry for.
    pub(crate) fn sessions(&self) -> Vec<SessionId> {
        let mut sids: Vec<SessionId> = self
            .nodes
            .iter()
            .flat_map(|n| n.entries.keys().copied())
            .collect();
        sids.sort();
        sids.dedup();
        sids
    }

    /// Delivers every message and sends every queue until the wire is quiet (at most `limit` steps).
    pub(crate) fn settle(&mut self, limit: usize) -> Result<(), String> {
        for _ in 0..limit {
            if let Some(m) = self.wire.first() {
                let id = m.id;
                self.step(Step::Deliver { id })?;
            } else if let Some((from, to)) = self.sendable().first().copied() {
                self.step(Step::Send { from, to })?;
            } else {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Ends a run: every cut healed, nothing restarted; every live node heartbeats (so views agree and
    /// re-homing follows) and messages are delivered, in random order, and queues sent until nothing is
    /// left (at most `limit` steps per round). `Err`: a broken invariant, or no quiet within the limit.
    pub(crate) fn quiesce(&mut self, limit: usize) -> Result<(), String> {
        if !self.cuts.is_empty() {
            self.step(Step::Heal)?;
        }
        // A few rounds: a call failing while the first settles (to a node that died since the last step)
        // changes a view, which the next round's heartbeats set right again.
        for _ in 0..3 {
            for node in 0..self.nodes.len() {
                if self.nodes[node].alive {
                    self.step(Step::Heartbeat { node })?;
                }
            }
            let mut quiet = false;
            for _ in 0..limit {
                if !self.wire.is_empty() {
                    // Random order: the first message may wait on a lock or a lease the others free.
                    let id = self.wire[self.rng.below(self.wire.len())].id;
                    self.step(Step::Deliver { id })?;
                } else if let Some((from, to)) = self.sendable().first().copied() {
                    self.step(Step::Send { from, to })?;
                } else {
                    quiet = true;
                    break;
                }
            }
            if !quiet {
                return Err(format!("not quiet after {limit} steps of delivering"));
            }
        }
        Ok(())
    }

    /// (node, peer) pairs whose replication task has something queued and no batch in flight.
    pub(crate) fn sendable(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (x, n) in self.nodes.iter().enumerate() {
            if !n.alive {
                continue;
            }
            for &(p, _, _) in &n.queue {
                if n.inflight[p].is_none() && !out.contains(&(x, p)) {
                    out.push((x, p));
                }
            }
        }
        out
    }
}
