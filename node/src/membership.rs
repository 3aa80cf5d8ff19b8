//! The other nodes as this node sees them: liveness from heartbeats (periodic, and on request), load (their
//! session counts) and the choice of a secondary (seed 002 claims 71-73; seed 003 [0069]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::config::{BankConfig, ClusterConfig, NodeConfig, NodeRole, Topology};
use crate::connection::{AuthKeys, LinkError, PeerLink, Traffic};
use crate::ids::{NodeId, SessionId};
use crate::redis_bank::RedisBank;
use crate::wire::{Body, Item, ItemResult, PullResult};

/// How a peer is reached.
pub enum Transport {
    /// A node: the replication protocol over TCP.
    Link(PeerLink),
    /// A Redis bank: scripts that answer as a session server would.
    Bank(Arc<RedisBank>),
}

/// One other node.
pub struct Peer {
    /// Its `[[nodes]]` entry (for a Redis bank, one made up: role `rss`, no addresses).
    pub cfg: NodeConfig,
    /// How it is reached.
    pub transport: Transport,
    alive: AtomicBool,
    misses: AtomicU32,
    /// Sessions it reported in its last heartbeat.
    load: AtomicU64,
    /// Sessions this node gave it since that report: keeps a burst of new sessions from all picking one peer.
    assigned: AtomicU64,
    /// When it last answered a heartbeat, in ms since the membership started.
    last_seen_ms: AtomicU64,
    /// The incarnation its last heartbeat answer carried; 0 before the first.
    incarnation: AtomicU64,
    /// Its port refused a connection since it last answered: the process is not running, so it cannot be
    /// serving anything (a paused process still accepts connections).
    gone: AtomicBool,
}

impl Peer {
    fn new(cfg: NodeConfig, transport: Transport) -> Peer {
        Peer {
            cfg,
            transport,
            alive: AtomicBool::new(false),
            misses: AtomicU32::new(0),
            load: AtomicU64::new(0),
            assigned: AtomicU64::new(0),
            last_seen_ms: AtomicU64::new(0),
            incarnation: AtomicU64::new(0),
            gone: AtomicBool::new(false),
        }
    }

