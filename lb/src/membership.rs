//! The live node table. A [`Topology`] is an immutable snapshot of one config generation (nodes, peers, cookie
//! codec, pair table); [`Membership`] swaps whole snapshots on reload, so a request keeps the snapshot it started
//! with and in-flight requests are never disturbed. Per-node runtime state ([`NodeState`]: health, in-flight,
//! weight, drain) is shared between generations for every node whose name and address did not change.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use node::config::{ClusterConfig, ConfigError, LimitsConfig, NodeRole};
use node::cookie::CookieCodec;
use node::ids::NodeId;
use pingora::upstreams::peer::HttpPeer;
use prometheus::IntGauge;

use crate::balance::NodeView;
use crate::conns::ConnSet;
use crate::health::HealthTracker;
use crate::metrics::{L4NodeMetrics, Metrics, NodeMetrics};
use crate::routing::{self, Route, RouteCache};
use crate::tls::{self, Certs, TlsError};
use pingora::tls::sign::CertifiedKey;

/// The upstream peer for a node at `addr`: plain HTTP/1.1 with the connect and read timeouts of `limits`
/// (writes are held to the read timeout too). Pooled connections get no idle timeout: Pingora would arm a
/// timer every time one is put back (a measurable share of a request's cost: `bench/PERFORMANCE.md`); the
/// pool drops a connection as soon as the node closes it, which nodes do after their own idle time (10 s), and
/// its size caps how many stay open.
pub fn node_peer(addr: SocketAddr, limits: &LimitsConfig) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(limits.connect_timeout);
    peer.options.total_connection_timeout = Some(limits.connect_timeout);
    peer.options.read_timeout = Some(limits.read_timeout);
    peer.options.write_timeout = Some(limits.read_timeout);
    peer.options.idle_timeout = None;
    peer
}

/// Runtime state of one node, shared by every generation that keeps the node.
pub struct NodeState {
    /// The node's name in the cluster file.
    pub name: String,
    /// Its id, one term of the segments that name it.
    pub id: NodeId,
    /// Its HTTP address, where requests are proxied.
    pub addr: SocketAddr,
    /// `web`, `standby` or `rss` (never sent a request); fixed for the node's life in this balancer.
    pub role: NodeRole,
    weight: AtomicU32,
    drain: AtomicBool,
    healthy: AtomicBool,
    tracker: Mutex<HealthTracker>,
    in_flight: AtomicUsize,
    /// Open connections to the node, shut when it is marked down.
    pub conns: ConnSet,
    /// Request counters by outcome.
    pub metrics: NodeMetrics,
    /// Layer-4 connection, byte and open-connection series.
    pub l4: L4NodeMetrics,
    healthy_gauge: IntGauge,
    in_flight_gauge: IntGauge,
    drain_left_gauge: IntGauge,
    all_metrics: Arc<Metrics>,
}

impl NodeState {
    fn new(cfg: &node::config::NodeConfig, metrics: &Arc<Metrics>) -> NodeState {
        let (healthy_gauge, in_flight_gauge, drain_left_gauge) = metrics.gauges(&cfg.name);
        NodeState {
            name: cfg.name.clone(),
            id: cfg.id,
            addr: cfg.http,
            role: cfg.role,
            weight: AtomicU32::new(cfg.weight),
            drain: AtomicBool::new(cfg.drain),
            healthy: AtomicBool::new(true),
            tracker: Mutex::new(HealthTracker::new()),
            in_flight: AtomicUsize::new(0),
            conns: ConnSet::default(),
            metrics: metrics.for_node(&cfg.name),
            l4: metrics.l4_for_node(&cfg.name),
            healthy_gauge,
            in_flight_gauge,
            drain_left_gauge,
            all_metrics: metrics.clone(),
        }
    }

    /// Whether it takes requests: health checks pass and no connection to it failed since.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Its relative share of new sessions, 1 to 1000 (a reload may change it).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Whether it is draining: no new sessions (a reload may change it).
    pub fn drain(&self) -> bool {
        self.drain.load(Ordering::Relaxed)
    }

