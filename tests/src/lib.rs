//! Test harness: starts the real `node`, `lb` and `bench` binaries as processes on loopback.
//!
//! Every cluster gets its own random 127.x.y.z address and ports probed free on it, so tests run in parallel
//! without colliding. Every process is killed when the [`Cluster`] is dropped (and, through `PR_SET_PDEATHSIG`,
//! when the test process itself dies).

pub mod netns;
pub mod redis;
pub mod test_app;

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench::procs::Children;
use node::config::builder::{HealthSection, NodeEntry, ReplicationSection};
use node::config::ClusterFile;

pub mod webdriver;

/// Directory holding the built binaries: `$SRV_BIN_DIR`, else `<target>/debug`.
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("SRV_BIN_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
        });
    target.join("debug")
}

/// Path of one of our binaries; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bins` first (make test does)",
        p.display()
    );
    p
}

/// A random loopback address of our own, e.g. 127.83.12.7.
pub fn loopback_ip() -> Ipv4Addr {
    let r: [u8; 3] = rand::random();
    Ipv4Addr::new(127, r[0].max(1), r[1], r[2].max(2))
}

/// A port on `ip` that was free a moment ago.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    TcpListener::bind((ip, 0))
        .expect("bind on loopback")
        .local_addr()
        .unwrap()
        .port()
}

/// A port on `ip` that was free a moment ago and is not in `taken`, which it joins. The kernel may hand the
/// same port to two probes in a row once the first probe is closed; two processes of one cluster on one port
/// would fail the test for nothing.
pub fn unused_port(ip: Ipv4Addr, taken: &mut HashSet<u16>) -> u16 {
    loop {
        let port = free_port(ip);
        if taken.insert(port) {
            return port;
        }
    }
}

/// What cluster to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Nodes, named `n1`, `n2`, ...; default 3.
    pub nodes: usize,
    /// Start the balancer too; default false.
    pub lb: bool,
    /// `sync` or `async`.
    pub mode: &'static str,
    /// Extra TOML appended to `[replication]`, e.g. `lease_ms = 300`.
    pub replication_extra: String,
    /// Extra TOML appended to `[lb]`.
    pub lb_extra: String,
    /// Extra TOML appended to `[session]`.
    pub session_extra: String,
    /// Per-node extra TOML lines, by node index.
    pub node_extra: HashMap<usize, String>,
    /// `[session] idle_timeout_s`.
    pub idle_timeout_s: u64,
    /// `[replication.batch] max_delay_ms` (async batching).
    pub max_delay_ms: u64,
    /// `[replication.batch] max_updates` (async batching).
    pub max_updates: usize,
    /// Sidecar mode: every node gets an `upstream` on a port of its own ([`NodeAddrs::app`]); the test starts
    /// the apps there. Default false.
    pub sidecar: bool,
    /// `[cookie] header`: the session token header, e.g. `x-session-token`. Default none.
    pub token_header: Option<&'static str>,
    /// Extra TOML for `[sidecar]`, e.g. `read_timeout_ms = 100`.
    pub sidecar_extra: String,
    /// Extra TOML appended to `[node]` (every node's settings), e.g. `accept_proxy = true`.
    pub node_defaults_extra: String,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            nodes: 3,
            lb: false,
            mode: "sync",
            replication_extra: String::new(),
            lb_extra: String::new(),
            session_extra: String::new(),
            node_extra: HashMap::new(),
            idle_timeout_s: 600,
            max_delay_ms: 5,
            max_updates: 64,
            sidecar: false,
            token_header: None,
            sidecar_extra: String::new(),
            node_defaults_extra: String::new(),
        }
    }
}

impl ClusterSpec {
    /// A cluster in the `rss` topology with the lb: node `n{i+1}` has role `roles[i]` (`web`, `rss` or
    /// `standby`), and each session is on `copies` bank members.
    pub fn bank(roles: &[&str], copies: usize) -> ClusterSpec {
        ClusterSpec {
            nodes: roles.len(),
            lb: true,
            replication_extra: format!("topology = \"rss\"\ncopies = {copies}"),
            node_extra: roles
                .iter()
                .enumerate()
                .map(|(i, r)| (i, format!("role = {r:?}\n")))
                .collect(),
            ..ClusterSpec::default()
        }
    }

