//! The I/O side of replication: a queue and a task per peer, and re-homing of copies when a peer fails.
//!
//! Each peer's task drains the sessions queued for it, sends their items as one batch, and carries out what
//! the core ([`super`]) says about each answer. One batch is in flight per peer; whatever is queued meanwhile
//! goes in the next, so under load one copy covers many updates (seed 000 claim 23). In `async` mode a batch
//! also waits for `max_updates` queued sessions or `max_delay`, whichever comes first (seed 003 [0067]),
//! unless something queued is urgent (a read waiting for its lease to be renewed) or the node is shutting
//! down and flushing.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::Histogram;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn, Instrument};

use super::{on_failure, on_reply, outgoing, retarget, AfterFailure, AfterReply};
use crate::config::ReplicationMode;
use crate::ids::NodeId;
use crate::membership::{Change, Membership};
use crate::metrics::Metrics;
use crate::store::{now, Cursor, Entry, Slot, Store};
use crate::topology::Topology;
use crate::wire::Item;

/// Whether one of a session's copies goes to `peer`.
fn copies_to(copies: &[Cursor], peer: NodeId) -> bool {
    copies.iter().any(|c| c.peer == peer)
}

/// A session queued for a peer, and whether a request waits on its copy leaving at once.
type Queued = (Arc<Entry>, bool);
/// A session in a batch sent: its entry, the version the item brings the copy to, and for a drop of a copy
/// left behind, the (epoch, version) it was left at.
type Sent = (Arc<Entry>, u64, Option<(u64, u64)>);

/// Most sessions in one batch.
const MAX_BATCH: usize = 1024;
/// Most bytes in one batch (about): a batch over it is sent as several, each well under the frame limit.
const MAX_BATCH_BYTES: usize = crate::wire::MAX_FRAME / 4;

/// What the replicator needs to know of the cluster file.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node's id, sent as the batches' sender.
    pub me: NodeId,
    /// Which peers get copies of a session.
    pub topology: Topology,
    /// `sync` writes wait for their copies; `async` ones do not.
    pub mode: ReplicationMode,
    /// `[replication.batch] max_updates`: a peer's batch leaves once this many sessions are queued.
    pub max_updates: usize,
    /// `[replication.batch] max_delay_ms`: longest a queued session waits for its batch to fill.
    pub max_delay: Duration,
    /// `[replication] peer_timeout_ms`: how long a batch waits for its answer.
    pub peer_timeout: Duration,
    /// `[replication] lease_ms`: how long after a batch was sent its acknowledgement lets the primary serve reads.
    pub lease: Duration,
    /// `[replication] min_copies = 2`: a write left with no copy to go to is never released as copied.
    pub strict: bool,
}

/// Queues, per-peer tasks and re-homing. Cheap to share: every method takes `&self` or `&Arc<Self>`.
pub struct Replicator {
    settings: Settings,
    store: Arc<Store>,
    members: Arc<Membership>,
    metrics: Arc<Metrics>,
    queues: RwLock<HashMap<NodeId, mpsc::UnboundedSender<Queued>>>,
    /// Sessions queued or in a batch not yet answered, over every peer.
    outstanding: AtomicI64,
    settled: Notify,
    /// Shutting down: batches leave at once instead of waiting to fill.
    flushing: AtomicBool,
    hurry: Notify,
}

impl Replicator {
    /// A replicator with no peer queues yet: call [`Replicator::add_peer`] for each peer.
    pub fn new(
        settings: Settings,
        store: Arc<Store>,
        members: Arc<Membership>,
        metrics: Arc<Metrics>,
    ) -> Arc<Replicator> {
        Arc::new(Replicator {
            settings,
            store,
            members,
            metrics,
            queues: RwLock::new(HashMap::new()),
            outstanding: AtomicI64::new(0),
            settled: Notify::new(),
            flushing: AtomicBool::new(false),
            hurry: Notify::new(),
        })
    }

    /// How many copies must confirm a write of a session with `copies` copies.
    pub fn acks_needed(&self, copies: usize) -> usize {
        self.settings
            .topology
            .acks_needed(self.settings.mode, copies)
    }

