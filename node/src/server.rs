//! Wiring: the [`Node`] shared by every task, its listeners (HTTP, replication) and background tasks
//! (heartbeats, expiry, gauges).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

use crate::config::{ClusterConfig, NodeConfig, ReplicationMode};
use crate::connection::{auth_key, server_handshake, write_frame, LinkError};
use crate::cookie::CookieCodec;
use crate::ids::{NodeId, PairTable};
use crate::membership::{Change, Membership};
use crate::metrics::Metrics;
use crate::replicate;
use crate::store::{Entry, Role, Store};
use crate::wire::{Body, Envelope, ItemResult};

/// Everything a node's tasks share.
pub struct Node {
    pub cfg: ClusterConfig,
    pub me: NodeConfig,
    pub codec: CookieCodec,
    pub store: Store,
    pub members: Membership,
    pub metrics: Metrics,
    pub forwarder: crate::forward::Forwarder,
    replicators: RwLock<HashMap<NodeId, mpsc::UnboundedSender<Arc<Entry>>>>,
    /// The pair table of the current node list (replaced on reload).
    pairs: RwLock<Arc<PairTable>>,
}

impl Node {
    pub fn id(&self) -> NodeId {
        self.me.id
    }

    pub fn sync(&self) -> bool {
        self.cfg.replication.mode == ReplicationMode::Sync
    }

    /// The pair table of the current cluster file.
    pub fn pairs(&self) -> Arc<PairTable> {
        self.pairs.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Takes a re-read cluster file: new nodes become peers (and eligible secondaries), removed ones hand their
    /// copies on, cookies naming new pairs decode. Settings other than the node list need a restart.
    ///
    /// # Errors
    /// When this node's own entry is gone or moved: that needs a restart, so the old config stays.
    pub fn reload(self: &Arc<Self>, cfg: ClusterConfig) -> Result<(), ServerError> {
        let Some(me) = cfg.node(&self.me.name) else {
            return Err(ServerError::Removed(self.me.name.clone()));
        };
        if me.id != self.me.id || me.http != self.me.http || me.repl != self.me.repl {
            return Err(ServerError::Moved);
        }
        let (added, removed) = self.members.update(&cfg);
        *self.pairs.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg.pairs.clone());
        for id in &added {
            self.spawn_replicator(*id);
        }
        for id in &removed {
            self.replicators
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
            let node = self.clone();
            let gone = *id;
            tokio::spawn(async move { node.rehome_all(move |s| s == Some(gone), gone).await });
        }
        self.metrics.reloads.inc();
        info!(
            added = added.len(),
            removed = removed.len(),
            nodes = cfg.nodes.len(),
            "cluster file reloaded"
        );
        Ok(())
    }