    /// While it drains: the sessions it still owns, as its last health check said.
    pub fn sessions_left(&self) -> Option<u64> {
        u64::try_from(self.drain_left_gauge.get()).ok()
    }

    /// Records what a health check said of the drain (`None`: not draining).
    pub fn set_sessions_left(&self, left: Option<u64>) {
        self.drain_left_gauge
            .set(left.map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX)));
    }

    /// Requests this balancer is proxying to it right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// What the chooser sees.
    pub fn view(&self) -> NodeView {
        NodeView {
            healthy: self.healthy(),
            drain: self.drain(),
            weight: self.weight(),
            in_flight: self.in_flight(),
            role: self.role,
        }
    }

    /// Records one health check result; returns the new state when it changed.
    pub fn observe(&self, ok: bool, fall: u32, rise: u32) -> Option<bool> {
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let change = t.observe(ok, fall, rise);
        if let Some(up) = change {
            self.set_healthy(
                up,
                if up {
                    "passed its health checks"
                } else {
                    "failed its health checks"
                },
            );
        }
        change
    }

    /// Marks the node down at once (a request could not reach it); it must rise through health checks.
    pub fn force_down(&self, why: &str) {
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        if t.force_down() {
            self.set_healthy(false, why);
        }
    }

    fn set_healthy(&self, up: bool, why: &str) {
        self.healthy.store(up, Ordering::Relaxed);
        self.all_metrics
            .health_changes
            .with_label_values(&[self.name.as_str(), if up { "up" } else { "down" }])
            .inc();
        if up {
            tracing::info!(node = %self.name, addr = %self.addr, "node is up: {why}");
        } else {
            // Requests waiting on the node fail now and are retried elsewhere, rather than at the read timeout.
            let shut = self.conns.shut_all();
            tracing::warn!(node = %self.name, addr = %self.addr, shut, "node is down: {why}");
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Copies the in-flight count and health into their gauges: done at scrape time only, the one place.
    pub fn publish(&self) {
        self.in_flight_gauge.set(self.in_flight() as i64);
        self.healthy_gauge.set(i64::from(self.healthy()));
    }
}

/// One request in flight on a node.
pub struct InFlight(Arc<NodeState>);

impl InFlight {
    /// The node the request is on.
    pub fn node(&self) -> &Arc<NodeState> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One config generation, immutable.
pub struct Topology {
    /// The validated cluster file of this generation.
    pub cfg: ClusterConfig,
    /// Verifies routing cookies with this generation's keys.
    pub codec: CookieCodec,
    /// `[cookie] header`, parsed once for this generation.
    token_header: Option<http::HeaderName>,
    /// Every node in file order; routing and balancing use indices into this list.
    pub nodes: Vec<Arc<NodeState>>,
    peers: Vec<HttpPeer>,
    by_id: HashMap<NodeId, usize, ahash::RandomState>,
    /// 1 for the file read at start, +1 per accepted reload.
    pub generation: u64,
    /// Unique among every topology of the process: keys the thread-local route cache.
    cache_generation: u64,
}

thread_local! {
    static ROUTES: RefCell<RouteCache> = RefCell::new(RouteCache::new());
}

impl Topology {
    fn build(
        cfg: ClusterConfig,
        previous: Option<&Topology>,
        metrics: &Arc<Metrics>,
        generation: u64,
    ) -> Topology {
        let mut nodes = Vec::with_capacity(cfg.nodes.len());
        let mut peers = Vec::with_capacity(cfg.nodes.len());
        let mut by_id = HashMap::default();
        for (i, n) in cfg.nodes.iter().enumerate() {
            let kept = previous
                .and_then(|p| {
                    p.nodes
                        .iter()
                        // A node whose role changed starts afresh: the chooser reads its role here.
                        .find(|o| {
                            o.name == n.name && o.addr == n.http && o.id == n.id && o.role == n.role
                        })
                })
                .cloned();
            let state = match kept {
                Some(s) => {
                    s.weight.store(n.weight, Ordering::Relaxed);
                    s.drain.store(n.drain, Ordering::Relaxed);
                    s
                }
                None => Arc::new(NodeState::new(n, metrics)),
            };
            let peer = node_peer(n.http, &cfg.lb.limits);
            by_id.insert(n.id, i);
            nodes.push(state);
            peers.push(peer);
        }
        let codec = CookieCodec::new(&cfg.cookie);
        // Validated as a lowercase header name: parsing it cannot fail.
        let token_header = cfg
            .cookie
            .header
            .as_deref()
            .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok());
        Topology {
            cfg,
            codec,
            token_header,
            nodes,
            peers,
            by_id,
            generation,
            cache_generation: routing::next_generation(),
        }
    }

    /// Routes a request by its `Cookie` headers. The usual single header is looked up in this thread's
    /// [`RouteCache`] first.
    pub fn route<'a>(&self, cookie_headers: impl IntoIterator<Item = &'a [u8]>) -> Route {
        let mut headers = cookie_headers.into_iter();
        let first = headers.next();
        let second = headers.next();
        let uncached = |hs: &mut dyn Iterator<Item = &'a [u8]>| {
            routing::route(
                &self.codec,
                &self.cfg.pairs,
                |id| self.by_id.get(&id).copied(),
                hs,
            )
        };
        match (first, second) {
            (Some(h), None) => ROUTES.with(|c| {
                c.borrow_mut().get_or_route(self.cache_generation, h, || {
                    uncached(&mut std::iter::once(h))
                })
            }),
            (None, _) => Route::FRESH,
            (Some(a), Some(b)) => uncached(&mut [a, b].into_iter().chain(headers)),
        }
    }

    /// Routes a request by a session token in the `[cookie] header`, when one is configured and `headers`
    /// carry a valid token; `None` otherwise (the request is then routed by its cookie). A token wins over a
    /// cookie, as on the node. Not cached: a token's verification is one HMAC.
    pub fn route_token(&self, headers: &http::HeaderMap) -> Option<Route> {
        let value = headers.get(self.token_header.as_ref()?)?;
        let cookie = self.codec.find_token(value.as_bytes())?;
        Some(routing::resolve(
            &self.cfg.pairs,
            |id| self.by_id.get(&id).copied(),
            Some(cookie),
        ))
    }

    /// Every node's state as the chooser sees it, in node order.
    pub fn views(&self) -> Vec<NodeView> {
        self.nodes.iter().map(|n| n.view()).collect()
    }

    /// The upstream peer of node `i`, with the configured timeouts.
    pub fn peer(&self, i: usize) -> Box<HttpPeer> {
        Box::new(self.peers[i].clone())
    }
}

