//! The steps of a run: which faults it may inject, what each step is, and how a random one is chosen.

use std::fmt;

use super::*;

/// Which faults a run may inject.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Faults {
    /// Links cut both ways, nodes isolated, everything healed.
    pub(crate) cuts: bool,
    /// Nodes killed, and restarted empty.
    pub(crate) crashes: bool,
    /// Messages lost, or given up on by their sender and delivered late.
    pub(crate) losses: bool,
    /// Requests carrying an older cookie of the client (an lb retry, a request sent before the last answer).
    pub(crate) stale_cookies: bool,
    /// A request's forward to the session's live owner times out (a slow owner), so the node it reached
    /// promotes or takes over the session while the owner still runs.
    pub(crate) forward_timeouts: bool,
    /// Views lag a restart: a restarted node sees every peer as dead, and its peers see it as dead or gone,
    /// until their next heartbeat step. Without it a restart is noticed at once both ways, as the shell's
    /// heartbeats (every 500 ms, started at once) make it within one interval.
    pub(crate) lagging_views: bool,
}

impl Faults {
    pub(crate) const NONE: Faults = Faults {
        cuts: false,
        crashes: false,
        losses: false,
        stale_cookies: false,
        forward_timeouts: false,
        lagging_views: false,
    };
}

/// The shape of one run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Config {
    /// Where copies go: a pair, or one broadcast group of every node (the default `[[nodes]] group`).
    pub(crate) topology: Topology,
    pub(crate) nodes: usize,
    pub(crate) clients: usize,
    pub(crate) mode: ReplicationMode,
    pub(crate) faults: Faults,
    /// Clients sometimes take another client's cookie (a second tab of one browser), so that one session has
    /// writers at several nodes at once.
    pub(crate) shared: bool,
}

/// What a client asks of its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// A merge patch `{"w<trace>": true}`: every write leaves a key of its own.
    Write,
    /// End the session.
    Delete,
}

/// One step of a run. Nodes and clients are indices; messages are named by their id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Client `client` sends `op` to `node`. `old_cookie`: it carries its n-th previous cookie instead of the
    /// last one. `forward_fails`: the first forward of this request times out.
    Request {
        client: usize,
        node: usize,
        op: Op,
        old_cookie: usize,
        forward_fails: bool,
    },
    /// Node `from`'s replication task for peer `to` sends what is queued for it.
    Send {
        from: usize,
        to: usize,
    },
    /// Message `id` arrives (or fails, when its link is cut or its receiver dead).
    Deliver {
        id: u64,
    },
    /// Message `id`'s sender stops waiting for it (its call fails); it may still arrive later.
    Timeout {
        id: u64,
    },
    /// Message `id` is lost; its sender's call fails.
    Lose {
        id: u64,
    },
    /// Node `node` pings every peer and updates its view of them.
    Heartbeat {
        node: usize,
    },
    Cut {
        a: usize,
        b: usize,
    },
    Isolate {
        node: usize,
    },
    Heal,
    Kill {
        node: usize,
    },
    /// A dead node starts again, holding nothing.
    Restart {
        node: usize,
    },
    /// Time passes (for hand-written scenarios: a lease runs out).
    Wait,
    /// Client `client` takes client `from`'s cookie: both write to one session from now on.
    Share {
        client: usize,
        from: usize,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Request {
                client,
                node,
                op,
                old_cookie,
                forward_fails,
            } => {
                write!(f, "client {client} sends {op:?} to n{node}")?;
                if *old_cookie > 0 {
                    write!(f, " with its cookie from {old_cookie} answers ago")?;
                }
                if *forward_fails {
                    write!(f, " (its first forward times out)")?;
                }
                Ok(())
            }
            Step::Send { from, to } => write!(f, "n{from} sends its queue for n{to}"),
            Step::Deliver { id } => write!(f, "deliver message {id}"),
            Step::Timeout { id } => write!(f, "the sender of message {id} gives up on it"),
            Step::Lose { id } => write!(f, "message {id} is lost"),
            Step::Heartbeat { node } => write!(f, "n{node} heartbeats"),
            Step::Cut { a, b } => write!(f, "cut n{a} <-> n{b}"),
            Step::Isolate { node } => write!(f, "isolate n{node}"),
            Step::Heal => write!(f, "heal every link"),
            Step::Kill { node } => write!(f, "kill n{node}"),
            Step::Restart { node } => write!(f, "restart n{node} empty"),
            Step::Wait => write!(f, "time passes"),
            Step::Share { client, from } => {
                write!(f, "client {client} takes client {from}'s cookie")
            }
        }
    }
}