    fn spawn_replicator(self: &Arc<Self>, peer: NodeId) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.replicators
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, tx);
        let span = tracing::info_span!("replicate", peer = %self.members.name_of(peer).unwrap_or_default());
        tokio::spawn(replicate::task::run(self.clone(), peer, rx).instrument(span));
    }

    /// Queues a session for copying to `peer`.
    pub fn enqueue(&self, peer: NodeId, entry: &Arc<Entry>) {
        if let Some(tx) = self
            .replicators
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
        {
            self.metrics.repl_queue.inc();
            let _ = tx.send(entry.clone());
        }
    }

    /// Acts on a liveness change: a dead peer's sessions get new secondaries; a peer coming up takes copies of
    /// sessions that had none.
    fn on_change(self: &Arc<Self>, change: Change) {
        let node = self.clone();
        match change {
            Change::Down(peer) => {
                warn!(peer = %self.members.name_of(peer).unwrap_or_default(), "peer down: re-homing its copies");
                tokio::spawn(async move { node.rehome_all(|s| s == Some(peer), peer).await });
            }
            Change::Up(peer) => {
                info!(peer = %self.members.name_of(peer).unwrap_or_default(), "peer up");
                tokio::spawn(async move { node.rehome_all(|s| s.is_none(), peer).await });
            }
        }
    }

    /// Gives every primary session whose secondary matches `pred` a new secondary (never `avoid` when it is
    /// down) and queues a full copy; runs in the background, one session lock at a time.
    async fn rehome_all(self: Arc<Self>, pred: impl Fn(Option<NodeId>) -> bool, avoid: NodeId) {
        for entry in self.store.entries() {
            let mut slot = entry.slot.lock().await;
            if slot.role != Role::Primary {
                continue;
            }
            let Some(s) = slot.session.as_ref() else {
                continue;
            };
            if pred(s.secondary) {
                let exclude = if self.members.is_alive(avoid) {
                    vec![]
                } else {
                    vec![avoid]
                };
                self.rehome(&entry, &mut slot, &exclude);
            }
        }
    }

    /// Picks a new secondary for one primary session and queues a full copy to it. With no live peer the
    /// session runs without a copy and writes are acknowledged at once (counted, and fixed when a peer comes up).
    pub fn rehome(&self, entry: &Arc<Entry>, slot: &mut crate::store::Slot, exclude: &[NodeId]) {
        let Some(s) = slot.session.as_mut() else {
            return;
        };
        let new = self.members.choose_secondary(s.id, exclude);
        s.secondary = new;
        let version = s.version;
        slot.pending.clear();
        slot.needs_full = new.is_some();
        self.metrics.rehomed.inc();
        match new {
            Some(peer) => self.enqueue(peer, entry),
            // Nobody to copy to: waiting writes and reads are released (reads need no lease without a copy).
            None => entry.update_mark(|m| {
                m.copied = m.copied.max(version + 1);
                m.lease_seq += 1;
            }),
        }
    }

    /// Handles one request frame from an authenticated peer.
    async fn answer(self: &Arc<Self>, body: Body) -> Body {
        match body {
            Body::Ping { .. } => Body::Pong {
                sessions: self.store.len() as u64,
            },
            Body::Batch { from, items } => {
                let mut results = Vec::with_capacity(items.len());
                for item in items {
                    results.push(self.receive(from, item).await);
                }
                Body::BatchReply { results }
            }
            Body::Pull {
                sid,
                requester,
                owner_unreachable,
            } => {
                let result =
                    crate::takeover::serve_pull(self, sid, requester, owner_unreachable).await;
                Body::PullReply { result }
            }
            _ => Body::Error {
                message: "not a request".into(),
            },
        }
    }

    async fn receive(&self, from: NodeId, item: crate::wire::Item) -> ItemResult {
        let ends = matches!(item, crate::wire::Item::Remove { .. });
        let (entry, _) = self.store.get_or_insert(item.sid());
        let mut slot = entry.slot.lock().await;
        let was_primary = slot.role == Role::Primary && slot.session.is_some();
        let result = replicate::incoming(
            &mut slot,
            from,
            item,
            Instant::now(),
            self.cfg.replication.lease,
        );
        if was_primary && slot.role == Role::Replica {
            // A newer owner reached us through replication: anything waiting here must go there.
            entry.update_mark(|m| m.fenced = true);
        }
        if slot.session.is_none() {
            if ends && result == ItemResult::Applied {
                self.store.mark_ended(entry.id);
            }
            self.store.remove(&entry);
        }
        result
    }
}

/// Why a node could not start, or refused a reloaded file.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("no node named `{0}` in the config")]
    UnknownNode(String),
    #[error("bind {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("`{0}` is not in the new file: stop this node instead")]
    Removed(String),
    #[error("this node's id or addresses changed: restart it to apply that")]
    Moved,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { what, addr, source })
}

/// Builds the node `name` of `cfg` and starts every listener and task; returns once listening.
///
/// # Errors
/// When `name` is not in the config or an address cannot be bound.
pub async fn start(cfg: ClusterConfig, name: &str) -> Result<Arc<Node>, ServerError> {
    let me = cfg
        .node(name)
        .ok_or_else(|| ServerError::UnknownNode(name.to_string()))?
        .clone();
    let http = bind("http", me.http).await?;
    let repl = bind("repl", me.repl).await?;
    let (members, changes) = Membership::new(&cfg, &me);
    let node = Arc::new(Node {
        codec: CookieCodec::new(&cfg.cookie),
        forwarder: crate::forward::Forwarder::new(cfg.replication.peer_timeout),
        store: Store::default(),
        metrics: Metrics::new(),
        pairs: RwLock::new(Arc::new(cfg.pairs.clone())),
        replicators: RwLock::new(HashMap::new()),
        members,
        me,
        cfg,
    });
    for peer in node.members.peer_ids() {
        node.spawn_replicator(peer);
    }
    tokio::spawn(watch_changes(node.clone(), changes));
    tokio::spawn(serve_replication(node.clone(), repl));
    tokio::spawn(crate::api::serve_http(node.clone(), http));
    tokio::spawn(heartbeats(node.clone()));
    tokio::spawn(housekeeping(node.clone()));
    info!(node = %node.me.name, http = %node.me.http, repl = %node.me.repl, mode = ?node.cfg.replication.mode, "node started");
    Ok(node)
}