/// What a reload changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// The new generation.
    pub generation: u64,
    /// Names of nodes new in the file.
    pub added: Vec<String>,
    /// Names of nodes no longer in the file.
    pub removed: Vec<String>,
    /// Names of nodes whose address, id, weight or drain changed.
    pub changed: Vec<String>,
    /// Settings that only a restart applies (listen addresses, threads).
    pub ignored: Vec<String>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "generation {}: added {:?}, removed {:?}, changed {:?}",
            self.generation, self.added, self.removed, self.changed
        )?;
        if !self.ignored.is_empty() {
            write!(f, "; needs a restart to apply: {:?}", self.ignored)?;
        }
        Ok(())
    }
}

/// Why a cluster file is refused, at start, by `lb check` or on reload (the running config and certificate
/// then stay).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The cluster file is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Its `[lb.tls]` certificate or key does not load or is not valid now.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Reads and validates the cluster file at `path` and, with `[lb.tls]`, the certificate and key it names
/// (checked even when the running lb has no TLS: turning it on needs a restart, which must not then fail on
/// the files). `serving` is the certificate a running lb serves ([`tls::load`]).
///
/// # Errors
/// [`FileError`]: the file's [`ConfigError`] or its certificate's [`TlsError`].
pub fn read_file(
    path: &Path,
    serving: Option<&CertifiedKey>,
) -> Result<(ClusterConfig, Option<Arc<CertifiedKey>>), FileError> {
    let cfg = ClusterConfig::load(path)?;
    let key = cfg
        .lb
        .tls
        .as_ref()
        .map(|t| tls::load(t, path, serving))
        .transpose()?;
    Ok((cfg, key))
}

