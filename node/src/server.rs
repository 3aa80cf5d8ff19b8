//! Wiring, and nothing else: builds the node's parts from the cluster file, starts its listeners and
//! background tasks, takes reloads, and shuts down gracefully. No other module imports this one.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::header::HeaderValue;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};

use crate::app::App;
use crate::builtin::BuiltinApi;
use crate::config::{self, ClusterConfig, NodeConfig};
use crate::connection::AuthKeys;
use crate::cookie::CookieCodec;
use crate::drain::Drain;
use crate::forward::Forwarder;
use crate::http::HttpFront;
use crate::membership::{Change, Membership};
use crate::metrics::Metrics;
use crate::peer_server::PeerServer;
use crate::replicate::replicator::{self, Replicator};
use crate::service::{self, OwnIds, SessionService};
use crate::sidecar::Sidecar;
use crate::store::{now, Store};
use crate::takeover::Takeover;
use crate::topology::Topology;

/// Why a node could not start, or refused a reloaded file.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `--name` names no `[[nodes]]` entry (the name given).
    #[error("no node named `{0}` in the config")]
    UnknownNode(String),
    /// A listener's address could not be bound.
    #[error("bind {what} {addr}: {source}")]
    Bind {
        /// Which listener: `http` or `repl`.
        what: &'static str,
        /// The address from the cluster file.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A reloaded file no longer lists this node (its name).
    #[error("`{0}` is not in the new file: stop this node instead")]
    Removed(String),
    /// A reloaded file changes this node's id or addresses, which a running node cannot take.
    #[error("this node's id or addresses changed: restart it to apply that")]
    Moved,
    /// A reloaded file changes the topology, the copies per session, the Redis bank or a node's role, which
    /// every process reads at start only.
    #[error(
        "the topology, copies, [replication.bank] or a node's role changed: restart the nodes and the lb to \
         apply that"
    )]
    Reshaped,
    /// The file asks for a replication topology this version does not build.
    #[error("topology `{0}` is not built yet")]
    Topology(config::Topology),
}

/// The node's two listeners, bound by the caller (a test binds port 0 and reads the address).
pub struct Listeners {
    /// The HTTP port (session API, `/_node/` paths).
    pub http: TcpListener,
    /// The replication port.
    pub repl: TcpListener,
}

impl Listeners {
    /// Binds the addresses `me` names.
    ///
    /// # Errors
    /// [`ServerError::Bind`] when an address cannot be bound.
    pub async fn bind(me: &NodeConfig) -> Result<Listeners, ServerError> {
        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { what, addr, source })
        };
        Ok(Listeners {
            http: bind("http", me.http).await?,
            repl: bind("repl", me.repl).await?,
        })
    }
}

/// A started node: what reload and shutdown need.
pub struct Running {
    me: NodeConfig,
    /// The topology, copies and every node's role as started: a reload may not change them.
    shape: Shape,
    grace: Duration,
    members: Arc<Membership>,
    pairs: Arc<RwLock<Arc<crate::ids::PairTable>>>,
    codec: Arc<RwLock<Arc<CookieCodec>>>,
    keys: Arc<AuthKeys>,
    replicator: Arc<Replicator>,
    metrics: Arc<Metrics>,
    drain: Arc<Drain>,
    stop: watch::Sender<bool>,
    http: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
}