    /// Whether its last heartbeat answered (and no call failed since).
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// One heartbeat; returns the session count and the incarnation the peer reports.
    ///
    /// # Errors
    /// The link's error, or [`LinkError::Unexpected`] for an answer that is not a `Pong`.
    pub async fn ping(
        &self,
        our_sessions: u64,
        timeout: Duration,
    ) -> Result<(u64, u64), LinkError> {
        let link = match &self.transport {
            Transport::Link(link) => link,
            Transport::Bank(bank) => return Ok((0, bank.ping().await?)),
        };
        match link
            .call(
                Body::Ping {
                    sessions: our_sessions,
                },
                timeout,
            )
            .await?
        {
            Body::Pong {
                sessions,
                incarnation,
            } => Ok((sessions, incarnation)),
            other => Err(LinkError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sends items for sessions to this peer as their secondary; returns its per-item answers, in order.
    ///
    /// # Errors
    /// The link's error, or [`LinkError::Unexpected`] for an answer that does not match the batch.
    pub async fn batch(
        &self,
        from: NodeId,
        items: Vec<Item>,
        timeout: Duration,
    ) -> Result<Vec<ItemResult>, LinkError> {
        let n = items.len();
        let link = match &self.transport {
            Transport::Link(link) => link,
            Transport::Bank(bank) => return Ok(bank.apply(from, items).await?),
        };
        match link.call(Body::Batch { from, items }, timeout).await? {
            Body::BatchReply { results } if results.len() == n => Ok(results),
            other => Err(LinkError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The Redis bank this peer is, if it is one.
    pub fn redis(&self) -> Option<&Arc<RedisBank>> {
        match &self.transport {
            Transport::Bank(bank) => Some(bank),
            Transport::Link(_) => None,
        }
    }

    /// Whether copies to this peer must be whole sessions (a Redis bank cannot apply deltas).
    pub fn takes_whole_copies(&self) -> bool {
        self.redis().is_some()
    }

    /// Asks the peer for a session (a takeover's pull) and returns its answer.
    ///
    /// # Errors
    /// The link's error, or [`LinkError::Unexpected`] for an answer that is not a pull's; also for a Redis
    /// bank, which takeover asks through [`Peer::redis`] instead.
    pub async fn pull(&self, ask: Body, timeout: Duration) -> Result<PullResult, LinkError> {
        let Transport::Link(link) = &self.transport else {
            return Err(LinkError::Unexpected(
                "a pull from the Redis bank goes through its scripts".into(),
            ));
        };
        match link.call(ask, timeout).await? {
            Body::PullReply { result } => Ok(result),
            other => Err(LinkError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Asks the peer to take session `sid` over from `from`, a draining node (it pulls it from there).
    ///
    /// # Errors
    /// [`LinkError`]; a Redis bank takes no sessions over.
    pub async fn adopt(
        &self,
        sid: SessionId,
        from: NodeId,
        timeout: Duration,
    ) -> Result<bool, LinkError> {
        let Transport::Link(link) = &self.transport else {
            return Err(LinkError::Unexpected(
                "a Redis bank owns no sessions".into(),
            ));
        };
        match link.call(Body::Adopt { sid, from }, timeout).await? {
            Body::Adopted { taken } => Ok(taken),
            other => Err(LinkError::Unexpected(format!("{other:?}"))),
        }
    }

    fn load(&self) -> u64 {
        self.load.load(Ordering::Relaxed) + self.assigned.load(Ordering::Relaxed)
    }
}

/// The made-up `[[nodes]]` entry of a Redis bank: a session server by role, with no addresses of ours.
fn bank_entry(b: &BankConfig) -> NodeConfig {
    let nowhere = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    NodeConfig {
        name: BankConfig::NAME.to_string(),
        id: b.id,
        http: nowhere,
        repl: nowhere,
        machine: BankConfig::NAME.to_string(),
        zone: "default".to_string(),
        weight: 1,
        drain: false,
        secondary: None,
        role: NodeRole::Rss,
        upstream: None,
        group: NodeConfig::DEFAULT_GROUP.to_string(),
    }
}

/// A liveness change worth acting on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The peer answered again after being dead (or for the first time).
    Up(NodeId),
    /// The peer stopped answering, or refused a connection.
    Down(NodeId),
    /// The peer answered as a new process: every copy it held is gone.
    Restarted(NodeId),
}

/// Every other node of the cluster.
pub struct Membership {
    /// This node's own `[[nodes]]` entry.
    pub me: NodeConfig,
    /// Replaced as a whole on reload; readers clone the `Arc<Peer>` they need.
    peers: RwLock<HashMap<NodeId, Arc<Peer>>>,
    keys: Arc<AuthKeys>,
    heartbeat: Duration,
    peer_timeout: Duration,
    started: std::time::Instant,
    last_probe_all_ms: AtomicU64,
    /// Every liveness transition, whoever noticed it (heartbeat, probe, failed call), goes here once.
    changes: tokio::sync::mpsc::UnboundedSender<Change>,
    /// The file's topology: which peers hold copies ([`Membership::holds_copies`]).
    topology: Topology,
    /// The Redis bank, when `[replication.bank]` names one: a peer like the session servers it replaces.
    redis: Option<Arc<Peer>>,
    /// `node_replication_bytes_total`, labelled per peer as links are made.
    traffic: prometheus::IntCounterVec,
}

impl Membership {
    /// Peers start as dead until a heartbeat answers; `probe_all` asks at once when a secondary is needed.
    /// The membership and the receiver of its liveness changes.
    /// Each link counts its bytes in `traffic` (labels: peer name, direction) and proves one of `keys`.
    pub fn new(
        cfg: &ClusterConfig,
        me: &NodeConfig,
        traffic: prometheus::IntCounterVec,
        keys: Arc<AuthKeys>,
    ) -> (Membership, tokio::sync::mpsc::UnboundedReceiver<Change>) {
        let (changes, rx) = tokio::sync::mpsc::unbounded_channel();
        let redis = cfg.replication.bank.as_ref().map(|b| {
            let bank = RedisBank::new(b, cfg.session.idle_timeout, cfg.replication.lease);
            Arc::new(Peer::new(bank_entry(b), Transport::Bank(bank)))
        });
        let m = Membership {
            redis,
            changes,
            me: me.clone(),
            peers: RwLock::new(HashMap::new()),
            keys,
            heartbeat: cfg.replication.heartbeat,
            peer_timeout: cfg.replication.peer_timeout,
            started: crate::store::now(),
            last_probe_all_ms: AtomicU64::new(0),
            topology: cfg.replication.topology,
            traffic,
        };
        m.update(cfg);
        (m, rx)
    }

    fn new_peer(&self, n: &NodeConfig) -> Arc<Peer> {
        let traffic = Traffic {
            sent: self.traffic.with_label_values(&[&n.name, "sent"]),
            received: self.traffic.with_label_values(&[&n.name, "received"]),
        };
        let link = PeerLink::new(
            n.repl,
            &self.me.name,
            self.keys.clone(),
            self.peer_timeout,
            traffic,
        );
        Arc::new(Peer::new(n.clone(), Transport::Link(link)))
    }

    /// Takes the node list of a (re)loaded config: unchanged peers keep their link and liveness, changed ones
    /// start over, new ones are added (eligible as secondaries once a heartbeat answers, seed 003 [0038]).
    /// Returns (added, removed) ids.
    pub fn update(&self, cfg: &ClusterConfig) -> (Vec<NodeId>, Vec<NodeId>) {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let mut next = HashMap::new();
        let mut added = Vec::new();
        // The bank's settings cannot change by reload (the server refuses that), so it simply stays.
        if let Some(bank) = &self.redis {
            if !peers.contains_key(&bank.cfg.id) {
                added.push(bank.cfg.id);
            }
            next.insert(bank.cfg.id, bank.clone());
        }
        for n in cfg.nodes.iter().filter(|n| n.id != self.me.id) {
            match peers.get(&n.id) {
                Some(p) if p.cfg == *n => {
                    next.insert(n.id, p.clone());
                }
                Some(_) => {
                    next.insert(n.id, self.new_peer(n));
                }
                None => {
                    next.insert(n.id, self.new_peer(n));
                    added.push(n.id);
                }
            }
        }
        let removed = peers
            .keys()
            .filter(|id| !next.contains_key(id))
            .copied()
            .collect();
        *peers = next;
        (added, removed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, Arc<Peer>>> {
        self.peers.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The peer with id `id`; `None` for this node or an id not in the cluster file.
    pub fn peer(&self, id: NodeId) -> Option<Arc<Peer>> {
        self.read().get(&id).cloned()
    }

    /// Every other node's id, in no particular order.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        self.read().keys().copied().collect()
    }

    /// This node counts as alive; an unknown id does not.
    pub fn is_alive(&self, id: NodeId) -> bool {
        id == self.me.id || self.read().get(&id).is_some_and(|p| p.is_alive())
    }

    /// The name of node `id` (this node included); `None` for an id not in the cluster file.
    pub fn name_of(&self, id: NodeId) -> Option<String> {
        if id == self.me.id {
            return Some(self.me.name.clone());
        }
        self.read().get(&id).map(|p| p.cfg.name.clone())
    }

    /// Marks a peer dead (connection refused, timeouts); the change is reported if it was alive.
    pub fn mark_dead(&self, id: NodeId) {
        if let Some(p) = self.peer(id) {
            if p.alive.swap(false, Ordering::AcqRel) {
                let _ = self.changes.send(Change::Down(id));
            }
        }
    }

    fn now_ms(&self) -> u64 {
        crate::store::now()
            .saturating_duration_since(self.started)
            .as_millis() as u64
    }

    /// Whether `id` is alive and answered a heartbeat within the last two intervals. A paused process
    /// (SIGSTOP) still accepts connections but stops answering: this notices it long before `peer_timeout`.
    pub fn answered_lately(&self, id: NodeId) -> bool {
        let Some(p) = self.peer(id) else {
            return id == self.me.id;
        };
        let recent = 2 * self.heartbeat.as_millis() as u64;
        p.is_alive()
            && self
                .now_ms()
                .saturating_sub(p.last_seen_ms.load(Ordering::Relaxed))
                <= recent
    }

    /// Marks a peer dead after a call to it failed; a refused connection also marks it gone.
    pub fn mark_failed(&self, id: NodeId, e: &LinkError) {
        if e.is_refused() {
            self.mark_gone(id);
        } else {
            self.mark_dead(id);
        }
    }

    /// Marks a peer dead and certainly not running (its port refused a connection).
    pub fn mark_gone(&self, id: NodeId) {
        if let Some(p) = self.peer(id) {
            p.gone.store(true, Ordering::Release);
        }
        self.mark_dead(id);
    }

    /// Whether `id` is known not to be running, so no lease it held needs waiting out.
    pub fn is_gone(&self, id: NodeId) -> bool {
        self.peer(id)
            .is_some_and(|p| p.gone.load(Ordering::Acquire))
    }

    fn mark_alive(&self, p: &Peer, (sessions, incarnation): (u64, u64)) {
        let before = p.incarnation.swap(incarnation, Ordering::AcqRel);
        if before != 0 && before != incarnation {
            // Restarted since its last answer, too quickly for a heartbeat to miss: it holds nothing now.
            tracing::warn!(peer = %p.cfg.name, "peer restarted: re-sending its copies in full");
            let _ = self.changes.send(Change::Restarted(p.cfg.id));
        }
        p.gone.store(false, Ordering::Release);
        p.last_seen_ms.store(self.now_ms(), Ordering::Relaxed);
        p.misses.store(0, Ordering::Relaxed);
        p.load.store(sessions, Ordering::Relaxed);
        p.assigned.store(0, Ordering::Relaxed);
        if !p.alive.swap(true, Ordering::AcqRel) {
            let _ = self.changes.send(Change::Up(p.cfg.id));
        }
    }

    /// One heartbeat to `id` carrying our session count; updates liveness.
    pub async fn heartbeat(&self, id: NodeId, our_sessions: u64) {
        let Some(p) = self.peer(id) else { return };
        match p.ping(our_sessions, self.heartbeat).await {
            Ok(sessions) => self.mark_alive(&p, sessions),
            Err(e) if e.is_refused() => self.mark_gone(id),
            Err(e) => {
                let misses = p.misses.fetch_add(1, Ordering::Relaxed) + 1;
                if misses == 1 && e.is_mismatch() {
                    // Not a network blip: the peer runs with another secret or release; say so once per streak.
                    tracing::warn!(peer = %p.cfg.name, error = %e, "peer refused: it cannot join this cluster as configured");
                } else {
                    tracing::debug!(peer = %p.cfg.name, misses, error = %e, "heartbeat missed");
                }
                if self.heartbeat * misses >= self.peer_timeout {
                    self.mark_dead(id);
                }
            }
        }
    }

    /// Asks one peer right now whether it is alive (heartbeat on request), with a short timeout.
    pub async fn probe(&self, id: NodeId, our_sessions: u64) -> bool {
        let Some(p) = self.peer(id) else { return false };
        match p.ping(our_sessions, self.heartbeat).await {
            Ok(sessions) => {
                self.mark_alive(&p, sessions);
                true
            }
            Err(e) => {
                self.mark_failed(id, &e);
                false
            }
        }
    }

    /// Probes every peer at once, at most once per heartbeat interval (callers on the request path would
    /// otherwise each wait a probe timeout while peers are paused).
    pub async fn probe_all(&self, our_sessions: u64) {
        // +1: zero means "never probed".
        let now = self.now_ms() + 1;
        let last = self.last_probe_all_ms.load(Ordering::Acquire);
        if last != 0 && now.saturating_sub(last) < self.heartbeat.as_millis() as u64 {
            return;
        }
        self.last_probe_all_ms.store(now, Ordering::Release);
        let ids = self.peer_ids();
        futures_util::future::join_all(ids.iter().map(|id| self.probe(*id, our_sessions))).await;
    }

    /// The live peers of this node's broadcast group, in id order; empty outside the `broadcast` topology.
    pub fn group(&self) -> Vec<NodeId> {
        if !self.is_broadcast() {
            return Vec::new();
        }
        self.ids_where(|p| p.is_alive() && self.in_my_group(p))
    }

    /// Where a draining node sends session `sid`: its `secondary` when that one qualifies (it holds the
    /// session already), else the choice [`pick_secondary`] makes among the qualified. Qualified: a live web
    /// node that is not draining, of this node's group in a broadcast topology. `None` when none is.
    pub fn heir(&self, sid: SessionId, secondary: Option<NodeId>) -> Option<NodeId> {
        let peers = self.read();
        let qualifies = |p: &Peer| {
            p.is_alive()
                && p.cfg.role == NodeRole::Web
                && !p.cfg.drain
                && (!self.is_broadcast() || self.in_my_group(p))
        };
        if let Some(s) = secondary
            .and_then(|s| peers.get(&s))
            .filter(|p| qualifies(p))
        {
            return Some(s.cfg.id);
        }
        let candidates: Vec<Candidate<'_>> = peers
            .values()
            .filter(|p| qualifies(p))
            .map(|p| Candidate {
                node: &p.cfg,
                load: p.load(),
            })
            .collect();
        pick_secondary(&self.me, &candidates, sid)
    }

    /// Every web peer (alive or not), in id order.
    pub fn web_peers(&self) -> Vec<NodeId> {
        self.ids_where(|p| p.cfg.role == NodeRole::Web)
    }

    /// The ids of the peers `pred` accepts, in id order.
    fn ids_where(&self, pred: impl Fn(&Peer) -> bool) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self
            .read()
            .values()
            .filter(|p| pred(p))
            .map(|p| p.cfg.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Whether `p` may hold copies of this node's sessions: any other node in a pair, a session server in a
    /// bank, a peer of this node's group in a broadcast topology.
    fn holds_copies(&self, p: &Peer) -> bool {
        match self.topology {
            Topology::Pair => p.cfg.role == NodeRole::Web,
            Topology::Rss => p.cfg.role == NodeRole::Rss,
            Topology::Broadcast => self.in_my_group(p),
        }
    }

    /// A broadcast group: copies go to every live peer of this node's group, and only there.
    fn is_broadcast(&self) -> bool {
        self.topology == Topology::Broadcast
    }

    fn in_my_group(&self, p: &Peer) -> bool {
        p.cfg.group == self.me.group && p.cfg.role == NodeRole::Web
    }

    /// Whether peer `id` may hold copies of this node's sessions (see [`Membership::holds_copies`]).
    pub fn may_hold_copies(&self, id: NodeId) -> bool {
        self.peer(id).is_some_and(|p| self.holds_copies(&p))
    }

    /// Whether `id` is a peer of this node's broadcast group.
    pub fn is_group_peer(&self, id: NodeId) -> bool {
        self.is_broadcast() && self.peer(id).is_some_and(|p| self.in_my_group(&p))
    }

    /// The peers that may hold a copy of a session besides the two its cookie names, for a takeover to poll:
    /// the bank's members, or every peer of this node's broadcast group (alive or not: the takeover probes);
    /// none in a pair.
    pub fn holders(&self) -> Vec<NodeId> {
        if !self.is_broadcast() {
            return self.bank();
        }
        self.ids_where(|p| self.in_my_group(p))
    }

    /// The peers that should hold a copy of `s` under `topology` now (a broadcast group's live peers).
    pub fn copy_targets(
        &self,
        topology: crate::topology::Topology,
        s: &crate::session::Session,
    ) -> Vec<NodeId> {
        topology.copy_targets(s, &self.group())
    }

    /// The bank's members (peers with `role = "rss"`), in id order; empty outside the `rss` topology.
    fn bank(&self) -> Vec<NodeId> {
        self.ids_where(|p| p.cfg.role == NodeRole::Rss)
    }

    /// The copy holders of a new or re-homed session: the secondary and, with `copies = 2` in a bank, a second
    /// member besides it (`None` where no live peer is left to pick).
    pub fn choose_copies(
        &self,
        sid: SessionId,
        exclude: &[NodeId],
        copies: usize,
    ) -> (Option<NodeId>, Option<NodeId>) {
        let first = self.choose_secondary(sid, exclude);
        let second = match first {
            Some(f) if copies >= 2 => {
                let mut more = exclude.to_vec();
                more.push(f);
                self.choose_secondary(sid, &more)
            }
            _ => None,
        };
        (first, second)
    }

    /// The secondary for a new or re-homed session (a bank member in the `rss` topology): see
    /// [`pick_secondary`]. Counts the assignment.
    fn choose_secondary(&self, sid: SessionId, exclude: &[NodeId]) -> Option<NodeId> {
        let peers = self.read();
        let candidates: Vec<Candidate<'_>> = peers
            .values()
            .filter(|p| p.is_alive() && self.holds_copies(p) && !exclude.contains(&p.cfg.id))
            .map(|p| Candidate {
                node: &p.cfg,
                load: p.load(),
            })
            .collect();
        let chosen = pick_secondary(&self.me, &candidates, sid)?;
        if let Some(p) = peers.get(&chosen) {
            p.assigned.fetch_add(1, Ordering::Relaxed);
        }
        Some(chosen)
    }
}

/// A live peer that could hold copies.
pub struct Candidate<'a> {
    /// Its `[[nodes]]` entry: name, machine, zone, drain.
    pub node: &'a NodeConfig,
    /// Sessions it last reported plus those assigned to it since.
    pub load: u64,
}

/// Pure choice of a secondary among live `candidates` (seed 003 [0069]): the admin pin when it is among them;
/// else prefer another machine, then another zone, then the least loaded; ties spread by the session id.
/// Draining nodes take no new copies.
pub fn pick_secondary(
    me: &NodeConfig,
    candidates: &[Candidate<'_>],
    sid: SessionId,
) -> Option<NodeId> {
    if let Some(pin) = &me.secondary {
        if let Some(c) = candidates
            .iter()
            .find(|c| &c.node.name == pin && !c.node.drain)
        {
            return Some(c.node.id);
        }
    }
    candidates
        .iter()
        .filter(|c| !c.node.drain && c.node.id != me.id)
        .min_by_key(|c| {
            let spread = mix(c.node.id.get() ^ sid.0 as u64 ^ (sid.0 >> 64) as u64);
            (
                c.node.machine == me.machine,
                c.node.zone == me.zone,
                c.load,
                spread,
            )
        })
        .map(|c| c.node.id)
}

/// splitmix64's finaliser: every input bit moves every output bit, so ties spread evenly.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, machine: &str, zone: &str) -> NodeConfig {
        NodeConfig {
            name: name.into(),
            id: NodeId::derive(name, "test-secret"),
            http: "127.0.0.1:1".parse().unwrap(),
            repl: "127.0.0.1:2".parse().unwrap(),
            machine: machine.into(),
            zone: zone.into(),
            weight: 1,
            drain: false,
            secondary: None,
            upstream: None,
            role: crate::config::NodeRole::Web,
            group: NodeConfig::DEFAULT_GROUP.into(),
        }
    }

    #[test]
    fn another_machine_beats_a_lighter_load_on_the_same_machine() {
        let me = node("a", "m1", "z1");
        let same_machine = node("b", "m1", "z1");
        let other_machine = node("c", "m2", "z1");
        let cands = [
            Candidate {
                node: &same_machine,
                load: 0,
            },
            Candidate {
                node: &other_machine,
                load: 100,
            },
        ];
        assert_eq!(
            pick_secondary(&me, &cands, SessionId(1)),
            Some(other_machine.id)
        );
    }

    #[test]
    fn another_zone_beats_the_same_zone_then_load_decides() {
        let me = node("a", "m1", "z1");
        let same_zone = node("b", "m2", "z1");
        let other_zone = node("c", "m3", "z2");
        let other_zone_busy = node("d", "m4", "z2");
        let cands = [
            Candidate {
                node: &same_zone,
                load: 0,
            },
            Candidate {
                node: &other_zone_busy,
                load: 9,
            },
            Candidate {
                node: &other_zone,
                load: 3,
            },
        ];
        assert_eq!(
            pick_secondary(&me, &cands, SessionId(1)),
            Some(other_zone.id)
        );
    }

    #[test]
    fn the_admin_pin_wins_while_it_is_alive() {
        let mut me = node("a", "m1", "z1");
        me.secondary = Some("b".into());
        let b = node("b", "m1", "z1");
        let c = node("c", "m2", "z2");
        let cands = [
            Candidate { node: &b, load: 50 },
            Candidate { node: &c, load: 0 },
        ];
        assert_eq!(pick_secondary(&me, &cands, SessionId(1)), Some(b.id));
        assert_eq!(
            pick_secondary(&me, &cands[1..], SessionId(1)),
            Some(c.id),
            "pin dead: normal choice"
        );
    }

    #[test]
    fn draining_nodes_and_no_candidates_give_no_secondary() {
        let me = node("a", "m1", "z1");
        let mut d = node("b", "m2", "z2");
        d.drain = true;
        assert_eq!(
            pick_secondary(&me, &[Candidate { node: &d, load: 0 }], SessionId(1)),
            None
        );
        assert_eq!(pick_secondary(&me, &[], SessionId(1)), None);
    }

    #[test]
    fn equal_candidates_are_spread_over_sessions() {
        let me = node("a", "m1", "z1");
        let b = node("b", "m2", "z2");
        let c = node("c", "m3", "z2");
        let cands = [
            Candidate { node: &b, load: 0 },
            Candidate { node: &c, load: 0 },
        ];
        let picks: std::collections::HashSet<_> = (0..64u128)
            .map(|i| pick_secondary(&me, &cands, SessionId(i * 7919)).unwrap())
            .collect();
        assert_eq!(picks.len(), 2);
    }
}