    /// Whether writes wait for their copies (`sync` mode).
    pub fn sync(&self) -> bool {
        self.settings.mode == ReplicationMode::Sync
    }

    /// Starts the queue and task for `peer` (at start, and for a peer added by reload).
    pub fn add_peer(self: &Arc<Self>, peer: NodeId) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.queues
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, tx);
        let span = tracing::info_span!("replicate", peer = %self.members.name_of(peer).unwrap_or_default());
        tokio::spawn(self.clone().run(peer, rx).instrument(span));
    }

    /// Stops copying to a peer removed by reload and re-homes the sessions that copied to it.
    pub fn remove_peer(self: &Arc<Self>, peer: NodeId) {
        self.queues
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&peer);
        let me = self.clone();
        tokio::spawn(async move {
            me.clone()
                .rehome_all(move |c| copies_to(c, peer), peer)
                .await;
            // Out of the cluster: nothing will be told to it any more.
            me.store.take_left_behind(peer);
        });
    }

    /// Queues a session for copying to `peer`.
    pub fn enqueue(&self, peer: NodeId, entry: &Arc<Entry>) {
        self.send(peer, entry, false);
    }

    /// Queues a session for `peer` and sends its batch without waiting for more: a request is waiting on it
    /// (a read whose lease must be renewed), so batching would only add `max_delay` to that request.
    pub fn enqueue_urgent(&self, peer: NodeId, entry: &Arc<Entry>) {
        self.send(peer, entry, true);
    }

    fn send(&self, peer: NodeId, entry: &Arc<Entry>, urgent: bool) {
        if let Some(tx) = self
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
        {
            self.metrics.repl_queue.inc();
            self.outstanding.fetch_add(1, Ordering::AcqRel);
            if tx.send((entry.clone(), urgent)).is_err() {
                self.settle(1);
            }
        }
    }

    /// Queues a session for each of `peers`.
    pub fn enqueue_all(&self, peers: &[NodeId], entry: &Arc<Entry>) {
        for p in peers {
            self.enqueue(*p, entry);
        }
    }

    fn settle(&self, n: i64) {
        if self.outstanding.fetch_sub(n, Ordering::AcqRel) <= n {
            self.settled.notify_waiters();
        }
    }

    /// Sends everything queued now, without waiting for batches to fill, and waits until every queued copy
    /// was answered (or failed) or `limit` ran out. Returns whether everything was answered.
    pub async fn flush(&self, limit: Duration) -> bool {
        self.flushing.store(true, Ordering::Release);
        self.hurry.notify_waiters();
        let wait = async {
            loop {
                let settled = self.settled.notified();
                tokio::pin!(settled);
                settled.as_mut().enable();
                if self.outstanding.load(Ordering::Acquire) <= 0 {
                    return;
                }
                settled.await;
            }
        };
        tokio::time::timeout(limit, wait).await.is_ok()
    }

    /// Acts on a liveness change: a dead peer's sessions get new copies; a peer coming up takes copies of
    /// sessions that had none.
    pub fn on_change(self: &Arc<Self>, change: Change) {
        let me = self.clone();
        match change {
            Change::Down(peer) => {
                warn!(peer = %self.members.name_of(peer).unwrap_or_default(), "peer down: re-homing its copies");
                tokio::spawn(async move { me.rehome_all(move |c| copies_to(c, peer), peer).await });
            }
            Change::Restarted(peer) => {
                // It holds nothing any more, left-behind copies included.
                self.store.take_left_behind(peer);
                tokio::spawn(async move { me.resend_all(peer).await });
            }
            Change::Up(peer) => {
                info!(peer = %self.members.name_of(peer).unwrap_or_default(), "peer up");
                let tell = self.members.may_hold_copies(peer);
                let group = self.members.is_group_peer(peer);
                let wanted = self.settings.topology.copies();
                tokio::spawn(async move {
                    if group {
                        // A broadcast group member (back, or new): every session of the group goes to it.
                        me.clone()
                            .rehome_all(move |c| !copies_to(c, peer), peer)
                            .await;
                    } else {
                        // Sessions short of copies (none, or one of a bank's two) get them now.
                        me.clone().rehome_all(move |c| c.len() < wanted, peer).await;
                    }
                    // After the re-homing: what it took again is no longer left behind there.
                    if tell {
                        me.tell_ends(peer).await;
                        me.queue_left_behind(peer);
                    }
                });
            }
        }
    }

    /// Queues, for every live peer holding copies left behind, the sessions to tell it about (the timer's
    /// part: a peer never seen going down sends no "up").
    pub fn retry_left_behind(&self) {
        for peer in self.store.left_behind_peers() {
            if self.members.is_alive(peer) {
                self.queue_left_behind(peer);
            }
        }
    }

    /// Queues for `peer` every session whose copy was left behind there; a session no longer held here is
    /// forgotten (its copy there expires on its own).
    fn queue_left_behind(&self, peer: NodeId) {
        for sid in self.store.left_behind_on(peer) {
            match self.store.get(sid) {
                Some(entry) => self.enqueue(peer, &entry),
                None => self.store.unmark_left_behind(peer, sid),
            }
        }
    }

    /// The drop to send `peer` for session `sid` (locked in `slot`) when a copy was left behind there and
    /// the peer is not one of its copy holders now; takes the mark (put back if the send fails).
    fn left_behind_item(
        &self,
        slot: &Slot,
        sid: crate::ids::SessionId,
        peer: NodeId,
    ) -> Option<(Item, (u64, u64))> {
        if slot.copies.iter().any(|c| c.peer == peer) {
            self.store.unmark_left_behind(peer, sid);
            return None;
        }
        let (epoch, version) = self.store.take_left_behind_one(peer, sid)?;
        Some((
            Item::Drop {
                sid,
                epoch,
                version,
            },
            (epoch, version),
        ))
    }

    /// Tells `peer`, back after being unreachable, to drop its copies of sessions that ended here meanwhile
    /// (a logout must not come back when this node dies later). Best effort: a miss leaves the copy to
    /// expire.
    async fn tell_ends(&self, peer: NodeId) {
        let ends = self.store.untold_ends();
        let Some(p) = self.members.peer(peer) else {
            return;
        };
        for chunk in ends.chunks(MAX_BATCH) {
            let items = chunk
                .iter()
                .map(|&(sid, epoch)| Item::Remove { sid, epoch })
                .collect();
            if let Err(e) = p
                .batch(self.settings.me, items, self.settings.peer_timeout)
                .await
            {
                debug!(error = %e, "telling a peer of ended sessions failed");
                return;
            }
        }
    }

    /// Queues a full copy of every primary session copied to `peer`, which restarted and holds nothing.
    async fn resend_all(self: Arc<Self>, peer: NodeId) {
        for entry in self.store.entries() {
            let mut slot = entry.slot.lock().await;
            if slot.primary().is_none() {
                continue;
            }
            if let Some(c) = slot.copies.iter_mut().find(|c| c.peer == peer) {
                c.full = true;
                c.acked = None;
                drop(slot);
                self.enqueue(peer, &entry);
            }
        }
    }

    /// Gives every primary session whose copies match `pred` new ones (never `avoid` while it is down) and
    /// queues full copies; runs in the background, one session lock at a time.
    async fn rehome_all(self: Arc<Self>, pred: impl Fn(&[Cursor]) -> bool, avoid: NodeId) {
        for entry in self.store.entries() {
            let mut slot = entry.slot.lock().await;
            if slot.primary().is_some() && pred(&slot.copies) {
                let exclude = if self.members.is_alive(avoid) {
                    vec![]
                } else {
                    vec![avoid]
                };
                self.rehome(&entry, &mut slot, &exclude);
            }
        }
    }

    /// Picks new copy targets for one primary session (never one of `exclude`) and queues full copies to the
    /// new ones. With no live peer the session runs without a copy and writes are acknowledged at once
    /// (counted, and fixed when a peer comes up).
    pub fn rehome(&self, entry: &Arc<Entry>, slot: &mut Slot, exclude: &[NodeId]) {
        let Some(s) = slot.session.as_mut() else {
            return;
        };
        // A broadcast group's session keeps the secondary its cookie names while that one lives: every member
        // holds a copy anyway, and a new name would only re-mint cookies.
        let keep = self.settings.topology == Topology::Broadcast
            && s.secondary
                .is_some_and(|x| self.members.is_alive(x) && !exclude.contains(&x));
        if !keep {
            (s.secondary, s.also) =
                self.members
                    .choose_copies(s.id, exclude, self.settings.topology.copies());
        }
        let (version, epoch, sid) = (s.version, s.epoch, s.id);
        let targets = self.members.copy_targets(self.settings.topology, s);
        for peer in retarget(slot, &targets) {
            // Its copy is no longer updated: told to drop it once it answers (through its queue, so the
            // drop is ordered with any copy sent to it later), so that no request with an older cookie can
            // promote or be granted it.
            self.store.mark_left_behind(peer, sid, epoch, version);
        }
        for &t in &targets {
            self.store.unmark_left_behind(t, sid);
        }
        self.metrics.rehomed.inc();
        if targets.is_empty() {
            // Nobody to copy to: waiting reads are released (they need no lease without a copy), and waiting
            // writes too unless `min_copies = 2` (then they time out unconfirmed: 503).
            let strict = self.settings.strict;
            entry.update_mark(|m| {
                if !strict {
                    m.copied = m.copied.max(version + 1);
                }
                m.lease_seq += 1;
            });
        } else {
            // Fewer copies may now be enough: what the kept ones confirmed already can release waiting writes
            // (two bank copies, one member gone: the other's earlier acknowledgement counts alone now).
            let needed = self.acks_needed(slot.copies.len());
            let acked = slot.copies.iter().map(|c| c.acked);
            if let Some(v) = crate::topology::durable(acked, needed, version) {
                entry.update_mark(|m| m.copied = m.copied.max(v + 1));
            }
        }
        self.enqueue_all(&targets, entry);
    }

    /// One peer's task; runs until the peer is removed.
    async fn run(self: Arc<Self>, peer: NodeId, mut rx: mpsc::UnboundedReceiver<Queued>) {
        let batching = !self.sync();
        let name = self.members.name_of(peer).unwrap_or_default();
        let rtt = self.metrics.repl_rtt.with_label_values(&[&name]);
        // A peer is a node or the Redis bank for its whole life (the bank cannot change by reload).
        let whole = self
            .members
            .peer(peer)
            .is_some_and(|p| p.takes_whole_copies());
        loop {
            let Some((first, mut urgent)) = rx.recv().await else {
                return;
            };
            let mut queued = vec![first];
            if batching && !urgent && !self.flushing.load(Ordering::Acquire) {
                let deadline = tokio::time::Instant::now() + self.settings.max_delay;
                while queued.len() < self.settings.max_updates && !urgent {
                    tokio::select! {
                        e = rx.recv() => match e {
                            Some((e, u)) => { queued.push(e); urgent = u; }
                            None => break,
                        },
                        _ = tokio::time::sleep_until(deadline) => break,
                        _ = self.hurry.notified() => break,
                    }
                }
            }
            while queued.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok((e, _)) => queued.push(e),
                    Err(_) => break,
                }
            }
            let n = queued.len() as i64;
            self.metrics.repl_queue.sub(n);
            self.send_batch(peer, queued, whole, &rtt).await;
            self.settle(n);
        }
    }

    /// Sends the items `queued` sessions have for `peer` (whole sessions for a peer that takes only those).
    async fn send_batch(
        &self,
        peer: NodeId,
        queued: Vec<Arc<Entry>>,
        whole: bool,
        rtt: &Histogram,
    ) {
        let mut seen: HashSet<usize> = HashSet::new();
        let mut sent: Vec<Sent> = Vec::new();
        let mut items: Vec<Item> = Vec::new();
        let mut bytes = 0;
        for entry in queued {
            if !seen.insert(Arc::as_ptr(&entry) as usize) {
                continue;
            }
            let mut slot = entry.slot.lock().await;
            let (item, version, left) = match outgoing(&mut slot, entry.id, peer, whole) {
                Some((item, version)) => (item, version, None),
                None => match self.left_behind_item(&slot, entry.id, peer) {
                    Some((item, left)) => (item, 0, Some(left)),
                    None => continue,
                },
            };
            drop(slot);
            if matches!(item, Item::Full { .. }) {
                self.metrics.full_copies.inc();
            }
            let size = item.approx_bytes();
            if !items.is_empty() && bytes + size > MAX_BATCH_BYTES {
                let (i, s) = (std::mem::take(&mut items), std::mem::take(&mut sent));
                self.send_items(peer, i, s, rtt).await;
                bytes = 0;
            }
            bytes += size;
            items.push(item);
            sent.push((entry, version, left));
        }
        if !items.is_empty() {
            self.send_items(peer, items, sent, rtt).await;
        }
    }

    /// Sends one batch of items to `peer` and carries out what each answer (or the failure) asks.
    async fn send_items(&self, peer: NodeId, items: Vec<Item>, sent: Vec<Sent>, rtt: &Histogram) {
        self.metrics.repl_items.inc_by(items.len() as u64);
        let Some(p) = self.members.peer(peer) else {
            return;
        };
        let sent_at = now();
        let reply = p
            .batch(self.settings.me, items, self.settings.peer_timeout)
            .await;
        rtt.observe(now().saturating_duration_since(sent_at).as_secs_f64());
        let results = match reply {
            Ok(results) => results,
            Err(e) => {
                self.metrics.repl_errors.inc();
                warn!(sessions = sent.len(), error = %e, "replication batch failed: peer marked down");
                self.members.mark_failed(peer, &e);
                for (entry, _, left) in sent {
                    let mut slot = entry.slot.lock().await;
                    if let Some((epoch, version)) = left {
                        // Told again later, unless the peer holds a copy again meanwhile.
                        if !slot.copies.iter().any(|c| c.peer == peer) {
                            self.store
                                .mark_left_behind_if_none(peer, entry.id, epoch, version);
                        }
                        continue;
                    }
                    match on_failure(&mut slot, peer) {
                        AfterFailure::Rehome => self.rehome(&entry, &mut slot, &[peer]),
                        AfterFailure::Forget => {
                            // A removal whose copy went down with the peer: release whoever waits for it,
                            // and tell the peer when it is back.
                            entry.update_mark(|m| m.lease_seq += 1);
                            self.store.mark_untold(entry.id);
                            self.store.remove(&entry);
                        }
                        AfterFailure::Nothing => {}
                    }
                }
                return;
            }
        };
        let lease_until = sent_at + self.settings.lease;
        for ((entry, version, left), result) in sent.into_iter().zip(results) {
            if left.is_some() {
                // A drop's answer says nothing of this node's own copies.
                continue;
            }
            let mut slot = entry.slot.lock().await;
            let needed = self.acks_needed(slot.copies.len());
            match on_reply(&mut slot, peer, version, &result, needed) {
                AfterReply::Acked { durable } => entry.update_mark(|m| {
                    if let Some(v) = durable {
                        m.copied = m.copied.max(v + 1);
                    }
                    m.lease_until = m.lease_until.max(lease_until);
                    m.lease_seq += 1;
                }),
                AfterReply::Ignored => {}
                AfterReply::Resend => {
                    debug!(session = %entry.id.log_hash(), "copy out of step: sending the full session");
                    self.enqueue(peer, &entry);
                }
                AfterReply::Fenced => {
                    warn!(session = %entry.id.log_hash(), ?result, "a newer owner exists: local copy dropped");
                    self.metrics.fenced.inc();
                    entry.update_mark(|m| m.fenced = true);
                }
            }
            if slot.is_vacant() {
                self.store.remove(&entry);
            }
        }
    }
}