/// Builds node `name` of `cfg` on `listeners` and starts every task; returns once serving.
///
/// # Errors
/// [`ServerError::UnknownNode`] when `name` is not in the config.
pub fn start(cfg: ClusterConfig, name: &str, listeners: Listeners) -> Result<Running, ServerError> {
    let me = cfg
        .node(name)
        .ok_or_else(|| ServerError::UnknownNode(name.to_string()))?
        .clone();
    let r = &cfg.replication;
    let topology =
        Topology::built(r.topology, r.copies).ok_or(ServerError::Topology(r.topology))?;
    let store = Arc::new(Store::default());
    let metrics = Arc::new(Metrics::new());
    let keys = Arc::new(AuthKeys::new(
        cfg.secret.expose(),
        cfg.previous_secret.as_ref().map(|s| s.expose()),
    ));
    let (members, changes) = Membership::new(&cfg, &me, metrics.repl_bytes.clone(), keys.clone());
    let members = Arc::new(members);
    let replicator = Replicator::new(
        replicator::Settings {
            me: me.id,
            topology,
            mode: r.mode,
            max_updates: r.max_updates,
            max_delay: r.max_delay,
            peer_timeout: r.peer_timeout,
            lease: r.lease,
            strict: r.strict,
        },
        store.clone(),
        members.clone(),
        metrics.clone(),
    );
    for peer in members.peer_ids() {
        replicator.add_peer(peer);
    }
    let takeover = Arc::new(Takeover {
        me: me.id,
        topology,
        lease: r.lease,
        peer_timeout: r.peer_timeout,
        store: store.clone(),
        members: members.clone(),
        metrics: metrics.clone(),
        replicator: replicator.clone(),
    });
    let pairs = Arc::new(RwLock::new(Arc::new(cfg.pairs.clone())));
    let codec = Arc::new(RwLock::new(Arc::new(CookieCodec::new(&cfg.cookie))));
    let peers = Arc::new(PeerServer {
        incarnation: crate::ids::SessionId::random().0 as u64,
        keys: keys.clone(),
        lease: r.lease,
        store: store.clone(),
        metrics: metrics.clone(),
        takeover: takeover.clone(),
    });
    let drain = Arc::new(Drain::new(
        me.id,
        store.clone(),
        members.clone(),
        metrics.clone(),
        cfg.node.drain_rate,
        r.peer_timeout * 2 + r.lease,
    ));
    drain.set(me.drain);
    let (stop, stopped) = watch::channel(false);
    let mut background = vec![
        tokio::spawn(drain.clone().run()),
        tokio::spawn(watch_changes(replicator.clone(), changes)),
        tokio::spawn(peers.serve(listeners.repl)),
        tokio::spawn(heartbeats(members.clone(), store.clone(), r.heartbeat)),
        tokio::spawn(tell_left_behind(replicator.clone(), r.heartbeat)),
    ];
    let front = Front {
        cfg: &cfg,
        me: &me,
        settings: service::Settings {
            me: me.id,
            topology,
            max_session_bytes: cfg.session.max_session_bytes,
            wait_limit: r.peer_timeout * 3,
            idle_timeout: cfg.session.idle_timeout,
            strict: r.strict,
        },
        pairs: pairs.clone(),
        codec: codec.clone(),
        store,
        members: members.clone(),
        metrics: metrics.clone(),
        replicator: replicator.clone(),
        takeover,
        drain: drain.clone(),
    };
    let (http, housekeeping) = match me.upstream {
        Some(app) => front.start(
            Sidecar::new(app, me.http, cfg.sidecar.clone()),
            listeners.http,
            stopped,
        ),
        None => front.start(
            BuiltinApi {
                members: members.clone(),
            },
            listeners.http,
            stopped,
        ),
    };
    background.push(housekeeping);
    info!(node = %me.name, http = %me.http, repl = %me.repl, mode = ?r.mode, upstream = ?me.upstream, "node started");
    Ok(Running {
        shape: Shape::of(&cfg),
        grace: cfg.node.grace_period,
        me,
        members,
        pairs,
        codec,
        keys,
        replicator,
        metrics,
        drain,
        stop,
        http,
        background,
    })
}

/// What the HTTP front and its session service are built from, whichever app serves.
struct Front<'a> {
    cfg: &'a ClusterConfig,
    me: &'a NodeConfig,
    settings: service::Settings,
    pairs: Arc<RwLock<Arc<crate::ids::PairTable>>>,
    codec: Arc<RwLock<Arc<CookieCodec>>>,
    store: Arc<Store>,
    members: Arc<Membership>,
    metrics: Arc<Metrics>,
    replicator: Arc<Replicator>,
    takeover: Arc<Takeover>,
    drain: Arc<Drain>,
}