/// The current topology and how to replace it.
pub struct Membership {
    path: PathBuf,
    current: ArcSwap<Topology>,
    metrics: Arc<Metrics>,
    reloading: Mutex<()>,
    ticket: AtomicU64,
    /// The TLS listener's certificate, re-read by every reload; `None` without `[lb.tls]` at start.
    certs: Option<Arc<Certs>>,
}

impl Membership {
    /// Reads the cluster file at `path`.
    ///
    /// # Errors
    /// The file's [`ConfigError`], naming file, line and key.
    pub fn load(path: &Path, metrics: Arc<Metrics>) -> Result<Membership, ConfigError> {
        let cfg = ClusterConfig::load(path)?;
        Ok(Membership::from_config(path, cfg, metrics))
    }

    /// A membership over an already validated config; `path` is what reloads re-read.
    pub fn from_config(path: &Path, cfg: ClusterConfig, metrics: Arc<Metrics>) -> Membership {
        let topology = Topology::build(cfg, None, &metrics, 1);
        Membership {
            path: path.to_path_buf(),
            current: ArcSwap::from_pointee(topology),
            metrics,
            reloading: Mutex::new(()),
            ticket: AtomicU64::new(0),
            certs: None,
        }
    }

    /// Has every reload re-read the `[lb.tls]` files into `certs`.
    pub fn with_certs(mut self, certs: Arc<Certs>) -> Membership {
        self.certs = Some(certs);
        self
    }

    /// The current snapshot.
    pub fn topology(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    /// Reads the current snapshot without taking a reference to keep (cheaper than [`Self::topology`]).
    pub fn with_topology<R>(&self, f: impl FnOnce(&Topology) -> R) -> R {
        f(&self.current.load())
    }

    /// A number that grows by one per call (rotates ties, drives round robin).
    pub fn next_ticket(&self) -> u64 {
        self.ticket.fetch_add(1, Ordering::Relaxed)
    }

    /// The balancer's metrics, shared by every generation.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Re-reads the file (and the TLS certificate and key it names) and swaps the new topology in; an invalid
    /// file or certificate changes nothing.
    ///
    /// # Errors
    /// [`FileError`]: the new file's [`ConfigError`], or its certificate's [`TlsError`]; the old topology
    /// and certificate keep serving.
    pub fn reload(&self) -> Result<ReloadReport, FileError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let serving = self.certs.as_ref().map(|c| c.current());
        let (cfg, key) = match read_file(&self.path, serving.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                self.metrics.reloads.with_label_values(&["refused"]).inc();
                tracing::error!("reload refused, the running config stays: {e}");
                return Err(e);
            }
        };
        let old = self.current.load_full();
        let new = Topology::build(cfg, Some(&old), &self.metrics, old.generation + 1);
        let report = diff(&old, &new);
        for name in &report.removed {
            self.metrics.forget_node(name);
        }
        self.current.store(Arc::new(new));
        if let (Some(certs), Some(key)) = (&self.certs, key) {
            certs.set(key);
        }
        self.metrics.reloads.with_label_values(&["ok"]).inc();
        tracing::info!("reloaded {}: {report}", self.path.display());
        Ok(report)
    }
}