impl Sim {
    /// A random step that can happen now.
    pub(crate) fn random_step(&mut self) -> Step {
        let n = self.nodes.len();
        let f = self.cfg.faults;
        loop {
            let roll = self.rng.below(100);
            let alive: Vec<usize> = (0..n).filter(|&i| self.nodes[i].alive).collect();
            let dead: Vec<usize> = (0..n).filter(|&i| !self.nodes[i].alive).collect();
            match roll {
                0..=24 => return self.random_request(&alive),
                25..=44 => {
                    let s = self.sendable();
                    if !s.is_empty() {
                        let (from, to) = self.rng.pick(&s);
                        return Step::Send { from, to };
                    }
                }
                45..=79 if !self.wire.is_empty() => {
                    let id = self.wire[self.rng.below(self.wire.len())].id;
                    return Step::Deliver { id };
                }
                80..=83 if f.losses && !self.wire.is_empty() => {
                    let id = self.wire[self.rng.below(self.wire.len())].id;
                    return if self.rng.chance(50) {
                        Step::Timeout { id }
                    } else {
                        Step::Lose { id }
                    };
                }
                84..=89 if !alive.is_empty() => {
                    return Step::Heartbeat {
                        node: self.rng.pick(&alive),
                    }
                }
                90..=92 if f.cuts => {
                    let (a, b) = (self.rng.below(n), self.rng.below(n));
                    if a != b {
                        return Step::Cut { a, b };
                    }
                }
                93 if f.cuts => {
                    return Step::Isolate {
                        node: self.rng.below(n),
                    }
                }
                94..=95 if f.cuts && !self.cuts.is_empty() => return Step::Heal,
                96..=97 if f.crashes && alive.len() > 1 => {
                    return Step::Kill {
                        node: self.rng.pick(&alive),
                    }
                }
                98..=99 if f.crashes && !dead.is_empty() => {
                    return Step::Restart {
                        node: self.rng.pick(&dead),
                    }
                }
                _ => {}
            }
        }
    }

    fn random_request(&mut self, alive: &[usize]) -> Step {
        let client = self.rng.below(self.clients.len());
        if self.cfg.shared && self.rng.chance(10) {
            let from = self.rng.below(self.clients.len());
            if from != client && self.clients[from].cookie.is_some() {
                return Step::Share { client, from };
            }
        }
        let c = &self.clients[client];
        let primary = c.cookie.map(|k| k.primary);
        let older = c.older.len();
        // In a pair the balancer pins a request to the cookie's primary while it looks alive; otherwise (and
        // sometimes regardless, as a failover would) any node. A broadcast group is balanced round robin:
        // any live member serves any request.
        let pinned = self.cfg.topology == Topology::Pair;
        let node = match primary {
            Some(p) if pinned && self.nodes[p].alive && self.rng.chance(60) => p,
            _ => self.rng.pick(alive),
        };
        let op = if self.rng.chance(3) {
            Op::Delete
        } else {
            Op::Write
        };
        let old_cookie = if self.cfg.faults.stale_cookies && older > 0 && self.rng.chance(10) {
            1 + self.rng.below(older)
        } else {
            0
        };
        Step::Request {
            client,
            node,
            op,
            old_cookie,
            forward_fails: self.cfg.faults.forward_timeouts && self.rng.chance(10),
        }
    }
}