impl Front<'_> {
    /// Builds the session service around `app` and starts serving `listener`; returns the front's task and
    /// the housekeeping task.
    fn start<A: App>(
        self,
        app: A,
        listener: TcpListener,
        stopped: watch::Receiver<bool>,
    ) -> (JoinHandle<()>, JoinHandle<()>) {
        let r = &self.cfg.replication;
        let service = Arc::new(SessionService {
            app,
            settings: self.settings,
            codec: self.codec,
            // Validated as a lowercase header name: parsing it cannot fail.
            token_header: self
                .cfg
                .cookie
                .header
                .as_deref()
                .and_then(|h| hyper::header::HeaderName::from_bytes(h.as_bytes()).ok()),
            pairs: self.pairs,
            store: self.store.clone(),
            members: self.members.clone(),
            metrics: self.metrics.clone(),
            replicator: self.replicator,
            takeover: self.takeover,
            forwarder: Forwarder::new(
                r.peer_timeout,
                answer_limit(self.cfg, self.me),
                r.heartbeat,
                self.members,
                self.store,
                self.metrics,
            ),
            own_ids: OwnIds::new(),
        });
        let front = Arc::new(HttpFront {
            name: self.me.name.clone(),
            served_by: self
                .cfg
                .node
                .expose_node
                .then(|| HeaderValue::from_str(&self.me.name).ok())
                .flatten(),
            max_body_bytes: self.cfg.node.max_body_bytes,
            mode: r.mode.as_str(),
            role: self.me.role,
            service: service.clone(),
            perimeter: crate::http::Perimeter::of(self.cfg),
            drain: self.drain,
            accept_proxy: self.cfg.node.accept_proxy,
            stopping: stopped.clone(),
            tunnels: crate::tunnel::Relays::default(),
        });
        let http = tokio::spawn(
            front
                .serve(listener, stopped)
                .instrument(tracing::Span::current()),
        );
        (http, tokio::spawn(housekeeping(service)))
    }
}

/// What a reload may not change: the topology, the copies per session, and the role of every node kept.
struct Shape {
    topology: config::Topology,
    copies: usize,
    roles: std::collections::HashMap<String, config::NodeRole>,
    bank: Option<config::BankConfig>,
}

impl Shape {
    fn of(cfg: &ClusterConfig) -> Shape {
        Shape {
            topology: cfg.replication.topology,
            copies: cfg.replication.copies,
            roles: cfg.nodes.iter().map(|n| (n.name.clone(), n.role)).collect(),
            bank: cfg.replication.bank.clone(),
        }
    }

    /// Whether `cfg` keeps this shape (nodes may come and go; a kept one keeps its role).
    fn allows(&self, cfg: &ClusterConfig) -> bool {
        cfg.replication.topology == self.topology
            && cfg.replication.copies == self.copies
            && cfg.replication.bank == self.bank
            && cfg
                .nodes
                .iter()
                .all(|n| self.roles.get(&n.name).is_none_or(|r| *r == n.role))
    }
}

/// The longest a node may take to answer a request it serves: the wait for its copy, plus the app's read timeout
/// in sidecar mode. A forward to a live owner is given that long.
fn answer_limit(cfg: &ClusterConfig, me: &NodeConfig) -> Duration {
    let app = me
        .upstream
        .map_or(Duration::ZERO, |_| cfg.sidecar.read_timeout);
    cfg.replication.peer_timeout * 3 + app
}

/// Runs node `name` of `cfg` on `listeners` until `shutdown` resolves, then shuts it down gracefully (see
/// [`Running::shutdown`]). The in-process entry point (mini-redis's `server::run`): tests run nodes in one
/// runtime with it, under paused time when they wish.
///
/// # Errors
/// [`ServerError::UnknownNode`] when `name` is not in the config.
pub async fn run(
    cfg: ClusterConfig,
    name: &str,
    listeners: Listeners,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let node = start(cfg, name, listeners)?;
    shutdown.await;
    node.shutdown().await;
    Ok(())
}