fn diff(old: &Topology, new: &Topology) -> ReloadReport {
    let mut r = ReloadReport {
        generation: new.generation,
        ..ReloadReport::default()
    };
    for n in &new.cfg.nodes {
        match old.cfg.node(&n.name) {
            None => r.added.push(n.name.clone()),
            Some(o)
                if o.http != n.http
                    || o.id != n.id
                    || o.weight != n.weight
                    || o.drain != n.drain =>
            {
                r.changed.push(n.name.clone())
            }
            Some(_) => {}
        }
    }
    for o in &old.cfg.nodes {
        if new.cfg.node(&o.name).is_none() {
            r.removed.push(o.name.clone());
        }
    }
    let (a, b) = (&old.cfg.lb, &new.cfg.lb);
    if a.listen != b.listen {
        r.ignored.push("lb.listen".into());
    }
    if a.admin != b.admin {
        r.ignored.push("lb.admin".into());
    }
    if a.threads != b.threads {
        r.ignored.push("lb.threads".into());
    }
    if a.grace_period != b.grace_period {
        r.ignored.push("lb.grace_period_s".into());
    }
    if a.l4 != b.l4 {
        r.ignored.push("lb.l4".into());
    }
    // On or off, or `h2` changed (the ALPN list is fixed when the listener starts).
    if a.tls.as_ref().map(|t| t.h2) != b.tls.as_ref().map(|t| t.h2) {
        r.ignored.push("lb.tls".into());
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use node::config::builder::NodeEntry;
    use node::config::ClusterFile;

    /// A cluster file of `(name, http port, extra TOML)` nodes; each node's repl port is its http port + 100.
    fn text(nodes: &[(&str, u16, &str)]) -> String {
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let mut file = ClusterFile::new("membership-test-secret", addr(1), addr(2));
        for (name, port, extra) in nodes {
            let mut node = NodeEntry::new(*name, addr(*port), addr(port + 100));
            node.extra = extra.to_string();
            file.nodes.push(node);
        }
        file.render()
    }

    fn membership(dir: &Path, t: &str) -> Membership {
        let path = dir.join("c.toml");
        std::fs::write(&path, t).unwrap();
        Membership::load(&path, Arc::new(Metrics::new())).unwrap()
    }

    fn tmpdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "lb-membership-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_reload_keeps_the_state_of_unchanged_nodes_and_applies_weight_and_drain() {
        let dir = tmpdir();
        let m = membership(&dir, &text(&[("n1", 9001, ""), ("n2", 9002, "")]));
        let before = m.topology();
        before.nodes[0].force_down("test");
        let guard = before.nodes[1].enter();
        std::fs::write(
            dir.join("c.toml"),
            text(&[
                ("n1", 9001, ""),
                ("n2", 9002, "weight = 5\ndrain = true"),
                ("n3", 9003, ""),
            ]),
        )
        .unwrap();
        let r = m.reload().unwrap();
        assert_eq!(r.added, vec!["n3"]);
        assert_eq!(r.changed, vec!["n2"]);
        let after = m.topology();
        assert_eq!(after.generation, 2);
        assert!(!after.nodes[0].healthy(), "health carries over");
        assert_eq!(after.nodes[1].in_flight(), 1, "in-flight carries over");
        assert_eq!((after.nodes[1].weight(), after.nodes[1].drain()), (5, true));
        assert!(after.nodes[2].healthy());
        drop(guard);
        assert_eq!(after.nodes[1].in_flight(), 0);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_invalid_file_is_refused_and_the_old_topology_stays() {
        let dir = tmpdir();
        let m = membership(&dir, &text(&[("n1", 9001, ""), ("n2", 9002, "")]));
        std::fs::write(
            dir.join("c.toml"),
            text(&[("n1", 9001, ""), ("n2", 9002, "weight = 0")]),
        )
        .unwrap();
        let err = m.reload().unwrap_err().to_string();
        assert!(err.contains("c.toml:") && err.contains("weight"), "{err}");
        assert_eq!(m.topology().generation, 1);
        assert_eq!(m.topology().nodes.len(), 2);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_removed_node_leaves_the_route_table_and_a_moved_node_starts_fresh() {
        let dir = tmpdir();
        let m = membership(
            &dir,
            &text(&[("n1", 9001, ""), ("n2", 9002, ""), ("n3", 9003, "")]),
        );
        m.topology().nodes[1].force_down("test");
        std::fs::write(
            dir.join("c.toml"),
            text(&[("n2", 9012, ""), ("n3", 9003, "")]),
        )
        .unwrap();
        let r = m.reload().unwrap();
        assert_eq!(r.removed, vec!["n1"]);
        let t = m.topology();
        assert_eq!(
            t.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["n2", "n3"]
        );
        assert!(
            t.nodes[0].healthy(),
            "a node at a new address is a new node"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