    /// A cluster in the `rss` topology with the lb and a Redis bank (`[replication.bank]`) instead of session
    /// servers: node `n{i+1}` has role `roles[i]` (`web` or `standby`); `urls` are the `redis://` URLs (the
    /// server, or a cluster's seed nodes) and `kind` is `server`, `cluster` or `sentinel`.
    pub fn redis_bank(roles: &[&str], urls: &[String], kind: &str) -> ClusterSpec {
        let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        ClusterSpec {
            replication_extra: format!(
                "topology = \"rss\"\n\n[replication.bank]\nredis = [{}]\nkind = {kind:?}\n",
                urls.join(", ")
            ),
            ..ClusterSpec::bank(roles, 1)
        }
    }
}

/// One node's addresses.
#[derive(Clone, Debug)]
pub struct NodeAddrs {
    /// `n1`, `n2`, ...
    pub name: String,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Its replication address.
    pub repl: SocketAddr,
    /// Its application's address (`upstream`), in sidecar mode.
    pub app: Option<SocketAddr>,
}

/// A running cluster of real processes.
pub struct Cluster {
    /// A fresh temporary directory: the cluster file and every process's log.
    pub dir: PathBuf,
    /// `<dir>/cluster.toml`.
    pub config_path: PathBuf,
    /// The cluster's own random loopback address; every process listens on it.
    pub ip: Ipv4Addr,
    /// Every node, in file order.
    pub nodes: Vec<NodeAddrs>,
    /// The balancer's client address (chosen even when `spec.lb` is false).
    pub lb_listen: SocketAddr,
    /// The balancer's admin address.
    pub lb_admin: SocketAddr,
    /// What the cluster was started from.
    pub spec: ClusterSpec,
    procs: Children,
    /// Every port handed out on `ip`, so no two addresses of the cluster share one.
    ports: HashSet<u16>,
    /// A command prefix by node name (e.g. `ip netns exec ns`): the node binary runs under it.
    node_prefix: HashMap<String, Vec<std::ffi::OsString>>,
}

/// The cluster file for `spec` on `ip` with the given ports: fast health checks, heartbeats and leases, so
/// failures are noticed within a second.
pub fn render_config(
    spec: &ClusterSpec,
    nodes: &[NodeAddrs],
    lb: SocketAddr,
    admin: SocketAddr,
) -> String {
    let mut file = ClusterFile::new("test-secret-0123456789abcdef", lb, admin);
    file.lb.health = HealthSection {
        interval: Some(Duration::from_millis(200)),
        timeout: Some(Duration::from_millis(300)),
        fall: Some(2),
        rise: Some(2),
    };
    file.lb.extra = spec.lb_extra.clone();
    file.node.expose_node = Some(true);
    file.node.extra = spec.node_defaults_extra.clone();
    file.replication = ReplicationSection {
        mode: spec.mode.parse().ok(),
        heartbeat: Some(Duration::from_millis(200)),
        peer_timeout: Some(Duration::from_millis(1000)),
        lease: Some(Duration::from_millis(300)),
        max_updates: Some(spec.max_updates),
        max_delay: Some(Duration::from_millis(spec.max_delay_ms)),
        extra: spec.replication_extra.clone(),
    };
    if file.replication.mode.is_none() {
        // Not a mode: written as given, so a test of the node's refusal still gets the word it asked for.
        file.replication.extra = format!("mode = {:?}\n{}", spec.mode, spec.replication_extra);
    }
    file.session.idle_timeout = Some(Duration::from_secs(spec.idle_timeout_s));
    file.session.extra = spec.session_extra.clone();
    file.cookie.header = spec.token_header.map(str::to_string);
    file.sidecar.extra = spec.sidecar_extra.clone();
    for (i, n) in nodes.iter().enumerate() {
        let mut entry = NodeEntry::new(n.name.clone(), n.http, n.repl);
        entry.machine = Some(format!("m{}", i + 1));
        entry.zone = Some(format!("z{}", i % 2 + 1));
        entry.extra = spec.node_extra.get(&i).cloned().unwrap_or_default();
        entry.upstream = n.app.map(|a| format!("http://{a}"));
        file.nodes.push(entry);
    }
    file.render()
}