impl Running {
    /// Takes a re-read cluster file: new nodes become peers (and eligible secondaries), removed ones hand their
    /// copies on, cookies naming new pairs decode. Settings other than the node list need a restart.
    ///
    /// # Errors
    /// When this node's own entry is gone or moved: that needs a restart, so the old config stays.
    pub fn reload(&self, cfg: ClusterConfig) -> Result<(), ServerError> {
        let Some(me) = cfg.node(&self.me.name) else {
            return Err(ServerError::Removed(self.me.name.clone()));
        };
        if me.id != self.me.id || me.http != self.me.http || me.repl != self.me.repl {
            return Err(ServerError::Moved);
        }
        if !self.shape.allows(&cfg) {
            return Err(ServerError::Reshaped);
        }
        let (added, removed) = self.members.update(&cfg);
        self.drain.set(me.drain);
        *self.pairs.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg.pairs.clone());
        *self.codec.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(CookieCodec::new(&cfg.cookie));
        self.keys.set(
            cfg.secret.expose(),
            cfg.previous_secret.as_ref().map(|s| s.expose()),
        );
        for id in &added {
            self.replicator.add_peer(*id);
        }
        for id in &removed {
            self.replicator.remove_peer(*id);
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

    /// Graceful shutdown (mini-redis style): stops accepting HTTP, lets requests in flight finish, sends
    /// every queued copy at once and waits for the answers, all within the grace period; then stops the
    /// background tasks. Replication keeps being served meanwhile, so peers' own copies are not held up.
    pub async fn shutdown(self) {
        let started = now();
        let _ = self.stop.send(true);
        let mut http = self.http;
        if tokio::time::timeout(self.grace, &mut http).await.is_err() {
            warn!("requests still in flight at the end of the grace period");
            http.abort();
        }
        let left = self
            .grace
            .saturating_sub(now().saturating_duration_since(started));
        if !self.replicator.flush(left).await {
            warn!("copies still unconfirmed at the end of the grace period");
        }
        for task in self.background {
            task.abort();
        }
        info!(
            took_ms = now().saturating_duration_since(started).as_millis() as u64,
            "node stopped"
        );
    }
}

async fn watch_changes(replicator: Arc<Replicator>, mut changes: mpsc::UnboundedReceiver<Change>) {
    while let Some(change) = changes.recv().await {
        replicator.on_change(change);
    }
}

async fn heartbeats(members: Arc<Membership>, store: Arc<Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sessions = store.len() as u64;
        let ids = members.peer_ids();
        let beats = ids.iter().map(|id| members.heartbeat(*id, sessions));
        futures_util::future::join_all(beats).await;
    }
}

/// Every heartbeat interval, tells live peers of copies left behind on them that they were not told of yet (a
/// peer this node never saw go down sends no "up" to trigger it: a short partition, a forward that failed).
async fn tell_left_behind(replicator: Arc<Replicator>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        replicator.retry_left_behind();
    }
}

/// Expiry and gauges, about once a second.
async fn housekeeping<A: App>(service: Arc<SessionService<A>>) {
    let idle = service.settings.idle_timeout;
    let period = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let held = service.expire_idle(now());
        let gauge = &service.metrics.sessions;
        gauge.with_label_values(&["primary"]).set(held.primaries);
        gauge.with_label_values(&["replica"]).set(held.replicas);
        gauge
            .with_label_values(&["unprotected"])
            .set(held.unprotected);
        for peer in service.members.peer_ids() {
            let name = service.members.name_of(peer).unwrap_or_default();
            let n = held.copies.get(&peer).copied().unwrap_or(0);
            service.metrics.copies.with_label_values(&[&name]).set(n);
        }
    }
}