/// The next connection on `listener`. Accept errors (out of file descriptors, aborted handshakes) are logged and
/// retried after a short pause instead of ending the listener.
pub(crate) async fn accept(
    listener: &TcpListener,
    what: &str,
) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(x) => return x,
            Err(e) => {
                warn!(error = %e, listener = what, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_replication(node: Arc<Node>, listener: TcpListener) {
    let key = auth_key(node.cfg.secret.expose());
    loop {
        let (stream, addr) = accept(&listener, "replication").await;
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_peer(node.clone(), stream, addr, key).await {
                match e {
                    LinkError::Auth { .. } => {
                        node.metrics.auth_failures.inc();
                        warn!(%addr, error = %e, "replication connection refused");
                    }
                    LinkError::Frame(_) => {
                        node.metrics.frame_errors.inc();
                        warn!(%addr, error = %e, "malformed replication frame: connection closed");
                    }
                    _ => tracing::debug!(%addr, error = %e, "replication connection ended"),
                }
            }
        });
    }
}

async fn serve_peer(
    node: Arc<Node>,
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    key: [u8; 32],
) -> Result<(), LinkError> {
    let (mut reader, mut writer, peer) = server_handshake(stream, &key).await?;
    tracing::debug!(%addr, %peer, "replication peer connected");
    let (tx, mut rx) = mpsc::unbounded_channel::<Envelope>();
    let write_task = tokio::spawn(async move {
        while let Some(env) = rx.recv().await {
            if write_frame(&mut writer, &env).await.is_err() {
                break;
            }
        }
    });
    let result = loop {
        match reader.next().await {
            Ok(Some(env)) => {
                // Each request runs on its own: a pull waiting on a busy session must not hold up heartbeats.
                let node = node.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let body = node.answer(env.body).await;
                    let _ = tx.send(Envelope { id: env.id, body });
                });
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    drop(tx);
    let _ = write_task.await;
    result
}

async fn watch_changes(node: Arc<Node>, mut changes: mpsc::UnboundedReceiver<Change>) {
    while let Some(change) = changes.recv().await {
        node.on_change(change);
    }
}

async fn heartbeats(node: Arc<Node>) {
    let mut tick = tokio::time::interval(node.cfg.replication.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sessions = node.store.len() as u64;
        let ids = node.members.peer_ids();
        let beats = ids.iter().map(|id| node.members.heartbeat(*id, sessions));
        futures_util::future::join_all(beats).await;
    }
}

/// Expiry and gauges, about once a second.
async fn housekeeping(node: Arc<Node>) {
    let idle = node.cfg.session.idle_timeout;
    let period = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let now = Instant::now();
        let (mut primaries, mut replicas) = (0i64, 0i64);
        node.store.prune_ended(now);
        for entry in node.store.entries() {
            let Ok(mut slot) = entry.slot.try_lock() else {
                continue;
            };
            let Some(s) = slot.session.as_ref() else {
                continue;
            };
            let idle_for = now.saturating_duration_since(slot.last_access);
            match slot.role {
                Role::Primary => {
                    primaries += 1;
                    if idle_for > idle {
                        crate::api::remove_session(&node, &entry, &mut slot);
                        node.metrics.expired.inc();
                    }
                }
                Role::Replica => {
                    replicas += 1;
                    // A copy expires on its own only when its primary is gone; otherwise the primary says when.
                    if idle_for > idle && !node.members.is_alive(s.primary) {
                        slot.session = None;
                        node.store.mark_ended(entry.id);
                        node.store.remove(&entry);
                        node.metrics.expired.inc();
                    }
                }
            }
        }
        node.metrics
            .sessions
            .with_label_values(&["primary"])
            .set(primaries);
        node.metrics
            .sessions
            .with_label_values(&["replica"])
            .set(replicas);
    }
}