impl Cluster {
    /// Writes a config for `spec` and starts every process; returns once all answer their health checks.
    pub fn start(spec: ClusterSpec) -> Result<Cluster> {
        let mut c = Cluster::prepare(spec)?;
        for n in c.nodes.clone() {
            c.start_node(&n.name)?;
        }
        if c.spec.lb {
            c.start_lb()?;
        }
        Ok(c)
    }

    /// Picks an address and free ports, and writes the cluster file for `spec` into a fresh directory, without
    /// starting anything (for tools such as `bench cluster` that start the processes themselves).
    pub fn prepare(spec: ClusterSpec) -> Result<Cluster> {
        Cluster::prepare_nodes(spec, None)
    }

    /// Like [`Cluster::prepare`], but node `n{i+1}` listens on `hosts[i]` (an address of a network namespace,
    /// say) at `http_port` and `repl_port` (its app, in sidecar mode, at `repl_port + 1`); the lb stays on the
    /// cluster's loopback address.
    pub fn prepare_on_hosts(
        spec: ClusterSpec,
        hosts: &[Ipv4Addr],
        http_port: u16,
        repl_port: u16,
    ) -> Result<Cluster> {
        assert_eq!(hosts.len(), spec.nodes, "a host per node");
        Cluster::prepare_nodes(spec, Some((hosts, http_port, repl_port)))
    }

    fn prepare_nodes(spec: ClusterSpec, hosts: Option<(&[Ipv4Addr], u16, u16)>) -> Result<Cluster> {
        let ip = loopback_ip();
        let mut ports = HashSet::new();
        let mut addr = || SocketAddr::from((ip, unused_port(ip, &mut ports)));
        let nodes: Vec<NodeAddrs> = (0..spec.nodes)
            .map(|i| match hosts {
                Some((hosts, http, repl)) => NodeAddrs {
                    name: format!("n{}", i + 1),
                    http: SocketAddr::from((hosts[i], http)),
                    repl: SocketAddr::from((hosts[i], repl)),
                    app: spec.sidecar.then(|| SocketAddr::from((hosts[i], repl + 1))),
                },
                None => NodeAddrs {
                    name: format!("n{}", i + 1),
                    http: addr(),
                    repl: addr(),
                    app: spec.sidecar.then(&mut addr),
                },
            })
            .collect();
        let dir = std::env::temp_dir().join(format!(
            "srv-test-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let procs = Children::new(dir.clone(), "info")?;
        let c = Cluster {
            config_path: dir.join("cluster.toml"),
            dir,
            ip,
            nodes,
            lb_listen: addr(),
            lb_admin: addr(),
            spec,
            procs,
            ports,
            node_prefix: HashMap::new(),
        };
        c.rewrite_config()?;
        Ok(c)
    }

    /// An address on the cluster's ip whose port no other address of the cluster has.
    pub fn unused_addr(&mut self) -> SocketAddr {
        SocketAddr::from((self.ip, unused_port(self.ip, &mut self.ports)))
    }

    /// Adds a node on fresh ports to the cluster file and starts it; returns its name. Running processes learn
    /// of it only through a reload (SIGHUP).
    pub fn add_node(&mut self) -> Result<String> {
        let name = format!("n{}", self.nodes.len() + 1);
        let (http, repl) = (self.unused_addr(), self.unused_addr());
        let app = self.spec.sidecar.then(|| self.unused_addr());
        self.nodes.push(NodeAddrs {
            name: name.clone(),
            http,
            repl,
            app,
        });
        self.spec.nodes = self.nodes.len();
        self.rewrite_config()?;
        self.start_node(&name)?;
        Ok(name)
    }

    /// Writes the cluster file again from `spec` and `nodes` (after changing them, before a reload).
    pub fn rewrite_config(&self) -> Result<()> {
        self.write_config(&render_config(
            &self.spec,
            &self.nodes,
            self.lb_listen,
            self.lb_admin,
        ))
    }

    /// Rewrites the cluster file (e.g. before a reload).
    pub fn write_config(&self, text: &str) -> Result<()> {
        std::fs::write(&self.config_path, text)?;
        Ok(())
    }

    /// Runs node `name` under `prefix` from its next start on: `prefix[0]` is the program, the rest its
    /// arguments before the node binary's path (e.g. `ip netns exec ns`, which execs the node in place, so the
    /// pid, the log and the death signal are the node's).
    pub fn set_node_prefix(&mut self, name: &str, prefix: Vec<std::ffi::OsString>) {
        self.node_prefix.insert(name.to_string(), prefix);
    }

    /// Starts (or restarts) node `name` and waits until it is healthy.
    pub fn start_node(&mut self, name: &str) -> Result<()> {
        let config = self.config_path.clone().into_os_string();
        let node_args = [
            OsStr::new("--config"),
            &config,
            OsStr::new("--name"),
            OsStr::new(name),
        ];
        match self.node_prefix.get(name).and_then(|p| p.split_first()) {
            Some((program, rest)) => {
                let node = bin("node").into_os_string();
                let mut args: Vec<&OsStr> = rest.iter().map(|a| a.as_os_str()).collect();
                args.push(&node);
                args.extend(node_args);
                self.procs.spawn(name, Path::new(program), &args)?;
            }
            None => {
                self.procs.spawn(name, &bin("node"), &node_args)?;
            }
        }
        let addr = self.node(name).http;
        wait_http_ok(
            &format!("http://{addr}/_node/health"),
            Duration::from_secs(20),
        )
        .with_context(|| {
            format!(
                "node {name} did not become healthy; log:\n{}",
                self.log(name)
            )
        })
    }

    /// Starts any program as one of the cluster's processes (an application beside a node, say), under `key`:
    /// its log is `<dir>/<key>.log`, and it is killed with the cluster.
    pub fn start_process<S: AsRef<OsStr>>(
        &mut self,
        key: &str,
        program: &Path,
        args: &[S],
    ) -> Result<u32> {
        self.procs.spawn(key, program, args)
    }

    /// Starts the lb and waits until its admin status answers.
    pub fn start_lb(&mut self) -> Result<()> {
        let (config, admin) = (self.config_path.clone(), self.lb_admin);
        self.start_lb_as("lb", &config, admin)
    }

    /// Starts an lb process under the key `key` reading `config` (whose admin address is `admin`), and waits
    /// until its admin status answers and its client listeners accept. A second lb gets its own file with other
    /// listen and admin ports.
    pub fn start_lb_as(
        &mut self,
        key: &str,
        config: &std::path::Path,
        admin: SocketAddr,
    ) -> Result<()> {
        let listeners: Vec<SocketAddr> = node::config::ClusterConfig::load(config)
            .map(|c| {
                std::iter::once(c.lb.listen)
                    .chain(c.lb.l4.map(|l| l.listen))
                    .collect()
            })
            .unwrap_or_default();
        self.procs.spawn(
            key,
            &bin("lb"),
            &[OsStr::new("--config"), config.as_os_str()],
        )?;
        wait_http_ok(&format!("http://{admin}/status"), Duration::from_secs(20))
            .with_context(|| format!("{key} did not start; log:\n{}", self.log(key)))?;
        // Pingora binds each service's listener on that service's own thread: the admin one may answer first.
        for addr in listeners {
            wait_until(
                Duration::from_secs(20),
                "the lb's listener to accept",
                || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok(),
            )
            .with_context(|| format!("{key} does not listen on {addr}; log:\n{}", self.log(key)))?;
        }
        Ok(())
    }

    /// A node's addresses by name.
    pub fn node(&self, name: &str) -> &NodeAddrs {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// `http://addr` of a node.
    pub fn node_url(&self, name: &str) -> String {
        format!("http://{}", self.node(name).http)
    }

    /// `http://addr` of the lb.
    pub fn lb_url(&self) -> String {
        format!("http://{}", self.lb_listen)
    }

    /// `http://addr` of the lb's admin listener.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.lb_admin)
    }

    /// A process's pid.
    pub fn pid(&self, key: &str) -> u32 {
        self.procs
            .pid(key)
            .unwrap_or_else(|| panic!("no process {key}"))
    }

    /// kill -9, and reap.
    pub fn kill(&mut self, key: &str) {
        self.procs.kill(key);
    }

    /// Sends a signal (e.g. `libc::SIGSTOP`) to a process.
    pub fn signal(&self, key: &str, sig: i32) {
        self.procs.signal(key, sig);
    }

    /// Waits for a process to exit by itself, up to `timeout`; returns its exit status.
    pub fn wait_exit(&mut self, key: &str, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.procs.wait_exit(key, timeout)
    }

    /// The log a process wrote so far.
    pub fn log(&self, key: &str) -> String {
        self.procs.log(key)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.procs.kill_all();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            let _ = writeln!(
                std::io::stderr(),
                "cluster logs kept in {}",
                self.dir.display()
            );
        }
    }
}

/// Polls `url` until it answers 200, up to `timeout`.
pub fn wait_http_ok(url: &str, timeout: Duration) -> Result<()> {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()?;
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(url).send() {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{url} did not answer 200 within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `cond` every 50 ms until it holds, up to `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A TCP connection to `to` from the client address `from` (any port): Layer-4 tests tell clients apart by
/// their 127.x.y.z address. Reads time out after 15 s.
///
/// # Errors
/// When the address cannot be bound or the connection is not made within 5 s.
pub fn connect_from(from: Ipv4Addr, to: SocketAddr) -> Result<std::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let s = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(5), bench::edge::connect_from(from, to))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    })?;
    let s = s.into_std()?;
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    Ok(s)
}

/// The `(name, value)` header lines of a raw HTTP/1.1 head (its status or request line skipped), values
/// trimmed; for tests that speak HTTP over a socket of their own.
pub fn raw_headers(head: &str) -> impl Iterator<Item = (&str, &str)> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim(), v.trim())))
}

/// The first value of header `name` (any case) in a raw HTTP/1.1 head.
pub fn raw_header(head: &str, name: &str) -> Option<String> {
    raw_headers(head)
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.to_string())
}

/// A response reduced to what tests look at.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// `X-Served-By`: the node that served.
    pub served_by: Option<String>,
    /// The `Set-Cookie` value for the routing cookie, if the answer set or cleared it.
    pub set_cookie: Option<String>,
    /// `X-Session-Stale: 1`: the node recovered a copy older than the cookie.
    pub stale: bool,
    /// Every response header.
    pub headers: reqwest::header::HeaderMap,
    /// The body as text.
    pub body: String,
}

impl Reply {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// A cookie-following HTTP client for one user: it keeps the routing cookie it is given.
pub struct User {
    client: reqwest::blocking::Client,
    /// `NAME=value` of the routing cookie, once the cluster minted one.
    pub cookie: Option<String>,
    /// Name of the routing cookie to keep; default `SRVSESSION`.
    pub cookie_name: String,
}

impl Default for User {
    fn default() -> Self {
        User::new()
    }
}

impl User {
    /// A user with no cookie yet, a 15 s request timeout, following `SRVSESSION`.
    pub fn new() -> User {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(4)
            .build()
            .expect("client");
        User {
            client,
            cookie: None,
            cookie_name: "SRVSESSION".into(),
        }
    }

    /// Sends `method path` to `base` with the current cookie, `body` as JSON when given, and keeps any new cookie.
    pub fn send(
        &mut self,
        base: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Result<Reply> {
        self.send_with(base, method, path, body, &[])
    }

    /// Like [`User::send`] with extra request headers.
    pub fn send_with(
        &mut self,
        base: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<Reply> {
        let m = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut rb = self.client.request(m, format!("{base}{path}"));
        if let Some(c) = &self.cookie {
            rb = rb.header("cookie", c.clone());
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = rb.send()?;
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let get = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let set_cookie = headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{}=", self.cookie_name)))
            .map(str::to_string);
        if let Some(sc) = &set_cookie {
            let pair = sc.split(';').next().unwrap_or("").trim().to_string();
            if pair.ends_with('=') {
                self.cookie = None;
            } else {
                self.cookie = Some(pair);
            }
        }
        let served_by = get("x-served-by");
        let stale = get("x-session-stale").as_deref() == Some("1");
        let body = r.text()?;
        Ok(Reply {
            status,
            served_by,
            set_cookie,
            stale,
            headers,
            body,
        })
    }

    /// `POST /session/incr/{key}`; returns the reply.
    pub fn incr(&mut self, base: &str, key: &str) -> Result<Reply> {
        self.send(base, "POST", &format!("/session/incr/{key}"), None)
    }

    /// `GET /session`.
    pub fn get(&mut self, base: &str) -> Result<Reply> {
        self.send(base, "GET", "/session", None)
    }
}

/// One sample of a Prometheus text page (0 when absent), e.g. `lb_retries_total{node="n1",reason="connect"}`.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// The value of an unlabelled metric on a node's `/_node/metrics` (0 when absent).
pub fn metric(node_url: &str, name: &str) -> f64 {
    let text = reqwest::blocking::get(format!("{node_url}/_node/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default();
    sample(&text, name)
}

/// Like [`metric`], but panics when the node does not answer or the page lacks the series: for checks that a
/// count is 0, which a missing node or a renamed metric would otherwise pass.
pub fn metric_present(node_url: &str, name: &str) -> f64 {
    let text = reqwest::blocking::get(format!("{node_url}/_node/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_else(|e| panic!("{node_url}/_node/metrics: {e}"));
    let line = text
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{node_url} has no {name} in its metrics"));
    line[name.len()..]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{node_url}: not a number: {line}"))
}

/// The names of the primary and secondary a routing cookie (`NAME=value`) names, decoded with `config`. A Redis
/// bank as the secondary is named `redis-bank` ([`node::config::BankConfig::NAME`]).
pub fn cookie_pair(
    cfg: &node::config::ClusterConfig,
    cookie: &str,
) -> Option<(String, Option<String>)> {
    let codec = node::cookie::CookieCodec::new(&cfg.cookie);
    let value = cookie.split_once('=')?.1;
    let c = codec.decode(value).ok()?;
    let pair = cfg.pairs.decode(c.segment)?;
    let bank = cfg.replication.bank.as_ref().map(|b| b.id);
    let name = |id| {
        cfg.node_by_id(id)
            .map(|n| n.name.clone())
            .or_else(|| (bank == Some(id)).then(|| node::config::BankConfig::NAME.to_string()))
    };
    Some((name(pair.primary)?, pair.secondary.and_then(name)))
}

impl Cluster {
    /// Node `name`'s `/_node/health` answer (panics when it does not answer).
    pub fn health(&self, name: &str) -> serde_json::Value {
        reqwest::blocking::get(format!("{}/_node/health", self.node_url(name)))
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("{name}'s health: {e}"))
    }

    /// Sessions and copies node `name` holds, from its health answer.
    pub fn sessions_held(&self, name: &str) -> u64 {
        self.health(name)["sessions"]
            .as_u64()
            .expect("a session count")
    }

    /// Waits (at most `limit`) until node `name` holds `n` sessions and copies; `what` names the wait.
    ///
    /// # Errors
    /// When it does not within `limit`, with `what` and the last count.
    pub fn wait_held(&self, name: &str, n: u64, limit: Duration, what: &str) -> Result<()> {
        let mut last = None;
        wait_until(limit, what, || {
            let held = self.sessions_held(name);
            last = Some(held);
            held == n
        })
        .with_context(|| format!("{name} holds {last:?}, not {n}"))
    }

    /// The node whose copy of session `sid` (32 hex digits) is the primary one; a node that does not answer
    /// (killed, or paused past 2 s) is skipped.
    pub fn primary_of(&self, sid: &str) -> Option<String> {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        self.nodes.iter().find_map(|n| {
            let url = format!("{}/_node/sessions/{sid}", self.node_url(&n.name));
            let v: serde_json::Value = client.get(url).send().ok()?.json().ok()?;
            (v["role"] == "primary").then(|| n.name.clone())
        })
    }

    /// The validated config the processes read.
    pub fn config(&self) -> node::config::ClusterConfig {
        node::config::ClusterConfig::load(&self.config_path).expect("our own config validates")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use node::config::{ClusterConfig, Failover, ReplicationMode};

    /// `spec` rendered for three nodes on fixed 127.0.0.1 ports, and the config it loads as.
    fn rendered(spec: &ClusterSpec) -> (String, ClusterConfig) {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let nodes: Vec<NodeAddrs> = (1..=3)
            .map(|i| NodeAddrs {
                name: format!("n{i}"),
                http: addr(9000 + i),
                repl: addr(9100 + i),
                app: None,
            })
            .collect();
        let text = render_config(spec, &nodes, addr(8080), addr(8081));
        let c = ClusterConfig::from_toml("spec.toml", &text).unwrap();
        (text, c)
    }

    #[test]
    fn a_rendered_spec_loads_with_its_mode_timings_and_extras() {
        let spec = ClusterSpec {
            mode: "async",
            max_delay_ms: 1500,
            idle_timeout_s: 1,
            lb_extra: "failover = \"secondary\"".into(),
            node_extra: HashMap::from([(1, "drain = true".to_string())]),
            ..ClusterSpec::default()
        };
        let (text, c) = rendered(&spec);
        assert_eq!(c.replication.mode, ReplicationMode::Async);
        assert_eq!(c.replication.max_delay, Duration::from_millis(1500));
        assert_eq!(c.session.idle_timeout, Duration::from_secs(1));
        assert_eq!(c.lb.failover, Failover::Secondary);
        assert_eq!(c.lb.health.interval, Duration::from_millis(200));
        assert!(c.node.expose_node);
        assert_eq!(c.nodes.len(), 3);
        assert!(c.nodes[1].drain && !c.nodes[0].drain);
        assert_eq!(
            (c.nodes[2].machine.as_str(), c.nodes[2].zone.as_str()),
            ("m3", "z1")
        );
        assert!(
            text.contains("[lb]\n") && text.contains("[replication]"),
            "tests edit these headers:\n{text}"
        );
    }

    #[test]
    fn a_redis_bank_spec_loads_with_its_bank_and_roles_and_cookies_name_the_bank() {
        let urls = [
            "redis://127.0.0.9:7001".to_string(),
            "redis://127.0.0.9:7002".to_string(),
        ];
        let spec = ClusterSpec::redis_bank(&["web", "web", "standby"], &urls, "cluster");
        let (_, c) = rendered(&spec);
        let bank = c.replication.bank.clone().expect("a bank");
        assert_eq!(
            (bank.urls, bank.kind),
            (urls.to_vec(), node::config::BankKind::Cluster)
        );
        assert_eq!(
            c.replication.max_delay,
            Duration::from_millis(5),
            "[replication.batch] still read"
        );
        let roles: Vec<String> = c.nodes.iter().map(|n| n.role.to_string()).collect();
        assert_eq!(roles, ["web", "web", "standby"]);
        let pair = node::ids::Pair {
            primary: c.nodes[0].id,
            secondary: Some(bank.id),
        };
        let codec = node::cookie::CookieCodec::new(&c.cookie);
        let minted = codec.encode(&node::cookie::RoutingCookie {
            session: node::ids::SessionId(7),
            segment: pair.segment(),
            version: 1,
        });
        let cookie = format!("SRVSESSION={minted}");
        assert_eq!(
            cookie_pair(&c, &cookie),
            Some(("n1".to_string(), Some("redis-bank".to_string())))
        );
    }

    #[test]
    fn a_spec_mode_that_is_no_mode_reaches_the_file_as_written() {
        let addr = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let spec = ClusterSpec {
            mode: "eventually",
            ..ClusterSpec::default()
        };
        let err =
            ClusterConfig::from_toml("spec.toml", &render_config(&spec, &[], addr(1), addr(2)))
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("`replication.mode`: unknown variant `eventually`"),
            "{err}"
        );
    }
}
